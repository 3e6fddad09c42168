"""Readiness: is there a broker to queue on, and a warm worker to run what is queued?

* Broker. Redis (`AVS_BROKER_URL`, or the embedded default's private Redis recorded under
  `AVS_DATA_DIR/broker`): `PING` with a 1 s socket timeout. Other URLs are not probed (reported ready: we
  cannot check them without importing their transports).
* Worker. Workers write a heartbeat file `settings.workers_dir/<name>.json`
  (`{"hostname", "pid", "warm": true, "last_seen": <unix time>, "variant", "device", ...}`) once their
  model is loaded and warmed up, and refresh it every `heartbeat_s`. Ready needs at least one with
  `warm` true and `last_seen` newer than `3 × heartbeat_s`, whose process is not known to be dead (a
  worker on this host in our PID namespace is checked at once: `worker.core.process_identity`).
"""

from __future__ import annotations

import json
import time
from typing import Any

from worker.core.private_redis import broker_url
from worker.core.process_identity import process_gone
from worker.core.settings import ServiceSettings

STALE_FACTOR = 3.0


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


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def warm_workers(settings: ServiceSettings, *, now: float | None = None) -> tuple[list[dict[str, Any]], int]:
    """(warm and fresh workers, number of heartbeat files seen)."""
    now = time.time() if now is None else now
    max_age = STALE_FACTOR * settings.heartbeat_s
    directory = settings.workers_dir
    fresh: list[dict[str, Any]] = []
    seen = 0
    try:
        entries = sorted(directory.glob("*.json"))
    except OSError:
        return [], 0
    for path in entries:
        try:
            beat = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # being rewritten, or not ours
        if not isinstance(beat, dict):
            continue
        seen += 1
        last_seen = beat.get("last_seen")
        if beat.get("warm") is not True or not isinstance(last_seen, int | float):
            continue
        age = now - float(last_seen)
        if age > max_age or process_gone(beat.get("pid"), beat.get("pid_namespace")):
            continue  # stale, or its process is known to be dead (same host): no need to wait for staleness
        pid = beat.get("pid")
        fresh.append({"name": path.stem, "hostname": beat.get("hostname"), "pid": pid if isinstance(pid, int) else None,
                      "variant": beat.get("variant"), "device": beat.get("device"), "age_s": round(max(age, 0.0), 3),
                      "live_url": beat.get("live_url") if isinstance(beat.get("live_url"), str) else None,
                      "live_sessions": _count(beat.get("live_sessions")),
                      "live_capacity": _count(beat.get("live_capacity")),
                      "model": beat.get("model") if isinstance(beat.get("model"), dict) else None})
    return fresh, seen


def broker_kind(settings: ServiceSettings) -> str:
    return "embedded" if settings.embedded else (settings.broker_url or "").split("://", 1)[0]


def readiness(settings: ServiceSettings) -> tuple[dict[str, Any] | None, str | None]:
    """(the 200 body, None) when ready, else (None, the reason for the 503)."""
    problem = broker_problem(settings)
    if problem:
        return None, problem
    workers, seen = warm_workers(settings)
    if not workers:
        if seen:
            return None, (f"no warm worker: {seen} heartbeat(s) found, none warm and newer than "
                          f"{STALE_FACTOR * settings.heartbeat_s:g} s")
        return None, "no warm worker: no worker heartbeat found"
    shown = [{k: v for k, v in worker.items() if k != "model"} for worker in workers]  # the card: GET /model
    return {"status": "ready", "broker": broker_kind(settings), "workers": shown}, None
