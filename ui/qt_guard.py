"""Guard against a Qt binding that leaks references to None.

PySide6 6.12.0 drops one reference to ``None`` for every QPainter method that
returns nothing (save, restore, setFont, fillRect, ...). On Python < 3.12
``None`` is an ordinary object, so after a few thousand preview paints its
count reaches zero and the interpreter aborts (``Fatal Python error:
none_dealloc``), with nothing in the log. pyproject and constraints.txt keep
that release out; this module is the second line: ``kf-desktop doctor``
flags a leaking binding, and the window, if it finds itself on one anyway,
lifts ``None``'s count out of the leak's reach (what Python 3.12 does for
every install by making ``None`` immortal) and says which version to install.
"""

from __future__ import annotations

import sys

#: Releases measured to leak (tests/ui/test_preview_refcount.py).
KNOWN_BAD = frozenset({"6.12.0"})
#: The release the project is tested with (constraints.txt).
TESTED = "6.11.3"
FIX = (f"pip install 'PySide6-Essentials=={TESTED}' 'shiboken6=={TESTED}' "
       "(or re-run ./kf.sh, which installs the tested versions)")


def binding_version() -> str:
    import PySide6

    return PySide6.__version__


def none_refs_lost_per_call(calls: int = 64) -> float:
    """References to None lost per void QPainter call (0 on a sound binding).
    Paints on a QImage: needs no display and no QApplication."""
    from PySide6.QtGui import QImage, QPainter

    img = QImage(4, 4, QImage.Format.Format_ARGB32_Premultiplied)
    p = QPainter(img)
    try:
        before = sys.getrefcount(None)
        for _ in range(calls):
            p.save()
            p.restore()
        after = sys.getrefcount(None)
    finally:
        p.end()
    return (before - after) / (2 * calls)


def assess(version: str, lost_per_call: float) -> tuple[bool, str, str]:
    """(ok, detail, fix) for a binding ``version`` that loses
    ``lost_per_call`` references to None per void painter call."""
    if lost_per_call >= 0.5:
        return (False, f"PySide6 {version} leaks a reference to None per painter call "
                       f"({lost_per_call:.1f} measured): the window would crash after a "
                       "minute or two of streaming", FIX)
    if version in KNOWN_BAD:
        return (False, f"PySide6 {version} is a known-bad release (it leaks references "
                       "to None while painting)", FIX)
    return True, version, ""


def check_binding() -> tuple[bool, str, str]:
    """(ok, detail, fix) of the installed binding, for doctor and the window."""
    return assess(binding_version(), none_refs_lost_per_call())


def protect_none(headroom: int = 1 << 40) -> bool:
    """Raise None's reference count by ``headroom`` so a leaking binding
    cannot bring it to zero (at ~1,000 lost references a second, 2**40
    lasts over 30 years). Nothing to do on Python >= 3.12 (None is immortal)."""
    if sys.version_info >= (3, 12):
        return False
    import ctypes

    # ob_refcnt is the first field of every PyObject (Py_ssize_t).
    ctypes.c_ssize_t.from_address(id(None)).value += headroom
    return True
