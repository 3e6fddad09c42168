"""Live sessions end to end with real processes: `avs serve` (API + worker), the `/live` WebSocket through the
API's proxy, ffmpeg producing a WebM stream in real time (`-re`) and MPEG-TS over UDP to a listener on
127.0.0.1, a client process killed mid-stream.

Every masks check is the same: one record per processed frame, in order, each exactly once, with the
stream's own timestamps (`pts_s` as ffprobe reads them from what was sent), and received = processed +
skipped by the fps cap + dropped late.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from app.cli.live_client import LiveRefused, stream_file
from worker.media.samples import make_video

from .conftest import Service, free_port, running_embedded, wait_until

API_KEY = "live-test-key"
MAX_SESSIONS = 2


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[Service]:
    """`avs serve` with an API key, two live sessions per worker, UDP on 127.0.0.1 allow-listed."""
    env = {"AVS_API_KEYS": API_KEY, "AVS_LIVE_MAX_SESSIONS": str(MAX_SESSIONS), "AVS_LIVE_SOURCES": "udp://127.0.0.1",
           "AVS_LIVE_IDLE_TIMEOUT_S": "3", "AVS_LIVE_RECONNECT_S": "10"}
    with running_embedded(tmp_path_factory.mktemp("live") / "data", env) as service:
        yield service


@pytest.fixture(scope="module")
def webm(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("webm") / "clip.webm", duration_s=3.0, size=(192, 144), fps=25,
                      container="webm")


def ws_url(service: Service) -> str:
    return service.base_url.replace("http://", "ws://") + "/live"


def video_pts(path: Path) -> list[float]:
    """The presentation times of the video frames in `path`, in display order, as ffprobe reads them."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time",
                          "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True, timeout=60)
    return sorted(float(line.split(",")[0]) for line in out.stdout.split() if line.strip())


def check_masks(result: dict, sent_pts: list[float]) -> list[dict]:
    """The session's masks: in order, each once, `pts_s` the stream's own; the counts add up."""
    masks = result["masks"]
    indices = [m["frame_index"] for m in masks]
    assert indices == sorted(set(indices)), "masks out of order or repeated"
    assert result["frames_received"] == len(sent_pts)
    assert result["frames_processed"] == len(masks) > 0
    assert (result["frames_processed"] + result["frames_skipped_by_rate"] + result["frames_dropped"]
            == result["frames_received"])
    assert sum(result["dropped"].values()) == result["frames_dropped"]
    for mask in masks:
        assert mask["pts_s"] == pytest.approx(sent_pts[mask["frame_index"]], abs=1e-3)
        assert mask["latency_ms"] is not None
        assert mask["latency_ms"] >= 0
        assert mask["size"]
        assert mask["counts"]
    return masks


def worker_info(service: Service) -> dict:
    with service.client() as http:
        return http.get("/readyz").json()["workers"][0]


def children_named(pid: int, name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            if ppid == pid and comm == name:
                found.append(int(entry.name))
    return found


def test_webm_pushed_in_real_time_recorded_as_a_job(service: Service, webm: Path, tmp_path: Path) -> None:
    sent = tmp_path / "sent.webm"
    result = asyncio.run(stream_file(ws_url(service), webm, {"record": True, "overlay": True, "window": 8},
                                     api_key=API_KEY, sent_copy=sent))
    assert result["status"] == "succeeded"
    assert result["error"] is None
    assert result["ended_by"] == "client"
    assert result["started"]["alignment"] == "live"
    assert result["started"]["pushed"] is True
    masks = check_masks(result, video_pts(sent))
    assert masks[0]["size"] == [144, 192]  # masks at the stream's own size
    # kept as a job: readable with the job routes
    job_id = result["job_id"]
    headers = {"X-API-Key": API_KEY}
    with service.client() as http:
        job = http.get(f"/jobs/{job_id}", headers=headers).json()
        assert job["kind"] == "live"
        assert job["status"] == "succeeded"
        assert job["live"]["frames_processed"] == len(masks)
        lines = [json.loads(x) for x in http.get(f"/jobs/{job_id}/masks", headers=headers).text.splitlines() if x]
        *frames, end = lines
        assert end["end"] is True
        assert end["status"] == "succeeded"
        assert [f["frame_index"] for f in frames] == [m["frame_index"] for m in masks]
        assert [f["counts"] for f in frames] == [m["counts"] for m in masks]
        overlay = http.get(f"/jobs/{job_id}/overlay.mp4", headers=headers)
        assert overlay.status_code == 200
        assert overlay.content[4:8] == b"ftyp"
        # a job like any other (#23): listed with the key's jobs, its video kept, a preview, exports
        assert result["job_url"] == f"/jobs/{job_id}"
        assert job["source"] == "live"
        assert job_id in [j["job_id"] for j in http.get("/jobs", headers=headers).json()["jobs"]]
        assert job["video"]["container"] == "matroska"
        assert job["media"]["preview_url"] == f"/jobs/{job_id}/preview.mp4"
        preview = http.get(job["media"]["preview_url"], headers=headers)
        assert (preview.status_code, preview.headers["content-type"], preview.content[4:8]) == (
            200, "video/mp4", b"ftyp")
        exports = {e["name"]: e for e in http.get(f"/jobs/{job_id}/exports", headers=headers).json()["exports"]}
        assert all(e["available"] for e in exports.values()), exports
        metrics = http.get("/metrics").text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(metrics) for s in family.samples}
    assert samples[("avs_live_latency_seconds_count", ())] >= len(masks)
    assert samples[("avs_live_frames_processed_total", ())] >= len(masks)
    assert ("avs_live_sessions", ()) in samples


