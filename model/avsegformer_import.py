"""`avs weights import-avsegformer`: a published AVSegFormer checkpoint -> our checkpoint, tensor for tensor.

The six files of github.com/vvvb-github/AVSegFormer at 7083cb6 (`model.avsegformer_release`) are
`torch.save(model.module.state_dict())` of its `AVSegFormer` module (scripts/*/train.py). Key layout,
read from the source's model/AVSegFormer.py, model/head/AVSegHead.py, model/utils/*.py and
model/backbone/*.py, and recorded key by key in the committed manifests (model/weights/manifests/):

    official                                              ours
    backbone.patch_embed{i}|block{i}.{j}|norm{i}.*        visual_encoder.body.* (timm's PVT-v2 names)
    backbone.{conv1,bn1,layer1,layer2}.*                  visual_encoder.*
    backbone.layer{3,4}_1.*                               visual_encoder.layer{3,4}.*
    vggish.*, audio_proj.*                                audio_encoder.*, audio_proj.*
    head.level_embed, head.in_proj.{i}.*                  neck.level_embed, neck.in_proj.{i}.*
    head.learnable_query, head.query_generator.query      decoder.learnable_query, decoder.query_generator.query
    head.query_generator.layers.{l}.{self,cross}_attn     decoder.query_generator.layers.{l}.{self,cross}_attn
        .in_proj_weight [3C, C] (nn.MultiheadAttention)       .{q,k,v}_proj.weight (rows 0:C, C:2C, 2C:3C)
    head.query_generator.layers.{l}.ffn.{0,2}             ...ffn.{fc1,fc2}
    head.transformer.encoder.layers.{l}.*                 decoder.encoder.{l}.* (linear1/2 -> ffn.fc1/fc2)
    head.transformer.decoder.layers.{l}.*                 decoder.decoder.{l}.* (in_proj_{weight,bias} split)
    head.{lateral_conv,out_conv,fusion_block}.*           head.*
    head.mlp.layers.{0,1,2}, head.fc.{0,2,4}              head.mlp.{0,2,4}, head.fc.{0,1,3}

Dropped (the official forward never uses them): head.fpn.*, head.attn_fc.* and ResNet-50's second
branch backbone.layer3_2.* / backbone.layer4_2.*. Our `avsegformer-*` variants compute what the
official forward computes (see `model.variants`); docs/parity-avsegformer.md has the measured differences.
No code of the source was copied.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from model.avsegformer_release import (
    BACKBONES,
    SETTINGS,
    SOURCE_COMMIT,
    SOURCE_URL,
    load_manifest,
    preprocessing_fields,
    published_card,
    variant_for,
)
from model.checkpoint import save_state_dict
from model.config import AVSConfig
from model.errors import WeightImportError
from model.state_dict import describe_mismatch
from model.variants import get_config
from model.weight_import import file_sha256, load_torch_file, pvt_key_to_timm

_IN_PROJ = re.compile(r"(.*)\.in_proj_(weight|bias)$")
# (pattern, replacement) on the official key, first match wins; the PVT / ResNet trunks are handled apart.
_RULES: tuple[tuple[str, str | Callable[[re.Match[str]], str]], ...] = (
    (r"^vggish\.", "audio_encoder."),
    (r"^audio_proj\.", "audio_proj."),
    (r"^head\.level_embed$", "neck.level_embed"),
    (r"^head\.in_proj\.", "neck.in_proj."),
    (r"^head\.learnable_query\.", "decoder.learnable_query."),
    (r"^head\.query_generator\.layers\.(\d+)\.ffn\.0\.", r"decoder.query_generator.layers.\1.ffn.fc1."),
    (r"^head\.query_generator\.layers\.(\d+)\.ffn\.2\.", r"decoder.query_generator.layers.\1.ffn.fc2."),
    (r"^head\.query_generator\.", "decoder.query_generator."),
    (r"^head\.transformer\.(encoder|decoder)\.layers\.(\d+)\.linear1\.", r"decoder.\1.\2.ffn.fc1."),
    (r"^head\.transformer\.(encoder|decoder)\.layers\.(\d+)\.linear2\.", r"decoder.\1.\2.ffn.fc2."),
    (r"^head\.transformer\.(encoder|decoder)\.layers\.(\d+)\.", r"decoder.\1.\2."),
    (r"^head\.mlp\.layers\.(\d+)\.", lambda m: f"head.mlp.{2 * int(m[1])}."),  # ReLUs sit between ours
    (r"^head\.fc\.0\.", "head.fc.0."),
    (r"^head\.fc\.2\.", "head.fc.1."),
    (r"^head\.fc\.4\.", "head.fc.3."),
    (r"^head\.(lateral_conv|out_conv|fusion_block)\.", r"head.\1."),
)


def detect_configuration(state: Mapping[str, torch.Tensor], *, setting: str | None = None,
                         backbone: str | None = None, filename: str | None = None) -> tuple[str, str]:
    """(setting, backbone) of an official state dict (keys without `module.`), checked against the flags.

    Backbone: ResNet-50 keys (`backbone.layer1.*`) or PVT-v2 keys (`backbone.patch_embed1.*`). Setting:
    a 71-class mask head is AVSS; S4 and MS3 share every key and shape, so a binary head takes `setting`,
    else a token of the file name (`S4_best.pth`, `MS3_best.pth`, as the source's training scripts name
    them). Raises WeightImportError when the keys contradict a flag or fit no release, ValueError when
    S4/MS3 cannot be told apart.
    """
    for value, allowed, flag in ((setting, SETTINGS, "--setting"), (backbone, BACKBONES, "--backbone")):
        if value is not None and value not in allowed:
            raise ValueError(f"{flag} must be one of {allowed}, got {value!r}")
    if any(k.startswith("backbone.layer1.") for k in state):
        found_backbone: str | None = "r50"
    elif any(k.startswith("backbone.patch_embed1.") for k in state):
        found_backbone = "pvt_v2_b5"
    else:
        found_backbone = None
    if found_backbone is None and backbone is None:
        raise WeightImportError("no AVSegFormer backbone keys (backbone.layer1.* for ResNet-50, "
                                "backbone.patch_embed1.* for PVT-v2-b5): not an official AVSegFormer checkpoint")
    if backbone is not None and found_backbone is not None and backbone != found_backbone:
        raise WeightImportError(f"--backbone {backbone} given, but the file holds {found_backbone} keys")
    classes = state["head.fc.4.weight"].shape[0] if "head.fc.4.weight" in state else None
    found_setting = {71: "avss"}.get(classes) if classes is not None else None
    if setting is None:
        if classes is None:
            raise WeightImportError("missing key head.fc.4.weight (the mask head's last conv): cannot tell the "
                                    "setting; pass --setting to see every difference from that layout")
        if classes not in (1, 71):
            raise WeightImportError(f"head.fc.4.weight has {classes} output classes; the published checkpoints "
                                    f"have 1 (S4, MS3) or 71 (AVSS)")
        setting = found_setting or _setting_from_name(filename)
    return setting, backbone or found_backbone  # type: ignore[return-value]


def _setting_from_name(filename: str | None) -> str:
    tokens = set(re.split(r"[^a-z0-9]+", Path(filename or "").name.lower()))
    named = [s for s in ("s4", "ms3") if s in tokens]
    if len(named) != 1:
        raise ValueError("S4 and MS3 checkpoints have the same keys and shapes: pass --setting s4 or --setting ms3")
    return named[0]


def check_layout(state: Mapping[str, torch.Tensor], manifest: Mapping[str, Any], *, source: str) -> list[str]:
    """Compare a state dict with a manifest; return the present keys the official forward never uses.

    Raises WeightImportError naming the missing keys, unexpected keys and wrong shapes, if any. The
    dropped keys are optional (a file without them is complete).
    """
    used: dict[str, list[int]] = manifest["keys"]
    dropped: dict[str, list[int]] = manifest["dropped"]
    expected = {**dropped, **used}
    missing = sorted(set(used) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(f"{k}: file {tuple(state[k].shape)}, expected {tuple(expected[k])}"
                    for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k]))
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes)):
        if items:
            shown = ", ".join(items[:12]) + (f", ... ({len(items) - 12} more)" if len(items) > 12 else "")
            parts.append(f"{len(items)} {label}: {shown}")
    if parts:
        raise WeightImportError(f"{source} does not have the layout of the official AVSegFormer "
                                f"{manifest['backbone']} {manifest['setting']} checkpoint: " + "; ".join(parts))
    return sorted(k for k in state if k in dropped)


def official_key_to_ours(key: str) -> str:
    """Our name of one official key that is used and not an `in_proj_*` (which `remap` splits in three).

    Raises WeightImportError for a key outside the official layout.
    """
    if key.startswith("backbone."):
        rest = key[len("backbone."):]
        if rest.startswith(("patch_embed", "block", "norm")):
            return "visual_encoder.body." + pvt_key_to_timm(rest)
        return "visual_encoder." + re.sub(r"^layer([34])_1\.", r"layer\1.", rest)
    for pattern, replacement in _RULES:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key, count=1)
    raise WeightImportError(f"no mapping for official key {key!r}")


def remap_avsegformer_state_dict(state: Mapping[str, torch.Tensor],
                                 dropped: frozenset[str] | set[str] = frozenset()) -> dict[str, torch.Tensor]:
    """Official AVSegFormer state dict (no `module.` prefix) -> ours, minus `dropped` keys.

    Pure renaming, except nn.MultiheadAttention's packed `in_proj_weight` [3C, C] / `in_proj_bias` [3C],
    which become our separate q/k/v projections (PyTorch packs them in that order). Tensors are not
    copied except those three slices (made contiguous).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in dropped:
            continue
        if m := _IN_PROJ.match(key):
            base = official_key_to_ours(f"{m[1]}.out_proj.{m[2]}").rsplit(".out_proj.", 1)[0]
            for name, part in zip(("q", "k", "v"), value.chunk(3, dim=0), strict=True):
                out[f"{base}.{name}_proj.{m[2]}"] = part.contiguous()
        else:
            out[official_key_to_ours(key)] = value
    return out


