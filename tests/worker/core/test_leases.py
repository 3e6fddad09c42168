"""Leases, fencing and the reconciler, on real records under their real locks (times passed explicitly)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from worker.core.contracts import JobStatus
from worker.core.job_record import JobRecord, UploadInfo, new_job_id
from worker.core.jobstore import JobLocked, JobStore
from worker.core.leases import Acquired, LeaseLost, acquire, fenced, fenced_update, reconcile, renew

StoreFactory = Callable[..., JobStore]  # the `make_store` fixture (tests/conftest.py)

T = 1_000_000.0  # a fixed "now"
TIMEOUT = 30.0


@pytest.fixture
def store(tmp_path: Path, make_store: StoreFactory) -> JobStore:
    """A store on the test's state Redis (tests/conftest.py)."""
    return make_store(tmp_path)


def _stored(store: JobStore, job_id: str) -> str:
    return store.get(job_id).model_dump_json()


def _job(store: JobStore, **fields: object) -> str:
    job_id = new_job_id()
    values: dict[str, object] = {"created_at": T - 100, "message_sent_at": T - 100, **fields}
    store.create(JobRecord(job_id=job_id, upload=UploadInfo(path="upload.mp4"), **values))
    (store.job_dir(job_id) / "upload.mp4").write_bytes(b"video")
    return job_id


class Sends:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[str] = []
        self.fail = fail

    def __call__(self, job_id: str) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append(job_id)


def test_acquire_takes_a_queued_job_and_nobody_else_while_the_lease_lives(store: JobStore) -> None:
    job_id = _job(store)
    outcome, lease, record = acquire(store, job_id, "worker-a", TIMEOUT, now=T)
    assert outcome is Acquired.TAKEN
    assert lease is not None
    assert (lease.owner, lease.token) == ("worker-a", 1)
    assert (record.status, record.owner, record.lease_expires_at, record.attempts) == (
        JobStatus.RUNNING, "worker-a", T + TIMEOUT, 1)
    before = _stored(store, job_id)
    outcome, lease_b, record = acquire(store, job_id, "worker-b", TIMEOUT, now=T + 10)
    assert (outcome, lease_b, record.owner) == (Acquired.OWNED, None, "worker-a")
    assert _stored(store, job_id) == before  # a duplicate delivery writes nothing


def test_an_expired_lease_is_taken_over_and_recorded(store: JobStore) -> None:
    job_id = _job(store)
    _, lease_a, _ = acquire(store, job_id, "worker-a", TIMEOUT, now=T)
    outcome, lease_b, record = acquire(store, job_id, "worker-b", TIMEOUT, now=T + TIMEOUT + 1)
    assert outcome is Acquired.TAKEN
    assert lease_b is not None
    assert lease_a is not None
    assert lease_b.token == lease_a.token + 1
    assert record.attempts == 2
    assert record.takeovers[-1].previous_owner == "worker-a"
    assert "expired" in record.takeovers[-1].reason


def test_a_former_owner_can_write_nothing(store: JobStore) -> None:
    job_id = _job(store)
    _, lease_a, _ = acquire(store, job_id, "worker-a", TIMEOUT, now=T)
    acquire(store, job_id, "worker-b", TIMEOUT, now=T + TIMEOUT + 1)
    assert lease_a is not None
    with pytest.raises(LeaseLost), fenced(store, lease_a):
        pytest.fail("a stale owner must never get inside the fence")
    with pytest.raises(LeaseLost):
        fenced_update(store, lease_a, lambda r: setattr(r, "timings", {"x": 1.0}))
    assert not renew(store, lease_a, TIMEOUT, now=T + TIMEOUT + 2)
    assert store.get(job_id).owner == "worker-b"


def test_renew_extends_only_a_live_lease(store: JobStore) -> None:
    job_id = _job(store)
    _, lease, _ = acquire(store, job_id, "worker-a", TIMEOUT, now=T)
    assert lease is not None
    assert renew(store, lease, TIMEOUT, now=T + 20)
    assert store.get(job_id).lease_expires_at == T + 20 + TIMEOUT
    assert acquire(store, job_id, "worker-b", TIMEOUT, now=T + 40)[0] is Acquired.OWNED  # renewed: still owned


def test_a_cancelled_queued_job_is_not_run_but_a_live_owner_keeps_its_own(store: JobStore) -> None:
    queued = _job(store, cancel_requested=True)
    assert acquire(store, queued, "worker-a", TIMEOUT, now=T)[0] is Acquired.CANCELLED
    running = _job(store)
    acquire(store, running, "worker-a", TIMEOUT, now=T)
    store.set_fields(running, cancel_requested=True)
    assert acquire(store, running, "worker-b", TIMEOUT, now=T + 1)[0] is Acquired.OWNED  # its owner ends it


def test_reconcile_requeues_an_expired_lease_and_sends_it_again(store: JobStore) -> None:
    job_id = _job(store)
    _, lease, _ = acquire(store, job_id, "worker-a", TIMEOUT, now=T)
    sends = Sends()
    assert reconcile(store, sends, lease_timeout_s=TIMEOUT, unsent_grace_s=60, unsent_give_up_s=3600,
                     now=T + 10).requeued == []  # alive: left alone
    done = reconcile(store, sends, lease_timeout_s=TIMEOUT, unsent_grace_s=60, unsent_give_up_s=3600,
                     now=T + TIMEOUT + 1)
    assert done.requeued == [job_id]
    assert sends.sent == [job_id]
    record = store.get(job_id)
    assert (record.status, record.owner, record.lease_token) == (JobStatus.QUEUED, None, 2)
    assert record.message_sent_at is not None
    assert "requeued by the reconciler" in record.takeovers[-1].reason
    assert lease is not None
    with pytest.raises(LeaseLost), fenced(store, lease):  # the dead owner is fenced off at once
        pass


