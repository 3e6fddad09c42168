"""The frame engine: batches really mix jobs, each job's output equals what it gives alone (frames paired with
their own sound), and cancellation and failures of one job leave the others whole.

The model is a deterministic per-frame function of the frame and its audio embedding, so any mix-up of
frames, sound or order between jobs changes a mask; the media are real files decoded by ffmpeg.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from worker.core.errors import MediaError
from worker.engine import Cancelled, FrameEngine
from worker.masks import read_mask_lines
from worker.media.samples import make_video
from worker.pipeline import SegmentOptions, segment_video


class PerFramePredictor:
    """logits of a frame = a left/right split whose position follows the frame's brightness and its sound."""

    input_size = 32
    num_classes = 1
    class_names = ("sounding",)

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []
        self.lock = threading.Lock()
        self.hold_until: Callable[[], bool] | None = None  # the first call waits for this (at most 30 s)

    def audio_embeddings(self, waveform: np.ndarray) -> torch.Tensor:
        windows = max(1, int(np.ceil(len(waveform) / 15360)))
        padded = np.zeros(windows * 15360, dtype=np.float32)
        padded[: len(waveform)] = waveform
        energy = np.sqrt(np.mean(padded.reshape(windows, -1) ** 2, axis=1))
        return torch.from_numpy(np.repeat(energy[:, None], 128, axis=1).astype(np.float32))

    def predict_logits(self, frames: np.ndarray, emb: torch.Tensor) -> torch.Tensor:
        with self.lock:
            self.batch_sizes.append(len(frames))
            hold, self.hold_until = self.hold_until, None
        deadline = time.monotonic() + 30
        while hold is not None and not hold() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.004)  # a model takes time: frames of other jobs arrive meanwhile
        brightness = torch.from_numpy(frames.astype(np.float32).mean(axis=(1, 2, 3)) / 255.0)  # [n]
        split = (4 + 24 * (0.5 * brightness + 0.5 * emb[:, 0].clamp(0, 1))).round()  # column of the edge
        columns = torch.arange(32, dtype=torch.float32)
        logits = (split[:, None] - columns[None, :]).expand(32, -1, -1).permute(1, 0, 2)  # [n, 32, 32]
        return logits[:, None].contiguous()

    def postprocess(self, logits: torch.Tensor, out_size: tuple[int, int], *, threshold: float | None = None):
        masks = torch.nn.functional.interpolate(logits, size=out_size, mode="nearest")[:, 0] > 0
        return masks.to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("engine")
    return [make_video(root / "a.mp4", duration_s=2.0, size=(64, 48), fps=25, tone_hz=220),
            make_video(root / "b.mkv", duration_s=1.4, size=(80, 60), fps=30, container="mkv", sound_start_s=0.7),
            make_video(root / "c.webm", duration_s=2.4, size=(48, 64), fps=15, container="webm", tone_hz=880)]


def _lines(directory: Path) -> list[dict]:
    return list(read_mask_lines(directory / "masks.ndjson"))


def _concurrently(engine: FrameEngine, predictor: PerFramePredictor, videos: list[Path], out: Path,
                  options: SegmentOptions, **kwargs: object) -> list[BaseException | None]:
    errors: list[BaseException | None] = [None] * len(videos)

    def run(i: int) -> None:
        try:
            segment_video(videos[i], out / str(i), predictor, options, engine=engine, **kwargs.get(str(i), {}))
        except BaseException as exc:
            errors[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(videos))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return errors


def test_batches_mix_jobs_and_each_job_gets_what_it_gets_alone(videos: list[Path], tmp_path: Path) -> None:
    predictor = PerFramePredictor()
    options = SegmentOptions(batch_size=8)
    for i, video in enumerate(videos):  # alone: a private engine each
        segment_video(video, tmp_path / "alone" / str(i), predictor, options)
    engine = FrameEngine(predictor, max_batch_size=8, max_wait_ms=50).start()  # served as a worker serves it
    # The jobs must overlap for their frames to meet: on a loaded machine one short clip can be done before
    # the next ffmpeg has started, so the first inference call waits until every job has frames pending.
    predictor.hold_until = lambda: sum(1 for job in engine._jobs if job.pending) == len(videos)
    try:
        assert _concurrently(engine, predictor, videos, tmp_path / "together", options) == [None] * 3
        assert engine.mixed_batches > 0, "no batch held frames of two jobs"
        assert engine.batches_run < sum(len(_lines(tmp_path / "alone" / str(i))) for i in range(3)) / 2
    finally:
        engine.close()
    for i in range(3):
        alone, together = _lines(tmp_path / "alone" / str(i)), _lines(tmp_path / "together" / str(i))
        assert together == alone, f"job {i} differs when batched with others"
        assert [r["frame_index"] for r in together] == list(range(len(together)))
    masks = {r["counts"] for i in range(3) for r in _lines(tmp_path / "together" / str(i))}
    assert len(masks) > 3  # the stand-in really depends on frame and sound


