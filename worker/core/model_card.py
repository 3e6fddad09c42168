"""A checkpoint's model card and preprocessing, read without torch (the API shows them; it never loads torch).

A checkpoint (`model.checkpoint`) is a safetensors file: 8 bytes of little-endian header length, a JSON
header, then raw tensor bytes. The header's `__metadata__` holds strings: `format`, `variant`, `config`
(the model config as JSON: input size, normalisation, classes), `provenance` and, when the weights have
one, `card` (JSON: training data, published or measured metrics, source, licence, intended use; fields in
`model.card`). This module reads only the header, with the standard library.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

CHECKPOINT_FORMAT = "avesformer-checkpoint"  # the value `model.checkpoint` writes
_MAX_HEADER = 100_000_000  # safetensors' own limit on the header size
_PARTS = (("visual_encoder.", "visual"), ("audio_encoder.", "audio"))
# What `model.config.AVSConfig` assumes for a config written before the field existed (the predictor applies it).
_PREPROCESSING_DEFAULTS = {"input_size": 224, "pixel_mean": [0.485, 0.456, 0.406],
                           "pixel_std": [0.229, 0.224, 0.225], "num_classes": 1, "class_names": []}


class CardError(Exception):
    """The file is missing, not a safetensors file, or not one of our checkpoints."""

    code = "bad_checkpoint"


def read_safetensors_header(path: str | Path) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """(metadata, tensors) of a safetensors file: tensors maps each name to {"dtype", "shape", "data_offsets"}.

    Raises CardError when the file cannot be read or its header is not safetensors JSON.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise CardError(f"{path} is not a safetensors file (too short)")
            (length,) = struct.unpack("<Q", raw)
            if length > _MAX_HEADER:
                raise CardError(f"{path} is not a safetensors file (header length {length})")
            header = json.loads(f.read(length))
    except FileNotFoundError:
        raise CardError(f"checkpoint {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CardError(f"{path} is not a safetensors file ({exc})") from exc
    if not isinstance(header, dict):
        raise CardError(f"{path} is not a safetensors file (its header is not an object)")
    meta = header.pop("__metadata__", None) or {}
    return dict(meta), header


def _json_field(meta: dict[str, str], key: str, path: Path) -> Any:
    if key not in meta:
        return None
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError as exc:
        raise CardError(f"{path}: metadata field {key!r} is not JSON ({exc})") from exc


def read_model_card(path: str | Path) -> dict[str, Any]:
    """Everything a person needs to judge a checkpoint, from its header alone.

    Returns a JSON-able dict: `path`, `variant`, `params` (total) and `params_by_part` (visual / audio /
    decoder, counted from the tensor shapes: parameters and buffers), `preprocessing` (input_size,
    pixel_mean, pixel_std, num_classes, class_names: what the predictor applies), `card` (the card, or
    None for a checkpoint written before cards existed) and `provenance`.

    Raises CardError for a file that is not one of our checkpoints.
    """
    path = Path(path)
    meta, tensors = read_safetensors_header(path)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CardError(f"{path} is not an AVESFormer checkpoint (metadata format {meta.get('format')!r})")
    config = _json_field(meta, "config", path) or {}
    by_part = {"visual": 0, "audio": 0, "decoder": 0}
    for name, info in tensors.items():
        part = next((label for prefix, label in _PARTS if name.startswith(prefix)), "decoder")
        by_part[part] += math.prod(info.get("shape", []))
    preprocessing = {key: config.get(key, default) for key, default in _PREPROCESSING_DEFAULTS.items()}
    return {"path": str(path), "variant": meta.get("variant", config.get("variant")),
            "params": sum(by_part.values()), "params_by_part": by_part, "preprocessing": preprocessing,
            "card": _json_field(meta, "card", path), "provenance": _json_field(meta, "provenance", path) or {}}


DEMO_CHECKPOINT_NAME = "avesformer-tiny-synthetic-s4.safetensors"
DEFAULT_VARIANT = "avesformer-tiny"  # the demo checkpoint's (`model.variants.DEFAULT_VARIANT`)
IMPORT_HINT = ("for real video, import a published AVSegFormer model: avs weights import-avsegformer FILE.pth "
               "--out model.safetensors, then AVS_CHECKPOINT=model.safetensors")


def demo_checkpoint() -> Path | None:
    """Where the shipped demo checkpoint is installed, found without importing `model` (which loads torch)."""
    import importlib.util

    spec = importlib.util.find_spec("model")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "weights" / DEMO_CHECKPOINT_NAME
        if path.is_file():
            return path
    return None


def configured_checkpoint(checkpoint: str | None, variant: str | None) -> Path | None:
    """The file a worker with these settings loads (`AVS_CHECKPOINT`, else the demo checkpoint for the default
    variant); None when it builds `variant` with random weights (`model.predictor.load_predictor`'s rule)."""
    if checkpoint:
        return Path(checkpoint)
    if variant in (None, DEFAULT_VARIANT):
        return demo_checkpoint()
    return None


def model_summary(checkpoint: str | Path | None, variant: str | None = None) -> dict[str, Any]:
    """What the service tells a user about its model (`GET /model`, the heartbeat, `avs serve`'s start-up
    line, the web page): variant, file name, input size, classes and their names, the card, and a
    `warning` when the model is not one to trust on real video (the demo's synthetic training, random
    weights, no card). Raises CardError for a file that is not one of our checkpoints."""
    if checkpoint is None:
        return {"variant": variant, "checkpoint": None, "input_size": None, "num_classes": None, "class_names": [],
                "card": None, "warning": f"random weights: the masks mean nothing; {IMPORT_HINT}"}
    info = read_model_card(checkpoint)
    card = info["card"]
    pre = info["preprocessing"]
    warning = card.get("warning") if card else f"no model card: what it was trained on is unknown; {IMPORT_HINT}"
    return {"variant": info["variant"], "checkpoint": Path(checkpoint).name, "input_size": pre["input_size"],
            "num_classes": pre["num_classes"], "class_names": pre["class_names"], "params": info["params"],
            "card": card, "warning": warning}


def summary_line(summary: dict[str, Any]) -> str:
    """One line for people: the model, what it knows, and the warning if any."""
    card = summary.get("card") or {}
    title = card.get("title") or summary.get("variant") or "unknown model"
    size = summary.get("input_size")
    line = f"model {summary.get('variant')} ({title}{f'; {size}x{size} input' if size else ''})"
    return f"{line}: {summary['warning']}" if summary.get("warning") else line
