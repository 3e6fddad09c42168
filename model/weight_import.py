"""Convert the public backbone weight files into our safetensors layout.

Supported sources (model-spec §7.3), all read from a local path, never downloaded:
- PVT-v2 b0/b1/b2/b5 in the original release layout (`patch_embed1.*`, `block1.0.*`, `norm1.*`, as in
  `pvt_v2_b5.pth` and in AVSegFormer/AVSBench checkpoints under `backbone.`), or already in timm's layout.
- torchvision's ResNet-50 state dict (`resnet50-19c8e357.pth`), also AVSBench's `layer3_1`/`layer4_1` copy.
- torchvggish's VGGish (`vggish-10086976.pth`: `features.*`, `embeddings.*`).

`.pth` files are read with `torch.load(weights_only=True)`, which refuses pickled code. The result is a
safetensors file whose metadata names the backbone; `model.build` loads it when a config points at it.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.errors import WeightImportError
from model.modeling.audio_encoder import VGGish, remap_vggish_state_dict
from model.modeling.visual_encoder import ResNet50Encoder, build_visual_encoder
from model.state_dict import load_exact

WEIGHTS_FORMAT = "avesformer-backbone-weights"

# (depths, stage-1 width) of the PVT-v2 variants we build; b3/b4/b2_li are not offered (model-spec §1.3).
_PVT_SIGNATURES = {((2, 2, 2, 2), 32): "pvt_v2_b0", ((2, 2, 2, 2), 64): "pvt_v2_b1",
                   ((3, 4, 6, 3), 64): "pvt_v2_b2", ((3, 6, 40, 3), 64): "pvt_v2_b5"}
_WRAPPER_PREFIXES = ("module.", "backbone.", "encoder_backbone.", "visual_encoder.body.", "visual_encoder.")


def load_torch_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a `.pth`/`.pt`/`.safetensors` file, unwrapping `{"state_dict": ...}` style files."""
    try:
        if path.suffix == ".safetensors":
            obj: object = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightImportError(f"{path}: no such file") from None
    except (RuntimeError, OSError, SafetensorError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise WeightImportError(f"{path} is not a readable weight file ({type(exc).__name__}: {exc})") from exc
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightImportError(f"{path} does not hold a state dict of tensors")
    return dict(obj)


def _strip_prefix(state: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    out = dict(state)
    changed = True
    while changed:  # prefixes can nest ("module.backbone.")
        changed = False
        for prefix in prefixes:
            if out and all(k.startswith(prefix) for k in out):
                out = {k[len(prefix):]: v for k, v in out.items()}
                changed = True
    return out


def _keep_with_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """From a whole-model checkpoint keep only the `prefix.*` entries (e.g. `backbone.` of AVSegFormer)."""
    picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return picked or dict(state)


# ---------------------------------------------------------------------------------------------- PVT-v2
def remap_pvt_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original PVT-v2 layout -> timm layout; timm-layout input passes through. Drops the classifier."""
    state = _strip_prefix(_keep_with_prefix(_strip_prefix(state, ("module.",)), "backbone."), _WRAPPER_PREFIXES)
    state = _strip_prefix(state, ("body.",))
    return {pvt_key_to_timm(key): value for key, value in state.items()
            if not key.startswith("head.")}  # the ImageNet classifier is not part of a feature extractor


def pvt_key_to_timm(key: str) -> str:
    """One PVT-v2 release key (`patch_embed1.proj.weight`, `block3.7.mlp.dwconv.dwconv.bias`, `norm4.weight`)
    -> timm's name (`patch_embed.proj.weight`, `stages.2.blocks.7.mlp.dwconv.bias`, `stages.3.norm.weight`);
    timm names pass through unchanged."""
    new = key
    if m := re.match(r"patch_embed(\d)\.(.*)", key):
        stage = int(m[1]) - 1
        new = f"patch_embed.{m[2]}" if stage == 0 else f"stages.{stage}.downsample.{m[2]}"
    elif m := re.match(r"block(\d)\.(\d+)\.(.*)", key):
        new = f"stages.{int(m[1]) - 1}.blocks.{m[2]}.{m[3]}"
    elif m := re.match(r"norm(\d)\.(.*)", key):
        new = f"stages.{int(m[1]) - 1}.norm.{m[2]}"
    return new.replace(".mlp.dwconv.dwconv.", ".mlp.dwconv.")  # the release wraps the conv in a module


def infer_pvt_backbone(state: Mapping[str, torch.Tensor]) -> str:
    """Which PVT-v2 variant a timm-layout state dict belongs to, from its depths and stage-1 width."""
    depths = []
    for stage in range(4):
        blocks = {int(m[1]) for k in state if (m := re.match(rf"stages\.{stage}\.blocks\.(\d+)\.", k))}
        depths.append(len(blocks))
    width_key = "patch_embed.proj.weight"
    if width_key not in state:
        raise WeightImportError("not a PVT-v2 state dict: no patch_embed1/patch_embed weights found")
    signature = (tuple(depths), int(state[width_key].shape[0]))
    if signature not in _PVT_SIGNATURES:
        raise WeightImportError(
            f"PVT-v2 with depths {signature[0]} and width {signature[1]} is not a supported variant "
            f"(b0, b1, b2, b5 are)")
    return _PVT_SIGNATURES[signature]


def import_pvt(src: Path, out: Path, *, backbone: str | None = None) -> dict[str, object]:
    state = remap_pvt_state_dict(load_torch_file(src))
    found = infer_pvt_backbone(state)
    if backbone and backbone != found:
        raise WeightImportError(f"{src} holds {found} weights, not {backbone}")
    encoder = build_visual_encoder(found, drop_path_rate=0.0).body
    load_exact(encoder, state, source=str(src), error=WeightImportError)
    return write_converted_weights(encoder.state_dict(), out, kind="visual", backbone=found, source=src)


# ------------------------------------------------------------------------------------------- ResNet-50
def remap_resnet50_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ResNet-50 (or AVSBench's B2_ResNet copy) -> our trunk; drops `fc` and unused branches."""
    state = _strip_prefix(_keep_with_prefix(_strip_prefix(state, ("module.",)), "encoder_backbone."),
                          _WRAPPER_PREFIXES)
    out = {}
    for key, value in state.items():
        if key.startswith(("fc.", "layer3_2.", "layer4_2.")):
            continue  # classifier, and AVSBench's duplicate branches that forward never uses
        out[re.sub(r"^layer([34])_1\.", r"layer\1.", key)] = value
    return out


def import_resnet50(src: Path, out: Path) -> dict[str, object]:
    state = remap_resnet50_state_dict(load_torch_file(src))
    encoder = ResNet50Encoder()
    load_exact(encoder, state, source=str(src), error=WeightImportError)
    return write_converted_weights(encoder.state_dict(), out, kind="visual", backbone="resnet50", source=src)


# ---------------------------------------------------------------------------------------------- VGGish
def import_vggish(src: Path, out: Path) -> dict[str, object]:
    state = remap_vggish_state_dict(load_torch_file(src))
    encoder = VGGish()
    load_exact(encoder, state, source=str(src), error=WeightImportError)
    return write_converted_weights(encoder.state_dict(), out, kind="audio", backbone="vggish", source=src)


# ------------------------------------------------------------------------------------ our weight files
def write_converted_weights(state: Mapping[str, torch.Tensor], out: Path, *, kind: str, backbone: str,
                            source: Path) -> dict[str, object]:
    meta = {
        "format": WEIGHTS_FORMAT,
        "kind": kind,
        "backbone": backbone,
        "source": source.name,
        "source_sha256": file_sha256(source),
        "converted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "num_tensors": str(len(state)),
        "num_params": str(sum(v.numel() for v in state.values())),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp), metadata=meta)
    tmp.replace(out)  # atomic: a crash never leaves a half-written weight file under the final name
    return {**meta, "out": str(out)}


def read_converted_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except FileNotFoundError:
        raise WeightImportError(f"{path}: no such file") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightImportError(f"{path} is not a safetensors file ({exc})") from exc
    if meta.get("format") != WEIGHTS_FORMAT:
        raise WeightImportError(
            f"{path} was not written by `avs weights import-*` (metadata format {meta.get('format')!r}); "
            "convert the public file first")
    return state, meta


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
