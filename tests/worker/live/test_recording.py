"""A recorded live session kept as a job: invisible while it runs (no record: nothing lists, leases or
redelivers it), written once when it ends (kind "live", already finished, its masks committed), nothing left when
its client vanished (`discard`), and the leftovers of a killed worker swept at the next start (`sweep_orphans`).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from worker.core.contracts import ErrorCode, JobStatus
from worker.core.job_record import JobOptions, JobRecord, new_job_id
from worker.core.jobstore import JobNotFound, JobStore
from worker.core.media.media_info import MediaLimits
from worker.live.recording import MARKER, STREAM_COPY, Recording, sweep_orphans
from worker.live.session import LiveStats
from worker.masks import mask_records, read_mask_lines

StoreFactory = Callable[..., JobStore]  # the `make_store` fixture (tests/conftest.py)

LIMITS = MediaLimits()


@pytest.fixture
def store(tmp_path: Path, make_store: StoreFactory) -> JobStore:
    return make_store(tmp_path / "data")


def _live_records(n: int, start: int = 0, size: tuple[int, int] = (12, 16)) -> list[dict]:
    """What a session hands to `on_record`: mask records plus the live-only fields."""
    masks = np.zeros((n, *size), dtype=np.uint8)
    for i in range(n):
        masks[i, :, : i + 1] = 1  # a different mask per frame
    records = mask_records(masks, start_index=start, pts_s=[(start + i) * 0.04 for i in range(n)],
                           class_names=("sounding",))
    return [{"type": "mask", **record, "latency_ms": 12.5 + i} for i, record in enumerate(records)]


def _summary(processed: int, received: int | None = None) -> dict:
    stats = LiveStats(frames_received=received if received is not None else processed, frames_processed=processed)
    stats.frames_dropped = stats.frames_received - processed
    stats.latencies_ms.extend([10.0, 20.0, 30.0][:processed])
    return stats.summary()


def test_a_running_recording_is_invisible_to_the_store(store: JobStore) -> None:
    job_id = new_job_id()
    recording = Recording(store, job_id, threshold=None, overlay=False)
    for record in _live_records(3):
        recording.write(record)
    assert recording.dir == store.job_dir(job_id)
    assert (recording.dir / MARKER).is_file()
    assert not store.has_record(job_id)
    assert not store.masks_path(job_id).exists()  # only the .partial file while it runs
    assert list(store.list_ids()) == []
    assert list(store.records()) == []
    with pytest.raises(JobNotFound):
        store.get(job_id)
    assert recording.copy_path == recording.dir / STREAM_COPY  # the stream is kept while it runs
    # a pulled network stream without overlay is not copied: the copy would stop it from reconnecting
    assert Recording(store, new_job_id(), threshold=None, overlay=False, keep_video=False).copy_path is None


def test_finish_commits_the_masks_and_writes_a_finished_live_record(store: JobStore) -> None:
    job_id = new_job_id()
    recording = Recording(store, job_id, threshold=0.7, overlay=False)
    written = _live_records(4, start=3)
    for record in written:
        recording.write(record)
    summary = {"type": "end", **_summary(4, received=6)}
    before = time.time()
    record = recording.finish(summary, None, num_classes=1, limits=LIMITS)

    assert record.kind == "live"
    assert record.status is JobStatus.SUCCEEDED
    assert record.error is None
    assert record.finished
    assert record.options == JobOptions(threshold=0.7, overlay=False)
    assert record.progress.frames_done == record.progress.frames_total == 4
    assert record.live == {k: v for k, v in summary.items() if k != "type"}
    assert record.live["frames_received"] == 6
    assert record.live["frames_dropped"] == 2
    assert record.live["frames_skipped_by_rate"] == 0
    assert record.live["dropped"] == {"late": 2}
    assert record.created_at <= record.started_at <= record.finished_at
    assert before <= record.finished_at <= time.time()
    assert record.owner is None  # nothing for the reconciler to take over
    assert record.lease_expires_at is None

    assert store.get(job_id) == record
    assert list(store.list_ids()) == [job_id]
    assert not (recording.dir / MARKER).exists()
    lines = list(read_mask_lines(store.masks_path(job_id)))
    assert lines == [{k: v for k, v in r.items() if k not in ("type", "latency_ms")} for r in written]
    assert [line["frame_index"] for line in lines] == [3, 4, 5, 6]
    assert not store.masks_path(job_id).with_name("masks.ndjson.partial").exists()
    assert sweep_orphans(store, older_than_s=0, now=time.time() + 3600) == []  # a finished one is never swept


def test_finish_with_an_error_keeps_the_masks_made_so_far(store: JobStore) -> None:
    job_id = new_job_id()
    recording = Recording(store, job_id, threshold=None, overlay=False)
    for record in _live_records(2):
        recording.write(record)
    record = recording.finish(_summary(2), ("idle_timeout", "no media for 10 s"), num_classes=1, limits=LIMITS)
    assert record.status is JobStatus.FAILED
    assert record.error is not None
    assert (record.error.code, record.error.message) == ("idle_timeout", "no media for 10 s")
    again = store.get(job_id)
    assert again.status is JobStatus.FAILED
    assert again.error == record.error
    assert len(list(read_mask_lines(store.masks_path(job_id)))) == 2
    assert not (recording.dir / MARKER).exists()


def test_a_session_without_frames_is_recorded_with_empty_masks(store: JobStore) -> None:
    recording = Recording(store, new_job_id(), threshold=None, overlay=False)
    record = recording.finish(_summary(0), None, num_classes=1, limits=LIMITS)
    assert record.status is JobStatus.SUCCEEDED
    assert record.progress.frames_done == 0
    assert store.masks_path(record.job_id).read_text() == ""


def test_the_stream_copy_is_removed_and_no_overlay_drawn_without_frames_or_on_failure(store: JobStore) -> None:
    for summary, error, status in [(_summary(0), None, JobStatus.SUCCEEDED),
                                   (_summary(3), ("client_gone", "gone"), JobStatus.FAILED)]:
        recording = Recording(store, new_job_id(), threshold=None, overlay=True)
        assert recording.copy_path == recording.dir / STREAM_COPY
        recording.copy_path.write_bytes(b"not even a stream")  # never read: nothing to draw, or failed anyway
        record = recording.finish(summary, error, num_classes=1, limits=LIMITS)
        assert record.status is status
        assert record.options.overlay
        assert not recording.copy_path.exists()
        assert not store.overlay_path(record.job_id).exists()


def test_an_unreadable_stream_copy_fails_the_recording_but_keeps_its_masks(store: JobStore) -> None:
    recording = Recording(store, new_job_id(), threshold=None, overlay=True)
    for record in _live_records(3):
        recording.write(record)
    assert recording.copy_path is not None
    recording.copy_path.write_bytes(b"\x1aE\xdf\xa3" + os.urandom(2000))  # a Matroska magic, then garbage
    record = recording.finish(_summary(3), None, num_classes=1, limits=LIMITS)
    assert record.status is JobStatus.FAILED
    assert record.error is not None
    assert record.error.message.startswith("overlay: ")
    assert record.error.code in {code.value for code in ErrorCode}
    assert len(list(read_mask_lines(store.masks_path(record.job_id)))) == 3
    assert not recording.copy_path.exists()
    assert not store.overlay_path(record.job_id).exists()
    assert store.get(record.job_id).status is JobStatus.FAILED


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_a_recorded_overlay_is_drawn_from_the_stream_copy(store: JobStore) -> None:
    from worker.media.samples import make_video

    recording = Recording(store, new_job_id(), threshold=None, overlay=True)
    assert recording.copy_path is not None
    make_video(recording.copy_path, container="mkv", duration_s=0.6, size=(32, 24), fps=10)
    for record in _live_records(3, start=0, size=(24, 32)):  # masks for some frames only (the others held)
        recording.write(record)
    record = recording.finish(_summary(3, received=6), None, num_classes=1, limits=LIMITS)
    assert record.status is JobStatus.SUCCEEDED, record.error
    assert store.overlay_path(record.job_id).stat().st_size > 0
    # the video is kept as the job's (#23): probed, with a preview the page plays
    assert recording.copy_path.is_file()
    assert record.upload is not None
    assert record.upload.path == STREAM_COPY
    assert record.media is not None
    assert (record.media.width, record.media.height) == (32, 24)
    assert record.preview == "preview.mp4"
    assert (recording.dir / "preview.mp4").stat().st_size > 0
    assert store.get(record.job_id) == record


def test_an_unreadable_stream_copy_without_overlay_only_drops_the_video(store: JobStore) -> None:
    recording = Recording(store, new_job_id(), threshold=None, overlay=False, key_id="abc")
    for record in _live_records(3):
        recording.write(record)
    assert recording.copy_path is not None
    recording.copy_path.write_bytes(b"\x1aE\xdf\xa3" + os.urandom(2000))
    record = recording.finish(_summary(3), None, num_classes=1, limits=LIMITS)
    assert record.status is JobStatus.SUCCEEDED
    assert (record.media, record.upload, record.preview) == (None, None, None)
    assert record.api_key_id == "abc"
    assert not recording.copy_path.exists()


def test_discard_leaves_nothing(store: JobStore) -> None:
    job_id = new_job_id()
    recording = Recording(store, job_id, threshold=None, overlay=True)
    for record in _live_records(2):
        recording.write(record)
    assert recording.copy_path is not None
    recording.copy_path.write_bytes(b"x")
    recording.discard()
    assert not store.job_dir(job_id).exists()
    assert list(store.root.iterdir()) == []


def test_a_session_id_is_never_reused(store: JobStore) -> None:
    job_id = new_job_id()
    Recording(store, job_id, threshold=None, overlay=False)
    with pytest.raises(FileExistsError):
        Recording(store, job_id, threshold=None, overlay=False)


def test_sweep_removes_only_stale_unfinished_recordings(store: JobStore) -> None:
    now = time.time()
    old = now - 7200

    stale = Recording(store, new_job_id(), threshold=None, overlay=False)  # its worker died an hour ago
    stale.write(_live_records(1)[0])
    os.utime(stale.dir / MARKER, (old, old))

    fresh = Recording(store, new_job_id(), threshold=None, overlay=False)  # running right now

    finished = Recording(store, new_job_id(), threshold=None, overlay=False)
    finished.finish(_summary(0), None, num_classes=1, limits=LIMITS)

    recorded_marker = store.job_dir(new_job_id())  # a marker beside a record: the record wins
    recorded_marker.mkdir()
    (recorded_marker / MARKER).touch()
    os.utime(recorded_marker / MARKER, (old, old))
    store.create(JobRecord(job_id=recorded_marker.name, kind="live", status=JobStatus.SUCCEEDED))

    file_job = store.create(JobRecord(job_id=new_job_id()))  # an ordinary (old) file job
    upload_dir = store.job_dir(new_job_id())  # an upload being received: a directory without a record
    upload_dir.mkdir()
    (upload_dir / "upload.mp4").write_bytes(b"...")
    os.utime(upload_dir, (old, old))
    (store.root / ".admission.lock").touch()  # files in the root are not jobs

    removed = sweep_orphans(store, older_than_s=3600, now=now)

    assert removed == [stale.dir.name]
    assert not stale.dir.exists()
    for kept in (fresh.dir, finished.dir, recorded_marker, store.job_dir(file_job.job_id), upload_dir):
        assert kept.is_dir(), kept
    assert (store.root / ".admission.lock").exists()
    assert sorted(store.list_ids()) == sorted([finished.job_id, recorded_marker.name, file_job.job_id])
    # the fresh one goes too once it is old enough
    assert sweep_orphans(store, older_than_s=3600, now=now + 7200) == [fresh.dir.name]
    assert store.get(finished.job_id).kind == "live"


def _frame_times(path: Path) -> list[float]:
    """The presentation times (s) of a file's video frames, as ffprobe reads them."""
    import subprocess

    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time",
                          "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout
    return [float(line.strip().strip(",")) for line in out.splitlines() if line.strip()]


