"""The one transition API of the job record (`JobRecord.take/requeue/finish`, issue #24): the fields that go with
a status change together, the lease's holder and everyone else end a job by one rule, and a final status is
final."""

from __future__ import annotations

import pytest

from worker.core.contracts import JobStatus
from worker.core.job_record import InvalidTransition, JobError, JobRecord, new_job_id

T = 1_000_000.0


def _running(owner: str = "worker-a") -> JobRecord:
    record = JobRecord(job_id=new_job_id())
    record.take(owner, now=T, lease_timeout_s=30)
    return record


def test_take_starts_a_lease_and_grows_the_fencing_token() -> None:
    record = _running()
    assert (record.status, record.owner, record.lease_token, record.attempts) == (JobStatus.RUNNING, "worker-a", 1, 1)
    assert (record.started_at, record.lease_expires_at) == (T, T + 30)
    record.take("worker-b", now=T + 40, lease_timeout_s=30)  # a takeover after expiry
    assert (record.owner, record.lease_token, record.attempts, record.started_at) == ("worker-b", 2, 2, T)


def test_the_owner_finishing_its_job_stays_its_owner_and_keeps_its_token() -> None:
    record = _running()
    record.finish(JobStatus.SUCCEEDED, now=T + 5)
    assert (record.status, record.owner, record.lease_token) == (JobStatus.SUCCEEDED, "worker-a", 1)
    assert (record.finished_at, record.updated_at, record.lease_expires_at, record.error) == (T + 5, T + 5, None, None)


@pytest.mark.parametrize("status", [JobStatus.CANCELLED, JobStatus.FAILED])
def test_anyone_else_ending_a_running_job_fences_its_owner_out(status: JobStatus) -> None:
    record = _running()
    error = JobError(code="not_ready", message="gone") if status is JobStatus.FAILED else None
    record.finish(status, now=T + 5, error=error, by_owner=False)
    assert (record.status, record.owner, record.lease_token, record.lease_expires_at) == (status, None, 2, None)
    assert record.error == error


def test_ending_a_queued_job_touches_no_lease() -> None:
    record = JobRecord(job_id=new_job_id())
    record.finish(JobStatus.CANCELLED, now=T, by_owner=False)
    assert (record.status, record.owner, record.lease_token, record.finished_at) == (JobStatus.CANCELLED, None, 0, T)


def test_requeue_fences_the_former_owner_out_and_asks_for_a_new_message() -> None:
    record = _running()
    record.message_sent_at = T - 1
    record.requeue(now=T + 60)
    assert (record.status, record.owner, record.lease_token, record.message_sent_at, record.lease_expires_at) == (
        JobStatus.QUEUED, None, 2, None, None)


@pytest.mark.parametrize("final", [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED])
def test_a_final_status_is_final(final: JobStatus) -> None:
    record = _running()
    record.finish(final, now=T)
    with pytest.raises(InvalidTransition):
        record.finish(JobStatus.CANCELLED, now=T + 1)
    with pytest.raises(InvalidTransition):
        record.requeue(now=T + 1)
    with pytest.raises(InvalidTransition):
        record.take("worker-b", now=T + 1, lease_timeout_s=30)
    assert (record.status, record.finished_at) == (final, T)


def test_finish_needs_a_final_status() -> None:
    with pytest.raises(InvalidTransition):
        _running().finish(JobStatus.QUEUED)
