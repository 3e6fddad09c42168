"""How good is the student: agreement with the teacher on held-out videos, ground truth where it exists, the
silence and shuffled-audio checks of `avs eval`, and the frames/s of teacher and student measured in one run.

Agreement = the AVSBench metrics (`model.lab.avsbench_metrics`) of the student's masks scored against the
teacher's hard masks (cached logits resized to the student's output, > 0 or argmax), one batch per video, as
AVSBench scores one clip per batch. Audio replacements, as in `model.lab.evaluation`:
    "silence"  every frame hears the log-mel of digital silence;
    "shuffle"  every frame hears the sound of a frame of another video (the frame half the set away).
The target stays the teacher's masks *with the real sound*: a student that ignores the sound keeps its masks
when the sound goes, and its agreement does not drop.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from model.config import AVSConfig
from model.lab.avsbench_metrics import BinaryMetrics, SemanticMetrics
from model.lab.distill.dataset import CachedFrames
from model.lab.distill.loss import teacher_at, teacher_masks
from model.modeling.audio_frontend import SAMPLE_RATE, waveform_to_examples

AUDIO_MODES = ("normal", "silence", "shuffle")


def _replace_audio(audio: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "silence":
        silence = waveform_to_examples(torch.zeros(SAMPLE_RATE), pad_end=False)[:1]
        return silence.expand_as(audio).clone()
    if mode == "shuffle" and audio.shape[0] > 1:
        return torch.roll(audio, shifts=audio.shape[0] // 2, dims=0)
    return audio


@torch.inference_mode()
def agreement(model: torch.nn.Module, cfg: AVSConfig, data: CachedFrames, *, audio: str = "normal",
              device: str = "cpu", batch: int = 32) -> dict[str, Any]:
    """The student's AVSBench mIoU / F-score against the teacher's masks on `data` (see the module docstring).
    Returns {"miou", "fscore", "frames", "videos", "audio"}; ValueError for an unknown audio mode or no frame."""
    if audio not in AUDIO_MODES:
        raise ValueError(f"audio must be one of {AUDIO_MODES}, got {audio!r}")
    if len(data) == 0:
        raise ValueError("no held-out frame to compare with the teacher")
    model = model.to(device).eval()
    sounds = _replace_audio(data.audio, audio)
    logits_all = []
    for start in range(0, len(data), batch):
        frames = data.frames[start:start + batch].permute(0, 3, 1, 2).float().div(255.0).to(device)
        logits_all.append(model(frames, sounds[start:start + batch].to(device)).mask_logits.float().cpu())
    logits = torch.cat(logits_all)
    target = teacher_masks(teacher_at(data.teacher.float(), tuple(logits.shape[-2:])))
    binary = cfg.num_classes == 1
    metrics: BinaryMetrics | SemanticMetrics = BinaryMetrics() if binary else SemanticMetrics(cfg.num_classes)
    for video in torch.unique(data.video).tolist():
        rows = data.video == video
        if binary:
            metrics.update(logits[rows, 0], target[rows])
        else:
            metrics.update(logits[rows], target[rows])
    result = metrics.compute()
    return {"miou": round(float(result["miou"]), 4), "fscore": round(float(result["fscore"]), 4),
            "frames": len(data), "videos": len(data.names), "audio": audio}


@torch.inference_mode()
def frames_per_second(model: torch.nn.Module, size: int, *, batch: int = 8, iters: int = 5, warmup: int = 2,
                      device: str = "cpu") -> float:
    """Frames/s of `model` on `batch` frames of side `size` with their log-mel (the median of `iters` timed
    forward passes after `warmup`); measured for teacher and student in the same process, one after the
    other, so they share the machine's state. Not a benchmark (`avs bench model` is)."""
    model = model.to(device).eval()
    frames = torch.rand(batch, 3, size, size, device=device)
    audio = torch.randn(batch, 1, 96, 64, device=device)
    times = []
    for i in range(warmup + iters):
        started = time.perf_counter()
        model(frames, audio)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return round(batch / statistics.median(times), 2)
