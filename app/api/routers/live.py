"""`/live`: a WebSocket live session, proxied to a worker's live endpoint (`worker.live.server`).

The API holds no model, so it relays: it authenticates the client (the `X-API-Key` or `Authorization:
Bearer` header, or `?api_key=` for browsers, whose WebSocket cannot set headers), reads the start message,
and offers it to the least busy warm worker whose heartbeat advertises a live endpoint with room; a worker
that answers `too_many_sessions` (its heartbeat was seconds old) is passed over for the next. From then on
every message goes through unchanged, both ways (`worker.core.live_protocol`), and either side closing
closes the other: a client that vanishes ends its session on the worker at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from app.api import prometheus
from app.api.deps import SettingsDep
from app.api.health import warm_workers
from worker.core.api_keys import key_accepted, presented_key
from worker.core.contracts import ServiceErrorCode
from worker.core.live_protocol import CLOSE_ERROR, CLOSE_POLICY, CLOSE_TRY_AGAIN, START_TIMEOUT_S, message_error
from worker.core.settings import ServiceSettings
from worker.core.state.errors import StateUnavailable

log = logging.getLogger("avs.api.live")
router = APIRouter(tags=["live"])
WORKER_OPEN_TIMEOUT_S = 5.0


def live_candidates(settings: ServiceSettings) -> list[dict[str, Any]]:
    """Warm workers with a live endpoint and room, least busy first (by their last heartbeat)."""
    workers, _ = warm_workers(settings)
    live = [w for w in workers if w["live_url"] and w["live_sessions"] < w["live_capacity"]]
    return sorted(live, key=lambda w: (w["live_sessions"] / max(1, w["live_capacity"]), w["age_s"]))


async def _close(websocket: WebSocket, code: str, message: str, close_code: int) -> None:
    prometheus.LIVE_REFUSED.labels(code=code).inc()
    with contextlib.suppress(Exception):
        await websocket.send_json(message_error(code, message))
        await websocket.close(close_code)


@router.websocket("/live")
async def live(websocket: WebSocket, settings: SettingsDep) -> None:
    """A live session (see `worker.core.live_protocol` for the messages)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import WebSocketException

    key = presented_key(websocket.headers, websocket.query_params)
    await websocket.accept()
    if not key_accepted(settings.api_keys, key):
        await _close(websocket, ServiceErrorCode.UNAUTHORIZED.value, "an API key is required (X-API-Key header or "
                     "api_key query parameter)", CLOSE_POLICY)
        return
    try:
        start = await asyncio.wait_for(websocket.receive_text(), START_TIMEOUT_S)
    except (TimeoutError, KeyError):
        await _close(websocket, ServiceErrorCode.INVALID_REQUEST.value,
                     f"the first message must be the start message (text), within {START_TIMEOUT_S:g} s", CLOSE_POLICY)
        return
    except (WebSocketDisconnect, RuntimeError):
        return
    headers = {"X-API-Key": key} if settings.api_keys and key else {}
    try:
        candidates = live_candidates(settings)
        warm = bool(candidates) or bool(warm_workers(settings)[0])
    except StateUnavailable:  # the heartbeats are in the state Redis: no answer, no worker we can name
        await _close(websocket, ServiceErrorCode.NOT_READY.value, "the state store is not answering; retry later",
                     CLOSE_TRY_AGAIN)
        return
    if not candidates:
        code = ServiceErrorCode.TOO_MANY_SESSIONS if warm else ServiceErrorCode.NOT_READY
        await _close(websocket, code.value, "every worker runs its maximum of live sessions; try again later"
                     if code is ServiceErrorCode.TOO_MANY_SESSIONS else "no warm worker with a live endpoint",
                     CLOSE_TRY_AGAIN)
        return
    refusal: str | None = None
    for worker in candidates:
        try:
            upstream = await connect(worker["live_url"], additional_headers=headers, open_timeout=WORKER_OPEN_TIMEOUT_S,
                                     max_size=16 << 20, ping_interval=20, ping_timeout=20)
        except (OSError, TimeoutError, WebSocketException) as exc:
            log.warning("worker %s live endpoint unreachable: %s", worker["name"], exc)
            continue
        try:
            await upstream.send(start)
            first = await upstream.recv()
        except WebSocketException:
            await upstream.close()
            continue
        reply = _json(first)
        if reply.get("type") == "error" and reply.get("code") == ServiceErrorCode.TOO_MANY_SESSIONS.value:
            refusal = first if isinstance(first, str) else None
            await upstream.close()
            continue
        await websocket.send_text(first if isinstance(first, str) else json.dumps(reply))
        if reply.get("type") == "error":
            await _relay_close(websocket, upstream)
            return
        await _proxy(websocket, upstream)
        return
    if refusal is not None:
        prometheus.LIVE_REFUSED.labels(code=ServiceErrorCode.TOO_MANY_SESSIONS.value).inc()
        await websocket.send_text(refusal)
        with contextlib.suppress(Exception):
            await websocket.close(CLOSE_TRY_AGAIN)
        return
    await _close(websocket, ServiceErrorCode.NOT_READY.value, "no worker's live endpoint answered", CLOSE_TRY_AGAIN)


