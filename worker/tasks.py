"""Celery tasks: thin adapters from a message (an id) to `worker.job_runner.run_job` (`avs.segment`) and to
`worker.live.streams.StreamManager.take` (`avs.stream`).

Started as `avs worker`: Celery's thread pool with `AVS_JOBS_PER_WORKER` threads, so one process (one
model, one GPU) runs that many jobs at once, their frames batched together by the process's frame engine
(`worker.engine`). Threads, not processes: the model and CUDA live once in the process, and the
engine needs every job in the same address space. Scale further with more worker processes.
"""

from __future__ import annotations

import logging
import sys

from celery.signals import worker_init, worker_ready, worker_shutdown

from worker.core import broker_transport
from worker.core.celery_app import create_celery
from worker.core.contracts import TASK_EXPORT, TASK_SEGMENT, TASK_STREAM
from worker.core.settings import get_settings
from worker.core.state import open_store
from worker.heartbeat import WorkerRuntime
from worker.job_runner import run_job

log = logging.getLogger("avs.worker")
app = create_celery()
runtime = WorkerRuntime(get_settings())


@worker_init.connect
def _count_set_aside_messages(**_: object) -> None:
    from worker.prometheus import BROKER_MESSAGES_SET_ASIDE

    broker_transport.on_set_aside.append(lambda reason: BROKER_MESSAGES_SET_ASIDE.labels(reason=reason).inc())


@worker_ready.connect
def _warm_up(**_: object) -> None:
    from worker.prometheus import serve_worker_metrics

    settings = get_settings()
    wanted = settings.worker_metrics_port
    try:
        port = serve_worker_metrics(wanted)
    except OSError as exc:  # not bindable at all: keep working without the endpoint
        log.warning("worker metrics endpoint not started on port %s (AVS_WORKER_METRICS_PORT): %s", wanted, exc)
    else:
        if port is not None and port != wanted:  # taken (several workers on one host without containers)
            log.warning("worker metrics: port %d (AVS_WORKER_METRICS_PORT) is taken; serving on port %d instead",
                        wanted, port)
            sys.stderr.write(f"avs worker: metrics on port {port} (port {wanted}, AVS_WORKER_METRICS_PORT, is "
                             "taken)\n")
    runtime.start()


@worker_shutdown.connect
def _stop(**_: object) -> None:
    runtime.stop()


@app.task(name=TASK_SEGMENT, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def segment(job_id: str) -> dict[str, object]:
    """Segment the job's video into its masks.ndjson (ids in, a small status dict out)."""
    settings = get_settings()
    runtime.current_jobs.add(job_id)
    try:
        return run_job(job_id, store=open_store(settings), settings=settings,
                       predictor_factory=runtime.predictor, engine_factory=runtime.engine, owner=runtime.name)
    finally:
        runtime.current_jobs.discard(job_id)


@app.task(name=TASK_EXPORT, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def export(job_id: str, name: str) -> dict[str, object]:
    """Make one export of a finished job (`worker.exports.run_export`); no model needed."""
    from worker.exports import run_export

    settings = get_settings()
    return run_export(job_id, name, store=open_store(settings), settings=settings)


@app.task(name=TASK_STREAM, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def stream(stream_id: str) -> dict[str, object]:
    """Start a REST stream (`worker.core.streams`) on this worker's live-session slots; returns once it runs on
    a thread of its own (or why it does not: this worker is full, someone else runs it, ...). Its lease, not
    this message, keeps it running: the reconciler requeues it if this worker dies."""
    runtime.engine()  # streams run on the frame engine: wait for the model like a job does
    if runtime.streams is None:  # live sessions are off here (AVS_LIVE_MAX_SESSIONS=0): another worker's
        log.warning("stream %s: this worker runs no live sessions; left queued", stream_id)
        return {"stream_id": stream_id, "status": "no_live_sessions"}
    return runtime.streams.take(stream_id)
