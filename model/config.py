"""Frozen model configuration: one dataclass tree describes every variant.

Only `model.build` reads these; leaf modules take explicit keyword arguments so they can be tested
alone. Fields tagged [R] are reconstructions: the AVESFormer paper (arXiv 2408.01708) published no
method details, code or weights, so each reconstructed choice is a field with a documented default
(see `shared/design/model-spec.md` §2-§3 and the README's "Reconstructed choices" table).

Configs serialise to plain JSON (`to_dict` / `from_dict`), which is what our checkpoints store in
their metadata, so a checkpoint always rebuilds the exact architecture it was trained with.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_type_hints

from model.errors import ConfigError

VisualBackbone = Literal["pvt_v2_b0", "pvt_v2_b1", "pvt_v2_b2", "pvt_v2_b5", "resnet50"]
AudioBackbone = Literal["vggish", "tiny"]
DecoderKind = Literal["elf", "avsegformer"]
PQGMode = Literal["add", "concat"]
QueryEmbed = Literal["positional", "additive"]

# ImageNet statistics: every AVS code base normalises frames with them (model-spec §1.1).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Stage channels of each visual backbone at strides 4/8/16/32 (model-spec §1.3).
BACKBONE_CHANNELS: dict[str, tuple[int, int, int, int]] = {
    "pvt_v2_b0": (32, 64, 160, 256),
    "pvt_v2_b1": (64, 128, 320, 512),
    "pvt_v2_b2": (64, 128, 320, 512),
    "pvt_v2_b5": (64, 128, 320, 512),
    "resnet50": (256, 512, 1024, 2048),
}


@dataclass(frozen=True)
class VisualConfig:
    backbone: VisualBackbone = "pvt_v2_b2"  # [R] the paper's backbone is unknown; b2 fits its ~120 M total
    drop_path_rate: float = 0.1  # PVT-v2 default used by every AVS code base
    weights: str | None = None  # converted safetensors from `avs weights import-pvt`; never downloaded

    @property
    def channels(self) -> tuple[int, int, int, int]:
        return BACKBONE_CHANNELS[self.backbone]


@dataclass(frozen=True)
class AudioConfig:
    backbone: AudioBackbone = "vggish"  # VGGish as published; "tiny" is a light CNN for CPU tests/demos
    frozen: bool = True  # every AVS recipe freezes VGGish and runs it under no_grad
    weights: str | None = None  # converted safetensors from `avs weights import-vggish`


@dataclass(frozen=True)
class DecoderConfig:
    kind: DecoderKind = "elf"  # "elf" = AVESFormer, "avsegformer" = the AAAI'24 baseline
    dim: int = 256  # token width of neck, decoder and head (AVSegFormer: 256)
    num_heads: int = 8  # attention heads in every attention layer (AVSegFormer: 8)
    num_queries: int = 100  # [R] PQG prompts N; COMBO uses 100, AVSegFormer 300 (ablate 16/50/100/300)
    ffn_dim: int = 1024  # [R] hidden width of decoder FFNs; AVSegFormer uses 2048, 1024 is cheaper
    dropout: float = 0.0  # AVSegFormer trains with 0.1
    # --- Prompt Query Generator (model-spec §2.3) ---
    pqg_mode: PQGMode = "add"  # [R] "add": Q = P + a; "concat": Q = [a; P] (N + 1 tokens)
    pqg_mlp: bool = True  # [R] residual 2-layer MLP + LayerNorm after conditioning, so queries differ non-trivially
    # --- ELF decoder (model-spec §3.3) ---
    num_conv_blocks: int = 3  # [R] L_conv: early convolution blocks ("early focus" is local)
    num_attn_blocks: int = 3  # [R] L_attn: late transformer blocks; L_conv + L_attn = AVSegFormer's 6
    conv_kernel: int = 3  # [R] depth-wise kernel of the conv blocks (7 is the other sensible choice)
    conv_cross_scale: bool = True  # [R] conv blocks also add the upsampled coarser level (top-down fusion)
    memory_self_attn_levels: tuple[int, ...] = (1, 2)  # [R] memory self-attention keys: stride-16/32 levels only
    memory_attends_prompts: bool = True  # [R] visual tokens cross-attend to the PQG tokens (K = V = Q, Eq. 1 role)
    # Sine positions of the memory: True = DETR's, scaled to [0, 2pi] over each map; False = raw pixel indices
    # 1..H, 1..W (the official AVSegFormer: its SinePositionalEncoding is built with normalize=False).
    pos_normalize: bool = True
    # --- AVSegFormer baseline (model-spec §3.2, §7.1) ---
    num_encoder_layers: int = 6  # deformable encoder depth
    num_decoder_layers: int = 6  # query decoder depth
    num_generator_layers: int = 6  # attention query generator depth
    generator_ffn_dim: int = 1024  # query generator FFN width (AVSegFormer: 1024)
    deform_points: int = 4  # sampling points per head and level in MSDeformAttn
    # How `learnable_query` enters the query decoder. "positional": a DETR-style query position added to the
    # decoder's attention queries/keys, the memory's sine positions added to its keys. "additive": the official
    # AVSegFormer (model/head/AVSegHead.py, model/utils/transformer.py at 7083cb6): added once to the generated
    # queries; the query decoder's attention uses no positional encoding at all.
    query_embed: QueryEmbed = "positional"
    generator_dropout: float | None = None  # dropout in the query generator; None = `dropout` (official: 0, none)


@dataclass(frozen=True)
class HeadConfig:
    mlp_hidden: int = 256  # [R] query-map MLP width; AVSegFormer's 2048 costs ~33 GFLOPs at 56x56
    fc_channels: tuple[int, int] = (128, 32)  # final conv widths (AVSegFormer `fc`)
    upsample_last: bool = True  # [R] True: every conv at 1/4 scale, logits upsampled; False: AVSegFormer order
    audio_gate: bool = True  # audio-query channel gate on the mask feature (AVSegFormer `fusion_block`)
    gate_qkv_bias: bool = True  # biases on the gate's q/kv projections (official CrossModalMixer: qkv_bias=False)
    # Auxiliary output: False = channel mean of the mask feature after the query maps are added; True = before
    # (the official AVSegFormer returns the gated mask feature, and its "mix" loss takes that one's mean).
    aux_before_query_maps: bool = False


@dataclass(frozen=True)
class AVSConfig:
    variant: str = "custom"
    visual: VisualConfig = field(default_factory=VisualConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    num_classes: int = 1  # 1 = binary (S4/MS3, sigmoid); 71 = AVSS semantic (70 classes + background, softmax)
    input_size: int = 224  # square frame size fed to the network (AVS convention: 224)
    class_names: tuple[str, ...] = ()  # names of the num_classes outputs; empty = AVSBench's (71) or "class_<i>"
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN  # frames in [0, 1] are normalised (x - mean) / std
    pixel_std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        validate(self)

    def replace(self, **changes: Any) -> AVSConfig:
        """A copy with top-level fields replaced (e.g. `num_classes=71`)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AVSConfig:
        return _from_dict(cls, data, path="config")

    @classmethod
    def from_json(cls, text: str) -> AVSConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def architecture_dict(self) -> dict[str, Any]:
        """The fields that decide the network: everything except weight paths, the name, labels and inputs."""
        data = self.to_dict()
        for name in ("variant", "class_names", "input_size", "pixel_mean", "pixel_std"):
            data.pop(name)  # labels and input preprocessing: they change no tensor of the network
        data["visual"].pop("weights")
        data["audio"].pop("weights")
        return data


