"""The job record: its one shape (`JobRecord`, stored in Redis), validated on every read and every change."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from worker.core.contracts import JobStatus
from worker.core.job_record import JobOptions, JobRecord, UploadInfo, is_job_id, new_job_id
from worker.core.jobstore import JobNotFound, JobStore
from worker.core.media.media_info import MediaInfo

StoreFactory = Callable[..., JobStore]  # the `make_store` fixture (tests/conftest.py)

INFO = MediaInfo(path="/api/side/upload.mp4", format_name="mov,mp4", demuxer="mov", width=64, height=48,
                 coded_width=64, coded_height=48, rotation=0, fps=25.0, duration_s=1.0, start_time_s=0.0,
                 num_frames=25, video_codec="h264", has_audio=True, audio_codec="aac", audio_sample_rate=44100,
                 audio_channels=1, video_stream_index=0, audio_stream_index=1, audio_tracks=1,
                 sample_aspect_ratio=(4, 3))


def test_a_record_round_trips_through_the_store(tmp_path: Path, make_store: StoreFactory) -> None:
    store = make_store(tmp_path)
    record = JobRecord(job_id=new_job_id(), options=JobOptions(fps=5.0, overlay=True), media=INFO,
                       upload=UploadInfo(filename="a.mp4", bytes=10, path="upload.mp4"))
    store.create(record)
    again = store.get(record.job_id)
    assert again == record
    assert again.media == INFO  # the full probe result, tuples and all
    assert again.media_info(Path("/worker/side/jobs/x")).path == "/worker/side/jobs/x/upload.mp4"
    assert again.video_summary()["display_aspect_ratio"] == pytest.approx(64 * 4 / (48 * 3))


def test_changes_are_validated_where_they_are_made(tmp_path: Path, make_store: StoreFactory) -> None:
    store = make_store(tmp_path)
    job_id = store.create(JobRecord(job_id=new_job_id())).job_id
    store.set_fields(job_id, status="running", progress={"frames_done": 3, "frames_total": 9})
    assert store.get(job_id).status is JobStatus.RUNNING
    assert store.get(job_id).progress.frames_done == 3
    with pytest.raises(ValidationError):
        store.set_fields(job_id, status="exploded")
    with pytest.raises(ValidationError):
        store.set_fields(job_id, progress={"frames_done": -1})
    assert store.get(job_id).status is JobStatus.RUNNING  # a refused change is not written


@pytest.mark.parametrize("options", [{"fps": 0}, {"fps": 241}, {"threshold": 1.0}, {"threshold": 0}])
def test_options_keep_their_rules(options: dict) -> None:
    with pytest.raises(ValidationError):
        JobOptions(**options)


def test_one_job_id_rule(tmp_path: Path, make_store: StoreFactory) -> None:
    assert is_job_id(new_job_id())
    for bad in ("../../etc", "ABCDEF" * 6, "0" * 31, "0" * 33, "g" * 32, ""):
        assert not is_job_id(bad)
        with pytest.raises(JobNotFound):
            make_store(tmp_path).job_dir(bad)
        with pytest.raises(ValidationError):
            JobRecord(job_id=bad)


def test_unknown_fields_are_ignored_and_a_broken_record_is_a_clear_error(tmp_path: Path,
                                                                          make_store: StoreFactory) -> None:
    store = make_store(tmp_path)
    job_id = store.create(JobRecord(job_id=new_job_id())).job_id
    key = store._key(job_id)  # the record as stored in Redis, edited behind the store's back
    data = json.loads(store.client.get(key))
    store.client.set(key, json.dumps({**data, "written_by_a_newer_version": 1}))
    assert store.get(job_id).job_id == job_id
    store.client.set(key, json.dumps({**data, "status": 7}))
    with pytest.raises(ValueError, match="unreadable record"):
        store.get(job_id)
