"""Audio-conditioned query generators.

`PromptQueryGenerator` is AVESFormer's PQG (arXiv 2408.01708, Fig. 4: "inserting the audio feature on
top of a set of learnable parameters to generate audio-conditioned queries"); the exact equations are
not public, so this is the reconstruction of model-spec §2.3.

`AttentionQueryGenerator` is AVSegFormer's (Gao et al., AAAI 2024) 6-layer generator, kept as the
baseline. Its cross-attention has the single audio token of a frame as key and value, so the softmax
runs over a length-1 axis and is exactly 1: every query receives the same vector W_o W_v a. That is the
"attention dissipation" AVESFormer's paper is about; `tests/model/test_attention_dissipation.py`
demonstrates it on these modules.
"""

from __future__ import annotations

import torch
from torch import nn

from model.modeling.layers import Attention, FeedForward


class PromptQueryGenerator(nn.Module):
    """N learnable prompts conditioned on one audio token.

    mode="add":    Q = P + a (broadcast), N tokens.
    mode="concat": Q = [a; P], N + 1 tokens.
    With `mlp=True` a pre-norm residual MLP follows, so the audio enters each query non-linearly.
    """

    def __init__(self, dim: int, num_prompts: int, *, mode: str = "add", mlp: bool = True,
                 ffn_dim: int = 1024) -> None:
        super().__init__()
        self.prompts = nn.Embedding(num_prompts, dim)
        self.mode = mode
        self.norm = nn.LayerNorm(dim) if mlp else None
        self.mlp = FeedForward(dim, ffn_dim) if mlp else None
        self.num_tokens = num_prompts + (1 if mode == "concat" else 0)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """audio [N, 1, C] projected audio token -> queries [N, num_tokens, C]."""
        prompts = self.prompts.weight[None].expand(audio.shape[0], -1, -1)  # [N, P, C]
        q = prompts + audio if self.mode == "add" else torch.cat((audio, prompts), dim=1)
        if self.mlp is not None:
            q = q + self.mlp(self.norm(q))
        return q


class _GeneratorLayer(nn.Module):
    """Self-attention over queries, cross-attention to the audio token, FFN; post-norm (AVSegFormer)."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads, bias=False, dropout=dropout)
        self.cross_attn = Attention(dim, num_heads, bias=False, dropout=dropout)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, q: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        q = self.norm1(q + self.self_attn(q, q, q))
        q = self.norm2(q + self.cross_attn(q, audio, audio))  # K = V = one audio token: dissipated
        return self.norm3(q + self.ffn(q))


class AttentionQueryGenerator(nn.Module):
    """AVSegFormer's query generator: learnable queries refined by L layers attending to the audio."""

    def __init__(self, dim: int, num_queries: int, *, num_layers: int = 6, num_heads: int = 8,
                 ffn_dim: int = 1024, dropout: float = 0.1) -> None:
        super().__init__()
        self.query = nn.Embedding(num_queries, dim)
        self.layers = nn.ModuleList(_GeneratorLayer(dim, num_heads, ffn_dim, dropout) for _ in range(num_layers))
        self.num_tokens = num_queries

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """audio [N, 1, C] -> queries [N, num_queries, C]."""
        q = self.query.weight[None].expand(audio.shape[0], -1, -1)
        for layer in self.layers:
            q = layer(q, audio)
        return q
