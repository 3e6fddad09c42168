"""The optional confidence map of a mask line (`confidence=true` at submission): how sure the model is, per
pixel, at a small size the page can draw as a heat map.

    "confidence": {"size": [h, w], "counts": null, "data": "<base64 of h × w uint8, row-major>"}

The value is the probability that the pixel sounds × 255: the sigmoid of a binary model's logit, or
1 - P(background) of a multi-class model's softmax. The map keeps the frame's aspect ratio with its long side
at most `MAX_SIDE` pixels (bilinear resampling of the probabilities), so a line grows by at most ~5.5 kB.
"""

from __future__ import annotations

import base64

import torch
import torch.nn.functional as F

MAX_SIDE = 64


def map_size(frame_size: tuple[int, int], max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(h, w) of the map for a frame of (H, W): the same shape, long side at most `max_side`, each side >= 1."""
    height, width = frame_size
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


@torch.inference_mode()
def confidence_maps(logits: torch.Tensor, frame_size: tuple[int, int]) -> list[dict[str, object]]:
    """logits [n, K, S, S] (K = 1: binary; K > 1: class 0 is background) of frames of display size
    `frame_size` (H, W) -> n confidence entries (see the module docstring)."""
    logits = logits.float()
    probs = torch.sigmoid(logits) if logits.shape[1] == 1 else 1.0 - torch.softmax(logits, dim=1)[:, :1]
    size = map_size(frame_size)
    small = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)[:, 0]
    values = (small.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return [{"size": list(size), "counts": None, "data": base64.b64encode(v.tobytes()).decode("ascii")}
            for v in values]
