"""The Redis state store (issue #24) on real redis-servers: admission exact under a burst across two stores,
fencing checked by the server, a frozen Redis a bounded error, lost data detected, an AOF restart losing
nothing, and the API's answer to a frozen store."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.api.submission import _reserve
from worker.core.contracts import JobStatus
from worker.core.job_record import JobRecord, UploadInfo, new_job_id
from worker.core.jobstore import JobLocked, JobNotFound, JobStore
from worker.core.leases import acquire, reconcile
from worker.core.private_redis import PrivateRedis
from worker.core.settings import ServiceSettings
from worker.core.state import StaleWrite, StateLost, StateStorageFull, StateUnavailable, open_store
from worker.core.state.redis_store import RedisJobStore

StoreFactory = Callable[..., JobStore]  # the `make_store` fixture (tests/conftest.py)
T = 1_000_000.0


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test alone (it is stopped, frozen or reconfigured)."""
    server = PrivateRedis(tmp_path / "own-redis")
    if server.executable is None:
        pytest.skip("redis-server not installed")
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


def _url(server: PrivateRedis) -> str:
    assert server.endpoint is not None
    return server.endpoint.url


def _job(store: JobStore, **fields: object) -> str:
    job_id = new_job_id()
    store.create(JobRecord(job_id=job_id, upload=UploadInfo(path="upload.mp4"), **fields))
    return job_id


# ------------------------------------------------------------------------------------------ admission
def test_a_burst_of_100_admissions_through_two_stores_admits_exactly_the_limit(tmp_path: Path,
                                                                                make_store: StoreFactory) -> None:
    """Two stores over one state are two API processes; 100 threads reserve at once (the API's own
    `_reserve`: one script counts the queued records plus the reservations and reserves a place, then the job's
    folder); exactly `max_backlog` get in, and a created record takes its reservation over."""
    settings = ServiceSettings(_env_file=None, data_dir=tmp_path, max_backlog=7, api_keys=[])
    stores = [make_store(tmp_path), make_store(tmp_path)]
    _job(stores[0])  # one queued job already waits: 6 places are left
    _job(stores[1], status=JobStatus.SUCCEEDED)  # a finished one takes none
    barrier = threading.Barrier(100)

    def reserve(i: int) -> str | None:
        store, job_id = stores[i % 2], new_job_id()
        barrier.wait()
        return job_id if _reserve(store, settings, store.job_dir(job_id)) is None else None

    with ThreadPoolExecutor(100) as pool:
        admitted = [job_id for job_id in pool.map(reserve, range(100)) if job_id is not None]
    assert len(admitted) == 6
    assert _reserve(stores[0], settings, stores[0].job_dir(new_job_id())) == 7  # full: the count that refused
    stores[1].create(JobRecord(job_id=admitted[0], upload=UploadInfo(path="upload.mp4")))  # an upload finished
    assert stores[0].status_counts(uploads=True)["uploading"] == 5  # its place became its queued record
    assert _reserve(stores[0], settings, stores[0].job_dir(new_job_id())) == 7
    stores[0].release_upload(admitted[1])  # an upload refused after admission gives its place back
    assert _reserve(stores[0], settings, stores[0].job_dir(new_job_id())) is None


def test_the_status_index_follows_every_transition(tmp_path: Path, state_redis: str) -> None:
    store = RedisJobStore(tmp_path, state_redis, prefix=f"avs:test:{uuid.uuid4().hex}:")
    ids = [_job(store) for _ in range(3)]
    acquire(store, ids[0], "worker-a", 30, now=T)
    store.set_fields(ids[1], status=JobStatus.FAILED)
    counts = store.status_counts()
    assert (counts["queued"], counts["running"], counts["failed"], counts["succeeded"]) == (1, 1, 1, 0)
    store.remove_files(ids[1], keep_record=False)
    assert store.status_counts()["failed"] == 0
    assert sorted(store.list_ids()) == sorted([ids[0], ids[2]])
    with pytest.raises(JobNotFound):
        store.get(ids[1])  # deleted on purpose: "no job", not a loss


# ------------------------------------------------------------------------------------------- fencing
def test_a_stale_owner_s_write_is_refused_by_the_server(tmp_path: Path, state_redis: str) -> None:
    prefix = f"avs:test:{uuid.uuid4().hex}:"
    store = RedisJobStore(tmp_path, state_redis, prefix=prefix)
    job_id = _job(store)
    _, lease_a, stale = acquire(store, job_id, "worker-a", 30, now=T)
    _, lease_b, _ = acquire(store, job_id, "worker-b", 30, now=T + 31)  # A's lease expired: B took over
    assert lease_a is not None
    assert lease_b is not None
    assert stale is not None
    stale.timings = {"written_by": 1.0}
    with pytest.raises(StaleWrite, match=f"stored lease token is {lease_b.token}"), store.locked(job_id):
        store.write(stale)  # A still believes it owns the job: Redis says no, under the lock or not
    record = store.get(job_id)
    assert (record.owner, record.lease_token, record.timings) == ("worker-b", lease_b.token, {})


