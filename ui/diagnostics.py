""""Copy diagnostics": one plain-text report a user can paste into a bug
report: versions, OS, devices, GPU, the stream's numbers and the recent log.

Runs on a worker thread (``nvidia-smi`` can take a second). It reads package
versions from their metadata and never imports torch or mediapipe; if the
session already loaded torch, its CUDA view is included.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

PACKAGES = ("kf-desktop", "torch", "mediapipe", "numpy", "opencv-python-headless",
            "PySide6-Essentials", "pyvirtualcam", "sounddevice", "triton")


@dataclass
class DiagnosticsInput:
    """What the window knows; gathered on the GUI thread, cheap."""

    cameras: list[str] = field(default_factory=list)
    microphones: list[str] = field(default_factory=list)
    selected_camera: str = ""
    selected_mic: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    state: str = ""
    vcam: str = ""
    snapshot: dict[str, Any] = field(default_factory=dict)
    log_lines: list[str] = field(default_factory=list)
    log_path: str = ""
    qt: str = ""
    platform_plugin: str = ""


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def gpu_info(timeout: float = 3.0) -> list[str]:
    lines = []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            r = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version",
                                "--format=csv,noheader"], capture_output=True, text=True,
                               timeout=timeout)
            lines += [f"nvidia-smi: {ln.strip()}" for ln in r.stdout.splitlines() if ln.strip()]
            if r.returncode != 0 and not lines:
                lines.append(f"nvidia-smi failed: {r.stderr.strip()[:200]}")
        except (OSError, subprocess.SubprocessError) as e:
            lines.append(f"nvidia-smi failed: {e}")
    else:
        lines.append("nvidia-smi: not found (no NVIDIA driver)")
    torch = sys.modules.get("torch")  # only if the session already loaded it
    if torch is not None:
        try:
            if torch.cuda.is_available():
                lines.append(f"torch CUDA {torch.version.cuda}: {torch.cuda.get_device_name(0)}")
            else:
                lines.append("torch: CUDA not available (CPU)")
        except Exception as e:
            lines.append(f"torch CUDA query failed: {e}")
    else:
        lines.append("torch: not loaded yet (start the stream once to include its CUDA view)")
    return lines


def _fmt_snapshot(snap: dict) -> list[str]:
    if not snap:
        return ["(not streaming)"]
    out = []
    fps = snap.get("fps") or {}
    if fps:
        out.append("fps: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(fps.items())))
    ms = snap.get("ms") or {}
    for k, v in sorted(ms.items()):
        if v:
            out.append(f"ms {k}: " + ", ".join(f"{q} {x:.1f}" for q, x in v.items()
                                              if isinstance(x, (int, float))))
    rest = {k: v for k, v in snap.items() if k not in ("fps", "ms")}
    if rest:
        out.append(json.dumps(rest, default=str, sort_keys=True)[:2000])
    return out


def collect(inp: DiagnosticsInput, log_lines: int = 80) -> str:
    from kf_desktop import __version__

    lines = [f"kf-desktop {__version__} diagnostics", "",
             "## System",
             f"OS: {platform.platform()}",
             f"Python: {sys.version.split()[0]} ({sys.executable})",
             f"Qt: {inp.qt}  platform plugin: {inp.platform_plugin}",
             "", "## Packages"]
    lines += [f"{k}: {v}" for k, v in package_versions().items()]
    lines += ["", "## GPU", *gpu_info(),
              "", "## Devices",
              f"cameras: {', '.join(inp.cameras) or 'none found'}",
              f"microphones: {', '.join(inp.microphones) or 'none found'}",
              f"selected camera: {inp.selected_camera or '-'}",
              f"selected microphone: {inp.selected_mic or '-'}",
              f"virtual camera: {inp.vcam or '-'}",
              "", "## Stream",
              f"state: {inp.state}",
              "options: " + json.dumps(inp.options, default=str, sort_keys=True),
              *_fmt_snapshot(inp.snapshot),
              "", f"## Recent log ({inp.log_path or 'no log file'})",
              *inp.log_lines[-log_lines:]]
    return "\n".join(lines) + "\n"
