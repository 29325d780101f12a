"""Per-user folders of the app (the fetched data, the temporary-file registry).

The XDG base-directory specification says a relative ``$XDG_CACHE_HOME`` is
invalid and must be ignored: honouring it would make the app read its data
from wherever the user happens to stand."""

from __future__ import annotations

import os
from pathlib import Path


def cache_home(env: dict | None = None) -> Path:
    """``$XDG_CACHE_HOME`` when it is an absolute path, else ``~/.cache``."""
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or ""
    if base and os.path.isabs(base):
        return Path(base)
    return Path.home() / ".cache"


def app_cache(env: dict | None = None) -> Path:
    return cache_home(env) / "kf-desktop"
