"""`python -m kf_desktop`: the same as the `kf-desktop` command.

`-m` puts the current folder first on ``sys.path``, and the app's own
top-level packages have common names (``engine``, ``ui``): a folder of that
name where the user stands would be imported instead of the app's. So the
current folder is taken off the path, unless it is where the app itself
lives (running from a source checkout)."""

import os
import sys


def _own_packages_only() -> None:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cwd = os.getcwd()
    sys.path[:] = [p for p in sys.path
                   if os.path.abspath(p or os.curdir) != cwd or cwd == here]


_own_packages_only()

from kf_desktop.cli import main  # noqa: E402  (after the path is fixed)

raise SystemExit(main())
