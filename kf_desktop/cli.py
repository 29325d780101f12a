"""Command-line entry points: `kf-desktop <command>`."""

from __future__ import annotations

import argparse
import sys

from kf_desktop import __version__
from kf_desktop.errors import UserError


def _cmd_data(args: argparse.Namespace) -> int:
    from kf_desktop import data
    from kf_desktop.progress import ProgressBar

    bars: dict[str, ProgressBar] = {}

    def progress(label: str, done: int, total: int) -> None:
        bar = bars.setdefault(label, ProgressBar(f"  {label}", total))
        bar.update(done, total)

    print(f"fetching data into {data.data_dir()}")
    root = data.fetch(progress=progress)
    for bar in bars.values():
        bar.close()
    print(f"data ready: {root}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kf-desktop", description=__doc__)
    p.add_argument("--version", action="version", version=f"kf-desktop {__version__}")
    sub = p.add_subparsers(dest="command")
    d = sub.add_parser("data", help="fetch the registry-shipped clips and speech")
    d.add_argument("action", choices=["fetch"])
    d.set_defaults(func=_cmd_data)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"  fix: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
