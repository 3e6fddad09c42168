"""REST streams on a worker (`worker.core.streams`): the `avs.stream` task hands a stream to `StreamManager`,
which runs it on a thread of its own, as a `LiveSession` on the worker's frame engine, with no client.

* **Where.** A stream takes one of the worker's live-session slots (`LiveServer.reserve`, so `/live` sessions
  and streams share `AVS_LIVE_MAX_SESSIONS`, and the heartbeat advertises both). The Celery task returns once
  the stream runs: a stream lasts up to `AVS_LIVE_MAX_DURATION_S` and must not hold one of the pool's threads,
  which run file jobs. A full worker leaves the stream queued; the reconciler sends it again
  (`AVS_UNTAKEN_GRACE_S`), to whichever worker then has room.
* **Exactly once per frame.** The stream runs under its lease (`worker.core.leases`), renewed by a
  `LeaseKeeper`; every mask line is appended under the record's lock after checking the lease's token, so a
  worker that lost its stream writes nothing more. A worker taking over a stream (its former worker died; the
  reconciler requeued it) cuts a torn last line and numbers its frames after the last complete one: frame
  indices go on rising, none twice, and `pts_s` stays the stream's own clock. (`frame_index` counts the frames
  received, as in a `/live` session: a frame dropped late or skipped by the fps cap leaves a gap; the frames
  received while no worker ran the stream are not counted.)
* **Stopping.** DELETE sets the record's stop flag; it is read with every line written and, when no frame
  comes, every `WATCH_S` by a watcher thread: the session is then ended as a client would end it (ffmpeg asked
  to finish; the frames it still delivers are written). A worker that is stopping hands its streams back:
  their leases are made to expire now, and the reconciler's next pass sends them to another worker.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker import prometheus
from worker.core.contracts import JobStatus, ServiceErrorCode
from worker.core.job_record import JobRecord
from worker.core.jobstore import JobLocked, JobNotFound
from worker.core.leases import Acquired, Lease, LeaseLost, acquire, fenced, fenced_update
from worker.core.live_sources import SourceRefused, parse_allow_list, pulled_source
from worker.core.settings import ServiceSettings
from worker.core.streams import ENDED_BY_STOP, finish_stream, stream_store
from worker.job_runner import LeaseKeeper, complete_lines
from worker.live.options import LiveOptions
from worker.live.server import LiveServer, error_of
from worker.live.session import LiveSession
from worker.masks import MaskWriter

log = logging.getLogger("avs.streams")

WATCH_S = 0.5  # how often a stream's record is read for a stop request when no frame comes
PROGRESS_S = 1.0  # the record's frame count is brought up to date at most this often (the lines are the truth)


class StreamManager:
    """The REST streams running on this worker. `live`: the worker's live endpoint (its session slots);
    `engine_factory()`: the worker's frame engine; `owner`: this worker's name in the leases."""

    def __init__(self, settings: ServiceSettings, live: LiveServer, engine_factory: Callable[[], Any], *,
                 owner: str) -> None:
        self.settings, self.live, self.engine_factory, self.owner = settings, live, engine_factory, owner
        self.store = stream_store(settings)
        self.allowed = parse_allow_list(settings.live_sources)
        self.stopping = threading.Event()
        self._runs: dict[str, StreamRun] = {}
        self._lock = threading.Lock()

    def take(self, stream_id: str) -> dict[str, Any]:
        """Start stream `stream_id` here if there is a free slot and nobody holds its lease; return at once with
        what happened (`running`, or why not: `full`, `owned`, `finished`, `missing`, `busy`, `stopping`)."""
        if self.stopping.is_set():
            return {"stream_id": stream_id, "status": "stopping"}
        if not self.live.reserve(stream_id):
            # full, or this worker already runs it (a duplicate message): it stays as it is; a queued stream
            # is sent again by the reconciler, to a worker with room
            return {"stream_id": stream_id, "status": "full"}
        try:
            outcome, lease, record = acquire(self.store, stream_id, self.owner, self.settings.lease_timeout_s)
        except (JobLocked, OSError) as exc:
            self.live.release(stream_id)
            log.warning("stream %s: not taken this time (%s)", stream_id, exc)
            return {"stream_id": stream_id, "status": "busy"}
        if outcome is not Acquired.TAKEN:
            self.live.release(stream_id)
            if outcome is Acquired.CANCELLED:  # stopped while queued, before DELETE could finish it
                with contextlib.suppress(JobNotFound, JobLocked):
                    self.store.update(stream_id, lambda r: r.finished or finish_stream(
                        r, JobStatus.CANCELLED, frames=r.progress.frames_done, summary=r.live, reason=ENDED_BY_STOP))
            return {"stream_id": stream_id, "status": outcome.value}
        assert lease is not None
        assert record is not None
        run = StreamRun(self, lease, record)
        with self._lock:
            self._runs[stream_id] = run
        run.thread.start()
        return {"stream_id": stream_id, "status": "running"}

    def stop(self, timeout_s: float = 15.0) -> None:
        """The worker is stopping: every stream here is ended and handed back (its lease expires now)."""
        self.stopping.set()
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.abort(ServiceErrorCode.NOT_READY.value, "the worker is stopping")
        deadline = time.monotonic() + timeout_s
        for run in runs:
            run.thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _done(self, stream_id: str) -> None:
        with self._lock:
            self._runs.pop(stream_id, None)
        self.live.release(stream_id)


class StreamRun:
    """One stream on this worker, from its lease to its last write (see the module docstring)."""

    def __init__(self, manager: StreamManager, lease: Lease, record: JobRecord) -> None:
        self.manager, self.lease, self.record = manager, lease, record
        self.store = manager.store
        self.stream_id = lease.job_id
        self.session: LiveSession | None = None
        self.writer: MaskWriter | None = None
        self.offset = 0  # one past the last frame index a former worker wrote: this run's frame 0 is `offset`
        self.lines = 0  # frame lines in the file
        self.stop_requested = False
        self._aborted = False  # set before the session is read, so an abort before it exists is not lost
        self._last_progress = 0.0
        self._ended = threading.Event()
        self.thread = threading.Thread(target=self._main, name=f"stream-{self.stream_id[:8]}", daemon=True)

    def abort(self, code: str, message: str) -> None:
        """End the session now (the worker is stopping, the lease is lost); nothing more is written."""
        self._aborted = True
        if self.session is not None:
            self.session.abort(code, message)

    # ------------------------------------------------------------------------------------------ life
    def _main(self) -> None:
        prometheus.STREAMS_STARTED.inc()
        status = "failed"
        try:
            status = self._run()
        except Exception as exc:  # a bug: the stream fails, the worker lives on
            log.exception("stream %s failed", self.stream_id)
            status = self._finish(JobStatus.FAILED, None, None, (ServiceErrorCode.INTERNAL_ERROR.value,
                                                                  f"internal error ({type(exc).__name__})"))
        finally:
            self._ended.set()
            if self.writer is not None:
                with contextlib.suppress(OSError):
                    self.writer.commit()
            self.manager._done(self.stream_id)
            prometheus.STREAMS_ENDED.labels(status=status).inc()

    def _run(self) -> str:
        settings = self.manager.settings
        spec = self.record.stream
        if spec is None:
            return self._finish(JobStatus.FAILED, None, None, (ServiceErrorCode.INTERNAL_ERROR.value,
                                                               "the record has no stream"))
        try:  # checked again here: this worker's allow-list is the one that counts
            source = pulled_source(spec.source, self.manager.allowed)
        except SourceRefused as exc:
            return self._finish(JobStatus.FAILED, None, None, (exc.code, str(exc)))
        masks = self.store.masks_path(self.stream_id)
        with fenced(self.store, self.lease):  # the former worker's torn last line is cut by the new owner
            self.lines = complete_lines(masks)
            self.offset = next_frame_index(masks)
        self.writer = MaskWriter(masks, atomic=False, append=True)
        options = LiveOptions(threshold=self.record.options.threshold, fps=self.record.options.fps,
                              window=spec.window, mode=spec.mode)
        session = LiveSession(
            source, self.manager.engine_factory(), self._on_record, key=self.stream_id, options=options,
            idle_timeout_s=settings.live_idle_timeout_s, limits=settings.media_limits(),
            max_duration_s=settings.live_max_duration_s, on_latency=prometheus.LIVE_LATENCY_SECONDS.observe,
            on_drop=lambda reason: prometheus.LIVE_FRAMES_DROPPED.labels(reason=reason).inc(),
            on_skip=prometheus.LIVE_FRAMES_SKIPPED.inc, reconnect_s=settings.live_reconnect_s)
        self.session = session
        self.manager.live.attach(self.stream_id, session)
        if self._aborted:  # the worker began stopping before the session existed
            return self._hand_back()
        log.info("stream %s: reading %s from frame %d (attempt %d)", self.stream_id, source.url, self.offset,
                 self.record.attempts)
        with LeaseKeeper(self.store, self.lease, settings.lease_timeout_s) as keeper:
            watcher = threading.Thread(target=self._watch, args=(keeper,), name=f"stream-watch-{self.stream_id[:8]}",
                                       daemon=True)
            session.start()
            watcher.start()
            summary = session.wait()
            self._ended.set()
            watcher.join(timeout=5)
            lost = keeper.lost.is_set() or isinstance(session.error, LeaseLost)
        if self.manager.stopping.is_set() and not self.stop_requested:
            return self._hand_back()
        if lost:
            log.warning("stream %s: lease %d lost; stopping without writing", self.stream_id, self.lease.token)
            prometheus.LEASE_WRITES_REFUSED.inc()
            return "lease_lost"
        if self.stop_requested:
            return self._finish(JobStatus.CANCELLED, summary, ENDED_BY_STOP, None)
        error = error_of(session.error)
        if error is not None:
            return self._finish(JobStatus.FAILED, summary, None, error)
        return self._finish(JobStatus.SUCCEEDED, summary, session.ended_by, None)

    def _watch(self, keeper: LeaseKeeper) -> None:
        """Between frames: a stop request (DELETE), a lost lease, the worker stopping."""
        while not self._ended.wait(WATCH_S):
            if keeper.lost.is_set():
                self.abort(ServiceErrorCode.NOT_READY.value, "the stream's lease was lost")
                return
            try:
                stop = self.store.get(self.stream_id).cancel_requested
            except (JobNotFound, ValueError):
                stop = True  # the record is gone (expired under us): nothing to run for
            if stop:
                self._stop()

    def _stop(self) -> None:
        if not self.stop_requested and self.session is not None:
            self.stop_requested = True
            log.info("stream %s: stop requested; ending", self.stream_id)
            self.session.end()

    # ------------------------------------------------------------------------------------- writes
    def _on_record(self, record: dict[str, Any]) -> None:
        """One processed frame (the session's encode thread): its line, numbered after the frames already in
        the file, appended under the lease; the record's count of lines every `PROGRESS_S`."""
        assert self.writer is not None
        line = {k: v for k, v in record.items() if k not in ("type", "latency_ms")}
        line["frame_index"] = record["frame_index"] + self.offset
        with fenced(self.store, self.lease) as current:
            self.writer.write([line])
            self.lines += 1
            stop = current.cancel_requested
            now = time.monotonic()
            if now - self._last_progress >= PROGRESS_S:
                self._last_progress = now
                current.progress.frames_done = self.lines
                current.updated_at = time.time()
                self.store.write(current)
        self.store.notify(self.stream_id)  # followers read the line now, not at their next safety poll
        if stop:
            self._stop()

    def _finish(self, status: JobStatus, summary: dict[str, Any] | None, reason: str | None,
                error: tuple[str, str] | None) -> str:
        """The stream's last write (fenced); the status for the metrics."""
        if self.writer is not None:
            self.writer.commit()  # flushed and synced before the record says how many lines there are
            self.writer = None
        try:
            with fenced(self.store, self.lease) as current:
                frames = complete_lines(self.store.masks_path(self.stream_id))
                finish_stream(current, status, frames=frames, summary=summary, reason=reason, error=error)
                current.updated_at = time.time()
                self.store.write(current)
        except (LeaseLost, JobNotFound) as exc:
            log.warning("stream %s: its end not recorded (%s)", self.stream_id, exc)
            prometheus.LEASE_WRITES_REFUSED.inc()
            return "lease_lost"
        log.info("stream %s %s after %d frames (%s)", self.stream_id, status.value, frames,
                 error[0] if error else reason)
        return status.value

    def _hand_back(self) -> str:
        """The worker is stopping: the lease expires now, so the reconciler requeues the stream at once."""
        try:
            fenced_update(self.store, self.lease, lambda r: setattr(r, "lease_expires_at", time.time()))
        except (LeaseLost, JobNotFound, JobLocked) as exc:
            log.warning("stream %s: not handed back (%s)", self.stream_id, exc)
        return "handed_back"


def next_frame_index(path: Path) -> int:
    """One past the `frame_index` of the last line of a masks file that ends with a complete line (0 when it
    is empty or missing). Reads the file's end only: an hour of frames is tens of megabytes."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    with path.open("rb") as f:
        position, data = size, b""
        while position > 0:
            step = min(1 << 16, position)
            position -= step
            f.seek(position)
            data = f.read(step) + data
            lines = data.rstrip(b"\n").split(b"\n")
            if len(lines) > 1 or position == 0:
                return int(json.loads(lines[-1])["frame_index"]) + 1 if lines[-1].strip() else 0
    return 0
