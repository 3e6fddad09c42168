"""REST streams end to end with real processes: `avs serve` (API + worker), ffmpeg sending MPEG-TS over UDP to
127.0.0.1 in real time, `POST /streams` starting a session on the worker with no client connected,
`GET /streams/{id}/masks` followed while it runs, `DELETE` stopping it; and a worker SIGKILLed mid-stream,
whose stream the restarted worker takes over with its frame indices going on where the file stopped.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from worker.media.samples import make_video

from .conftest import Service, free_port, running_embedded, wait_until
from .test_live import _udp_port_bound

API_KEY = "streams-test-key"
HEADERS = {"X-API-Key": API_KEY}


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[Service]:
    env = {"AVS_API_KEYS": API_KEY, "AVS_LIVE_MAX_SESSIONS": "2", "AVS_LIVE_SOURCES": "udp://127.0.0.1",
           "AVS_LIVE_IDLE_TIMEOUT_S": "5"}
    with running_embedded(tmp_path_factory.mktemp("streams") / "data", env) as service:
        yield service


@pytest.fixture(scope="module")
def camera_clip(tmp_path_factory) -> Path:
    """A minute of MPEG-TS, MPEG-2 video with a key frame every 12 frames: a decoder that joins mid-stream (a
    worker taking over) finds a picture within half a second."""
    return make_video(tmp_path_factory.mktemp("camera") / "camera.ts", duration_s=60.0, size=(160, 120), fps=25,
                      container="ts", video_codec="mpeg2video", timeout_s=300)


@contextlib.contextmanager
def camera(clip: Path, port: int) -> Iterator[subprocess.Popen]:
    """ffmpeg playing `clip` in real time as MPEG-TS over UDP to 127.0.0.1:port (a camera that does not care
    whether anyone listens)."""
    sender = subprocess.Popen(["ffmpeg", "-loglevel", "error", "-nostdin", "-re", "-i", str(clip), "-map", "0",
                               "-c", "copy", "-f", "mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield sender
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sender.pid, signal.SIGKILL)
        sender.wait(timeout=10)


class Follower:
    """GET /streams/{id}/masks on a thread, every line kept as it arrives."""

    def __init__(self, service: Service, stream_id: str) -> None:
        self.lines: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(service, stream_id), daemon=True)
        self._thread.start()

    def _run(self, service: Service, stream_id: str) -> None:
        try:
            with httpx.Client(base_url=service.base_url, timeout=httpx.Timeout(10, read=120)) as http, \
                    http.stream("GET", f"/streams/{stream_id}/masks", headers=HEADERS) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    if line.strip():
                        self.lines.append(json.loads(line))
        except BaseException as exc:  # reported by the test
            self.error = exc

    @property
    def frames(self) -> list[dict[str, Any]]:
        return [line for line in self.lines if "frame_index" in line]

    def join(self, timeout: float) -> dict[str, Any]:
        """The end line, once the stream has ended."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the mask stream did not end"
        assert self.error is None, self.error
        assert self.lines, "no line at all"
        end = self.lines[-1]
        assert end.get("end") is True, f"the stream was cut: {end}"
        return end


def _view(service: Service, stream_id: str) -> dict[str, Any]:
    with service.client() as http:
        return http.get(f"/streams/{stream_id}", headers=HEADERS).json()


def _start(service: Service, port: int) -> str:
    with service.client() as http:
        # no_drop: every frame the worker's ffmpeg decodes gets its mask, so the indices are 0 .. N-1 exactly
        response = http.post("/streams", json={"source": f"udp://127.0.0.1:{port}", "window": 4, "mode": "no_drop"},
                             headers=HEADERS)
    assert response.status_code == 201, response.text
    stream_id = response.json()["stream_id"]
    wait_until(lambda: _view(service, stream_id)["status"] == "running", 60, "a worker to run the stream")
    wait_until(lambda: _udp_port_bound(port), 20, "the stream's UDP listener")
    return stream_id


def _check_frames(frames: list[dict[str, Any]], end: dict[str, Any]) -> None:
    """frame_index 0 .. N-1, each once, in order; pts_s the stream's own clock, rising; `frames` says N."""
    assert [f["frame_index"] for f in frames] == list(range(len(frames)))
    pts = [f["pts_s"] for f in frames]
    assert all(b > a for a, b in itertools.pairwise(pts)), "pts_s must rise"
    assert end["frames"] == len(frames)
    assert all(f["size"] == [120, 160] and f["counts"] for f in frames)


