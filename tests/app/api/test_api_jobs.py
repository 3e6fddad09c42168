"""Job resources through TestClient: GET record, 404s, masks (finished and followed), overlay, DELETE."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from api_support import add_job, mask_line, run
from fastapi.testclient import TestClient

from worker.core.contracts import JobStatus
from worker.core.jobstore import JobStore
from worker.core.settings import ServiceSettings
from worker.core.state import open_store

VIEW_KEYS = {"job_id", "status", "progress", "video", "timings", "error", "created_at", "started_at", "finished_at",
             "options", "urls", "attempts", "cancel_requested", "deleted", "kind", "live", "source", "eta_s",
             "created_at_iso", "started_at_iso", "finished_at_iso", "effective_threshold", "media", "exports_url",
             "filename"}


@pytest.fixture
def store(settings: ServiceSettings) -> JobStore:
    return open_store(settings)


def _ndjson(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def _frames_and_end(text: str) -> tuple[list[int], dict]:
    """(frame indexes, the end line) of a complete mask stream; the end line must come last, once."""
    *frames, end = _ndjson(text)
    assert end.pop("end") is True
    assert all("end" not in r for r in frames)
    return [r["frame_index"] for r in frames], end


def _end(status: str, frames: int, *, error: dict | None = None, deleted: bool = False) -> dict:
    return {"status": status, "frames": frames, "error": error, "deleted": deleted}


def test_get_job_record_shape(client: TestClient, store: JobStore, media: dict[str, Path]) -> None:
    with open(media["ok"], "rb") as fh:
        job_id = client.post("/segment", files={"file": ("../my clip.mp4", fh)},
                             data={"overlay": "1"}).json()["job_id"]
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 200
    view = response.json()
    assert set(view) == VIEW_KEYS
    assert view["status"] == "queued"
    assert view["progress"] == {"frames_done": 0, "frames_total": 25}
    assert set(view["video"]) == {"width", "height", "fps", "duration_s", "frames", "start_time_s", "rotation",
                                  "sample_aspect_ratio", "display_aspect_ratio", "container", "video_codec",
                                  "video_stream_index", "audio"}
    assert (view["video"]["frames"], view["video"]["container"], view["video"]["sample_aspect_ratio"]) == (
        25, "mov", [1, 1])
    assert view["video"]["audio"] == {"stream_index": 1, "codec": "aac", "sample_rate": 44100, "channels": 1,
                                      "language": None, "tracks": 1}
    assert view["error"] is None
    assert view["started_at"] is None
    assert view["finished_at"] is None
    assert view["created_at"] == pytest.approx(time.time(), abs=60)
    assert view["options"] == {"fps": None, "threshold": None, "overlay": True, "confidence": False}
    assert view["urls"] == {"status": f"/jobs/{job_id}", "masks": f"/jobs/{job_id}/masks",
                            "overlay": f"/jobs/{job_id}/overlay.mp4"}
    assert (view["cancel_requested"], view["deleted"]) == (False, False)
    assert (view["source"], view["eta_s"], view["effective_threshold"]) == ("upload", None, 0.5)
    assert view["filename"] == "my clip.mp4"  # the client's name, sanitised: no path
    # H.264 + AAC in MP4, not done yet
    assert view["media"] == {"browser_playable": True, "preview_url": None, "preview_start_s": None}
    assert view["exports_url"] == f"/jobs/{job_id}/exports"
    created = datetime.fromisoformat(view["created_at_iso"].replace("Z", "+00:00"))
    assert view["created_at_iso"].endswith("Z")
    assert created.timestamp() == pytest.approx(view["created_at"], abs=1e-3)
    assert (view["started_at_iso"], view["finished_at_iso"]) == (None, None)

    # what a worker reports shows up as is
    store.set_fields(job_id, status="failed", finished_at=time.time(), timings={"decode": 0.5},
                     error={"code": "corrupt_media", "message": "broken at frame 3"})
    view = client.get(f"/jobs/{job_id}").json()
    assert view["error"] == {"code": "corrupt_media", "message": "broken at frame 3"}
    assert view["timings"] == {"decode": 0.5}


@pytest.mark.parametrize("path", ["/jobs/{missing}", "/jobs/{missing}/masks", "/jobs/{missing}/overlay.mp4",
                                  "/jobs/not-a-job", "/jobs/..%2F..%2Fetc", "/jobs/ABCDEF", "/no/such/route"])
def test_unknown_is_404_not_found(client: TestClient, path: str) -> None:
    response = client.get(path.format(missing="0" * 32))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("job_id", ["f" * 32, "not-a-job", "ABCDEF"])
def test_delete_unknown_is_404(client: TestClient, job_id: str) -> None:
    response = client.delete(f"/jobs/{job_id}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_validation_errors_are_invalid_request(client: TestClient, store: JobStore) -> None:
    job_id = add_job(store, JobStatus.SUCCEEDED)
    response = client.get(f"/jobs/{job_id}/masks", params={"from_frame": "-1"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"
    assert "from_frame" in response.json()["error"]["message"]
    response = client.put(f"/jobs/{job_id}")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "invalid_request"


def test_masks_of_a_finished_job(client: TestClient, store: JobStore) -> None:
    job_id = add_job(store, JobStatus.SUCCEEDED, progress={"frames_done": 6, "frames_total": 6})
    store.masks_path(job_id).write_bytes(b"".join(mask_line(i) for i in range(6)))
    response = client.get(f"/jobs/{job_id}/masks")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert _frames_and_end(response.text) == ([0, 1, 2, 3, 4, 5], _end("succeeded", 6))
    response = client.get(f"/jobs/{job_id}/masks", params={"from_frame": 4})
    assert _frames_and_end(response.text) == ([4, 5], _end("succeeded", 6))
    response = client.get(f"/jobs/{job_id}/masks", params={"from_frame": 99})
    assert _frames_and_end(response.text) == ([], _end("succeeded", 6))


def test_masks_of_a_failed_job_are_what_was_kept_and_say_so(client: TestClient, store: JobStore) -> None:
    error = {"code": "corrupt_media", "message": "broken at frame 2"}
    job_id = add_job(store, JobStatus.FAILED, error=error, progress={"frames_done": 2, "frames_total": 25})
    store.masks_path(job_id).write_bytes(mask_line(0) + mask_line(1) + mask_line(2)[:20])  # a torn line: not sent
    response = client.get(f"/jobs/{job_id}/masks")
    assert response.status_code == 200
    assert response.text.startswith((mask_line(0) + mask_line(1)).decode())
    assert _frames_and_end(response.text) == ([0, 1], _end("failed", 2, error=error))


def test_masks_of_a_cancelled_job_count_the_frames_sent(client: TestClient, store: JobStore) -> None:
    """A job cancelled after 72 frames had its files removed: its end line says 0 frames, as it carries none
    (the record's progress still says how far it went)."""
    job_id = add_job(store, JobStatus.CANCELLED, progress={"frames_done": 72, "frames_total": 100})
    assert _frames_and_end(client.get(f"/jobs/{job_id}/masks").text) == ([], _end("cancelled", 0))
    assert client.get(f"/jobs/{job_id}").json()["progress"]["frames_done"] == 72


def test_masks_follow_a_job_advanced_in_the_background(client: TestClient, store: JobStore) -> None:
    """The worker's part is played by a thread: it starts the job, appends lines in pieces (a line cut
    in two across writes, a rewritten duplicate frame), then finishes it while the request is open."""
    job_id = add_job(store)
    path = store.masks_path(job_id)

    def worker() -> None:
        time.sleep(0.3)
        run(store, job_id)
        with open(path, "ab") as fh:
            for i in range(5):
                line = mask_line(i)
                fh.write(line[:15])
                fh.flush()
                time.sleep(0.25)  # > the 0.2 s poll: the half line is seen, and held back
                fh.write(line[15:])
                fh.flush()
                store.set_fields(job_id, progress={"frames_done": i + 1, "frames_total": 7})
            fh.write(mask_line(4))  # a redelivered batch rewrites a frame: it is not sent twice
            fh.write(mask_line(5) + mask_line(6))
        store.set_fields(job_id, status="succeeded", finished_at=time.time())

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        response = client.get(f"/jobs/{job_id}/masks", params={"from_frame": 2})
    finally:
        thread.join()
    assert response.status_code == 200
    *lines, end = response.text.splitlines(keepends=True)
    assert [json.loads(line)["frame_index"] for line in lines] == [2, 3, 4, 5, 6]
    assert "".join(lines).encode() == b"".join(mask_line(i) for i in range(2, 7))
    assert json.loads(end)["status"] == "succeeded"


def test_overlay(client: TestClient, store: JobStore) -> None:
    plain = add_job(store, JobStatus.SUCCEEDED)
    response = client.get(f"/jobs/{plain}/overlay.mp4")
    assert response.status_code == 404
    assert "not requested" in response.json()["error"]["message"]

    running = add_job(store, JobStatus.RUNNING, overlay=True)
    response = client.get(f"/jobs/{running}/overlay.mp4")
    assert response.status_code == 404
    assert "not ready yet" in response.json()["error"]["message"]

    done = add_job(store, JobStatus.SUCCEEDED, overlay=True)
    store.overlay_path(done).write_bytes(b"\0\0\0\x18ftypmp42 fake")
    response = client.get(f"/jobs/{done}/overlay.mp4")
    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    assert response.content == b"\0\0\0\x18ftypmp42 fake"


def test_delete_queued_cancels_at_once(client: TestClient, store: JobStore) -> None:
    job_id = add_job(store)
    response = client.delete(f"/jobs/{job_id}")
    assert response.status_code == 200
    view = response.json()
    assert set(view) == VIEW_KEYS
    assert (view["status"], view["deleted"], view["cancel_requested"]) == ("cancelled", True, True)
    assert view["finished_at"] is not None
    assert sorted(p.name for p in store.job_dir(job_id).iterdir()) == []  # media gone; the record is in Redis
    assert store.get(job_id).status == "cancelled"  # the worker reads this and skips the job


def test_delete_running_requests_cancellation(client: TestClient, store: JobStore) -> None:
    job_id = add_job(store, JobStatus.RUNNING)
    store.masks_path(job_id).write_bytes(mask_line(0))
    response = client.delete(f"/jobs/{job_id}")
    assert response.status_code == 202
    assert (response.json()["status"], response.json()["cancel_requested"]) == ("running", True)
    record = store.get(job_id)
    assert record.cancel_requested is True
    assert record.status == "running"
    assert store.masks_path(job_id).exists()  # the worker stops, then removes its own files


@pytest.mark.parametrize("status", [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED])
def test_delete_finished_keeps_a_tombstone(client: TestClient, store: JobStore, status: JobStatus) -> None:
    job_id = add_job(store, status, overlay=True)
    store.masks_path(job_id).write_bytes(mask_line(0))
    store.overlay_path(job_id).write_bytes(b"mp4")
    response = client.delete(f"/jobs/{job_id}")
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["deleted"]) == (status.value, True)
    assert response.json()["media"]["preview_url"] is None
    assert sorted(p.name for p in store.job_dir(job_id).iterdir()) == []  # media gone; the record is in Redis
    assert store.get(job_id).deleted is True  # the tombstone
    # every route of the job now says it was deleted, not that it succeeded with dead URLs
    for method, path in [("GET", ""), ("GET", "/masks"), ("GET", "/overlay.mp4"), ("GET", "/preview.mp4"),
                         ("GET", "/exports"), ("GET", "/exports/coco.json"), ("POST", "/exports/masks.zip"),
                         ("DELETE", "")]:
        response = client.request(method, f"/jobs/{job_id}{path}")
        assert (response.status_code, response.json()["error"]["code"]) == (410, "job_deleted"), (method, path)
    assert job_id not in [job["job_id"] for job in client.get("/jobs").json()["jobs"]]


