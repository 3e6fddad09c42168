"""AVSBench metrics on hand-computed cases (model-spec §6), plus brute-force cross-checks."""

from __future__ import annotations

import math

import pytest
import torch

from model.lab.avsbench_metrics import BinaryMetrics, SemanticMetrics, f_score, f_score_curve, frame_ious, mask_iou

BIG = 20.0  # logit of a confident pixel: sigmoid(±20) is 1 or ~2e-9


def binary_logits(pred: torch.Tensor) -> torch.Tensor:
    """0/1 prediction -> logits that threshold back to it."""
    return torch.where(pred.bool(), BIG, -BIG)


def logits_of(probs: list[float]) -> torch.Tensor:
    p = torch.tensor(probs, dtype=torch.float64)
    return torch.log(p / (1 - p)).float()


# ------------------------------------------------------------------------------------------------
# mask_iou
# ------------------------------------------------------------------------------------------------
def test_iou_of_a_known_overlap() -> None:
    pred = torch.zeros(1, 4, 4)
    pred[0, :2, :2] = 1  # 4 pixels
    gt = torch.zeros(1, 4, 4)
    gt[0, :2, :3] = 1  # 6 pixels, containing the 4 predicted ones
    assert mask_iou(binary_logits(pred), gt) == pytest.approx(4 / (6 + 1e-7), abs=1e-12)


def test_empty_gt_scores_the_fraction_of_true_negatives() -> None:
    gt = torch.zeros(3, 4, 4)
    gt[2, 0, 0] = 1  # frame 2 has a non-empty GT
    pred = torch.zeros(3, 4, 4)
    pred[1, :2, :2] = 1  # frame 1: empty GT, 4 of 16 pixels predicted
    ious = frame_ious(binary_logits(pred), gt)
    assert ious[0] == pytest.approx(1.0, abs=1e-7)  # empty GT + empty prediction = 1
    assert ious[1] == pytest.approx(12 / 16, abs=1e-7)  # 12 pixels where both are 0
    assert ious[2] == 0.0  # non-empty GT, nothing predicted
    assert mask_iou(binary_logits(pred), gt) == pytest.approx((1 + 0.75 + 0) / 3, abs=1e-7)


def test_prediction_is_sigmoid_strictly_above_half() -> None:
    gt = torch.ones(1, 1, 3)
    # logit 0 -> 0.5 is not > 0.5; a logit of 1e-9 rounds to exactly 0.5 in float32 and is not predicted either
    logits = torch.tensor([[[0.0, 1e-9, 1e-3]]])
    assert mask_iou(logits, gt) == pytest.approx(1 / 3, abs=1e-7)


def test_mask_iou_accepts_a_channel_axis_and_bool_gt() -> None:
    gt = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    gt[0, 0, 1, 1] = True
    assert mask_iou(binary_logits(gt.float()), gt) == pytest.approx(1.0, abs=1e-6)


def test_mask_iou_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="binary"):
        mask_iou(torch.zeros(1, 2, 2), torch.full((1, 2, 2), 255))
    with pytest.raises(ValueError, match="differ"):
        mask_iou(torch.zeros(1, 2, 2), torch.zeros(1, 4, 4))


def test_reported_miou_is_the_mean_of_batch_means() -> None:
    metrics = BinaryMetrics()
    gt = torch.ones(2, 4, 4)
    pred = torch.zeros(2, 4, 4)
    pred[0] = 1  # frame IoUs 1 and 0 -> batch value 0.5
    metrics.update(binary_logits(pred), gt)
    metrics.update(binary_logits(torch.ones(1, 4, 4)), torch.ones(1, 4, 4))  # one frame, IoU 1
    result = metrics.compute()
    assert result["miou"] == pytest.approx((0.5 + 1.0) / 2, abs=1e-7)  # 0.75, not the per-frame mean 2/3
    assert result["miou"] != pytest.approx(2 / 3, abs=1e-3)
    assert (result["frames"], result["batches"]) == (3, 2)


def test_binary_metrics_valid_frames_and_empty_state() -> None:
    metrics = BinaryMetrics()
    with pytest.raises(ValueError, match="no batch"):
        metrics.compute()
    gt = torch.ones(5, 4, 4)
    pred = torch.zeros(5, 4, 4)
    pred[0] = 1
    valid = torch.tensor([True, False, False, False, False])  # S4 train: only frame 0 is labelled
    assert metrics.update(binary_logits(pred), gt, valid=valid) == {"miou": pytest.approx(1.0), "fscore": 1.0}
    assert metrics.update(binary_logits(pred), gt, valid=torch.zeros(5, dtype=torch.bool)) is None
    assert metrics.compute()["batches"] == 1


