"""Per-worker-process runtime: the model (loaded once, after fork, then warmed up) and the heartbeat that
says the worker is ready.

Celery's `worker_process_init` handlers are killed after 4 s, and CUDA must not be touched before a
fork, so the model loads in a background thread started when the worker is ready (the `solo` pool runs
tasks in that same process: one process per GPU). The first task waits for it if it arrives early.
Once warm, a thread writes its heartbeat (`worker.core.state.heartbeats`: a Redis key under
`AVS_STATE_PREFIX` that expires after `STALE_FACTOR × heartbeat_s`) every `heartbeat_s`, and again when a live
session starts or ends; `/readyz` counts a worker as present while that key lives.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from worker.core.process_identity import pid_namespace
from worker.core.settings import ServiceSettings
from worker.core.state.heartbeats import WorkerHeartbeat, forget, heartbeat_board, heartbeat_ttl_s, write_heartbeat

log = logging.getLogger("avs.worker")


class WorkerRuntime:
    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.name = f"{socket.gethostname()}-{os.getpid()}"
        self._predictor: Any = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._started = False
        self._lock = threading.Lock()
        self.current_jobs: set[str] = set()  # the jobs in flight (several run at once on the frame engine)
        self._engine: Any = None
        self._beat_thread: threading.Thread | None = None
        self._beat_lock = threading.Lock()
        self.live: Any = None  # worker.live.server.LiveServer, once the model is ready (live_max_sessions > 0)
        self.streams: Any = None  # worker.live.streams.StreamManager: REST streams, on the live endpoint's slots
        self.load_seconds: float | None = None
        self.model_summary: dict[str, Any] | None = None  # the card users see (`GET /model`), once loaded

    def start(self) -> None:
        """Load and warm the model in the background, then start the heartbeat (idempotent)."""
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._load, name="model", daemon=True).start()

    def _load(self) -> None:
        from model.predictor import load_predictor
        from worker.prometheus import MODEL_LOAD_SECONDS

        start = time.perf_counter()
        try:
            settings = self.settings
            predictor = load_predictor(checkpoint=settings.checkpoint, variant=settings.variant,
                                       device=settings.device)
            predictor.warmup(self.settings.batch_size)  # first batch pays no allocator/kernel set-up
        except BaseException as exc:  # reported to every task that asks for the model
            log.exception("model load failed")
            self._error = exc
            self._ready.set()
            return
        self.load_seconds = time.perf_counter() - start
        MODEL_LOAD_SECONDS.observe(self.load_seconds)
        self.model_summary = _model_summary(settings)
        from worker.engine import FrameEngine
        from worker.prometheus import observe_batch

        self._engine = FrameEngine(predictor, max_batch_size=settings.batch_size,
                                   max_wait_ms=settings.max_batch_wait_ms, on_batch=observe_batch)
        self._predictor = predictor

        def serving() -> None:
            # Jobs that arrived while the model loaded wait on `_ready`: release them only once this thread
            # serves the engine, or each would find it unserved and run a batcher of its own beside this one.
            self._ready.set()
            log.info("model %s ready on %s in %.1fs", predictor.cfg.variant, predictor.device, self.load_seconds)
            self._start_live()
            self._beat_thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
            self._beat_thread.start()

        # This thread built and warmed the model: it runs it from now on (worker.engine, "one thread runs the
        # model"), serving the batches of every job in flight until the worker stops.
        self._engine.serve(on_serving=serving)

    def _start_live(self) -> None:
        """The live endpoint (worker.live.server), advertised in the heartbeat, and the REST streams that share
        its session slots (worker.live.streams); a worker that cannot bind it keeps running file jobs."""
        if self.settings.live_max_sessions <= 0:
            return
        from worker.live.server import LiveServer

        try:
            server = LiveServer(self.settings, self.engine, on_change=self._beat_now)
            server.start()
        except Exception as exc:
            log.warning("live endpoint not started (%s): this worker runs file jobs only", exc)
            return
        from worker.live.streams import StreamManager

        self.streams = StreamManager(self.settings, server, self.engine, owner=self.name)
        self.live = server

    def _beat_now(self) -> None:
        if self._predictor is not None and not self._stop.is_set():
            try:
                self.write_heartbeat()
            except Exception as exc:  # the session goes on; the beat thread writes the count again soon
                log.warning("heartbeat not written after a live session change (%s)", exc)

    def predictor(self, timeout_s: float = 600.0):
        self.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError("the model did not load in time")
        if self._error is not None:
            raise RuntimeError(f"model load failed: {self._error}") from self._error
        return self._predictor

    def engine(self, timeout_s: float = 600.0):  # -> worker.engine.FrameEngine, shared by the jobs in flight
        self.predictor(timeout_s)
        return self._engine

    def _beat(self) -> None:
        """Refresh the heartbeat until stopped. Nothing ends this loop but `stop()`: a beat that fails (a state
        Redis that does not answer, or that refuses writes) is logged and the next one tries again, so readiness
        comes back by itself."""
        while not self._stop.is_set():
            try:
                self.write_heartbeat()
            except Exception as exc:
                log.warning("heartbeat not written (%s); retrying in %gs", exc, self.settings.heartbeat_s)
            self._stop.wait(self.settings.heartbeat_s)

    def heartbeat(self) -> WorkerHeartbeat:
        """What this worker says about itself now (`worker.core.state.heartbeats.WorkerHeartbeat`)."""
        return WorkerHeartbeat(
            name=self.name, hostname=socket.gethostname(), pid=os.getpid(), pid_namespace=pid_namespace(),
            warm=self._predictor is not None, last_seen=time.time(),
            variant=getattr(getattr(self._predictor, "cfg", None), "variant", None),
            device=str(getattr(self._predictor, "device", self.settings.device)),
            current_jobs=sorted(self.current_jobs), model_load_seconds=self.load_seconds,
            # live sessions (worker.live): where the API proxies /live to, and how full this worker is
            live_url=self.live.url if self.live is not None else None,
            live_sessions=self.live.active if self.live is not None else 0,
            live_capacity=self.live.capacity if self.live is not None else 0,
            model=self.model_summary)

    def write_heartbeat(self) -> None:
        """Write the heartbeat, to expire after `STALE_FACTOR × heartbeat_s`. `StateUnavailable` when the state
        Redis does not answer."""
        with self._beat_lock:  # the beat thread and a session's start or end write it
            if self._stop.is_set():
                return  # stopping: a late beat (a session ending) must not bring back the key `stop()` deletes
            client, prefix = heartbeat_board(self.settings)
            write_heartbeat(client, prefix, self.heartbeat(), heartbeat_ttl_s(self.settings.heartbeat_s))

    def stop(self) -> None:
        self._stop.set()
        if self.streams is not None:
            self.streams.stop()  # before the live endpoint: the streams are handed back, not failed
        if self.live is not None:
            self.live.stop()
        if self._beat_thread is not None:
            self._beat_thread.join(timeout=5)
        with self._beat_lock:  # after a beat in flight, which would re-create the key
            try:
                client, prefix = heartbeat_board(self.settings)
                forget(client, prefix, self.name)
            except Exception as exc:  # the key expires by itself after STALE_FACTOR × heartbeat_s
                log.warning("heartbeat not removed (%s); it expires by itself", exc)


def _model_summary(settings: ServiceSettings) -> dict[str, Any] | None:
    """The loaded model's card for `GET /model` (`worker.core.model_card`); None when it cannot be read."""
    from worker.core.model_card import CardError, configured_checkpoint, model_summary

    try:
        return model_summary(configured_checkpoint(settings.checkpoint, settings.variant), settings.variant)
    except CardError as exc:
        log.warning("model card not readable: %s", exc)
        return None
