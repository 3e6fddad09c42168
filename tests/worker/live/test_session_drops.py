"""Never fall behind: a live job waits for at most `live_window` frames; a newer frame drops the oldest waiting
one (`late`), so the masks describe the newest frames and the latency stays bounded whatever the stream's length.
In `no_drop` mode the newer frame waits instead (back-pressure): nothing is dropped, the queue stays bounded, and
the source is read more slowly.

First on the frame engine alone (frames produced much faster than a slow stand-in model infers them), then a
real `LiveSession` (ffmpeg reading a clip as fast as it decodes, the shipped tiny model made slow).
"""

from __future__ import annotations

import itertools
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from worker.engine import FrameEngine, JobSpec
from worker.media.decode import FrameBatch

FRAMES = 80
PRODUCE_S = 0.002  # a new frame every 2 ms ...
INFER_S = 0.015  # ... and 15 ms of "inference" per frame: 7x slower than the stream


class SlowPredictor:
    """logits of a frame = its pixel value (the frame's index mod 256), after `INFER_S` per frame."""

    input_size = 8
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.batches: list[int] = []

    def predict_logits(self, frames: np.ndarray, emb: torch.Tensor) -> torch.Tensor:
        assert emb.shape == (len(frames), 128)
        self.batches.append(len(frames))
        time.sleep(INFER_S * len(frames))
        values = torch.from_numpy(frames[:, 0, 0, 0].astype(np.float32))
        return values[:, None, None, None].expand(-1, 1, 2, 2).clone()


def _run_live_job(window: int | None, *, drop: bool = True) -> dict[str, Any]:
    predictor = SlowPredictor()
    engine = FrameEngine(predictor, max_batch_size=8, max_wait_ms=5)
    produced: list[float] = []  # when each frame happened (a live source does not wait for its reader)
    handed: list[float] = []  # when the engine took it
    newest_at_drop: list[tuple[int, int]] = []  # (dropped index, newest frame produced at that moment)
    processed: list[int] = []
    latencies: list[float] = []  # from when the frame happened
    waits: list[float] = []  # from when the engine took it
    embedded: list[float] = []
    mismatched: list[int] = []

    def frames() -> Iterator[FrameBatch]:
        start = time.monotonic()
        for i in range(FRAMES):
            due = start + (i + 1) * PRODUCE_S
            time.sleep(max(0.0, due - time.monotonic()))
            produced.append(due)
            handed.append(time.monotonic())
            frame = np.full((1, 8, 8, 3), i % 256, dtype=np.uint8)
            yield FrameBatch(frames=frame, pts_s=[i * 0.04], start_index=i)

    def embed(pts_s: list[float]) -> torch.Tensor:
        embedded.extend(pts_s)
        return torch.zeros(len(pts_s), 128)

    def encode(start_index: int, pts_s: list[float], logits: torch.Tensor) -> None:
        now = time.monotonic()
        for offset, (pts, frame_logits) in enumerate(zip(pts_s, logits, strict=True)):
            index = start_index + offset
            if float(frame_logits.flatten()[0]) != index % 256 or abs(pts - index * 0.04) > 1e-9:
                mismatched.append(index)  # logits or pts of another frame
            processed.append(index)
            latencies.append(now - produced[index])
            waits.append(now - handed[index])

    def on_drop(index: int) -> None:
        newest_at_drop.append((index, len(produced) - 1))

    stats = engine.run(JobSpec(key="live-test", batches=frames(), table=None, encode=encode,
                               live_window=window, embed=embed, on_drop=on_drop, live_drop=drop))
    return {"predictor": predictor, "processed": processed, "dropped": [d for d, _ in newest_at_drop],
            "newest_at_drop": newest_at_drop, "latencies": latencies, "waits": waits, "embedded": embedded,
            "mismatched": mismatched, "stats": stats}


