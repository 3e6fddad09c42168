"""AVSBench-exact evaluation: `avs eval`.

Each metric update sees one test batch of whole clips, as in AVSBench's test loop (batch = 1 clip),
and the reported numbers are means of the batch values (`model.lab.avsbench_metrics`). Frames are scored at the
dataset loader's size, which is the model's input size unless told otherwise (AVSBench uses 224).

`audio` replaces the sound to measure how much the model relies on it:
    "silence"  every frame hears the log-mel of digital silence;
    "shuffle"  clip i hears clip (i + 1) mod n's sound (a derangement, so no clip keeps its own).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from model.config import AVSConfig
from model.lab.avsbench_metrics import BinaryMetrics, SemanticMetrics
from model.lab.train_parts import make_dataset
from model.modeling.audio_frontend import SAMPLE_RATE, waveform_to_examples
from model.modeling.avs_model import AVSModel

AUDIO_MODES = ("normal", "silence", "shuffle")


class _AudioReplaced(Dataset):
    def __init__(self, base: Dataset, mode: str) -> None:
        self.base, self.mode = base, mode
        self._silence = waveform_to_examples(torch.zeros(SAMPLE_RATE), pad_end=False)[:1]  # [1, 1, 96, 64]

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.base[index])
        if self.mode == "silence":
            item["audio"] = self._silence.expand_as(item["audio"]).clone()
        elif self.mode == "shuffle" and len(self) > 1:
            item["audio"] = self.base[(index + 1) % len(self)]["audio"]
        return item


@torch.inference_mode()
def evaluate(model: AVSModel, cfg: AVSConfig, *, data: str, subset: str, split: str = "test", audio: str = "normal",
             size: int | None = None, device: str = "cpu",
             on_clip: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    if audio not in AUDIO_MODES:
        raise ValueError(f"audio must be one of {AUDIO_MODES}, got {audio!r}")
    size = size or cfg.input_size
    dataset: Dataset = make_dataset(data, subset, split, size)
    if audio != "normal":
        dataset = _AudioReplaced(dataset, audio)
    model = model.to(device).eval()
    binary = cfg.num_classes == 1
    metrics: BinaryMetrics | SemanticMetrics = BinaryMetrics() if binary else SemanticMetrics(cfg.num_classes)
    count = len(dataset)  # type: ignore[arg-type]
    for i in range(count):
        clip = dataset[i]
        frames = clip["frames"].to(device)
        logits = model(frames, clip["audio"].to(device)).mask_logits.float().cpu()  # [T, K, S, S]
        if binary:
            valid = clip["gt_valid"] & clip["frame_valid"]
            metrics.update(logits[valid, 0], clip["masks"][valid])
        else:
            metrics.update(logits, clip["masks"].long(), frame_valid=clip["frame_valid"])
        if on_clip is not None:
            on_clip(i + 1, count)
    result = metrics.compute()
    summary = {"miou": round(float(result["miou"]), 4), "fscore": round(float(result["fscore"]), 4),
               "frames": int(result["frames"]), "clips": count, "subset": subset, "split": split, "audio": audio,
               "size": size, "variant": cfg.variant}
    if not binary:
        summary["miou_no_bg"] = round(float(result["miou_no_bg"]), 4)
    return summary