def test_webm_pushed_in_no_drop_mode_gets_one_mask_per_decoded_frame(service: Service, webm: Path,
                                                                       tmp_path: Path) -> None:
    """Pushed as fast as the connection takes it, with room for one frame: the worker holds the stream back
    (it reads the socket only when ffmpeg takes more) instead of dropping, so every frame has its mask."""
    sent = tmp_path / "sent.webm"
    result = asyncio.run(stream_file(ws_url(service), webm, {"mode": "no_drop", "window": 1}, api_key=API_KEY,
                                     sent_copy=sent, realtime=False))
    assert result["status"] == "succeeded", result["error"]
    assert result["started"]["mode"] == "no_drop"
    pts = video_pts(sent)
    masks = check_masks(result, pts)
    assert result["frames_dropped"] == result["frames_skipped_by_rate"] == 0
    assert [m["frame_index"] for m in masks] == list(range(len(pts)))


def _udp_port_bound(port: int) -> bool:
    """True once someone (the session's ffmpeg) listens on 127.0.0.1:port/udp."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def test_mpegts_over_udp_pulled_by_a_session(service: Service, tmp_path: Path) -> None:
    clip = make_video(tmp_path / "cam.ts", duration_s=3.0, size=(160, 120), fps=25, container="ts")
    port = free_port()
    sent = tmp_path / "sent.ts"
    url = ws_url(service)

    async def run() -> dict:
        session = asyncio.ensure_future(stream_file(url, None, {"source": f"udp://127.0.0.1:{port}", "window": 8},
                                                    api_key=API_KEY, stop_after_s=None))
        await asyncio.to_thread(wait_until, lambda: _udp_port_bound(port), 20, "the session's UDP listener")
        # the camera: real time, MPEG-TS over UDP to the listener, and a copy of exactly what it sent
        sender = await asyncio.create_subprocess_exec(
            "ffmpeg", "-loglevel", "error", "-re", "-i", str(clip), "-map", "0", "-c", "copy", "-f", "tee",
            f"[f=mpegts]udp://127.0.0.1:{port}?pkt_size=1316|[f=mpegts]{sent}")
        assert await sender.wait() == 0
        return await session

    with pytest.raises(LiveRefused) as refused:  # not allow-listed: refused before anything is opened
        asyncio.run(stream_file(url, None, {"source": "udp://10.1.2.3:5000"}, api_key=API_KEY))
    assert refused.value.code == "unauthorized"
    # a UDP stream has no end: when no packet came for the idle timeout (3 s) the session connects again (issue
    # #21), and when none comes within the reconnect window (4 s here) it ends, after every frame went through
    result = asyncio.run(run())
    assert result["status"] == "succeeded"
    assert result["ended_by"] == "source_lost"
    assert result["source_lost"] is True
    assert result["started"]["pushed"] is False
    check_masks(result, video_pts(sent))


def test_a_client_killed_mid_stream_leaves_no_process_or_file(service: Service, tmp_path: Path) -> None:
    # a 12 s clip sent in real time: a loaded worker drops late frames (a few masks a second), and the shared 3 s
    # clip could end the session before the kill (the test then saw `end`, not a mask)
    webm = make_video(tmp_path / "long.webm", duration_s=12.0, size=(160, 120), fps=25, container="webm")
    worker_pid = worker_info(service)["pid"]
    jobs_before = set(os.listdir(service.data_dir / "jobs"))
    script = tmp_path / "client.py"
    script.write_text(
        "import asyncio, sys\nfrom pathlib import Path\nfrom app.cli.live_client import stream_file\n"
        "asyncio.run(stream_file(sys.argv[1], Path(sys.argv[2]), {'record': True, 'overlay': True},"
        " api_key=sys.argv[3],\n"
        " on_message=lambda m: print(m['type'] if m['type'] == 'mask' else str(m)[:600], flush=True)))\n")
    client = subprocess.Popen([sys.executable, str(script), ws_url(service), str(webm), API_KEY],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    try:
        assert client.stdout is not None
        for _ in range(3):  # a few masks: the session is running on the worker
            line = client.stdout.readline().strip()
            assert line in ("mask", ""), line
        assert children_named(worker_pid, "ffmpeg"), "the session's ffmpeg should be running"
        assert worker_info(service)["live_sessions"] == 1
        client.kill()
    finally:
        client.kill()
        client.wait()
    wait_until(lambda: not children_named(worker_pid, "ffmpeg"), 15, "the session's ffmpeg to go")
    wait_until(lambda: worker_info(service)["live_sessions"] == 0, 15, "the session to end")
    assert set(os.listdir(service.data_dir / "jobs")) == jobs_before  # the recording was discarded


def _exchange(service: Service, start: dict | bytes | None, *, key: str | None = API_KEY, then: bytes = b"",
              timeout: float = 30) -> list[dict]:
    """Open /live, send `start` (and `then`), return the server's messages until it closes."""
    headers = {"X-API-Key": key} if key else {}
    messages: list[dict] = []
    deadline = time.monotonic() + timeout
    # the server may close before reading what we send: what it said before closing is still read
    with contextlib.suppress(ConnectionClosed), connect(ws_url(service), additional_headers=headers) as ws:
        with contextlib.suppress(ConnectionClosed):
            if start is not None:
                ws.send(start if isinstance(start, bytes) else json.dumps(start))
            if then:
                ws.send(then)
        while time.monotonic() < deadline:
            messages.append(json.loads(ws.recv(timeout=deadline - time.monotonic())))
    return messages


