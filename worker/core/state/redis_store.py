"""Job records in Redis: the one implementation of the coordination state, on a server every host can reach (#24).

What moves to Redis, and what stays (the next issue moves the media):

* **Records** are JSON strings under `{prefix}{folder}:job:{id}` (the `JobRecord` model, as in `job.json`).
  `{prefix}{folder}:ids` is the set of the ids that have a record; `{prefix}{folder}:status:{status}` one set
  per status (an index, kept by the same script as the record, so it is never out of step with it).
* **The record lock** (`locked`) is a key `{prefix}{folder}:lock:{id}` set with `SET NX PX` to a random token
  (the single-instance Redis lock of the Redis documentation, "Distributed locks with Redis"). Unlike `flock`
  it expires (`LOCK_TTL_S`): a holder that dies does not hold it for ever. A holder that was paused past the
  expiry can write nothing: every record write is one Lua script that checks, on the server, that the lock
  still holds the writer's token.
* **Fencing on the server.** The same script refuses a record whose `lease_token` is lower than the stored
  one (a token never goes back; see `worker.core.leases`): a stale owner's write is refused by Redis itself,
  whatever it believes (Kleppmann's fencing token, checked by the storage).
* **Admission** of an upload (`reserve_upload`) is one script on the server: the queued records (the status
  index) plus the upload reservations, a sorted set `{prefix}{folder}:reservations` of ids scored by when each
  expires (an upload being received or probed has no record yet), compared with the limit and a place
  reserved in the same step: exact under a burst across API processes and hosts. A created record takes its
  reservation over in the write script. `admission` is one Redis lock for the REST streams' check.
* **Lost data is detected.** A sentinel key is written when a store first opens a Redis and checked by every
  read and write script; a record whose id is still in the ids set but whose key is gone is `StateLost`, not
  "no job". At start the store refuses a Redis whose `maxmemory-policy` is not `noeviction`.
* **Bounded calls.** Every call gives up after `timeout_s` (no retries inside redis-py): a frozen Redis is
  `StateUnavailable` (503 + Retry-After in the API) within that time.

Still on the volume in this step: the media (uploads, mask lines, overlays; `worker.core.state.media`).
There is no other backend: the `job.json` + `flock` store of the first releases is gone (issue #24).

Torch-free: the API imports it.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from pydantic import ValidationError
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.core.contracts import JobStatus
from worker.core.job_record import JobRecord, is_job_id
from worker.core.state.errors import (
    JobLocked,
    JobNotFound,
    StaleWrite,
    StateLost,
    StateStorageFull,
    StateUnavailable,
)
from worker.core.state.media import MediaFolder

LOCK_TIMEOUT_S = 10.0
"""How long a record's lock is waited for. A holder only keeps it for a read-modify-write or one batch of mask
lines, so a wait this long means a holder that is stopped (SIGSTOP, a frozen VM): give up, retry later."""

LOCK_TTL_S = 5.0
"""A record lock not released after this long is free again (its holder died or froze; `AVS_STATE_LOCK_TTL_S`).
Every holder only keeps it for a read-modify-write or one batch of mask lines, far less than this; and it is
shorter than `LOCK_TIMEOUT_S`, so whoever waits for a dead holder's lock gets it instead of giving up."""

log = logging.getLogger("avs.state")

DEFAULT_PREFIX = "avs:state:"
UPLOADING = "uploading"
"""The key `status_counts(uploads=True)` adds for the uploads admitted whose record does not exist yet."""
_STATUSES = tuple(s.value for s in JobStatus)

# KEYS: record, lock, ids, sentinel, status-set prefix, reservations. ARGV: json, lock token ('' = none), lease
# token, job id, '1' when creating, new status. A created record takes over its upload's reservation in the same
# step, so the admission count never sees the job twice or not at all.
_WRITE = """
if redis.call('EXISTS', KEYS[4]) == 0 then return redis.error_reply('AVS_STATE_LOST sentinel') end
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return redis.error_reply('AVS_LOCK_LOST') end
local current = redis.call('GET', KEYS[1])
if current then
  local old = cjson.decode(current)
  local token = tonumber(old['lease_token']) or 0
  if tonumber(ARGV[3]) < token then return redis.error_reply('AVS_FENCED ' .. token) end
  if old['status'] then redis.call('SREM', KEYS[5] .. old['status'], ARGV[4]) end
elseif ARGV[5] ~= '1' then
  if redis.call('SISMEMBER', KEYS[3], ARGV[4]) == 1 then return redis.error_reply('AVS_STATE_LOST record') end
  return redis.error_reply('AVS_NOT_FOUND')
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[4])
redis.call('SADD', KEYS[5] .. ARGV[6], ARGV[4])
if ARGV[5] == '1' then redis.call('ZREM', KEYS[6], ARGV[4]) end
return 1
"""

