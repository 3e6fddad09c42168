"""REST streams on a worker (`worker.live.streams`), without Celery: the manager takes a stream's lease and a
live slot, runs it on a real frame engine with the shipped tiny model, writes one line per frame under the
lease, and ends it as its source, a DELETE, a refusal or the worker's own stop decide.

The sources are local files standing in for stream URLs (`pulled_source` is swapped for `file_source` where a
test needs one; one test keeps the real allow-list check)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from worker.core.contracts import JobStatus
from worker.core.jobstore import JobStore
from worker.core.leases import acquire, reconcile
from worker.core.live_protocol import StreamRequest
from worker.core.live_sources import file_source
from worker.core.settings import ServiceSettings
from worker.core.streams import StopOutcome, new_stream_record, stop_stream, stream_store
from worker.engine import FrameEngine
from worker.live import streams as streams_module
from worker.live.server import LiveServer
from worker.live.streams import StreamManager

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


class _SlowPredictor:
    """The shipped tiny model, `delay_s` slower per inference call (so that a stream lasts a while)."""

    def __init__(self, predictor: Any, delay_s: float = 0.0) -> None:
        self._predictor, self.delay_s = predictor, delay_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self._predictor, name)

    def predict_logits(self, frames: np.ndarray, emb: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay_s)
        return self._predictor.predict_logits(frames, emb)


@pytest.fixture(scope="module")
def predictor() -> _SlowPredictor:
    from model.predictor import load_predictor

    return _SlowPredictor(load_predictor())


@pytest.fixture
def engine(predictor: _SlowPredictor) -> Iterator[FrameEngine]:
    predictor.delay_s = 0.0
    engine = FrameEngine(predictor, max_batch_size=4, max_wait_ms=5).start()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    from worker.media.samples import make_video

    root = tmp_path_factory.mktemp("stream-clips")
    return {"short": make_video(root / "short.ts", duration_s=2.0, size=(96, 64), fps=25, container="ts"),
            "long": make_video(root / "long.ts", duration_s=12.0, size=(96, 64), fps=25, container="ts")}


pytestmark = pytest.mark.usefixtures("state_env")  # every stream record is in the test's state Redis

def _settings(tmp_path: Path, **overrides: Any) -> ServiceSettings:
    values: dict[str, Any] = {"data_dir": tmp_path / "data", "live_sources": ["udp://127.0.0.1"],
                              "live_max_sessions": 2, "lease_timeout_s": 30.0, "live_idle_timeout_s": 5.0}
    values.update(overrides)
    return ServiceSettings(_env_file=None, **values)


def _manager(settings: ServiceSettings, engine: FrameEngine) -> StreamManager:
    return StreamManager(settings, LiveServer(settings, lambda: engine), lambda: engine, owner="worker-test")


def _stream(store: JobStore, **fields: Any) -> str:
    record = new_stream_record(StreamRequest.model_validate({"source": "udp://127.0.0.1:5000", **fields}))
    store.create(record)
    return record.job_id


def _play(monkeypatch: pytest.MonkeyPatch, clip: Path) -> None:
    """The stream's URL opens `clip` instead (the allow-list itself is checked in its own test)."""
    monkeypatch.setattr(streams_module, "pulled_source", lambda url, allowed: file_source(str(clip)))