def test_refusals_and_limits_have_stable_codes(service: Service, webm: Path) -> None:
    assert _exchange(service, {"type": "start"}, key=None)[-1]["code"] == "unauthorized"
    assert _exchange(service, {"type": "start"}, key="wrong")[-1]["code"] == "unauthorized"
    assert _exchange(service, {"type": "start", "overlay": True})[-1]["code"] == "invalid_request"
    assert _exchange(service, {"type": "start", "fps": -1})[-1]["code"] == "invalid_request"
    assert _exchange(service, b"\x1a\x45\xdf\xa3")[-1]["code"] == "invalid_request"  # media before start
    assert _exchange(service, {"type": "start", "source": "file:///etc/passwd"})[-1]["code"] == "invalid_request"
    # hostile bytes: ffmpeg refuses them; the session ends with a media code, the worker lives on
    garbage = _exchange(service, {"type": "start"}, then=os.urandom(1_000_000))
    assert garbage[0]["type"] == "started"
    assert garbage[-1]["type"] == "end"
    assert garbage[-1]["error"]["code"] in ("not_media", "corrupt_media")
    # a session that sends nothing ends at the idle timeout
    idle = _exchange(service, {"type": "start"})
    assert idle[-1]["type"] == "end"
    assert idle[-1]["error"]["code"] == "idle_timeout"
    # ... and so does one that sends a container's header and then stalls, whatever ffmpeg makes of the
    # truncated stream (issue #27: it was not_media/corrupt_media with ffmpeg's statistics line)
    for head in (webm.read_bytes()[:300], webm.read_bytes()[:4000]):
        stalled = _exchange(service, {"type": "start"}, then=head)
        assert stalled[-1]["type"] == "end"
        assert stalled[-1]["error"]["code"] == "idle_timeout", stalled[-1]
        assert "time=" not in stalled[-1]["error"]["message"]
    # capacity: MAX_SESSIONS sessions run, one more is refused until one ends
    with contextlib.ExitStack() as stack:
        for _ in range(MAX_SESSIONS):
            ws = stack.enter_context(connect(ws_url(service), additional_headers={"X-API-Key": API_KEY}))
            ws.send(json.dumps({"type": "start"}))
            assert json.loads(ws.recv(timeout=30))["type"] == "started"
        refused = _exchange(service, {"type": "start"})
        assert refused == [{"type": "error", "code": "too_many_sessions", "message": refused[0]["message"]}]
    wait_until(lambda: worker_info(service)["live_sessions"] == 0, 15, "the sessions to end")
    result = asyncio.run(stream_file(ws_url(service), webm, {}, api_key=API_KEY))  # room again
    assert result["status"] == "succeeded"
    assert result["frames_processed"] > 0
    with httpx.Client(base_url=service.base_url) as http:
        metrics = http.get("/metrics").text
    assert 'avs_live_refused_total{code="too_many_sessions"}' in metrics
    assert 'avs_live_refused_total{code="unauthorized"}' in metrics
    assert 'avs_live_sessions_ended_total{status="client_gone"}' in metrics


