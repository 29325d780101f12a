"""Issue 13 item 17: reproducible installs. constraints.txt holds the exact
tested versions, pyproject's ranges admit them (and keep the crashing
PySide6 out), ./kf.sh installs with them, the refresh command writes the
same format, and doctor names every installed version that differs."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from kf_desktop.versions import canonical, check, differences, read_constraints

REPO = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[0-9][A-Za-z0-9.]*$")


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def test_constraints_pin_exact_versions():
    lines = _lines((REPO / "constraints.txt").read_text())
    assert lines and all(LINE.match(ln) for ln in lines), [ln for ln in lines if not LINE.match(ln)]
    pins = read_constraints(REPO / "constraints.txt")
    assert "kf-desktop" not in pins and "mediapipe" not in pins  # the project; --no-deps
    assert pins["torch"] == "2.13.0"  # no +cpu label: the same pin holds for the CUDA wheel
    from ui.qt_guard import KNOWN_BAD, TESTED

    assert pins["pyside6-essentials"] == pins["shiboken6"] == TESTED
    assert TESTED not in KNOWN_BAD


def test_pyproject_ranges_admit_the_tested_versions_and_exclude_known_bad():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]
            + [r for extra in project["optional-dependencies"].values() for r in extra]]
    pins = read_constraints(REPO / "constraints.txt")
    for req in reqs:
        name = canonical(req.name)
        assert name in pins, f"{req.name} has no tested version in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (str(req), pins[name])
    open_ended = [str(r) for r in reqs if not r.specifier
                  or not any(s.operator in ("<", "<=", "==", "~=") for s in r.specifier)]
    # Only the dlib pair and mediapipe's small runtime deps stay open at the top.
    assert set(open_ended) <= {"dlib-bin", "face-recognition-models", "attrs>=19.1.0",
                               "flatbuffers>=2.0"}, open_ended
    pyside = next(r for r in reqs if canonical(r.name) == "pyside6-essentials")
    assert not pyside.specifier.contains("6.12.0")


def test_kf_sh_installs_with_the_constraints():
    text = (REPO / "kf.sh").read_text()
    assert re.search(r'PIP=\(pip_quiet install .*-c "\$ROOT/constraints\.txt"\)', text)
    assert "cat pyproject.toml constraints.txt kf.sh" in text  # a refresh reinstalls
    readme = (REPO / "README.md").read_text()
    assert ".venv/bin/python scripts/freeze_constraints.py > constraints.txt" in readme


def test_the_refresh_command_writes_pins_of_this_venv():
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "freeze_constraints.py")],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    lines = _lines(out)
    assert lines and all(LINE.match(ln) for ln in lines)
    names = {canonical(ln.split("==")[0]) for ln in lines}
    assert "torch" in names and "kf-desktop" not in names and "mediapipe" not in names
    assert "+" not in out.split("\n", 5)[-1]  # no local version labels


def test_doctor_names_versions_that_differ(tmp_path):
    from importlib import metadata

    installed = metadata.version("numpy")
    diffs = differences({"numpy": "0.0.1", "safetensors": metadata.version("safetensors"),
                         "not-installed-package": "1.0"})
    assert diffs == [("numpy", installed, "0.0.1")]
    fake = tmp_path / "constraints.txt"
    fake.write_text("# comment\nnumpy==0.0.1\n")
    ok, detail, fix = check(fake)
    assert not ok and f"numpy {installed} (tested 0.0.1)" in detail and "-c" in fix

    from kf_desktop.doctor import collect

    assert any(c.name == "tested versions" for c in collect())
