"""The frame engine: one model, several videos in flight, inference batches that mix them.

A GPU is used well only when each inference call gets a full batch; one video at a time cannot give it one
(decoding, audio, post-processing and writing of that video come in between). So a worker process holds one
model and one engine, and every job in flight hands its frames to the engine:

    job A: ffmpeg ─▶ decode thread ─▶ pending frames ─┐                 ┌─▶ encode thread A ─▶ masks.ndjson
    job B: ffmpeg ─▶ decode thread ─▶ pending frames ─┼─▶ batcher ─▶ model ─┼─▶ encode thread B ─▶ ...
    job C: ...                                        ┘  (one thread)     └─▶ ...

* **Batching, with the two knobs of every serving system** (Triton's `max_batch_size` and
  `max_queue_delay_microseconds`, TorchServe's `batchSize`/`maxBatchDelay`, Ray Serve's
  `max_batch_size`/`batch_wait_timeout_s`): a batch runs as soon as `max_batch_size` frames are pending, or
  `max_wait_ms` after its first frame was available, whichever comes first.
* **Fair between jobs.** Each batch gives every job with pending frames an equal share (round-robin, the
  first job served rotating from batch to batch), and a job's frames stay contiguous and in order.
* **Post-processing off the inference thread.** Upsampling to the video's size, thresholding, COCO RLE and
  the write happen on the job's own encode thread, in frame order, while the model runs the next batch.
* **Bounded memory.** Each job decodes at most `prefetch_batches × max_batch_size` frames ahead.
* **Cancellation and resume kept.** The encode thread asks `should_cancel()` before each write (the
  service's lease check raises there too), and the decode thread before each batch, so a cancelled job
  stops within its prefetch window; frames before `start_frame` are decoded but never inferred.
* **Errors in order.** A decode error or a failed inference call reaches the job's encode thread behind
  the frames already inferred, so everything before the failure is written.
* **Live jobs** (`worker.live`) never decode ahead: at most `live_window` of their frames wait for the
  model, and one more either drops the oldest (the latency stays bounded) or, without drops, makes the job's
  decoding wait (the source is read more slowly: back-pressure).

* **One thread runs the model.** On the CPU, PyTorch (OpenMP, oneDNN) is much slower from a second thread
  once another one has used it: measured here, the tiny model at batch 8 runs at 145 frames/s from the
  thread that loaded it and 83 from another. So the thread that builds and warms the model runs the batcher
  (`serve`, or `run` in the caller's thread), and other torch work (the audio encoder) is handed to it
  (`run_in_model_thread`).

Torch is used only through the predictor; the engine itself is plain threads and conditions.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from worker.engine_jobs import (
    END,
    Cancelled,
    Failure,
    JobSpec,
    JobState,
    JobStats,
    audio_windows_for,
    table_rows,
)

__all__ = ["Cancelled", "FrameEngine", "JobHandle", "JobSpec", "JobStats", "audio_windows_for"]

class JobHandle:
    """A submitted job: `wait()` returns its `JobStats` or raises its error (MediaError, Cancelled, ...)."""

    def __init__(self, job: JobState, threads: list[threading.Thread], engine: FrameEngine) -> None:
        self._job = job
        self._threads = threads
        self._engine = engine

    def set_table(self, table: torch.Tensor) -> None:
        """The job's audio embeddings, once computed: its decoded frames can now be batched."""
        with self._engine._cond:
            self._job.spec.table = table
            self._engine._cond.notify_all()

    @property
    def done(self) -> bool:
        """True once the job ended (well or not)."""
        return self._job.done.is_set()

    def fail(self, exc: BaseException) -> None:
        """End the job with `exc` (nothing more is inferred or written for it)."""
        self._engine._fail(self._job, exc)

    def wait(self, timeout_s: float | None = None) -> JobStats:
        if not self._job.done.wait(timeout_s):
            raise TimeoutError(f"job {self._job.spec.key} still running")
        for thread in self._threads:
            thread.join()
        if self._job.error is not None:
            raise self._job.error
        return self._job.stats


