"""Multi-scale deformable attention in plain PyTorch (no compiled op).

Zhu et al., "Deformable DETR" (ICLR 2021). Each query looks at `points` locations per head and per
level, placed at learned offsets around its reference point, and mixes the bilinearly sampled values
with softmax weights. The sampling uses `F.grid_sample`, so it runs on any device and exports without
custom CUDA kernels (the price: slower than the fused kernel on a GPU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MSDeformAttn(nn.Module):
    def __init__(self, dim: int = 256, num_levels: int = 3, num_heads: int = 8, num_points: int = 4) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.dim, self.num_levels, self.num_heads, self.num_points = dim, num_levels, num_heads, num_points
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Start with each head looking in its own compass direction, k steps away for point k, so the
        # sampled neighbourhood is spread out before any training (Deformable DETR's initialisation).
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2 * math.pi / self.num_heads)
        grid = torch.stack([angles.cos(), angles.sin()], -1)  # [heads, 2]
        grid = grid / grid.abs().max(-1, keepdim=True).values
        grid = grid[:, None, None, :].repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32)[None, None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, value: torch.Tensor,
                shapes: list[tuple[int, int]]) -> torch.Tensor:
        """Deformable attention over a flattened multi-scale memory.

        Args:
            query: [N, Lq, C] (positional encoding already added).
            reference_points: [N, Lq, levels, 2], (x, y) in [0, 1] per level.
            value: [N, L, C], the flattened memory with L = sum(H_i * W_i).
            shapes: the (H_i, W_i) of each level, in memory order.

        Returns:
            [N, Lq, C].
        """
        N, Lq, C = query.shape
        h, lv, p = self.num_heads, self.num_levels, self.num_points
        d = C // h
        v = self.value_proj(value).view(N, -1, h, d)  # [N, L, h, d]
        offsets = self.sampling_offsets(query).view(N, Lq, h, lv, p, 2)
        weights = self.attention_weights(query).view(N, Lq, h, lv * p).softmax(-1).view(N, Lq, h, lv, p)
        # offsets are in pixels of each level; normalise by (W_i, H_i) to the [0, 1] frame
        normaliser = torch.tensor([[w, hh] for hh, w in shapes], dtype=query.dtype, device=query.device)
        loc = reference_points[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        out = _sample_and_mix(v, shapes, loc, weights)  # [N, Lq, C]
        return self.output_proj(out)


def _sample_and_mix(value: torch.Tensor, shapes: list[tuple[int, int]], loc: torch.Tensor,
                    weights: torch.Tensor) -> torch.Tensor:
    """value [N, L, h, d], loc [N, Lq, h, lv, p, 2] in [0, 1], weights [N, Lq, h, lv, p] -> [N, Lq, h*d]."""
    N, _, h, d = value.shape
    _, Lq, _, lv, p, _ = loc.shape
    grids = 2 * loc - 1  # grid_sample wants [-1, 1]
    sampled, start = [], 0
    for level, (H, W) in enumerate(shapes):
        v = value[:, start:start + H * W].permute(0, 2, 3, 1).reshape(N * h, d, H, W)  # [N*h, d, H, W]
        g = grids[:, :, :, level].transpose(1, 2).reshape(N * h, Lq, p, 2)  # [N*h, Lq, p, 2]
        # align_corners=False: a reference point (i + 0.5) / W lands on pixel centre i
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
        start += H * W
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # [N*h, d, Lq, lv*p]
    w = weights.transpose(1, 2).reshape(N * h, 1, Lq, lv * p)
    out = (stacked * w).sum(-1)  # [N*h, d, Lq]
    return out.view(N, h * d, Lq).transpose(1, 2)


def reference_points(shapes: list[tuple[int, int]], batch: int, device: torch.device,
                     dtype: torch.dtype) -> torch.Tensor:
    """Pixel-centre reference points of every memory token, repeated for each level: [N, L, levels, 2]."""
    points = []
    for H, W in shapes:
        y, x = torch.meshgrid(
            (torch.arange(H, device=device, dtype=dtype) + 0.5) / H,
            (torch.arange(W, device=device, dtype=dtype) + 0.5) / W,
            indexing="ij",
        )
        points.append(torch.stack((x.flatten(), y.flatten()), -1))  # [H*W, 2] as (x, y)
    ref = torch.cat(points, 0)  # [L, 2]
    return ref[None, :, None, :].expand(batch, -1, len(shapes), -1)
