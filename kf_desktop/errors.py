"""User-facing errors.

A ``UserError`` is something the user can fix (a bad photo, a missing device,
an unwritable path). The CLI prints ``message`` and ``hint`` without a
traceback and exits non-zero; the GUI shows them in a banner.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by input or environment that the user can fix."""

    exit_code = 2

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.hint}" if self.hint else self.message


class NoFaceError(UserError):
    """The portrait or frame has no usable face."""


class DeviceError(UserError):
    """A camera, microphone or virtual camera is missing or failed."""


class DataMissingError(UserError):
    """Fetched data (clips, speech) is not in the cache yet."""
