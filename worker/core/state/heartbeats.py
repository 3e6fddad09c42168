"""Worker heartbeats: expiring Redis keys that say which workers are warm and where their live endpoints are.

A warm worker (`worker.heartbeat`) writes a `WorkerHeartbeat` as JSON under `{AVS_STATE_PREFIX}workers:{name}`
every `heartbeat_s`, and again whenever a live session starts or ends, with a time to live of
`STALE_FACTOR × heartbeat_s`: a worker that stops beating (killed, frozen, cut off) disappears by itself, and
its supervisor deletes the key at once when it sees the process die (`forget`). The names of the workers are
kept in a set beside the keys, `{AVS_STATE_PREFIX}workers`, so a reader gets every beat in one round trip
(a Lua script: the members, their values, and the members whose key expired removed) instead of a SCAN over
the whole keyspace, which holds every job as well.

Readers (`/readyz`, `/live` routing, `POST /streams` admission, `GET /model`) all go through
`read_heartbeats`: a value that is not a valid heartbeat is skipped and counted, never an error. They still
check `last_seen` (the key's TTL is set by the writer; the age check also covers a reader whose own
`heartbeat_s` is shorter) and `worker.core.process_identity.process_gone` (a worker in our PID namespace that is
gone stops counting at once). Every call is bounded by the client's socket timeout; a Redis that does not
answer is `StateUnavailable`.

Torch-free.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worker.core.state.errors import StateUnavailable

STALE_FACTOR = 3.0  # a heartbeat older than this many `heartbeat_s` is stale (and its key has expired)

# KEYS[1]: the set of names; ARGV[1]: the key prefix of a heartbeat. Returns [name, value, name, value, ...]
# for the keys that exist and removes from the set the names whose key has expired. One script, so a beat
# written between the read and the removal cannot be dropped from the set (scripts run atomically).
_READ = """
local names = redis.call('SMEMBERS', KEYS[1])
local out = {}
for _, name in ipairs(names) do
  local value = redis.call('GET', ARGV[1] .. name)
  if value then
    out[#out + 1] = name
    out[#out + 1] = value
  else
    redis.call('SREM', KEYS[1], name)
  end
end
return out
"""


class WorkerHeartbeat(BaseModel):
    """What a warm worker says about itself (`worker.heartbeat.WorkerRuntime.write_heartbeat`).

    `last_seen` is a Unix time in seconds; `pid_namespace` is `worker.core.process_identity.pid_namespace()`
    (None when unknown); `live_sessions` / `live_capacity` count the live sessions and REST streams on its live
    endpoint `live_url` (None: no live endpoint); `model` is the card `GET /model` shows
    (`worker.core.model_card.model_summary`)."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1)
    hostname: str | None = None
    pid: int | None = None
    pid_namespace: str | None = None
    warm: bool = False
    last_seen: float
    variant: str | None = None
    device: str | None = None
    current_jobs: list[str] = Field(default_factory=list)
    model_load_seconds: float | None = None
    live_url: str | None = None
    live_sessions: int = Field(0, ge=0)
    live_capacity: int = Field(0, ge=0)
    model: dict[str, Any] | None = None

    def age_s(self, now: float | None = None) -> float:
        """Seconds since `last_seen` (0 when it is ahead of `now`: another host's clock)."""
        return max((time.time() if now is None else now) - self.last_seen, 0.0)


@dataclass(frozen=True)
class HeartbeatRead:
    """What `read_heartbeats` found: the valid beats (by name) and how many values were not heartbeats."""

    beats: list[WorkerHeartbeat] = field(default_factory=list)
    malformed: int = 0


def heartbeat_ttl_s(heartbeat_s: float) -> float:
    """How long a heartbeat key lives: `STALE_FACTOR × heartbeat_s` (seconds)."""
    return STALE_FACTOR * heartbeat_s


def names_key(prefix: str) -> str:
    """The set of worker names under `prefix` (`AVS_STATE_PREFIX`)."""
    return f"{prefix}workers"


def heartbeat_key(prefix: str, name: str) -> str:
    """The key of worker `name`'s heartbeat under `prefix`."""
    return f"{prefix}workers:{name}"


def _unavailable(what: str, exc: Exception) -> StateUnavailable:
    return StateUnavailable(f"worker heartbeats: {what} got no answer from Redis ({type(exc).__name__}: "
                            f"{str(exc)[:160]})")


def write_heartbeat(client: redis.Redis, prefix: str, beat: WorkerHeartbeat, ttl_s: float) -> None:
    """Store `beat` for `ttl_s` seconds (SET ... PX) and list its name. `StateUnavailable` when Redis does not
    answer or refuses the write."""
    ttl_ms = max(1, int(ttl_s * 1000))
    try:
        pipe = client.pipeline(transaction=True)
        pipe.set(heartbeat_key(prefix, beat.name), beat.model_dump_json(), px=ttl_ms)
        pipe.sadd(names_key(prefix), beat.name)
        pipe.execute()
    except redis.RedisError as exc:
        raise _unavailable("write", exc) from None


def read_heartbeats(client: redis.Redis, prefix: str) -> HeartbeatRead:
    """Every heartbeat under `prefix` whose key has not expired, sorted by name; values that are not valid
    heartbeats (or whose name does not match their key) are skipped and counted in `malformed`.
    `StateUnavailable` when Redis does not answer."""
    try:
        flat = client.eval(_READ, 1, names_key(prefix), heartbeat_key(prefix, ""))
    except redis.RedisError as exc:
        raise _unavailable("read", exc) from None
    beats: list[WorkerHeartbeat] = []
    malformed = 0
    for name, value in zip(flat[::2], flat[1::2], strict=True):
        name = name.decode() if isinstance(name, bytes) else name
        try:
            beat = WorkerHeartbeat.model_validate_json(value)
        except ValidationError:
            malformed += 1
            continue
        if beat.name != name:
            malformed += 1  # written by hand under another name: not a worker we can route to or forget
            continue
        beats.append(beat)
    return HeartbeatRead(sorted(beats, key=lambda b: b.name), malformed)


def forget(client: redis.Redis, prefix: str, name: str) -> None:
    """Delete worker `name`'s heartbeat (its process is known to be gone). `StateUnavailable` when Redis does not
    answer."""
    try:
        pipe = client.pipeline(transaction=True)
        pipe.delete(heartbeat_key(prefix, name))
        pipe.srem(names_key(prefix), name)
        pipe.execute()
    except redis.RedisError as exc:
        raise _unavailable("forget", exc) from None


def heartbeat_board(settings: Any) -> tuple[redis.Redis, str]:
    """(the client, the key prefix) of the heartbeats of the deployment `settings` (a `ServiceSettings`) names:
    the state Redis (`worker.core.state.open_store`, bounded by `broker_timeout_s`) and `AVS_STATE_PREFIX`.
    `StateUnavailable` when that Redis does not answer or is not known yet."""
    from worker.core.state import open_store

    return open_store(settings).client, settings.state_prefix