def test_reconcile_cancels_an_orphan_whose_cancel_was_asked(store: JobStore) -> None:
    job_id = _job(store)
    acquire(store, job_id, "worker-a", TIMEOUT, now=T)
    store.set_fields(job_id, cancel_requested=True)
    done = reconcile(store, Sends(), lease_timeout_s=TIMEOUT, unsent_grace_s=60, unsent_give_up_s=3600,
                     now=T + TIMEOUT + 1)
    assert done.cancelled == [job_id]
    assert store.get(job_id).status is JobStatus.CANCELLED
    assert sorted(p.name for p in store.job_dir(job_id).iterdir()) == []  # the record and its lock are in Redis


def test_reconcile_sends_what_was_never_sent_and_gives_up_in_the_end(store: JobStore) -> None:
    fresh = _job(store, message_sent_at=None, created_at=T - 10)
    stale = _job(store, message_sent_at=None, created_at=T - 120)
    ancient = _job(store, message_sent_at=None, created_at=T - 7200)
    down = Sends(fail=True)
    done = reconcile(store, down, lease_timeout_s=TIMEOUT, unsent_grace_s=60, unsent_give_up_s=3600, now=T)
    assert done.resent == []
    assert store.get(stale).message_sent_at is None  # the broker is down: tried again next pass
    assert done.failed_unsent == [ancient]
    assert store.get(ancient).status is JobStatus.FAILED
    assert store.get(ancient).error.code == "not_ready"  # type: ignore[union-attr]
    up = Sends()
    done = reconcile(store, up, lease_timeout_s=TIMEOUT, unsent_grace_s=60, unsent_give_up_s=3600, now=T)
    assert up.sent == [stale]
    assert store.get(stale).message_sent_at is not None
    assert store.get(fresh).message_sent_at is None  # within its grace: its POST may still be sending


def _hold_lock_and_stop(make: StoreFactory, root: str, job_id: str, ready: multiprocessing.Event) -> None:
    store = make(Path(root))  # its own connection, made after the fork
    with store.locked(job_id):
        ready.set()
        os.kill(os.getpid(), signal.SIGSTOP)


def test_a_stopped_lock_holder_makes_others_give_up_not_hang(store: JobStore, make_store: StoreFactory) -> None:
    job_id = _job(store)
    acquire(store, job_id, "worker-a", TIMEOUT, now=T)
    ready = multiprocessing.get_context("fork").Event()
    holder = multiprocessing.get_context("fork").Process(target=_hold_lock_and_stop,
                                                         args=(make_store, str(store.root.parent), job_id, ready))
    holder.start()
    try:
        assert ready.wait(10)
        started = time.monotonic()
        with pytest.raises(JobLocked), store.locked(job_id, timeout_s=0.5):
            pass
        assert time.monotonic() - started < 2
        started = time.monotonic()
        done = reconcile(store, Sends(), lease_timeout_s=TIMEOUT, unsent_grace_s=0, unsent_give_up_s=3600,
                         now=T + 1000)  # the lease expired long ago, but its record's lock is held
        assert done.requeued == []  # skipped this pass, not stuck
        assert time.monotonic() - started < 3
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()


def test_reconcile_sends_again_a_message_that_left_the_queue_without_its_job_running(store: JobStore) -> None:
    """Issue #27: a message taken by a worker that died before taking the lease, set aside as malformed, or
    lost with the broker's memory left its job `queued` for good. Now a queued job whose message is no longer
    in the queue `untaken_grace_s` after it was sent is sent again; one that waits its turn is left alone."""
    waits = _job(store, message_sent_at=T - 100)
    lost = _job(store, message_sent_at=T - 100)
    _job(store, message_sent_at=T - 10)  # sent recently: within its grace
    running = _job(store)
    acquire(store, running, "worker-a", TIMEOUT, now=T - 5)
    sends = Sends()
    asked: list[int] = []

    def waiting() -> set[str]:
        asked.append(1)
        return {waits}

    done = reconcile(store, sends, lease_timeout_s=TIMEOUT, unsent_grace_s=60, unsent_give_up_s=3600,
                     untaken_grace_s=30, waiting=waiting, now=T)
    assert sends.sent == [lost]
    assert done.untaken == [lost]
    assert len(asked) == 1  # the queue is read once per pass
    resent_at = store.get(lost).message_sent_at
    assert resent_at is not None
    assert resent_at > T
    assert store.get(lost).status is JobStatus.QUEUED
    again = reconcile(store, sends, lease_timeout_s=TIMEOUT, unsent_grace_s=60, unsent_give_up_s=3600,
                      untaken_grace_s=30, waiting=lambda: set(), now=T)
    assert again.untaken == [waits]  # `lost` was just sent again: within its grace


def test_reconcile_leaves_untaken_jobs_when_the_queue_cannot_be_read(store: JobStore) -> None:
    job_id = _job(store, message_sent_at=T - 100)
    sends = Sends()

    def down() -> set[str]:
        raise ConnectionError("broker down")

    for waiting in (down, lambda: None):
        done = reconcile(store, sends, lease_timeout_s=TIMEOUT, unsent_grace_s=60, unsent_give_up_s=3600,
                         untaken_grace_s=30, waiting=waiting, now=T)
        assert (done.untaken, sends.sent) == ([], [])
    assert store.get(job_id).message_sent_at == T - 100
