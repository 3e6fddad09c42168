"""Model cards: what a checkpoint was trained on, what its source says it scores, where it came from.

A card is a JSON object stored under the `card` key of a checkpoint's safetensors metadata, beside the
config (which carries the preprocessing: input size, mean/std, classes). Fields, all optional:

    title          one line: architecture, backbone, data
    trained_on     {"dataset", "split", "selected_on"}: the data the weights were fitted to
    metrics        {"mIoU", "F-score", "split", "status"}: numbers and who measured them
                   (`status` is NOT_MEASURED for numbers copied from a source, never checked here)
    source         {"url", "commit", "file", "sha256"}: where the weights came from
    licence        as the source states it, or "unstated"
    intended_use   what the weights are (and are not) good for
    preprocessing  {"frames", "audio"}: how the source fed its inputs, in words
    warning        what a user must be told wherever the model is shown (the demo: synthetic shapes only)

This module imports no torch and nothing from `model` that does (the writer side of the card; the
torch-free reader the API uses is `worker.core.model_card`). `rewrite_card` replaces the card of an
existing file without touching a byte of its tensors.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CARD_KEY = "card"
CARD_FIELDS = ("title", "trained_on", "metrics", "source", "licence", "intended_use", "preprocessing", "warning")
NOT_MEASURED = "published by the source, not measured here"

# The card of the shipped demo checkpoint (model/weights/avesformer-tiny-synthetic-s4.safetensors).
DEMO_CARD: dict[str, Any] = {
    "title": "AVESFormer-tiny trained on synthetic S4 scenes (the shipped demo checkpoint)",
    "trained_on": {"dataset": "synthetic S4 scenes drawn by `avs synth` (coloured shapes, one of them sounding)",
                   "split": "train (seeds 1, 3, 4; 3,000 clips in the last stage)"},
    "metrics": {"mIoU": 0.850, "F-score": 0.912, "split": "100 held-out synthetic clips of seed 2 (128x128)",
                "status": "measured here (README, 'The shipped demo checkpoint')"},
    "source": {"url": "this repository (`make demo-checkpoint`)"},
    "licence": "Apache-2.0 (this repository's)",
    "intended_use": "synthetic shapes only, not for real video: the demo, tests and plumbing checks",
    "warning": "synthetic shapes only, not for real video. For real video, import a published AVSegFormer model: "
               "avs weights import-avsegformer FILE.pth --out model.safetensors, then "
               "AVS_CHECKPOINT=model.safetensors",
}


def card_metadata(card: Mapping[str, Any] | None) -> dict[str, str]:
    """The safetensors metadata entry for `card` ({} for None): {"card": "<json>"}."""
    return {} if card is None else {CARD_KEY: json.dumps(dict(card), sort_keys=True)}


def _read_header(f: Any, path: Path) -> tuple[int, dict[str, Any]]:
    raw = f.read(8)
    if len(raw) != 8:
        raise ValueError(f"{path} is not a safetensors file (shorter than its 8-byte header length)")
    (length,) = struct.unpack("<Q", raw)
    if length > 100_000_000:
        raise ValueError(f"{path} is not a safetensors file (header length {length})")
    try:
        header = json.loads(f.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a safetensors file (header is not JSON: {exc})") from exc
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a safetensors file (header is not an object)")
    return length, header


def rewrite_card(path: str | Path, card: Mapping[str, Any] | None) -> Path:
    """Replace (or with None remove) the card in `path`'s metadata; every tensor byte is copied unchanged.

    Only the JSON header is rewritten (padded with spaces to a multiple of 8 bytes, as safetensors
    writes it); the data section is streamed through as is, so the weights stay bit-identical. The new
    file replaces the old one atomically. Raises ValueError if `path` is not a safetensors file.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    with path.open("rb") as src:
        _, header = _read_header(src, path)
        meta = dict(header.get("__metadata__") or {})
        meta.pop(CARD_KEY, None)
        meta.update(card_metadata(card))
        header["__metadata__"] = meta
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)
        with tmp.open("wb") as dst:
            dst.write(struct.pack("<Q", len(encoded)))
            dst.write(encoded)
            while chunk := src.read(1 << 20):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
    tmp.replace(path)
    return path
