"""Hidden temporary videos beside an output, and the cleanup of ones that a
killed process left behind.

A temporary name carries a random token, and the token is registered (with
the creating pid and the absolute path) in a per-user folder under the app's
cache. The cleanup only ever touches a file that such a registration names,
at that exact path, with that token in its name: a file some other program
(or the user) made that merely looks similar is never removed."""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Callable

from kf_desktop.user_dirs import app_cache

log = logging.getLogger(__name__)

#: A temp file younger than this is never removed (it may belong to a live
#: process in another PID namespace sharing the folder).
STALE_TEMP_MIN_AGE_S = 60.0


def registry_dir() -> Path:
    return app_cache() / "temp-files"


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # no cheap, safe check (os.kill(pid, 0) terminates on Windows)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def new_temp(path: Path, kind: str = "tmp") -> Path:
    """Create (O_EXCL, the user's umask) and register a fresh hidden temp file
    next to ``path``, keeping ``path``'s extension (the encoder picks the
    container from it). Raises OSError when it cannot be created."""
    token = secrets.token_hex(8)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{token}.{kind}{path.suffix or '.mp4'}")
    # Not mkstemp: its 0600 mode would stick to the final video.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        reg = registry_dir()
        reg.mkdir(parents=True, exist_ok=True)
        (reg / f"{token}.json").write_text(json.dumps(
            {"path": os.path.abspath(tmp), "pid": os.getpid(), "token": token,
             "created": time.time()}))
    except OSError as e:  # no registry: the file is then never auto-cleaned
        log.debug("could not register %s: %s", tmp, e)
    return tmp


def _token_of(tmp: Path) -> str | None:
    stem = tmp.name.split(".")
    for part in stem:
        if "-" in part:
            tok = part.rsplit("-", 1)[1]
            if len(tok) == 16 and all(c in "0123456789abcdef" for c in tok):
                return tok
    return None


def forget(tmp: Path | None) -> None:
    """Drop the registration of a temp file that was renamed or removed."""
    if tmp is None:
        return
    token = _token_of(tmp)
    if token:
        try:
            (registry_dir() / f"{token}.json").unlink()
        except OSError:
            pass


def discard(tmp: Path | None) -> None:
    if tmp is None:
        return
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    forget(tmp)


def clean_stale(folder: Path, *, salvage: Callable[[Path], int],
                min_age_s: float = STALE_TEMP_MIN_AGE_S,
                now: float | None = None) -> list[tuple[Path, Path | None]]:
    """Handle the registered temp files in ``folder`` whose process has died
    and that were not touched for ``min_age_s``: a recording whose complete
    fragments play (``salvage(path)`` > 0) is kept as ``<stem>.partial<ext>``
    when that name is free, anything else is removed. Each is said in one
    warning; returns (temp file, kept-as or None) pairs."""
    handled: list[tuple[Path, Path | None]] = []
    now = time.time() if now is None else now
    try:
        folder_real = os.path.realpath(folder)
        entries = sorted(registry_dir().glob("*.json"))
    except OSError:
        return handled
    for reg in entries:
        try:
            info = json.loads(reg.read_text())
            path, pid, token = Path(info["path"]), int(info["pid"]), str(info["token"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if reg.stem != token or token not in path.name or \
                os.path.realpath(path.parent) != folder_real:
            continue
        if pid == os.getpid() or (_pid_alive(pid) and
                                  not (os.name != "posix" and now - info.get("created", now) > 86400)):
            continue
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            reg.unlink(missing_ok=True)  # finished elsewhere; only the record was left
            continue
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < min_age_s:
            continue
        stem = path.name[1:].split(f".{pid}-{token}.")[0]
        kind = path.name.split(f"{token}.")[-1].split(".")[0]
        keep = folder / f"{stem}.partial{path.suffix}"
        try:
            if kind == "tmp" and not keep.exists() and salvage(path) > 0:
                os.replace(path, keep)
                log.warning("kept the recording of a kf-desktop that was killed (pid %d) as %s",
                            pid, keep)
                handled.append((path, keep))
            else:
                os.unlink(path)
                log.warning("removed %s, an unfinished temporary file of a kf-desktop that "
                            "was killed (pid %d)", path, pid)
                handled.append((path, None))
        except OSError:
            continue
        reg.unlink(missing_ok=True)
    return handled
