"""Score a `masks.ndjson` against a ground-truth `gt.ndjson` (the synthetic clips ship one).

Per-frame IoU with AVSBench's empty-ground-truth rule (an empty GT frame scores the fraction of pixels
both leave empty), averaged over the frames both files have; computed on the RLEs at the video's own
resolution, so it scores exactly what a client of the service receives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from worker.masks import decode_rle, read_mask_lines


def frame_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    pred, gt = pred > 0, gt > 0
    if not gt.any():
        return float((~pred).mean())  # AVSBench: empty GT -> fraction of true negatives
    return float((pred & gt).sum() / ((pred | gt).sum() + 1e-7))


def score_masks(pred_path: Path, gt_path: Path) -> dict[str, Any]:
    gt = {r["frame_index"]: r for r in read_mask_lines(gt_path)}
    ious = []
    missing = 0
    seen = set()
    for record in read_mask_lines(pred_path):
        truth = gt.get(record["frame_index"])
        if truth is None:
            continue
        seen.add(record["frame_index"])
        if list(record["size"]) != list(truth["size"]):
            raise ValueError(f"frame {record['frame_index']}: size {record['size']} != ground truth {truth['size']}")
        ious.append(frame_iou(decode_rle(record["counts"], record["size"]),
                              decode_rle(truth["counts"], truth["size"])))
    missing = len(set(gt) - seen)
    return {"miou": round(float(np.mean(ious)), 4) if ious else 0.0, "frames": len(ious),
            "frames_missing": missing}
