"""No command destroys a user's file: outputs that name an input, that are
not regular files, that have a name the recorder cannot honour, that exist
already or that another kf-desktop is writing are refused before any work
(kf_desktop/output_path.py, kf_desktop/output_lock.py). Real renders with
real ffmpeg, a real FIFO and device node, a real second process."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kf_desktop.cli import main
from tests.conftest import REPO

needs_ffmpeg = pytest.mark.skipif(not shutil.which("ffmpeg"), reason="no ffmpeg")
FAST = ["--seconds", "0.2", "--size", "64x48", "--mode", "guide"]


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def clip(tmp_path, data_file) -> Path:
    p = tmp_path / "d.mp4"
    shutil.copy(data_file("cap13_edit2.mp4"), p)
    return p


@pytest.fixture
def speech(tmp_path, data_file) -> Path:
    p = tmp_path / "s.wav"
    shutil.copy(data_file("librivox_0870.wav"), p)
    return p


def _run(argv, capsys) -> tuple[int, str]:
    rc = main(argv)
    return rc, capsys.readouterr().err


def test_output_that_names_an_input_is_refused(tmp_path, clip, speech, portrait_path, capsys,
                                               monkeypatch):
    photo = tmp_path / "me.png"
    shutil.copy(portrait_path, photo)
    (tmp_path / "link.mp4").symlink_to(clip)
    monkeypatch.chdir(tmp_path)
    before = {p: _sha(p) for p in (clip, speech, photo)}
    cases = [
        ["render", "--driver", str(clip), "--out", str(clip)],
        ["render", "--driver", "d.mp4", "--out", "./sub/../d.mp4"],
        ["render", "--driver", str(clip), "--out", "link.mp4"],  # a link to the input
        ["render", "--driver", str(clip), "--portrait", str(photo), "--out", str(photo)],
        ["render", "--audio", str(speech), "--out", str(speech)],
        ["run", "--video", str(clip), "--record", str(clip), "--no-vcam", "--seconds", "1"],
        ["render", "--driver", str(clip), "--out", str(clip), "-y"],  # -y does not change that
    ]
    (tmp_path / "sub").mkdir()
    for argv in cases:
        rc, err = _run(argv + ["--mode", "guide"], capsys)
        assert rc == 2, (argv, err)
        assert "is the same file as the" in err and "would destroy" in err, err
        assert "Traceback" not in err
    assert {p: _sha(p) for p in before} == before
    assert (tmp_path / "link.mp4").is_symlink()


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_output_that_is_not_a_regular_file_is_left_alone(tmp_path, clip, capsys, kind):
    out = tmp_path / "out.mp4"
    if kind == "fifo":
        os.mkfifo(out)
    elif kind == "device":
        try:
            os.mknod(out, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is
        except PermissionError:
            pytest.skip("creating a device node needs root")
    else:
        out.mkdir()
    rc, err = _run(["render", "--driver", str(clip), "--out", str(out), "-y"] + FAST, capsys)
    assert rc == 2 and "cannot write" in err and "only writes regular files" in err, err
    mode = os.lstat(out).st_mode
    assert {"fifo": stat.S_ISFIFO, "device": stat.S_ISCHR, "folder": stat.S_ISDIR}[kind](mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.mp4", "out.mp4"]


@pytest.mark.parametrize("name", ["x.avi", "x.txt", "noext"])
def test_unknown_video_extensions_are_refused(tmp_path, clip, capsys, name):
    rc, err = _run(["render", "--driver", str(clip), "--out", str(tmp_path / name)] + FAST, capsys)
    assert rc == 2 and ".mp4, .mov or .mkv" in err, err
    assert not (tmp_path / name).exists()


@needs_ffmpeg
@pytest.mark.parametrize("name,kind", [("x.mkv", "matroska"), ("x.mov", "qt"), ("x.MP4", "iso5")])
def test_the_extension_decides_the_container(tmp_path, clip, speech, capsys, name, kind):
    out = tmp_path / name
    rc, err = _run(["render", "--driver", str(clip), "--audio", str(speech), "--out", str(out)]
                   + FAST, capsys)
    assert rc == 0, err
    info = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(out)],
        capture_output=True, text=True, check=True).stdout)
    brand = info["format"].get("tags", {}).get("major_brand", "").strip()
    assert kind in (brand, info["format"]["format_name"].split(",")[0]), info["format"]
    assert sorted(s["codec_type"] for s in info["streams"]) == ["audio", "video"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["d.mp4", "s.wav", name])


@needs_ffmpeg
def test_an_existing_file_is_replaced_only_when_asked(tmp_path, clip, capsys):
    out = tmp_path / "old.mp4"
    out.write_bytes(b"an earlier render")
    rc, err = _run(["render", "--driver", str(clip), "--out", str(out)] + FAST, capsys)
    assert rc == 2 and "already exists" in err and "--overwrite (or -y)" in err, err
    assert out.read_bytes() == b"an earlier render"
    rc, err = _run(["render", "--driver", str(clip), "--out", str(out), "-y"] + FAST, capsys)
    assert rc == 0, err
    assert out.stat().st_size > 1000


@needs_ffmpeg
def test_a_terminal_is_asked_like_ffmpeg(tmp_path, clip):
    """On a terminal the user is asked; 'n' keeps the file."""
    import pty

    out = tmp_path / "old.mp4"
    out.write_bytes(b"keep me")
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "kf_desktop", "render", "--driver", str(clip),
                             "--out", str(out), *FAST], stdin=slave, stderr=slave,
                            stdout=subprocess.DEVNULL, cwd=REPO)
    os.close(slave)
    seen = b""
    while b"Overwrite? [y/N]" not in seen:
        chunk = os.read(master, 1024)
        assert chunk, seen
        seen += chunk
    os.write(master, b"n\n")
    assert proc.wait(timeout=60) == 2
    try:
        while chunk := os.read(master, 1024):
            seen += chunk
    except OSError:  # EIO: the child closed the terminal
        pass
    os.close(master)
    assert b"not overwriting" in seen and out.read_bytes() == b"keep me"


def test_a_target_another_kf_desktop_writes_is_refused(tmp_path, clip):
    """A second process's real lock on the target refuses this render."""
    out = tmp_path / "call.mp4"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from kf_desktop.output_lock import OutputLock
        with OutputLock({str(out)!r}):
            print("locked", flush=True)
            sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = subprocess.run([sys.executable, "-m", "kf_desktop", "run", "--video", str(clip),
                              "--record", str(out), "--no-vcam", "--seconds", "2",
                              "--mode", "guide"], capture_output=True, text=True, cwd=REPO,
                             timeout=120)
        assert res.returncode == 2, res.stderr
        assert f"another kf-desktop is writing {out}" in res.stderr
        assert "pass --record with another file name" in res.stderr
    finally:
        holder.communicate("")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.mp4"]  # lock file gone too


def test_record_into_a_missing_folder_names_record(tmp_path, clip, capsys):
    out = tmp_path / "nowhere" / "call.mp4"
    rc, err = _run(["run", "--video", str(clip), "--record", str(out), "--no-vcam",
                    "--seconds", "1", "--mode", "guide"], capsys)
    assert rc == 2 and "does not exist" in err and "--record" in err and "--out" not in err, err


def test_python_m_runs_its_own_engine_whatever_the_current_folder_holds(tmp_path):
    """A planted engine/ (and ui/) where the user stands is never imported."""
    for pkg in ("engine", "ui"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text(
            f"open({str(tmp_path / 'PWNED')!r}, 'w').write({pkg!r}); raise SystemExit(99)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-m", "kf_desktop", "render", "--portrait",
                          "missing.png", "--driver", "missing.mp4"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert res.returncode == 2 and "no portrait photo at missing.png" in res.stderr, res.stderr
    res = subprocess.run([sys.executable, "-m", "kf_desktop", "--version"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert res.returncode == 0 and "kf-desktop" in res.stdout
    assert not (tmp_path / "PWNED").exists()
