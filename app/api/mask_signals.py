"""Wake mask-stream followers when their job changes, instead of polling (issue #24).

The job store publishes on a job's channel (`RedisJobStore.masks_channel`) after every record write and every
batch of mask lines (`RedisJobStore.notify`). Each API process holds ONE Redis pub/sub connection per event loop
(`MaskSignalHub`), subscribed to the channels of the jobs it is following right now; a message sets the
`asyncio.Event` of every follower of that job, which then reads the record and the file again
(`app.api.mask_stream.follow_masks`). One connection, not one per follower: 50 followers cost one socket and
one reader task (Redis's own advice for pub/sub fan-in; the same shape as Django Channels' Redis layer).

Signals are hints, never the data: the lines stay in `masks.ndjson` and the record says when the job ended.
So a signal lost (published before the subscription was active, a Redis restart, a reconnect) only delays a
follower until its safety poll (`SAFETY_POLL_S`), and a follower whose hub is broken polls on its own.

Torch-free (the API process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("avs.api")

SAFETY_POLL_S = 1.0
"""A follower reads again at least this often even without a signal: the bound on the delay a lost signal
can cause (a line normally arrives within milliseconds of its write)."""

RECONNECT_S = 0.5  # a broken pub/sub connection is rebuilt after this long (followers poll meanwhile)


class Wakeup(asyncio.Event):
    """A follower's event; `record_changed` says whether a signal since the last `clear` was a record write (the
    follower reads the record again) rather than new mask lines only (it reads the file alone)."""

    def __init__(self) -> None:
        super().__init__()
        self.record_changed = True

    def clear(self) -> None:
        super().clear()
        self.record_changed = False


class MaskSignalHub:
    """One pub/sub connection to the state Redis at `url`, shared by every follower of this event loop.

    `watch(channel)` is an async context manager yielding a `Wakeup` (an `asyncio.Event`) set whenever a message
    arrives on `channel` (and when the connection breaks, so that nobody sleeps through a lost signal). The
    message says what changed: `record` or `lines` (`RedisJobStore.notify`). Subscriptions are
    reference counted: the channel is unsubscribed when its last follower leaves.
    """

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._events: dict[str, set[Wakeup]] = {}
        self._pubsub: aioredis.client.PubSub | None = None
        self._client: aioredis.Redis | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.messages = 0  # signals received (the bench reads it)

    @contextlib.asynccontextmanager
    async def watch(self, channel: str) -> AsyncIterator[Wakeup]:
        event = Wakeup()
        first = channel not in self._events
        self._events.setdefault(channel, set()).add(event)
        try:
            if first:
                await self._subscribe(channel)
            yield event
        finally:
            waiters = self._events.get(channel)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._events[channel]
                    await self._unsubscribe(channel)

    async def _ensure(self) -> aioredis.client.PubSub:
        if self._pubsub is None:
            self._client = aioredis.Redis.from_url(self.url, socket_connect_timeout=self.timeout_s,
                                                   socket_keepalive=True)
            self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            channels = list(self._events)
            if channels:  # after a reconnect: every channel someone still follows
                await asyncio.wait_for(self._pubsub.subscribe(*channels), self.timeout_s)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read(), name="mask-signals")
        return self._pubsub

    async def _subscribe(self, channel: str) -> None:
        try:
            async with self._lock:
                pubsub = await self._ensure()
                if channel in self._events and channel not in pubsub.channels:
                    await asyncio.wait_for(pubsub.subscribe(channel), self.timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:  # followers poll until the reader reconnects
            log.debug("mask signals: subscribe %s failed (%s)", channel, exc)
            await self._drop()

    async def _unsubscribe(self, channel: str) -> None:
        try:
            async with self._lock:
                if self._pubsub is not None and channel not in self._events:
                    await asyncio.wait_for(self._pubsub.unsubscribe(channel), self.timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            log.debug("mask signals: unsubscribe %s failed (%s)", channel, exc)
            await self._drop()

    async def _read(self) -> None:
        """Dispatch messages until nobody follows anything; on a broken connection wake everyone (they read
        again at once), wait `RECONNECT_S` and resubscribe."""
        while True:
            pubsub = self._pubsub
            if pubsub is None:
                if not self._events:
                    return
                await asyncio.sleep(RECONNECT_S)
                try:
                    async with self._lock:
                        await self._ensure()
                except (RedisError, OSError, TimeoutError):
                    await self._drop()
                continue
            if not pubsub.subscribed:
                if not self._events:
                    return
                await asyncio.sleep(0.05)
                continue
            try:
                message = await pubsub.get_message(timeout=SAFETY_POLL_S)
            except (RedisError, OSError) as exc:
                log.debug("mask signals: connection lost (%s)", exc)
                await self._drop()
                self._wake_all()
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else str(channel)
            self.messages += 1
            record = message.get("data") not in (b"lines", "lines")
            for event in self._events.get(channel, ()):
                event.record_changed = event.record_changed or record
                event.set()

    def _wake_all(self) -> None:
        for waiters in self._events.values():
            for event in waiters:
                event.record_changed = True
                event.set()

    async def _drop(self) -> None:
        pubsub, client = self._pubsub, self._client
        self._pubsub = self._client = None
        with contextlib.suppress(Exception):
            if pubsub is not None:
                await pubsub.aclose()
        with contextlib.suppress(Exception):
            if client is not None:
                await client.aclose()


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, MaskSignalHub]] = weakref.WeakKeyDictionary()


def hub_for(url: str) -> MaskSignalHub:
    """This event loop's hub for the Redis at `url` (asyncio objects belong to one loop)."""
    per_loop = _hubs.setdefault(asyncio.get_running_loop(), {})
    hub = per_loop.get(url)
    if hub is None:
        hub = per_loop[url] = MaskSignalHub(url)
    return hub


async def wait_for_signal(event: asyncio.Event | None, timeout_s: float) -> bool:
    """Wait until `event` is set or `timeout_s` passes (True: signalled). With no event, just sleep."""
    if event is None:
        await asyncio.sleep(timeout_s)
        return False
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
        return True
    except TimeoutError:
        return False