def test_a_cancelled_or_failing_job_leaves_the_others_whole(videos: list[Path], tmp_path: Path) -> None:
    predictor = PerFramePredictor()
    options = SegmentOptions(batch_size=4)
    for i in (0, 2):
        segment_video(videos[i], tmp_path / "alone" / str(i), predictor, options)
    broken = tmp_path / "broken.mp4"
    data = videos[1].read_bytes()
    broken.write_bytes(data[: len(data) * 2 // 3])  # mkv cut short: fails mid-decode
    calls = {"n": 0}

    def cancel_after_two() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    engine = FrameEngine(predictor, max_batch_size=4, max_wait_ms=20)
    try:
        inputs = [videos[0], broken, videos[2], videos[0]]
        errors = _concurrently(engine, predictor, inputs, tmp_path / "together", options,
                               **{"3": {"should_cancel": cancel_after_two}})
    finally:
        engine.close()
    assert errors[0] is None
    assert errors[2] is None
    assert isinstance(errors[1], MediaError)
    assert isinstance(errors[3], Cancelled)
    for i in (0, 2):
        assert _lines(tmp_path / "together" / str(i)) == _lines(tmp_path / "alone" / str(i))
    assert not (tmp_path / "together" / "3" / "masks.ndjson").exists()  # a refused or cancelled run leaves nothing


def test_resume_skips_what_was_written(videos: list[Path], tmp_path: Path) -> None:
    predictor = PerFramePredictor()
    whole = tmp_path / "whole"
    segment_video(videos[0], whole, predictor, SegmentOptions(batch_size=8))
    lines = (whole / "masks.ndjson").read_text().splitlines(keepends=True)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "masks.ndjson").write_text("".join(lines[:13]))
    engine = FrameEngine(predictor, max_batch_size=8, max_wait_ms=5)
    try:
        segment_video(videos[0], resumed, predictor, SegmentOptions(batch_size=8, atomic=False, start_frame=13),
                      engine=engine)
    finally:
        engine.close()
    assert (resumed / "masks.ndjson").read_text() == "".join(lines)


class ThreadRecordingPredictor(PerFramePredictor):
    """Also records which thread made each inference call. One batcher at a time means each thread's calls form
    one unbroken run: a caller serves until its own job is done and never again, the serving thread until the
    end. Two batchers at once interleave (their calls are serialised by the engine's model lock)."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []
        self.gate: threading.Event | None = None  # each call waits for it, when set up

    def predict_logits(self, frames: np.ndarray, emb: torch.Tensor) -> torch.Tensor:
        with self.lock:
            self.threads.append(threading.get_ident())
        if self.gate is not None:
            self.gate.wait(30)
        time.sleep(0.002)  # widen the window a second batcher would need
        return super().predict_logits(frames, emb)

    def interleaved(self) -> bool:
        runs = [t for i, t in enumerate(self.threads) if i == 0 or self.threads[i - 1] != t]
        return len(runs) != len(set(runs))


def test_one_batcher_at_a_time_when_the_model_thread_starts_serving_after_a_caller(
        videos: list[Path], tmp_path: Path) -> None:
    """A worker whose job arrived while its model was loading: the job's thread found no one serving and
    serves the engine itself (`finish`); then the model thread starts `serve()`. It must wait for the caller
    to hand over: two batchers at once finish batches out of order, so a job's lines are written out of
    order and a job's end can overtake its last frames (lines lost)."""
    predictor = ThreadRecordingPredictor()
    options = SegmentOptions(batch_size=4)
    segment_video(videos[0], tmp_path / "alone", predictor, options)
    predictor.threads.clear()
    gate = threading.Event()
    predictor.gate = gate
    engine = FrameEngine(predictor, max_batch_size=4, max_wait_ms=0)  # not started: the caller serves it
    caller = threading.Thread(target=segment_video, args=(videos[0], tmp_path / "served", predictor, options),
                              kwargs={"engine": engine})
    caller.start()
    server = threading.Thread(target=engine.serve)
    try:
        deadline = time.monotonic() + 30
        while not predictor.threads and time.monotonic() < deadline:  # the caller is in its first batch
            time.sleep(0.01)
        server.start()  # the model thread arrives now
        time.sleep(0.3)
        gate.set()
        caller.join(60)
    finally:
        gate.set()
        engine.close()
        server.join(10)
    assert not predictor.interleaved(), "the model thread ran batches beside the caller"
    assert _lines(tmp_path / "served") == _lines(tmp_path / "alone")
