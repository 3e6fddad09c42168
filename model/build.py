"""Config -> nn.Module. The only place that reads `AVSConfig` and wires the components together."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from model.config import AVSConfig
from model.errors import WeightImportError
from model.modeling.audio_encoder import TinyAudioEncoder, VGGish
from model.modeling.avs_model import AVSModel
from model.modeling.avsegformer_transformer import AVSegFormerDecoder
from model.modeling.elf_decoder import ELFDecoder
from model.modeling.mask_head import MaskHead
from model.modeling.neck import MultiScaleNeck
from model.modeling.visual_encoder import build_visual_encoder
from model.state_dict import load_exact
from model.variants import get_config


def build_model(cfg: AVSConfig) -> AVSModel:
    """Build the network described by `cfg`, load any backbone weight files it names, return it in eval()."""
    d, h = cfg.decoder, cfg.head
    visual = build_visual_encoder(cfg.visual.backbone, drop_path_rate=cfg.visual.drop_path_rate)
    audio = VGGish() if cfg.audio.backbone == "vggish" else TinyAudioEncoder()
    neck = MultiScaleNeck(cfg.visual.channels, d.dim, normalize_pos=d.pos_normalize)
    decoder = _build_decoder(cfg)
    head = MaskHead(dim=d.dim, num_tokens=decoder.num_tokens, num_classes=cfg.num_classes, num_heads=d.num_heads,
                    mlp_hidden=h.mlp_hidden, fc_channels=h.fc_channels, upsample_last=h.upsample_last,
                    audio_gate=h.audio_gate, gate_qkv_bias=h.gate_qkv_bias,
                    aux_before_query_maps=h.aux_before_query_maps)
    model = AVSModel(visual_encoder=visual, audio_encoder=audio, neck=neck, decoder=decoder, head=head,
                     dim=d.dim, freeze_audio=cfg.audio.frozen, pixel_mean=cfg.pixel_mean, pixel_std=cfg.pixel_std)
    if cfg.visual.weights:
        _load_backbone_weights(model.visual_encoder, cfg.visual.weights, expected=cfg.visual.backbone)
    if cfg.audio.weights:
        _load_backbone_weights(model.audio_encoder, cfg.audio.weights, expected=cfg.audio.backbone)
    return model.eval()


def build_variant(variant: str, *, num_classes: int | None = None) -> AVSModel:
    return build_model(get_config(variant, num_classes=num_classes))


def _build_decoder(cfg: AVSConfig) -> nn.Module:
    d = cfg.decoder
    if d.kind == "avsegformer":
        return AVSegFormerDecoder(
            dim=d.dim, num_heads=d.num_heads, num_queries=d.num_queries, ffn_dim=d.ffn_dim, dropout=d.dropout,
            num_encoder_layers=d.num_encoder_layers, num_decoder_layers=d.num_decoder_layers,
            num_generator_layers=d.num_generator_layers, generator_ffn_dim=d.generator_ffn_dim,
            num_points=d.deform_points, query_embed=d.query_embed, generator_dropout=d.generator_dropout)
    return ELFDecoder(
        dim=d.dim, num_heads=d.num_heads, num_queries=d.num_queries, ffn_dim=d.ffn_dim, dropout=d.dropout,
        pqg_mode=d.pqg_mode, pqg_mlp=d.pqg_mlp, num_conv_blocks=d.num_conv_blocks,
        num_attn_blocks=d.num_attn_blocks, conv_kernel=d.conv_kernel, conv_cross_scale=d.conv_cross_scale,
        memory_self_attn_levels=d.memory_self_attn_levels, memory_attends_prompts=d.memory_attends_prompts)


def _load_backbone_weights(module: nn.Module, path: str, *, expected: str) -> None:
    """Load a converted backbone file (from `avs weights import-*`) strictly into `module`."""
    from model.weight_import import read_converted_weights

    state, meta = read_converted_weights(Path(path))
    if meta.get("backbone") != expected:
        raise WeightImportError(
            f"{path} holds weights for backbone {meta.get('backbone')!r}, but the config wants {expected!r}")
    target = getattr(module, "weights_module", module)  # PVT keeps timm's model under `.body`
    load_exact(target, state, source=f"{path} ({expected} backbone)", error=WeightImportError)
