"""REST stream records (`worker.core.streams`): the request's rules, the states a stream goes through, what
DELETE does in each, the lease and the reconciler on the streams' own folder, and the public view of a URL."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from worker.core.contracts import JobStatus
from worker.core.jobstore import JobStore
from worker.core.leases import Acquired, acquire, fenced_update, reconcile
from worker.core.live_protocol import StreamRequest
from worker.core.streams import (
    ENDED_BY_STOP,
    STREAMS_FOLDER,
    StopOutcome,
    ended_by,
    finish_stream,
    frame_lines,
    new_stream_record,
    public_source,
    stop_stream,
)

StoreFactory = Callable[..., JobStore]  # the `make_store` fixture (tests/conftest.py)

URL = "udp://127.0.0.1:5000"


@pytest.fixture
def store(tmp_path: Path, make_store: StoreFactory) -> JobStore:
    return make_store(tmp_path / "data", STREAMS_FOLDER)


def _created(store: JobStore, **fields) -> str:
    record = new_stream_record(StreamRequest.model_validate({"source": URL, **fields}))
    store.create(record)
    return record.job_id


def _running(store: JobStore, *, lease_s: float = 60.0) -> str:
    stream_id = _created(store)
    outcome, _, _ = acquire(store, stream_id, "worker-a", lease_s)
    assert outcome is Acquired.TAKEN
    return stream_id


def _lines(store: JobStore, stream_id: str, n: int, torn: bool = False) -> None:
    text = "".join(f'{{"frame_index":{i},"pts_s":{i / 25},"size":[2,2],"counts":"4"}}\n' for i in range(n))
    store.masks_path(stream_id).write_text(text + ('{"frame_index":' if torn else ""))


# ------------------------------------------------------------------------------------------------ request
def test_a_request_needs_a_source_and_follows_the_live_rules() -> None:
    request = StreamRequest.model_validate({"source": URL, "fps": 5, "window": 4, "mode": "no_drop",
                                            "threshold": 0.3})
    assert (request.source, request.fps, request.window, request.mode, request.threshold) == (URL, 5, 4, "no_drop",
                                                                                              0.3)
    assert StreamRequest.model_validate({"source": URL}).mode == "drop_oldest"
    for bad in ({}, {"source": URL, "mode": "drop_all"}, {"source": URL, "window": 0}, {"source": URL, "fps": 0},
                {"source": URL, "record": True}, {"source": URL, "type": "start"}, {"source": "x" * 2049}):
        with pytest.raises(ValidationError):
            StreamRequest.model_validate(bad)


def test_a_new_stream_is_a_queued_record_of_its_own_kind(store: JobStore, tmp_path: Path,
                                                          make_store: StoreFactory) -> None:
    stream_id = _created(store, fps=10, threshold=0.4, window=3, mode="no_drop")
    record = store.get(stream_id)
    assert record.kind == "stream"
    assert record.status is JobStatus.QUEUED
    assert (record.options.fps, record.options.threshold) == (10, 0.4)
    assert (record.stream.source, record.stream.window, record.stream.mode) == (URL, 3, "no_drop")
    assert store.root == tmp_path / "data" / "streams"
    assert list(make_store(tmp_path / "data").list_ids()) == []  # never among the jobs
    assert ended_by(record) is None


# ------------------------------------------------------------------------------------------------ DELETE
def test_deleting_a_queued_stream_cancels_it_at_once(store: JobStore) -> None:
    stream_id = _created(store)
    record, outcome = stop_stream(store, stream_id)
    assert outcome is StopOutcome.CANCELLED
    assert record.status is JobStatus.CANCELLED
    assert record.finished_at is not None
    assert ended_by(record) == ENDED_BY_STOP
    # a message delivered afterwards does nothing
    assert acquire(store, stream_id, "worker-a", 60)[0] is Acquired.FINISHED
    again, outcome = stop_stream(store, stream_id)  # idempotent
    assert outcome is StopOutcome.FINISHED
    assert again.status is JobStatus.CANCELLED


def test_deleting_a_running_stream_asks_its_worker_and_keeps_its_masks(store: JobStore) -> None:
    stream_id = _running(store)
    _lines(store, stream_id, 5)
    record, outcome = stop_stream(store, stream_id)
    assert outcome is StopOutcome.STOPPING
    assert record.status is JobStatus.RUNNING
    assert record.cancel_requested
    assert stop_stream(store, stream_id)[1] is StopOutcome.STOPPING  # asked again: still the worker's to do
    assert frame_lines(store.masks_path(stream_id)) == 5


def test_deleting_an_orphaned_stream_cancels_it_and_fences_its_old_worker(store: JobStore) -> None:
    stream_id = _running(store, lease_s=60)
    token = store.get(stream_id).lease_token
    _lines(store, stream_id, 7, torn=True)
    record, outcome = stop_stream(store, stream_id, now=time.time() + 120)  # the lease has expired by then
    assert outcome is StopOutcome.CANCELLED
    assert record.status is JobStatus.CANCELLED
    assert record.lease_token == token + 1
    assert record.owner is None
    assert record.progress.frames_done == 7  # the complete lines, counted
    assert store.masks_path(stream_id).exists()


# --------------------------------------------------------------------------------- the worker's side
def test_finish_records_the_end_of_a_run(store: JobStore) -> None:
    stream_id = _running(store)
    _, lease, _ = acquire(store, stream_id, "worker-b", 60, now=time.time() + 120)  # a takeover
    assert lease is not None
    summary = {"frames_received": 12, "frames_processed": 10, "frames_skipped_by_rate": 0, "frames_dropped": 2}
    record = fenced_update(store, lease, lambda r: finish_stream(r, JobStatus.SUCCEEDED, frames=40, summary=summary,
                                                                  reason="source"))
    assert record.status is JobStatus.SUCCEEDED
    assert record.progress.frames_done == record.progress.frames_total == 40
    assert record.live == {**summary, "ended_by": "source"}
    assert ended_by(record) == "source"
    assert record.lease_expires_at is None
    assert len(record.takeovers) == 1
    failed = new_stream_record(StreamRequest(source=URL))
    finish_stream(failed, JobStatus.FAILED, frames=0, summary=None, reason=None, error=("not_media", "no stream"))
    assert failed.error.code == "not_media"
    assert ended_by(failed) is None


def test_the_reconciler_requeues_a_stream_whose_worker_died(store: JobStore) -> None:
    stream_id = _running(store, lease_s=1)
    sent: list[str] = []
    later = time.time() + 5
    done = reconcile(store, sent.append, lease_timeout_s=1, unsent_grace_s=60, unsent_give_up_s=3600, now=later)
    assert done.requeued == [stream_id]
    assert sent == [stream_id]
    record = store.get(stream_id)
    assert record.status is JobStatus.QUEUED
    assert record.takeovers[-1].previous_owner == "worker-a"
    assert acquire(store, stream_id, "worker-b", 60)[0] is Acquired.TAKEN


def test_a_stop_asked_before_its_worker_died_is_finished_by_the_reconciler_with_the_masks_kept(
        store: JobStore) -> None:
    stream_id = _running(store, lease_s=1)
    _lines(store, stream_id, 3)
    assert stop_stream(store, stream_id)[1] is StopOutcome.STOPPING
    done = reconcile(store, lambda _: None, lease_timeout_s=1, unsent_grace_s=60, unsent_give_up_s=3600,
                     now=time.time() + 5, keep=(store.masks_path(stream_id).name,))
    assert done.cancelled == [stream_id]
    assert store.get(stream_id).status is JobStatus.CANCELLED
    assert frame_lines(store.masks_path(stream_id)) == 3


# ------------------------------------------------------------------------------------------- helpers
def test_public_source_hides_the_srt_passphrase_only() -> None:
    assert public_source(URL) == URL
    assert public_source("srt://cam.lan:9000?streamid=cam1&passphrase=s3cr3t-pass") == \
        "srt://cam.lan:9000?streamid=cam1&passphrase=***"
    assert "s3cr3t" not in public_source("srt://cam.lan:9000?passphrase=s3cr3t-pass")


def test_frame_lines_counts_complete_lines_only(tmp_path: Path) -> None:
    path = tmp_path / "masks.ndjson"
    assert frame_lines(path) == 0
    path.write_text('{"frame_index":0}\n{"frame_index":1}\n{"frame_')
    assert frame_lines(path) == 2
