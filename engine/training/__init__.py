"""Training the Knot Forcing generator (issue 6): dataset windows, augmentations,
flow-matching x-prediction loss, diffusion-forcing and self-forcing stages,
resumable safetensors checkpoints. torch/numpy only (the dataset cache is
built by kf_desktop/dataset_build.py). CLI: ``python -m engine.training``."""

from engine.training.trainer import TrainConfig, Trainer, train

__all__ = ["TrainConfig", "Trainer", "train"]