# KEYS: reservations, queued set, sentinel. ARGV: job id, limit, now, expiry. Admission in one step on the server:
# drop the expired reservations, count the queued records plus the live reservations, and reserve a place for
# this upload when the count is under the limit. Returns -1 when reserved, else the count that refused it.
_RESERVE = """
if redis.call('EXISTS', KEYS[3]) == 0 then return redis.error_reply('AVS_STATE_LOST sentinel') end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local waiting = redis.call('SCARD', KEYS[2]) + redis.call('ZCARD', KEYS[1])
if waiting >= tonumber(ARGV[2]) then return waiting end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
return -1
"""

# KEYS: record, ids, sentinel. ARGV: job id. Returns the record, or an error naming what is missing.
_READ = """
if redis.call('EXISTS', KEYS[3]) == 0 then return redis.error_reply('AVS_STATE_LOST sentinel') end
local current = redis.call('GET', KEYS[1])
if current then return current end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return redis.error_reply('AVS_STATE_LOST record') end
return redis.error_reply('AVS_NOT_FOUND')
"""

# KEYS: record, ids, status-set prefix, reservations. ARGV: job id, then every status. The id leaves every status
# set, not only the one its record names: a record that no longer parses must not leave the index counting it.
_DELETE = """
redis.call('ZREM', KEYS[4], ARGV[1])
for i = 2, #ARGV do redis.call('SREM', KEYS[3] .. ARGV[i], ARGV[1]) end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS: lock. ARGV: token. Deletes the lock only when it is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


_REFUSED_WRITES = ("OOM", "MISCONF", "READONLY")
"""Redis's refusals of a write it cannot keep: `maxmemory` reached under `noeviction`, an append-only file it
cannot write (a full disk), a replica. Defined outcome: `StateUnavailable` (`StateStorageFull` for MISCONF),
nothing written."""


def connect(url: str, timeout_s: float) -> redis.Redis:
    """A client whose every call gives up after `timeout_s` (no retries: the bound is the caller's)."""
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                retry=Retry(NoBackoff(), 0), retry_on_timeout=False, decode_responses=True,
                                health_check_interval=0)


def check_eviction_policy(client: redis.Redis) -> str:
    """The server's `maxmemory-policy`, which must be `noeviction` (an evicting Redis would drop records and
    leases silently): `ValueError` naming the setting otherwise. A server that forbids CONFIG (a managed Redis)
    is read through INFO."""
    try:
        policy = str(client.config_get("maxmemory-policy").get("maxmemory-policy", ""))
    except redis.ResponseError:
        policy = str(client.info("memory").get("maxmemory_policy", ""))
    if policy != "noeviction":
        raise ValueError(f"the state Redis has maxmemory-policy {policy!r}: it must be 'noeviction' (an evicting "
                         "Redis drops job records and leases); set it in redis.conf or with CONFIG SET")
    return policy