def test_masks_follower_sees_the_delete_in_its_end_line(store: JobStore) -> None:
    """A client already following the stream when the job is deleted gets an end line that says so."""
    import asyncio

    from app.api import mask_stream

    job_id = add_job(store, JobStatus.RUNNING)
    store.masks_path(job_id).write_bytes(mask_line(0) + mask_line(1))

    async def run() -> bytes:
        stream = mask_stream.follow_masks(_ConnectedRequest(), store, job_id, 0, poll_s=0.01)
        got = [await stream.__anext__()]
        store.set_fields(job_id, status="cancelled", deleted=True)
        store.remove_files(job_id)
        got += [chunk async for chunk in stream]
        return b"".join(got)

    frames, end = _frames_and_end(asyncio.run(run()).decode())
    assert (frames, end) == ([0, 1], _end("cancelled", 2, deleted=True))


def test_list_jobs_newest_first_with_limit(client: TestClient, store: JobStore) -> None:
    ids = [add_job(store, JobStatus.SUCCEEDED, created_at=1000.0 + i) for i in range(3)]
    live = add_job(store, JobStatus.SUCCEEDED, created_at=2000.0, kind="live")
    gone = add_job(store, JobStatus.SUCCEEDED, created_at=3000.0, deleted=True)
    jobs = client.get("/jobs").json()["jobs"]
    assert [job["job_id"] for job in jobs] == [live, *reversed(ids)]
    assert gone not in [job["job_id"] for job in jobs]
    assert jobs[0]["source"] == "live"
    assert [job["job_id"] for job in client.get("/jobs", params={"limit": 2}).json()["jobs"]] == [live, ids[2]]
    assert client.get("/jobs", params={"limit": 0}).status_code == 422


