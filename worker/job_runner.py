"""Run one job: the body of the `avs.segment` task, without Celery (so it is testable on its own).

Idempotent per job: a redelivered message (worker killed mid-job, Redis visibility timeout) finds the
record still "running" and the mask lines already written; it truncates a torn last line, resumes at
the next frame, and every frame ends up in `masks.ndjson` exactly once. A message for a job that has
already finished is a no-op.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from worker.core.contracts import JobStatus, ServiceErrorCode
from worker.core.errors import MediaError
from worker.core.job_record import JobError, JobRecord, Progress
from worker.core.jobstore import JobNotFound, JobStore
from worker.core.settings import ServiceSettings

log = logging.getLogger("avs.worker")


def complete_lines(path: Path) -> int:
    """Number of complete lines in `path`; a torn last line (a write cut by SIGKILL) is cut off."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    return data[:end].count(b"\n")


def run_job(job_id: str, *, store: JobStore, settings: ServiceSettings, predictor_factory) -> dict[str, Any]:
    """Segment job `job_id` into its directory and record the outcome; returns a small status dict.

    `predictor_factory()` gives the warm model (called once the job is known to run). The pipeline and the
    Prometheus module are imported here, not at module level, so that importing the runner stays cheap
    (and torch-free) for whoever only needs `complete_lines`.
    """
    from worker import prometheus
    from worker.pipeline import Cancelled, SegmentOptions, segment_video

    try:
        record = store.get(job_id)
    except JobNotFound:
        log.warning("job %s has no record (deleted?): skipped", job_id)
        return {"job_id": job_id, "status": "missing"}
    if record.finished:
        return {"job_id": job_id, "status": record.status.value}  # already done: a duplicate delivery
    now = time.time()
    first_attempt = record.attempts == 0

    def start(r: JobRecord) -> None:
        if not r.cancel_requested:  # decided under the lock: a DELETE cannot slip in between
            r.status, r.started_at, r.attempts = JobStatus.RUNNING, r.started_at or now, r.attempts + 1

    record = store.update(job_id, start)
    if record.cancel_requested:
        return _finish_cancelled(store, job_id)
    if first_attempt:
        prometheus.QUEUE_WAIT_SECONDS.observe(max(0.0, now - record.created_at))

    job_dir = store.job_dir(job_id)
    if record.upload is None:
        return _finish_failed(store, job_id, ServiceErrorCode.INTERNAL_ERROR.value, "the job has no upload")
    upload = job_dir / record.upload.path
    options = record.options
    seg_options = SegmentOptions(
        batch_size=settings.batch_size, fps=options.fps, threshold=options.threshold, overlay=options.overlay,
        atomic=False, start_frame=complete_lines(store.masks_path(job_id)), limits=settings.media_limits())

    def progress(done: int, total: int | None) -> None:
        def change(r: JobRecord) -> None:
            r.progress.frames_done, r.progress.frames_total = done, total or done

        store.update(job_id, change)

    def cancelled() -> bool:
        try:
            return store.get(job_id).cancel_requested
        except JobNotFound:
            return True  # the job was deleted under us

    def batch_done(frames: int, seconds: float) -> None:
        prometheus.BATCH_SIZE.observe(frames)
        prometheus.BATCH_SECONDS.observe(seconds)
        prometheus.FRAMES.inc(frames)

    try:
        predictor = predictor_factory()
        result = segment_video(upload, job_dir, predictor, seg_options, info=record.media_info(job_dir),
                               on_progress=progress, should_cancel=cancelled, on_batch=batch_done)
    except Cancelled:
        return _finish_cancelled(store, job_id)
    except MediaError as exc:
        return _finish_failed(store, job_id, exc.code.value, exc.message)
    except Exception as exc:  # a bug or a broken model: fail the job, keep the worker alive
        log.exception("job %s failed", job_id)
        return _finish_failed(store, job_id, ServiceErrorCode.INTERNAL_ERROR.value,
                              f"internal error while segmenting ({type(exc).__name__})")

    for stage, seconds in result.timings.items():
        prometheus.STAGE_SECONDS.labels(stage=stage).observe(seconds)
    finished = time.time()

    def succeed(r: JobRecord) -> None:
        r.status, r.finished_at = JobStatus.SUCCEEDED, finished
        r.progress = Progress(frames_done=result.frames, frames_total=result.frames)
        r.timings = {**result.timings, "queue_wait": round((r.started_at or finished) - r.created_at, 4),
                     "total": round(finished - r.created_at, 4)}

    record = store.update(job_id, succeed)
    upload.unlink(missing_ok=True)  # the masks (and overlay) are the result; the video is not kept
    prometheus.JOB_SECONDS.observe(finished - record.created_at)
    prometheus.JOBS_FINISHED.labels(status="succeeded").inc()
    return {"job_id": job_id, "status": "succeeded", "frames": result.frames}


def _finish_cancelled(store: JobStore, job_id: str) -> dict[str, Any]:
    from worker import prometheus

    def cancel(r: JobRecord) -> None:
        r.status, r.finished_at = JobStatus.CANCELLED, time.time()

    try:
        store.update(job_id, cancel)
        store.remove_files(job_id)
    except JobNotFound:
        pass
    prometheus.JOBS_FINISHED.labels(status="cancelled").inc()
    return {"job_id": job_id, "status": "cancelled"}


def _finish_failed(store: JobStore, job_id: str, code: str, message: str) -> dict[str, Any]:
    from worker import prometheus

    finished = time.time()
    kept = complete_lines(store.masks_path(job_id))  # exactly the frame lines a reader will get

    def fail(r: JobRecord) -> None:
        r.status, r.finished_at, r.error = JobStatus.FAILED, finished, JobError(code=code, message=message)
        r.progress.frames_done = kept

    record = store.update(job_id, fail)
    # The frames written before the failure stay readable: the mask stream's end line says "failed" and how
    # many frames there are, so they are never taken for a complete result. The upload and any partial
    # overlay go.
    store.remove_files(job_id, keep=(store.masks_path(job_id).name,))
    prometheus.JOB_SECONDS.observe(finished - record.created_at)
    prometheus.JOBS_FINISHED.labels(status="failed").inc()
    prometheus.JOBS_FAILED.labels(code=code).inc()
    return {"job_id": job_id, "status": "failed", "error": code}
