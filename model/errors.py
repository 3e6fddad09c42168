"""Errors raised by the model package.

Everything here derives from `ModelError`, so callers (CLI, worker) can catch one type and turn it
into a stable error code. Messages say what was wrong and how to fix it.
"""


class ModelError(Exception):
    """Base class of every error raised by `model`."""


class ConfigError(ModelError):
    """A model config is invalid, or does not match what a checkpoint or variant expects."""


class CheckpointError(ModelError):
    """A checkpoint file is unreadable, not ours, or its tensors do not fit the model."""


class WeightImportError(ModelError):
    """A public weight file (PVT-v2, ResNet-50, VGGish) does not have the expected layout."""


class DatasetError(ModelError):
    """A dataset folder does not hold what was asked for (a missing metadata file, an empty split)."""
