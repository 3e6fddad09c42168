"""Who runs a job: leases, fencing tokens and the reconciler that notices dead owners.

The broker alone cannot say whether a job's worker is alive: Redis redelivers an unacknowledged message only
after its visibility timeout (hours, so that long jobs are not run twice). So ownership lives in the job
record, under its lock (the idea is Chubby's and ZooKeeper's lease + fencing token, as Kleppmann describes it
for storage writes):

* **Acquire.** A worker that receives a job takes it only if nobody holds a live lease: it sets `owner`,
  `lease_expires_at = now + lease_timeout_s` and increments `lease_token`. A message for a job whose owner is
  alive (a redelivery, a duplicate) does nothing.
* **Renew.** The owner extends its lease every `lease_timeout_s / 3` while it works; a renewal that finds
  another token has lost the lease.
* **Fence.** Every write of the job's results (mask lines, progress, the final status, the overlay) happens
  under the record's lock after checking that the token is still the owner's (`JobStore.fenced`). A paused
  or partitioned former owner therefore finds a newer token and writes nothing (`LeaseLost`): no job ever
  has two writers, whatever the broker redelivers.
* **Reconcile.** The API process runs `reconcile` every `reconcile_interval_s` (it is always up while jobs
  are accepted, holds no GPU and imports no torch; every API process may run it, since each decision is
  taken under the record's lock). A running job whose lease expired goes back to `queued` with its takeover
  recorded and a new message is sent; the next worker resumes it after the last complete frame. A running
  job whose owner is gone and whose cancellation was asked for is cancelled at once. A queued job whose
  message was never sent (the API died between the record and the send) is sent again. A queued job whose
  message was sent `untaken_grace_s` ago and no longer waits in the broker's queue was taken and never run
  (its worker died before taking the lease; the message was malformed and set aside; the broker lost it)
  and is sent again too (`worker.core.broker_queue`). Sending again is always safe: a message for a job
  that is running or finished does nothing.

Torch-free: the API imports it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum

from worker.core.contracts import JobStatus, ServiceErrorCode
from worker.core.job_record import JobError, JobRecord, Takeover
from worker.core.jobstore import JobLocked, JobNotFound, JobStore

log = logging.getLogger("avs.leases")

RECONCILE_LOCK_TIMEOUT_S = 1.0  # a record whose lock is busy this long is skipped until the next pass
MAX_TAKEOVERS_KEPT = 20  # the record keeps the latest takeovers: a job bouncing forever must not grow without end


class LeaseLost(RuntimeError):
    """This worker's lease on the job is gone (expired and taken over, or the job ended): it must not write."""


@dataclass(frozen=True)
class Lease:
    job_id: str
    owner: str
    token: int


class Acquired(StrEnum):
    """What `acquire` found."""

    TAKEN = "taken"  # the caller owns the job now
    OWNED = "owned"  # another owner's lease is live: do nothing
    CANCELLED = "cancelled"  # cancellation was asked for before anyone ran it
    FINISHED = "finished"
    MISSING = "missing"


def lease_live(record: JobRecord, now: float) -> bool:
    """True while a running job's owner holds an unexpired lease."""
    return (record.status is JobStatus.RUNNING and record.owner is not None
            and record.lease_expires_at is not None and record.lease_expires_at > now)


def acquire(store: JobStore, job_id: str, owner: str, lease_timeout_s: float, *,
            now: float | None = None) -> tuple[Acquired, Lease | None, JobRecord | None]:
    """Take the job for `owner` if nobody holds a live lease (see the module docstring).

    Returns (outcome, the lease when TAKEN, the record as written or found). A takeover of an expired lease
    is recorded in `takeovers`.
    """
    now = time.time() if now is None else now
    try:
        with store.locked(job_id):
            record = store.get(job_id)
            if record.finished:
                return Acquired.FINISHED, None, record
            if lease_live(record, now):  # before the cancel flag: a live owner ends its own cancelled job
                return Acquired.OWNED, None, record
            if record.cancel_requested:
                return Acquired.CANCELLED, None, record
            if record.status is JobStatus.RUNNING and record.owner is not None:
                _note_takeover(record, now, f"lease of {record.owner} expired; taken by {owner}")
            record.take(owner, now=now, lease_timeout_s=lease_timeout_s)
            store.write(record)  # only a taken job is written: a duplicate delivery leaves the record as it was
    except JobNotFound:
        return Acquired.MISSING, None, None
    return Acquired.TAKEN, Lease(job_id, owner, record.lease_token), record


