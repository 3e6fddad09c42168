"""Broker calls from the API, bounded: a deadline on each, and threads of their own.

A stalled broker (Redis frozen, a network partition) blocks a publish on its socket. Run in the default
thread pool, 40 such publishes starve every other route that needs a thread (`GET /jobs/{id}`, `/readyz`,
`/metrics`). So every send runs under `anyio.fail_after(broker_timeout_s)` on a capacity limiter of its own,
and is abandoned (the thread finishes or times out on its socket, the request does not wait) when the
deadline passes: the client gets 503 `not_ready` + Retry-After within the deadline. The Celery app used for
sending also has socket timeouts, so an abandoned publish does not hold its thread for long either.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

SEND_LIMITER = anyio.CapacityLimiter(8)
"""At most this many publishes at once; more wait for a slot (within their own deadline)."""

PROBE_LIMITER = anyio.CapacityLimiter(4)
"""ffprobe runs (up to the probe and scan deadlines each) never hold more than this many pool threads."""


class BrokerUnavailable(RuntimeError):
    """The broker did not take the message within the deadline, or refused it."""


async def send_bounded(send: Callable[[str], None], job_id: str, timeout_s: float) -> None:
    """`send(job_id)` in a limited thread, within `timeout_s`; `BrokerUnavailable` otherwise."""
    try:
        with anyio.fail_after(timeout_s):
            await anyio.to_thread.run_sync(send, job_id, limiter=SEND_LIMITER, abandon_on_cancel=True)
    except TimeoutError:
        raise BrokerUnavailable(f"the broker did not answer within {timeout_s:g} s") from None
    except Exception as exc:
        raise BrokerUnavailable(f"the broker refused the message ({type(exc).__name__})") from exc
