"""Entry points for the `kf-desktop` CLI (wired in kf_desktop/cli.py):

    kf-desktop dataset ...  -> dataset_main(argv)   (kf_desktop.dataset_build; needs mediapipe)
    kf-desktop train ...    -> train_main(argv)     (engine.training; torch only)
    kf-desktop eval ...     -> eval_main(argv)      (kf_desktop.evaluate; mediapipe, dlib optional)
"""

from __future__ import annotations

from typing import Sequence


def dataset_main(argv: Sequence[str] | None = None) -> int:
    from kf_desktop.dataset_build import main

    return main(argv)


def train_main(argv: Sequence[str] | None = None) -> int:
    from engine.training.cli import main

    return main(argv, prog="kf-desktop train")


def eval_main(argv: Sequence[str] | None = None) -> int:
    from kf_desktop.evaluate import main

    return main(argv, prog="kf-desktop eval")


main = train_main
