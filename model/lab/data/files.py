"""Reading and writing AVSBench's files: metadata csv, label2idx.json, frames, masks, colour labels, wav,
log-mel pickles. Where each file lives is `model.lab.data.layout`; the loaders (`avsbench`) and the synthetic
dataset writer (`worker.synthetic_dataset`) go through both, so a synthetic dataset is a valid AVSBench tree.
"""

from __future__ import annotations

import csv
import json
import wave
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model.lab.data.layout import PathLike, class_to_colour
from model.modeling.audio_frontend import SAMPLE_RATE


# ------------------------------------------------------------------------------------------------
# Metadata files
# ------------------------------------------------------------------------------------------------
def write_csv(path: PathLike, columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> Path:
    """Write a metadata csv (comma separated, header line, one clip per row), creating parent folders.

    Args:
        path: e.g. `s4_csv_path(root)`.
        columns: header, e.g. `S4_CSV_COLUMNS`; the order matters because S4/MS3 rows are read by position.
        rows: one mapping per clip; every column must be present (extra keys are an error too).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="raise")
        writer.writeheader()
        for row in rows:
            missing = [c for c in columns if c not in row]
            if missing:
                raise ValueError(f"row {dict(row)} lacks columns {missing}")
            writer.writerow(row)
    return path


def read_csv_rows(path: PathLike) -> tuple[list[str], list[list[str]]]:
    """Read a metadata csv as (header, rows of strings), file order kept (the loaders keep it too)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metadata csv not found: {path}")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path} is empty (expected a header line)")
        rows = [row for row in reader if row]  # a trailing blank line is not a clip
    return header, rows


def write_label2idx(path: PathLike, class_names: Sequence[str]) -> Path:
    """Write `label2idx.json`: `{name: id}` in id order, background (id 0) first."""
    if len(set(class_names)) != len(class_names):
        raise ValueError("class names must be unique")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({name: i for i, name in enumerate(class_names)}, indent=1), encoding="utf-8")
    return path


def read_label2idx(path: PathLike) -> dict[str, int]:
    """Read `label2idx.json`; its length is the number of classes (the official loader asserts that)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label2idx.json not found: {path}")
    mapping = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError(f"{path} must hold a non-empty JSON object name -> id")
    return {str(k): int(v) for k, v in mapping.items()}


# ------------------------------------------------------------------------------------------------
# Media files
# ------------------------------------------------------------------------------------------------
def write_frame(path: PathLike, rgb: np.ndarray, *, jpeg_quality: int = 95) -> Path:
    """Write an RGB frame; PNG or JPEG chosen by the suffix (`.png` for S4/MS3, `.jpg` for AVSS).

    Args:
        path: destination, parent folders are created.
        rgb: uint8 array [H, W, 3].
        jpeg_quality: JPEG quality when the suffix is .jpg/.jpeg (written without chroma subsampling).
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must be uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(rgb, "RGB")
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, quality=jpeg_quality, subsampling=0)  # full-resolution chroma: sharp colour edges
    else:
        image.save(path)
    return path


def write_binary_mask(path: PathLike, mask: np.ndarray) -> Path:
    """Write an S4/MS3 GT mask as an 8-bit grayscale PNG with 0 (background) and 255 (sounding).

    0/255 is what both official readers turn into 0/1: S4 converts with PIL mode '1', MS3 with mode 'P' and
    `ToTensor`'s division by 255.

    Args:
        path: destination, parent folders are created.
        mask: [H, W] bool or 0/1 array.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape [H, W], got {mask.shape}")
    if mask.size and not np.isin(mask, (0, 1)).all():
        raise ValueError("mask must be binary (bool or 0/1)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255, "L").save(path)
    return path


def write_colour_label(path: PathLike, labels: np.ndarray, palette: np.ndarray) -> Path:
    """Write an AVSS colour label PNG (RGB, lossless) from class ids [H, W]."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(class_to_colour(labels, palette), "RGB").save(path)
    return path


def write_wav(path: PathLike, waveform: np.ndarray | torch.Tensor, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write mono 16-bit PCM, the format the official `wavfile_to_examples` reads (`int16 / 32768`).

    Args:
        path: destination, parent folders are created.
        waveform: float samples [L] in [-1, 1] (clipped), mono.
        sample_rate: in Hz; AVSBench audio is 16 kHz.
    """
    samples = np.asarray(waveform.detach().cpu() if isinstance(waveform, torch.Tensor) else waveform, np.float64)
    if samples.ndim != 1:
        raise ValueError(f"waveform must be mono [L], got shape {samples.shape}")
    pcm = np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(int(sample_rate))
        f.writeframes(pcm.tobytes())
    return path


def write_log_mel(path: PathLike, examples: torch.Tensor) -> Path:
    """Write S4/MS3 log-mel examples `[T, 1, 96, 64]` to a `.pkl` with `torch.save`.

    The official files were written with `pickle.dump(tensor)`; the loader reads both, but `torch.save`
    output is what `torch.load(weights_only=True)` opens directly.
    """
    if examples.dim() != 4 or tuple(examples.shape[1:]) != (1, 96, 64):
        raise ValueError(f"examples must have shape [T, 1, 96, 64], got {tuple(examples.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(examples.detach().to("cpu", torch.float32).contiguous().clone(), path)
    return path
