"""The names callers use for the job store: `JobStore` (records, locks, leases' fencing and admission in Redis,
media on the data volume), its errors and the media file names.

There is one implementation, `worker.core.state.redis_store.RedisJobStore` (issue #24: no second, file-based
implementation of the same rules remains); a process gets its store from `worker.core.state.open_store`.
Torch-free: the API imports it.
"""

from __future__ import annotations

from worker.core.state.errors import JobLocked, JobNotFound
from worker.core.state.media import MASKS, OVERLAY
from worker.core.state.redis_store import LOCK_TIMEOUT_S, RedisJobStore

JobStore = RedisJobStore

__all__ = ["LOCK_TIMEOUT_S", "MASKS", "OVERLAY", "JobLocked", "JobNotFound", "JobStore"]