def test_list_jobs_is_per_api_key(make_settings, recorder, media: dict[str, Path]) -> None:
    """With keys configured, each key sees the jobs it created, and only those."""
    from app.api.main import create_app

    settings = make_settings(api_keys=["k1", "k2"])
    with TestClient(create_app(settings, task_sender=recorder)) as client:
        posted = {}
        for key in ("k1", "k2", "k1"):
            with open(media["ok"], "rb") as fh:
                response = client.post("/segment", files={"file": ("ok.mp4", fh)}, headers={"X-API-Key": key})
            assert response.status_code == 202, response.text
            posted.setdefault(key, []).append(response.json()["job_id"])
        for key in ("k1", "k2"):
            listed = [job["job_id"] for job in client.get("/jobs", headers={"X-API-Key": key}).json()["jobs"]]
            assert sorted(listed) == sorted(posted[key])
        assert client.get("/jobs").status_code == 401


def test_eta_from_the_rate_so_far(client: TestClient, store: JobStore) -> None:
    job_id = add_job(store, JobStatus.RUNNING)
    store.set_fields(job_id, started_at=time.time() - 10.0, progress={"frames_done": 20, "frames_total": 100})
    view = client.get(f"/jobs/{job_id}").json()
    assert view["eta_s"] == pytest.approx(40.0, abs=1.0)  # 2 frames/s, 80 frames left
    assert view["started_at_iso"].endswith("Z")
    assert view["finished_at_iso"] is None
    store.set_fields(job_id, options={"threshold": 0.3})
    assert client.get(f"/jobs/{job_id}").json()["effective_threshold"] == 0.3


