"""Health, readiness, auth, metrics (single- and multi-process), errors, cleanup, and the torch-free import."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from api_support import Recorder, add_job, run, write_heartbeat
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.api.main import create_app
from worker.core.contracts import JobStatus
from worker.core.private_redis import PrivateRedis
from worker.core.process_identity import pid_namespace
from worker.core.settings import ServiceSettings
from worker.core.state import open_store
from worker.core.state.heartbeats import heartbeat_board, heartbeat_key, names_key

REDIS_URL = "redis://127.0.0.1:6379/15"
REPO = Path(__file__).resolve().parents[3]


def _redis_available() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1).ping())
    except Exception:
        return False


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


# ------------------------------------------------------------------------------------ health/ready
def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_embedded(make_settings: Callable[..., ServiceSettings]) -> None:
    settings = make_settings(heartbeat_s=2.0)
    broker = PrivateRedis(settings.broker_dir)
    try:
        with TestClient(create_app(settings, task_sender=Recorder())) as client:
            response = client.get("/readyz")  # no private Redis yet (`avs serve` starts it)
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "not_ready"
            assert "embedded broker is not running" in response.json()["error"]["message"]

            broker.start()
            response = client.get("/readyz")
            assert response.status_code == 503
            assert response.json()["error"]["message"] == "no warm worker: no worker heartbeat found"

            write_heartbeat(settings, age_s=7.0)  # older than 3 x 2 s
            response = client.get("/readyz")
            assert response.status_code == 503
            assert "none warm and newer than 6 s" in response.json()["error"]["message"]

            write_heartbeat(settings, "cold", warm=False)
            assert client.get("/readyz").status_code == 503

            state, prefix = heartbeat_board(settings)
            state.set(heartbeat_key(prefix, "junk"), "{not json", px=60_000)  # not a heartbeat: skipped
            state.sadd(names_key(prefix), "junk")
            write_heartbeat(settings, "fresh", age_s=1.0)
            response = client.get("/readyz")
            assert response.status_code == 200, response.text
            body = response.json()
            assert (body["status"], body["broker"]) == ("ready", "embedded")
            assert [w["name"] for w in body["workers"]] == ["fresh"]
            assert body["workers"][0]["device"] == "cpu"

            broker.stop()  # the private Redis gone: not ready, whatever the workers say
            response = client.get("/readyz")
            assert response.status_code == 503
            assert "Redis did not answer PING" in response.json()["error"]["message"]
    finally:
        broker.stop()


def test_a_worker_known_dead_is_not_ready_even_with_a_fresh_heartbeat(make_settings: Callable[..., ServiceSettings],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker on this host whose process is gone stops counting at once, not 3 heartbeats later (issue #27:
    `/readyz` said 200 for 10-15 s after the worker died while `/live` refused). Heartbeats from another PID
    namespace (a container) keep the staleness rule alone."""
    settings = make_settings(heartbeat_s=5.0)
    monkeypatch.setattr("app.api.health.broker_problem", lambda _settings: None)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid names no process now
    with TestClient(create_app(settings, task_sender=Recorder())) as client:
        write_heartbeat(settings, "here", age_s=0.5, pid=dead.pid, pid_namespace=pid_namespace())
        response = client.get("/readyz")
        assert response.status_code == 503, response.text
        write_heartbeat(settings, "here", age_s=0.5, pid=dead.pid, pid_namespace="another-boot/4026531836")
        assert client.get("/readyz").status_code == 200  # another namespace: cannot tell, the beat is fresh
        write_heartbeat(settings, "here", age_s=0.5, pid=os.getpid(), pid_namespace=pid_namespace())
        assert client.get("/readyz").status_code == 200  # alive