def relayable_close_code(code: int | None) -> int:
    """The close code to send the client for the worker's `code`. 1005 (no code), 1006 (the connection dropped
    without a close frame) and 1015 (TLS) only describe what a peer saw and must never be sent (RFC 6455
    §7.4.1); None is a worker that never closed. All of them mean the worker was lost: 1011."""
    if code is None or code in (1005, 1006, 1015) or not (1000 <= code <= 4999):
        return CLOSE_ERROR
    return code


def worker_lost(upstream: Any) -> bool:
    """True when the worker's side ended without a close frame (its process died, the network cut it)."""
    return upstream.close_code is None or upstream.close_code in (1005, 1006)


async def _tell_worker_lost(websocket: WebSocket) -> None:
    prometheus.LIVE_WORKER_LOST.inc()
    with contextlib.suppress(Exception):
        await websocket.send_json(message_error(ServiceErrorCode.WORKER_LOST.value, "the worker running this "
                                                "session stopped; start a new session"))
    with contextlib.suppress(Exception):
        await websocket.close(CLOSE_ERROR)


def _json(message: Any) -> dict[str, Any]:
    try:
        value = json.loads(message) if isinstance(message, str) else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def _relay_close(websocket: WebSocket, upstream: Any) -> None:
    with contextlib.suppress(Exception):
        await upstream.wait_closed()
    with contextlib.suppress(Exception):
        await websocket.close(relayable_close_code(upstream.close_code))


async def _proxy(websocket: WebSocket, upstream: Any) -> None:
    """Both directions until either side ends; then the other is closed."""

    async def client_to_worker() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            await upstream.send(data if data is not None else message.get("text") or "")

    async def worker_to_client() -> None:
        async for message in upstream:
            if isinstance(message, bytes):
                await websocket.send_bytes(message)
            else:
                await websocket.send_text(message)

    up = asyncio.ensure_future(client_to_worker())
    down = asyncio.ensure_future(worker_to_client())
    try:
        done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (up, down):
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(up, down, return_exceptions=True)
    if down in done:  # the worker ended the session: pass its close code on, or say it was lost
        with contextlib.suppress(Exception):
            await upstream.wait_closed()
        if worker_lost(upstream):
            log.warning("live session: the worker's connection dropped (close code %s)", upstream.close_code)
            await _tell_worker_lost(websocket)
            return
        with contextlib.suppress(Exception):
            await websocket.close(relayable_close_code(upstream.close_code))
    else:  # the client went away: the worker's endpoint sees the close and aborts the session
        with contextlib.suppress(Exception):
            await upstream.close()
