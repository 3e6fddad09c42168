"""Neck: project the backbone pyramid to one width and lay out the multi-scale memory.

AVSegFormer's `in_proj` (1x1 conv + GroupNorm per stage) and deformable-DETR's level embedding
(model-spec §1.4). Stage 1 (stride 4) feeds the mask feature; stages 2-4 (strides 8/16/32) are the
"memory" the decoders attend over: 28² + 14² + 7² = 1029 tokens at 224².
"""

from __future__ import annotations

import torch
from torch import nn

from model.modeling.layers import conv_gn, sine_position_encoding


class MultiScaleNeck(nn.Module):
    """Per-stage 1x1 conv + GroupNorm to `dim`, and the memory's position tokens.

    Args:
        in_channels: backbone stage widths at strides 4/8/16/32.
        dim: output width.
        num_levels: memory levels (strides 8/16/32) that get a learnable level embedding.
        normalize_pos: sine positions scaled to each map (DETR) or raw pixel indices (official AVSegFormer).
    """

    def __init__(self, in_channels: tuple[int, ...], dim: int, num_levels: int = 3, *,
                 normalize_pos: bool = True) -> None:
        super().__init__()
        self.normalize_pos = normalize_pos
        self.in_proj = nn.ModuleList(conv_gn(c, dim) for c in in_channels)
        self.level_embed = nn.Parameter(torch.empty(num_levels, dim))
        nn.init.normal_(self.level_embed)
        self.dim = dim

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """feats: 4 maps [N, c_i, H/s_i, W/s_i] -> (fine [N, dim, H/4, W/4], 3 memory maps [N, dim, ...])."""
        projected = [proj(f) for proj, f in zip(self.in_proj, feats, strict=True)]
        return projected[0], projected[1:]

    def position_tokens(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """Sine position + level embedding for the flattened memory: [1, sum(H_i*W_i), dim]."""
        tokens = []
        for i, x in enumerate(levels):
            H, W = x.shape[-2:]
            pos = sine_position_encoding(H, W, self.dim, device=x.device, dtype=x.dtype,
                                         normalize=self.normalize_pos)  # [dim, H, W]
            tokens.append(pos.flatten(1).transpose(0, 1) + self.level_embed[i].to(x.dtype))  # [H*W, dim]
        return torch.cat(tokens, dim=0)[None]


def flatten_levels(levels: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """3 maps [N, C, H_i, W_i] -> tokens [N, sum(H_i*W_i), C] and the list of (H_i, W_i)."""
    shapes = [(x.shape[-2], x.shape[-1]) for x in levels]
    tokens = torch.cat([x.flatten(2).transpose(1, 2) for x in levels], dim=1)
    return tokens, shapes


def unflatten_levels(tokens: torch.Tensor, shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Inverse of `flatten_levels`: [N, L, C] -> maps [N, C, H_i, W_i]."""
    N, _, C = tokens.shape
    maps, start = [], 0
    for H, W in shapes:
        maps.append(tokens[:, start:start + H * W].transpose(1, 2).reshape(N, C, H, W))
        start += H * W
    return maps
