"""One live session: a stream in, one mask record per processed frame out, while the stream is happening.

    media bytes (pushed) or a stream URL (pulled)
        └─▶ one ffmpeg (allow-listed demuxers, a pixel limit, a deadline)
              ├─ frames at the model's size, rawvideo, timestamps from showinfo ─▶ the frame engine (live job)
              └─ sound, 16 kHz mono float, flushed per packet ─▶ a ring buffer of the last seconds

* **The live alignment rule.** A live frame cannot wait for the future: frame t hears the 0.96 s of sound that
  ends at t (the 96 log-mel frames whose windows end by t; `AVSPredictor.embeddings_ending_at`). The offline
  rule (frame t hears the 0.96 s window that contains t, `worker.engine.audio_windows_for`) needs sound from
  after t, which a live stream does not have yet.
* **Never fall behind.** The session is a live job of the worker's frame engine: its decoder never waits, at
  most `window` frames wait for the model, and when one more arrives the oldest is dropped (counted as
  `late`): the masks describe the newest frames, and the latency stays bounded whatever the stream's length.
  In `no_drop` mode the decoder waits instead: ffmpeg's output is not read, so ffmpeg stops reading its input
  and the sender is held back (every frame gets a mask; `worker.live.options`).
* **Latency** is measured per frame from its arrival (the moment ffmpeg delivered it decoded) to its mask
  record being handed to the sender.

The session is transport-agnostic: `feed()` takes pushed bytes, `on_record` receives each mask record (the
worker's WebSocket sends it, `avs live` prints it), `end()` / `abort()` finish it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.modeling.audio_frontend import SAMPLE_RATE
from worker.core.contracts import ErrorCode, ServiceErrorCode
from worker.core.errors import MediaError
from worker.core.live_sources import LiveSource
from worker.core.media.containers import SNIFF_BYTES, mp4_media_before_index, sniff_container_head
from worker.core.media.media_info import MediaLimits
from worker.core.media.process import BoundedProcess
from worker.engine import FrameEngine, JobHandle, JobSpec
from worker.live.live_input import AudioRing, ConnectionLog, exit_error, live_command
from worker.live.options import LiveOptions, LiveStats
from worker.live.reconnect import Gaps, backoff_delays
from worker.media.decode import FrameBatch
from worker.pipeline import encode_masks

log = logging.getLogger("avs.live")

END_GRACE_S = 10.0  # an ffmpeg asked to finish that has not after this is killed
AUDIO_KEEP_S = 10.0  # seconds of sound kept for the embeddings (a window needs 0.975 s)


class SessionError(Exception):
    """Why a session ended badly, with a stable `code` (`idle_timeout`, `client_gone`, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = str(code), message


class LiveSession:
    """A stream segmented as it arrives (see the module docstring).

    `engine`: the worker's frame engine (shared with file jobs). `on_record(record)`: each mask record (the
    file API's fields plus `latency_ms`), in frame order, on the job's encode thread. `limits`: the pixel
    limit and `max_duration_s` (the session's longest life). Call `start()`, then `feed()` pushed bytes, then
    `end()` (the stream is complete) or `abort()`; `wait()` returns the summary.
    """

    def __init__(self, source: LiveSource, engine: FrameEngine, on_record: Callable[[dict[str, Any]], None], *,
                 options: LiveOptions | None = None, limits: MediaLimits | None = None, realtime: bool = False,
                 idle_timeout_s: float = 10.0, key: str = "live",
                 on_latency: Callable[[float], None] | None = None,
                 on_drop: Callable[[str], None] | None = None, copy_to: Path | None = None,
                 max_duration_s: float | None = None, reconnect_s: float = 0.0,
                 on_skip: Callable[[], None] | None = None) -> None:
        self.source, self.engine, self.on_record = source, engine, on_record
        self.options = options or LiveOptions()
        self.limits = limits or MediaLimits()
        self.realtime, self.idle_timeout_s, self.key = realtime, idle_timeout_s, key
        self.on_latency, self.on_drop_reason, self.on_skip = on_latency, on_drop, on_skip
        self.copy_to = copy_to
        self.max_duration_s = max_duration_s or self.limits.max_duration_s
        # A pulled source that drops is opened again for this long (worker.live.reconnect); not while its stream
        # is copied for an overlay (the copy is one file per connection).
        self.reconnect_s = reconnect_s if source.network and copy_to is None else 0.0
        self.gaps = Gaps()
        self._segment_offset = 0.0  # session time of the current connection's t = 0 (seconds)
        self._last_time: float | None = None  # session time of the latest frame
        self._last_frame_at = time.monotonic()  # when the latest frame arrived
        self._reconnected_at: float | None = None  # set until the first frame of a new connection
        self.ended_by: str | None = None  # "client", "source", "source_lost", "max_duration" when it ended well
        self._started_at = time.monotonic()
        self.predictor = engine.predictor
        self.stats = LiveStats()
        self._arrivals: dict[int, float] = {}
        self._pts: collections.deque[tuple[float, tuple[int, int] | None]] = collections.deque()  # (time, size)
        self._sizes: dict[int, tuple[int, int]] = {}  # frame index -> its display size (height, width)
        self._log = ConnectionLog(self._on_frame_line)  # what the current connection's ffmpeg says
        # ffmpeg moves the input's timeline to start at 0 (it subtracts the input's start time, which an Opus
        # track makes negative and MPEG-TS makes 1.4 s or hours); masks carry the stream's own timestamps,
        # so this is added back, while the sound, on ffmpeg's timeline, is looked up without it.
        self._input_start = 0.0
        self._cond = threading.Condition()
        self._audio = AudioRing(int(AUDIO_KEEP_S * SAMPLE_RATE))
        self._last_input = time.monotonic()
        self._bytes_in = 0  # pushed bytes received
        self._writing = False  # a pushed chunk is being written to ffmpeg (which may hold it back: no_drop)
        self._failed_before_idle = False  # ffmpeg had exited with an error when the idle timeout fired
        self._head = b""  # the first pushed bytes: a container header or not
        self._last_processed_pts: float | None = None
        self._ended = threading.Event()
        self._stop = threading.Event()
        self._proc: BoundedProcess | None = None
        self._handle: JobHandle | None = None
        self._threads: list[threading.Thread] = []
        self.error: BaseException | None = None

    # ------------------------------------------------------------------------------------------ life
    def start(self) -> None:
        self._spawn()
        watchdog = threading.Thread(target=self._watch, name=f"live-watch-{self.key[:8]}", daemon=True)
        self._threads.append(watchdog)
        watchdog.start()
        self._handle = self.engine.submit(JobSpec(
            key=self.key, batches=self._frames(), table=None, encode=self._encode,
            should_cancel=self._stop.is_set, live_window=max(1, self.options.window), embed=self._embed,
            live_drop=self.options.drops, on_drop=self._dropped_late))

    def feed(self, data: bytes) -> None:
        """Pushed media bytes, in order (a pushed session only)."""
        if self._proc is None or self._proc.popen.stdin is None or self._ended.is_set():
            return
        self._last_input = time.monotonic()
        if len(self._head) < SNIFF_BYTES:
            self._head += data[:SNIFF_BYTES - len(self._head)]
            container = sniff_container_head(self._head)
            if container is not None and container not in ("matroska", "mov"):
                self.abort(ErrorCode.NOT_MEDIA.value, f"this is {container}: a live session takes WebM/Matroska or "
                           "fragmented MP4 over the socket (what MediaRecorder writes); other streams can be "
                           "pulled from an allowed URL (`source`), or uploaded to POST /segment")
                return
            if mp4_media_before_index(self._head):
                self.abort(ErrorCode.NOT_FRAGMENTED.value, "an MP4 whose media comes before its index cannot be "
                           "read as it arrives: send fragmented MP4 (MediaRecorder's, or ffmpeg -movflags "
                           "frag_keyframe+empty_moov), or upload the file to POST /segment")
                return
        self._bytes_in += len(data)
        self._writing = True  # in no_drop mode this blocks while the model is behind: that is not idleness
        try:
            self._proc.popen.stdin.write(data)
            self._proc.popen.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # ffmpeg is gone: its exit (and the job's end) says why
        finally:
            self._writing = False
            self._last_input = time.monotonic()

    def end(self) -> None:
        """The stream is complete: ffmpeg drains what it has, the last masks follow. A pushed stream ends with
        its input (stdin closed); a pulled one is asked to stop reading (SIGINT, on which ffmpeg flushes)."""
        if self.ended_by is None:
            self.ended_by = "client"
        self._ended.set()
        if self._proc is None:
            return
        if self._proc.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.popen.stdin.close()
        elif self._proc.popen.poll() is None:
            # ffmpeg's first SIGINT stops its loop but not a read already waiting on the network; the second
            # interrupts that read too. Frames still inside the decoder may be lost: the client asked to stop.
            with contextlib.suppress(OSError):
                self._proc.popen.send_signal(signal.SIGINT)
            threading.Timer(0.3, self._interrupt_again).start()

    @property
    def ending(self) -> bool:
        """True once the stream was declared complete (`end()`) or the session was stopped."""
        return self._ended.is_set()

    def abort(self, code: str = "client_gone", message: str = "the client went away") -> None:
        """Stop now (the client vanished, a limit): ffmpeg killed, nothing more processed or sent. A session
        that already finished is left as it ended."""
        if self._handle is not None and self._handle.done:
            return
        if self.error is None:
            self.error = SessionError(code, message)
        self._stop.set()
        self._ended.set()
        if self._proc is not None:
            self._proc.kill()
        if self._handle is not None:
            self._handle.fail(self.error)

    def wait(self) -> dict[str, Any]:
        """Wait for the end (serving the engine from this thread when no other thread does, as `avs live`
        needs); the session's summary (frames received / processed / dropped, latency). The error that
        ended it, if any, is in `error` (a `MediaError` for a stream ffmpeg could not read)."""
        assert self._handle is not None
        try:
            self.engine.finish(self._handle)
        except BaseException as exc:
            idle = isinstance(self.error, SessionError) and self.error.code == ServiceErrorCode.IDLE_TIMEOUT
            # A client that sent a container's header and then stalled is `idle_timeout`, however ffmpeg reacts
            # to the truncated input we then closed (issue #27). ffmpeg's verdict wins when it had failed before
            # the idle timeout, or when what came was no container at all (bytes that ffmpeg could not read
            # say more than the silence that followed).
            ffmpeg_first = self._failed_before_idle or (self._bytes_in and sniff_container_head(self._head) is None)
            if self.error is None or (idle and isinstance(exc, MediaError) and ffmpeg_first):
                self.error = exc
        finally:
            self._stop.set()
            if self._proc is not None:
                self._proc.close()
            for thread in self._threads:
                thread.join(timeout=5)
        return {**self.stats.summary(), **self.gaps.summary()}

    # -------------------------------------------------------------------------------------- inputs
    def _spawn(self) -> None:
        """One connection to the source: an ffmpeg writing frames (stdout) and sound (a pipe), a thread reading
        the sound. The log's per-connection facts (time base, streams, rotation) start afresh."""
        read_fd, write_fd = os.pipe()
        command = live_command(self.source, size=self.predictor.input_size, audio_fd=write_fd,
                               max_pixels=self.limits.max_pixels, realtime=self.realtime, copy_to=self.copy_to,
                               read_timeout_s=self.idle_timeout_s)
        with self._cond:
            self._pts.clear()
        self._log = ConnectionLog(self._on_frame_line)
        self._proc = BoundedProcess(command, timeout_s=self.limits.max_duration_s + 30.0, stdin=self.source.pushed,
                                    on_stderr_line=self._log.feed, pass_fds=(write_fd,))
        os.close(write_fd)
        audio = threading.Thread(target=self._audio.read_pipe, args=(read_fd,), name=f"live-audio-{self.key[:8]}",
                                 daemon=True)
        self._threads.append(audio)
        audio.start()

    def _reconnect(self, frames: int) -> bool:
        """The source dropped: open it again (worker.live.reconnect) until a connection gives a frame or the
        window since the last frame passes. True when a new connection is up; False to end the session."""
        assert self._proc is not None
        self._proc.wait()
        self._proc.join_stderr(5)
        self._proc.close()
        deadline = self._last_frame_at + self.reconnect_s
        for delay in backoff_delays():
            if self._stop.is_set() or self._ended.is_set():
                return False
            if time.monotonic() + delay > deadline:
                self.gaps.lost = True
                log.info("live session %s: the source did not come back within %gs", self.key, self.reconnect_s)
                return False
            if self._stop.wait(delay):
                return False
            # the new connection's t = 0 goes after the time missed, and its sound after silence for the gap
            missed = time.monotonic() - self._last_frame_at
            self._segment_offset = max((self._last_time or 0.0) + missed, self._audio.end / SAMPLE_RATE)
            self._audio.pad_to(int(self._segment_offset * SAMPLE_RATE))
            self._reconnected_at = self._last_frame_at
            log.info("live session %s: source dropped after frame %d; connecting again", self.key, frames - 1)
            self._spawn()
            return True
        return False

    def _interrupt_again(self) -> None:
        if self._proc is not None and self._proc.popen.poll() is None:
            with contextlib.suppress(OSError):
                self._proc.popen.send_signal(signal.SIGINT)

    def _on_frame_line(self, seconds: float, size: tuple[int, int] | None) -> None:
        """The connection's log announced a frame (`ConnectionLog`): its time and size, before its pixels."""
        with self._cond:
            self._pts.append((seconds, size))
            self._cond.notify_all()

    def _frames(self) -> Iterator[FrameBatch]:
        """Frames as ffmpeg delivers them, one at a time (latency first), with their arrival times; a pulled
        source that drops is connected again (`_reconnect`) and its frames go on where they stopped."""
        index = 0
        while True:
            index = yield from self._connection_frames(index)
            if self._stop.is_set():
                return
            if self.reconnect_s > 0 and not self._ended.is_set() and index > 0 and self._reconnect(index):
                continue
            if self.ended_by is None:  # the stream ended by itself (end of file, or no data for the timeout)
                self.ended_by = "source_lost" if self.gaps.lost else "source"
            if not self.gaps.lost:
                self._check_exit(frames=index)
            return

    def _connection_frames(self, index: int) -> Iterator[FrameBatch]:
        """The frames of the current connection; returns the next frame index."""
        assert self._proc is not None
        assert self._proc.popen.stdout is not None
        size = self.predictor.input_size
        frame_bytes = size * size * 3
        stdout = self._proc.popen.stdout
        while not self._stop.is_set():
            data = stdout.read(frame_bytes)
            if len(data) < frame_bytes:
                break
            arrived = time.monotonic()
            if not self.source.pushed:
                self._last_input = arrived  # a pulled stream is alive while frames come
            with self._cond:
                while not self._pts and not self._stop.is_set():
                    if self._proc.stderr_finished():
                        break
                    self._cond.wait(0.05)
                seconds, frame_size = self._pts.popleft() if self._pts else (math.nan, None)
            if self._last_time is None:  # the first frame: the stream's own start, from the first connection
                self._input_start = self._log.input_start
            session_time = (seconds if not math.isnan(seconds) else index / 25.0) + self._segment_offset
            if self._last_time is not None and session_time <= self._last_time:  # never back in time
                session_time = self._last_time + 1e-3
            if self._reconnected_at is not None and self._last_time is not None:  # the first frame after a gap
                self.gaps.add(index - 1, session_time - self._last_time)  # as the timeline shows it
                log.info("live session %s: frames again after %.1f s without", self.key, arrived - self._reconnected_at)
                self._reconnected_at = None
            self._last_time, self._last_frame_at = session_time, arrived
            pts = session_time + self._input_start
            if frame_size is not None:
                self._sizes[index] = frame_size
            self.stats.frames_received += 1
            if self._rate_limited(pts):
                self._dropped("rate")
                self._sizes.pop(index, None)
                index += 1
                continue
            self._arrivals[index] = arrived
            frame = np.frombuffer(data, dtype=np.uint8).reshape(1, size, size, 3)
            yield FrameBatch(frames=frame, pts_s=[pts], start_index=index)
            index += 1
        return index

    def _check_exit(self, frames: int) -> None:
        """After ffmpeg's last frame: raise `MediaError` unless it ended well (`worker.live.live_input`)."""
        assert self._proc is not None
        error = exit_error(self._proc, self._log, frames=frames, asked_to_stop=self._ended.is_set(),
                           pushed=self.source.pushed, limits=self.limits)
        if error is not None:
            raise error

    def _rate_limited(self, pts: float) -> bool:
        fps = self.options.fps
        if not fps:
            return False
        if self._last_processed_pts is not None and pts - self._last_processed_pts < 1.0 / fps - 1e-6:
            return True
        self._last_processed_pts = pts
        return False

    def _watch(self) -> None:
        """The session's clocks. Idle: a stream that sends nothing for `idle_timeout_s` is ended, its frames
        still in ffmpeg processed, and the session fails with `idle_timeout`. Total: one that lasts
        `max_duration_s` is ended as if its client had ended it (its masks are its result). Either way, an
        ffmpeg that has delivered no frame for `END_GRACE_S` after being asked to finish is killed (a no_drop
        session's ffmpeg still holds the frames the model has not taken yet: draining them is progress)."""
        ended_at, received = 0.0, -1  # when the last frame came after the end; frames received then
        while not self._stop.wait(0.25):
            now = time.monotonic()
            if self._ended.is_set():
                if received != self.stats.frames_received:  # a frame came: the grace starts again
                    ended_at, received = now, self.stats.frames_received
                if now - ended_at > END_GRACE_S and self._proc is not None and self._proc.popen.poll() is None:
                    log.warning("live session %s: ffmpeg gave no frame for %gs after the end; killed", self.key,
                                END_GRACE_S)
                    self._proc.kill()
                    return
                continue
            if now - self._started_at > self.max_duration_s:
                log.info("live session %s reached %gs: ended", self.key, self.max_duration_s)
                self.ended_by = "max_duration"
                self.end()
            elif self.reconnect_s <= 0 and not self._writing and \
                    now - self._last_input > self.idle_timeout_s + (0 if self.source.pushed else END_GRACE_S):
                # (a pulled stream normally ends before: ffmpeg's own read timeout, `with_read_timeout`)
                log.info("live session %s idle for %gs: ended", self.key, self.idle_timeout_s)
                self._failed_before_idle = self._proc is not None and self._proc.popen.poll() not in (None, 0)
                self.error = SessionError(ServiceErrorCode.IDLE_TIMEOUT, f"no media for {self.idle_timeout_s:g} s")
                self.ended_by = "idle_timeout"
                self.end()

    # ------------------------------------------------------------------------------ model and out
    def _embed(self, pts_s: list[float]) -> torch.Tensor:
        """On the model's thread: the live alignment rule over the sound received so far."""
        audio, start = self._audio.snapshot()
        return self.predictor.embeddings_ending_at(audio, start, [p - self._input_start for p in pts_s])

    def _encode(self, start_index: int, pts_s: list[float], logits: torch.Tensor) -> None:
        sizes = [self._sizes.pop(start_index + i, None) or self._out_size() for i in range(len(pts_s))]
        records = encode_masks(self.predictor, logits, start_index, pts_s, sizes, self.options.threshold)
        for record in records:
            arrived = self._arrivals.pop(record["frame_index"], None)
            latency_ms = (time.monotonic() - arrived) * 1000 if arrived is not None else None
            record["latency_ms"] = round(latency_ms, 1) if latency_ms is not None else None
            self.stats.frames_processed += 1
            if latency_ms is not None:
                self.stats.latencies_ms.append(latency_ms)
                if self.on_latency is not None:
                    self.on_latency(latency_ms / 1000)
            self.on_record(record)

    @property
    def rotation(self) -> int:
        """Clockwise degrees of the input's display matrix (ffmpeg applies it to the frames)."""
        return self._log.rotation

    def _out_size(self) -> tuple[int, int]:
        """The size of a frame whose own size was not logged: the stream's, from ffmpeg's description of its
        input (upright when rotated); the model's if it was not seen either."""
        if self._log.video_size is not None:
            h, w = self._log.video_size
            return (w, h) if self.rotation % 180 == 90 else (h, w)
        size = self.predictor.input_size
        return size, size

    def _dropped_late(self, index: int) -> None:
        self._sizes.pop(index, None)
        self._arrivals.pop(index, None)
        self._dropped("late")

    def _dropped(self, reason: str) -> None:
        """A frame that gets no mask: `rate` (over the client's fps cap) is a skip, `late` a drop
        (`worker.live.options`)."""
        if reason == "rate":
            self.stats.frames_skipped_by_rate += 1
            if self.on_skip is not None:
                self.on_skip()
            return
        self.stats.frames_dropped += 1
        if self.on_drop_reason is not None:
            self.on_drop_reason(reason)

