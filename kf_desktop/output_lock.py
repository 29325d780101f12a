"""A lock beside an output file while a kf-desktop writes it, so a second
kf-desktop aiming at the same file is refused instead of one recording
silently replacing the other.

The lock is ``.<name>.kf-lock`` next to the target, held with an advisory
``flock`` (POSIX) or ``msvcrt.locking`` (Windows): the system drops it when
the process dies, so a killed run never leaves the target locked."""

from __future__ import annotations

import os
from pathlib import Path

from kf_desktop.errors import UserError


def lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.kf-lock")


def _try_lock(fd: int) -> bool:
    if os.name == "posix":
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    import msvcrt  # pragma: no cover - Windows

    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


class OutputLock:
    """``acquire()`` raises UserError when another process holds the lock;
    ``release()`` removes the lock file. A context manager."""

    def __init__(self, target: str | os.PathLike, option: str = "--out") -> None:
        self.target = Path(target)
        self.option = option
        self.path = lock_path(self.target)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "OutputLock":
        if self._fd is not None:
            return self
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:
                # An unwritable folder: the writer itself reports that, with its fix.
                return self
            if not _try_lock(fd):
                os.close(fd)
                raise UserError(
                    f"another kf-desktop is writing {self.target} right now",
                    f"wait for it to finish, or pass {self.option} with another file name")
            # The holder before us may have removed the file after we opened
            # it: then our lock is on an orphan inode; take the new file.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except OSError:
                same = False
            if same:
                self._fd = fd
                return self
            os.close(fd)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
