"""Named model variants: one frozen `AVSConfig` each.

AVESFormer on PVT-v2 b0/b1/b2/b5 and ResNet-50, the AVSegFormer baseline on the same backbones (so
the paper's speed claim is measured in one code base), and `-tiny` variants for CPU tests and the
shipped demo checkpoint. AVSegFormer settings follow its released configs (model-spec §4.2, §7.1):
300 queries, FFN 2048, dropout 0.1, head MLP 300 -> 2048 -> 2048 -> 256, upsample before the last convs,
and the official code's details (github.com/vvvb-github/AVSegFormer at 7083cb6): learnable queries added to
the generated ones, no positional encoding in the query decoder, raw-index sine positions, no dropout in
the query generator, no q/kv biases in the audio gate, the auxiliary output taken before the query maps.
With these the published checkpoints load exactly (`avs weights import-avsegformer`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from model.config import AudioConfig, AVSConfig, DecoderConfig, HeadConfig, VisualConfig
from model.errors import ConfigError

_AVSEGFORMER_DECODER = DecoderConfig(kind="avsegformer", num_queries=300, ffn_dim=2048, dropout=0.1,
                                     query_embed="additive", generator_dropout=0.0, pos_normalize=False)
_AVSEGFORMER_HEAD = HeadConfig(mlp_hidden=2048, upsample_last=False, gate_qkv_bias=False, aux_before_query_maps=True)

# Small enough for 2 CPU cores: PVT-v2-b0, a 0.1 M-parameter audio CNN (trained, not frozen: no
# pretrained VGGish here), width 64, one block of each kind, 128-pixel frames. ~3.9 M parameters.
_TINY_VISUAL = VisualConfig(backbone="pvt_v2_b0", drop_path_rate=0.0)
_TINY_AUDIO = AudioConfig(backbone="tiny", frozen=False)
# The last two head convs run at full resolution (AVSegFormer's order), not at 1/4 scale: at 128 pixels
# a synthetic shape is 12-23 px across, and logits on a 32x32 grid cap its IoU at about 0.89 (measured
# on the held-out scenes: ground truth average-pooled x4, upsampled, thresholded), below the demo's
# 0.85 target once the model's own errors are added. Costs ~1.4x per training step at 128 pixels.
_TINY_HEAD = HeadConfig(mlp_hidden=64, fc_channels=(32, 16), upsample_last=False)


# Variant names use "r50" for ResNet-50 (the AVS literature's label); config fields use "resnet50".
def _short(backbone: str) -> str:
    return "r50" if backbone == "resnet50" else backbone


def _avesformer(backbone: str) -> AVSConfig:
    return AVSConfig(variant=f"avesformer-{_short(backbone)}", visual=VisualConfig(backbone=backbone))


def _avsegformer(backbone: str) -> AVSConfig:
    return AVSConfig(variant=f"avsegformer-{_short(backbone)}", visual=VisualConfig(backbone=backbone),
                     decoder=_AVSEGFORMER_DECODER, head=_AVSEGFORMER_HEAD)


VARIANTS: dict[str, AVSConfig] = {
    cfg.variant: cfg
    for cfg in (
        *(_avesformer(b) for b in ("pvt_v2_b0", "pvt_v2_b1", "pvt_v2_b2", "pvt_v2_b5", "resnet50")),
        *(_avsegformer(b) for b in ("pvt_v2_b0", "pvt_v2_b2", "pvt_v2_b5", "resnet50")),
        AVSConfig(
            variant="avesformer-tiny", visual=_TINY_VISUAL, audio=_TINY_AUDIO, head=_TINY_HEAD, input_size=128,
            decoder=DecoderConfig(dim=64, num_heads=4, num_queries=16, ffn_dim=256,
                                  num_conv_blocks=1, num_attn_blocks=1),
        ),
        AVSConfig(
            variant="avsegformer-tiny", visual=_TINY_VISUAL, audio=_TINY_AUDIO, input_size=128,
            decoder=dataclasses.replace(_AVSEGFORMER_DECODER, dim=64, num_heads=4, num_queries=16, ffn_dim=256,
                                        num_encoder_layers=1, num_decoder_layers=1, num_generator_layers=1,
                                        generator_ffn_dim=256),
            head=dataclasses.replace(_AVSEGFORMER_HEAD, mlp_hidden=64, fc_channels=(32, 16)),
        ),
    )
}

DEFAULT_VARIANT = "avesformer-tiny"  # what `avs segment` / `avs serve` use with the shipped demo checkpoint
# Trained by `make demo-checkpoint` on synthetic S4 scenes and committed (see README); used whenever no
# checkpoint is given.
DEMO_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "avesformer-tiny-synthetic-s4.safetensors"


def get_config(variant: str, *, num_classes: int | None = None) -> AVSConfig:
    """The frozen config of a named variant, optionally with the 71-class AVSS head."""
    try:
        cfg = VARIANTS[variant]
    except KeyError:
        raise ConfigError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}") from None
    return cfg if num_classes is None else cfg.replace(num_classes=num_classes)