def validate(cfg: AVSConfig) -> None:
    """Reject configs that cannot build, with a message that says which field to change."""
    d = cfg.decoder
    problems = []
    for section, value in (("visual.backbone", cfg.visual.backbone), ("audio.backbone", cfg.audio.backbone),
                           ("decoder.kind", d.kind), ("decoder.pqg_mode", d.pqg_mode),
                           ("decoder.query_embed", d.query_embed)):
        allowed = _literal_choices(section)
        if value not in allowed:
            problems.append(f"{section}={value!r} is not one of {allowed}")
    if d.dim % d.num_heads:
        problems.append(f"decoder.dim={d.dim} must be divisible by decoder.num_heads={d.num_heads}")
    if d.dim % 2:
        problems.append(f"decoder.dim={d.dim} must be even (sine positional encoding)")
    if d.num_queries < 1:
        problems.append(f"decoder.num_queries={d.num_queries} must be >= 1")
    if d.num_conv_blocks < 0 or d.num_attn_blocks < 0:
        problems.append("decoder.num_conv_blocks and decoder.num_attn_blocks must be >= 0")
    if d.conv_kernel % 2 == 0:
        problems.append(f"decoder.conv_kernel={d.conv_kernel} must be odd")
    if not d.memory_self_attn_levels or any(lvl not in (0, 1, 2) for lvl in d.memory_self_attn_levels):
        problems.append(f"decoder.memory_self_attn_levels={d.memory_self_attn_levels} must name levels 0, 1, 2")
    if cfg.num_classes < 1:
        problems.append(f"num_classes={cfg.num_classes} must be >= 1")
    if cfg.class_names and len(cfg.class_names) != cfg.num_classes:
        problems.append(f"class_names has {len(cfg.class_names)} names for num_classes={cfg.num_classes}")
    if cfg.input_size % 32:
        problems.append(f"input_size={cfg.input_size} must be a multiple of 32 (backbone stride)")
    if len(cfg.pixel_mean) != 3 or len(cfg.pixel_std) != 3 or min(cfg.pixel_std) <= 0:
        problems.append(f"pixel_mean={cfg.pixel_mean} and pixel_std={cfg.pixel_std} need 3 values, std > 0")
    if d.generator_dropout is not None and not 0 <= d.generator_dropout < 1:
        problems.append(f"decoder.generator_dropout={d.generator_dropout} must be in [0, 1) or null")
    if problems:
        raise ConfigError("invalid model config: " + "; ".join(problems))