class FrameEngine:
    """One predictor shared by every job submitted to it (see the module docstring).

    `max_batch_size`: frames per inference call at most. `max_wait_ms`: how long a batch that is not full
    waits for more frames after its first one (0: run whatever is pending at once). `prefetch_batches`:
    how many batches each job may decode ahead. `model_lock` must be held by anyone else using the
    predictor's model (the audio encoder, for instance). `on_batch(frames, seconds, jobs)` is called after
    every inference call.
    """

    def __init__(self, predictor: Any, *, max_batch_size: int = 8, max_wait_ms: float = 5.0,
                 prefetch_batches: int = 2, on_batch: Callable[[int, float, int], None] | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative, got {max_wait_ms}")
        self.predictor = predictor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.prefetch_frames = max(1, prefetch_batches) * max_batch_size
        self.on_batch = on_batch
        self.model_lock = threading.Lock()
        self._jobs: list[JobState] = []
        self._cond = threading.Condition()
        self._closed = False
        self._rotation = itertools.count()
        self._thread: threading.Thread | None = None
        self._model_thread: int | None = None  # ident of the thread running the loop, while one does
        self._calls: collections.deque[tuple[Callable[[], Any], dict[str, Any], threading.Event]] = collections.deque()
        self.batches_run = 0
        self.mixed_batches = 0  # batches holding frames of more than one job

    # ------------------------------------------------------------------------------------- public
    def submit(self, spec: JobSpec) -> JobHandle:
        """Start decoding and encoding `spec`; its frames join the batches of whichever thread runs the loop
        (`serve`, `start`, or `run` in the caller's thread)."""
        job = JobState(spec, self.prefetch_frames)
        with self._cond:
            if self._closed:
                raise RuntimeError("the frame engine is closed")
            self._jobs.append(job)
            self._cond.notify_all()
        threads = [threading.Thread(target=self._decode, args=(job,), name=f"decode-{spec.key[:12]}", daemon=True),
                   threading.Thread(target=self._encode, args=(job,), name=f"encode-{spec.key[:12]}", daemon=True)]
        for thread in threads:
            thread.start()
        return JobHandle(job, threads, self)

    def run(self, spec: JobSpec) -> JobStats:
        """Submit `spec` and wait for it (see `finish`)."""
        return self.finish(self.submit(spec))

    def finish(self, handle: JobHandle) -> JobStats:
        """Wait for a submitted job; whenever no thread is serving the engine, serve it from this one (a caller
        that served stops when its own job is done; another waiting caller then takes over)."""
        done = handle._job.done
        while not done.is_set():
            with self._cond:
                serving = self._model_thread is not None
            if serving:
                done.wait(0.05)
            else:
                self._infer_loop(until=done.is_set)
        return handle.wait()

    def serve(self, on_serving: Callable[[], None] | None = None) -> None:
        """Run the batcher in this thread until `close()`: the thread that built and warmed the model should
        be the one that runs it (see the module docstring). If a caller of `finish` is serving, this waits for
        it to hand over. `on_serving()` is called once this thread holds the role and before it runs a batch:
        announce the engine from there, so that no job's thread finds it unserved and starts a second batcher."""
        self._infer_loop(on_claimed=on_serving)

    def start(self) -> FrameEngine:
        """Run the batcher on a thread of its own."""
        self._thread = threading.Thread(target=self._infer_loop, name="frame-engine", daemon=True)
        self._thread.start()
        return self

    def run_in_model_thread(self, fn: Callable[[], Any]) -> Any:
        """`fn()` on the thread that runs the model (between two batches), or here when none serves."""
        with self._cond:
            serving = self._model_thread is not None and self._model_thread != threading.get_ident()
            if serving:
                result: dict[str, Any] = {}
                done = threading.Event()
                self._calls.append((fn, result, done))
                self._cond.notify_all()
        if not serving:
            return fn()
        done.wait()
        if "error" in result:
            raise result["error"]
        return result["value"]

    @property
    def jobs_in_flight(self) -> int:
        with self._cond:
            return len(self._jobs)

    def close(self) -> None:
        """Stop the batcher; jobs still in flight fail."""
        with self._cond:
            self._closed = True
            jobs = list(self._jobs)
            calls, self._calls = list(self._calls), collections.deque()
            self._cond.notify_all()
        for _, result, done in calls:
            result["error"] = RuntimeError("the frame engine was closed")
            done.set()
        for job in jobs:
            self._fail(job, RuntimeError("the frame engine was closed"))
        if self._thread is not None:
            self._thread.join(timeout=30)

    # ------------------------------------------------------------------------------ decode thread
    def _decode(self, job: JobState) -> None:
        batches = job.spec.batches
        try:
            while not job.stop.is_set():
                started = time.perf_counter()
                batch = next(batches, None)
                job.stats.seconds["decode"] += time.perf_counter() - started
                if batch is None:
                    break
                if job.spec.should_cancel is not None and job.spec.should_cancel():  # stop decoding too
                    raise Cancelled(f"cancelled after {batch.start_index} frames")
                job.stats.frames = batch.start_index + len(batch)
                dropped: list[int] = []
                with self._cond:
                    for i, (frame, pts) in enumerate(zip(batch.frames, batch.pts_s, strict=True)):
                        if batch.start_index + i >= job.spec.start_frame:
                            job.pending.append((batch.start_index + i, pts, frame))
                    window = job.spec.live_window
                    while window is not None and job.spec.live_drop and len(job.pending) > window:
                        dropped.append(job.pending.popleft()[0])  # live: keep the newest frames
                    job.stats.max_pending = max(job.stats.max_pending, len(job.pending))
                    self._cond.notify_all()
                    # A file job decodes ahead up to its prefetch; a live job without drops up to its window
                    # (then its source waits: back-pressure); a dropping live job never waits.
                    limit = job.prefetch_frames if window is None else (None if job.spec.live_drop else window)
                    while limit is not None and len(job.pending) >= limit and not job.stop.is_set():
                        self._cond.wait(0.1)
                if job.spec.on_drop is not None:
                    for index in dropped:
                        job.spec.on_drop(index)
        except BaseException as exc:  # a decode error (MediaError): after the frames decoded before it
            job.decode_error = exc
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # stops ffmpeg when the job ended early
            with self._cond:
                job.decoded_all = True
                self._cond.notify_all()

    def _cpu_gate(self):
        """When the model runs on the CPU, encoding waits for the model: both need every core, and a thread
        running beside torch's intra-op threads slows each inference call far more than it gains (measured:
        1.8x slower inference on 2 cores). On a GPU the encode threads overlap inference freely."""
        device = getattr(self.predictor, "device", None)
        return self.model_lock if getattr(device, "type", "cpu") == "cpu" else contextlib.nullcontext()

    # ------------------------------------------------------------------------------ encode thread
    def _encode(self, job: JobState) -> None:
        try:
            while True:
                item = job.encode_queue.get()
                if item is END:
                    break
                if job.error is not None:
                    continue  # drain: the job failed, nothing more is written
                if isinstance(item, Failure):
                    raise item.error
                start_index, pts, logits = item
                if job.spec.should_cancel is not None and job.spec.should_cancel():
                    raise Cancelled(f"cancelled after {start_index} frames")
                started = time.perf_counter()
                with self._cpu_gate():
                    job.spec.encode(start_index, pts, logits)
                job.stats.seconds["encode"] += time.perf_counter() - started
        except BaseException as exc:
            self._fail(job, exc)
        finally:
            with self._cond:
                if job in self._jobs:
                    self._jobs.remove(job)
                self._cond.notify_all()
            job.done.set()

    # ----------------------------------------------------------------------------- batcher thread
    def _fail(self, job: JobState, exc: BaseException) -> None:
        with self._cond:
            if job.error is None:
                job.error = exc
            job.stop.set()
            job.pending.clear()
            if not job.ended:
                job.ended = True
                job.encode_queue.put(END)
            self._cond.notify_all()

    def _end_in_order(self, job: JobState, error: BaseException | None) -> None:
        """Queue the job's end (or its failure) behind the frames already queued for encoding (lock held)."""
        if not job.ended:
            job.ended = True
            job.stop.set()
            job.pending.clear()
            job.encode_queue.put(END if error is None else Failure(error))

    def _ready(self) -> int:
        """Frames ready for the model over all jobs; also ends the jobs that are fully decoded and inferred
        (lock held). A job whose sound is not ready yet has none ready."""
        total = 0
        for job in self._jobs:
            if job.spec.audio_ready:
                total += len(job.pending)
            if job.decoded_all and not job.pending and not job.ended:
                self._end_in_order(job, job.decode_error)
        return total

    def _take(self) -> list[tuple[JobState, list[tuple[int, float, np.ndarray]]]]:
        """Up to `max_batch_size` frames, an equal share per job with pending frames (lock held)."""
        ready = [job for job in self._jobs if job.pending and job.spec.audio_ready]
        if not ready:
            return []
        shift = next(self._rotation) % len(ready)
        ready = ready[shift:] + ready[:shift]
        taken: dict[int, list[tuple[int, float, np.ndarray]]] = {id(job): [] for job in ready}
        room = self.max_batch_size
        while room > 0:
            active = [job for job in ready if job.pending]
            if not active:
                break
            share = max(1, room // len(active))
            for job in active:
                count = min(share, len(job.pending), room)
                taken[id(job)].extend(job.pending.popleft() for _ in range(count))
                room -= count
                if room == 0:
                    break
        self._cond.notify_all()  # decoders waiting for room
        return [(job, taken[id(job)]) for job in ready if taken[id(job)]]

    def _claim(self, *, wait: bool) -> bool:
        """Take the batcher's role for this thread, atomically (lock held inside): True once taken. With `wait`
        (the serving thread) wait for the thread that has it to hand it over; without (a caller of `finish`)
        give up at once. One batcher at a time is what keeps each job's batches, and so its lines, in order,
        and its end behind its last frames."""
        me = threading.get_ident()
        with self._cond:
            while self._model_thread not in (None, me):
                if not wait or self._closed:
                    return False
                self._cond.wait()
            self._model_thread = me
            return True

    def _infer_loop(self, until: Callable[[], bool] | None = None,
                    on_claimed: Callable[[], None] | None = None) -> None:
        if not self._claim(wait=until is None):
            return  # another thread serves (a caller of `finish` goes back to waiting for its job)
        if on_claimed is not None:
            on_claimed()
        try:
            while True:
                with self._cond:
                    while not self._closed and not self._calls and self._ready() == 0:
                        if until is not None and until():
                            return
                        self._cond.wait(0.05 if until is not None else None)
                    if self._closed:
                        return
                    call = self._calls.popleft() if self._calls else None
                    work = []
                    if call is None:
                        deadline = time.monotonic() + self.max_wait_s
                        while self.max_wait_s > 0 and self._ready() < self.max_batch_size and not self._closed:
                            remaining = deadline - time.monotonic()
                            if remaining <= 0 or self._all_decoders_idle() or self._calls:
                                break
                            self._cond.wait(remaining)
                        work = self._take()
                if call is not None:
                    fn, result, done = call
                    try:
                        result["value"] = fn()
                    except BaseException as exc:
                        result["error"] = exc
                    done.set()
                elif work:
                    self._run_batch(work)
        finally:
            with self._cond:
                self._model_thread = None
                self._cond.notify_all()  # a thread waiting to serve takes over

    @staticmethod
    def _embeddings(job: JobState, pts_s: list[float]) -> torch.Tensor:
        """The audio embeddings of a job's frames: its live embedder, or its table of windows."""
        if job.spec.embed is not None:
            return job.spec.embed(pts_s)
        assert job.spec.table is not None
        return table_rows(job.spec.table, pts_s)

    def _all_decoders_idle(self) -> bool:
        """True when no job can add a frame soon: each is fully decoded or already at its prefetch limit."""
        return all(job.decoded_all or len(job.pending) >= job.prefetch_frames or not job.spec.audio_ready
                   or job.spec.live_window is not None for job in self._jobs)

    def _run_batch(self, work: list[tuple[JobState, list[tuple[int, float, np.ndarray]]]]) -> None:
        frames = np.stack([frame for _, items in work for _, _, frame in items])
        started = time.perf_counter()
        try:
            embeddings = torch.cat([self._embeddings(job, [pts for _, pts, _ in items]) for job, items in work])
            with self.model_lock:
                logits = self.predictor.predict_logits(frames, embeddings)
                if logits.device.type == "cuda":
                    torch.cuda.synchronize(logits.device)  # attribute GPU time to inference, not to encode
        except BaseException as exc:  # a broken model fails the jobs of this batch, not the engine
            with self._cond:
                for job, _ in work:
                    self._end_in_order(job, exc)
                self._cond.notify_all()
            return
        seconds = time.perf_counter() - started
        self.batches_run += 1
        if len(work) > 1:
            self.mixed_batches += 1
        if self.on_batch is not None:
            self.on_batch(len(frames), seconds, len(work))
        offset = 0
        for job, items in work:
            count = len(items)
            job.stats.inferred += count
            job.stats.seconds["inference"] += seconds * count / len(frames)
            # One encode call per run of consecutive frames: a live job's frames skipped by its fps cap (or
            # dropped) leave gaps, and `encode` numbers its frames from the first one it is given.
            first = 0
            for i in range(1, count + 1):
                if i == count or items[i][0] != items[i - 1][0] + 1:
                    job.encode_queue.put((items[first][0], [pts for _, pts, _ in items[first:i]],
                                          logits[offset + first:offset + i]))
                    first = i
            offset += count