def renew(store: JobStore, lease: Lease, lease_timeout_s: float, *, now: float | None = None) -> bool:
    """Extend the lease; False when it is no longer ours (the caller must stop writing)."""
    now = time.time() if now is None else now
    try:
        with fenced(store, lease) as record:
            record.lease_expires_at = now + lease_timeout_s
            store.write(record)
    except (LeaseLost, JobNotFound):
        return False
    return True


@contextmanager
def fenced(store: JobStore, lease: Lease, *, timeout_s: float | None = None) -> Iterator[JobRecord]:
    """Hold the record's lock and yield the record, if and only if `lease` is still the job's lease.

    Everything the owner writes for the job (mask lines, the record) happens inside this block. Raises
    `LeaseLost` when the token changed or the job is no longer running, `JobLocked` when the lock stays busy.
    """
    kwargs = {} if timeout_s is None else {"timeout_s": timeout_s}
    with store.locked(lease.job_id, **kwargs):
        record = store.get(lease.job_id)
        if record.lease_token != lease.token or record.status is not JobStatus.RUNNING:
            raise LeaseLost(f"job {lease.job_id}: lease {lease.token} of {lease.owner} is gone "
                            f"(token now {record.lease_token}, status {record.status.value})")
        yield record


def fenced_update(store: JobStore, lease: Lease, change: Callable[[JobRecord], None]) -> JobRecord:
    """`JobStore.update`, refused with `LeaseLost` unless `lease` still holds."""
    with fenced(store, lease) as record:
        change(record)
        record.updated_at = time.time()
        store.write(record)
        return record


def _note_takeover(record: JobRecord, now: float, reason: str) -> None:
    record.takeovers = [*record.takeovers, Takeover(at=now, previous_owner=record.owner, reason=reason)][
        -MAX_TAKEOVERS_KEPT:]


# ------------------------------------------------------------------------------------------ reconciler
@dataclass
class Reconciled:
    """What one pass did, by job id."""

    requeued: list[str]
    cancelled: list[str]
    resent: list[str]
    failed_unsent: list[str]
    untaken: list[str] = dataclasses.field(default_factory=list)


def reconcile(store: JobStore, send: Callable[[str], None], *, lease_timeout_s: float, unsent_grace_s: float,
              unsent_give_up_s: float, untaken_grace_s: float | None = None,
              waiting: Callable[[], set[str] | None] | None = None, now: float | None = None,
              keep: tuple[str, ...] = ()) -> Reconciled:
    """One pass over the unfinished jobs (see the module docstring). `send(job_id)` publishes a message and
    raises when the broker does not take it; a job whose send fails is left for the next pass. `waiting()`
    gives the ids of the jobs whose message waits in the broker's queue (None: it cannot tell; it may raise
    when the broker does not answer); without it, or without `untaken_grace_s`, untaken messages are not
    looked for. `keep`: files a job cancelled here keeps (a REST stream keeps its masks)."""
    now = time.time() if now is None else now
    done = Reconciled([], [], [], [])
    untaken: list[str] = []
    for record in list(store.records(JobStatus.RUNNING.value, JobStatus.QUEUED.value)):
        try:
            if record.status is JobStatus.RUNNING and not lease_live(record, now):
                _expired(store, record.job_id, send, now, done, keep)
            elif record.status is JobStatus.QUEUED and record.message_sent_at is None \
                    and now - record.created_at > unsent_grace_s:
                _unsent(store, record.job_id, send, now, unsent_give_up_s, done)
            elif record.status is JobStatus.QUEUED and record.message_sent_at is not None \
                    and untaken_grace_s is not None and now - record.message_sent_at > untaken_grace_s:
                untaken.append(record.job_id)
        except (JobNotFound, JobLocked, ValueError) as exc:  # gone, busy or unreadable: the next pass sees it
            log.info("reconcile: job %s skipped this pass (%s)", record.job_id, exc)
    if untaken and waiting is not None and untaken_grace_s is not None:
        _resend_untaken(store, untaken, send, waiting, now, untaken_grace_s, done)
    return done


