"""`kf-desktop doctor`: what works on this machine, and a fix for what doesn't."""

from __future__ import annotations

import importlib
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    #: Optional checks (a GPU) do not count as problems.
    optional: bool = False


def _python() -> Check:
    v = sys.version_info
    ok = v >= (3, 10)
    return Check("python", ok, platform.python_version(),
                 "" if ok else "install Python 3.10 or newer")


def _torch() -> list[Check]:
    try:
        import torch
    except ImportError as e:
        return [Check("torch", False, str(e), "run ./kf.sh setup (installs torch==2.13.0)")]
    out = [Check("torch", True, torch.__version__)]
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        mem = torch.cuda.get_device_properties(0).total_memory / 2**30
        out.append(Check("gpu", True, f"{name}, {mem:.0f} GiB, CUDA {torch.version.cuda}"))
    else:
        out.append(Check("gpu", False, "no CUDA GPU: the generator runs on the CPU "
                         "(guide-only is the real-time fallback)",
                         "for the full model in real time use a machine with an NVIDIA GPU "
                         "and a CUDA build of torch", optional=True))
    return out


def _module(name: str, fix: str) -> Check:
    try:
        mod = importlib.import_module(name)
    except Exception as e:  # triton/sounddevice raise OSError etc. on broken installs
        return Check(name, False, f"{type(e).__name__}: {e}", fix)
    return Check(name, True, getattr(mod, "__version__", "importable"))


def _mediapipe_models() -> Check:
    try:
        import mediapipe
    except Exception as e:
        return Check("mediapipe", False, str(e),
                     "pip install --no-deps mediapipe==0.10.21 (newer releases ship no models)")
    root = Path(mediapipe.__file__).parent / "modules" / "face_landmark"
    models = sorted(p.name for p in root.glob("*.tflite")) if root.is_dir() else []
    ok = any("face_landmark" in m for m in models)
    return Check("mediapipe", ok, f"{mediapipe.__version__}; models: {', '.join(models) or 'none'}",
                 "" if ok else "pip install --no-deps mediapipe==0.10.21 (ships the face models)")


def _qt_binding() -> Check:
    """PySide6 importable, and not a release that leaks references to None
    (6.12.0 crashes the window after ~80 s of streaming)."""
    try:
        from ui import qt_guard

        ok, detail, fix = qt_guard.check_binding()
    except Exception as e:
        return Check("PySide6", False, f"{type(e).__name__}: {e}",
                     "pip install PySide6-Essentials (the desktop window)")
    return Check("PySide6", ok, detail, fix)


def _versions() -> Check:
    from kf_desktop.versions import check

    ok, detail, fix = check()
    return Check("tested versions", ok, detail, fix, optional=True)


def _cameras() -> Check:
    from kf_desktop.sources import list_cameras

    cams = list_cameras()
    if cams:
        return Check("cameras", True, "; ".join(f"{c.index}: {c.name}" for c in cams))
    return Check("cameras", False, "no camera found",
                 "plug in a webcam (and close apps that hold it); without one use "
                 "`kf-desktop run --video FILE` or mic-only mode")


def _microphones() -> Check:
    try:
        import sounddevice as sd

        devs = [d for d in sd.query_devices() if d["max_input_channels"] > 0]
    except Exception as e:
        return Check("microphones", False, f"{type(e).__name__}: {e}",
                     "install PortAudio: sudo apt-get install libportaudio2")
    if devs:
        return Check("microphones", True, "; ".join(d["name"] for d in devs[:4]))
    return Check("microphones", False, "no input device",
                 "plug in a microphone; on Linux check `pactl list sources short`")


def _virtual_mic() -> Check:
    """The delayed virtual microphone (`run --virtual-mic`): Linux makes it
    with pactl; Windows/macOS need VB-Audio Virtual Cable / BlackHole."""
    try:
        from kf_desktop.audio.virtual_mic import check_virtual_mic

        ok, detail, fix = check_virtual_mic()
    except Exception as e:  # noqa: BLE001
        ok, detail, fix = False, f"{type(e).__name__}: {e}", ""
    return Check("virtual mic", ok, detail, fix, optional=True)


def _vcam() -> Check:
    from kf_desktop.sinks import probe_virtual_camera

    ok, detail, fix = probe_virtual_camera()
    return Check("virtual camera", ok, detail, fix)


def _ffmpeg() -> Check:
    path = shutil.which("ffmpeg")
    return Check("ffmpeg", bool(path), path or "not found (recorder falls back to OpenCV mp4v)",
                 "" if path else "sudo apt-get install ffmpeg (better mp4 recordings)",
                 optional=True)


def _model() -> Check:
    from kf_desktop.kf_generator import describe_shipped_model

    ok, detail, fix = describe_shipped_model()
    return Check("model weights", ok, detail, fix, optional=True)


def _data() -> Check:
    from kf_desktop.data import PACKAGES, data_dir, is_complete

    root = data_dir()
    missing = [p.spec for p in PACKAGES if not is_complete(p, root)]
    if not missing:
        return Check("demo data", True, str(root))
    return Check("demo data", False, f"missing: {', '.join(missing)}",
                 "run `kf-desktop data fetch`", optional=True)


def collect() -> list[Check]:
    checks = [_python(), *_torch(),
              _module("triton", "pip install triton (Triton kernels; optional on CPU)"),
              Check("kernels", True, __import__("engine.kernels", fromlist=["describe"]).describe()),
              _mediapipe_models(),
              _module("cv2", "pip install 'opencv-python-headless<5'"),
              _qt_binding(),
              _module("pyvirtualcam", "pip install pyvirtualcam"),
              _versions(), _ffmpeg(), _data(), _model(), _cameras(), _microphones(), _vcam(),
              _virtual_mic()]
    return checks


def run_doctor() -> int:
    problems = 0
    for c in collect():
        mark = "ok" if c.ok else ("--" if c.optional else "!!")
        print(f"[{mark}] {c.name:15s} {c.detail}")
        if not c.ok and c.fix:
            print(f"     {'':15s} fix: {c.fix}")
        problems += (not c.ok and not c.optional)
    print(f"\n{problems} problem(s) found" if problems else "\neverything needed works")
    return 1 if problems else 0