def test_the_preview_puts_the_first_mask_at_0_s_and_mask_n_at_its_pts_minus_the_first(store: JobStore) -> None:
    """The page maps media time t to the mask with pts_s - pts_s(first) <= t: a recording whose first frames have
    no mask, whose masks skip frames, and whose session clock is not the stream copy's (here 12.3 ms apart),
    still gets a preview with mask N's frame at exactly pts_s N - pts_s 0 and its first frame at 0 s."""
    from worker.media.samples import make_video

    recording = Recording(store, new_job_id(), threshold=None, overlay=False)
    assert recording.copy_path is not None
    make_video(recording.copy_path, container="mkv", duration_s=1.0, size=(32, 24), fps=10)
    copy_times = _frame_times(recording.copy_path)
    own = [2, 4, 7]  # frames 0-1 before the first mask, the others held
    records = [r for i in own for r in _live_records(1, start=i, size=(24, 32))]
    for record in records:
        record["pts_s"] = round(copy_times[record["frame_index"]] + 0.0123, 6)
        recording.write(record)
    record = recording.finish(_summary(3, received=len(copy_times)), None, num_classes=1, limits=LIMITS)
    assert record.preview == "preview.mp4"
    times = _frame_times(recording.dir / "preview.mp4")
    assert len(times) == len(copy_times) - own[0]  # every frame from the first mask's on
    assert times[0] == 0.0
    t0 = records[0]["pts_s"]
    for record_, index in zip(records, own, strict=True):
        assert abs(times[index - own[0]] - (record_["pts_s"] - t0)) < 2e-6
    assert times == sorted(set(times))
