"""The worker's live endpoint: a WebSocket server (Starlette on uvicorn, in a thread of the worker process)
that runs `LiveSession`s on the worker's frame engine, next to its file jobs.

The API's `/live` proxies to it (`app.api.routers.live`), choosing a worker by the `live_url` and the
session count its heartbeat advertises; this endpoint enforces `AVS_LIVE_MAX_SESSIONS` itself (the count in
a heartbeat may be seconds old), checks the API key when keys are configured, and owns every limit of a
session (start timeout, idle timeout, total duration, the pull allow-list). The protocol is
`worker.core.live_protocol`'s.

One event loop serves every session's socket; everything that blocks (writing to ffmpeg, waiting for the
end, the recording's overlay) runs in a worker thread, so one slow session never stalls another's masks.
Media messages are read one at a time, each after the previous one was written to ffmpeg: a `no_drop`
session whose ffmpeg stops reading stops this socket being read, and uvicorn then stops reading the TCP
connection, which holds back the API's relay and, through it, the client (back-pressure end to end).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from errno import EDQUOT, ENOSPC
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from worker import prometheus
from worker.core.api_keys import key_accepted, key_id, presented_key
from worker.core.contracts import ServiceErrorCode
from worker.core.errors import MediaError
from worker.core.job_record import new_job_id
from worker.core.live_protocol import (
    CLOSE_ERROR,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN,
    START_TIMEOUT_S,
    LiveStart,
    message_error,
)
from worker.core.live_sources import PUSHED, SourceRefused, parse_allow_list, pulled_source
from worker.core.settings import ServiceSettings
from worker.core.state import open_store
from worker.live.recording import Recording, sweep_orphans
from worker.live.session import LiveOptions, LiveSession, SessionError

log = logging.getLogger("avs.live")

MAX_UNSENT = 500
"""Mask records waiting for a client that stopped reading; one more ends the session (`client_gone`)."""
_END = object()


def error_of(exc: BaseException | None) -> tuple[str, str] | None:
    """(code, message) of what ended a session, None when it ended well."""
    if exc is None:
        return None
    if isinstance(exc, MediaError):
        return exc.code.value, exc.message
    if isinstance(exc, SessionError):
        return exc.code, exc.message
    return ServiceErrorCode.INTERNAL_ERROR.value, f"internal error ({type(exc).__name__})"


class LiveServer:
    """Serves `/live` on `settings.live_host:live_port` (0: any free port); `url` is what to advertise.

    `engine_factory()` returns the worker's `FrameEngine` (it may block until the model is loaded).
    `on_change()` is called when a session starts or ends (the worker writes its heartbeat key again).
    """

    def __init__(self, settings: ServiceSettings, engine_factory: Callable[[], Any], *,
                 on_change: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.engine_factory = engine_factory
        self.on_change = on_change
        self.capacity = settings.live_max_sessions
        self.allowed_sources = parse_allow_list(settings.live_sources)
        self.store = open_store(settings)
        self.sessions: dict[str, LiveSession] = {}
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.url: str | None = None

    # ---------------------------------------------------------------------------------------- life
    def start(self, timeout_s: float = 30.0) -> str:
        """Bind, serve on a thread, return the advertised URL (`ws://host:port/live`)."""
        import uvicorn

        sweep_orphans(self.store, older_than_s=self.settings.live_max_duration_s + 60)
        sock = socket.socket(socket.AF_INET6 if ":" in self.settings.live_host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.settings.live_host, self.settings.live_port))
        port = sock.getsockname()[1]
        app = Starlette(routes=[WebSocketRoute("/live", self._endpoint)])
        config = uvicorn.Config(app, log_level="warning", lifespan="off", ws="websockets-sansio",
                                ws_max_size=16 << 20, ws_ping_interval=20, ws_ping_timeout=20)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name="live-server",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the live endpoint did not start")
            time.sleep(0.02)
        host = self.settings.live_advertise_host or self.settings.live_host
        if host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        self.url = f"ws://{host}:{port}/live"
        log.info("live sessions on %s (at most %d)", self.url, self.capacity)
        return self.url

    def stop(self) -> None:
        with self._lock:
            sessions = [session for session in self.sessions.values() if session is not None]
        for session in sessions:
            session.abort(ServiceErrorCode.NOT_READY.value, "the worker is stopping")
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def active(self) -> int:
        with self._lock:
            return len(self.sessions)

    # ---------------------------------------------------------------------------------------- slots
    def reserve(self, session_id: str) -> bool:
        """Take one of the `capacity` session slots for `session_id` (a `/live` session or a REST stream,
        `worker.live.streams`); False when every slot is taken or the id has one already. The heartbeat is
        rewritten at once, so the API sees the count change."""
        with self._lock:
            if len(self.sessions) >= self.capacity or session_id in self.sessions:
                return False
            self.sessions[session_id] = None  # type: ignore[assignment]  # the slot, until the session exists
        prometheus.LIVE_SESSIONS.inc()
        self._changed()
        return True

    def attach(self, session_id: str, session: LiveSession) -> None:
        """The session of a reserved slot (so that `stop()` aborts it)."""
        with self._lock:
            self.sessions[session_id] = session

    def release(self, session_id: str) -> None:
        """Give a reserved slot back (idempotent)."""
        with self._lock:
            held = self.sessions.pop(session_id, _END) is not _END
        if held:
            prometheus.LIVE_SESSIONS.dec()
            self._changed()

    # ------------------------------------------------------------------------------------ endpoint
    def _authorized(self, websocket: WebSocket) -> bool:
        return key_accepted(self.settings.api_keys, presented_key(websocket.headers))

    async def _refuse(self, websocket: WebSocket, code: str, message: str, close_code: int) -> None:
        prometheus.LIVE_SESSIONS_ENDED.labels(status=code).inc()
        with contextlib.suppress(Exception):
            await websocket.send_json(message_error(code, message))
            await websocket.close(close_code)

    async def _endpoint(self, websocket: WebSocket) -> None:
        if not self._authorized(websocket):
            await websocket.close(CLOSE_POLICY)  # before accepting: the handshake is refused (HTTP 403)
            return
        await websocket.accept()
        try:
            text = await asyncio.wait_for(websocket.receive_text(), START_TIMEOUT_S)
            start = LiveStart.model_validate_json(text)
            source = PUSHED if start.source is None else pulled_source(start.source, self.allowed_sources)
        except TimeoutError:
            await self._refuse(websocket, ServiceErrorCode.INVALID_REQUEST.value,
                               f"no start message within {START_TIMEOUT_S:g} s", CLOSE_POLICY)
            return
        except (WebSocketDisconnect, RuntimeError):
            return  # gone before starting, or a binary first frame (receive_text raises KeyError... below)
        except KeyError:
            await self._refuse(websocket, ServiceErrorCode.INVALID_REQUEST.value,
                               "the first message must be the start message (text)", CLOSE_POLICY)
            return
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'message'}: {e['msg']}" for e in exc.errors())
            await self._refuse(websocket, ServiceErrorCode.INVALID_REQUEST.value, f"bad start message: {problems}",
                               CLOSE_POLICY)
            return
        except SourceRefused as exc:
            await self._refuse(websocket, exc.code, str(exc), CLOSE_POLICY)
            return
        session_id = new_job_id()
        if not self.reserve(session_id):
            await self._refuse(websocket, ServiceErrorCode.TOO_MANY_SESSIONS.value,
                               f"this worker runs its maximum of {self.capacity} live sessions; try again later",
                               CLOSE_TRY_AGAIN)
            return
        try:
            await self._run(websocket, session_id, start, source)
        finally:
            self.release(session_id)

    def _changed(self) -> None:
        if self.on_change is not None:
            with contextlib.suppress(Exception):
                self.on_change()

    async def _run(self, websocket: WebSocket, session_id: str, start: LiveStart, source: Any) -> None:
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[Any] = asyncio.Queue()
        engine = await asyncio.to_thread(self.engine_factory)
        predictor = engine.predictor
        owner = key_id(presented_key(websocket.headers)) if self.settings.api_keys else None
        recording = (Recording(self.store, session_id, threshold=start.threshold, overlay=start.overlay,
                               key_id=owner, keep_video=not source.network) if start.record else None)

        def on_record(record: dict[str, Any]) -> None:  # the job's encode thread
            if recording is not None:
                recording.write(record)
            loop.call_soon_threadsafe(out.put_nowait, record)

        session = LiveSession(
            source, engine, on_record, key=session_id, idle_timeout_s=self.settings.live_idle_timeout_s,
            reconnect_s=self.settings.live_reconnect_s,
            options=LiveOptions(threshold=start.threshold, fps=start.fps, window=start.window, mode=start.mode),
            limits=self.settings.media_limits(), max_duration_s=self.settings.live_max_duration_s,
            on_latency=prometheus.LIVE_LATENCY_SECONDS.observe,
            on_drop=lambda reason: prometheus.LIVE_FRAMES_DROPPED.labels(reason=reason).inc(),
            on_skip=prometheus.LIVE_FRAMES_SKIPPED.inc,
            copy_to=recording.copy_path if recording is not None else None)
        self.attach(session_id, session)
        await asyncio.to_thread(session.start)
        await websocket.send_json({
            "type": "started", "session_id": session_id, "model": predictor.cfg.variant,
            "input_size": predictor.input_size, "alignment": "live", "pushed": source.pushed,
            "window": start.window, "mode": start.mode, "fps": start.fps, "record": start.record})
        waiter = asyncio.ensure_future(asyncio.to_thread(session.wait))
        waiter.add_done_callback(lambda _: out.put_nowait(_END))
        receiver = asyncio.ensure_future(self._receive(websocket, session))
        gone = False
        try:
            while True:
                item = await out.get()
                if item is _END:
                    break
                if out.qsize() > MAX_UNSENT:
                    session.abort(ServiceErrorCode.CLIENT_GONE.value, "the client stopped reading its masks")
                if gone:
                    continue
                try:
                    await websocket.send_text(json.dumps({"type": "mask", **item}, separators=(",", ":")))
                    prometheus.LIVE_FRAMES.inc()
                except Exception:  # the socket is closed
                    gone = True
                    self._client_left(session)
        finally:
            receiver.cancel()
            summary = await waiter
        error = error_of(session.error)
        client_gone = error is not None and error[0] == ServiceErrorCode.CLIENT_GONE.value
        job_id = None
        if recording is not None:
            if client_gone:
                await asyncio.to_thread(recording.discard)
            else:
                # The end message says what the job says (issue #21: a recording whose overlay failed ended
                # `succeeded` on the socket while its job was `failed`).
                try:
                    kept = await asyncio.to_thread(recording.finish, summary, error,
                                                   num_classes=predictor.cfg.num_classes,
                                                   limits=self.settings.media_limits(), rotation=session.rotation)
                except Exception as exc:  # no record could be written (a full disk): no job to point to
                    log.exception("live session %s: the recording could not be kept", session_id)
                    code = ServiceErrorCode.STORAGE_FULL if isinstance(exc, OSError) and exc.errno in (ENOSPC, EDQUOT) \
                        else ServiceErrorCode.INTERNAL_ERROR
                    error = (code.value, "the recording could not be kept")
                else:
                    job_id = session_id
                    if kept.error is not None:
                        error = (kept.error.code, kept.error.message)
        status = "client_gone" if client_gone else ("failed" if error else "succeeded")
        prometheus.LIVE_SESSIONS_ENDED.labels(status=status).inc()
        if client_gone:
            return
        end = {"type": "end", "status": "failed" if error else "succeeded", "session_id": session_id,
               **summary, "ended_by": session.ended_by if not error else None, "job_id": job_id,
               "job_url": f"/jobs/{job_id}" if job_id is not None else None,
               "error": {"code": error[0], "message": error[1]} if error else None}
        with contextlib.suppress(Exception):
            await websocket.send_json(end)
            await websocket.close(CLOSE_NORMAL if not error else CLOSE_ERROR)

    async def _receive(self, websocket: WebSocket, session: LiveSession) -> None:
        """Media in (pushed sessions), the end message, and the client's disconnect (which aborts)."""
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("bytes")
                if data is not None:
                    if session.source.pushed:
                        await asyncio.to_thread(session.feed, data)
                    continue
                try:
                    kind = json.loads(message.get("text") or "null").get("type")
                except (ValueError, AttributeError):
                    kind = None
                if kind == "end":
                    session.end()
        except (WebSocketDisconnect, RuntimeError):
            pass
        self._client_left(session)

    @staticmethod
    def _client_left(session: LiveSession) -> None:
        """A client that vanished mid-stream: stop everything now. One that had ended the session and left
        without waiting for the last masks: the session still finishes (a recording is kept)."""
        if not session.ending:
            session.abort(ServiceErrorCode.CLIENT_GONE.value, "the client went away")
