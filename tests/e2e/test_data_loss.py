"""Issue #27, with real processes on the embedded default (`avs serve` with no broker configured): nothing
accepted is lost, a full disk does not kill the API, a dead worker or `avs serve` leaves nothing misleading.

Each test reproduces one fault of the issue and fails on the code before it: malformed and vanished broker
messages, a full data volume, a SIGKILLed `avs serve`, a worker killed in the middle of a live session.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from worker.core.broker_transport import REJECTED_KEY
from worker.core.private_redis import read_endpoint
from worker.media.samples import make_video

from .conftest import Service, _base_env, free_port, mounted_tmpfs, running_embedded, wait_until


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("data-loss") / "clip.mp4", duration_s=1.0, size=(64, 48))


@pytest.fixture(scope="module")
def webm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("data-loss-webm") / "clip.webm", duration_s=8.0, size=(96, 72),
                      fps=25, container="webm")


def _wait(predicate, timeout: float, what: str):
    return wait_until(predicate, timeout, what)


def _submit(service: Service, video: Path) -> httpx.Response:
    with service.client() as http, video.open("rb") as f:
        return http.post("/segment", files={"file": (video.name, f, "video/mp4")})


def _status(service: Service, job_id: str) -> str:
    with service.client() as http:
        return http.get(f"/jobs/{job_id}").json()["status"]


def _broker(service: Service) -> redis.Redis:
    endpoint = read_endpoint(service.data_dir / "broker")
    assert endpoint is not None, "avs serve recorded no private Redis"
    return redis.Redis.from_url(endpoint.url)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_malformed_and_vanished_messages_lose_no_job(tmp_path: Path, clip: Path) -> None:
    """The issue's reproducer, on the broker the embedded default now runs: the API queues a job while no
    worker runs; its message disappears (a worker took it and died) and malformed messages (0 bytes, half a
    JSON object) sit in the queue. A worker started then survives them, sets them aside and counts them, and
    the reconciler sends the vanished job again: it runs."""
    service = Service(tmp_path / "data", _base_env(tmp_path / "data"))
    service.data_dir.mkdir()
    service.env["AVS_UNTAKEN_GRACE_S"] = "2"
    port = free_port()
    service.base_url = f"http://127.0.0.1:{port}"
    service.start("api", "serve", "--no-worker", "--port", str(port))
    try:
        _wait(lambda: read_endpoint(service.data_dir / "broker"), 60, "the private Redis")
        _wait(lambda: _ping(service), 60, "the API")
        response = _submit(service, clip)
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        broker = _broker(service)
        taken = broker.rpop("celery")  # taken by a worker that then died
        assert taken is not None
        assert job_id.encode() in taken
        broker.lpush("celery", b"", b'{"body": "half')
        metrics_port = free_port()
        worker = service.start("worker", "worker", extra_env={"AVS_WORKER_METRICS_PORT": str(metrics_port)})
        _wait(lambda: _status(service, job_id) == "succeeded", 120, "the vanished job to run")
        assert worker.alive(), worker.tail()
        assert broker.llen(REJECTED_KEY) == 2
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert _metric(metrics, "avs_broker_messages_set_aside_total", reason="not_json") == 2
        with service.client() as http:
            api_metrics = http.get("/metrics").text
        assert _metric(api_metrics, "avs_job_messages_untaken_total") >= 1
    finally:
        service.stop()


def _ping(service: Service) -> bool:
    try:
        return httpx.get(f"{service.base_url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 40 MB tmpfs: a data volume that fills up."""
    with mounted_tmpfs(tmp_path / "volume", "40m") as mount:
        yield mount


def test_a_full_data_volume_never_kills_avs_serve(small_volume: Path, clip: Path) -> None:
    """Issue #27 fault 2: the metrics files were memory-mapped on the data volume, and the first metric write
    that needed a new page on a full volume killed `avs serve` (SIGBUS, exit 135) and its worker."""
    with running_embedded(small_volume / "data") as service:
        filler = small_volume / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=100"], capture_output=True)
        for _ in range(5):
            response = _submit(service, clip)
            assert response.status_code == 507, response.text
            assert response.json()["error"]["code"] == "storage_full"
        with service.client() as http:
            for _ in range(20):  # many metric writes, each request several
                assert http.get("/metrics").status_code == 200
                assert http.get("/healthz").status_code == 200
        assert all(proc.alive() for proc in service.procs), service.procs[0].tail()
        filler.unlink()
        response = _submit(service, clip)
        assert response.status_code == 202, response.text
        _wait(lambda: _status(service, response.json()["job_id"]) == "succeeded", 120, "a job after the disk freed")


