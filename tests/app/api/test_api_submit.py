"""POST /segment through TestClient: the accepted path, every refusal, and what is left on disk."""

from __future__ import annotations

import base64
import errno
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from api_support import FailingSender, Recorder, add_job, job_dirs, multipart, run
from fastapi.testclient import TestClient

from app.api.main import create_app
from worker.core.contracts import TASK_SEGMENT, JobStatus
from worker.core.job_record import JobRecord
from worker.core.jobstore import JobStore
from worker.core.leases import reconcile
from worker.core.settings import ServiceSettings
from worker.core.state import open_store

REDIS_URL = "redis://127.0.0.1:6379/15"


def _stored(settings: ServiceSettings, job_id: str) -> dict:
    """The job's record as the store holds it (in the state Redis), as JSON."""
    return open_store(settings).get(job_id).model_dump(mode="json")


def _post(client: TestClient, path: Path, name: str | None = None, **fields: str):
    with open(path, "rb") as fh:
        return client.post("/segment", files={"file": (name or path.name, fh, "application/octet-stream")},
                           data=fields)


def _redis_available() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1).ping())
    except Exception:
        return False


def test_submit_accepts_a_video_and_queues_only_the_id(client: TestClient, recorder: Recorder,
                                                        settings: ServiceSettings, media: dict[str, Path]) -> None:
    response = _post(client, media["ok"], "../../holiday clip.MP4", fps="10", threshold="0.4", overlay="true",
                     confidence="yes")
    assert response.status_code == 202, response.text
    body = response.json()
    job_id = body["job_id"]
    assert len(job_id) == 32
    assert int(job_id, 16) >= 0
    assert response.headers["location"] == f"/jobs/{job_id}"
    assert body == {"job_id": job_id, "status": "queued", "status_url": f"/jobs/{job_id}",
                    "masks_url": f"/jobs/{job_id}/masks", "overlay_url": f"/jobs/{job_id}/overlay.mp4"}
    assert recorder.calls == [(job_id,)]  # the message carries the id, nothing else

    job_dir = settings.data_dir / "jobs" / job_id
    upload = job_dir / "upload.mp4"  # the extension comes from the allow-list, lower-cased
    assert upload.read_bytes() == media["ok"].read_bytes()
    record = _stored(settings, job_dir.name)
    assert record["status"] == "queued"
    assert record["options"] == {"fps": 10.0, "threshold": 0.4, "overlay": True, "confidence": True}
    assert record["upload"] == {"filename": "holiday clip.MP4", "bytes": media["ok"].stat().st_size,
                                "path": "upload.mp4"}
    media_info = record["media"]  # the full probe result, stored once: the worker does not probe again
    assert (media_info["width"], media_info["height"]) == (64, 48)
    assert media_info["fps"] == pytest.approx(25.0)
    assert media_info["duration_s"] == pytest.approx(1.0, abs=0.1)
    assert media_info["num_frames"] == 25
    assert media_info["audio_stream_index"] == 1
    assert record["progress"] == {"frames_done": 0, "frames_total": 10}  # 1 s resampled to 10 frames/s
    assert JobRecord.model_validate(record).media_info(job_dir).path == str(upload)


def test_submit_defaults_and_unknown_extension(client: TestClient, recorder: Recorder, settings: ServiceSettings,
                                               media: dict[str, Path]) -> None:
    response = _post(client, media["ok"], "video.exe")
    assert response.status_code == 202, response.text
    body = response.json()
    assert "overlay_url" not in body
    job_dir = settings.data_dir / "jobs" / body["job_id"]
    assert (job_dir / "upload.bin").is_file()  # the content decides, not the name
    record = _stored(settings, job_dir.name)
    assert record["options"] == {"fps": None, "threshold": None, "overlay": False, "confidence": False}
    assert record["progress"]["frames_total"] == 25


@pytest.mark.parametrize(("clip", "status", "code"), [
    ("text", 415, "not_media"),
    ("no_audio", 422, "no_audio_track"),
    ("audio_only", 422, "no_video_stream"),
    ("truncated", 422, "corrupt_media"),
])
def test_media_refusals_leave_nothing(client: TestClient, recorder: Recorder, settings: ServiceSettings,
                                      media: dict[str, Path], clip: str, status: int, code: str) -> None:
    response = _post(client, media[clip])
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert str(settings.data_dir) not in error["message"]  # no server paths in messages
    assert job_dirs(settings) == []
    assert recorder.calls == []


@pytest.mark.parametrize(("limits", "code"), [({"max_duration_s": 2.0}, "too_long"),
                                              ({"max_pixels": 64 * 48 - 1}, "too_many_pixels")])
def test_media_limits_from_settings(make_settings: Callable[..., ServiceSettings], media: dict[str, Path],
                                    limits: dict[str, float], code: str) -> None:
    settings = make_settings(**limits)
    recorder = Recorder()
    with TestClient(create_app(settings, task_sender=recorder)) as client:
        response = _post(client, media["long"])
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code
    assert job_dirs(settings) == []
    assert recorder.calls == []


