"""Failure handling with real processes and injected faults (issue #12): a killed worker, a stopped one, a
duplicate message, a frozen broker, an orphaned job, a full disk, a burst of uploads against the backlog.

Every test runs its own Redis (started here, on a free port) where it has to freeze or stop it; leases are
3 s and the reconciler runs every 0.5 s (`conftest._base_env`), and the visibility timeout is an hour, so
every recovery below comes from the leases.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from worker.core.celery_app import create_celery
from worker.core.contracts import TASK_SEGMENT
from worker.core.jobstore import JobLocked
from worker.core.media.probe import count_frames
from worker.core.settings import ServiceSettings
from worker.masks import read_mask_lines
from worker.media.samples import make_video

from .conftest import Proc, Service, _base_env, free_port, mounted_tmpfs, wait_until

LEASE_S = 3.0


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("failures") / "long.mp4", duration_s=24.0, size=(96, 72), fps=25)


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("failures-short") / "short.mp4", duration_s=1.0, size=(64, 48))


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A Redis of this test's own (it may be frozen with SIGSTOP), on a free port, keeping nothing on disk."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (scripts/install-test-deps.sh installs it)")
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    import redis

    while True:
        try:
            redis.Redis.from_url(url, socket_timeout=1).ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.1)
    try:
        yield url, proc
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait(timeout=10)


def _service(tmp_path: Path, broker: str, **env: str) -> Service:
    service = Service(tmp_path / "data", _base_env(tmp_path / "data"))
    service.data_dir.mkdir(exist_ok=True)
    service.env.update({"AVS_BROKER_URL": broker, "AVS_VISIBILITY_TIMEOUT_S": "3600", "AVS_BROKER_TIMEOUT_S": "2",
                        **env})
    service.base_url = f"http://127.0.0.1:{free_port()}"
    return service


def _api(service: Service, *extra: str) -> Proc:
    return service.start("api", "serve", "--no-worker", "--port", service.base_url.rsplit(":", 1)[1], *extra)


_METRICS_PORT: dict[int, int] = {}  # worker pid -> its own /metrics port


def _worker(service: Service) -> Proc:
    port = free_port()
    proc = service.start("worker", "worker", extra_env={"AVS_WORKER_METRICS_PORT": str(port)})
    _METRICS_PORT[proc.popen.pid] = port
    return proc


def _owner_name(proc: Proc) -> str:
    import socket

    return f"{socket.gethostname()}-{proc.popen.pid}"


def _record(service: Service, job_id: str) -> dict:
    return service.record(job_id)


def _submit(service: Service, video: Path) -> str:
    with service.client() as http, video.open("rb") as f:
        response = http.post("/segment", files={"file": (video.name, f, "video/mp4")})
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def _wait(predicate, timeout: float, what: str) -> None:
    wait_until(predicate, timeout, what)


def _wait_ready_workers(service: Service, count: int, timeout: float = 120) -> None:
    def enough() -> bool:
        try:
            return len(httpx.get(f"{service.base_url}/readyz", timeout=2).json().get("workers", [])) >= count
        except (httpx.HTTPError, ValueError):
            return False

    _wait(enough, timeout, f"{count} warm worker(s)")


def _running_on(service: Service, job_id: str, workers: list[Proc], frames: int = 16) -> Proc:
    """Wait until the job runs with `frames` done; return the worker that owns it."""
    def started() -> bool:
        record = _record(service, job_id)
        return record["status"] == "running" and record["progress"]["frames_done"] >= frames

    _wait(started, 120, f"job {job_id} running")
    owner = _record(service, job_id)["owner"]
    return next(w for w in workers if _owner_name(w) == owner)


def _job_on_one_of_two_workers(service: Service, video: Path) -> tuple[str, Proc, Proc]:
    """The API and two workers up; a job submitted and running. Returns (job id, its owner, the idle worker)."""
    _api(service)
    workers = [_worker(service), _worker(service)]
    _wait_ready_workers(service, 2)
    job_id = _submit(service, video)
    owner = _running_on(service, job_id, workers)
    return job_id, owner, next(w for w in workers if w is not owner)


def _lock_free(service: Service, job_id: str) -> bool:
    try:
        with service.store().locked(job_id, timeout_s=0):
            return True
    except JobLocked:
        return False


def _frames_once(service: Service, job_id: str, video: Path) -> None:
    lines = list(read_mask_lines(service.data_dir / "jobs" / job_id / "masks.ndjson"))
    assert [r["frame_index"] for r in lines] == list(range(count_frames(video)))


def _counter(proc: Proc, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{_METRICS_PORT[proc.popen.pid]}/metrics", timeout=5).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def test_a_killed_worker_is_replaced_within_the_lease_and_a_duplicate_message_does_nothing(
        tmp_path: Path, own_redis: tuple[str, subprocess.Popen], long_clip: Path) -> None:
    # one job per worker: the owner has no free slot, so the duplicate below can only go to the idle worker
    # (with free slots the owner may take it itself, which its lease turns away as well, but in its own log)
    service = _service(tmp_path, own_redis[0], AVS_JOBS_PER_WORKER="1")
    try:
        job_id, owner, other = _job_on_one_of_two_workers(service, long_clip)
        # a duplicate message while the owner is alive (what a redelivery looks like): the idle worker takes
        # it, finds a live lease and does nothing
        create_celery(ServiceSettings(_env_file=None, data_dir=service.data_dir, broker_url=own_redis[0])
                      ).send_task(TASK_SEGMENT, args=[job_id])
        _wait(lambda: "this delivery does nothing" in other.tail(100_000), 30, "the duplicate delivery")
        assert _record(service, job_id)["attempts"] == 1
        assert _record(service, job_id)["owner"] == _owner_name(owner)

        os.killpg(owner.popen.pid, signal.SIGKILL)  # an out-of-memory kill: no warm shutdown, no ack
        killed_at = time.monotonic()
        _wait(lambda: _record(service, job_id)["status"] == "succeeded", 120, "the job to finish elsewhere")
        record = _record(service, job_id)
        assert record["owner"] == _owner_name(other)
        assert record["attempts"] == 2
        assert record["takeovers"][0]["previous_owner"] == _owner_name(owner)
        _frames_once(service, job_id, long_clip)
        # recovered within the lease + a reconciler pass + the rest of the work (not the hour-long visibility)
        assert time.monotonic() - killed_at < LEASE_S + 60
        assert _counter(other, "avs_jobs_taken_over_total") == 1
    finally:
        service.stop()


def test_a_stopped_worker_writes_nothing_when_it_resumes(tmp_path: Path, own_redis: tuple[str, subprocess.Popen],
                                                         long_clip: Path) -> None:
    service = _service(tmp_path, own_redis[0])
    try:
        job_id, owner, other = _job_on_one_of_two_workers(service, long_clip)
        for _ in range(20):  # pause it between two writes (a stop inside its record lock only delays the takeover)
            os.kill(owner.popen.pid, signal.SIGSTOP)
            if _lock_free(service, job_id):
                break
            os.kill(owner.popen.pid, signal.SIGCONT)
            time.sleep(0.05)
        stopped_frames = _record(service, job_id)["progress"]["frames_done"]
        _wait(lambda: _record(service, job_id)["owner"] == _owner_name(other), 30, "the takeover")
        os.kill(owner.popen.pid, signal.SIGCONT)  # it comes back, still believing it owns the job
        _wait(lambda: _record(service, job_id)["status"] == "succeeded", 120, "the job to finish")
        _wait(lambda: _counter(owner, "avs_lease_writes_refused_total") >= 1, 30, "the former owner to notice")
        assert "stopping without writing" in owner.tail(100_000)
        _frames_once(service, job_id, long_clip)
        assert stopped_frames < count_frames(long_clip)
        assert _record(service, job_id)["attempts"] == 2
    finally:
        for proc in service.procs:
            if proc.alive():
                os.kill(proc.popen.pid, signal.SIGCONT)
        service.stop()


def test_a_frozen_broker_answers_503_within_the_deadline_and_reads_stay_fast(
        tmp_path: Path, own_redis: tuple[str, subprocess.Popen], short_clip: Path) -> None:
    url, redis_proc = own_redis
    service = _service(tmp_path, url)
    try:
        _api(service)
        _wait(lambda: _answers(service, "/healthz"), 60, "the API")
        job_id = _submit(service, short_clip)  # queued (no worker): a record to read during the stall
        os.kill(redis_proc.pid, signal.SIGSTOP)  # frozen: what a network partition looks like too
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            posts = [pool.submit(_timed_post, service, short_clip) for _ in range(12)]
            time.sleep(1.0)  # every POST is now waiting on the broker
            started = time.monotonic()
            with service.client() as http:
                # the records are in the frozen Redis too: a bounded 503, never a hang or "no job"
                response = http.get(f"/jobs/{job_id}")
                assert (response.status_code, response.headers.get("Retry-After")) == (503, "1")
                assert response.json()["error"]["code"] == "not_ready"
                assert http.get("/healthz").status_code == 200
            reads = time.monotonic() - started
            answers = [f.result() for f in posts]
        # a read and a health check while twelve sends hang: one bounded 2 s read
        assert reads < 4.0
        for status, code, seconds in answers:
            assert (status, code) == (503, "not_ready")
            assert seconds < 2 + 6  # the 2 s broker deadline, plus upload and probe
        with service.client() as http:
            assert http.get("/readyz").status_code == 503
        os.kill(redis_proc.pid, signal.SIGCONT)
        queued = [r.job_id for r in service.store().records() if r.status.value == "queued"]
        assert queued == [job_id]  # no ghost: none of the refused uploads left a job that will run
    finally:
        os.kill(redis_proc.pid, signal.SIGCONT)
        service.stop()


def _answers(service: Service, path: str) -> bool:
    try:
        return httpx.get(f"{service.base_url}{path}", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _timed_post(service: Service, video: Path) -> tuple[int, str | None, float]:
    started = time.monotonic()
    with httpx.Client(base_url=service.base_url, timeout=60) as http, video.open("rb") as f:
        response = http.post("/segment", files={"file": (video.name, f, "video/mp4")})
    code = response.json().get("error", {}).get("code") if response.status_code >= 400 else None
    return response.status_code, code, time.monotonic() - started


def test_an_orphaned_job_is_cancelled_without_its_worker(tmp_path: Path, own_redis: tuple[str, subprocess.Popen],
                                                         long_clip: Path) -> None:
    service = _service(tmp_path, own_redis[0])
    try:
        _api(service)
        worker = _worker(service)
        _wait_ready_workers(service, 1)
        job_id = _submit(service, long_clip)
        _running_on(service, job_id, [worker])
        os.killpg(worker.popen.pid, signal.SIGKILL)  # nobody will ever see the cancel flag
        with service.client() as http:
            response = http.delete(f"/jobs/{job_id}")
        assert response.status_code in (200, 202)  # 202 while the lease still looks alive
        _wait(lambda: _record(service, job_id)["status"] == "cancelled", LEASE_S + 5, "the orphan's cancel")
        job_dir = service.data_dir / "jobs" / job_id
        assert sorted(p.name for p in job_dir.iterdir()) == []  # the media is gone; the record is in Redis
    finally:
        service.stop()


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs: a disk that fills up."""
    with mounted_tmpfs(tmp_path / "volume", "24m") as mount:
        yield mount