def official_config(setting: str, backbone: str) -> AVSConfig:
    """Our config of one official configuration: its variant, with the official loader's preprocessing."""
    fields = preprocessing_fields(setting)
    return get_config(variant_for(backbone)).replace(**fields)


def _strip_module_prefix(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str | None]:
    if state and all(k.startswith("module.") for k in state):  # saved from nn.DataParallel / DDP
        return {k[len("module."):]: v for k, v in state.items()}, "module."
    return state, None


def convert_avsegformer_state(state: dict[str, torch.Tensor], *, setting: str | None = None,
                              backbone: str | None = None, filename: str | None = None,
                              source: str = "the state dict") -> tuple[dict[str, torch.Tensor], AVSConfig,
                                                                        dict[str, Any]]:
    """Official state dict -> (our state dict, our config, report). No file is read or written.

    The report holds `setting`, `backbone`, `keys_read`, `keys_mapped` (official tensors taken),
    `tensors_written`, `params`, `dropped` (sorted official keys left out) and `stripped_prefix`.
    Raises WeightImportError (layout) or ValueError (S4/MS3 ambiguity, unknown flag values).
    """
    state, prefix = _strip_module_prefix(dict(state))
    setting, backbone = detect_configuration(state, setting=setting, backbone=backbone, filename=filename)
    manifest = load_manifest(backbone, setting)
    dropped = check_layout(state, manifest, source=source)
    ours = remap_avsegformer_state_dict(state, set(dropped))
    cfg = official_config(setting, backbone)
    from model.build import build_model

    with torch.device("meta"):  # shapes and dtypes only: nothing allocated
        reference = build_model(cfg).state_dict()
    problem = describe_mismatch(reference, ours)
    if problem:  # the manifests and our variants disagree: a bug here, not in the file
        raise WeightImportError(f"{source}: the official layout does not map onto {cfg.variant}: {problem}")
    ours = {k: v.to(reference[k].dtype) for k, v in ours.items()}
    report = {"setting": setting, "backbone": backbone, "variant": cfg.variant, "num_classes": cfg.num_classes,
              "input_size": cfg.input_size, "keys_read": len(state), "keys_mapped": len(state) - len(dropped),
              "tensors_written": len(ours),
              "params": sum(v.numel() for k, v in ours.items() if v.is_floating_point()
                            and not k.endswith(("running_mean", "running_var"))),
              "dropped": dropped, "stripped_prefix": prefix}
    return ours, cfg, report