def test_a_live_job_drops_the_oldest_frames_and_never_falls_behind() -> None:
    run = _run_live_job(window=2)
    processed, dropped = run["processed"], run["dropped"]

    assert dropped, "the stream is 7x faster than the model: frames must be dropped"
    assert len(processed) + len(dropped) == FRAMES
    assert sorted(processed + dropped) == list(range(FRAMES))  # each frame processed or dropped, once
    assert processed == sorted(set(processed))  # masks in frame order, none twice
    assert processed[-1] == FRAMES - 1  # the newest frame is never the one dropped
    assert dropped == sorted(dropped)
    for index, newest in run["newest_at_drop"]:  # the oldest goes: `window` newer frames were waiting
        assert index <= newest - 2, (index, newest)
    assert max(run["predictor"].batches) <= 2  # never more than the window waited for the model
    assert run["mismatched"] == []  # each mask from its own frame
    assert run["embedded"] == [i * 0.04 for i in processed]  # sound embedded only for the frames inferred
    assert run["stats"].inferred == len(processed)
    # bounded latency: a frame waits behind at most a window of others (each ~15 ms), whereas without the
    # window the last frame would wait for the whole backlog (~80 x 15 ms - 80 x 2 ms ~ 1 s)
    assert max(run["waits"]) < 0.5, max(run["waits"])


def test_without_a_window_nothing_is_dropped_and_the_backlog_grows() -> None:
    """The control: the same stream as a file job (no window) keeps every frame, and falls behind."""
    run = _run_live_job(window=None)
    assert run["dropped"] == []
    assert run["processed"] == list(range(FRAMES))
    assert max(run["predictor"].batches) > 2
    assert max(run["latencies"]) > 0.5  # what the window prevents


@pytest.mark.parametrize("window", [1, 3])
def test_a_no_drop_live_job_never_drops_and_its_queue_stays_within_the_window(window: int) -> None:
    """The same stream, 7x faster than the model, in no_drop mode: every frame gets its mask, in order, never
    more than `window` frames wait for the model, and the source is held back instead (it is read at the
    model's pace, so the frames are taken by the engine ~INFER_S apart, not PRODUCE_S)."""
    run = _run_live_job(window=window, drop=False)
    assert run["dropped"] == []
    assert run["processed"] == list(range(FRAMES))  # each frame once, in order
    assert run["mismatched"] == []
    assert run["stats"].max_pending <= window
    assert max(run["predictor"].batches) <= window
    assert run["stats"].inferred == FRAMES
    assert max(run["waits"]) < 0.5  # a frame taken waits behind at most a window of others
    assert max(run["latencies"]) > 0.5  # the lag moved upstream: the source itself was slowed down


# ------------------------------------------------------------------------------------ a real session
class _SlowRealPredictor:
    """The shipped tiny model, 30 ms slower per inference call (a model slower than the stream)."""

    def __init__(self, predictor: Any) -> None:
        self._predictor = predictor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._predictor, name)

    def predict_logits(self, frames: np.ndarray, emb: torch.Tensor) -> torch.Tensor:
        time.sleep(0.03)
        return self._predictor.predict_logits(frames, emb)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_a_live_session_reports_every_frame_as_processed_or_dropped(tmp_path: Path) -> None:
    from model.predictor import load_predictor
    from worker.core.live_sources import file_source
    from worker.live.session import LiveOptions, LiveSession
    from worker.media.samples import make_video

    clip = make_video(tmp_path / "c.webm", container="webm", duration_s=2.0, size=(160, 120), fps=25)
    engine = FrameEngine(_SlowRealPredictor(load_predictor()), max_batch_size=8, max_wait_ms=5)
    records: list[dict[str, Any]] = []
    reasons: list[str] = []
    session = LiveSession(file_source(str(clip)), engine, records.append, options=LiveOptions(window=1),
                          realtime=False, on_drop=reasons.append, key="t" * 32)
    session.start()
    summary = session.wait()

    assert session.error is None, session.error
    assert summary["frames_received"] == 50  # 2 s at 25 fps
    assert summary["frames_received"] == summary["frames_processed"] + summary["frames_dropped"]
    assert summary["frames_processed"] == len(records)
    assert summary["frames_dropped"] > 0  # ffmpeg decodes far faster than 30 ms a frame
    assert summary["dropped"] == {"late": summary["frames_dropped"]}
    assert summary["frames_skipped_by_rate"] == 0
    assert reasons == ["late"] * summary["frames_dropped"]
    indices = [r["frame_index"] for r in records]
    assert indices == sorted(set(indices))  # in order, each once
    assert indices[-1] == summary["frames_received"] - 1  # the last frame is never dropped
    pts = [r["pts_s"] for r in records]
    assert all(b > a for a, b in itertools.pairwise(pts))
    first = records[0]["pts_s"] - records[0]["frame_index"] / 25  # the stream's start time (webm: a few ms)
    assert abs(first) < 0.1
    for record in records:
        assert record["pts_s"] == pytest.approx(first + record["frame_index"] / 25, abs=0.002)
        assert record["size"] == [120, 160]  # masks at the stream's own size
        assert record["latency_ms"] is not None
        assert record["latency_ms"] >= 0
    assert summary["latency_p50_ms"] is not None
    assert summary["latency_p50_ms"] <= summary["latency_max_ms"]


