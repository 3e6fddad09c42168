"""AVSBench evaluation metrics, computed exactly as the benchmark's own code computes them (model-spec §6).

Binary settings (S4, MS3), from OpenNLPLab/AVSBench `avs_scripts/avs_s4/utils/utility.py` (`mask_iou`,
`Eval_Fmeasure`, `_eval_pr`), `avs_scripts/avs_s4/test.py` and `avs_scripts/avs_s4/utils/pyutils.py`
(`AverageMeter`); AVSegFormer's `scripts/s4/utility.py` is the same code:

* mIoU (J): prediction = sigmoid(logit) > 0.5; per frame |P ∧ G| / (|P ∨ G| + 1e-7); a frame with an empty GT
  scores instead the fraction of pixels where prediction and GT are both 0 (so empty/empty = 1.0).
  The value of a batch is the mean over its frames.
* F-score (F): p = sigmoid(logit); 255 thresholds `linspace(0, 1 - 1e-10, 255)` (in float32, where the last one
  rounds to 1.0), predicted = p >= threshold; per frame prec = TP / (#pred + 1e-20), rec = TP / (#GT + 1e-20),
  F = (1 + β²)·prec·rec / (β²·prec + rec) with β² = 0.3, NaN -> 0. Frames whose GT is empty are skipped; the
  F-vs-threshold curves of the remaining frames are averaged and the batch value is the maximum of that mean
  curve (the threshold is chosen per batch). A batch without a non-empty frame scores 0 and still counts.
* Reported values: the mean of the per-batch values (AverageMeter), not a mean over frames; the two agree
  only when all batches hold the same number of frames.

Semantic setting (AVSS), from `avs_scripts/avss/utils/compute_color_metrics.py` (`calc_color_miou_fscore`,
`_batch_miou_fscore`) and `avs_scripts/avss/test.py`; AVSegFormer's `utils/compute_color_metrics.py` and
`scripts/avss/test.py` are identical:

* pred = argmax(softmax(logits)) over the K classes. Per frame and class c: inter_c, pred_c, gt_c (pixel
  counts; the original uses histograms), union_c = pred_c + gt_c - inter_c, IoU_c = inter_c / (union_c + 2.2e-16)
  and F_c with prec = inter_c / pred_c, rec = inter_c / gt_c, β² = 0.3, NaN (0/0) -> 0.
  IoU_c and F_c are summed over all frames of the test set; `count_c` is incremented only for frames where
  union_c > 0. Per-class value = sum / count (NaN, i.e. a class never seen, -> 0).
* mIoU = mean over ALL K classes, background included (unseen classes contribute 0); F the same way.
* The original also prints `miou_noBg = mean(miou_pc[:-1])`, which drops the LAST class, not the background:
  in the released `label2idx.json` background is class 0 (a leftover of an older label order with background
  last, cf. `calc_binary_miou`'s `nclass - 1`). We report `miou_no_bg` (background excluded, what the name
  means) and `miou_no_last` (the printed number, for comparison with published logs).
* Padded frames: `test.py` evaluates all 10 frames of every clip, padded ones included. A padded frame's GT is
  all zeros (background) and TPAVI / AVSegFormer multiply their logits by `vid_temporal_mask_flag`, so its
  logits are all 0 and argmax picks class 0: each padded frame adds IoU = F = 1 to class 0 (and one to its
  count). The test loop does not use `gt_temporal_mask_flag` at all: v1s val/test clips have 5 label maps on
  disk and all 5 are evaluated. `SemanticMetrics.update(..., frame_valid=...)` reproduces this for a model that
  does not zero its own padded outputs (`padded="background"`), or drops padded frames (`padded="skip"`).

Counts are exact integers; ratios are computed and accumulated in float64 (the original uses float32, which
moves results by less than 1e-5).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

__all__ = [
    "BETA2",
    "BinaryMetrics",
    "SemanticMetrics",
    "f_score",
    "f_score_curve",
    "frame_ious",
    "mask_iou",
]

BETA2 = 0.3  # β² of the F-measure in every AVSBench setting
IOU_EPS = 1e-7  # mask_iou
PR_EPS = 1e-20  # _eval_pr
SEMANTIC_EPS = 2.220446049250313e-16  # _batch_miou_fscore (float64 machine epsilon)
NUM_THRESHOLDS = 255


def _frames(x: Tensor, name: str) -> Tensor:
    """Accept [N, H, W] or [N, 1, H, W]; return [N, H, W]."""
    if x.dim() == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape [N, H, W] (or [N, 1, H, W]), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} holds no frame")
    return x


def _binary_inputs(logits: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """Validate and return (logits float32 [N, H, W], gt bool [N, H, W])."""
    logits, gt = _frames(logits, "logits"), _frames(gt, "gt")
    if logits.shape != gt.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and gt {tuple(gt.shape)} differ; resize before evaluating")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a float tensor, got {logits.dtype}")
    if gt.dtype != torch.bool:
        if not ((gt == 0) | (gt == 1)).all():
            raise ValueError("gt must be binary (0/1 or bool)")
        gt = gt != 0
    return logits.float(), gt.to(logits.device)


def frame_ious(logits: Tensor, gt: Tensor) -> Tensor:
    """Per-frame IoU of AVSBench's `mask_iou`, including its empty-GT rule.

    Args:
        logits: float [N, H, W] (or [N, 1, H, W]) mask logits.
        gt: [N, H, W] binary ground truth (0/1 or bool).

    Returns:
        float64 [N]: |P ∧ G| / (|P ∨ G| + 1e-7) with P = sigmoid(logit) > 0.5; for a frame whose GT is empty,
        (#pixels with P = G = 0) / (H·W + 1e-7).
    """
    logits, gt = _binary_inputs(logits, gt)
    pred = torch.sigmoid(logits) > 0.5  # sigmoid, not logit > 0: float32 sigmoid of a tiny logit is exactly 0.5
    inter = (pred & gt).flatten(1).sum(1)
    union = (pred | gt).flatten(1).sum(1)
    empty = ~gt.flatten(1).any(1)
    both_zero = (~pred & ~gt).flatten(1).sum(1)
    num_pixels = gt.shape[1] * gt.shape[2]
    inter = torch.where(empty, both_zero, inter)
    union = torch.where(empty, torch.full_like(union, num_pixels), union)
    return inter.double() / (union.double() + IOU_EPS)


def mask_iou(logits: Tensor, gt: Tensor) -> float:
    """Batch mIoU as AVSBench's `mask_iou`: the mean of `frame_ious` over the N frames."""
    return float(frame_ious(logits, gt).mean())


def f_score_curve(logits: Tensor, gt: Tensor, beta2: float = BETA2, num_thresholds: int = NUM_THRESHOLDS) -> Tensor:
    """Mean F-vs-threshold curve of the non-empty-GT frames of a batch (`Eval_Fmeasure` before its max).

    Vectorised: per frame the probabilities are sorted once and every threshold's counts come from one
    `searchsorted`, instead of 255 full-frame comparisons.

    Args:
        logits: float [N, H, W] (or [N, 1, H, W]) mask logits.
        gt: [N, H, W] binary ground truth.
        beta2: β² of the F-measure (0.3 in AVSBench).
        num_thresholds: length of the threshold sweep `linspace(0, 1 - 1e-10, num_thresholds)`.

    Returns:
        float64 [num_thresholds]; all zeros when every frame's GT is empty.
    """
    logits, gt = _binary_inputs(logits, gt)
    if num_thresholds < 1:
        raise ValueError(f"num_thresholds must be >= 1, got {num_thresholds}")
    # float32 like the original, so that p >= threshold is decided on the very same numbers
    thresholds = torch.linspace(0, 1 - 1e-10, num_thresholds, dtype=torch.float32, device=logits.device)
    keep = gt.flatten(1).any(1)  # frames with an all-zero GT are out of consideration
    if not keep.any():
        return torch.zeros(num_thresholds, dtype=torch.float64, device=logits.device)
    prob = torch.sigmoid(logits[keep]).flatten(1)  # [M, P]
    pos = gt[keep].flatten(1)  # [M, P]
    num_pixels = prob.shape[1]
    queries = thresholds.expand(prob.shape[0], -1).contiguous()  # [M, K]
    # #{p >= th} = P - (index of the first sorted value >= th)
    n_pred = num_pixels - torch.searchsorted(prob.sort(dim=1).values, queries)
    # The same among GT pixels: the others are moved to -1, below every threshold (all >= 0).
    prob_pos = torch.where(pos, prob, torch.full_like(prob, -1.0))
    tp = (num_pixels - torch.searchsorted(prob_pos.sort(dim=1).values, queries)).double()
    n_gt = pos.sum(1, keepdim=True).double()
    precision = tp / (n_pred.double() + PR_EPS)
    recall = tp / (n_gt + PR_EPS)
    f = (1 + beta2) * precision * recall / (beta2 * precision + recall)
    f = torch.nan_to_num(f, nan=0.0)  # 0/0 when nothing is predicted at a threshold
    return f.mean(dim=0)


def f_score(logits: Tensor, gt: Tensor, beta2: float = BETA2, num_thresholds: int = NUM_THRESHOLDS) -> float:
    """Batch F-score as AVSBench's `Eval_Fmeasure`: the max over thresholds of `f_score_curve` (0.0 when every
    frame of the batch has an empty GT)."""
    return float(f_score_curve(logits, gt, beta2, num_thresholds).max())


class BinaryMetrics:
    """S4/MS3 accumulator with AVSBench's AverageMeter semantics: the mean of per-batch values.

    Feed it the batches the original test loop would (one batch = whole clips: AVSBench tests 1 clip = 5
    frames per batch, AVSegFormer 2 clips); different batch compositions give (slightly) different numbers.

    Args:
        beta2: β² of the F-measure.
        num_thresholds: F-measure threshold sweep length.
    """

    def __init__(self, beta2: float = BETA2, num_thresholds: int = NUM_THRESHOLDS) -> None:
        self.beta2, self.num_thresholds = beta2, num_thresholds
        self.reset()

    def reset(self) -> None:
        """Forget every batch."""
        self._miou: list[float] = []
        self._fscore: list[float] = []
        self._frames = 0

    def update(self, logits: Tensor, gt: Tensor, valid: Tensor | None = None) -> dict[str, float] | None:
        """Add one batch.

        Args:
            logits: float [N, H, W] (or [N, 1, H, W]) mask logits.
            gt: [N, H, W] binary ground truth.
            valid: optional bool [N]: evaluate only these frames (e.g. `gt_valid` when scoring S4 train clips,
                where only frame 0 is labelled). A batch left with no frame is not counted.

        Returns:
            {"miou", "fscore"} of this batch, or None when `valid` removed every frame.
        """
        logits, gt = _frames(logits, "logits"), _frames(gt, "gt")
        if valid is not None:
            valid = valid.to(device=logits.device, dtype=torch.bool).flatten()
            if valid.numel() != logits.shape[0]:
                raise ValueError(f"valid has {valid.numel()} entries for {logits.shape[0]} frames")
            if not valid.any():
                return None
            logits, gt = logits[valid], gt[valid.to(gt.device)]
        miou = mask_iou(logits, gt)
        fscore = f_score(logits, gt, self.beta2, self.num_thresholds)
        self._miou.append(miou)
        self._fscore.append(fscore)
        self._frames += logits.shape[0]
        return {"miou": miou, "fscore": fscore}

    def compute(self) -> dict[str, Any]:
        """Return {"miou", "fscore"} (means of the batch values), "frames" and "batches" counted."""
        if not self._miou:
            raise ValueError("no batch was added")
        batches = len(self._miou)
        return {
            "miou": sum(self._miou) / batches,
            "fscore": sum(self._fscore) / batches,
            "frames": self._frames,
            "batches": batches,
        }


class SemanticMetrics:
    """AVSS accumulator: per-class IoU and F summed over frames, averaged over the frames where each class
    occurs (in prediction or GT), then over all classes.

    Args:
        num_classes: K, background included (71 for AVSS).
        beta2: β² of the per-class F-measure.
        background_index: class left out of `miou_no_bg` / `fscore_no_bg` (0 in the AVSS release).
    """

    def __init__(self, num_classes: int = 71, *, beta2: float = BETA2, background_index: int = 0) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not 0 <= background_index < num_classes:
            raise ValueError(f"background_index must be in [0, {num_classes}), got {background_index}")
        self.num_classes, self.beta2, self.background_index = num_classes, beta2, background_index
        self.reset()

    def reset(self) -> None:
        """Forget every frame."""
        k = self.num_classes
        self.iou_sum = torch.zeros(k, dtype=torch.float64)
        self.fscore_sum = torch.zeros(k, dtype=torch.float64)
        self.class_count = torch.zeros(k, dtype=torch.int64)
        self.frames = 0

    def _labels(self, logits: Tensor) -> Tensor:
        """[N, K, H, W] logits -> [N, H, W] argmax labels; [N, H, W] integer labels pass through."""
        if logits.dim() == 3 and not logits.is_floating_point():
            return logits.long()
        if logits.dim() != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must have shape [N, {self.num_classes}, H, W] (or be [N, H, W] class ids), "
                             f"got {tuple(logits.shape)}")
        # argmax of the float32 softmax, as the original, so that ties created by softmax rounding break the
        # same way (first index); chunked to bound the memory of the K-channel copy.
        return torch.cat([torch.softmax(chunk.float(), dim=1).argmax(dim=1) for chunk in logits.split(8)])

    def update(self, logits: Tensor, gt: Tensor, frame_valid: Tensor | None = None,
               padded: Literal["background", "skip"] = "background") -> None:
        """Add N frames.

        Args:
            logits: float [N, K, H, W] class logits, or int [N, H, W] predicted class ids.
            gt: int [N, H, W] class ids in [0, K).
            frame_valid: optional bool [N] (`vid_temporal_mask_flag`). Frames marked False are padding:
                with `padded="background"` they are scored as the original test loop scores them (prediction
                and GT all class 0, adding IoU = F = 1 to class 0); with `padded="skip"` they are dropped.
                Leave it None when the model already zeroes its padded outputs, as TPAVI / AVSegFormer do.
            padded: see `frame_valid`.
        """
        pred = self._labels(logits)
        if gt.dim() != 3 or gt.is_floating_point():
            raise ValueError(f"gt must be integer class ids [N, H, W], got {gt.dtype} {tuple(gt.shape)}")
        gt = gt.to(pred.device).long()
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and gt {tuple(gt.shape)} differ; resize first")
        k = self.num_classes
        if gt.numel() and (gt.min() < 0 or gt.max() >= k or pred.min() < 0 or pred.max() >= k):
            raise ValueError(f"class ids must lie in [0, {k})")
        if frame_valid is not None:
            frame_valid = frame_valid.to(device=pred.device, dtype=torch.bool).flatten()
            if frame_valid.numel() != pred.shape[0]:
                raise ValueError(f"frame_valid has {frame_valid.numel()} entries for {pred.shape[0]} frames")
            if padded == "skip":
                pred, gt = pred[frame_valid], gt[frame_valid]
            elif padded == "background":
                pad = ~frame_valid
                pred, gt = pred.clone(), gt.clone()
                pred[pad] = 0  # zeroed logits: argmax takes the first class
                gt[pad] = 0  # padded labels are zeros
            else:
                raise ValueError(f"padded must be 'background' or 'skip', got {padded!r}")
        n = pred.shape[0]
        if n == 0:
            return
        # Per-frame per-class pixel counts with one bincount each: frame i, class c -> bin i·K + c.
        offset = (torch.arange(n, device=pred.device) * k).view(n, 1, 1)
        pred_bins, gt_bins = (pred + offset).flatten(), (gt + offset).flatten()
        area_pred = torch.bincount(pred_bins, minlength=n * k).view(n, k).double()
        area_gt = torch.bincount(gt_bins, minlength=n * k).view(n, k).double()
        area_inter = torch.bincount(pred_bins[pred_bins == gt_bins], minlength=n * k).view(n, k).double()
        area_union = area_pred + area_gt - area_inter
        iou = area_inter / (area_union + SEMANTIC_EPS)
        precision = area_inter / area_pred  # 0/0 = NaN where the class is not predicted
        recall = area_inter / area_gt
        f = torch.nan_to_num((1 + self.beta2) * precision * recall / (self.beta2 * precision + recall), nan=0.0)
        self.iou_sum += iou.sum(0).cpu()
        self.fscore_sum += f.sum(0).cpu()
        self.class_count += (area_union > 0).sum(0).cpu()
        self.frames += n

    def compute(self) -> dict[str, Any]:
        """Return the AVSS numbers.

        Returns:
            "miou", "fscore": means over all K classes; "miou_no_bg", "fscore_no_bg": means over the classes
            other than `background_index`; "miou_no_last", "fscore_no_last": means over classes 0..K-2 (what the
            original prints as miou_noBg / F_score_noBg); "per_class_iou", "per_class_fscore" (lists of K),
            "class_count" (frames in which each class occurs), "classes_seen", "frames".
        """
        seen = self.class_count > 0
        denom = self.class_count.clamp_min(1).double()
        iou = torch.where(seen, self.iou_sum / denom, torch.zeros_like(self.iou_sum))
        fscore = torch.where(seen, self.fscore_sum / denom, torch.zeros_like(self.fscore_sum))
        keep = torch.ones(self.num_classes, dtype=torch.bool)
        keep[self.background_index] = False
        return {
            "miou": float(iou.mean()),
            "fscore": float(fscore.mean()),
            "miou_no_bg": float(iou[keep].mean()),
            "fscore_no_bg": float(fscore[keep].mean()),
            "miou_no_last": float(iou[:-1].mean()),
            "fscore_no_last": float(fscore[:-1].mean()),
            "per_class_iou": iou.tolist(),
            "per_class_fscore": fscore.tolist(),
            "class_count": self.class_count.tolist(),
            "classes_seen": int(seen.sum()),
            "frames": self.frames,
        }
