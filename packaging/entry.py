"""Frozen entry point (PyInstaller) of both programs in the app folder.

`kf-desktop` is the command line; `kf-desktop-gui` (same code, built as a
windowed program on Windows/macOS) opens the window, passing its arguments on
(`kf-desktop-gui --check`). The program's own name decides which.
"""

import multiprocessing
import sys
from pathlib import Path

from kf_desktop.cli import main

if __name__ == "__main__":
    multiprocessing.freeze_support()  # worker processes of a frozen app
    argv = sys.argv[1:]
    if Path(sys.executable).stem.lower().endswith("-gui"):
        argv = ["gui", *argv]
    sys.exit(main(argv))
