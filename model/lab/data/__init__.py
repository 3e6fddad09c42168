"""Datasets: loaders for the real AVSBench layouts (`avsbench`), the layouts themselves (`layout`) and their
files (`files`).

`model.lab.data.synthetic_scenes` (synthetic scenes) is imported on its own; importing this package does not load it.
"""

from model.lab.data import files, layout
from model.lab.data.avsbench import PAD_FRAME_RGB, AVSSDataset, MS3Dataset, S4Dataset
from model.lab.data.avsbench_audio import UnsafePickleError, audio_examples_from_wav, load_log_mel_pkl, read_wav

__all__ = [
    "PAD_FRAME_RGB",
    "AVSSDataset",
    "MS3Dataset",
    "S4Dataset",
    "UnsafePickleError",
    "audio_examples_from_wav",
    "files",
    "layout",
    "load_log_mel_pkl",
    "read_wav",
]
