"""Against a real uvicorn server (httpx and raw sockets): what TestClient cannot show.

The size cap while the body streams (chunked, no Content-Length; and a huge declared Content-Length
with a small body), the backlog refusal before the body, the cleanup when the client disconnects
mid-upload, a chunked upload that lands intact, and a mask stream that the client reads line by line
while a background "worker" is still producing it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from api_support import LiveServer, Recorder, add_job, job_dirs, mask_line, multipart, run

from app.api import prometheus
from app.api.body_drain import DRAIN_MAX_BYTES
from app.api.main import create_app
from worker.core.contracts import JobStatus
from worker.core.settings import ServiceSettings
from worker.core.state import open_store

CAP = 256 * 1024
MULTIPART = "multipart/form-data; boundary=avsboundary"


@pytest.fixture
def live(make_settings: Callable[..., ServiceSettings]) -> Iterator[tuple[LiveServer, ServiceSettings, Recorder]]:
    settings = make_settings(max_upload_bytes=CAP, max_backlog=3)
    recorder = Recorder()
    with LiveServer(create_app(settings, task_sender=recorder)) as server:
        yield server, settings, recorder


def _head(length: int | None, extra: str = "") -> bytes:
    lines = ["POST /segment HTTP/1.1", "Host: test", f"Content-Type: {MULTIPART}"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


_PREAMBLE = b'--avsboundary\r\nContent-Disposition: form-data; name="file"; filename="big.mp4"\r\n\r\n'


def test_chunked_upload_over_the_cap_is_cut_off_while_streaming(live) -> None:
    server, settings, recorder = live
    sent = 0
    limit = 512 << 20  # the generator would go on for 512 MiB: only an early refusal ends the test quickly

    def endless() -> Iterator[bytes]:
        nonlocal sent
        yield _PREAMBLE
        block = b"\0" * 65536
        while sent < limit:
            sent += len(block)
            yield block

    started = time.monotonic()
    response = httpx.post(f"{server.url}/segment", content=endless(), headers={"Content-Type": MULTIPART},
                          timeout=30)
    elapsed = time.monotonic() - started
    assert "content-length" not in response.request.headers  # really chunked
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    # what the server took: the cap, then at most the bounded read of what follows a refusal (app.api.body_drain,
    # so that a proxy still sending gets the answer), far from the 512 MiB the client would send
    assert sent < settings.max_upload_bytes + DRAIN_MAX_BYTES + (8 << 20), f"the server read {sent} bytes"
    assert elapsed < 10
    assert job_dirs(settings) == []
    assert recorder.calls == []


def test_huge_content_length_is_refused_before_the_body(live) -> None:
    server, settings, _recorder = live
    started = time.monotonic()
    # 10 GB declared, a few bytes sent, and the connection left open: the answer must not wait for the body.
    status, _, body = server.raw(_head(10_000_000_000) + _PREAMBLE + b"abc", timeout=5)
    assert time.monotonic() - started < 3
    assert status == 413
    assert json.loads(body)["error"]["code"] == "too_large"
    # the answer came before the body; the server then reads what follows for a bounded while (a proxy that
    # is still sending gets to read it: app.api.body_drain), which test_body_drain covers
    assert job_dirs(settings) == []


def test_backlog_full_is_refused_before_the_body(live) -> None:
    server, settings, _recorder = live
    store = open_store(settings)
    for _ in range(3):
        add_job(store)
    before = job_dirs(settings)
    status, headers, body = server.raw(_head(CAP), timeout=5)  # headers only, no body ever sent
    assert status == 429
    assert headers["retry-after"] == "7"
    assert json.loads(body)["error"]["code"] == "backlog_full"
    assert job_dirs(settings) == before


def test_client_disconnect_mid_upload_removes_the_partial_upload(live) -> None:
    server, settings, recorder = live
    aborted = prometheus.UPLOADS_ABORTED._value.get()
    conn = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    conn.sendall(_head(CAP) + _PREAMBLE + b"\0" * 100_000)
    deadline = time.monotonic() + 5
    while not any((d / "upload.mp4").exists() for d in job_dirs(settings)):  # the upload is being written
        assert time.monotonic() < deadline, "the upload never started"
        time.sleep(0.02)
    conn.close()  # gone, 100 kB into a 256 kB body
    deadline = time.monotonic() + 5
    while job_dirs(settings):
        assert time.monotonic() < deadline, "the partial upload was not removed"
        time.sleep(0.02)
    assert prometheus.UPLOADS_ABORTED._value.get() == aborted + 1
    assert recorder.calls == []


def test_chunked_upload_of_a_real_video_lands_intact(live, media: dict[str, Path]) -> None:
    server, settings, recorder = live
    body = multipart({"threshold": "0.3"}, ("clip.mkv", media["ok"].read_bytes()))

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(body), 1000):
            yield body[i:i + 1000]

    response = httpx.post(f"{server.url}/segment", content=pieces(), headers={"Content-Type": MULTIPART})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert response.headers["location"] == f"/jobs/{job_id}"
    assert (settings.data_dir / "jobs" / job_id / "upload.mkv").read_bytes() == media["ok"].read_bytes()
    assert recorder.calls == [(job_id,)]


def test_mask_stream_is_read_while_the_job_runs(live) -> None:
    """A thread plays the worker. The client must receive each complete line before the job finishes,
    a half-written line only once it is complete, and the stream must end when the job ends."""
    server, settings, recorder = live
    store = open_store(settings)
    job_id = add_job(store)
    path = store.masks_path(job_id)
    received: list[tuple[float, int]] = []
    got_first_two = threading.Event()
    events: dict[str, float] = {}

    def worker() -> None:
        run(store, job_id)
        with open(path, "ab") as fh:  # as the worker's MaskWriter: append, flush, signal the followers
            fh.write(mask_line(0) + mask_line(1) + mask_line(2))
            fh.flush()
            store.notify(job_id)
            assert got_first_two.wait(10)  # the client has frames 1 and 2 while the job still runs
            line = mask_line(3)
            fh.write(line[:10])
            fh.flush()
            store.notify(job_id)
            time.sleep(0.7)  # the signal made the follower read the half line
            events["completed"] = time.monotonic()
            fh.write(line[10:])
            fh.flush()
            store.notify(job_id)
        time.sleep(0.3)
        events["finished"] = time.monotonic()
        store.set_fields(job_id, status="succeeded", finished_at=time.time())

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    lines = []
    with httpx.stream("GET", f"{server.url}/jobs/{job_id}/masks", params={"from_frame": 1}, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        for line in response.iter_lines():
            record = json.loads(line)  # every line is complete JSON
            if record.get("end"):
                assert record["status"] == "succeeded"
                assert record == {"end": True, "status": "succeeded", "frames": record["frames"], "error": None,
                                  "deleted": False}
                continue
            index = record["frame_index"]
            received.append((time.monotonic(), index))
            lines.append(line)
            if index == 2:
                got_first_two.set()
        ended = time.monotonic()
    thread.join(5)
    assert [index for _, index in received] == [1, 2, 3]
    assert received[0][0] < events["completed"]  # streamed while running, not at the end
    assert received[2][0] >= events["completed"]  # the half line waited for its newline
    assert received[2][0] < events["finished"]  # and went out before the job finished
    assert ended >= events["finished"]  # the stream ended with the job
    assert lines[2] == mask_line(3).decode().strip()
    assert recorder.calls == []


def test_mask_stream_stops_when_the_client_disconnects(live) -> None:
    server, settings, _recorder = live
    store = open_store(settings)
    job_id = add_job(store, JobStatus.RUNNING)
    store.masks_path(job_id).write_bytes(mask_line(0))
    requests_before = prometheus.HTTP_REQUESTS.labels("/jobs/{job_id}/masks", "GET", "200")._value.get()
    with httpx.stream("GET", f"{server.url}/jobs/{job_id}/masks", timeout=10) as response:
        assert json.loads(next(response.iter_lines()))["frame_index"] == 0
    # the job is still running, but the server ends its loop and finishes the request
    deadline = time.monotonic() + 5
    while prometheus.HTTP_REQUESTS.labels("/jobs/{job_id}/masks", "GET", "200")._value.get() == requests_before:
        assert time.monotonic() < deadline, "the stream kept running after the client left"
        time.sleep(0.05)


def test_client_gone_before_the_answer_queues_nothing(live, media: dict[str, Path]) -> None:
    """The whole body is sent and the connection closed at once: whether the server notices during the
    upload or right after the probe, nothing stays on disk and nothing is queued."""
    server, settings, recorder = live
    aborted = prometheus.UPLOADS_ABORTED._value.get()
    body = multipart({}, ("ok.mp4", media["ok"].read_bytes()))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
        conn.sendall(_head(len(body)) + body)
    deadline = time.monotonic() + 5
    while prometheus.UPLOADS_ABORTED._value.get() == aborted:
        assert time.monotonic() < deadline, "the abandoned submission was not noticed"
        time.sleep(0.02)
    assert job_dirs(settings) == []
    assert recorder.calls == []


def test_unauthorized_upload_is_refused_before_the_body(make_settings: Callable[..., ServiceSettings]) -> None:
    settings = make_settings(api_keys=["s3cret"])
    with LiveServer(create_app(settings, task_sender=Recorder())) as server:
        started = time.monotonic()
        status, _, body = server.raw(_head(10_000_000) + _PREAMBLE, timeout=5)
        assert time.monotonic() - started < 3  # answered at once: the 10 MB are never waited for
        assert status == 401
        assert json.loads(body)["error"]["code"] == "unauthorized"
        status, _, _ = server.raw(_head(10_000_000, "X-API-Key: s3cret\r\n") + _PREAMBLE, timeout=5)
        assert status == 413  # with the key, the size cap (8 MiB here) answers before the body
    assert job_dirs(settings) == []