def test_a_stream_started_followed_and_stopped_over_rest(service: Service, camera_clip: Path) -> None:
    with service.client() as http:  # a URL off the allow-list: /live's code, nothing created
        refused = http.post("/streams", json={"source": "udp://10.1.2.3:5000"}, headers=HEADERS)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        assert http.post("/streams", json={"source": "udp://127.0.0.1:1"}).status_code == 401  # no API key
        assert http.get("/streams", headers=HEADERS).json() == {"streams": []}

    port = free_port()
    stream_id = _start(service, port)
    follower = Follower(service, stream_id)
    with camera(camera_clip, port):
        wait_until(lambda: len(follower.frames) >= 25, 60, "a second of masks")
        assert _view(service, stream_id)["status"] == "running"
        with service.client() as http:
            stopped = http.delete(f"/streams/{stream_id}", headers=HEADERS)
        assert stopped.status_code == 202
        end = follower.join(30)

    assert end["status"] == "cancelled"
    assert end["ended_by"] == "stopped"
    assert end["error"] is None
    _check_frames(follower.frames, end)
    view = _view(service, stream_id)
    assert (view["status"], view["ended_by"], view["frames"], view["attempts"]) == ("cancelled", "stopped",
                                                                                    len(follower.frames), 1)
    assert view["live"]["frames_processed"] == len(follower.frames)
    with service.client() as http:
        listed = http.get("/streams", headers=HEADERS).json()["streams"]
        assert [(s["stream_id"], s["status"]) for s in listed] == [(stream_id, "cancelled")]
        assert http.delete(f"/streams/{stream_id}", headers=HEADERS).status_code == 200  # idempotent
        # the masks outlive the stop: read again from a frame on, with the same end line
        again = [json.loads(x) for x in http.get(f"/streams/{stream_id}/masks?from_frame=10",
                                                 headers=HEADERS).text.splitlines()]
        assert [f["frame_index"] for f in again[:-1]] == list(range(10, len(follower.frames)))
        assert again[-1] == end
        metrics = http.get("/metrics").text
    assert 'avs_streams_ended_total{status="cancelled"}' in metrics
    assert 'avs_streams_in_state{state="cancelled"} 1.0' in metrics
    wait_until(lambda: http_json(service, "/readyz")["workers"][0]["live_sessions"] == 0, 15, "the slot to free")


def http_json(service: Service, path: str) -> dict[str, Any]:
    with service.client() as http:
        return http.get(path, headers=HEADERS).json()


@pytest.mark.slow
def test_a_stream_whose_worker_is_killed_goes_on_on_the_restarted_worker(tmp_path: Path, camera_clip: Path) -> None:
    env = {"AVS_API_KEYS": API_KEY, "AVS_LIVE_SOURCES": "udp://127.0.0.1", "AVS_LIVE_IDLE_TIMEOUT_S": "20"}
    with running_embedded(tmp_path / "data", env) as service:
        port = free_port()
        stream_id = _start(service, port)
        follower = Follower(service, stream_id)
        with camera(camera_clip, port):
            wait_until(lambda: len(follower.frames) >= 50, 60, "two seconds of masks")
            worker_pid = http_json(service, "/readyz")["workers"][0]["pid"]
            os.kill(worker_pid, signal.SIGKILL)
            before = len(follower.frames)
            # avs serve restarts the worker; the lease expires (3 s here), the reconciler requeues the stream
            # and the new worker opens the URL again
            wait_until(lambda: _view(service, stream_id)["attempts"] == 2 and len(follower.frames) >= before + 50,
                       120, "the restarted worker to go on with the stream")
            with service.client() as http:
                assert http.delete(f"/streams/{stream_id}", headers=HEADERS).status_code == 202
            end = follower.join(30)

        assert end["status"] == "cancelled"
        _check_frames(follower.frames, end)  # 0 .. N-1 across both workers: no gap, no frame twice
        view = _view(service, stream_id)
        assert (view["attempts"], view["takeovers"]) == (2, 1)
        assert http_json(service, "/readyz")["workers"][0]["pid"] != worker_pid
        assert "restarting" in service.procs[0].tail(100_000)