# ------------------------------------------------------------------------------------------------
# F-score
# ------------------------------------------------------------------------------------------------
# Frame A: GT on the first two pixels, probabilities 0.9 0.6 | 0.7 0.1. With p >= th predicted:
#   th <= 0.1      all 4:  TP 2, prec 1/2, rec 1   -> F = 1.3·0.5 / (0.15 + 1)     = 0.5652
#   0.1 < th <= 0.6 3:     TP 2, prec 2/3, rec 1   -> F = 1.3·(2/3) / (0.2 + 1)    = 13/18 = 0.7222
#   0.6 < th <= 0.7 2:     TP 1, prec 1/2, rec 1/2 -> F = 0.5
#   0.7 < th <= 0.9 1:     TP 1, prec 1,   rec 1/2 -> F = 1.3·0.5 / (0.3 + 0.5)    = 0.8125   <- best, β² = 0.3
#   th > 0.9       none                             -> 0/0 = NaN -> 0
# With β² = 1 (harmonic mean) the best is 0.1 < th <= 0.6 instead: 2·(2/3) / (5/3) = 0.8.
FRAME_A_P = [[0.9, 0.6], [0.7, 0.1]]
FRAME_A_GT = [[1, 1], [0, 0]]
# Frame C: GT on the first pixel, probabilities 0.3 0.2 | 0.1 0.05: perfect (F = 1) for 0.2 < th <= 0.3.
FRAME_C_P = [[0.3, 0.2], [0.1, 0.05]]
FRAME_C_GT = [[1, 0], [0, 0]]


def frame(probs: list[list[float]]) -> torch.Tensor:
    return torch.stack([logits_of(row) for row in probs])


def test_f_score_best_threshold_is_known() -> None:
    logits, gt = frame(FRAME_A_P)[None], torch.tensor([FRAME_A_GT], dtype=torch.float32)
    assert f_score(logits, gt) == pytest.approx(0.8125, abs=1e-9)


def test_f_score_beta2_changes_the_winner() -> None:
    logits, gt = frame(FRAME_A_P)[None], torch.tensor([FRAME_A_GT], dtype=torch.float32)
    assert f_score(logits, gt, beta2=1.0) == pytest.approx(0.8, abs=1e-9)


def test_f_score_skips_empty_gt_frames() -> None:
    empty_gt = torch.zeros(2, 2)
    noisy = torch.tensor([[5.0, -5.0], [5.0, 5.0]])  # predictions on an empty GT change nothing
    logits = torch.stack([frame(FRAME_A_P), noisy])
    gt = torch.stack([torch.tensor(FRAME_A_GT, dtype=torch.float32), empty_gt])
    assert f_score(logits, gt) == pytest.approx(0.8125, abs=1e-9)


def test_f_score_maximises_the_mean_curve_not_the_per_frame_maxima() -> None:
    logits = torch.stack([frame(FRAME_A_P), frame(FRAME_C_P)])
    gt = torch.tensor([FRAME_A_GT, FRAME_C_GT], dtype=torch.float32)
    # Mean curve on 0.2 < th <= 0.3: (13/18 + 1) / 2 = 31/36 is its maximum;
    # the mean of the per-frame maxima would be (0.8125 + 1) / 2 = 0.90625.
    assert f_score(logits, gt) == pytest.approx(31 / 36, abs=1e-9)


def test_all_empty_batch_scores_zero_and_still_counts() -> None:
    assert f_score(torch.randn(3, 4, 4), torch.zeros(3, 4, 4)) == 0.0
    metrics = BinaryMetrics()
    gt = torch.zeros(1, 4, 4)
    gt[0, 0] = 1
    metrics.update(binary_logits(gt), gt)  # perfect: F = 1
    metrics.update(torch.randn(2, 4, 4), torch.zeros(2, 4, 4))  # no non-empty frame: F = 0
    assert metrics.compute()["fscore"] == pytest.approx(0.5, abs=1e-9)


def test_f_score_nan_becomes_zero() -> None:
    # Above every predicted probability nothing is predicted: prec = rec = 0 -> NaN -> 0, never NaN out.
    logits, gt = frame(FRAME_A_P)[None], torch.tensor([FRAME_A_GT], dtype=torch.float32)
    curve = f_score_curve(logits, gt)
    assert curve.shape == (255,)
    assert not torch.isnan(curve).any()
    assert curve[-10:].eq(0).all()  # thresholds > 0.96: nothing predicted
    assert curve[0] == pytest.approx(1.3 * 0.5 / 1.15, abs=1e-9)  # th = 0: every pixel predicted