def _fill(volume: Path, leave_bytes: int = 0) -> Path:
    """Fill the volume, leaving about `leave_bytes` free; returns the filler file."""
    filler = volume / "filler.bin"
    free = shutil.disk_usage(volume).free - leave_bytes
    with filler.open("ab") as f:
        try:
            while free > 0:
                chunk = min(free, 1 << 20)
                f.write(b"\0" * chunk)
                f.flush()
                free -= chunk
        except OSError:
            pass
    return filler


def test_a_full_disk_is_507_for_uploads_and_storage_full_for_jobs(
        small_volume: Path, tmp_path: Path, long_clip: Path, short_clip: Path) -> None:
    service = Service(small_volume / "data", _base_env(small_volume / "data"))
    service.data_dir.mkdir()
    service.env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "prometheus")  # the volume holds only the data
    service.env["AVS_WORKER_METRICS_PORT"] = "0"
    port = free_port()
    service.base_url = f"http://127.0.0.1:{port}"
    service.start("serve", "serve", "--port", str(port))
    try:
        service.wait_ready()
        filler = _fill(small_volume, leave_bytes=48 * 1024)
        with service.client() as http, long_clip.open("rb") as f:
            response = http.post("/segment", files={"file": ("long.mp4", f, "video/mp4")})
        assert response.status_code == 507, response.text
        assert response.json()["error"]["code"] == "storage_full"
        assert list((service.data_dir / "jobs").iterdir()) == []
        filler.unlink()

        job_id = _submit(service, long_clip)
        _wait(lambda: _record(service, job_id)["progress"]["frames_done"] >= 8, 120, "the job to start")
        filler = _fill(small_volume)  # the disk fills up while the job writes its masks
        _wait(lambda: _record(service, job_id)["status"] == "failed", 60, "the job to fail")
        record = _record(service, job_id)
        assert record["error"]["code"] == "storage_full"
        assert sorted(p.name for p in (service.data_dir / "jobs" / job_id).iterdir()) == []  # no media left
        assert not list(small_volume.rglob("*.tmp"))  # no temporary file survived a failed write
        _fill(small_volume)  # what the job freed is taken again: the worker cannot even write its heartbeat
        _wait(lambda: not _answers(service, "/readyz"), 30, "readiness to fall")
        filler.unlink()
        _wait(lambda: _answers(service, "/readyz"), 30, "readiness to come back")
        again = _submit(service, short_clip)
        _wait(lambda: _record(service, again)["status"] == "succeeded", 120, "a job after the disk was freed")
    finally:
        service.stop()