def test_too_large_by_content_length_and_by_streamed_bytes(make_settings: Callable[..., ServiceSettings],
                                                           media: dict[str, Path]) -> None:
    settings = make_settings(max_upload_bytes=1000)
    recorder = Recorder()
    with TestClient(create_app(settings, task_sender=recorder)) as client:
        response = _post(client, media["ok"])  # Content-Length says it all
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "too_large"

        def chunks():  # no Content-Length: the cap is enforced on the streamed bytes
            body = multipart({}, ("a.mp4", b"\0" * 5000))
            for i in range(0, len(body), 512):
                yield body[i:i + 512]

        response = client.post("/segment", content=chunks(),
                               headers={"Content-Type": "multipart/form-data; boundary=avsboundary"})
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "too_large"
    assert job_dirs(settings) == []
    assert recorder.calls == []


@pytest.mark.parametrize(("fields", "file", "fragment"), [
    ({"fps": "0"}, True, "fps"),
    ({"fps": "fast"}, True, "fps"),
    ({"fps": "nan"}, True, "fps"),
    ({"threshold": "1"}, True, "threshold"),
    ({"threshold": "-0.1"}, True, "threshold"),
    ({"overlay": "maybe"}, True, "overlay"),
    ({"confidence": "2"}, True, "confidence"),
    ({"colour": "red"}, True, "unknown form field"),
    ({"fps": "1" * 2000}, True, "longer than"),
    ({}, False, "no `file` part"),
])
def test_bad_form_is_invalid_request(client: TestClient, recorder: Recorder, settings: ServiceSettings,
                                     media: dict[str, Path], fields: dict[str, str], file: bool,
                                     fragment: str) -> None:
    content = multipart(fields, ("ok.mp4", media["ok"].read_bytes()) if file else None)
    response = client.post("/segment", content=content,
                           headers={"Content-Type": "multipart/form-data; boundary=avsboundary"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert fragment in error["message"]
    assert job_dirs(settings) == []
    assert recorder.calls == []


def test_not_multipart_and_truncated_multipart(client: TestClient, settings: ServiceSettings) -> None:
    response = client.post("/segment", content=b"raw bytes", headers={"Content-Type": "video/mp4"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"
    body = multipart({}, ("a.mp4", b"\0" * 100))
    response = client.post("/segment", content=body[:-30],
                           headers={"Content-Type": "multipart/form-data; boundary=avsboundary"})
    assert response.status_code == 422
    assert "incomplete" in response.json()["error"]["message"]
    assert job_dirs(settings) == []


def test_backlog_full_is_429_with_retry_after(make_settings: Callable[..., ServiceSettings],
                                               media: dict[str, Path]) -> None:
    settings = make_settings(max_backlog=2, retry_after_s=11)
    store = open_store(settings)
    add_job(store, JobStatus.RUNNING)  # running jobs are not backlog
    add_job(store)
    recorder = Recorder()
    with TestClient(create_app(settings, task_sender=recorder)) as client:
        assert _post(client, media["ok"]).status_code == 202  # 1 queued < 2
        before = set(job_dirs(settings))
        response = _post(client, media["ok"])  # 2 queued >= 2
        assert response.status_code == 429
        assert response.headers["retry-after"] == "11"
        assert response.json()["error"]["code"] == "backlog_full"
    assert set(job_dirs(settings)) == before
    assert len(recorder.calls) == 1


def test_broker_down_fails_the_job_and_answers_503(make_settings: Callable[..., ServiceSettings],
                                                    media: dict[str, Path]) -> None:
    settings = make_settings()
    with TestClient(create_app(settings, task_sender=FailingSender())) as client:
        response = _post(client, media["ok"])
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "not_ready"
    (job_dir,) = job_dirs(settings)
    record = _stored(settings, job_dir.name)
    assert record["status"] == "failed"  # never an accepted-but-unsent job
    assert record["error"]["code"] == "not_ready"
    assert record["finished_at"] is not None
    assert not (job_dir / "upload.mp4").exists()


class FullDiskSender:
    """The broker refuses the message for lack of disk space, as a send to a full volume does (an ENOSPC of
    the writer, or Redis's `MISCONF Errors writing to the AOF file: No space left on device`)."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def __call__(self, job_id: str) -> None:
        raise self.exc


def _nothing_to_send(settings: ServiceSettings) -> None:
    """The reconciler finds nothing to send, now or later: a refused job never runs."""
    sends = Recorder()
    reconcile(open_store(settings), sends, lease_timeout_s=30, unsent_grace_s=0, unsent_give_up_s=1e9,
              untaken_grace_s=0, waiting=set, now=time.time() + 3600)
    assert sends.calls == []


AOF_FULL = "MISCONF Errors writing to the AOF file: No space left on device"


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"), redis.ResponseError(AOF_FULL)],
                         ids=["enospc", "redis-aof"])
def test_a_full_disk_at_the_send_is_507_and_the_job_never_runs(make_settings: Callable[..., ServiceSettings],
                                                              media: dict[str, Path], exc: Exception) -> None:
    """Issue #27: a send refused for lack of space answered 500 and left a queued record that the reconciler
    later ran for a client that never got its id."""
    settings = make_settings()
    with TestClient(create_app(settings, task_sender=FullDiskSender(exc))) as client:
        response = _post(client, media["ok"])
    assert response.status_code == 507, response.text
    assert response.json()["error"]["code"] == "storage_full"
    assert response.headers["Retry-After"] == "7"
    (job_dir,) = job_dirs(settings)
    record = _stored(settings, job_dir.name)
    assert (record["status"], record["error"]["code"]) == ("failed", "storage_full")
    _nothing_to_send(settings)


def test_when_even_the_refusal_cannot_be_written_the_job_folder_goes(make_settings: Callable[..., ServiceSettings],
                                                                     media: dict[str, Path],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The send fails with ENOSPC and so does the small write that marks the job failed: no queued record may
    stay behind (it would be sent again and run)."""
    settings = make_settings()
    write = JobStore.write

    def write_unless_failing(self: JobStore, record: JobRecord) -> None:
        if record.status is JobStatus.FAILED:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(self, record)

    monkeypatch.setattr(JobStore, "write", write_unless_failing)
    sender = FullDiskSender(OSError(errno.ENOSPC, "No space left on device"))
    with TestClient(create_app(settings, task_sender=sender)) as client:
        response = _post(client, media["ok"])
    assert response.status_code == 507, response.text
    assert response.json()["error"]["code"] == "storage_full"
    assert job_dirs(settings) == []
    _nothing_to_send(settings)


def test_a_send_that_only_seemed_to_fail_is_accepted(make_settings: Callable[..., ServiceSettings],
                                                     media: dict[str, Path]) -> None:
    """The broker took the message but answered too late; a worker already runs the job: the client is told
    202, never an error for a job that runs."""
    settings = make_settings()

    def slow_but_delivered(job_id: str) -> None:
        run(open_store(settings), job_id)
        raise TimeoutError("the broker answered too late")

    with TestClient(create_app(settings, task_sender=slow_but_delivered)) as client:
        response = _post(client, media["ok"])
    assert response.status_code == 202, response.text
    assert _stored(settings, job_dirs(settings)[0].name)["status"] == "running"


def test_real_celery_sender_with_broker_down(make_settings: Callable[..., ServiceSettings],
                                             media: dict[str, Path]) -> None:
    settings = make_settings(broker_url="redis://127.0.0.1:1/0")  # nothing listens on port 1
    with TestClient(create_app(settings)) as client:
        response = _post(client, media["ok"])
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "not_ready"
    (job_dir,) = job_dirs(settings)
    assert _stored(settings, job_dir.name)["status"] == "failed"


@pytest.mark.skipif(not _redis_available(), reason="no Redis on 127.0.0.1:6379")
def test_real_celery_sender_puts_only_the_id_on_redis(make_settings: Callable[..., ServiceSettings],
                                                      media: dict[str, Path]) -> None:
    settings = make_settings(broker_url=REDIS_URL)
    app = create_app(settings)
    queue = f"avs-api-test-{uuid.uuid4().hex}"  # a private queue: never disturb other users of the db
    app.state.task_sender._app().conf.task_default_queue = queue
    conn = redis.Redis.from_url(REDIS_URL)
    try:
        with TestClient(app) as client:
            response = _post(client, media["ok"])
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        messages = conn.lrange(queue, 0, -1)
        assert len(messages) == 1
        message = json.loads(messages[0])
        assert message["headers"]["task"] == TASK_SEGMENT
        args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        assert (args, kwargs) == ([job_id], {})
        assert len(messages[0]) < 10_000  # ids, never video bytes
    finally:
        conn.delete(queue)


@pytest.mark.parametrize(("content_type", "body"), [
    ("multipart/form-data; boundary=" + "b" * 1_000_000, b"--x\r\n"),  # RFC 2046 allows 70 characters
    ("multipart/form-data; boundary=" + "b" * 71, b"--x\r\n"),
    ("multipart/form-data; boundary=a\x01b", b"--x\r\n"),
    ("multipart/form-data; boundary=avsboundary", b"--avsboundary\r\n\xff\xfe\r\n\r\n--avsboundary--"),
    ("multipart/form-data; boundary=avsboundary", b"--avsboundary\r\nContent-Disposition: form-data\r\n\r\nx\r\n"),
    ("multipart/form-data; boundary=avsboundary", b"\x00" * 4096),
    ('multipart/form-data; boundary="unterminated', b"--x\r\n"),
])
def test_malformed_multipart_of_any_kind_is_invalid_request(client: TestClient, settings: ServiceSettings,
                                                            content_type: str, body: bytes) -> None:
    response = client.post("/segment", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert job_dirs(settings) == []