def reference_f_score(logits: torch.Tensor, gt: torch.Tensor, num: int = 255, beta2: float = 0.3) -> float:
    """Threshold-by-threshold loop, float32 like `Eval_Fmeasure` / `_eval_pr`."""
    pred = torch.sigmoid(logits)
    score, total, count = torch.zeros(num), torch.zeros(num), 0
    thresholds = torch.linspace(0, 1 - 1e-10, num)
    for i in range(pred.shape[0]):
        if torch.mean(gt[i]) == 0.0:
            continue
        prec, rec = torch.zeros(num), torch.zeros(num)
        for j in range(num):
            hit = (pred[i] >= thresholds[j]).float()
            tp = (hit * gt[i]).sum()
            prec[j], rec[j] = tp / (hit.sum() + 1e-20), tp / (gt[i].sum() + 1e-20)
        f = (1 + beta2) * prec * rec / (beta2 * prec + rec)
        f[f != f] = 0
        total, count = total + f, count + 1
        score = total / count
    return float(score.max())


def test_vectorised_f_score_matches_the_threshold_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 12, 12, generator=gen) * 3
    logits[1, :3] = 40.0  # saturated sigmoid (exactly 1.0), meets the last threshold, which is 1.0 in float32
    gt = (torch.rand(4, 12, 12, generator=gen) > 0.6).float()
    gt[2] = 0  # an empty frame, skipped
    assert f_score(logits, gt) == pytest.approx(reference_f_score(logits, gt), abs=1e-6)


def test_f_score_is_fast_on_full_size_batches() -> None:
    import time

    logits, gt = torch.randn(10, 224, 224), (torch.rand(10, 224, 224) > 0.5).float()
    start = time.perf_counter()
    f_score(logits, gt)
    assert time.perf_counter() - start < 2.0  # a Python loop over 255 thresholds takes far longer


# ------------------------------------------------------------------------------------------------
# Semantic (AVSS)
# ------------------------------------------------------------------------------------------------
def one_hot_logits(labels: torch.Tensor, k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, k).permute(0, 3, 1, 2).float() * 10


# Frame: GT [[0, 1], [1, 1]], prediction [[0, 1], [2, 1]].
#   class 0: inter 1, pred 1, gt 1          -> IoU 1,   F 1
#   class 1: inter 2, pred 2, gt 3, union 3 -> IoU 2/3, prec 1, rec 2/3, F = 1.3·(2/3) / (0.3 + 2/3) = 26/29
#   class 2: inter 0, pred 1, gt 0, union 1 -> IoU 0 (counted), prec 0, rec 0/0 = NaN -> F 0
GT_1 = torch.tensor([[[0, 1], [1, 1]]])
PRED_1 = torch.tensor([[[0, 1], [2, 1]]])


def test_semantic_hand_case_with_background_included() -> None:
    metrics = SemanticMetrics(num_classes=3)
    metrics.update(one_hot_logits(PRED_1, 3), GT_1)
    r = metrics.compute()
    assert r["per_class_iou"] == pytest.approx([1.0, 2 / 3, 0.0], abs=1e-12)
    assert r["per_class_fscore"] == pytest.approx([1.0, 26 / 29, 0.0], abs=1e-12)
    assert r["class_count"] == [1, 1, 1]
    assert r["miou"] == pytest.approx((1 + 2 / 3 + 0) / 3, abs=1e-12)  # background counts
    assert r["fscore"] == pytest.approx((1 + 26 / 29 + 0) / 3, abs=1e-12)
    assert r["miou_no_bg"] == pytest.approx((2 / 3 + 0) / 2, abs=1e-12)


def test_semantic_class_never_present_contributes_zero() -> None:
    metrics = SemanticMetrics(num_classes=4)
    metrics.update(one_hot_logits(PRED_1, 4), GT_1)
    r = metrics.compute()
    assert r["class_count"] == [1, 1, 1, 0]
    assert r["classes_seen"] == 3
    assert r["miou"] == pytest.approx((1 + 2 / 3 + 0 + 0) / 4, abs=1e-12)
    assert r["miou_no_bg"] == pytest.approx((2 / 3 + 0 + 0) / 3, abs=1e-12)
    # The original's "miou_noBg" drops the last class (3), keeping the background.
    assert r["miou_no_last"] == pytest.approx((1 + 2 / 3 + 0) / 3, abs=1e-12)


def test_semantic_counts_only_frames_where_a_class_occurs() -> None:
    metrics = SemanticMetrics(num_classes=3)
    metrics.update(PRED_1, GT_1)  # class ids are accepted as predictions too
    metrics.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))  # only class 0
    r = metrics.compute()
    assert r["class_count"] == [2, 1, 1]
    assert r["per_class_iou"] == pytest.approx([1.0, 2 / 3, 0.0], abs=1e-12)  # class 1 is not halved
    assert r["frames"] == 2


