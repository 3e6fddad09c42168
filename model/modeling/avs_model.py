"""The composed audio-visual segmentation network (AVESFormer or the AVSegFormer baseline).

Frames are independent: a clip of B videos x T frames is fed as a batch of N = B*T frames, each with
the 0.96 s audio window that covers it (model-spec §1.5; the paper has no temporal modelling).
`forward` is tensors in, tensors out; numpy, resizing, devices and thresholds belong to the predictor.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from model.config import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "AVSModel", "AVSOutput"]


class AVSOutput(NamedTuple):
    mask_logits: torch.Tensor  # [N, K, H, W]: K = 1 (sigmoid, S4/MS3) or 71 (softmax, AVSS)
    aux_logits: torch.Tensor  # [N, 1, H/4, W/4]: channel mean of the mask feature (auxiliary loss)


class AVSModel(nn.Module):
    """Visual + audio encoders, neck, decoder and mask head; frames are normalised inside with
    `pixel_mean` / `pixel_std` (the checkpoint's, ImageNet's by default)."""

    def __init__(self, *, visual_encoder: nn.Module, audio_encoder: nn.Module, neck: nn.Module,
                 decoder: nn.Module, head: nn.Module, dim: int, freeze_audio: bool,
                 pixel_mean: tuple[float, float, float] = IMAGENET_MEAN,
                 pixel_std: tuple[float, float, float] = IMAGENET_STD) -> None:
        super().__init__()
        self.visual_encoder = visual_encoder
        self.audio_encoder = audio_encoder
        self.audio_proj = nn.Linear(audio_encoder.embed_dim, dim)
        self.neck = neck
        self.decoder = decoder
        self.head = head
        self.freeze_audio = freeze_audio
        if freeze_audio:
            self.audio_encoder.requires_grad_(False)
        # Not persistent: constants, not weights, so they stay out of checkpoints.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> AVSModel:
        super().train(mode)
        if self.freeze_audio:
            self.audio_encoder.eval()  # a frozen encoder keeps its BatchNorm/Dropout in inference mode
        return self

    def encode_audio(self, log_mel: torch.Tensor) -> torch.Tensor:
        """log_mel [M, 1, 96, 64] VGGish examples -> embeddings [M, 128].

        Call this once per audio window and share the result across the frames it covers.
        """
        if self.freeze_audio:
            with torch.no_grad():
                return self.audio_encoder(log_mel)
        return self.audio_encoder(log_mel)

    def forward(self, frames: torch.Tensor, audio: torch.Tensor | None = None, *,
                audio_embedding: torch.Tensor | None = None) -> AVSOutput:
        """Segment the sounding objects of N independent frames.

        Args:
            frames: [N, 3, H, W] RGB in [0, 1]; H and W multiples of 32.
            audio: [N, 1, 96, 64] log-mel example of each frame's audio window, or
            audio_embedding: [N, 128] precomputed `encode_audio` output (exactly one of the two).

        Returns:
            AVSOutput with mask logits [N, K, H, W] and auxiliary logits [N, 1, H/4, W/4].
        """
        if (audio is None) == (audio_embedding is None):
            raise ValueError("pass exactly one of `audio` (log-mel) or `audio_embedding`")
        N, _, H, W = frames.shape
        if audio_embedding is None:
            audio_embedding = self.encode_audio(audio)
        if audio_embedding.shape[0] != N:
            raise ValueError(f"{N} frames but {audio_embedding.shape[0]} audio windows; pass one per frame")
        audio_token = self.audio_proj(audio_embedding.to(frames.dtype))[:, None]  # [N, 1, C]

        x = (frames - self.pixel_mean) / self.pixel_std
        feats = self.visual_encoder(x)  # 4 maps at strides 4/8/16/32
        fine, levels = self.neck(feats)  # [N, C, H/4, W/4], 3 maps [N, C, H/s, W/s]
        pos = self.neck.position_tokens(levels)  # [1, L, C]
        levels, queries = self.decoder(levels, pos, audio_token)
        logits, aux = self.head(fine, levels[0], queries, audio_token, (H, W))
        return AVSOutput(logits, aux)

    def parameter_groups(self) -> dict[str, int]:
        """Parameter counts: visual backbone, audio backbone, and everything else ("decoder")."""
        visual = sum(p.numel() for p in self.visual_encoder.parameters())
        audio = sum(p.numel() for p in self.audio_encoder.parameters())
        total = sum(p.numel() for p in self.parameters())
        return {"visual": visual, "audio": audio, "decoder": total - visual - audio}
