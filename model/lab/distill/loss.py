"""The distillation loss: the teacher's soft masks and its hard masks.

Binary students (S4/MS3 teachers, K = 1):
    soft  per-pixel binary cross-entropy between sigmoid(student / T) and sigmoid(teacher / T), times T²
          (Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network": temperature-softened
          targets, the T² factor keeps the gradients' scale when T changes);
    dice  Dice of the student's mask against the teacher's binary mask (teacher logit > 0) (Milletari et al.
          2016, V-Net; the same Dice AVSegFormer trains with, `model.lab.losses.dice_loss`), plus AVSegFormer's
          0.1 auxiliary Dice on the auxiliary logits.
Multi-class students (AVSS teachers, K classes):
    soft  per-pixel KL(softmax(teacher / T) || softmax(student / T)) over the classes, times T² (Hinton 2015);
    dice  cross-entropy on the teacher's argmax (the semantic recipe's main loss, `model.lab.losses`) plus the
          auxiliary Dice on the teacher's foreground (argmax > 0).

The teacher's cached logits [N, K, L, L] are resized bilinearly to the student's mask size first (logits,
not probabilities, are interpolated, as serving upsamples them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.lab.losses import AUX_WEIGHT, dice_loss

DEFAULT_TEMPERATURE = 2.0  # Hinton et al. report 2-5 working well; masks have 1-2 "classes" per pixel
DEFAULT_SOFT_WEIGHT = 1.0
DEFAULT_HARD_WEIGHT = 1.0


def teacher_at(teacher_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[N, K, L, L] -> [N, K, H, W] bilinear (unchanged when the sizes agree)."""
    if tuple(teacher_logits.shape[-2:]) == tuple(size):
        return teacher_logits
    return F.interpolate(teacher_logits, size=size, mode="bilinear", align_corners=False)


def teacher_masks(teacher_logits: torch.Tensor) -> torch.Tensor:
    """The teacher's hard masks: binary [N, H, W] float 0/1 (logit > 0) or class ids int64 [N, H, W]."""
    if teacher_logits.shape[1] == 1:
        return (teacher_logits[:, 0] > 0).float()
    return teacher_logits.argmax(1)


def distill_loss(mask_logits: torch.Tensor, aux_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                 temperature: float = DEFAULT_TEMPERATURE, soft_weight: float = DEFAULT_SOFT_WEIGHT,
                 hard_weight: float = DEFAULT_HARD_WEIGHT) -> dict[str, torch.Tensor]:
    """mask_logits [N, K, H, W], aux_logits [N, 1, h, w], teacher_logits [N, K, L, L] (any L) ->
    {"loss", "soft", "hard", "aux"} scalars (float32). ValueError for a class-count mismatch or T <= 0."""
    if mask_logits.shape[1] != teacher_logits.shape[1]:
        raise ValueError(f"student has {mask_logits.shape[1]} classes, teacher {teacher_logits.shape[1]}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s = mask_logits.float()
    t = teacher_at(teacher_logits.float(), tuple(s.shape[-2:]))
    hard = teacher_masks(t)
    T = temperature
    if s.shape[1] == 1:
        soft = F.binary_cross_entropy_with_logits(s / T, torch.sigmoid(t / T)) * T * T
        main = dice_loss(s, hard)
        foreground = hard
    else:
        soft = F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction="none", log_target=True)
        soft = soft.sum(1).mean() * T * T
        main = F.cross_entropy(s, hard)
        foreground = (hard > 0).float()
    aux_up = F.interpolate(aux_logits.float(), size=foreground.shape[-2:], mode="bilinear", align_corners=False)
    aux = dice_loss(aux_up, foreground)
    loss = soft_weight * soft + hard_weight * (main + AUX_WEIGHT * aux)
    return {"loss": loss, "soft": soft, "hard": main, "aux": aux}


@torch.no_grad()
def disagreement(mask_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    """Fraction of pixels whose hard label differs between student and teacher (0 = identical masks)."""
    t = teacher_at(teacher_logits.float(), tuple(mask_logits.shape[-2:]))
    return float((teacher_masks(mask_logits.float()) != teacher_masks(t)).float().mean())
