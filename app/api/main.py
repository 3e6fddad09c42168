"""The HTTP API (FastAPI): `create_app()` factory and the module-level `app` that uvicorn serves.

    POST   /segment                 upload (streamed, capped), probe, record, queue -> 202 + Location
    GET    /jobs/{job_id}           status, progress, video, timings, error
    GET    /jobs/{job_id}/masks     NDJSON, one line per frame; follows a running job (?from_frame=N)
    GET    /jobs/{job_id}/overlay.mp4
    GET    /jobs                    the caller's jobs, newest first (live recordings included)
    GET    /jobs/{job_id}/preview.mp4   a video a browser plays, frame-exact with the masks
    GET    /jobs/{job_id}/exports[/{name}], POST /jobs/{job_id}/exports/{name}   PNG ZIP, COCO, videos, waveform
    DELETE /jobs/{job_id}           cancel + delete files (record kept as a tombstone; then 410 job_deleted)
    WS     /live                    a live session, proxied to a worker (worker.core.live_protocol)
    POST   /streams                 a live session on a stream URL, run by a worker with no client (201)
    GET    /streams  /streams/{id}  their status; GET /streams/{id}/masks follows the masks; DELETE stops one
    GET    /  /static/*             the web page (app.web): upload or camera, masks drawn in the browser
    GET    /healthz /readyz /metrics /model
    GET    /docs /redoc (assets served from this server) /openapi.json /asyncapi.json (/live, NDJSON streams)

This process never imports torch (nor `model`, `worker.pipeline`, `worker.tasks`, `worker.masks`): it
only streams, probes, writes records and sends ids to the queue. The lifespan runs the cleanup loop
that expires finished jobs after `AVS_RESULT_TTL_S`, and the reconciler (`worker.core.leases`) that requeues
jobs whose worker died and sends messages that were never sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from app.api import prometheus
from app.api.body_drain import DrainUnreadBody
from app.api.deps import ApiKeyGuard, CelerySender, TaskSender, get_store, get_stream_store
from app.api.docs import create_docs_app, openapi_document
from app.api.errors import install_error_handlers
from app.api.job_service import cleanup_once
from app.api.routers import exports, live, ops, segment, streams
from app.api.routers import jobs as jobs_router
from app.web import install_web_page
from worker.core.contracts import TASK_EXPORT, TASK_STREAM
from worker.core.jobstore import MASKS
from worker.core.leases import reconcile
from worker.core.settings import ServiceSettings, get_settings

log = logging.getLogger("avs.api")


async def cleanup_loop(settings: ServiceSettings) -> None:
    """Expire finished jobs and streams (and dead uploads) once at start, then every `cleanup_interval_s`."""
    stores = {"job": get_store, "stream": get_stream_store}  # opened in the loop: a state Redis may be down now
    while True:
        for kind, get in stores.items():
            try:
                store = get(settings)
                removed = await anyio.to_thread.run_sync(cleanup_once, store, settings.result_ttl_s)
                if removed:
                    log.info("expired %d %s(s)", len(removed), kind)
            except Exception:
                log.exception("%s cleanup failed", kind)
        await asyncio.sleep(settings.cleanup_interval_s)


async def reconcile_loop(settings: ServiceSettings, send: TaskSender, send_stream: TaskSender) -> None:
    """Every `reconcile_interval_s`: requeue jobs and REST streams whose owner's lease expired, send messages
    that were never sent (`worker.core.leases.reconcile`; a stream cancelled here keeps its masks). In a thread
    of its own, so a stalled broker slows only this loop."""
    passes = [("job", get_store, send, ()), ("stream", get_stream_store, send_stream, (MASKS,))]
    limiter = anyio.CapacityLimiter(1)
    while True:
        for kind, get, sender, keep in passes:
            try:
                store = get(settings)  # in the loop: a state Redis that is down now is retried next pass
                done = await anyio.to_thread.run_sync(
                    lambda store=store, sender=sender, keep=keep: reconcile(
                        store, sender, lease_timeout_s=settings.lease_timeout_s, keep=keep,
                        unsent_grace_s=settings.unsent_grace_s, unsent_give_up_s=settings.unsent_give_up_s,
                        untaken_grace_s=settings.untaken_grace_s, waiting=getattr(sender, "waiting_job_ids", None)),
                    limiter=limiter)
                for job_id in done.requeued:
                    log.warning("%s %s: its worker's lease expired; requeued", kind, job_id)
                if done.requeued:
                    prometheus.LEASES_EXPIRED.labels("requeued").inc(len(done.requeued))
                if done.cancelled:
                    prometheus.LEASES_EXPIRED.labels("cancelled").inc(len(done.cancelled))
                if done.resent:
                    prometheus.MESSAGES_RESENT.inc(len(done.resent))
                if done.untaken:
                    prometheus.MESSAGES_UNTAKEN.inc(len(done.untaken))
            except Exception:
                log.exception("%s reconciliation failed", kind)
        await asyncio.sleep(settings.reconcile_interval_s)


def create_app(settings: ServiceSettings | None = None, *, task_sender: TaskSender | None = None,
               stream_sender: TaskSender | None = None, export_sender: TaskSender | None = None) -> FastAPI:
    """Build the API. `settings` defaults to `get_settings()` (the `AVS_` environment); `task_sender`,
    a callable `(job_id) -> None`, defaults to sending `avs.segment(job_id)` through Celery, `stream_sender`
    to sending `avs.stream(stream_id)`, `export_sender` (`(job_id, name) -> None`) to `avs.export`."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loops = [asyncio.create_task(cleanup_loop(settings), name="avs-job-cleanup"),
                 asyncio.create_task(reconcile_loop(settings, app.state.task_sender, app.state.stream_sender),
                                     name="avs-job-reconcile")]
        try:
            yield
        finally:
            for loop in loops:
                loop.cancel()
            for loop in loops:
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
            prometheus.mark_process_dead()

    app = create_docs_app(
        title="AVESFormer segmentation service",
        summary="Segments the objects that make the sound in a video: per-frame COCO-RLE masks as NDJSON.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.task_sender = task_sender if task_sender is not None else CelerySender(settings)
    app.state.stream_sender = stream_sender if stream_sender is not None else CelerySender(settings, TASK_STREAM)
    app.state.export_sender = export_sender if export_sender is not None else CelerySender(settings, TASK_EXPORT)
    app.dependency_overrides[get_settings] = lambda: settings
    install_error_handlers(app)
    app.add_middleware(prometheus.MetricsMiddleware)
    app.add_middleware(DrainUnreadBody)  # added last: outermost, it drains after every answer, errors included
    app.include_router(ops.router)
    app.include_router(segment.router, dependencies=[ApiKeyGuard])
    app.include_router(jobs_router.router, dependencies=[ApiKeyGuard])
    app.include_router(exports.router, dependencies=[ApiKeyGuard])
    app.include_router(streams.router, dependencies=[ApiKeyGuard])
    app.include_router(live.router)  # authenticates in the handler: a browser's WebSocket sends no headers
    install_web_page(app)
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    return app


app = create_app()
