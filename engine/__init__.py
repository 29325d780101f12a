"""The generator and everything the model needs.

No Qt, no devices, no threads: usable from a notebook or a server.

    from engine import get_preset, KnotForcingStream, load_model
"""

from engine.config import EngineError, ModelConfig, StreamConfig, get_preset
from engine.motion_guide import MotionGuide, warp_guide
from engine.paste_back import CropBox, PasteBack, letterbox
from engine.stream import KnotForcingStream
from engine.weights import WeightsError, load_model, save_model, try_load_trained

__all__ = [
    "CropBox", "EngineError", "KnotForcingStream", "ModelConfig", "MotionGuide", "PasteBack",
    "StreamConfig", "WeightsError", "get_preset", "letterbox", "load_model", "save_model",
    "try_load_trained", "warp_guide",
]
