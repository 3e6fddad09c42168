"""A small standard-library client for the HTTP API, and a local `avs serve` for demos and benchmarks.

Standard library only (urllib), so `avs demo` and `avs bench service` need nothing beyond the install.
"""

from __future__ import annotations

import json
import mimetypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class ApiError(RuntimeError):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        super().__init__(f"HTTP {status} [{error.get('code', '?')}]: {error.get('message', body)}")
        self.status, self.code = status, error.get("code")


class IncompleteStream(RuntimeError):
    """A mask stream that did not end with a successful end line: the job failed or was cancelled (`end` is
    its end line), or the connection was cut before the end (`end` is None; resume with `from_frame`)."""

    def __init__(self, job_id: str, end: dict[str, Any] | None, received: int) -> None:
        if end is None:
            message = f"job {job_id}: the mask stream was cut after {received} frames (no end line)"
        else:
            error = end.get("error") or {}
            message = (f"job {job_id} {end.get('status')} after {end.get('frames')} frames"
                       + (f" [{error.get('code')}]: {error.get('message')}" if error else ""))
        super().__init__(message)
        self.end, self.received = end, received
        self.code = (end.get("error") or {}).get("code") if end else None


class Client:
    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"X-API-Key": api_key} if api_key else {}
        self.timeout = timeout

    def _request(self, method: str, path: str, *, body: bytes | None = None,
                 headers: dict[str, str] | None = None, timeout: float | None = None):
        request = urllib.request.Request(self.base_url + path, data=body, method=method,
                                         headers={**self.headers, **(headers or {})})
        try:
            return urllib.request.urlopen(request, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as exc:
            try:
                payload = json.loads(exc.read() or b"{}")
            except json.JSONDecodeError:
                payload = {}
            raise ApiError(exc.code, payload) from None

    def get_json(self, path: str) -> dict[str, Any]:
        with self._request("GET", path) as response:
            return json.loads(response.read())

    def submit(self, video: Path, **fields: str) -> dict[str, Any]:
        """POST /segment as multipart/form-data; returns the 202 body."""
        boundary = uuid.uuid4().hex
        parts = []
        for name, value in fields.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        kind = mimetypes.guess_type(video.name)[0] or "application/octet-stream"
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{video.name}"\r\n'
                     f"Content-Type: {kind}\r\n\r\n".encode())
        body = b"".join(parts) + video.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        with self._request("POST", "/segment", body=body, headers=headers) as response:
            return json.loads(response.read())

    def stream_masks(self, job_id: str, *, from_frame: int = 0) -> Iterator[dict[str, Any]]:
        """GET /jobs/{id}/masks: yields one record per frame as the worker writes them, until the job ends.

        Returns normally only when the stream's end line says the job succeeded and every frame from
        `from_frame` on arrived; otherwise raises `IncompleteStream` after yielding what did arrive."""
        end: dict[str, Any] | None = None
        received = 0
        with self._request("GET", f"/jobs/{job_id}/masks?from_frame={from_frame}", timeout=3600) as response:
            for line in response:
                if not line.strip():
                    continue
                record = json.loads(line)
                if record.get("end") is True:
                    end = record
                    break
                received += 1
                yield record
        if end is None or end.get("status") != "succeeded" or received != max(0, end["frames"] - from_frame):
            raise IncompleteStream(job_id, end, received)

    def download(self, path: str, out: Path) -> Path:
        with self._request("GET", path) as response:
            out.write_bytes(response.read())
        return out

    def wait(self, job_id: str, *, timeout: float = 3600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            record = self.get_json(f"/jobs/{job_id}")
            if record["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
                return record
            time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_service(data_dir: Path, *, port: int | None = None, env: dict[str, str] | None = None,
                  log: Path | None = None, ready_timeout: float = 180.0) -> Iterator[Client]:
    """Start `avs serve` (embedded broker unless the environment names one), wait until /readyz, stop it after."""
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = log or data_dir / "serve.log"
    child_env = {**os.environ, "AVS_DATA_DIR": str(data_dir), "AVS_WORKER_METRICS_PORT": "0", **(env or {})}
    with log.open("w") as handle:
        command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--loglevel", "warning"]
        proc = subprocess.Popen(command, env=child_env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        client = Client(f"http://127.0.0.1:{port}")
        try:
            deadline = time.monotonic() + ready_timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"avs serve exited early; see {log}")
                try:
                    client.get_json("/readyz")
                    break
                except (ApiError, OSError):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"avs serve was not ready after {ready_timeout:.0f}s; see {log}") from None
                    time.sleep(0.5)
            yield client
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
