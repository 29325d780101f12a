"""Audio input, speech features, lip-sync and mouth mixing.

Sources (``MicSource``, ``WavSource``) share one interface, all times in
``time.monotonic()`` seconds and all audio 16 kHz mono float32:

- ``open()`` / ``close()`` (context managers too);
- ``read_new() -> (samples, t_end)``: audio since the previous call, ``t_end``
  the time just after its last sample (the streaming path into ``LipSync``);
- ``read_window(t_end, seconds) -> samples``: audio by time, zeros where none
  was captured (future, before start, while the device is lost);
- ``latest_time()``, ``lost``, ``error``, ``overflows``, ``latency_s``, ``stats()``.

Submodules import lazily so that ``import kf_desktop.audio`` never needs
PortAudio (sounddevice is imported only when a microphone is used).
"""

from __future__ import annotations

from kf_desktop.audio.features import AudioFeatures, FeatureTracker, features_of
from kf_desktop.audio.lipsync import CLOSED, LipSync, MouthShape, mouth_track
from kf_desktop.audio.mic import MicInfo, MicSource, list_microphones, resolve_microphone
from kf_desktop.audio.mix import AudioMotion, MouthMixer, mouth_from_face
from kf_desktop.audio.resample import Resampler, resample
from kf_desktop.audio.ring import BlockClock, RingBuffer
from kf_desktop.audio.wav import WavSource, load_mono16k, load_wav

__all__ = [
    "AudioFeatures", "AudioMotion", "BlockClock", "CLOSED", "FeatureTracker", "LipSync",
    "MicInfo", "MicSource", "MouthMixer", "MouthShape", "Resampler", "RingBuffer",
    "WavSource", "features_of", "list_microphones", "load_mono16k", "load_wav",
    "mouth_from_face", "mouth_track", "resample", "resolve_microphone",
]
