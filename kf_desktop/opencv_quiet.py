"""Keeps OpenCV's own log lines (``[ WARN:0@12.3] global cap.cpp:... can't
open``) off the user's terminal: the app says what went wrong in its own
words (a lost source, a damaged file), once. ``KF_DEBUG=1`` keeps them."""

from __future__ import annotations

import os
import sys


def quiet_opencv() -> None:
    """Silence OpenCV's logging for this process (idempotent). Cheap before
    cv2 is imported: OpenCV reads ``OPENCV_LOG_LEVEL`` when it first logs."""
    if os.environ.get("KF_DEBUG"):
        return
    os.environ["OPENCV_LOG_LEVEL"] = "SILENT"
    if "cv2" not in sys.modules:
        return
    try:
        import cv2.utils.logging as cv_log
    except ImportError:  # an OpenCV build without it: the variable has to do
        return
    cv_log.setLogLevel(cv_log.LOG_LEVEL_SILENT)
