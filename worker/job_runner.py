"""Run one job: the body of the `avs.segment` task, without Celery (so it is testable on its own).

Exactly once per frame: the job runs under a lease (`worker.core.leases`). A message for a job whose owner
is alive does nothing; one for a job whose owner died (the reconciler requeued it) takes it over, cuts a torn
last line, resumes at the next frame, and every frame ends up in `masks.ndjson` once. Every write is fenced by
the lease's token, so a former owner that was only paused writes nothing when it resumes. A message for a
job that has already finished is a no-op. A full disk fails the job `storage_full` after freeing its files.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from worker.core.contracts import JobStatus, ServiceErrorCode
from worker.core.errors import MediaError
from worker.core.job_record import JobError, JobRecord, Progress
from worker.core.jobstore import JobLocked, JobNotFound, JobStore
from worker.core.leases import Acquired, Lease, LeaseLost, acquire, fenced, fenced_update, renew
from worker.core.media.browser_safe import browser_playable
from worker.core.settings import ServiceSettings
from worker.core.state.errors import StateStorageFull

log = logging.getLogger("avs.worker")

STORAGE_RETRIES = 5  # attempts at recording `storage_full` once the job's own files are freed
STORAGE_RETRY_S = 1.0


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


class LeaseKeeper:
    """Renews a lease every third of its timeout on a thread while a job runs; `lost` once a renewal fails
    (the job was taken over or ended), after which the runner stops and writes nothing more."""

    def __init__(self, store: JobStore, lease: Lease, timeout_s: float) -> None:
        self.store, self.lease, self.timeout_s = store, lease, timeout_s
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{lease.job_id[:8]}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.timeout_s / 3):
            try:
                if not renew(self.store, self.lease, self.timeout_s):
                    self.lost.set()
                    return
            except Exception as exc:  # a busy lock or a full disk: try again next time, the lease may still hold
                log.warning("job %s: lease renewal failed this time (%s)", self.lease.job_id, exc)

    def check(self) -> None:
        """Raise `LeaseLost` once the lease is gone."""
        if self.lost.is_set():
            raise LeaseLost(f"job {self.lease.job_id}: lease {self.lease.token} lost")

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.timeout_s)


def run_job(job_id: str, *, store: JobStore, settings: ServiceSettings, predictor_factory,
            owner: str = "worker", engine_factory=None) -> dict[str, Any]:
    """Segment job `job_id` into its directory and record the outcome; returns a small status dict.

    The job is run only under a lease (`worker.core.leases.acquire`): a message for a job another worker is
    running does nothing, and every write is fenced, so a former owner that comes back writes nothing.
    `predictor_factory()` gives the warm model, `engine_factory()` the worker's frame engine that batches
    this job's frames with those of its other jobs (None: a private one). The pipeline and the Prometheus
    module are imported here, so
    importing the runner stays cheap (and torch-free) for whoever only needs `complete_lines`.
    """
    from worker import prometheus
    from worker.engine import Cancelled
    from worker.pipeline import SegmentOptions, segment_video

    try:
        outcome, lease, record = acquire(store, job_id, owner, settings.lease_timeout_s)
    except JobLocked:  # its record is held by a stopped process: the reconciler requeues it once it is free
        log.warning("job %s: record busy, not taken this time", job_id)
        return {"job_id": job_id, "status": "busy"}
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # Not taken, not failed: the job was accepted and stays queued; the reconciler sends it again
        # ("sent but never taken") until there is room to run it.
        log.warning("job %s: the data volume is full; not taken this time", job_id)
        return {"job_id": job_id, "status": "storage_full"}
    if outcome is Acquired.MISSING:
        log.warning("job %s has no record (deleted?): skipped", job_id)
        return {"job_id": job_id, "status": "missing"}
    assert record is not None
    if outcome is Acquired.FINISHED:
        return {"job_id": job_id, "status": record.status.value}  # already done: a duplicate delivery
    if outcome is Acquired.OWNED:
        log.info("job %s is running on %s (lease %d): this delivery does nothing", job_id, record.owner,
                 record.lease_token)
        return {"job_id": job_id, "status": "owned", "owner": record.owner}
    if outcome is Acquired.CANCELLED:
        return _finish_cancelled(store, job_id, None)
    assert lease is not None
    if record.attempts == 1:
        prometheus.QUEUE_WAIT_SECONDS.observe(max(0.0, (record.started_at or time.time()) - record.created_at))
    if record.takeovers and record.attempts > 1:
        prometheus.JOBS_TAKEN_OVER.inc()

    job_dir = store.job_dir(job_id)
    if record.upload is None:
        return _finish_failed(store, lease, ServiceErrorCode.INTERNAL_ERROR.value, "the job has no upload")
    upload = job_dir / record.upload.path
    options = record.options
    with fenced(store, lease):  # the previous owner's torn last line is cut by the owner, under the lock
        start_frame = complete_lines(store.masks_path(job_id))
    info = record.media_info(job_dir)
    seg_options = SegmentOptions(
        batch_size=settings.batch_size, fps=options.fps, threshold=options.threshold, overlay=options.overlay,
        preview=info is not None and not browser_playable(info), confidence=options.confidence,
        atomic=False, start_frame=start_frame, limits=settings.media_limits())

    def progress(done: int, total: int | None) -> None:
        def change(r: JobRecord) -> None:
            r.progress.frames_done, r.progress.frames_total = done, total or done

        fenced_update(store, lease, change)

    try:
        with LeaseKeeper(store, lease, settings.lease_timeout_s) as keeper:
            def cancelled() -> bool:
                keeper.check()
                try:
                    return store.get(job_id).cancel_requested
                except JobNotFound:
                    return True  # the job was deleted under us

            predictor = predictor_factory()
            engine = engine_factory() if engine_factory is not None else None
            result = segment_video(upload, job_dir, predictor, seg_options, info=info,
                                   on_progress=progress, should_cancel=cancelled, fence=lambda: fenced(store, lease),
                                   engine=engine)
    except LeaseLost as exc:
        log.warning("%s: stopping without writing", exc)
        prometheus.LEASE_WRITES_REFUSED.inc()
        return {"job_id": job_id, "status": "lease_lost"}
    except Cancelled:
        return _finish_cancelled(store, job_id, lease)
    except MediaError as exc:
        return _finish_failed(store, lease, exc.code.value, exc.message)
    except OSError as exc:
        # a full data volume, or the state Redis refusing writes it cannot persist (its disk is full)
        if isinstance(exc, StateStorageFull) or exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return _finish_storage_full(store, lease, exc)
        log.exception("job %s failed", job_id)
        return _finish_failed(store, lease, ServiceErrorCode.INTERNAL_ERROR.value,
                              f"internal error while segmenting ({type(exc).__name__})")
    except Exception as exc:  # a bug or a broken model: fail the job, keep the worker alive
        log.exception("job %s failed", job_id)
        return _finish_failed(store, lease, ServiceErrorCode.INTERNAL_ERROR.value,
                              f"internal error while segmenting ({type(exc).__name__})")

    for stage, seconds in result.timings.items():
        prometheus.STAGE_SECONDS.labels(stage=stage).observe(seconds)
    prometheus.FRAMES.inc(result.frames - seg_options.start_frame)
    finished = time.time()

    def succeed(r: JobRecord) -> None:
        r.finish(JobStatus.SUCCEEDED, now=finished)
        r.progress = Progress(frames_done=result.frames, frames_total=result.frames)
        r.preview = Path(result.preview_path).name if result.preview_path else None
        r.class_names = list(predictor.class_names) if predictor.num_classes > 1 else []
        r.timings = {**result.timings, "queue_wait": round((r.started_at or finished) - r.created_at, 4),
                     "total": round(finished - r.created_at, 4)}

    try:
        record = fenced_update(store, lease, succeed)
    except LeaseLost as exc:
        log.warning("%s: the result is the new owner's", exc)
        prometheus.LEASE_WRITES_REFUSED.inc()
        return {"job_id": job_id, "status": "lease_lost"}
    # The upload stays with the job (deleted with it, or when it expires): the page plays it (or its preview)
    # and the video exports (worker.exports) are made from it.
    prometheus.JOB_SECONDS.observe(finished - record.created_at)
    prometheus.JOBS_FINISHED.labels(status="succeeded").inc()
    return {"job_id": job_id, "status": "succeeded", "frames": result.frames}


def _finish_cancelled(store: JobStore, job_id: str, lease: Lease | None) -> dict[str, Any]:
    from worker import prometheus

    def cancel(r: JobRecord) -> None:
        if not r.finished:  # without a lease, the API may have ended it since
            r.finish(JobStatus.CANCELLED, by_owner=lease is not None)

    try:
        if lease is None:
            store.update(job_id, cancel)
        else:
            fenced_update(store, lease, cancel)
        store.remove_files(job_id)
    except JobNotFound:
        pass
    except LeaseLost:
        prometheus.LEASE_WRITES_REFUSED.inc()
        return {"job_id": job_id, "status": "lease_lost"}
    prometheus.JOBS_FINISHED.labels(status="cancelled").inc()
    return {"job_id": job_id, "status": "cancelled"}


def _finish_failed(store: JobStore, lease: Lease, code: str, message: str, *,
                   keep_masks: bool = True) -> dict[str, Any]:
    from worker import prometheus

    job_id = lease.job_id
    finished = time.time()
    try:
        with fenced(store, lease) as record:
            kept = complete_lines(store.masks_path(job_id)) if keep_masks else 0
            record.finish(JobStatus.FAILED, now=finished, error=JobError(code=code, message=message))
            record.progress.frames_done = kept
            store.write(record)
    except LeaseLost:
        prometheus.LEASE_WRITES_REFUSED.inc()
        return {"job_id": job_id, "status": "lease_lost"}
    # The frames written before the failure stay readable: the mask stream's end line says "failed" and how
    # many frames there are, so they are never taken for a complete result. The upload and any partial
    # overlay go.
    store.remove_files(job_id, keep=(store.masks_path(job_id).name,) if keep_masks else ())
    prometheus.JOB_SECONDS.observe(finished - record.created_at)
    prometheus.JOBS_FINISHED.labels(status="failed").inc()
    prometheus.JOBS_FAILED.labels(code=code).inc()
    return {"job_id": job_id, "status": "failed", "error": code}


def _free_media_if_still_ours(store: JobStore, lease: Lease) -> None:
    """Delete the job's media when a read shows `lease` still holds (see `_finish_storage_full`)."""
    try:
        record = store.get(lease.job_id)
    except (JobNotFound, OSError, ValueError):
        return
    if record.lease_token == lease.token and record.status is JobStatus.RUNNING:
        store.remove_media(lease.job_id)