class _ConnectedRequest:
    async def is_disconnected(self) -> bool:
        return False


def test_follow_masks_survives_a_torn_line_rewritten_by_a_redelivered_worker(
        store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker killed mid-write leaves a torn line; the next worker truncates it and writes the frame
    again (maybe with other bytes). The stream sends each frame once, whole, from the new bytes. Reads
    are forced to 7 bytes, so every line is longer than one read."""
    import asyncio

    from app.api import mask_stream

    monkeypatch.setattr(mask_stream, "MASKS_READ_BYTES", 7)
    job_id = add_job(store, JobStatus.RUNNING)
    path = store.masks_path(job_id)
    first_try = mask_line(1).replace(b'"PQ', b'"ZZ')
    path.write_bytes(mask_line(0) + first_try[:25])

    async def run() -> list[bytes]:
        stream = mask_stream.follow_masks(_ConnectedRequest(), store, job_id, 0, poll_s=0.01)
        got = [await stream.__anext__()]
        with open(path, "r+b") as fh:  # the redelivered worker: cut the torn line, write frames 1 and 2
            fh.truncate(len(mask_line(0)))
            fh.seek(0, 2)
            fh.write(mask_line(1) + mask_line(2))
        store.set_fields(job_id, status="succeeded")
        got += [chunk async for chunk in stream]
        return got

    chunks = asyncio.run(run())
    *frames, end = b"".join(chunks).splitlines(keepends=True)
    assert b"".join(frames) == mask_line(0) + mask_line(1) + mask_line(2)
    assert json.loads(end)["status"] == "succeeded"
