"""AVESFormer's ELF (EarLy Focus) decoder: convolutions early, attention late.

Paper (arXiv 2408.01708, Fig. 4): "The ELF decoder processes local features using convolution blocks
in the early stages. Finally, the transformer blocks interact with high-level audio-visual features to
generate fused features." Equations 6 and 7 are not public; this is model-spec §3.3's reconstruction:

- `ConvBlock` (Eq. 6 analogue): per level, `x += DWConv(LN(x))`, `x += FFN(LN(x))` (ConvNeXt/MetaFormer
  style), one block shared by the three levels like a deformable encoder layer is, with an optional
  top-down path adding the upsampled coarser level first.
- `ELFTransformerBlock` (Eq. 7 analogue), two-way like SAM's decoder: the PQG queries attend to
  themselves and to the memory; the memory attends to itself with keys from the coarse levels only
  (spatial reduction, as PVT does) and to the queries (K = V = Q, the Eq. 1 role with N > 1 tokens, so
  the softmax is no longer over a single audio token).
Pre-norm everywhere: it trains without warm-up, which matters for the short CPU recipes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.modeling.layers import Attention, FeedForward, LayerNorm2d
from model.modeling.neck import flatten_levels, unflatten_levels
from model.modeling.query_generators import PromptQueryGenerator


class ConvBlock(nn.Module):
    def __init__(self, dim: int, *, kernel: int = 3, ffn_dim: int = 1024, cross_scale: bool = True) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.dwconv = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm2 = LayerNorm2d(dim)
        self.ffn = nn.Sequential(nn.Conv2d(dim, ffn_dim, 1), nn.GELU(), nn.Conv2d(ffn_dim, dim, 1))
        self.cross_scale = cross_scale

    def forward(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """levels: maps [N, C, H_i, W_i], finest first -> same shapes."""
        out: list[torch.Tensor] = [None] * len(levels)  # type: ignore[list-item]
        for i in reversed(range(len(levels))):  # coarsest first, so finer levels can receive it
            x = levels[i]
            if self.cross_scale and i + 1 < len(levels):
                x = x + F.interpolate(out[i + 1], size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = x + self.dwconv(self.norm1(x))
            out[i] = x + self.ffn(self.norm2(x))
        return out


class ELFTransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn_dim: int, *, dropout: float = 0.0,
                 attend_prompts: bool = True) -> None:
        super().__init__()
        # query path
        self.q_norm1, self.q_self = nn.LayerNorm(dim), Attention(dim, num_heads, dropout=dropout)
        self.q_norm2, self.q_cross = nn.LayerNorm(dim), Attention(dim, num_heads, dropout=dropout)
        self.q_norm3, self.q_ffn = nn.LayerNorm(dim), FeedForward(dim, ffn_dim, dropout)
        # memory path
        self.m_norm1, self.m_self = nn.LayerNorm(dim), Attention(dim, num_heads, dropout=dropout)
        self.m_norm2 = nn.LayerNorm(dim) if attend_prompts else None
        self.m_cross = Attention(dim, num_heads, dropout=dropout) if attend_prompts else None
        self.m_norm3, self.m_ffn = nn.LayerNorm(dim), FeedForward(dim, ffn_dim, dropout)

    def forward(self, memory: torch.Tensor, pos: torch.Tensor, queries: torch.Tensor,
                kv_index: slice | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """memory [N, L, C], pos [1, L, C], queries [N, Q, C]; kv_index picks the self-attention keys."""
        q = self.q_norm1(queries)
        queries = queries + self.q_self(q, q, q)
        m = memory + pos
        queries = queries + self.q_cross(self.q_norm2(queries), m, memory)
        queries = queries + self.q_ffn(self.q_norm3(queries))

        m = self.m_norm1(memory)
        m_kv, pos_kv = m[:, kv_index], pos[:, kv_index]  # [N, L_kv, C]: coarse levels only
        memory = memory + self.m_self(m + pos, m_kv + pos_kv, m_kv)
        if self.m_cross is not None:
            # K = V = audio-conditioned queries: N distinct keys, so attention can tell tokens apart
            memory = memory + self.m_cross(self.m_norm2(memory) + pos, queries, queries)
        memory = memory + self.m_ffn(self.m_norm3(memory))
        return memory, queries


class ELFDecoder(nn.Module):
    """PQG + L_conv conv blocks + L_attn transformer blocks, with the AVSegFormer decoder's interface."""

    def __init__(self, *, dim: int, num_heads: int, num_queries: int, ffn_dim: int, dropout: float,
                 pqg_mode: str, pqg_mlp: bool, num_conv_blocks: int, num_attn_blocks: int,
                 conv_kernel: int, conv_cross_scale: bool, memory_self_attn_levels: tuple[int, ...],
                 memory_attends_prompts: bool) -> None:
        super().__init__()
        self.pqg = PromptQueryGenerator(dim, num_queries, mode=pqg_mode, mlp=pqg_mlp, ffn_dim=ffn_dim)
        self.conv_blocks = nn.ModuleList(
            ConvBlock(dim, kernel=conv_kernel, ffn_dim=ffn_dim, cross_scale=conv_cross_scale)
            for _ in range(num_conv_blocks))
        self.attn_blocks = nn.ModuleList(
            ELFTransformerBlock(dim, num_heads, ffn_dim, dropout=dropout, attend_prompts=memory_attends_prompts)
            for _ in range(num_attn_blocks))
        self.query_norm = nn.LayerNorm(dim)
        self.memory_self_attn_levels = tuple(sorted(memory_self_attn_levels))
        self.num_tokens = self.pqg.num_tokens

    def _kv_index(self, shapes: list[tuple[int, int]], device: torch.device) -> slice | torch.Tensor:
        bounds, start = [], 0
        for H, W in shapes:
            bounds.append((start, start + H * W))
            start += H * W
        chosen = [bounds[i] for i in self.memory_self_attn_levels]
        if all(chosen[k][1] == chosen[k + 1][0] for k in range(len(chosen) - 1)):
            return slice(chosen[0][0], chosen[-1][1])  # contiguous: a view, no gather
        return torch.cat([torch.arange(a, b, device=device) for a, b in chosen])

    def forward(self, levels: list[torch.Tensor], pos: torch.Tensor,
                audio: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """levels: 3 maps [N, C, H_i, W_i]; pos [1, L, C]; audio [N, 1, C].

        Returns:
            (fused memory as 3 maps [N, C, H_i, W_i], queries [N, num_tokens, C]).
        """
        queries = self.pqg(audio)  # [N, Q, C]
        for block in self.conv_blocks:
            levels = block(levels)
        memory, shapes = flatten_levels(levels)  # [N, L, C]
        kv_index = self._kv_index(shapes, memory.device)
        for block in self.attn_blocks:
            memory, queries = block(memory, pos, queries, kv_index)
        return unflatten_levels(memory, shapes), self.query_norm(queries)
