"""Which jobs still have a message waiting in the broker's queue (read-only; for the reconciler).

A job message is sent with the job id as its task id (`app.api.deps.CelerySender`), so the messages waiting
in the queue name their jobs. kombu's Redis transport keeps a queue as a list (one per priority step:
`celery`, then `celery` + SEP + 3, 6, 9); a message taken by a worker leaves the list. A job that is still
`queued` well after its message was sent, and whose id is in none of those lists, was taken and never run
(its worker died before taking the lease, or the message was set aside as malformed) or was lost with the
broker's memory: the reconciler sends it again (`worker.core.leases.reconcile`). A duplicate is harmless: a
message for a job that is running or finished does nothing.

Torch-free: the API imports it.
"""

from __future__ import annotations

import re

QUEUE = "celery"
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)  # kombu's default steps; step 0 is the plain list
_JOB_ID = re.compile(rb"[0-9a-f]{32}")


def queue_keys(queue: str = QUEUE) -> list[str]:
    """The Redis lists that hold `queue`'s waiting messages."""
    return [queue, *(f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS)]


def waiting_job_ids(url: str, *, timeout_s: float, queue: str = QUEUE) -> set[str]:
    """The job ids named by the messages waiting in `queue` on the Redis at `url`.

    Reads every waiting message once (LRANGE; the backlog limit keeps the lists short). Raises
    `redis.RedisError` or `OSError` when Redis does not answer within `timeout_s`.
    """
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        pipe = client.pipeline(transaction=False)
        for key in queue_keys(queue):
            pipe.lrange(key, 0, -1)
        found: set[str] = set()
        for messages in pipe.execute():
            for raw in messages:
                found.update(match.decode() for match in _JOB_ID.findall(raw))
        return found
    finally:
        client.close()
