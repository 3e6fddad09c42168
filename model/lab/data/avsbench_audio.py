"""AVSBench's sound, read safely: log-mel pickles (tensors only, never arbitrary objects) and wav files turned
into VGGish examples, fitted to a clip's number of frames. Used by the loaders in `model.lab.data.avsbench`.
"""

from __future__ import annotations

import io
import pickle
import warnings
import wave
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torchaudio
from torch import Tensor

from model.modeling.audio_frontend import EXAMPLE_FRAMES, NUM_MEL_BINS, SAMPLE_RATE, waveform_to_examples

_EXAMPLE_SHAPE = (1, EXAMPLE_FRAMES, NUM_MEL_BINS)  # (1, 96, 64)


# ------------------------------------------------------------------------------------------------
# Audio
# ------------------------------------------------------------------------------------------------
class UnsafePickleError(pickle.UnpicklingError):
    """A `.pkl` file asks for something other than a tensor; it is not opened."""


def _load_storage_from_bytes(data: bytes) -> Any:
    # Stand-in for `torch.storage._load_from_bytes`, which a plain pickle of a tensor names for its storage:
    # the bytes are a (legacy) torch.save stream, opened here with weights_only=True instead of False.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


class _TensorOnlyUnpickler(pickle.Unpickler):
    """Unpickler for `pickle.dump(tensor)` files: resolves the three globals a tensor needs, nothing else."""

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset({
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_tensor"),
        ("collections", "OrderedDict"),  # the (empty) backward-hooks argument of _rebuild_tensor_v2
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _load_storage_from_bytes
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(f"refusing to load {module}.{name}: only tensors are accepted")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing persistent ids in a plain pickle")


def load_log_mel_pkl(path: str | Path) -> Tensor:
    """Read a pre-computed S4/MS3 log-mel file without unpickling arbitrary objects.

    Args:
        path: a `.pkl` written by `torch.save` (e.g. `files.write_log_mel`) or, like the official release,
            by `pickle.dump(tensor)`.

    Returns:
        float32 tensor [M, 1, 96, 64] (a [M, 96, 64] file gets its channel axis back), detached, on CPU.

    Raises:
        UnsafePickleError: the file names anything but tensor-rebuilding functions.
        ValueError: the payload is not a tensor of log-mel examples.
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of plain pickles before failing on them; noise here
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as torch_error:  # not a torch.save stream, or one holding non-tensor globals
        try:
            obj = _TensorOnlyUnpickler(io.BytesIO(data)).load()
        except UnsafePickleError as e:
            raise UnsafePickleError(f"{path}: {e}") from torch_error
        except Exception as e:
            raise ValueError(f"{path}: not a readable log-mel tensor file ({e})") from torch_error
    if not isinstance(obj, Tensor):
        raise ValueError(f"{path}: expected a tensor of log-mel examples, found {type(obj).__name__}")
    obj = obj.detach().to("cpu", torch.float32)
    if obj.dim() == 3:
        obj = obj.unsqueeze(1)
    if obj.dim() != 4 or tuple(obj.shape[1:]) != _EXAMPLE_SHAPE:
        raise ValueError(f"{path}: expected log-mel examples [M, 1, 96, 64], got {tuple(obj.shape)}")
    return obj


def read_wav(path: str | Path) -> tuple[Tensor, int]:
    """Read a PCM wav file as mono float samples (the official reader's `int16 / 32768`, channels averaged).

    Args:
        path: 8-bit (unsigned), 16-, 24- or 32-bit (signed) integer PCM wav, any number of channels.

    Returns:
        (waveform float32 [L] in [-1, 1), sample rate in Hz).
    """
    with wave.open(str(path), "rb") as f:
        channels, width, rate, count = f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()
        raw = f.readframes(count)
    if width == 1:
        samples = (np.frombuffer(raw, np.uint8).astype(np.float64) - 128.0) / 128.0
    elif width == 2:
        samples = np.frombuffer(raw, "<i2").astype(np.float64) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        ints = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)  # sign-extend 24-bit
        samples = ints.astype(np.float64) / float(1 << 23)
    elif width == 4:
        samples = np.frombuffer(raw, "<i4").astype(np.float64) / float(1 << 31)
    else:
        raise ValueError(f"{path}: unsupported sample width {width} bytes")
    samples = samples.reshape(-1, channels).mean(axis=1)  # mono = mean of channels (vggish_input.py)
    return torch.from_numpy(samples.astype(np.float32)), rate


def fit_examples(examples: Tensor, count: int, pad: str) -> Tensor:
    """Cut or pad [M, 1, 96, 64] to exactly `count` examples; pad = 'repeat_last' or 'zeros'."""
    m = examples.shape[0]
    if m >= count:
        return examples[:count]
    if pad == "repeat_last" and m > 0:
        filler = examples[-1:].expand(count - m, *_EXAMPLE_SHAPE)
    else:  # zeros in the log-mel domain, the official AVSS padding (and our choice for silent S4/MS3 clips)
        filler = examples.new_zeros((count - m, *_EXAMPLE_SHAPE))
    return torch.cat([examples, filler], dim=0)


def audio_examples_from_wav(path: str | Path, count: int, pad: str) -> Tensor:
    """Log-mel examples of a wav file, fitted to one per frame.

    Args:
        path: wav file (see `read_wav`); resampled to 16 kHz when needed.
        count: examples wanted (frames per clip).
        pad: 'repeat_last' (S4/MS3 pre-processing) or 'zeros' (AVSS loader) for clips that are too short.

    Returns:
        float32 [count, 1, 96, 64]; whole 0.96 s examples only, as the reference VGGish input.
    """
    waveform, rate = read_wav(path)
    if rate != SAMPLE_RATE:
        waveform = torchaudio.functional.resample(waveform, rate, SAMPLE_RATE)
    return fit_examples(waveform_to_examples(waveform, pad_end=False), count, pad)