def test_readyz_says_why_when_the_state_redis_does_not_answer(make_settings: Callable[..., ServiceSettings],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The heartbeats live in the state Redis: one that accepts connections and never answers (frozen) makes
    `/readyz` a bounded 503 that names the heartbeats, and `/live` a `not_ready` close, never a crash."""
    monkeypatch.setattr("app.api.health.broker_problem", lambda _settings: None)
    with socket.socket() as frozen:
        frozen.bind(("127.0.0.1", 0))
        frozen.listen(16)
        settings = make_settings(state_url=f"redis://127.0.0.1:{frozen.getsockname()[1]}/0", broker_timeout_s=0.5)
        with TestClient(create_app(settings, task_sender=Recorder())) as client:
            started = time.monotonic()
            response = client.get("/readyz")
            assert time.monotonic() - started < 3
            assert response.status_code == 503, response.text
            assert response.json()["error"]["message"].startswith("worker heartbeats not readable")
            with client.websocket_connect("/live") as ws:
                ws.send_text(json.dumps({"type": "start"}))
                message = ws.receive_json()
                assert message["code"] == "not_ready", message


@pytest.mark.skipif(not _redis_available(), reason="no Redis on 127.0.0.1:6379")
def test_readyz_redis(make_settings: Callable[..., ServiceSettings]) -> None:
    settings = make_settings(broker_url=REDIS_URL)
    with TestClient(create_app(settings, task_sender=Recorder())) as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["error"]["message"].startswith("no warm worker")  # the broker part passed
        write_heartbeat(settings)
        response = client.get("/readyz")
        assert response.status_code == 200, response.text
        assert response.json()["broker"] == "redis"


def test_readyz_redis_down(make_settings: Callable[..., ServiceSettings]) -> None:
    settings = make_settings(broker_url="redis://127.0.0.1:1/0")
    write_heartbeat(settings)
    with TestClient(create_app(settings, task_sender=Recorder())) as client:
        started = time.monotonic()
        response = client.get("/readyz")
    assert time.monotonic() - started < 3
    assert response.status_code == 503
    assert response.json()["error"]["message"].startswith("broker not reachable")


# ------------------------------------------------------------------------------------------- auth
def test_api_keys(make_settings: Callable[..., ServiceSettings], media: dict[str, Path]) -> None:
    settings = make_settings(api_keys=["key-one", "key-two"])
    recorder = Recorder()
    store = open_store(settings)
    job_id = add_job(store, JobStatus.SUCCEEDED)
    with TestClient(create_app(settings, task_sender=recorder)) as client:
        for method, path in [("GET", f"/jobs/{job_id}"), ("GET", f"/jobs/{job_id}/masks"),
                             ("GET", f"/jobs/{job_id}/overlay.mp4"), ("DELETE", f"/jobs/{job_id}"),
                             ("POST", "/segment")]:
            response = client.request(method, path)
            assert response.status_code == 401, (method, path)
            assert response.json()["error"]["code"] == "unauthorized"
            response = client.request(method, path, headers={"X-API-Key": "key-three"})
            assert response.status_code == 401, (method, path)
        assert client.get(f"/jobs/{job_id}", headers={"X-API-Key": "key-two"}).status_code == 200
        assert client.get(f"/jobs/{job_id}", headers={"Authorization": "Bearer key-one"}).status_code == 200
        with open(media["ok"], "rb") as fh:
            response = client.post("/segment", files={"file": ("ok.mp4", fh)}, headers={"X-API-Key": "key-one"})
        assert response.status_code == 202
        for path in ("/healthz", "/metrics", "/docs", "/openapi.json"):
            assert client.get(path).status_code == 200, path
        assert client.get("/readyz").status_code == 503  # open, just not ready
    assert len(recorder.calls) == 1


# ----------------------------------------------------------------------------------------- errors
def test_unhandled_errors_are_500_internal_error_without_details(settings: ServiceSettings) -> None:
    app = create_app(settings, task_sender=Recorder())

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError(f"secret path {settings.data_dir}")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal_error", "message": "internal error"}}


def test_openapi_documents_the_upload_form(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    form = spec["paths"]["/segment"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(form["properties"]) == {"file", "fps", "threshold", "overlay", "confidence"}
    assert {"/jobs/{job_id}", "/jobs/{job_id}/masks", "/jobs/{job_id}/overlay.mp4", "/healthz", "/readyz",
            "/metrics"} <= set(spec["paths"])


# ---------------------------------------------------------------------------------------- cleanup
def test_cleanup_loop_expires_finished_jobs(make_settings: Callable[..., ServiceSettings]) -> None:
    settings = make_settings(result_ttl_s=60.0, cleanup_interval_s=0.05)
    store = open_store(settings)
    old = add_job(store, JobStatus.SUCCEEDED)
    store.set_fields(old, finished_at=time.time() - 120)
    fresh = add_job(store, JobStatus.SUCCEEDED)
    queued = add_job(store)
    orphan = settings.data_dir / "jobs" / ("a" * 32)  # an upload whose API process died
    orphan.mkdir()
    (orphan / "upload.mp4").write_bytes(b"x")
    os.utime(orphan / "upload.mp4", (time.time() - 7200, time.time() - 7200))
    os.utime(orphan, (time.time() - 7200, time.time() - 7200))
    with TestClient(create_app(settings, task_sender=Recorder())) as client:
        deadline = time.monotonic() + 5
        while store.job_dir(old).exists() or orphan.exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert client.get(f"/jobs/{old}").status_code == 404
        assert client.get(f"/jobs/{fresh}").status_code == 200
        assert client.get(f"/jobs/{queued}").status_code == 200


# ---------------------------------------------------------------------------------------- metrics
def test_metrics(client: TestClient, settings: ServiceSettings, media: dict[str, Path]) -> None:
    store = open_store(settings)
    add_job(store)
    add_job(store, JobStatus.RUNNING)
    job_id = add_job(store, JobStatus.SUCCEEDED)
    before = _samples(client.get("/metrics").text)
    client.get(f"/jobs/{job_id}")
    client.get(f"/jobs/{'0' * 32}")
    client.get("/no/such/thing")
    with open(media["text"], "rb") as fh:
        client.post("/segment", files={"file": ("notes.txt", fh)})
    with open(media["ok"], "rb") as fh:
        client.post("/segment", files={"file": ("ok.mp4", fh)})
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    after = _samples(response.text)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("avs_http_requests_total", route="/jobs/{job_id}", method="GET", status="200") == 1
    assert delta("avs_http_requests_total", route="/jobs/{job_id}", method="GET", status="404") == 1
    assert delta("avs_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert delta("avs_http_requests_total", route="/segment", method="POST", status="415") == 1
    assert delta("avs_http_requests_total", route="/segment", method="POST", status="202") == 1
    assert not any(job_id in str(labels) or "0" * 32 in str(labels) for _, labels in after)  # templates only
    assert delta("avs_http_request_duration_seconds_count", route="/jobs/{job_id}", method="GET") == 2
    assert delta("avs_jobs_rejected_total", reason="not_media") == 1
    assert delta("avs_jobs_submitted_total") == 1
    assert delta("avs_upload_bytes_count") == 2
    assert delta("avs_upload_bytes_sum") == media["text"].stat().st_size + media["ok"].stat().st_size
    assert after[("avs_backlog_jobs", ())] == 2  # the fixture's queued job + the one just submitted
    assert after[("avs_jobs_in_state", (("state", "running"),))] == 1
    assert after[("avs_jobs_in_state", (("state", "succeeded"),))] == 1
    buckets = [labels for name, labels in after if name == "avs_upload_bytes_bucket"]
    assert ("le", "4.294967296e+09") in {item for labels in buckets for item in labels}


_MP_CHILD = textwrap.dedent("""
    import sys
    from fastapi.testclient import TestClient
    from app.api.main import create_app
    from worker.core.settings import ServiceSettings

    data_dir, healthz, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    client = TestClient(create_app(ServiceSettings(data_dir=data_dir, broker_url=None), task_sender=print))
    for _ in range(healthz):
        assert client.get("/healthz").status_code == 200
    assert client.post("/segment", content=b"x", headers={"Content-Type": "text/plain"}).status_code == 422
    if mode == "scrape":
        sys.stdout.write(client.get("/metrics").text)
""")


def test_metrics_aggregate_across_processes(tmp_path: Path, make_store) -> None:
    """PROMETHEUS_MULTIPROC_DIR is set before prometheus_client is imported (a fresh interpreter per
    process, as under `avs serve` or several uvicorn workers); the third process's /metrics adds up
    what all three wrote, and adds the job-store gauges."""
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    data_dir = tmp_path / "data"
    add_job(make_store(data_dir))
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom_dir)}
    env.pop("AVS_BROKER_URL", None)

    def child(healthz: int, mode: str) -> str:
        result = subprocess.run([sys.executable, "-c", _MP_CHILD, str(data_dir), str(healthz), mode], env=env,
                                cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    child(3, "count")
    child(5, "count")
    text = child(0, "scrape")
    samples = _samples(text)
    assert samples[("avs_http_requests_total", (("method", "GET"), ("route", "/healthz"), ("status", "200")))] == 8
    assert samples[("avs_http_requests_total", (("method", "POST"), ("route", "/segment"), ("status", "422")))] == 3
    assert samples[("avs_jobs_rejected_total", (("reason", "invalid_request"),))] == 3
    assert samples[("avs_http_request_duration_seconds_count", (("method", "GET"), ("route", "/healthz")))] == 8
    assert samples[("avs_backlog_jobs", ())] == 1
    assert len(list(prom_dir.glob("*.db"))) >= 3  # one file set per process


# ------------------------------------------------------------------------------------- torch-free
def test_api_process_never_imports_torch(tmp_path: Path, state_env: object) -> None:
    code = textwrap.dedent("""
        import sys
        from fastapi.testclient import TestClient
        import app.api.main
        from app.api.main import create_app
        from worker.core.settings import ServiceSettings

        client = TestClient(create_app(ServiceSettings(data_dir=sys.argv[1], broker_url=None), task_sender=print))
        for path in ("/healthz", "/readyz", "/metrics", "/jobs/" + "0" * 32, "/openapi.json"):
            client.get(path)
        print("\\n".join(sys.modules))
    """)
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                            timeout=120, check=True)
    loaded = set(result.stdout.split())
    assert "fastapi" in loaded
    assert "app.api.main" in loaded
    forbidden = {"torch", "torchvision", "torchaudio", "timm", "pycocotools", "worker.pipeline", "worker.tasks",
                 "worker.masks"}
    assert not forbidden & loaded
    assert not any(name == "model" or name.startswith(("model.", "torch.")) for name in loaded)


def test_status_counts_come_from_the_index_not_the_records(settings: ServiceSettings) -> None:
    from app.api.counts import StatusCounter

    store = open_store(settings)
    queued, done = add_job(store), add_job(store, JobStatus.SUCCEEDED)
    counter = StatusCounter(store)
    assert counter.counts() == {"queued": 1, "running": 0, "succeeded": 1, "failed": 0, "cancelled": 0}
    store.client.set(store._key(done), "{}")  # the count reads the status index, never a record
    run(store, queued)  # an unfinished one is
    assert counter.counts() == {"queued": 0, "running": 1, "succeeded": 1, "failed": 0, "cancelled": 0}
    store.remove_files(done, keep_record=False)  # expired: forgotten
    assert counter.counts()["succeeded"] == 0


def test_the_waiting_count_sees_every_upload_that_gains_its_record_while_it_counts(settings: ServiceSettings) -> None:
    """The admission count is one snapshot: an upload whose record is written while the count runs (another API
    process finishing an upload) is counted once, as an upload or as queued, never as neither."""
    import threading

    from app.api.counts import UPLOADING, StatusCounter
    from worker.core.job_record import JobOptions, JobRecord, Progress, UploadInfo, new_job_id

    store = open_store(settings)
    ids = [new_job_id() for _ in range(40)]
    for job_id in ids:
        assert store.reserve_upload(job_id, limit=100, ttl_s=3600) is None  # admitted, body still arriving
    counter = StatusCounter(store)
    seen: list[int] = []
    done = threading.Event()

    def count_until_done() -> None:
        while not done.is_set():
            counts = counter.counts(uploads_max_age_s=3600)
            seen.append(counts["queued"] + counts[UPLOADING])

    reader = threading.Thread(target=count_until_done)
    reader.start()
    try:
        for job_id in ids:  # the records arrive one by one, as the uploads finish
            store.create(JobRecord(job_id=job_id, options=JobOptions(),
                                   upload=UploadInfo(filename="a.mp4", bytes=3, path="upload.mp4"),
                                   progress=Progress(frames_total=25)))
            time.sleep(0.002)
    finally:
        done.set()
        reader.join()
    assert len(seen) > 10
    assert set(seen) == {40}
    counts = counter.counts(uploads_max_age_s=3600)
    assert (counts["queued"], counts[UPLOADING]) == (40, 0)
    assert store.reserve_upload(new_job_id(), limit=100, ttl_s=3600, now=time.time() - 7200) is None
    assert counter.counts(uploads_max_age_s=3600)[UPLOADING] == 0  # an abandoned upload's place has expired