def _wait_finished(store: JobStore, stream_id: str, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = store.get(stream_id)
        if record.finished:
            return record
        time.sleep(0.05)
    raise AssertionError(f"stream {stream_id} still {store.get(stream_id).status}")


def _slot_freed(manager: StreamManager, timeout_s: float = 10.0) -> bool:
    """True once the manager's live slots are all free again. The run frees its slot after its last record
    write (its `finally`), so a test that has seen the finished record waits a moment for the slot."""
    deadline = time.monotonic() + timeout_s
    while manager.live.active and time.monotonic() < deadline:
        time.sleep(0.02)
    return manager.live.active == 0


def _lines(store: JobStore, stream_id: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in store.masks_path(stream_id).read_text().splitlines()]


def test_a_stream_runs_to_the_end_of_its_source(tmp_path: Path, engine: FrameEngine, clips: dict[str, Path],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _play(monkeypatch, clips["short"])
    settings = _settings(tmp_path)
    manager = _manager(settings, engine)
    store = stream_store(settings)
    stream_id = _stream(store, mode="no_drop", window=2)

    assert manager.take(stream_id)["status"] == "running"
    assert manager.take(stream_id)["status"] == "full"  # a duplicate message: the slot is its already
    record = _wait_finished(store, stream_id)

    assert record.status is JobStatus.SUCCEEDED, record.error
    assert record.live["ended_by"] == "source"
    lines = _lines(store, stream_id)
    assert [line["frame_index"] for line in lines] == list(range(50))  # no_drop: every frame, once, in order
    assert record.progress.frames_done == 50
    assert record.live["frames_processed"] == 50
    assert all("latency_ms" not in line and "type" not in line for line in lines)  # the job's line format
    pts = [line["pts_s"] for line in lines]
    assert pts == sorted(pts)
    assert _slot_freed(manager)  # the slot is free again


def test_a_stream_taken_over_continues_after_the_last_complete_line(tmp_path: Path, engine: FrameEngine,
                                                                    clips: dict[str, Path],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _play(monkeypatch, clips["short"])
    settings = _settings(tmp_path)
    store = stream_store(settings)
    stream_id = _stream(store, mode="no_drop")
    # a former worker took it, wrote three lines (frames 1 to 3 dropped late) and half of a fourth, and died;
    # its lease has expired
    acquire(store, stream_id, "dead-worker", 1, now=time.time() - 10)
    store.masks_path(stream_id).write_text(
        "".join(json.dumps({"frame_index": i, "pts_s": i / 25, "size": [64, 96], "counts": "x"}) + "\n"
                for i in (0, 4, 5)) + '{"frame_index": 6, "pts')

    assert _manager(settings, engine).take(stream_id)["status"] == "running"
    record = _wait_finished(store, stream_id)

    assert record.status is JobStatus.SUCCEEDED, record.error
    indices = [line["frame_index"] for line in _lines(store, stream_id)]
    assert indices == [0, 4, 5, *range(6, 56)]  # 3 kept, the torn one cut, then this run's 50 after them
    assert record.progress.frames_done == 53  # lines
    assert record.attempts == 2
    assert record.takeovers[-1].previous_owner == "dead-worker"


def test_delete_stops_a_running_stream_and_keeps_its_masks(tmp_path: Path, engine: FrameEngine,
                                                           clips: dict[str, Path], predictor: _SlowPredictor,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _play(monkeypatch, clips["long"])
    predictor.delay_s = 0.03  # 300 frames at > 30 ms each: the stream lasts ten seconds
    settings = _settings(tmp_path)
    store = stream_store(settings)
    stream_id = _stream(store, mode="no_drop", window=1)
    manager = _manager(settings, engine)
    assert manager.take(stream_id)["status"] == "running"
    deadline = time.monotonic() + 30
    while not store.masks_path(stream_id).exists() or len(_lines(store, stream_id)) < 5:
        assert time.monotonic() < deadline, "no masks"
        time.sleep(0.05)

    asked = time.monotonic()
    record, outcome = stop_stream(store, stream_id)
    assert outcome is StopOutcome.STOPPING
    record = _wait_finished(store, stream_id, timeout_s=20)
    assert time.monotonic() - asked < 5

    assert record.status is JobStatus.CANCELLED
    assert record.live["ended_by"] == "stopped"
    indices = [line["frame_index"] for line in _lines(store, stream_id)]
    assert indices == list(range(len(indices)))
    assert 5 <= record.progress.frames_done == len(indices) < 300
    assert stop_stream(store, stream_id)[1] is StopOutcome.FINISHED
    assert _slot_freed(manager)


def test_a_source_off_the_allow_list_fails_the_stream(tmp_path: Path, engine: FrameEngine) -> None:
    settings = _settings(tmp_path, live_sources=["udp://10.0.0.1"])  # this worker allows another host only
    store = stream_store(settings)
    stream_id = _stream(store)
    assert _manager(settings, engine).take(stream_id)["status"] == "running"
    record = _wait_finished(store, stream_id)
    assert record.status is JobStatus.FAILED
    assert record.error.code == "unauthorized"


def test_a_full_worker_leaves_the_stream_queued(tmp_path: Path, engine: FrameEngine) -> None:
    settings = _settings(tmp_path, live_max_sessions=1)
    store = stream_store(settings)
    manager = _manager(settings, engine)
    assert manager.live.reserve("a-live-session")
    stream_id = _stream(store)
    assert manager.take(stream_id)["status"] == "full"
    assert store.get(stream_id).status is JobStatus.QUEUED
    assert store.get(stream_id).attempts == 0


def test_a_stopping_worker_hands_its_streams_back(tmp_path: Path, engine: FrameEngine, clips: dict[str, Path],
                                                  predictor: _SlowPredictor,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _play(monkeypatch, clips["long"])
    predictor.delay_s = 0.03
    settings = _settings(tmp_path)
    store = stream_store(settings)
    stream_id = _stream(store, mode="no_drop", window=1)
    manager = _manager(settings, engine)
    assert manager.take(stream_id)["status"] == "running"
    deadline = time.monotonic() + 30
    while not store.masks_path(stream_id).exists() or not _lines(store, stream_id):
        assert time.monotonic() < deadline, "no masks"
        time.sleep(0.05)

    manager.stop()
    record = store.get(stream_id)
    assert record.status is JobStatus.RUNNING  # not failed: another worker goes on with it
    assert record.lease_expires_at <= time.time()
    sent: list[str] = []
    done = reconcile(store, sent.append, lease_timeout_s=30, unsent_grace_s=60, unsent_give_up_s=3600)
    assert done.requeued == [stream_id]
    assert sent == [stream_id]
    assert manager.take(stream_id)["status"] == "stopping"  # this worker takes nothing more


def test_next_frame_index_reads_the_last_line(tmp_path: Path) -> None:
    from worker.live.streams import next_frame_index

    path = tmp_path / "masks.ndjson"
    assert next_frame_index(path) == 0
    path.write_text("")
    assert next_frame_index(path) == 0
    big = "x" * 100_000  # lines longer than one read of the file's end
    path.write_text("".join(json.dumps({"frame_index": i, "counts": big}) + "\n" for i in (0, 7, 9)))
    assert next_frame_index(path) == 10
