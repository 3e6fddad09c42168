"""What the state store (`worker.core.state`) raises.

* `JobNotFound`: no record for this id (never created, expired, or not a well-formed id).
* `JobLocked`: the record's lock was not free within the timeout (its holder is stopped or stuck).

The next two are defined outcomes of a failing Redis (issue #24), never a silent "no job":

* `StateUnavailable`: the store did not answer within its bounded time (a frozen, partitioned or stopped
  Redis). A subclass of `JobLocked` (itself a `TimeoutError`), so every caller that already handles a busy
  record (the reconciler skips it this pass, a DELETE answers 503 + Retry-After) handles it the same way;
  the API maps the rest to 503 `not_ready` + `Retry-After`.
* `StateStorageFull` (a `StateUnavailable`): Redis refuses writes it cannot persist (a full disk under its
  append-only file): `storage_full`, as a full data volume is.
* `StateLost`: data the store once held is gone (a record whose id is still indexed, or the store's
  sentinel key): Redis evicted keys or restarted without persistence. Never read as "no such job".

Torch-free.
"""

from __future__ import annotations

from worker.core.contracts import ServiceErrorCode


class JobNotFound(KeyError):
    """No record for this id (never created, expired, or not a well-formed id)."""


class JobLocked(TimeoutError):
    """The record's lock was not free within the timeout (its holder is stopped or stuck)."""


class StateUnavailable(JobLocked):
    """The state store did not answer within its bounded call time (code `not_ready`: retry later)."""

    code = ServiceErrorCode.NOT_READY.value


class StateLost(RuntimeError):
    """Coordination state the store held is gone (eviction, or a Redis restarted without its append-only
    file); code `state_lost`. The operator must fix the Redis settings (README, "Shared state in Redis")."""

    code = ServiceErrorCode.STATE_LOST.value


class StaleWrite(JobLocked):
    """The store refused a record whose lease token is older than the stored one: the writer is a former owner
    (fencing, checked on the server). A `JobLocked`: the caller gives up or retries; nothing was overwritten."""


class StateStorageFull(StateUnavailable):
    """Redis refuses writes because it cannot persist them: its append-only file (or snapshot) cannot be written,
    a full disk under it (`MISCONF`). Code `storage_full` (507 + Retry-After in the API), like a full data volume:
    nothing was written, and Redis accepts writes again by itself once its file can be written."""

    code = ServiceErrorCode.STORAGE_FULL.value
