"""Our checkpoint format: one safetensors file whose metadata carries the variant, config and provenance.

safetensors holds raw tensors only, so loading a checkpoint can never run code (unlike a pickle), and
the JSON config in its header rebuilds the exact architecture without any other file. Metadata keys:

    format          "avesformer-checkpoint"
    format_version  "1"
    variant         e.g. "avesformer-tiny"
    config          AVSConfig as JSON (weight-file paths cleared: the checkpoint holds every tensor)
    provenance      JSON: created_at, package version, torch version, git commit, plus caller fields
                    (training data, command line, metrics ...)
    card            optional JSON model card (`model.card`): training data, metrics and who measured them,
                    source, licence, intended use; readable without torch (`worker.core.model_card`)

The preprocessing a checkpoint needs travels in its config: `input_size`, `pixel_mean`, `pixel_std`,
`num_classes`, `class_names`; the predictor applies them.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from model.card import CARD_KEY, card_metadata
from model.config import AVSConfig
from model.errors import CheckpointError, ConfigError
from model.modeling.avs_model import AVSModel
from model.state_dict import load_exact
from model.variants import get_config

CHECKPOINT_FORMAT = "avesformer-checkpoint"
CHECKPOINT_VERSION = "1"


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    variant: str
    config: AVSConfig
    provenance: dict[str, Any]
    card: dict[str, Any] | None = None


def _without_weight_paths(cfg: AVSConfig) -> AVSConfig:
    return dataclasses.replace(cfg, visual=dataclasses.replace(cfg.visual, weights=None),
                               audio=dataclasses.replace(cfg.audio, weights=None))


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def save_checkpoint(model: AVSModel, cfg: AVSConfig, path: Path | str, *, provenance: dict[str, Any] | None = None,
                    dtype: torch.dtype | None = None, card: dict[str, Any] | None = None) -> Path:
    """Write `model`'s weights with `cfg`, provenance and an optional card; `dtype=torch.float16` halves the file."""
    return save_state_dict(model.state_dict(), cfg, path, provenance=provenance, dtype=dtype, card=card)


def save_state_dict(state: dict[str, torch.Tensor], cfg: AVSConfig, path: Path | str, *,
                    provenance: dict[str, Any] | None = None, dtype: torch.dtype | None = None,
                    card: dict[str, Any] | None = None) -> Path:
    """Write a state dict of `cfg`'s model (keys as `build_model(cfg).state_dict()`) as our checkpoint.

    For writers that never build the model (`avs weights import-avsegformer`); `load_checkpoint` checks
    keys and shapes when the file is read. The file appears atomically (written aside, then renamed).
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        package_version = version("avesformer")
    except PackageNotFoundError:
        package_version = "unknown"
    path = Path(path)
    cfg = _without_weight_paths(cfg)
    info = {"created_at": datetime.now(UTC).isoformat(timespec="seconds"), "avesformer": package_version,
            "torch": torch.__version__, "git_commit": _git_commit(), **(provenance or {})}
    meta = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "variant": cfg.variant,
            "config": cfg.to_json(), "provenance": json.dumps(info, sort_keys=True, default=str),
            **card_metadata(card)}
    tensors = {}
    for key, value in state.items():
        value = value.detach().to("cpu")
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)  # atomic rename: readers never see a half-written checkpoint
    return path


def read_checkpoint_info(path: Path | str) -> CheckpointInfo:
    """Metadata only (no tensors are read): variant, config, provenance, card."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a safetensors checkpoint ({exc})") from exc
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an AVESFormer checkpoint (metadata format {meta.get('format')!r})")
    if meta.get("format_version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {meta.get('format_version')!r}; "
                              f"this release reads version {CHECKPOINT_VERSION}")
    try:
        cfg = AVSConfig.from_json(meta["config"])
        provenance = json.loads(meta.get("provenance", "{}"))
        card = json.loads(meta[CARD_KEY]) if CARD_KEY in meta else None
    except (KeyError, ConfigError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} has an unreadable config: {exc}") from exc
    return CheckpointInfo(path=path, variant=meta.get("variant", cfg.variant), config=cfg, provenance=provenance,
                          card=card)


def config_differences(a: AVSConfig, b: AVSConfig) -> list[str]:
    """Dotted names of the architecture fields that differ between two configs."""
    diffs: list[str] = []

    def walk(x: Any, y: Any, prefix: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for key in sorted(set(x) | set(y)):
                walk(x.get(key), y.get(key), f"{prefix}{key}.")
        elif x != y:
            diffs.append(f"{prefix[:-1]}: {x!r} != {y!r}")

    walk(a.architecture_dict(), b.architecture_dict(), "")
    return diffs


def load_checkpoint(path: Path | str, *, variant: str | None = None,
                    device: str | torch.device = "cpu") -> tuple[AVSModel, CheckpointInfo]:
    """Rebuild the model stored in `path` (eval mode, float32 on `device`).

    With `variant`, the stored architecture must equal that variant's (num_classes may differ:
    a checkpoint for AVSS legitimately has 71). Keys and shapes must match exactly.
    """
    from model.build import build_model

    info = read_checkpoint_info(path)
    if variant is not None:
        expected = get_config(variant, num_classes=info.config.num_classes)
        diffs = config_differences(expected, info.config)
        if diffs:
            raise ConfigError(f"{info.path} was trained as {info.variant!r}, which differs from {variant!r} in: "
                              + "; ".join(diffs))
    model = build_model(info.config)
    try:
        state = load_file(str(info.path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{info.path}: cannot read tensors ({exc})") from exc
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    load_exact(model, state, source=f"checkpoint {info.path}", error=CheckpointError)
    return model.to(device).eval(), info
