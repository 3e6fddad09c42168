"""AVSegFormer's transformer, the baseline AVESFormer improves on (Gao et al., AAAI 2024).

Encoder: 6 post-norm layers of multi-scale deformable self-attention + FFN over the 1029 memory
tokens. Decoder: 6 post-norm layers of {query self-attention, query->memory cross-attention over all
tokens, FFN}. Queries come from the 6-layer `AttentionQueryGenerator`; `learnable_query` is the query
positional embedding. Layout and widths follow model-spec §3.2 and §7.1; no code was copied.
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


class QueryDecoderLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads, dropout=dropout)
        self.cross_attn = Attention(dim, num_heads, dropout=dropout)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor, memory: torch.Tensor,
                pos: torch.Tensor) -> torch.Tensor:
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.drop(self.self_attn(q, q, tgt)))
        tgt = self.norm2(tgt + self.drop(self.cross_attn(tgt + query_pos, memory + pos, memory)))
        return self.norm3(tgt + self.drop(self.ffn(tgt)))


class AVSegFormerDecoder(nn.Module):
    """Query generator + deformable encoder + query decoder, with the ELF decoder's interface."""

    def __init__(self, *, dim: int, num_heads: int, num_queries: int, ffn_dim: int, dropout: float,
                 num_encoder_layers: int, num_decoder_layers: int, num_generator_layers: int,
                 generator_ffn_dim: int, num_points: int, num_levels: int = 3) -> None:
        super().__init__()
        self.query_generator = AttentionQueryGenerator(
            dim, num_queries, num_layers=num_generator_layers, num_heads=num_heads,
            ffn_dim=generator_ffn_dim, dropout=dropout)
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
        query_pos = self.learnable_query.weight[None]
        for layer in self.decoder:
            tgt = layer(tgt, query_pos, memory, pos)
        return unflatten_levels(memory, shapes), tgt
