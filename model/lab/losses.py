"""Training losses of AVSegFormer, the framework AVESFormer builds on (model-spec §4.2).

Binary (S4/MS3): Dice on the mask logits (weight 1) + Dice on the auxiliary logits, the channel mean
of the mask feature upsampled to the mask size (weight 0.1, the "mix" loss).
Semantic (AVSS): pixel cross-entropy over the classes (weight 1) + the same auxiliary Dice against
the binarised ground truth (label > 0) (weight 0.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AUX_WEIGHT = 0.1
_EPS = 1e-3  # AVSegFormer adds 0.001 to each squared sum


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """logits [N, 1, H, W] or [N, H, W], target 0/1 of the same spatial size -> mean over frames.

    Per frame: 1 - 2 Σ p g / (Σ p² + 0.001 + Σ g² + 0.001), p = sigmoid(logits).
    """
    p = torch.sigmoid(logits).flatten(1)
    g = target.float().flatten(1)
    dice = 2 * (p * g).sum(1) / ((p * p).sum(1) + _EPS + (g * g).sum(1) + _EPS)
    return (1 - dice).mean()


def _aux_dice(aux_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    aux = F.interpolate(aux_logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return dice_loss(aux, target)


def binary_loss(mask_logits: torch.Tensor, aux_logits: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """mask_logits [N, 1, H, W], aux_logits [N, 1, h, w], masks [N, H, W] in {0, 1}."""
    main = dice_loss(mask_logits, masks)
    aux = _aux_dice(aux_logits, masks)
    return {"loss": main + AUX_WEIGHT * aux, "main": main, "aux": aux}


def semantic_loss(mask_logits: torch.Tensor, aux_logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """mask_logits [N, K, H, W], aux_logits [N, 1, h, w], labels int64 [N, H, W] (0 = background)."""
    main = F.cross_entropy(mask_logits, labels)
    aux = _aux_dice(aux_logits, (labels > 0).float())
    return {"loss": main + AUX_WEIGHT * aux, "main": main, "aux": aux}