def test_a_udp_camera_that_restarts_at_a_new_size_keeps_its_session(service: Service, tmp_path: Path) -> None:
    """Issue #21, end to end: a camera (ffmpeg, MPEG-TS over UDP, real time) stops, stays silent past the read
    timeout, and comes back at another size; the /live session connects again, its masks follow the new size,
    the gap is reported, and it ends `source_lost` when the camera does not come back a second time."""
    first = make_video(tmp_path / "a.ts", duration_s=2.0, size=(160, 120), fps=25, container="ts")
    second = make_video(tmp_path / "b.ts", duration_s=2.0, size=(96, 128), fps=25, container="ts")
    port = free_port()
    url = ws_url(service)

    async def send(clip: Path) -> None:
        await asyncio.to_thread(wait_until, lambda: _udp_port_bound(port), 20, "the session's UDP listener")
        sender = await asyncio.create_subprocess_exec(
            "ffmpeg", "-loglevel", "error", "-re", "-i", str(clip), "-map", "0", "-c", "copy", "-f", "mpegts",
            f"udp://127.0.0.1:{port}?pkt_size=1316")
        assert await sender.wait() == 0

    async def run() -> dict:
        session = asyncio.ensure_future(stream_file(url, None, {"source": f"udp://127.0.0.1:{port}", "window": 8,
                                                                "mode": "no_drop"}, api_key=API_KEY))
        await send(first)
        # the first connection ends at its 3 s read timeout and lets the port go; only then is the camera back
        # (a fixed sleep sent the second clip to the dying listener on a loaded machine: reconnects == 0)
        await asyncio.to_thread(wait_until, lambda: not _udp_port_bound(port), 30, "the first listener to close")
        await send(second)
        return await session

    result = asyncio.run(run())
    assert result["status"] == "succeeded", result.get("error")
    assert result["ended_by"] == "source_lost"
    assert result["reconnects"] == 1
    (gap,) = result["gaps"]
    assert gap["seconds"] > 0.5
    sizes = [tuple(mask["size"]) for mask in result["masks"]]
    assert sizes[0] == (120, 160)
    assert sizes[-1] == (128, 96)
    times = [mask["pts_s"] for mask in result["masks"]]
    assert all(b > a for a, b in itertools.pairwise(times))


def test_avs_live_record_names_its_job_in_text_and_json(service: Service, webm: Path, tmp_path: Path) -> None:
    """`avs live --server --record`: the job id on stderr in text mode, the --json summary on stdout (#23)."""
    avs = str(Path(sys.executable).with_name("avs"))
    base = [avs, "live", str(webm), "--server", service.base_url, "--record", "--api-key", API_KEY,
            "--no-realtime", "--window", "50"]
    text = subprocess.run([*base, "--out", str(tmp_path / "m.ndjson")], capture_output=True, text=True, timeout=120,
                          env=service.env)
    assert text.returncode == 0, text.stderr
    job_line = [line for line in text.stderr.splitlines() if line.startswith("recorded as job ")]
    assert len(job_line) == 1, text.stderr
    job_id = job_line[0].split()[3].rstrip(":")
    assert job_line[0].endswith(f"{service.base_url}/jobs/{job_id}")
    as_json = subprocess.run([*base, "--json"], capture_output=True, text=True, timeout=120, env=service.env)
    assert as_json.returncode == 0, as_json.stderr
    *masks, last = as_json.stdout.splitlines()
    summary = json.loads(last)
    assert (summary["type"], summary["status"], summary["job_url"]) == ("summary", "succeeded",
                                                                        f"/jobs/{summary['job_id']}")
    assert len(masks) == summary["frames_processed"]
    with service.client() as http:
        listed = [j["job_id"] for j in http.get("/jobs", headers={"X-API-Key": API_KEY}).json()["jobs"]]
    assert {job_id, summary["job_id"]} <= set(listed)
