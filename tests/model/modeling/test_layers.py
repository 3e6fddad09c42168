"""Unit tests of the building blocks: deformable attention sampling, positional encoding, config."""

from __future__ import annotations

import json

import pytest
import torch

from model.config import AVSConfig, DecoderConfig
from model.errors import ConfigError
from model.modeling.deformable_attention import MSDeformAttn, reference_points
from model.modeling.elf_decoder import ConvBlock, ELFDecoder
from model.modeling.layers import sine_position_encoding
from model.modeling.neck import flatten_levels, unflatten_levels
from model.variants import VARIANTS, get_config


def test_deformable_attention_with_zero_offsets_reads_the_reference_pixel() -> None:
    """One level, one point, zero offset: each query must get exactly its own pixel's value."""
    torch.manual_seed(0)
    attn = MSDeformAttn(dim=8, num_levels=1, num_heads=2, num_points=1)
    with torch.no_grad():
        attn.sampling_offsets.bias.zero_()
    shapes = [(5, 7)]
    value = torch.randn(2, 35, 8)
    ref = reference_points(shapes, 2, value.device, value.dtype)
    out = attn(value, ref, value, shapes)
    expected = attn.output_proj(attn.value_proj(value))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_deformable_attention_offset_of_one_pixel_reads_the_neighbour() -> None:
    torch.manual_seed(0)
    attn = MSDeformAttn(dim=4, num_levels=1, num_heads=1, num_points=1)
    with torch.no_grad():
        attn.sampling_offsets.bias.copy_(torch.tensor([1.0, 0.0]))  # +1 pixel in x
        attn.value_proj.weight.copy_(torch.eye(4))
        attn.output_proj.weight.copy_(torch.eye(4))
    shapes = [(3, 4)]
    grid = torch.arange(12, dtype=torch.float32).view(1, 12, 1).expand(1, 12, 4)
    ref = reference_points(shapes, 1, grid.device, grid.dtype)
    out = attn(torch.zeros(1, 12, 4), ref, grid, shapes)[0, :, 0].view(3, 4)
    expected = torch.arange(12, dtype=torch.float32).view(3, 4) + 1
    expected[:, -1] = 0  # beyond the right edge grid_sample pads with zeros
    torch.testing.assert_close(out[:, :-1], expected[:, :-1])
    assert (out[:, -1] < expected[:, -2] + 1).all()


def test_sine_position_encoding_distinguishes_positions() -> None:
    pos = sine_position_encoding(7, 9, 32, device=torch.device("cpu"), dtype=torch.float32)
    assert pos.shape == (32, 7, 9)
    flat = pos.flatten(1).T  # [63, 32]
    distances = torch.cdist(flat, flat) + torch.eye(63) * 1e3
    assert float(distances.min()) > 1e-3  # no two positions share an encoding


def test_flatten_and_unflatten_are_inverse() -> None:
    levels = [torch.randn(2, 6, h, w) for h, w in ((8, 8), (4, 4), (2, 2))]
    tokens, shapes = flatten_levels(levels)
    assert tokens.shape == (2, 84, 6)
    for a, b in zip(levels, unflatten_levels(tokens, shapes), strict=True):
        torch.testing.assert_close(a, b)


def test_conv_block_cross_scale_lets_coarse_levels_reach_fine_ones() -> None:
    torch.manual_seed(0)
    levels = [torch.randn(1, 8, s, s) for s in (8, 4, 2)]
    changed = [x.clone() for x in levels]
    changed[2] += 1.0
    for cross, should_change in ((True, True), (False, False)):
        block = ConvBlock(8, kernel=3, ffn_dim=16, cross_scale=cross).eval()
        with torch.no_grad():
            delta = (block(levels)[0] - block(changed)[0]).abs().max()
        assert (delta > 1e-4) == should_change


def test_elf_memory_self_attention_keys_cover_the_chosen_levels() -> None:
    cfg = get_config("avesformer-tiny").decoder
    decoder = ELFDecoder(
        dim=cfg.dim, num_heads=cfg.num_heads, num_queries=4, ffn_dim=16, dropout=0.0, pqg_mode="concat",
        pqg_mlp=False, num_conv_blocks=0, num_attn_blocks=1, conv_kernel=3, conv_cross_scale=True,
        memory_self_attn_levels=(0, 2), memory_attends_prompts=True)
    index = decoder._kv_index([(4, 4), (2, 2), (1, 1)], torch.device("cpu"))
    assert index.tolist() == [*range(16), 20]  # levels 0 and 2, skipping level 1's 4 tokens
    assert decoder.num_tokens == 5  # concat mode adds the audio token to the 4 prompts


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_config_json_round_trip(variant: str) -> None:
    cfg = get_config(variant)
    assert AVSConfig.from_json(cfg.to_json()) == cfg
    assert json.loads(cfg.to_json())["variant"] == variant


def test_config_rejects_unknown_fields_and_bad_values() -> None:
    data = get_config("avesformer-tiny").to_dict()
    data["decoder"]["num_querys"] = 3
    with pytest.raises(ConfigError, match="num_querys"):
        AVSConfig.from_dict(data)
    with pytest.raises(ConfigError, match="divisible"):
        AVSConfig(decoder=DecoderConfig(dim=100, num_heads=8))
    with pytest.raises(ConfigError, match="multiple of 32"):
        AVSConfig(input_size=100)
    with pytest.raises(ConfigError, match="unknown variant"):
        get_config("avesformer-b9")
    with pytest.raises(ConfigError, match=r"visual\.backbone"):
        AVSConfig.from_dict({**get_config("avesformer-tiny").to_dict(),
                             "visual": {"backbone": "vit_b", "drop_path_rate": 0.0, "weights": None}})


def test_configs_are_frozen() -> None:
    cfg = get_config("avesformer-tiny")
    with pytest.raises(AttributeError):
        cfg.num_classes = 71  # type: ignore[misc]
    assert cfg.replace(num_classes=71).num_classes == 71
    assert cfg.num_classes == 1
