"""`avs train --init CKPT`: start from every tensor of a checkpoint whose name and shape fit the new model.

The same variant takes everything (fine-tuning, AVSBench's S4 -> MS3 initialisation). Another variant takes
what it shares: an imported AVSegFormer checkpoint (`avs weights import-avsegformer`) gives an AVESFormer
run of the same backbone its visual backbone, VGGish, audio projection, neck (`in_proj`, level embedding)
and most of the mask head (lateral/out convs, the final convs, the gate's weights), while the decoder, the
query-map MLP (its input width is the query count) and anything else of another shape start fresh.
The optimizer and the lr schedule always start fresh.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from model.checkpoint import config_differences, read_checkpoint_info
from model.config import AVSConfig
from model.errors import CheckpointError

log = logging.getLogger(__name__)


def _groups(keys: list[str], sizes: dict[str, int]) -> dict[str, dict[str, int]]:
    """Tensors and values per module (first two name components, e.g. `head.mlp`), in model order."""
    out: dict[str, dict[str, int]] = {}
    for key in keys:
        group = ".".join(key.split(".")[:2]) if key.split(".")[0] in ("neck", "decoder", "head") else key.split(".")[0]
        entry = out.setdefault(group, {"tensors": 0, "values": 0})
        entry["tensors"] += 1
        entry["values"] += sizes[key]
    return out


def initialise_from_checkpoint(model: nn.Module, model_cfg: AVSConfig, path: str | Path) -> dict[str, Any]:
    """Copy into `model` every tensor of checkpoint `path` whose name and shape fit; report what happened.

    Returns a JSON-able report: `path`, `variant` (the checkpoint's), `taken` / `fresh` (counts of
    tensors and values, and `*_groups` per module), `fresh_keys` (the model's tensors left as
    initialised), `unused_keys` (the checkpoint's tensors that fit nothing, with the reason) and
    `config_differences` (dotted config fields that differ).

    Raises CheckpointError when the file is not our checkpoint or when not a single tensor fits.
    """
    info = read_checkpoint_info(path)
    try:
        source = load_file(str(info.path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"--init {path}: cannot read tensors ({exc})") from exc
    target = model.state_dict()
    taken, unused = [], []
    for key, value in source.items():
        if key not in target:
            unused.append(f"{key} (no such tensor in {model_cfg.variant})")
        elif tuple(value.shape) != tuple(target[key].shape):
            unused.append(f"{key} (shape {tuple(value.shape)}, the model's {tuple(target[key].shape)})")
        else:
            taken.append(key)
    if not taken:
        raise CheckpointError(f"--init {path}: not one tensor of {info.variant} fits {model_cfg.variant} "
                              f"by name and shape")
    with torch.no_grad():
        for key in taken:
            target[key].copy_(source[key].to(target[key].dtype))  # state_dict() tensors share the model's storage
    fresh = [k for k in target if k not in set(taken)]
    sizes = {k: v.numel() for k, v in target.items()}
    differences = config_differences(info.config, model_cfg)
    if differences:
        log.warning("--init %s was trained with a different config: %s", path, "; ".join(differences))
    return {"path": str(path), "variant": info.variant,
            "taken": {"tensors": len(taken), "values": sum(sizes[k] for k in taken)},
            "fresh": {"tensors": len(fresh), "values": sum(sizes[k] for k in fresh)},
            "taken_groups": _groups(taken, sizes), "fresh_groups": _groups(fresh, sizes),
            "fresh_keys": fresh, "unused_keys": unused, "config_differences": differences}


def describe_init(report: dict[str, Any]) -> str:
    """Two lines for people: what was taken and what starts fresh, per module."""
    def line(groups: dict[str, dict[str, int]]) -> str:
        return ", ".join(f"{name} ({g['tensors']})" for name, g in groups.items()) or "nothing"

    taken, fresh, unused = report["taken"], report["fresh"], report["unused_keys"]
    return (f"--init {report['path']} ({report['variant']}): took {taken['tensors']} tensors "
            f"({taken['values']:,} values): {line(report['taken_groups'])}\n"
            f"starts fresh: {fresh['tensors']} tensors ({fresh['values']:,} values): {line(report['fresh_groups'])}"
            + (f"\nnot used from the checkpoint: {len(unused)} tensors" if unused else ""))
