"""Installed packages against the tested set (constraints.txt), for
`kf-desktop doctor`: a fresh install that picked up other versions is how a
crashing PySide6 reached users (issue 13, items 1 and 17)."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

CONSTRAINTS = Path(__file__).resolve().parent.parent / "constraints.txt"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_constraints(path: Path = CONSTRAINTS) -> dict[str, str]:
    """{canonical name: exact version} of a constraints file's `name==version` lines."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" not in line or ";" in line:
            continue
        name, version = line.split("==", 1)
        pins[canonical(name)] = version.strip()
    return pins


def differences(pins: dict[str, str]) -> list[tuple[str, str, str]]:
    """(name, installed, tested) for each pinned package installed at another
    version. Local labels do not count (torch 2.13.0+cpu is 2.13.0); packages
    that are not installed (an extra left out) are not reported."""
    out = []
    for name, tested in sorted(pins.items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        if installed.split("+", 1)[0] != tested:
            out.append((name, installed, tested))
    return out


def check(path: Path = CONSTRAINTS) -> tuple[bool, str, str]:
    """(ok, detail, fix)."""
    if not path.is_file():
        return True, "no constraints.txt here (not a source checkout): not compared", ""
    diffs = differences(read_constraints(path))
    if not diffs:
        return True, f"all installed packages match {path.name}", ""
    listed = ", ".join(f"{n} {i} (tested {t})" for n, i, t in diffs)
    return (False, f"{len(diffs)} differ from the tested set: {listed}",
            f"re-run ./kf.sh setup, or: pip install -c {path} -e '{path.parent}[test,eval]'")