def import_avsegformer(src: Path, out: Path, *, setting: str | None = None,
                       backbone: str | None = None) -> dict[str, Any]:
    """Convert the official checkpoint `src` into our checkpoint `out` (float32, with card and provenance).

    Accepts a bare state dict, one behind a `module.` prefix (DataParallel) and `{"state_dict": ...}` /
    `{"model": ...}` wrappers. Returns the report of `convert_avsegformer_state` plus `out` and `card`.
    Raises WeightImportError (code `bad_weights`) naming any missing, unexpected or mis-shaped key.
    """
    src, out = Path(src), Path(out)
    state, cfg, report = convert_avsegformer_state(load_torch_file(src), setting=setting, backbone=backbone,
                                                   filename=src.name, source=str(src))
    sha = file_sha256(src)
    card = published_card(report["setting"], report["backbone"], file=src.name, sha256=sha)
    provenance = {"imported_from": src.name, "source_sha256": sha, "source": SOURCE_URL,
                  "source_commit": SOURCE_COMMIT, "dropped_keys": len(report["dropped"]),
                  "command": "avs weights import-avsegformer"}
    save_state_dict(state, cfg, out, provenance=provenance, card=card)
    return {**report, "out": str(out), "card": card}


def describe_dropped(dropped: list[str]) -> str:
    """Dropped keys grouped by module for people: one line per group, every key named."""
    groups: dict[str, list[str]] = {}
    for key in dropped:
        parts = key.split(".")
        group = ".".join(parts[:2])
        groups.setdefault(group, []).append(".".join(parts[2:]))
    return "\n".join(f"  {group}.* ({len(rest)}): {', '.join(rest)}" for group, rest in groups.items())
