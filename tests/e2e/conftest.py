"""Real processes for end-to-end tests: uvicorn, Celery workers, Redis, `avs serve`.

Each fixture starts the real command line the README documents, waits for it to be ready, and kills
the whole process group afterwards (no stray workers between tests).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from worker.core.jobstore import JobStore
from worker.core.settings import ServiceSettings
from worker.core.state import open_store

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/14"  # a database of its own, flushed per test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, sig)
            self.popen.wait(timeout=timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)


@dataclass
class Service:
    data_dir: Path
    env: dict[str, str]
    base_url: str = ""
    procs: list[Proc] = field(default_factory=list)

    def start(self, name: str, *args: str, extra_env: dict[str, str] | None = None) -> Proc:
        log = self.data_dir / f"{name}-{len(self.procs)}.log"
        handle = log.open("w")
        popen = subprocess.Popen([str(BIN / "avs"), *args], env={**self.env, **(extra_env or {})}, stdout=handle,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=60)

    def store(self, folder: str = "jobs") -> JobStore:
        """The service's job store as its own processes open it (its Redis: the broker's, or the private one)."""
        settings = ServiceSettings(_env_file=None, data_dir=self.data_dir, api_keys=[],
                                   broker_url=self.env.get("AVS_BROKER_URL") or None)
        return open_store(settings, folder)

    def record(self, job_id: str) -> dict:
        """A job's record, read through the store (the test may look at fields the API does not show)."""
        return self.store().get(job_id).model_dump(mode="json")

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            for proc in self.procs:
                if not proc.alive():
                    raise AssertionError(f"{proc.name} exited early:\n{proc.tail()}")
            try:
                last = httpx.get(f"{self.base_url}/readyz", timeout=2)
                if last.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        logs = "\n".join(f"--- {p.name}\n{p.tail()}" for p in self.procs)
        raise AssertionError(f"service not ready: {last and last.text}\n{logs}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def _base_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVS_", "PROMETHEUS_"))}
    env.update({"AVS_DATA_DIR": str(data_dir), "AVS_HEARTBEAT_S": "1", "AVS_BATCH_SIZE": "4",
                # short leases, so that recovering a dead worker's job takes seconds in the tests
                "AVS_LEASE_TIMEOUT_S": "3", "AVS_RECONCILE_INTERVAL_S": "0.5", "PYTHONUNBUFFERED": "1",
                # the processes run this checkout's code, also when the `avs` script's environment was installed
                # from another checkout (a git worktree sharing its virtual environment)
                "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])})
    return env


@pytest.fixture
def redis_url() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:  # .ci/run starts Redis; a developer machine may not have one
        pytest.fail(f"Redis is not answering on {REDIS_URL}: {exc} (start it, see README)")
    client.flushdb()
    yield REDIS_URL
    client.flushdb()


@contextlib.contextmanager
def running_embedded(data_dir: Path, extra_env: dict[str, str] | None = None,
                     extra_args: tuple[str, ...] = ()) -> Iterator[Service]:
    """`avs serve [extra_args]` with no broker configured (API + one worker on its private Redis), ready."""
    service = Service(data_dir, _base_env(data_dir))
    service.data_dir.mkdir()
    port = free_port()
    service.base_url = f"http://127.0.0.1:{port}"
    service.env.update({"AVS_WORKER_METRICS_PORT": "0", **(extra_env or {})})
    service.start("serve", "serve", "--port", str(port), *extra_args)
    try:
        service.wait_ready()
        yield service
    finally:
        service.stop()


@pytest.fixture
def embedded_service(tmp_path: Path) -> Iterator[Service]:
    """`avs serve` with no broker configured: API + one worker on its private Redis."""
    with running_embedded(tmp_path / "data") as service:
        yield service


@pytest.fixture
def redis_service(tmp_path: Path, redis_url: str) -> Iterator[Service]:
    """uvicorn API (`avs serve --no-worker`) and one `avs worker`, on the machine's Redis."""
    service = Service(tmp_path / "data", _base_env(tmp_path / "data"))
    service.data_dir.mkdir()
    # the visibility timeout is a backstop of an hour: recovery must come from the leases; one job at a time,
    # so that a second submission stays queued (tests/e2e/test_failures.py runs several per worker)
    service.env.update({"AVS_BROKER_URL": redis_url, "AVS_VISIBILITY_TIMEOUT_S": "3600", "AVS_JOBS_PER_WORKER": "1"})
    port = free_port()
    service.base_url = f"http://127.0.0.1:{port}"
    service.env["AVS_WORKER_METRICS_PORT"] = str(free_port())
    service.start("api", "serve", "--no-worker", "--port", str(port))
    service.start("worker", "worker")
    try:
        service.wait_ready()
        yield service
    finally:
        service.stop()


def wait_until(predicate, timeout: float = 20.0, what: str = "condition"):
    """Poll `predicate` every 0.1 s until it returns something true (returned) or `timeout` s pass
    (AssertionError naming `what`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@contextlib.contextmanager
def mounted_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` ("24m") at `path`: a disk that fills up; the test is skipped where mounting is not
    allowed."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