def test_frames_with_gaps_between_them_keep_their_own_indices() -> None:
    """A live job's frames skipped by its fps cap never reach the engine: the frames that do are not
    consecutive, and a batch holding several of them must still number each mask by its own frame."""
    predictor = SlowPredictor()
    engine = FrameEngine(predictor, max_batch_size=8, max_wait_ms=50)
    kept = list(range(0, 40, 5))  # one frame in five, as an fps cap of 5 on a 25 fps stream keeps them
    seen: list[tuple[int, float]] = []

    def frames() -> Iterator[FrameBatch]:
        for i in kept:  # all at once: they wait for the model together and share batches
            yield FrameBatch(frames=np.full((1, 8, 8, 3), i, dtype=np.uint8), pts_s=[i * 0.04], start_index=i)

    def encode(start_index: int, pts_s: list[float], logits: torch.Tensor) -> None:
        for offset, (pts, frame_logits) in enumerate(zip(pts_s, logits, strict=True)):
            assert float(frame_logits.flatten()[0]) == start_index + offset  # the mask of that very frame
            seen.append((start_index + offset, pts))

    engine.run(JobSpec(key="gaps", batches=frames(), table=None, encode=encode, live_window=len(kept),
                       embed=lambda pts: torch.zeros(len(pts), 128)))
    assert max(predictor.batches) > 1  # the case that matters: several kept frames in one batch
    assert seen == [(i, i * 0.04) for i in kept]


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_a_no_drop_session_gives_every_frame_a_mask(tmp_path: Path) -> None:
    """A real session, ffmpeg decoding far faster than the slowed model, in no_drop mode with a window of one:
    ffmpeg's output is read only when there is room, so ffmpeg waits, and every frame gets its mask."""
    from model.predictor import load_predictor
    from worker.core.live_sources import file_source
    from worker.live.session import LiveOptions, LiveSession
    from worker.media.samples import make_video

    clip = make_video(tmp_path / "c.webm", container="webm", duration_s=2.0, size=(160, 120), fps=25)
    engine = FrameEngine(_SlowRealPredictor(load_predictor()), max_batch_size=8, max_wait_ms=5)
    records: list[dict[str, Any]] = []
    reasons: list[str] = []
    session = LiveSession(file_source(str(clip)), engine, records.append,
                          options=LiveOptions(window=1, mode="no_drop"), realtime=False, on_drop=reasons.append,
                          key="n" * 32)
    session.start()
    summary = session.wait()

    assert session.error is None, session.error
    assert summary["frames_received"] == summary["frames_processed"] == len(records) == 50
    assert summary["frames_dropped"] == summary["frames_skipped_by_rate"] == 0
    assert reasons == []
    assert [r["frame_index"] for r in records] == list(range(50))


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_a_no_drop_session_drains_after_its_end_however_long_the_model_takes(tmp_path: Path, monkeypatch) -> None:
    """Pushed all at once and ended at once: in no_drop mode ffmpeg still holds most of the frames when the
    client says "end", and hands them over at the model's pace. That drain is progress, not a hung ffmpeg:
    the end's grace counts from the last frame, not from the end."""
    from model.predictor import load_predictor
    from worker.core.live_sources import PUSHED
    from worker.live import session as session_module
    from worker.live.session import LiveOptions, LiveSession
    from worker.media.samples import make_video

    monkeypatch.setattr(session_module, "END_GRACE_S", 0.5)  # far shorter than the drain (50 frames x 30 ms)
    clip = make_video(tmp_path / "c.webm", container="webm", duration_s=2.0, size=(160, 120), fps=25)
    engine = FrameEngine(_SlowRealPredictor(load_predictor()), max_batch_size=8, max_wait_ms=5).start()
    records: list[dict[str, Any]] = []
    session = LiveSession(PUSHED, engine, records.append, options=LiveOptions(window=1, mode="no_drop"),
                          key="d" * 32)
    session.start()
    data = clip.read_bytes()
    for offset in range(0, len(data), 16384):
        session.feed(data[offset:offset + 16384])
    session.end()
    summary = session.wait()
    engine.close()

    assert session.error is None, session.error
    assert summary["frames_received"] == summary["frames_processed"] == len(records) == 50
