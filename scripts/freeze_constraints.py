"""Write constraints.txt: the exact versions of a tested .venv.

    .venv/bin/python scripts/freeze_constraints.py > constraints.txt

Run it after the whole test suite passed in that venv (./kf.sh test), and
commit the result on purpose. ./kf.sh installs with `-c constraints.txt`;
pyproject.toml keeps compatible ranges for people who pip-install the
package. `pip freeze`, less:
- the project itself (an editable install);
- mediapipe: installed by kf.sh with --no-deps and its own pin;
- local version labels (torch 2.13.0+cpu -> 2.13.0: the same release is the
  CUDA wheel on PyPI and the CPU wheel on the PyTorch index);
and with OVERRIDES for packages whose tested version cannot hold on every
machine (each with its reason).
"""

from __future__ import annotations

import subprocess
import sys

SKIP = {"kf-desktop", "mediapipe"}
OVERRIDES = {
    # torch==2.13.0's CUDA wheel (PyPI, Linux) requires triton==3.7.1 exactly;
    # the CPU wheel requires none, so a CPU venv may hold a newer one. Pin the
    # one both can install.
    "triton": "3.7.1",
}


def canonical(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


def freeze() -> list[str]:
    out = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                         capture_output=True, text=True, check=True).stdout
    lines = []
    for line in out.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-e")) or "==" not in line:
            continue  # comments, editables, direct URLs
        name, version = line.split("==", 1)
        if canonical(name) in SKIP:
            continue
        version = OVERRIDES.get(canonical(name), version.split("+", 1)[0])
        lines.append(f"{name}=={version}")
    return sorted(lines, key=lambda s: canonical(s.split("==")[0]))


def main() -> int:
    py = ".".join(map(str, sys.version_info[:3]))
    print("# Exact versions the test suite passed with (Python %s, %s)." % (py, sys.platform))
    print("# Used by ./kf.sh (pip install -c constraints.txt). Refresh on purpose, after")
    print("# ./kf.sh test passed:  .venv/bin/python scripts/freeze_constraints.py > constraints.txt")
    print("# (rules and overrides: scripts/freeze_constraints.py; `kf-desktop doctor` lists")
    print("# installed versions that differ from these)")
    for line in freeze():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
