"""The cached frames of a distillation as training items, one frame each (frames are independent)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from model.lab.distill.ground_truth import layout_masks
from model.lab.distill.teacher_cache import TeacherCache


class CachedFrames(Dataset):
    """Every frame of the cache entries `names`, held in memory (uint8 frames, float16 teacher logits).

    Item: {"frames": float32 [3, S, S] RGB in [0, 1], "audio": float32 [1, 96, 64] log-mel,
    "teacher": float32 [K, L, L] logits, "video": int index of its video in `names`}; with `ground_truth`
    = (AVSBench layout folder, subset, split) also "gt" (`ground_truth.layout_masks`) and "gt_valid".
    """

    def __init__(self, cache: TeacherCache, entries: dict[str, dict[str, Any]], names: Iterable[str], *,
                 ground_truth: tuple[str, str, str] | None = None) -> None:
        self.names = list(names)
        frames, audio, teacher, video, gt, gt_valid = [], [], [], [], [], []
        for index, name in enumerate(self.names):
            arrays = cache.load(entries[name])
            frames.append(arrays["frames"])
            audio.append(arrays["log_mel"])
            teacher.append(arrays["teacher"])
            video.append(np.full(arrays["frames"].shape[0], index, dtype=np.int64))
            if ground_truth is not None:
                masks, valid = layout_masks(*ground_truth, name, arrays["pts_s"], arrays["frames"].shape[1])
                gt.append(masks)
                gt_valid.append(valid)
        self.gt = torch.cat(gt) if gt else None
        self.gt_valid = torch.cat(gt_valid) if gt_valid else None
        self.frames = torch.from_numpy(np.concatenate(frames)) if frames else torch.zeros(0, 1, 1, 3, dtype=torch.uint8)
        self.audio = torch.from_numpy(np.concatenate(audio)) if audio else torch.zeros(0, 1, 96, 64)
        self.teacher = torch.from_numpy(np.concatenate(teacher)) if teacher else torch.zeros(0, 1, 1, 1)
        self.video = torch.from_numpy(np.concatenate(video)) if video else torch.zeros(0, dtype=torch.int64)

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {"frames": self.frames[index].permute(2, 0, 1).float().div(255.0), "audio": self.audio[index],
                "teacher": self.teacher[index].float(), "video": self.video[index]}
        if self.gt is not None and self.gt_valid is not None:
            item["gt"], item["gt_valid"] = self.gt[index], self.gt_valid[index]
        return item


def split_videos(names: list[str], holdout: float) -> tuple[list[str], list[str]]:
    """(train, held-out) video names: a `holdout` fraction held out, chosen by a hash of the name (stable
    when videos are added), at least one of each when there are two or more videos and holdout > 0."""
    import hashlib

    if holdout <= 0 or len(names) < 2:
        return list(names), []
    ranked = sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    count = min(len(names) - 1, max(1, round(holdout * len(names))))
    held = set(ranked[:count])
    return [n for n in names if n not in held], [n for n in names if n in held]
