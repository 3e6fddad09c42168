"""Readiness: is there a broker to queue on, and a warm worker to run what is queued?

* Broker. Redis (`AVS_BROKER_URL`, or the embedded default's private Redis recorded under
  `AVS_DATA_DIR/broker`): `PING` with a 1 s socket timeout. Other URLs are not probed (reported ready: we
  cannot check them without importing their transports).
* Worker. Workers write a heartbeat (`worker.core.state.heartbeats.WorkerHeartbeat`: name, hostname, pid,
  `warm`, `last_seen`, variant, device, live endpoint, ...) as a Redis key under `AVS_STATE_PREFIX` that
  expires after `3 × heartbeat_s`, once their model is loaded and warmed up, and refresh it every
  `heartbeat_s`. Ready needs at least one with `warm` true and `last_seen` newer than `3 × heartbeat_s`, whose
  process is not known to be dead (a worker on this host in our PID namespace is checked at once:
  `worker.core.process_identity`). A state Redis that does not answer is "not ready", with the reason.
"""

from __future__ import annotations

import time
from typing import Any

from worker.core.private_redis import broker_url
from worker.core.process_identity import process_gone
from worker.core.settings import ServiceSettings
from worker.core.state.errors import StateUnavailable
from worker.core.state.heartbeats import STALE_FACTOR, heartbeat_board, read_heartbeats

__all__ = ["STALE_FACTOR", "broker_kind", "broker_problem", "readiness", "warm_workers"]


def broker_problem(settings: ServiceSettings) -> str | None:
    """None when the broker is reachable, else what is wrong (for the 503 message)."""
    url = broker_url(settings)
    if url is None:
        return "broker not reachable: the embedded broker is not running (it starts with `avs serve`)"
    if url.startswith(("redis://", "rediss://", "unix://")):
        import redis

        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            client.ping()
        except Exception as exc:  # redis.exceptions.* and OSError
            return f"broker not reachable: Redis did not answer PING ({type(exc).__name__})"
        finally:
            client.close()
    return None


def warm_workers(settings: ServiceSettings, *, now: float | None = None) -> tuple[list[dict[str, Any]], int]:
    """(warm and fresh workers, number of heartbeats seen, malformed ones included): the one reader of the
    heartbeats for the API (`/readyz`, `/live` routing, stream admission, `GET /model`). `StateUnavailable` when
    the state Redis does not answer (bounded by `broker_timeout_s`)."""
    now = time.time() if now is None else now
    max_age = STALE_FACTOR * settings.heartbeat_s
    client, prefix = heartbeat_board(settings)
    found = read_heartbeats(client, prefix)
    fresh: list[dict[str, Any]] = []
    for beat in found.beats:
        if not beat.warm or now - beat.last_seen > max_age:
            continue  # loading, or older than this reader's staleness (its key outlived it: a longer writer TTL)
        if process_gone(beat.pid, beat.pid_namespace):
            continue  # its process is known to be dead (same host): no need to wait for the key to expire
        fresh.append({"name": beat.name, "hostname": beat.hostname, "pid": beat.pid, "variant": beat.variant,
                      "device": beat.device, "age_s": round(beat.age_s(now), 3), "live_url": beat.live_url,
                      "live_sessions": beat.live_sessions, "live_capacity": beat.live_capacity,
                      "model": beat.model})
    return fresh, len(found.beats) + found.malformed


def broker_kind(settings: ServiceSettings) -> str:
    return "embedded" if settings.embedded else (settings.broker_url or "").split("://", 1)[0]


def readiness(settings: ServiceSettings) -> tuple[dict[str, Any] | None, str | None]:
    """(the 200 body, None) when ready, else (None, the reason for the 503)."""
    problem = broker_problem(settings)
    if problem:
        return None, problem
    try:
        workers, seen = warm_workers(settings)
    except StateUnavailable as exc:
        return None, f"worker heartbeats not readable: {exc}"
    if not workers:
        if seen:
            return None, (f"no warm worker: {seen} heartbeat(s) found, none warm and newer than "
                          f"{STALE_FACTOR * settings.heartbeat_s:g} s")
        return None, "no warm worker: no worker heartbeat found"
    shown = [{k: v for k, v in worker.items() if k != "model"} for worker in workers]  # the card: GET /model
    return {"status": "ready", "broker": broker_kind(settings), "workers": shown}, None