class RedisJobStore(MediaFolder):
    """The records of one folder (`jobs`, or `streams` for the REST streams, which share the record, its lock and
    its leases but are never listed as jobs), with their locks and indexes in Redis (see the module docstring);
    the media folder `data_dir/folder/<id>/` is still where the uploads, masks and overlays are.

    Raises `StateUnavailable` when Redis does not answer within `timeout_s`, `StateLost` when data it held is
    gone, `ValueError` at construction when Redis may evict keys.
    """

    def __init__(self, data_dir: str | Path, url: str, folder: str = "jobs", *, timeout_s: float = 5.0,
                 prefix: str = DEFAULT_PREFIX, lock_ttl_s: float = LOCK_TTL_S) -> None:
        super().__init__(data_dir, folder)
        self.url = url
        self.timeout_s = timeout_s
        self.lock_ttl_ms = int(lock_ttl_s * 1000)
        self.ns = f"{prefix}{folder}:"
        self.sentinel = f"{prefix}sentinel"
        self.client = connect(url, timeout_s)
        self._held: dict[tuple[int, str], str] = {}
        self._held_lock = threading.Lock()
        with self._bounded("open"):
            check_eviction_policy(self.client)
            self._open_sentinel()
            self._write = self.client.register_script(_WRITE)
            self._read = self.client.register_script(_READ)
            self._delete = self.client.register_script(_DELETE)
            self._reserve = self.client.register_script(_RESERVE)
            self._release = self.client.register_script(_RELEASE)

    def _open_sentinel(self) -> None:
        """The sentinel says "this Redis holds this data directory's state". Its value is kept beside the media
        too (`AVS_DATA_DIR/.state-sentinel-<folder>`): a Redis without it while the data directory has one lost
        everything (restarted without its append-only file, or flushed) and the store refuses to start
        (`StateLost`) instead of answering "no such job" for every job on the volume."""
        marker = self.root.parent / f".state-sentinel-{self.root.name}"
        known = marker.read_text(encoding="utf-8").strip() if marker.exists() else None
        current = self.client.get(self.sentinel)
        if current is None:
            if known is not None:
                raise StateLost(f"state store: {_lost_reason('sentinel')} (the data directory knew sentinel "
                                f"{known}; the Redis at {_redacted(self.url)} has none)")
            self.client.set(self.sentinel, secrets.token_hex(16), nx=True)
            current = self.client.get(self.sentinel)
        if known != current:
            tmp = marker.with_name(f"{marker.name}.{secrets.token_hex(4)}.tmp")
            try:
                tmp.write_text(str(current), encoding="utf-8")
                tmp.replace(marker)
            except OSError as exc:  # a full volume: the store still works, this start just cannot leave its mark
                tmp.unlink(missing_ok=True)
                log.warning("state store: could not write %s (%s)", marker, exc)

    # ------------------------------------------------------------------------------------------ keys
    def _key(self, job_id: str) -> str:
        if not is_job_id(job_id):
            raise JobNotFound(job_id)
        return f"{self.ns}job:{job_id}"

    def _lock_key(self, job_id: str) -> str:
        return f"{self.ns}lock:{job_id}"

    @property
    def _ids(self) -> str:
        return f"{self.ns}ids"

    @property
    def _status_prefix(self) -> str:
        return f"{self.ns}status:"

    @property
    def _reservations(self) -> str:
        return f"{self.ns}reservations"

    @contextmanager
    def _bounded(self, what: str) -> Iterator[None]:
        """Turn the client's failures into the store's: a timeout or a refused connection is
        `StateUnavailable`, a script's named refusal its exception."""
        try:
            yield
        except (redis.TimeoutError, redis.ConnectionError) as exc:
            raise StateUnavailable(f"state store: {what} got no answer within {self.timeout_s:g} s ({exc})") \
                from None
        except (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError) as exc:
            raise StateUnavailable(f"state store: {what}: Redis refuses writes ({str(exc)[:160]})") from None
        except redis.ResponseError as exc:
            message = str(exc)
            if message.startswith("AVS_STATE_LOST"):
                raise StateLost(f"state store: {what}: {_lost_reason(message)}") from None
            if message.startswith("AVS_LOCK_LOST"):
                raise JobLocked(f"state store: {what}: the record lock expired before the write (the holder "
                                f"was paused longer than {self.lock_ttl_ms / 1000:g} s); nothing written") \
                    from None
            if message.startswith("AVS_FENCED"):
                raise StaleWrite(f"state store: {what}: refused, the stored lease token is "
                                 f"{message.split()[-1]}") from None
            if message.startswith("AVS_NOT_FOUND"):
                raise JobNotFound(what) from None
            if message.startswith("MISCONF"):  # its append-only file cannot be written: a full disk under it
                raise StateStorageFull(f"state store: {what}: Redis cannot persist writes ({message[:160]})") \
                    from None
            if message.startswith(_REFUSED_WRITES):  # full memory (noeviction), a replica
                raise StateUnavailable(f"state store: {what}: Redis refuses writes ({message[:160]})") from None
            raise

    # --------------------------------------------------------------------------------------- records
    def create(self, record: JobRecord) -> JobRecord:
        """Write a new record (its folder, which may already hold the upload, is made too)."""
        self.job_dir(record.job_id).mkdir(parents=True, exist_ok=True)
        with self.locked(record.job_id):
            self._put(record, create=True)
        return record

    def get(self, job_id: str) -> JobRecord:
        """The record; `JobNotFound` when there is none, `StateLost` when it was there and is gone, `ValueError`
        when it does not parse."""
        key = self._key(job_id)
        with self._bounded(f"job {job_id}"):
            text = self._read(keys=[key, self._ids, self.sentinel], args=[job_id])
        try:
            return JobRecord.model_validate_json(text)
        except ValidationError as exc:
            raise ValueError(f"job {job_id}: unreadable record ({exc.error_count()} errors)") from exc

    def has_record(self, job_id: str) -> bool:
        with self._bounded(f"job {job_id}"):
            return bool(self.client.exists(self._key(job_id)))

    def write(self, record: JobRecord) -> None:
        """Replace the record (the caller holds `locked`; without it, the lock is taken for this write).
        Refused on the server, writing nothing, when the caller's lock expired (`JobLocked`) or when the stored
        lease token is newer than this record's (`StaleWrite`)."""
        token = self._token(record.job_id)
        if token is None:
            with self.locked(record.job_id):
                self._put(record, create=False)
        else:
            self._put(record, create=False)

    def _put(self, record: JobRecord, *, create: bool) -> None:
        job_id = record.job_id
        token = self._token(job_id)
        keys = [self._key(job_id), self._lock_key(job_id), self._ids, self.sentinel, self._status_prefix,
                self._reservations]
        args = [record.model_dump_json(), token or "", record.lease_token, job_id, "1" if create else "0",
                record.status.value]
        with self._bounded(f"job {job_id}"):
            self._write(keys=keys, args=args)
        self.notify(job_id, "record")

    def masks_channel(self, job_id: str) -> str:
        """The pub/sub channel that says "job `job_id` changed": its record or its mask lines."""
        return f"{self.ns}masks:{job_id}"

    def notify(self, job_id: str, what: str = "lines") -> None:
        """Tell the followers of `job_id`'s mask stream (`app.api.mask_signals`) to read again: PUBLISH `what`
        (`record` after every record write, `lines` after a batch of mask lines) on its channel. Best effort: a
        signal lost (Redis busy, a follower reconnecting) only delays a follower until its safety poll, so a
        failure is logged at debug level and never fails the write that came before it."""
        try:
            self.client.publish(self.masks_channel(job_id), what)
        except redis.RedisError as exc:
            log.debug("state store: no signal for job %s (%s)", job_id, exc)

    def update(self, job_id: str, change: Callable[[JobRecord], None], *,
               timeout_s: float = LOCK_TIMEOUT_S) -> JobRecord:
        """Apply `change` (which edits the record in place) under the lock, write it, return it."""
        with self.locked(job_id, timeout_s=timeout_s):
            record = self.get(job_id)
            change(record)
            record.updated_at = time.time()
            self.write(record)
            return record

    def set_fields(self, job_id: str, **fields: Any) -> JobRecord:
        """Set top-level fields (validated as they are assigned) under the lock."""

        def change(record: JobRecord) -> None:
            for name, value in fields.items():
                setattr(record, name, value)

        return self.update(job_id, change)

    def records(self, *statuses: str) -> Iterator[JobRecord]:
        """Every record of the folder, or with `statuses` those the status index lists under one of them (a record
        read may have moved on since); those deleted while listed, or unreadable, are skipped."""
        for job_id in (self.ids_with_status(*statuses) if statuses else self.list_ids()):
            try:
                yield self.get(job_id)
            except (JobNotFound, ValueError):
                continue  # deleted right now

    def ids_with_status(self, *statuses: str) -> list[str]:
        """The ids whose record has one of `statuses`, from the status index (no record read)."""
        with self._bounded("list"):
            pipe = self.client.pipeline(transaction=False)
            for status in statuses:
                pipe.smembers(self._status_prefix + status)
            return sorted({job_id for members in pipe.execute() for job_id in members})

    def expire(self, older_than_s: float, *, now: float | None = None) -> list[str]:
        """Delete finished jobs whose end is older than `older_than_s` (result TTL), record and media. Returns
        their ids."""
        now = time.time() if now is None else now
        finished = [s.value for s in JobStatus if s.finished]
        removed = []
        for job_id in self.ids_with_status(*finished):
            try:
                record = self.get(job_id)
            except (JobNotFound, ValueError):
                continue
            if record.finished and record.finished_at and now - record.finished_at > older_than_s:
                self.remove_files(record.job_id, keep_record=False)
                removed.append(record.job_id)
        return removed

    def list_ids(self) -> Iterator[str]:
        with self._bounded("list"):
            ids = sorted(self.client.smembers(self._ids))
        yield from ids

    def status_counts(self, *, uploads: bool = False, now: float | None = None) -> dict[str, int]:
        """`{status: records}` from the status index; with `uploads`, also `"uploading"`: the live upload
        reservations (`reserve_upload`). One MULTI/EXEC, so one snapshot: a record that takes over its
        reservation meanwhile is counted once, never as neither."""
        now = time.time() if now is None else now
        with self._bounded("count"):
            pipe = self.client.pipeline(transaction=True)
            for status in _STATUSES:
                pipe.scard(self._status_prefix + status)
            if uploads:
                pipe.zcount(self._reservations, f"({now}", "+inf")
            results = [int(n) for n in pipe.execute()]
        counts = dict(zip(_STATUSES, results, strict=False))
        if uploads:
            counts[UPLOADING] = results[-1]
        return counts

    # -------------------------------------------------------------------------------------- admission
    def reserve_upload(self, job_id: str, limit: int, ttl_s: float, *, now: float | None = None) -> int | None:
        """Admission of an upload, atomic across every API process of every host (one script on the server): when
        the queued records plus the uploads already reserved are fewer than `limit`, reserve a place for
        `job_id` for `ttl_s` seconds (its record, once created, takes the place over) and return None; else
        return that count. An abandoned reservation (its API process died) stops counting after `ttl_s`."""
        self._key(job_id)
        now = time.time() if now is None else now
        with self._bounded("admission"):
            waiting = int(self._reserve(keys=[self._reservations, self._status_prefix + JobStatus.QUEUED.value,
                                              self.sentinel], args=[job_id, limit, now, now + ttl_s]))
        return None if waiting < 0 else waiting

    def release_upload(self, job_id: str) -> None:
        """Give back an upload's reservation (the upload was refused or abandoned before its record existed)."""
        with self._bounded("admission"):
            self.client.zrem(self._reservations, job_id)

    @contextmanager
    def admission(self, *, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """One lock for every API process on every host: a backlog count and the reservation that follows it
        happen together, so concurrent uploads cannot all pass."""
        with self._redis_lock(f"{self.ns}admission", timeout_s, "admission lock", poll_s=0.002):
            yield

    # ------------------------------------------------------------------------------------------ files
    def remove_files(self, job_id: str, *, keep_record: bool = True, keep: tuple[str, ...] = ()) -> None:
        """Delete the job's media except the files named in `keep` (a failed job keeps the mask lines it wrote);
        the record stays (a tombstone that says what happened) unless `keep_record` is False, then the record,
        its index entries and the whole folder go."""
        if not keep_record:
            with self._bounded(f"job {job_id}"):
                self._delete(keys=[self._key(job_id), self._ids, self._status_prefix, self._reservations],
                             args=[job_id, *_STATUSES])
        self.remove_media(job_id, everything=not keep_record, keep=keep)

    # ---------------------------------------------------------------------------------------- locking
    @contextmanager
    def locked(self, job_id: str, *, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """Hold the record's Redis lock (see the module docstring); `JobLocked` when it is not free within
        `timeout_s`, `JobNotFound` for an id that is not well formed."""
        self._key(job_id)
        held = (threading.get_ident(), job_id)
        with self._redis_lock(self._lock_key(job_id), timeout_s, f"job {job_id}: record lock") as token:
            with self._held_lock:
                self._held[held] = token
            try:
                yield
            finally:
                with self._held_lock:
                    self._held.pop(held, None)

    def _token(self, job_id: str) -> str | None:
        with self._held_lock:
            return self._held.get((threading.get_ident(), job_id))

    @contextmanager
    def _redis_lock(self, key: str, timeout_s: float, what: str, *, poll_s: float = 0.005) -> Iterator[str]:
        token = secrets.token_hex(16)
        deadline = time.monotonic() + timeout_s
        with self._bounded(what):
            while not self.client.set(key, token, nx=True, px=self.lock_ttl_ms):
                if time.monotonic() >= deadline:
                    raise JobLocked(f"{what} busy for {timeout_s:g} s")
                time.sleep(poll_s)
        try:
            yield token
        finally:
            try:
                with self._bounded(what):
                    self._release(keys=[key], args=[token])
            except StateUnavailable:
                pass  # it expires by itself


def _lost_reason(message: str) -> str:
    if "sentinel" in message:
        return ("the store's sentinel key is gone: Redis lost its data (restarted without its append-only file, "
                "or evicting keys); jobs it held are unknown")
    return "the record is indexed but its key is gone (evicted?): the job's state is lost"


def _redacted(url: str) -> str:
    """The URL without its password."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url