def test_a_holder_paused_past_its_lock_writes_nothing(tmp_path: Path, state_redis: str) -> None:
    prefix = f"avs:test:{uuid.uuid4().hex}:"
    slow = RedisJobStore(tmp_path, state_redis, prefix=prefix, lock_ttl_s=0.2)
    other = RedisJobStore(tmp_path, state_redis, prefix=prefix)
    job_id = _job(slow)
    with slow.locked(job_id):
        record = slow.get(job_id)
        time.sleep(0.4)  # "paused": the lock expires and another process changes the record
        other.set_fields(job_id, cancel_requested=True)
        record.timings = {"late": 1.0}
        with pytest.raises(JobLocked, match="lock expired"):
            slow.write(record)
    assert other.get(job_id).cancel_requested is True
    assert other.get(job_id).timings == {}


def test_a_record_that_outlived_its_upload_folder_is_failed_never_sent(tmp_path: Path, state_redis: str) -> None:
    """No ghost job: Redis applied a `create` whose answer timed out; the API answered 503 and removed the
    upload, so the client never got this id. The reconciler fails the record at its first pass, never sends it."""
    store = RedisJobStore(tmp_path, state_redis, prefix=f"avs:test:{uuid.uuid4().hex}:")
    orphan = _job(store, message_sent_at=None, created_at=T - 1)
    unsent = _job(store, message_sent_at=None, created_at=T - 1)
    shutil.rmtree(store.job_dir(orphan))
    sent: list[str] = []
    done = reconcile(store, sent.append, lease_timeout_s=30, unsent_grace_s=0, unsent_give_up_s=3600, now=T)
    assert (done.failed_unsent, sent) == ([orphan], [unsent])
    record = store.get(orphan)
    assert record.status is JobStatus.FAILED
    assert record.error is not None
    assert (record.error.code, "upload is gone" in record.error.message) == ("not_ready", True)


# ---------------------------------------------------------------------------------- Redis failures
def test_a_frozen_redis_is_a_bounded_state_unavailable(tmp_path: Path, own_redis: PrivateRedis) -> None:
    store = RedisJobStore(tmp_path, _url(own_redis), timeout_s=0.5)
    job_id = _job(store)
    assert own_redis.proc is not None
    os.kill(own_redis.proc.pid, signal.SIGSTOP)
    try:
        for call in (lambda: store.get(job_id), lambda: store.set_fields(job_id, cancel_requested=True),
                     lambda: list(store.list_ids())):
            started = time.monotonic()
            with pytest.raises(StateUnavailable, match=r"no answer within 0\.5 s") as caught:
                call()
            assert time.monotonic() - started < 2.0
            assert caught.value.code == "not_ready"
    finally:
        os.kill(own_redis.proc.pid, signal.SIGCONT)
    assert store.get(job_id).cancel_requested is False  # the write that timed out was never applied


