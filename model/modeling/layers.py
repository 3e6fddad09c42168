"""Small building blocks shared by the decoders and the head."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (AVSegFormer's choice), fewer when the width is not divisible."""
    groups = math.gcd(32, channels)
    return nn.GroupNorm(groups, channels)


def conv_gn(in_ch: int, out_ch: int, kernel: int = 1, relu: bool = False) -> nn.Sequential:
    """Conv + GroupNorm (+ ReLU): the projection unit of AVSegFormer's neck and head."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2), group_norm(out_ch)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class FeedForward(nn.Module):
    """Token-wise MLP `dim -> hidden -> dim` with GELU (transformer FFN)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(F.gelu(self.fc1(x))))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW map (ConvNeXt-style), without permuting."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def sine_position_encoding(height: int, width: int, dim: int, *, device: torch.device,
                           dtype: torch.dtype, temperature: float = 10000.0, normalize: bool = True) -> torch.Tensor:
    """DETR's 2-D sine positional encoding.

    Positions are the pixel indices 1..H and 1..W; with `normalize` they are scaled to (0, 2pi] over the
    map (DETR), without it they stay raw indices (mmdet's `SinePositionalEncoding(normalize=False)`, which
    the official AVSegFormer uses).

    Returns:
        [dim, height, width]: the first dim/2 channels encode y, the last dim/2 encode x.
    """
    half = dim // 2
    y = torch.arange(1, height + 1, device=device, dtype=torch.float32)[:, None].expand(height, width)
    x = torch.arange(1, width + 1, device=device, dtype=torch.float32)[None, :].expand(height, width)
    if normalize:
        scale, eps = 2 * math.pi, 1e-6
        y = y / (height + eps) * scale
        x = x / (width + eps) * scale
    freq = torch.arange(half, device=device, dtype=torch.float32)
    freq = temperature ** (2 * torch.div(freq, 2, rounding_mode="floor") / half)
    pos_x = x[..., None] / freq  # [H, W, half]
    pos_y = y[..., None] / freq
    # interleave sin on even and cos on odd channels
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=-1).flatten(2)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=-1).flatten(2)
    return torch.cat((pos_y, pos_x), dim=-1).permute(2, 0, 1).to(dtype)  # [dim, H, W]


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections and PyTorch's fused SDPA kernel.

    Positional encodings are added to queries and keys by the caller (DETR convention), never to
    values.
    """

    def __init__(self, dim: int, num_heads: int, *, bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)
        self.dropout = dropout

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """query [B, Lq, C], key/value [B, Lk, C] -> [B, Lq, C]."""
        B, Lq, C = query.shape
        Lk = key.shape[1]
        h = self.num_heads
        q = self.q_proj(query).view(B, Lq, h, C // h).transpose(1, 2)  # [B, h, Lq, C/h]
        k = self.k_proj(key).view(B, Lk, h, C // h).transpose(1, 2)  # [B, h, Lk, C/h]
        v = self.v_proj(value).view(B, Lk, h, C // h).transpose(1, 2)
        drop = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # [B, h, Lq, C/h]
        return self.out_proj(out.transpose(1, 2).reshape(B, Lq, C))

    def attention_weights(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """The softmax attention matrix [B, heads, Lq, Lk] (for analysis and tests, not the hot path)."""
        B, Lq, C = query.shape
        h = self.num_heads
        q = self.q_proj(query).view(B, Lq, h, C // h).transpose(1, 2)
        k = self.k_proj(key).view(B, key.shape[1], h, C // h).transpose(1, 2)
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(C // h), dim=-1)
