"""What the user chose, as plain data (no Qt): the bridge snapshots one of
these under a lock before every start/restart, like the worker thread in Qt's
mandelbrot example snapshots its parameters."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

#: Input modes: (id, label). Ids are what QSettings stores.
MODES: tuple[tuple[str, str], ...] = (
    ("webcam+mic", "Webcam + microphone"),
    ("mic", "Microphone only"),
    ("webcam", "Webcam only"),
)
#: Generators: (id, label); ids are ``kf_desktop.generators.make_generator`` modes.
GENERATORS: tuple[tuple[str, str], ...] = (
    ("generator", "Knot Forcing model"),
    ("guide", "Guide only (fast)"),
)
#: Compute devices: (id, label); ids are ``kf_desktop.compute.resolve_device`` specs.
COMPUTE_DEVICES: tuple[tuple[str, str], ...] = (
    ("auto", "Automatic"),
    ("cpu", "CPU"),
    ("cuda", "GPU (CUDA)"),
)
#: Output sizes offered in the UI (the virtual camera's format).
OUTPUT_SIZES: tuple[tuple[int, int], ...] = ((1280, 720), (960, 540), (640, 360))

GAIN_NAMES: tuple[str, ...] = ("head", "expression", "mouth", "eyes")
DEFAULT_GAINS: dict[str, float] = {"head": 1.0, "expression": 1.0, "mouth": 1.0, "eyes": 1.0,
                                   "smoothing": 0.5}


def uses_camera(mode: str) -> bool:
    return mode in ("webcam+mic", "webcam")


def uses_mic(mode: str) -> bool:
    return mode in ("webcam+mic", "mic")


@dataclass(frozen=True)
class DeviceEntry:
    """One camera or microphone as the pickers show it. ``key`` is what the
    device layer opens (a camera index, a PortAudio device index); ``name``
    is what the user sees and what the settings remember (indices move when
    devices come and go, names mostly do not)."""

    key: object
    name: str
    detail: str = ""


@dataclass(frozen=True)
class VideoKey:
    """``DeviceEntry.key`` of a video file offered as a camera (it loops, in
    real time, like `kf-desktop run --video`)."""

    path: str


#: What the "Video file…" dialog offers.
VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm")


def video_entry(path: str, demo: bool = False) -> DeviceEntry:
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    return DeviceEntry(VideoKey(str(path)), f"Demo clip ({name})" if demo else f"Video: {name}",
                       str(path))


def is_video(entry: DeviceEntry | None) -> bool:
    return entry is not None and isinstance(entry.key, VideoKey)


@dataclass(frozen=True)
class StreamOptions:
    portrait: str = ""
    mode: str = "webcam+mic"
    camera: DeviceEntry | None = None
    mic: DeviceEntry | None = None
    generator: str = "guide"
    device: str = "auto"
    out_size: tuple[int, int] = (1280, 720)
    fps: float = 30.0
    vcam_enabled: bool = True
    output_mirror: bool = False
    #: The delayed virtual microphone (issue 11; `kf-desktop run --virtual-mic`)
    #: and its A/V trim (`--av-trim`, ms); it needs a microphone input.
    virtual_mic: bool = False
    av_trim_ms: float = 0.0
    gains: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_GAINS))

    def with_(self, **kw) -> "StreamOptions":
        return replace(self, **kw)

    @property
    def sync_audio(self) -> bool:
        """The virtual microphone is asked for and the mode has a microphone:
        the virtual camera then holds frames to a constant delay."""
        return self.virtual_mic and uses_mic(self.mode)

    def restart_key(self) -> tuple:
        """The options whose change needs a new session (the rest are applied
        to the running one). A device counts only while it is plugged in
        (``key`` not None): a chosen camera that is unplugged mid-stream is the
        session's to reopen, not a reason to restart, while a camera that
        appears when the session has none is."""
        # A device the mode does not use counts as none (the session's
        # options record it so): changing the trim in mic-only mode with a
        # camera listed must not restart the stream.
        cam = self.camera.name if (self.camera and self.camera.key is not None
                                   and uses_camera(self.mode)) else None
        mic = self.mic.name if self.mic and self.mic.key is not None and uses_mic(self.mode) \
            else None
        return (self.mode, cam, mic, self.generator, self.device, self.out_size, self.fps,
                self.sync_audio)