def _children_of(pid: int) -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                found[int(entry.name)] = stat[stat.index("(") + 1:stat.rindex(")")]
    return found


def test_a_sigkilled_avs_serve_leaves_no_worker_or_broker_behind(tmp_path: Path, clip: Path) -> None:
    """Issue #27 fault 4: a SIGKILLed `avs serve` left its worker running unsupervised beside the next one's.
    Now its worker and its private Redis stop by themselves; the next `avs serve` on the same data directory
    starts clean and runs jobs."""
    data = tmp_path / "data"
    with running_embedded(data) as service:
        serve = service.procs[0]
        children = _children_of(serve.popen.pid)
        redis_pids = [pid for pid, name in children.items() if name.startswith("redis-server")]
        worker_pids = [pid for pid, name in children.items() if pid not in redis_pids]
        assert len(redis_pids) == 1
        assert worker_pids
        os.kill(serve.popen.pid, signal.SIGKILL)
        serve.popen.wait(timeout=10)
        _wait(lambda: not any(_alive(pid) for pid in worker_pids + redis_pids), 30, "the worker and Redis to stop")
    restarted = Service(data, _base_env(data))
    port = free_port()
    restarted.base_url = f"http://127.0.0.1:{port}"
    restarted.env["AVS_WORKER_METRICS_PORT"] = "0"
    restarted.start("serve", "serve", "--port", str(port))
    try:
        restarted.wait_ready()
        response = _submit(restarted, clip)
        assert response.status_code == 202, response.text
        _wait(lambda: _status(restarted, response.json()["job_id"]) == "succeeded", 120, "a job after the restart")
    finally:
        restarted.stop()


def _worker_pid(service: Service) -> int:
    with service.client() as http:
        return http.get("/readyz").json()["workers"][0]["pid"]


def test_a_worker_killed_mid_session_is_worker_lost_not_1006(tmp_path: Path, webm: Path) -> None:
    """Issue #27 fault 4: the client got a bare 1006 (which must never be sent), the live gauge stayed at 1, and
    `/readyz` said 200 for 10-15 s while `/live` refused. Now: an error message `worker_lost` and close code
    1011, the gauge back to 0, and not ready until the restarted worker is warm."""
    with running_embedded(tmp_path / "data", {"AVS_HEARTBEAT_S": "5"}) as service:
        pid = _worker_pid(service)
        url = service.base_url.replace("http://", "ws://") + "/live"
        data = webm.read_bytes()
        messages: list[dict] = []
        with connect(url) as ws:
            ws.send(json.dumps({"type": "start"}))
            assert json.loads(ws.recv(timeout=30))["type"] == "started"
            sent = 0
            while not any(m.get("type") == "mask" for m in messages):  # the session is running on the worker
                ws.send(data[sent:sent + 16_000])
                sent += 16_000
                with contextlib.suppress(TimeoutError):
                    messages.append(json.loads(ws.recv(timeout=0.2)))
            with service.client() as http:
                assert _metric(http.get("/metrics").text, "avs_live_sessions") == 1
            os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()
            with contextlib.suppress(ConnectionClosed):
                while True:
                    messages.append(json.loads(ws.recv(timeout=30)))
            close_code = ws.close_code
        assert messages[-1] == {"type": "error", "code": "worker_lost", "message": messages[-1]["message"]}
        assert close_code == 1011
        with service.client() as http:
            assert http.get("/readyz").status_code == 503  # at once, not 3 heartbeats (15 s) later
            assert time.monotonic() - killed_at < 5
            _wait(lambda: _metric(http.get("/metrics").text, "avs_live_sessions") == 0, 5, "the live gauge to drop")
        service.wait_ready()  # the restarted worker
        assert _worker_pid(service) != pid


def test_avs_serve_keeps_no_memory_mapped_file_on_the_data_volume(tmp_path: Path) -> None:
    with running_embedded(tmp_path / "data") as service:
        serve = service.procs[0]
        mapped = [line.split()[-1] for line in Path(f"/proc/{serve.popen.pid}/maps").read_text().splitlines()
                  if line.split()[-1].startswith("/")]
        data = str(service.data_dir.resolve())
        assert not [path for path in mapped if path.startswith(data)], mapped
        assert not (service.data_dir / "prometheus").exists()

