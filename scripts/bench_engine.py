#!/usr/bin/env python
"""Knot Forcing engine benchmark: per-chunk ms, committed frames/s, tokens/s
and peak memory for the cached stream (both cache-write modes) next to the
plain reference path, in the same run.

    python scripts/bench_engine.py                      # default preset on CPU
    python scripts/bench_engine.py --device cuda        # default + paper presets
    python scripts/bench_engine.py --json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.bench_engine import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