def _resend_untaken(store: JobStore, candidates: list[str], send: Callable[[str], None],
                    waiting: Callable[[], set[str] | None], now: float, grace_s: float, done: Reconciled) -> None:
    try:
        in_queue = waiting()
    except Exception as exc:  # the broker is down or stalled: the next pass looks again
        log.warning("reconcile: could not read the broker's queue (%s)", exc)
        return
    if in_queue is None:
        return
    for job_id in candidates:
        if job_id in in_queue:
            continue  # waiting its turn
        try:
            record = store.get(job_id)  # read again: a worker may have taken it since the pass began
        except (JobNotFound, ValueError):
            continue
        if record.status is not JobStatus.QUEUED or record.message_sent_at is None \
                or now - record.message_sent_at <= grace_s:
            continue
        log.warning("job %s: queued, its message sent %.0f s ago and no longer in the queue; sending it again",
                    job_id, now - record.message_sent_at)
        before = len(done.resent)
        _send(store, job_id, send, done.resent)
        if len(done.resent) > before:
            done.untaken.append(job_id)


def _expired(store: JobStore, job_id: str, send: Callable[[str], None], now: float, done: Reconciled,
             keep: tuple[str, ...] = ()) -> None:
    action: dict[str, str] = {}

    def change(record: JobRecord) -> None:
        if record.status is not JobStatus.RUNNING or lease_live(record, now):
            return  # someone renewed or finished it since we looked
        # both fence out the former owner (token + 1), even if it comes back before anyone acquires
        if record.cancel_requested:
            record.finish(JobStatus.CANCELLED, now=now, by_owner=False)
            action["do"] = "cancelled"
        else:
            _note_takeover(record, now, f"lease of {record.owner} expired (last renewed until "
                                        f"{record.lease_expires_at}); requeued by the reconciler")
            record.requeue(now=now)
            action["do"] = "requeued"

    store.update(job_id, change, timeout_s=RECONCILE_LOCK_TIMEOUT_S)
    if action.get("do") == "cancelled":
        store.remove_files(job_id, keep=keep)
        done.cancelled.append(job_id)
    elif action.get("do") == "requeued":
        done.requeued.append(job_id)
        _send(store, job_id, send, done.resent)


def _unsent(store: JobStore, job_id: str, send: Callable[[str], None], now: float, give_up_s: float,
            done: Reconciled) -> None:
    record = store.get(job_id)
    orphan = record.upload is not None and not store.job_dir(job_id).exists()
    if orphan or now - record.created_at > give_up_s:
        # An orphan: a record without its folder can never run. With the Redis state backend it is a `create`
        # whose answer timed out after Redis applied it; the API answered 503 and removed the upload, so the
        # client never got this id: fail it, never send it (no ghost job).
        message = ("the job's upload is gone: it was refused while it was being recorded" if orphan
                   else f"the job could not be queued within {give_up_s:g} s")

        def fail(r: JobRecord) -> None:
            if r.status is JobStatus.QUEUED and r.message_sent_at is None:
                r.finish(JobStatus.FAILED, now=now, by_owner=False,
                         error=JobError(code=ServiceErrorCode.NOT_READY.value, message=message))

        store.update(job_id, fail, timeout_s=RECONCILE_LOCK_TIMEOUT_S)
        store.remove_files(job_id)
        done.failed_unsent.append(job_id)
        return
    _send(store, job_id, send, done.resent)


def _send(store: JobStore, job_id: str, send: Callable[[str], None], sent: list[str]) -> None:
    try:
        send(job_id)
    except Exception as exc:  # the broker is down or stalled: the next pass tries again
        log.warning("reconcile: could not send job %s (%s)", job_id, exc)
        return
    store.set_fields(job_id, message_sent_at=time.time())
    sent.append(job_id)
