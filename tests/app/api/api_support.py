"""Helpers for the API tests: a task-sender recorder, fake worker heartbeats, job records in any state,
multipart bodies, and a real uvicorn server in a thread (for what TestClient cannot show: streaming).

The module has a unique name so that pytest's rootdir imports never clash with other test helpers."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from worker.core.contracts import JobStatus
from worker.core.job_record import JobOptions, JobRecord, Progress, UploadInfo, new_job_id
from worker.core.jobstore import JobStore
from worker.core.settings import ServiceSettings
from worker.core.state import heartbeats
from worker.core.state.heartbeats import WorkerHeartbeat, heartbeat_board


class Recorder:
    """A task sender that records what it was given (the job id, and nothing else)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        assert not kwargs, kwargs
        self.calls.append(args)


class FailingSender:
    def __call__(self, job_id: str) -> None:
        raise ConnectionError("broker down")


def write_heartbeat(settings: ServiceSettings, name: str = "worker-1", *, warm: bool = True,
                    age_s: float = 0.0, **fields: Any) -> WorkerHeartbeat:
    """What the worker writes (`worker.heartbeat`): its heartbeat key in the state Redis, living
    `STALE_FACTOR × heartbeat_s` from now, `last_seen` `age_s` ago; `fields` override the others."""
    beat = WorkerHeartbeat.model_validate({"name": name, "hostname": "test-host", "pid": 4242, "warm": warm,
                                           "last_seen": time.time() - age_s, "variant": "avesformer-tiny",
                                           "device": "cpu", **fields})
    client, prefix = heartbeat_board(settings)
    heartbeats.write_heartbeat(client, prefix, beat, heartbeats.heartbeat_ttl_s(settings.heartbeat_s))
    return beat


def add_job(store: JobStore, status: JobStatus | str = JobStatus.QUEUED, *, overlay: bool = False,
            **fields: Any) -> str:
    """A job record (and an upload file) as the API would have left it, moved to `status`."""
    job_id = new_job_id()
    store.create(JobRecord(job_id=job_id, options=JobOptions(overlay=overlay),
                           upload=UploadInfo(filename="clip.mp4", bytes=3, path="upload.mp4"),
                           progress=Progress(frames_total=25)))
    (store.job_dir(job_id) / "upload.mp4").write_bytes(b"abc")
    status = JobStatus(status)
    if status is JobStatus.RUNNING:
        run(store, job_id, **fields)
    elif status is not JobStatus.QUEUED:
        now = time.time()
        store.set_fields(job_id, status=status, started_at=now, finished_at=now if status.finished else None,
                         **fields)
    elif fields:
        store.set_fields(job_id, **fields)
    return job_id


def run(store: JobStore, job_id: str, **fields: Any) -> None:
    """Mark the job running as a live worker would: with an owner holding a lease that does not expire during
    the test (the API's reconciler would requeue a running job without one)."""
    store.set_fields(job_id, status=JobStatus.RUNNING, started_at=time.time(), owner="test-worker", lease_token=1,
                     lease_expires_at=time.time() + 3600, **fields)


def mask_line(index: int) -> bytes:
    return json.dumps({"frame_index": index, "pts_s": index / 25, "size": [48, 64], "counts": "PQ" + "x" * index},
                      separators=(",", ":")).encode() + b"\n"


def multipart(fields: dict[str, str], file: tuple[str, bytes] | None, boundary: str = "avsboundary") -> bytes:
    out = bytearray()
    for name, value in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    if file is not None:
        out += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file[0]}"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n").encode()
        out += file[1] + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def job_dirs(settings: ServiceSettings) -> list[Path]:
    root = settings.data_dir / "jobs"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []


class LiveServer:
    """uvicorn serving `app` on a free local port, in a thread of this process (so the test can share the
    recorder and the metrics objects with the server)."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()

    def raw(self, request: bytes, *, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        """Send raw bytes, read the answer until the server closes (or the body is complete)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as conn:
            conn.sendall(request)
            return read_response(conn)


def read_response(conn: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "-1"))
    while length < 0 or len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body