def test_semantic_padded_frames() -> None:
    # Real frame, 2 classes: GT [[0, 1], [1, 1]], everything predicted as class 1.
    #   class 0: inter 0, pred 0, gt 1 -> IoU 0 (counted), F NaN -> 0;  class 1: IoU 3/4, F = 1.3·0.75/1.225 = 39/49
    gt = torch.tensor([[[0, 1], [1, 1]], [[1, 1], [1, 1]]])  # frame 1 is padding (its content must not matter)
    logits = one_hot_logits(torch.ones(2, 2, 2, dtype=torch.long), 2)
    valid = torch.tensor([True, False])

    as_original = SemanticMetrics(num_classes=2)
    as_original.update(logits, gt, frame_valid=valid)  # padded frame: class 0 everywhere on both sides
    r = as_original.compute()
    assert r["per_class_iou"] == pytest.approx([(0 + 1) / 2, 0.75], abs=1e-12)
    assert r["per_class_fscore"] == pytest.approx([(0 + 1) / 2, 39 / 49], abs=1e-12)
    assert r["class_count"] == [2, 1]

    skipped = SemanticMetrics(num_classes=2)
    skipped.update(logits, gt, frame_valid=valid, padded="skip")
    assert skipped.compute()["per_class_iou"] == pytest.approx([0.0, 0.75], abs=1e-12)
    assert skipped.compute()["frames"] == 1


def test_zeroed_logits_predict_class_zero() -> None:
    # What TPAVI / AVSegFormer produce on padded frames (logits × 0): argmax takes the first class.
    metrics = SemanticMetrics(num_classes=3)
    metrics.update(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))
    r = metrics.compute()
    assert r["per_class_iou"] == [1.0, 0.0, 0.0]
    assert r["class_count"] == [2, 0, 0]


def reference_semantic(logits: torch.Tensor, gt: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """Histogram formulation of `_batch_miou_fscore` (labels shifted by one, histc over [1, K])."""
    predict = torch.softmax(logits, 1).argmax(1).float() + 1
    target = gt.float() + 1
    inter_map = predict * (predict == target).float()
    ious, fs, count = torch.zeros(k), torch.zeros(k), torch.zeros(k)
    for i in range(gt.shape[0]):
        inter = torch.histc(inter_map[i], bins=k, min=1, max=k)
        area_p = torch.histc(predict[i], bins=k, min=1, max=k)
        area_g = torch.histc(target[i], bins=k, min=1, max=k)
        union = area_p + area_g - inter
        ious += inter / (2.220446049250313e-16 + union)
        count[union > 0] += 1
        prec, rec = inter / area_p, inter / area_g
        f = 1.3 * prec * rec / (0.3 * prec + rec)
        f[torch.isnan(f)] = 0
        fs += f
    miou, fsc = ious / count, fs / count
    miou[torch.isnan(miou)] = 0
    fsc[torch.isnan(fsc)] = 0
    return miou, fsc, count


def test_semantic_matches_the_histogram_formulation() -> None:
    gen = torch.Generator().manual_seed(1)
    k = 71
    gt = torch.randint(0, 6, (6, 16, 16), generator=gen) * 7  # a few classes out of 71
    logits = torch.randn(6, k, 16, 16, generator=gen)
    logits.scatter_add_(1, gt[:, None], torch.full((6, 1, 16, 16), 2.5))  # mostly right
    metrics = SemanticMetrics(num_classes=k)
    metrics.update(logits[:4], gt[:4])
    metrics.update(logits[4:], gt[4:])
    r = metrics.compute()
    miou, fsc, count = reference_semantic(logits, gt, k)
    assert r["per_class_iou"] == pytest.approx(miou.tolist(), abs=1e-5)
    assert r["per_class_fscore"] == pytest.approx(fsc.tolist(), abs=1e-5)
    assert r["class_count"] == [int(c) for c in count]
    assert r["miou"] == pytest.approx(float(miou.mean()), abs=1e-6)
    assert r["miou_no_last"] == pytest.approx(float(miou[:-1].mean()), abs=1e-6)
    assert not math.isnan(r["fscore"])


def test_semantic_rejects_bad_inputs() -> None:
    metrics = SemanticMetrics(num_classes=3)
    with pytest.raises(ValueError, match="class ids"):
        metrics.update(PRED_1, torch.full((1, 2, 2), 5))
    with pytest.raises(ValueError, match="shape"):
        metrics.update(torch.zeros(1, 4, 2, 2), GT_1)
    with pytest.raises(ValueError, match="padded"):
        metrics.update(PRED_1, GT_1, frame_valid=torch.tensor([False]), padded="drop")  # type: ignore[arg-type]