def test_a_burst_of_uploads_never_passes_the_backlog_limit(tmp_path: Path, own_redis: tuple[str, subprocess.Popen],
                                                           short_clip: Path) -> None:
    service = _service(tmp_path, own_redis[0], AVS_MAX_BACKLOG="20")
    try:
        _api(service, "--workers", "2")  # two API processes: the limit must hold across them
        _wait(lambda: _answers(service, "/healthz"), 60, "the API")
        with concurrent.futures.ThreadPoolExecutor(100) as pool:
            answers = list(pool.map(lambda _: _timed_post(service, short_clip), range(100)))
        statuses = [status for status, _, _ in answers]
        assert statuses.count(202) == 20
        assert statuses.count(429) == 80
        records = list(service.store().records())
        assert [r.status.value for r in records] == ["queued"] * 20
    finally:
        service.stop()


def test_the_embedded_default_restarts_its_worker_and_recovers_the_job(tmp_path: Path, long_clip: Path) -> None:
    """On the embedded default (`avs serve`'s private Redis) the job survives its worker's death through its
    lease, and `avs serve` restarts the worker."""
    service = Service(tmp_path / "data", _base_env(tmp_path / "data"))
    service.data_dir.mkdir()
    service.env["AVS_WORKER_METRICS_PORT"] = "0"
    port = free_port()
    service.base_url = f"http://127.0.0.1:{port}"
    service.start("serve", "serve", "--port", str(port))
    try:
        service.wait_ready()
        job_id = _submit(service, long_clip)
        _wait(lambda: _record(service, job_id)["progress"]["frames_done"] >= 16, 120, "the job to run")
        first_owner = _record(service, job_id)["owner"]
        worker_pid = int(first_owner.rsplit("-", 1)[1])
        os.kill(worker_pid, signal.SIGKILL)
        _wait(lambda: _record(service, job_id)["status"] == "succeeded", 180, "the job to finish after the kill")
        record = _record(service, job_id)
        assert record["attempts"] == 2
        assert record["owner"] != first_owner  # the restarted worker finished it
        _frames_once(service, job_id, long_clip)
        assert "restarting" in service.procs[0].tail(100_000)
    finally:
        service.stop()


def test_several_jobs_in_flight_on_one_worker_survive_its_death(tmp_path: Path, own_redis: tuple[str, subprocess.Popen],
                                                                 long_clip: Path) -> None:
    """Three jobs run at once on one worker (their frames batched together); the worker is killed; a new one
    takes all three over and every frame of each is written exactly once."""
    service = _service(tmp_path, own_redis[0], AVS_JOBS_PER_WORKER="4")
    try:
        _api(service)
        first = _worker(service)
        _wait_ready_workers(service, 1)
        jobs = [_submit(service, long_clip) for _ in range(3)]
        for job_id in jobs:
            _running_on(service, job_id, [first], frames=8)
        assert {_record(service, job_id)["owner"] for job_id in jobs} == {_owner_name(first)}  # all at once
        os.killpg(first.popen.pid, signal.SIGKILL)
        second = _worker(service)
        for job_id in jobs:
            _wait(lambda job_id=job_id: _record(service, job_id)["status"] == "succeeded", 180, f"job {job_id}")
            assert _record(service, job_id)["owner"] == _owner_name(second)
            _frames_once(service, job_id, long_clip)
        assert _counter(second, "avs_jobs_taken_over_total") == 3
    finally:
        service.stop()
