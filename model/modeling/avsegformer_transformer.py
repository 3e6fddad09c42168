"""AVSegFormer's transformer, the baseline AVESFormer improves on (Gao et al., AAAI 2024).

Encoder: 6 post-norm layers of multi-scale deformable self-attention + FFN over the 1029 memory
tokens. Decoder: 6 post-norm layers of {query self-attention, query->memory cross-attention over all
tokens, FFN}. Queries come from the 6-layer `AttentionQueryGenerator`. `learnable_query` either enters
as the official code uses it (`query_embed="additive"`: added once to the generated queries, no
positional encoding in the decoder's attention; `model/head/AVSegHead.py` and `model/utils/transformer.py`
of github.com/vvvb-github/AVSegFormer at 7083cb6) or as a DETR-style query position
(`"positional"`, this project's first reconstruction). Layout and widths follow model-spec §3.2 and
§7.1; no code was copied.
"""

from __future__ import annotations

import torch
from torch import nn

from model.modeling.deformable_attention import MSDeformAttn, reference_points
from model.modeling.layers import Attention, FeedForward
from model.modeling.neck import flatten_levels, unflatten_levels
from model.modeling.query_generators import AttentionQueryGenerator


class DeformableEncoderLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float, num_levels: int,
                 num_points: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(dim, num_levels, num_heads, num_points)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, ref: torch.Tensor,
                shapes: list[tuple[int, int]]) -> torch.Tensor:
        src = self.norm1(src + self.drop(self.self_attn(src + pos, ref, src, shapes)))
        return self.norm2(src + self.drop(self.ffn(src)))


def _with_pos(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return x if pos is None else x + pos


class QueryDecoderLayer(nn.Module):
    """Post-norm {self-attention, cross-attention to the memory, FFN}; positions optional (None: none)."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads, dropout=dropout)
        self.cross_attn = Attention(dim, num_heads, dropout=dropout)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor | None, memory: torch.Tensor,
                pos: torch.Tensor | None) -> torch.Tensor:
        """tgt [N, Q, C], query_pos [1, Q, C] or None, memory [N, L, C], pos [1, L, C] or None -> [N, Q, C]."""
        q = _with_pos(tgt, query_pos)
        tgt = self.norm1(tgt + self.drop(self.self_attn(q, q, tgt)))
        tgt = self.norm2(tgt + self.drop(self.cross_attn(_with_pos(tgt, query_pos), _with_pos(memory, pos), memory)))
        return self.norm3(tgt + self.drop(self.ffn(tgt)))


class AVSegFormerDecoder(nn.Module):
    """Query generator + deformable encoder + query decoder, with the ELF decoder's interface.

    `query_embed`: "additive" (official AVSegFormer) or "positional" (see the module docstring);
    `generator_dropout`: the query generator's dropout (None: `dropout`; the official generator has none).
    """

    def __init__(self, *, dim: int, num_heads: int, num_queries: int, ffn_dim: int, dropout: float,
                 num_encoder_layers: int, num_decoder_layers: int, num_generator_layers: int,
                 generator_ffn_dim: int, num_points: int, num_levels: int = 3, query_embed: str = "positional",
                 generator_dropout: float | None = None) -> None:
        super().__init__()
        if query_embed not in ("positional", "additive"):
            raise ValueError(f"query_embed must be 'positional' or 'additive', got {query_embed!r}")
        self.query_embed = query_embed
        self.query_generator = AttentionQueryGenerator(
            dim, num_queries, num_layers=num_generator_layers, num_heads=num_heads,
            ffn_dim=generator_ffn_dim, dropout=dropout if generator_dropout is None else generator_dropout)
        self.learnable_query = nn.Embedding(num_queries, dim)
        self.encoder = nn.ModuleList(
            DeformableEncoderLayer(dim, num_heads, ffn_dim, dropout, num_levels, num_points)
            for _ in range(num_encoder_layers))
        self.decoder = nn.ModuleList(
            QueryDecoderLayer(dim, num_heads, ffn_dim, dropout) for _ in range(num_decoder_layers))
        self.num_tokens = num_queries

    def forward(self, levels: list[torch.Tensor], pos: torch.Tensor,
                audio: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """levels: 3 maps [N, C, H_i, W_i]; pos [1, L, C]; audio [N, 1, C].

        Returns:
            (fused memory as 3 maps [N, C, H_i, W_i], queries [N, num_queries, C]).
        """
        memory, shapes = flatten_levels(levels)  # [N, L, C]
        N = memory.shape[0]
        ref = reference_points(shapes, N, memory.device, memory.dtype)  # [N, L, levels, 2]
        for layer in self.encoder:
            memory = layer(memory, pos, ref, shapes)
        tgt = self.query_generator(audio)  # [N, Q, C]
        query_pos: torch.Tensor | None = self.learnable_query.weight[None]  # [1, Q, C]
        memory_pos: torch.Tensor | None = pos
        if self.query_embed == "additive":
            tgt, query_pos, memory_pos = tgt + query_pos, None, None
        for layer in self.decoder:
            tgt = layer(tgt, query_pos, memory, memory_pos)
        # Contiguous maps, as the official head's sum `lateral + upsampled memory` is: its 3x3 conv then runs on a
        # contiguous tensor, not on a channels-last view (float32 results differ by ~1e-5 between the two).
        return [level.contiguous() for level in unflatten_levels(memory, shapes)], tgt