def test_the_api_answers_503_with_retry_after_while_the_state_redis_is_frozen(tmp_path: Path,
                                                                              own_redis: PrivateRedis) -> None:
    settings = ServiceSettings(_env_file=None, data_dir=tmp_path / "data",
                               state_url=_url(own_redis), broker_timeout_s=0.5, api_keys=[],
                               broker_url=_url(own_redis))
    store = open_store(settings)
    job_id = _job(store)
    client = TestClient(create_app(settings, task_sender=lambda _id: None, stream_sender=lambda _id: None))
    assert client.get(f"/jobs/{job_id}").json()["status"] == "queued"
    assert own_redis.proc is not None
    os.kill(own_redis.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        response = client.get(f"/jobs/{job_id}")
        assert time.monotonic() - started < 2.0
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "not_ready"
        assert response.headers["Retry-After"] == "1"
        response = client.delete(f"/jobs/{job_id}")
        assert response.status_code == 503
    finally:
        os.kill(own_redis.proc.pid, signal.SIGCONT)
    assert store.get(job_id).status is JobStatus.QUEUED  # the refused DELETE changed nothing


def test_a_lost_record_or_a_flushed_redis_is_detected_not_no_job(tmp_path: Path, own_redis: PrivateRedis) -> None:
    url = _url(own_redis)
    store = RedisJobStore(tmp_path, url)
    kept, evicted = _job(store), _job(store)
    raw = redis.Redis.from_url(url)
    raw.delete(f"avs:state:jobs:job:{evicted}")  # what an evicting Redis does under memory pressure
    with pytest.raises(StateLost, match="indexed but its key is gone"):
        store.get(evicted)
    with pytest.raises(StateLost):
        store.set_fields(evicted, cancel_requested=True)
    assert store.get(kept).job_id == kept
    raw.flushall()  # a restart without persistence
    with pytest.raises(StateLost, match="sentinel"):
        store.get(kept)
    with pytest.raises(StateLost, match="sentinel"):
        RedisJobStore(tmp_path, url)  # a new process refuses to start on it: the data directory knew better


def test_a_redis_that_refuses_writes_is_state_unavailable_and_writes_nothing(tmp_path: Path,
                                                                            own_redis: PrivateRedis) -> None:
    store = RedisJobStore(tmp_path, _url(own_redis))
    job_id = _job(store)
    redis.Redis.from_url(_url(own_redis)).config_set("maxmemory", "1")  # full, and noeviction: OOM on writes
    with pytest.raises(StateUnavailable, match="Redis refuses writes"):
        store.set_fields(job_id, cancel_requested=True)
    redis.Redis.from_url(_url(own_redis)).config_set("maxmemory", "0")
    assert store.get(job_id).cancel_requested is False


@pytest.fixture
def redis_on_a_small_disk(tmp_path: Path) -> Iterator[tuple[PrivateRedis, Path]]:
    """A redis-server whose append-only file is on a 4 MiB tmpfs (a disk that fills up), and that tmpfs."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    server = PrivateRedis(disk / "redis")
    try:
        server.start()
        yield server, disk
    finally:
        server.stop()
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler.bin"
    with filler.open("ab") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def _write_outcome(store: JobStore, job_id: str, value: bool) -> str:
    try:
        store.set_fields(job_id, cancel_requested=value)
    except StateStorageFull:
        return "storage_full"
    return "written"


def test_a_full_disk_under_redis_is_storage_full_507_and_passes_when_freed(
        tmp_path: Path, redis_on_a_small_disk: tuple[PrivateRedis, Path]) -> None:
    """Redis cannot write its append-only file (MISCONF): `StateStorageFull`, and the API answers a submission
    507 `storage_full` + Retry-After (as for a full data volume), never a 503 or a 500; nothing accepted is
    lost, and writes pass again once the disk has room."""
    server, disk = redis_on_a_small_disk
    settings = ServiceSettings(_env_file=None, data_dir=tmp_path / "data", state_url=_url(server),
                               broker_url=_url(server), api_keys=[], retry_after_s=9)
    store = open_store(settings)
    job_id = _job(store)
    filler = _fill(disk)
    deadline = time.monotonic() + 5
    while _write_outcome(store, job_id, True) != "storage_full":  # the first write after the fill may be taken
        assert time.monotonic() < deadline, "Redis never refused a write on a full disk"
        time.sleep(0.1)
    client = TestClient(create_app(settings, task_sender=lambda _id: None, stream_sender=lambda _id: None))
    # refused at admission, before the body is read (the reservation is a Redis write)
    response = client.post("/segment", files={"file": ("clip.mp4", b"\0" * 1024, "video/mp4")})
    assert response.status_code == 507, response.text
    assert response.json()["error"]["code"] == "storage_full"
    assert response.headers["Retry-After"] == "9"
    assert list((settings.data_dir / "jobs").iterdir()) == [store.job_dir(job_id)]  # nothing reserved or left
    filler.unlink()
    deadline = time.monotonic() + 5
    while _write_outcome(store, job_id, False) != "written":  # Redis retries its file every second
        assert time.monotonic() < deadline, "Redis kept refusing writes after the disk was freed"
        time.sleep(0.1)
    assert store.get(job_id).status is JobStatus.QUEUED  # the record written before the fill is still there


def test_an_evicting_redis_is_refused_at_start(tmp_path: Path, own_redis: PrivateRedis) -> None:
    redis.Redis.from_url(_url(own_redis)).config_set("maxmemory-policy", "allkeys-lru")
    with pytest.raises(ValueError, match="must be 'noeviction'"):
        RedisJobStore(tmp_path, _url(own_redis))


def test_a_restart_with_the_append_only_file_loses_nothing(tmp_path: Path, own_redis: PrivateRedis) -> None:
    store = RedisJobStore(tmp_path, _url(own_redis))
    job_id = _job(store)
    _, lease, _ = acquire(store, job_id, "worker-a", 30, now=T)
    assert lease is not None
    own_redis.stop()  # SIGTERM: Redis writes its append-only file and exits
    own_redis.proc = None
    own_redis.start()  # a new password (and the same port when free): a new client
    again = RedisJobStore(tmp_path, _url(own_redis))
    record = again.get(job_id)
    assert (record.status, record.owner, record.lease_token) == (JobStatus.RUNNING, "worker-a", lease.token)
    assert again.status_counts()["running"] == 1


def test_two_prefixes_on_one_redis_are_two_deployments(tmp_path: Path, state_redis: str) -> None:
    """`AVS_STATE_PREFIX`: two deployments (or two tests) on one Redis never see each other's jobs, counts or
    reservations."""
    settings = [ServiceSettings(_env_file=None, data_dir=tmp_path / name, state_url=state_redis,
                                state_prefix=f"avs:test:{uuid.uuid4().hex}:") for name in ("a", "b")]
    a, b = (open_store(s) for s in settings)
    assert a is not b
    job_id = _job(a)
    assert a.reserve_upload(new_job_id(), limit=10, ttl_s=60) is None
    assert list(b.list_ids()) == []
    with pytest.raises(JobNotFound):
        b.get(job_id)
    assert (a.status_counts(uploads=True)["queued"], a.status_counts(uploads=True)["uploading"]) == (1, 1)
    assert (b.status_counts(uploads=True)["queued"], b.status_counts(uploads=True)["uploading"]) == (0, 0)
