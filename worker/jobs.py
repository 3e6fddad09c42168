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

from worker.contracts import JobStatus, ServiceErrorCode
from worker.errors import MediaError
from worker.jobstore import JobNotFound, JobStore
from worker.settings import ServiceSettings

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
    from worker import metrics
    from worker.media.probe import MediaLimits
    from worker.pipeline import Cancelled, SegmentOptions, segment_video

    try:
        record = store.get(job_id)
    except JobNotFound:
        log.warning("job %s has no record (deleted?): skipped", job_id)
        return {"job_id": job_id, "status": "missing"}
    if JobStatus(record["status"]).finished:
        return {"job_id": job_id, "status": record["status"]}  # already done: a duplicate delivery
    now = time.time()
    first_attempt = record.get("attempts", 0) == 0

    def start(r: dict[str, Any]) -> None:
        if not r.get("cancel_requested"):  # decided under the lock: a DELETE cannot slip in between
            r.update(status=JobStatus.RUNNING.value, started_at=r.get("started_at") or now,
                     attempts=r.get("attempts", 0) + 1)

    record = store.update(job_id, start)
    if record.get("cancel_requested"):
        return _finish_cancelled(store, job_id)
    if first_attempt:
        metrics.QUEUE_WAIT_SECONDS.observe(max(0.0, now - record["created_at"]))

    job_dir = store.job_dir(job_id)
    upload = job_dir / record["upload"]["path"]
    options = record.get("options", {})
    start_frame = complete_lines(store.masks_path(job_id))
    seg_options = SegmentOptions(
        batch_size=settings.batch_size, fps=options.get("fps"), threshold=options.get("threshold"),
        overlay=bool(options.get("overlay")), atomic=False, start_frame=start_frame,
        limits=MediaLimits(max_duration_s=settings.max_duration_s, max_pixels=settings.max_pixels))

    def progress(done: int, total: int | None) -> None:
        store.update(job_id, lambda r: r["progress"].update(frames_done=done, frames_total=total or done))

    def cancelled() -> bool:
        try:
            return bool(store.get(job_id).get("cancel_requested"))
        except JobNotFound:
            return True  # the job was deleted under us

    def batch_done(frames: int, seconds: float) -> None:
        metrics.BATCH_SIZE.observe(frames)
        metrics.BATCH_SECONDS.observe(seconds)
        metrics.FRAMES.inc(frames)

    try:
        predictor = predictor_factory()
        result = segment_video(upload, job_dir, predictor, seg_options, on_progress=progress,
                               should_cancel=cancelled, on_batch=batch_done)
    except Cancelled:
        return _finish_cancelled(store, job_id)
    except MediaError as exc:
        return _finish_failed(store, job_id, exc.code.value, exc.message)
    except Exception as exc:  # a bug or a broken model: fail the job, keep the worker alive
        log.exception("job %s failed", job_id)
        return _finish_failed(store, job_id, ServiceErrorCode.INTERNAL_ERROR.value,
                              f"internal error while segmenting ({type(exc).__name__})")

    for stage, seconds in result.timings.items():
        metrics.STAGE_SECONDS.labels(stage=stage).observe(seconds)
    finished = time.time()
    record = store.update(job_id, lambda r: r.update(
        status=JobStatus.SUCCEEDED.value, finished_at=finished,
        progress={"frames_done": result.frames, "frames_total": result.frames},
        timings={**result.timings, "queue_wait": round(r["started_at"] - r["created_at"], 4),
                 "total": round(finished - r["created_at"], 4)}))
    upload.unlink(missing_ok=True)  # the masks (and overlay) are the result; the video is not kept
    metrics.JOB_SECONDS.observe(finished - record["created_at"])
    metrics.JOBS_FINISHED.labels(status="succeeded").inc()
    return {"job_id": job_id, "status": "succeeded", "frames": result.frames}


def _finish_cancelled(store: JobStore, job_id: str) -> dict[str, Any]:
    from worker import metrics

    try:
        store.update(job_id, lambda r: r.update(status=JobStatus.CANCELLED.value, finished_at=time.time()))
        store.remove_files(job_id)
    except JobNotFound:
        pass
    metrics.JOBS_FINISHED.labels(status="cancelled").inc()
    return {"job_id": job_id, "status": "cancelled"}


def _finish_failed(store: JobStore, job_id: str, code: str, message: str) -> dict[str, Any]:
    from worker import metrics

    finished = time.time()
    kept = complete_lines(store.masks_path(job_id))  # exactly the frame lines a reader will get
    record = store.update(job_id, lambda r: r.update(
        status=JobStatus.FAILED.value, finished_at=finished, error={"code": code, "message": message},
        progress={**(r.get("progress") or {}), "frames_done": kept}))
    # The frames written before the failure stay readable: the mask stream's end line says "failed" and how
    # many frames there are, so they are never taken for a complete result. The upload and any partial
    # overlay go.
    store.remove_files(job_id, keep=(store.masks_path(job_id).name,))
    metrics.JOB_SECONDS.observe(finished - record["created_at"])
    metrics.JOBS_FINISHED.labels(status="failed").inc()
    metrics.JOBS_FAILED.labels(code=code).inc()
    return {"job_id": job_id, "status": "failed", "error": code}