def _literal_choices(section: str) -> tuple[str, ...]:
    literal = {"visual.backbone": VisualBackbone, "audio.backbone": AudioBackbone,
               "decoder.kind": DecoderKind, "decoder.pqg_mode": PQGMode, "decoder.query_embed": QueryEmbed}[section]
    return get_args(literal)


def _from_dict(cls: type, data: Any, *, path: str) -> Any:
    """Rebuild a (nested) frozen dataclass from JSON data, rejecting unknown or mistyped fields."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be an object, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path} has unknown fields {unknown}; known fields are {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(hint, value, path=f"{path}.{name}")
        elif isinstance(value, list):
            kwargs[name] = tuple(value)  # JSON has no tuples; configs use tuples (immutable, hashable)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def with_overrides(cfg: AVSConfig, overrides: list[str] | tuple[str, ...]) -> AVSConfig:
    """A copy of `cfg` with dotted `key=value` overrides, e.g. `head.upsample_last=false`.

    Values are JSON (`true`, `64`, `[1, 2]`, `"pvt_v2_b1"`; a bare word is taken as a string) and must
    have the type of the field they replace; the result is validated like any other config.
    """
    data = cfg.to_dict()
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        *parents, leaf = key.split(".")
        node = data
        for i, part in enumerate(parents):
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parents[:i + 1])} is not a config section")
            node = node[part]
        if leaf not in node or isinstance(node[leaf], dict):
            fields = sorted(k for k, v in node.items() if not isinstance(v, dict))
            raise ConfigError(f"override {item!r}: no field {key!r}; fields here are {fields}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        old = node[leaf]
        if not _same_kind(old, value):
            raise ConfigError(f"override {item!r}: {key} is a {type(old).__name__}, got {value!r}")
        node[leaf] = float(value) if isinstance(old, float) and isinstance(value, int) else value
    return AVSConfig.from_dict(data)


def _same_kind(old: Any, value: Any) -> bool:
    """Whether `value` (parsed JSON) may replace `old`: same type, an int for a float, a list for a tuple."""
    if old is None or value is None:
        return True  # optional fields (weight paths)
    if isinstance(old, bool) or isinstance(value, bool):
        return isinstance(old, bool) and isinstance(value, bool)  # bool is an int subclass: keep them apart
    if isinstance(old, float):
        return isinstance(value, int | float)
    if isinstance(old, tuple | list):
        return isinstance(value, list)
    return isinstance(value, type(old))
