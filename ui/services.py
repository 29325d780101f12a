"""The window's door to kf_desktop (no Qt).

Everything the window needs from the capture/engine side goes through one
``Services`` object, so tests swap the webcam for a video file and the
virtual-camera driver for an in-memory backend while the rest of the window
runs for real. Every kf_desktop import happens inside a function, and those
functions run on worker threads: importing torch and mediapipe (seconds) never
blocks the window, and ``import ui.main_window`` stays light.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ui.options import DEFAULT_GAINS, DeviceEntry, StreamOptions

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PORTRAIT = REPO_ROOT / "resources" / "portraits" / "astronaut.png"


# -- defaults (real devices) ---------------------------------------------------
def list_cameras() -> list[DeviceEntry]:
    from kf_desktop.sources import list_cameras as _list

    return [DeviceEntry(c.index, c.name, c.path) for c in _list()]


def _audio_module() -> Any:
    try:
        from kf_desktop.audio import mic
    except (ImportError, OSError):  # no audio package / no PortAudio on this machine
        return None
    return mic


def list_microphones() -> list[DeviceEntry]:
    mic = _audio_module()
    if mic is None:
        return []
    # MicInfo.name is what MicSource(device=...) takes: names survive
    # re-plugging, PortAudio indices do not.
    return [DeviceEntry(m.name, m.name, getattr(m, "hostapi", "") or "") for m in mic.list_microphones()]


def open_camera(entry: DeviceEntry, opts: StreamOptions) -> Any:
    from kf_desktop.sources import CameraSource

    return CameraSource(int(entry.key), size=(1280, 720), fps=opts.fps)


def open_video(path: str, opts: StreamOptions) -> Any:
    """A video file as the camera: real time, looping."""
    from kf_desktop.sources import VideoFileSource

    return VideoFileSource(Path(path), realtime=True, loop=True)


def demo_clip() -> str | None:
    """The fetched talking-head clip (`kf-desktop data fetch`), if it is there."""
    from kf_desktop.cli import DEMO_DRIVER
    from kf_desktop.data import data_dir

    path = data_dir() / DEMO_DRIVER
    return str(path) if path.is_file() else None


def open_mic(entry: DeviceEntry, opts: StreamOptions) -> Any:
    from kf_desktop.audio.mic import MicSource

    return MicSource(entry.key)


def make_vcam(opts: StreamOptions, mirror: bool, backend: str | None = None) -> Any:
    w, h = opts.out_size
    # As `kf-desktop run`: frames held to a constant delay, which the virtual
    # microphone then matches, and which paces a chunked generator's frames
    # (c at a time) at their capture cadence instead of showing the last one.
    from kf_desktop.av_delay import HeldVirtualCameraSink

    return HeldVirtualCameraSink(w, h, opts.fps, backend=backend, mirror=mirror)


def check_virtual_mic() -> tuple[bool, str, str]:
    """(ok, detail, fix): the check `kf-desktop doctor` runs."""
    from kf_desktop.audio.virtual_mic import check_virtual_mic as _check

    return _check()


def make_virtual_mic(opts: StreamOptions) -> Any:
    """The delayed virtual microphone sink of `kf-desktop run --virtual-mic --av-trim MS`."""
    from kf_desktop.audio.virtual_mic import VirtualMicSink

    return VirtualMicSink(opts.av_trim_ms)


def probe_vcam(opts: StreamOptions, backend: str | None = None) -> tuple[bool, str, str]:
    """Open and close the virtual camera once: (ok, device or reason, fix).
    Only while not streaming (the device is busy then)."""
    from kf_desktop import sinks

    probe = getattr(sinks, "probe_virtual_camera", None)
    if probe is None:
        return True, "", ""
    w, h = opts.out_size
    return probe(w, h, opts.fps, backend=backend)


def vcam_fix(system: str | None = None) -> str:
    from kf_desktop.sinks import vcam_setup_hint

    return vcam_setup_hint(system)


def load_portrait(path: str) -> Any:
    """Load and validate a photo: raises UserError/NoFaceError with the reason."""
    from kf_desktop.face import FaceAnalyzer
    from kf_desktop.portrait import load_portrait as _load

    with FaceAnalyzer(static=True, max_faces=2) as analyzer:
        return _load(path, analyzer)


def resolve_device(spec: str) -> str:
    from kf_desktop.compute import resolve_device as _resolve

    return _resolve(spec)


def make_generator(mode: str, device: str) -> Any:
    from kf_desktop.generators import make_generator as _make

    return _make(mode, device)


def make_gains(values: dict[str, float]) -> Any:
    """A ``kf_desktop.retarget.Gains`` from the sliders; unknown names are
    ignored so the window works with whichever fields Gains has."""
    from kf_desktop.retarget import Gains

    names = {f.name for f in dataclasses.fields(Gains)}
    return Gains(**{k: float(v) for k, v in values.items() if k in names})


def make_session(*, opts: StreamOptions, device: str, portrait: Any, source_factory: Callable | None,
                 mic_factory: Callable | None, generator: Any, sinks: list,
                 on_event: Callable, virtual_mic: Any = None, video: Any = None) -> Any:
    """``virtual_mic`` (from make_virtual_mic) is wired as the CLI does it: the
    mouth at a fixed lag, the sink attached to the session and to ``video``
    (whose ``target_delay_s`` it matches)."""
    from kf_desktop.session import Session, SessionConfig

    fields = {f.name for f in dataclasses.fields(SessionConfig)}
    kw: dict[str, Any] = dict(portrait=portrait, source_factory=source_factory,
                              out_size=tuple(opts.out_size), fps=opts.fps,
                              device=device,
                              gains=make_gains(opts.gains or DEFAULT_GAINS),
                              mirror_output=False)  # mirroring is per sink (VcamSlot / preview)
    if generator is not None:
        kw["generator_factory"] = lambda: generator
    if mic_factory is not None:
        for name in ("audio_factory", "mic_factory", "audio_source_factory"):
            if name in fields:
                kw[name] = mic_factory
                break
        else:
            log.info("this Session has no microphone input yet; mic is ignored")
    if "idle_motion" in fields:  # used whenever no face drives the avatar
        idle = default_idle_motion()
        if idle is not None:
            kw["idle_motion"] = idle
    if virtual_mic is not None:
        from kf_desktop.audio.virtual_mic import DEFAULT_AUDIO_LAG_MS

        kw["audio_lag_ms"] = DEFAULT_AUDIO_LAG_MS
        sinks = [*sinks, virtual_mic]
    kw = {k: v for k, v in kw.items() if k in fields}
    session = Session(SessionConfig(**kw), sinks, on_event=on_event)
    if virtual_mic is not None:
        virtual_mic.attach(session, video)
    return session


def default_idle_motion() -> Callable | None:
    """Idle head sway and blinks when no face drives the avatar, if kf_desktop has one."""
    for mod, name in (("kf_desktop.idle_motion", "IdleMotion"),):
        try:
            m = __import__(mod, fromlist=[name])
        except ImportError:
            continue
        cls = getattr(m, name, None)
        if cls is not None:
            try:
                return cls()
            except Exception:  # an idle generator that needs arguments we don't know
                log.exception("could not create %s.%s", mod, name)
    return None


@dataclass
class Services:
    list_cameras: Callable[[], list[DeviceEntry]] = list_cameras
    list_microphones: Callable[[], list[DeviceEntry]] = list_microphones
    open_camera: Callable[[DeviceEntry, StreamOptions], Any] = open_camera
    open_video: Callable[[str, StreamOptions], Any] = open_video
    demo_clip: Callable[[], str | None] = demo_clip
    open_mic: Callable[[DeviceEntry, StreamOptions], Any] | None = open_mic
    make_vcam: Callable[[StreamOptions, bool], Any] = make_vcam
    probe_vcam: Callable[[StreamOptions], tuple[bool, str, str]] = probe_vcam
    vcam_fix: Callable[[], str] = vcam_fix
    check_virtual_mic: Callable[[], tuple[bool, str, str]] = check_virtual_mic
    make_virtual_mic: Callable[[StreamOptions], Any] = make_virtual_mic
    load_portrait: Callable[[str], Any] = load_portrait
    resolve_device: Callable[[str], str] = resolve_device
    make_generator: Callable[[str, str], Any] = make_generator
    make_gains: Callable[[dict], Any] = make_gains
    make_session: Callable[..., Any] = make_session
    default_portrait: str = str(DEFAULT_PORTRAIT)
