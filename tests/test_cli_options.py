"""Issue 13 item 9: every option's type and range is checked when it is
parsed: a usage error naming the option (exit 2, no traceback), before any
work starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

# A driver that does not exist: if an option slipped through, the command
# would fail later with another message (or render for ever).
MISSING = "/nonexistent/driver.mp4"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kf_desktop", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("args,option,needle", [
    (["render", "--driver", MISSING, "--fps", "nan"], "--fps", "finite"),
    (["render", "--driver", MISSING, "--fps", "inf"], "--fps", "finite"),
    (["render", "--driver", MISSING, "--fps", "100000"], "--fps", "out of range"),
    (["render", "--driver", MISSING, "--fps", "0"], "--fps", "out of range"),
    (["render", "--driver", MISSING, "--fps", "-25"], "--fps", "out of range"),
    (["render", "--driver", MISSING, "--seconds", "nan"], "--seconds", "finite"),
    (["render", "--driver", MISSING, "--seconds", "inf"], "--seconds", "finite"),
    (["render", "--driver", MISSING, "--seconds", "0"], "--seconds", "out of range"),
    (["render", "--driver", MISSING, "--seconds", "1e9"], "--seconds", "out of range"),
    (["render", "--driver", MISSING, "--size", "0x0"], "--size", "out of range"),
    (["render", "--driver", MISSING, "--device", "cuda:x"], "--device", "auto, cpu, cuda"),
    (["demo", "--fps", "nan"], "--fps", "finite"),
    (["demo", "--seconds=-inf"], "--seconds", "finite"),
    (["run", "--video", MISSING, "--fps", "nan"], "--fps", "finite"),
    (["run", "--video", MISSING, "--fps", "1000"], "--fps", "out of range"),
    (["run", "--video", MISSING, "--seconds", "nan"], "--seconds", "finite"),
    (["run", "--camera", "-1", "--seconds", "1"], "--camera", "out of range"),
    (["run", "--camera", "front"], "--camera", "an index"),
    (["bench", "--seconds", "nan"], "--seconds", "finite"),
    (["bench", "--seconds", "1e6"], "--seconds", "out of range"),
    (["bench", "--fps", "inf"], "--fps", "finite"),
])
def test_bad_option_values_are_usage_errors(args, option, needle):
    res = run_cli(*args)
    assert res.returncode == 2, res.stderr[-600:]
    assert "Traceback" not in res.stderr
    assert f"argument {option}" in res.stderr and needle in res.stderr, res.stderr


def test_values_in_range_are_accepted():
    from kf_desktop.cli import build_parser

    args = build_parser().parse_args(["render", "--fps", "120", "--seconds", "0.5",
                                      "--device", "CUDA:1"])
    assert args.fps == 120.0 and args.seconds == 0.5 and args.device == "cuda:1"
    args = build_parser().parse_args(["run", "--fps", "1", "--camera", "3"])
    assert args.fps == 1.0 and args.camera == 3
