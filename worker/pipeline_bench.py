"""Pipeline benchmarks: end-to-end frames/s against the model alone, and memory against video length."""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.modeling.audio_frontend import SAMPLE_RATE
from model.predictor import DEFAULT_THRESHOLD, AVSPredictor, logit_threshold, postprocess_logits
from worker.core.media.probe import count_frames
from worker.pipeline import SegmentOptions, segment_video


def _peak_rss_mb() -> tuple[float, float]:
    """(this process, largest child process) peak resident set size in MiB (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return round(own, 1), round(children, 1)


def model_fps(predictor: AVSPredictor, batch_size: int, *, iters: int = 5, warmup: int = 2) -> float:
    """Frames/s of the pipeline's inference call alone (same batch size, input size, device, precomputed audio)."""
    S = predictor.input_size
    frames = np.random.default_rng(0).integers(0, 255, (batch_size, S, S, 3), dtype=np.uint8)
    emb = predictor.audio_embeddings(np.zeros(SAMPLE_RATE, dtype=np.float32))[:1].expand(batch_size, -1)
    times = []
    for i in range(warmup + iters):
        start = time.perf_counter()
        logits = predictor.predict_logits(frames, emb)
        if logits.device.type == "cuda":
            torch.cuda.synchronize(logits.device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times)


class InstantPredictor:
    """The predictor's interface with an instant network: every frame's logits are one fixed blob (an object
    a fifth of the frame wide, off centre), so everything else (decode, audio, alignment, post-processing at
    the video's size, RLE, writing) is measured at the cost it really has. `avs bench segment --model none`."""

    num_classes = 1
    class_names = ("sounding",)

    def __init__(self, input_size: int = 128) -> None:
        self.input_size = input_size
        self.device = torch.device("cpu")
        S = input_size
        yy, xx = np.meshgrid(np.arange(S, dtype=np.float32), np.arange(S, dtype=np.float32), indexing="ij")
        blob = 0.1 * S - np.sqrt((yy - 0.5 * S) ** 2 + (xx - 0.4 * S) ** 2)
        self._logits = torch.from_numpy(blob)[None, None]
        self.variant = "none"

    def warmup(self, batch_size: int = 1) -> None:
        pass

    def audio_embeddings(self, waveform: np.ndarray) -> torch.Tensor:
        return torch.zeros(max(1, int(np.ceil(len(waveform) / 15360))), 128)

    def predict_logits(self, frames: np.ndarray, emb: torch.Tensor) -> torch.Tensor:
        return self._logits.expand(len(frames), -1, -1, -1)

    def postprocess(self, logits: torch.Tensor, out_size: tuple[int, int], *, threshold: float | None = None):
        return postprocess_logits(logits, out_size, logit_threshold(threshold or DEFAULT_THRESHOLD))


def ffmpeg_decode_fps(video: str | Path) -> float:
    """Frames/s at which ffmpeg alone decodes the video stream (`ffmpeg -i FILE -map 0:v -f null -`): the
    rate no pipeline that decodes every frame can pass on this machine."""
    frames = count_frames(video)
    started = time.perf_counter()
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", str(video), "-map", "0:v:0", "-f", "null", "-"],
                   check=True, timeout=3600)
    return frames / (time.perf_counter() - started)


def bench_segment(video: str | Path, predictor: Any, *, batch_size: int = 8, iters: int = 5) -> dict[str, Any]:
    """One pass of the pipeline on `video` with `predictor`, and in the same run the model alone at the same
    batch size (skipped for `InstantPredictor`) and ffmpeg's own decode rate."""
    instant = isinstance(predictor, InstantPredictor)
    predictor.warmup(batch_size)
    decode = ffmpeg_decode_fps(video)
    with tempfile.TemporaryDirectory() as tmp:
        result = segment_video(video, tmp, predictor, SegmentOptions(batch_size=batch_size))
    pipeline = result.fps
    # measured after the pipeline, in the same process: same threads, same warm caches
    model = None if instant else model_fps(predictor, batch_size, iters=iters)
    own_rss, child_rss = _peak_rss_mb()
    summary = {
        "video": str(video), "frames": result.frames, "width": result.video["width"],
        "height": result.video["height"], "duration_s": result.video["duration_s"],
        "variant": "none" if instant else predictor.cfg.variant, "input_size": predictor.input_size,
        "device": str(predictor.device), "threads": torch.get_num_threads(), "batch_size": batch_size,
        "pipeline_fps": round(pipeline, 3), "ffmpeg_decode_fps": round(decode, 3),
        "pipeline_over_ffmpeg_decode": round(pipeline / decode, 3),
        "timings": result.timings, "seconds_total": round(result.seconds_total, 3),
        "peak_rss_mb": own_rss, "children_peak_rss_mb": child_rss,
    }
    if model is not None:
        summary.update({"model_fps": round(model, 3), "pipeline_over_model": round(pipeline / model, 3),
                        "overhead_pct": round(100 * (model / pipeline - 1), 1)})  # extra time per frame
    return summary


def bench_memory(durations: list[float], *, size: tuple[int, int], fps: int, batch_size: int,
                 extra_args: list[str]) -> dict[str, Any]:
    """Peak RSS of `avs bench segment` (fresh process each) on synthetic videos of several lengths."""
    from worker.media.samples import make_video

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for duration in durations:
            video = make_video(Path(tmp) / f"clip_{duration:g}s.mp4", duration_s=duration, size=size, fps=fps)
            cmd = [sys.executable, "-m", "app.cli", "bench", "segment", str(video), "--batch-size",
                   str(batch_size), "--json", *extra_args]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600)
            run = json.loads(out.stdout.strip().splitlines()[-1])
            runs.append({"duration_s": duration, "frames": run["frames"], "peak_rss_mb": run["peak_rss_mb"],
                         "children_peak_rss_mb": run["children_peak_rss_mb"], "pipeline_fps": run["pipeline_fps"]})
    first, last = runs[0], runs[-1]
    return {"size": list(size), "fps": fps, "batch_size": batch_size, "runs": runs,
            "rss_ratio_longest_to_shortest": round(last["peak_rss_mb"] / first["peak_rss_mb"], 3)}