def _finish_storage_full(store: JobStore, lease: Lease, exc: OSError) -> dict[str, Any]:
    """The disk is full: free this job's files first (they are what we can free), then record the failure,
    retrying the small record write while other writers may still be filling the disk."""
    log.error("job %s: no space left on the data volume (%s)", lease.job_id, exc)
    try:
        with fenced(store, lease):
            store.remove_files(lease.job_id)
    except StateStorageFull:
        # The state Redis cannot persist either (its append-only file is on the full disk), so it refuses the
        # record lock. It refuses every other write too: no one can take the lease over meanwhile, so a read
        # that finds the lease still ours is as safe as the lock. Freeing the media is what lets Redis write.
        _free_media_if_still_ours(store, lease)
    except (LeaseLost, OSError):
        pass
    message = "no space left on the data volume while writing the results"
    for attempt in range(STORAGE_RETRIES):
        try:
            return _finish_failed(store, lease, ServiceErrorCode.STORAGE_FULL.value, message, keep_masks=False)
        except OSError as again:
            log.warning("job %s: recording storage_full failed (%s), attempt %d", lease.job_id, again, attempt + 1)
            time.sleep(STORAGE_RETRY_S)
    return {"job_id": lease.job_id, "status": "failed", "error": ServiceErrorCode.STORAGE_FULL.value}
