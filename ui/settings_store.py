"""Typed access to the persisted settings (QSettings).

One place knows the keys and the defaults, and every read survives a value
of the wrong type (a hand-edited or older settings file) by falling back to
the default instead of crashing the window at start-up. Numbers are checked
for finiteness and range too (``nan`` parses as a float, and a NaN gain used
to stop the window from opening at every start): a bad one falls back to its
default with one logged line per key.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings

from ui.options import COMPUTE_DEVICES, DEFAULT_GAINS, GENERATORS, MODES, OUTPUT_SIZES

MAX_RECENT = 8
#: Smoothing is a share (slider 0-100 %); the other gains go to 200 %.
GAIN_RANGES = {"smoothing": (0.0, 1.0)}
GAIN_RANGE = (0.0, 2.0)

log = logging.getLogger(__name__)


class SettingsStore:
    def __init__(self, settings: QSettings | None = None) -> None:
        self.qs = settings if settings is not None else QSettings()
        self._reported: set[str] = set()  # keys whose bad value was logged

    @classmethod
    def at(cls, path: str | Path) -> "SettingsStore":
        """Settings in an INI file (tests, portable installs)."""
        return cls(QSettings(str(path), QSettings.Format.IniFormat))

    # -- primitives ----------------------------------------------------------
    def _str(self, key: str, default: str = "") -> str:
        v = self.qs.value(key, default)
        return v if isinstance(v, str) else default

    def _bool(self, key: str, default: bool) -> bool:
        v = self.qs.value(key, default)
        if isinstance(v, bool):
            return v
        if isinstance(v, str):
            return v.lower() in ("1", "true", "yes", "on")
        return default

    def _float(self, key: str, default: float, lo: float = -math.inf,
               hi: float = math.inf) -> float:
        """The number at ``key`` if it is finite and in ``lo..hi``, else the
        default (and one log line for that key)."""
        raw = self.qs.value(key, default)
        try:
            v = float(raw)
        except (TypeError, ValueError):
            v = math.nan
        if math.isfinite(v) and lo <= v <= hi:
            return v
        if key not in self._reported:
            self._reported.add(key)
            log.warning("settings file %s: %s=%r is not a number in %g..%g; using the default %g",
                        self.qs.fileName(), key, raw, lo, hi, default)
        return default

    def _choice(self, key: str, choices: tuple[tuple[str, str], ...], default: str) -> str:
        v = self._str(key, default)
        return v if v in {c for c, _ in choices} else default

    def sync(self) -> None:
        self.qs.sync()

    # -- portrait ------------------------------------------------------------
    @property
    def portrait(self) -> str:
        return self._str("portrait/current")

    @portrait.setter
    def portrait(self, path: str) -> None:
        self.qs.setValue("portrait/current", str(path))
        self.add_recent(str(path))

    @property
    def recent_portraits(self) -> list[str]:
        try:
            items = json.loads(self._str("portrait/recent", "[]"))
        except ValueError:
            return []
        return [p for p in items if isinstance(p, str)][:MAX_RECENT] if isinstance(items, list) else []

    def add_recent(self, path: str) -> None:
        items = [p for p in self.recent_portraits if p != path]
        self.qs.setValue("portrait/recent", json.dumps([path, *items][:MAX_RECENT]))

    def remove_recent(self, path: str) -> None:
        self.qs.setValue("portrait/recent",
                         json.dumps([p for p in self.recent_portraits if p != path]))

    # -- input ---------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._choice("input/mode", MODES, "webcam+mic")

    @mode.setter
    def mode(self, v: str) -> None:
        self.qs.setValue("input/mode", v)

    @property
    def camera(self) -> str:
        """The camera's name (what list_cameras reports), "" for the first one."""
        return self._str("input/camera")

    @camera.setter
    def camera(self, name: str) -> None:
        self.qs.setValue("input/camera", name or "")

    @property
    def video_files(self) -> list[str]:
        """Video files chosen as the camera, newest first."""
        try:
            items = json.loads(self._str("input/videos", "[]"))
        except ValueError:
            return []
        return [p for p in items if isinstance(p, str)][:MAX_RECENT] if isinstance(items, list) else []

    def add_video(self, path: str) -> None:
        items = [p for p in self.video_files if p != path]
        self.qs.setValue("input/videos", json.dumps([path, *items][:MAX_RECENT]))

    @property
    def microphone(self) -> str:
        return self._str("input/microphone")

    @microphone.setter
    def microphone(self, name: str) -> None:
        self.qs.setValue("input/microphone", name or "")

    # -- output --------------------------------------------------------------
    @property
    def vcam_enabled(self) -> bool:
        return self._bool("output/vcam", True)

    @vcam_enabled.setter
    def vcam_enabled(self, v: bool) -> None:
        self.qs.setValue("output/vcam", bool(v))

    @property
    def output_mirror(self) -> bool:
        return self._bool("output/mirror", False)

    @output_mirror.setter
    def output_mirror(self, v: bool) -> None:
        self.qs.setValue("output/mirror", bool(v))

    @property
    def virtual_mic(self) -> bool:
        return self._bool("output/virtual_mic", False)

    @virtual_mic.setter
    def virtual_mic(self, v: bool) -> None:
        self.qs.setValue("output/virtual_mic", bool(v))

    @property
    def av_trim_ms(self) -> float:
        """The virtual microphone's A/V trim, clamped like `--av-trim`."""
        from kf_desktop.audio.virtual_mic import TRIM_MAX_MS, TRIM_MIN_MS

        return self._float("output/av_trim_ms", 0.0, TRIM_MIN_MS, TRIM_MAX_MS)

    @av_trim_ms.setter
    def av_trim_ms(self, v: float) -> None:
        self.qs.setValue("output/av_trim_ms", float(v))

    @property
    def preview_mirror(self) -> bool:
        # Like every meeting app's self-view: mirrored by default.
        return self._bool("preview/mirror", True)

    @preview_mirror.setter
    def preview_mirror(self, v: bool) -> None:
        self.qs.setValue("preview/mirror", bool(v))

    @property
    def out_size(self) -> tuple[int, int]:
        text = self._str("output/size", "1280x720")
        try:
            w, h = (int(x) for x in text.split("x"))
        except ValueError:
            return OUTPUT_SIZES[0]
        return (w, h) if (w, h) in OUTPUT_SIZES else OUTPUT_SIZES[0]

    @out_size.setter
    def out_size(self, size: tuple[int, int]) -> None:
        self.qs.setValue("output/size", f"{size[0]}x{size[1]}")

    # -- motion --------------------------------------------------------------
    @property
    def gains(self) -> dict[str, float]:
        return {k: self._float(f"gains/{k}", d, *GAIN_RANGES.get(k, GAIN_RANGE))
                for k, d in DEFAULT_GAINS.items()}

    @gains.setter
    def gains(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.qs.setValue(f"gains/{k}", float(v))

    # -- engine --------------------------------------------------------------
    @property
    def generator(self) -> str:
        return self._choice("engine/generator", GENERATORS, "guide")

    @generator.setter
    def generator(self, v: str) -> None:
        self.qs.setValue("engine/generator", v)

    @property
    def compute_device(self) -> str:
        return self._choice("engine/device", COMPUTE_DEVICES, "auto")

    @compute_device.setter
    def compute_device(self, v: str) -> None:
        self.qs.setValue("engine/device", v)

    # -- hotkeys ---------------------------------------------------------------
    def hotkey(self, action_id: str, default: str) -> str:
        return self._str(f"hotkeys/{action_id}", default)

    # -- window --------------------------------------------------------------
    @property
    def geometry(self) -> QByteArray | None:
        v = self.qs.value("window/geometry")
        return v if isinstance(v, QByteArray) and not v.isEmpty() else None

    @geometry.setter
    def geometry(self, v: QByteArray) -> None:
        self.qs.setValue("window/geometry", v)

    @property
    def window_state(self) -> QByteArray | None:
        v = self.qs.value("window/state")
        return v if isinstance(v, QByteArray) and not v.isEmpty() else None

    @window_state.setter
    def window_state(self, v: QByteArray) -> None:
        self.qs.setValue("window/state", v)
