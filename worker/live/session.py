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
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.modeling.audio_frontend import SAMPLE_RATE
from worker.core.contracts import ErrorCode, ServiceErrorCode
from worker.core.errors import MediaError
from worker.core.live_sources import LiveSource, with_read_timeout
from worker.core.media.containers import SNIFF_BYTES, mp4_media_before_index, sniff_container_head
from worker.core.media.media_info import MediaLimits
from worker.core.media.probe import ffmpeg_message
from worker.core.media.process import BoundedProcess
from worker.engine import FrameEngine, JobHandle, JobSpec
from worker.live.reconnect import Gaps, backoff_delays
from worker.media.decode import FrameBatch
from worker.media.ffmpeg_input import continuous_audio_pts, continuous_video_pts
from worker.media.frame_log import frame_seconds, parse_frame_line, parse_time_base
from worker.pipeline import encode_masks

log = logging.getLogger("avs.live")

_INPUT_START = re.compile(r"Duration: .*?, start: (-?\d+(?:\.\d+)?)")
_VIDEO_SIZE = re.compile(r"Stream #0:\d+.*Video: .*?, (\d{2,5})x(\d{2,5})")
_AUDIO_STREAM = re.compile(r"Stream #0:\d+.*: Audio: ")
_ROTATION = re.compile(r"displaymatrix: rotation of (-?\d+(?:\.\d+)?) degrees")
END_GRACE_S = 10.0  # an ffmpeg asked to finish that has not after this is killed
AUDIO_KEEP_S = 10.0  # seconds of sound kept for the embeddings (a window needs 0.975 s)


class SessionError(Exception):
    """Why a session ended badly, with a stable `code` (`idle_timeout`, `client_gone`, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = str(code), message


@dataclass
class LiveOptions:
    """What the start message may set. `threshold`: binary masks' sigmoid threshold; `fps`: process at most
    this many frames per second (the others are dropped as `rate`); `window`: frames that may wait for the
    model before the oldest is dropped."""

    threshold: float | None = None
    fps: float | None = None
    window: int = 8


@dataclass
class LiveStats:
    frames_received: int = 0
    frames_processed: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {"late": 0, "rate": 0})
    latencies_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=100_000))

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        pick = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 1)) if lat else (lambda q: None)
        return {"frames_received": self.frames_received, "frames_processed": self.frames_processed,
                "frames_dropped": sum(self.dropped.values()), "dropped": dict(self.dropped),
                "latency_p50_ms": pick(0.5), "latency_p95_ms": pick(0.95), "latency_max_ms": pick(1.0)}


def live_command(source: LiveSource, *, size: int, audio_fd: int, max_pixels: int, realtime: bool = False,
                 copy_to: Path | None = None, read_timeout_s: float = 10.0) -> list[str]:
    """ffmpeg reading the source once and writing both outputs: frames (stdout) and sound (`audio_fd`), and,
    when `copy_to` is given, the stream itself, not re-encoded (Matroska), for a recorded session's overlay.

    The same rules as an upload's decode (`worker.media.decode`): one filter graph across frame size changes
    (`-reinit_filter 0`), `showinfo` before `scale` (each frame's own size), timestamps made continuous across
    a restart in both chains (`worker.media.ffmpeg_input`). The display matrix is applied by ffmpeg itself
    (autorotation, on by default), so the frames and the sizes showinfo logs are upright."""
    copy = ["-map", "0:v:0", "-map", "0:a:0?", "-c", "copy", "-f", "matroska", str(copy_to)] if copy_to else []
    url, timeout = with_read_timeout(source, read_timeout_s)
    video = f"{continuous_video_pts()},showinfo=checksum=0,scale={size}:{size}:flags=bilinear,format=rgb24," \
            "settb=1,setpts=N"
    audio = f"{continuous_audio_pts()},aresample=async=1:first_pts=0,aformat=sample_fmts=flt:sample_rates=16000:" \
            "channel_layouts=mono"
    return [
        "ffmpeg", "-hide_banner", "-nostats", "-loglevel", "repeat+level+info",
        *([] if source.pushed else ["-nostdin"]),
        "-protocol_whitelist", source.protocols, "-format_whitelist", ",".join(source.demuxers),
        # start decoding after 0.5 s of probing, not 5 s: the first mask comes that much sooner. (Not
        # `-fflags nobuffer`: it discards the packets read while probing, and a VP9 stream loses its key frame.)
        "-probesize", "500000", "-analyzeduration", "500000",
        # one decoding thread: frame threading holds back (threads - 1) frames, 40 ms each at 25 fps
        "-threads", "1",
        "-reinit_filter", "0",
        *(["-re"] if realtime else []),
        "-max_pixels", str(max_pixels), *timeout,
        "-i", url,
        "-map", "0:v:0", "-vf", video,
        "-fps_mode", "passthrough", "-enc_time_base:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
        "-map", "0:a:0?", "-af", audio, "-flush_packets", "1", "-f", "f32le", f"pipe:{audio_fd}",
        *copy,
    ]  # fmt: skip


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
                 max_duration_s: float | None = None, reconnect_s: float = 0.0) -> None:
        self.source, self.engine, self.on_record = source, engine, on_record
        self.options = options or LiveOptions()
        self.limits = limits or MediaLimits()
        self.realtime, self.idle_timeout_s, self.key = realtime, idle_timeout_s, key
        self.on_latency, self.on_drop_reason = on_latency, on_drop
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
        self._time_base = 0.0
        self._audio_declared = False  # the input lists an audio stream
        self.rotation = 0  # clockwise degrees of the input's display matrix (ffmpeg applies it to the frames)
        # ffmpeg moves the input's timeline to start at 0 (it subtracts the input's start time, which an Opus
        # track makes negative and MPEG-TS makes 1.4 s or hours); masks carry the stream's own timestamps,
        # so this is added back, while the sound, on ffmpeg's timeline, is looked up without it.
        self._input_start = 0.0
        self._video_size: tuple[int, int] | None = None  # (height, width) of the stream, from ffmpeg's log
        self._outputs_listed = False
        self._cond = threading.Condition()
        self._audio = np.zeros(0, dtype=np.float32)
        self._audio_start = 0  # absolute index of self._audio[0]
        self._audio_lock = threading.Lock()
        self._last_input = time.monotonic()
        self._bytes_in = 0  # pushed bytes received
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
            on_drop=self._dropped_late))

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
        try:
            self._proc.popen.stdin.write(data)
            self._proc.popen.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # ffmpeg is gone: its exit (and the job's end) says why

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
            self._time_base, self._outputs_listed, self._audio_declared = 0.0, False, False
        self._proc = BoundedProcess(command, timeout_s=self.limits.max_duration_s + 30.0, stdin=self.source.pushed,
                                    on_stderr_line=self._on_stderr, pass_fds=(write_fd,))
        os.close(write_fd)
        audio = threading.Thread(target=self._read_audio, args=(read_fd,), name=f"live-audio-{self.key[:8]}",
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
            with self._audio_lock:
                heard = (self._audio_start + len(self._audio)) / SAMPLE_RATE
            missed = time.monotonic() - self._last_frame_at
            self._segment_offset = max((self._last_time or 0.0) + missed, heard)
            with self._audio_lock:
                pad = int(self._segment_offset * SAMPLE_RATE) - (self._audio_start + len(self._audio))
                if pad > 0:
                    self._audio = np.concatenate([self._audio, np.zeros(pad, dtype=np.float32)])
            self._reconnected_at = self._last_frame_at
            log.info("live session %s: source dropped after frame %d; connecting again", self.key, frames - 1)
            self._spawn()
            return True
        return False

    def _interrupt_again(self) -> None:
        if self._proc is not None and self._proc.popen.poll() is None:
            with contextlib.suppress(OSError):
                self._proc.popen.send_signal(signal.SIGINT)

    def _on_stderr(self, line: str) -> None:
        if not self._outputs_listed:
            if "Output #" in line:
                self._outputs_listed = True
            elif (start := _INPUT_START.search(line)) is not None and self.gaps.reconnects == 0 \
                    and self._last_time is None:
                self._input_start = float(start.group(1))
            elif _AUDIO_STREAM.search(line):
                self._audio_declared = True
            elif (rotation := _ROTATION.search(line)) is not None:
                self.rotation = round(-float(rotation.group(1)) / 90) * 90 % 360  # counter-clockwise in ffmpeg
            elif self._video_size is None and (size := _VIDEO_SIZE.search(line)) is not None:
                self._video_size = (int(size.group(2)), int(size.group(1)))  # for the pixel limit's message
        frame = parse_frame_line(line)
        if frame is not None:
            seconds = frame_seconds(frame, self._time_base)
            with self._cond:
                self._pts.append((seconds if seconds is not None else math.nan,
                                  (frame.height, frame.width) if frame.width else None))
                self._cond.notify_all()
            return
        time_base = parse_time_base(line)
        if time_base is not None:
            self._time_base = time_base

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
        """After ffmpeg's last frame: raise `MediaError` unless it ended well (or because we asked it to). A
        stream that gave no frame while ffmpeg reported errors is damaged, whatever ffmpeg's exit status."""
        assert self._proc is not None
        code = self._proc.wait()
        self._proc.join_stderr(5)
        if frames == 0 and "[error]" in self._proc.stderr_text():
            code = code or 1
        if code == 0 or (self._ended.is_set() and not self.source.pushed and code in (255, -signal.SIGINT)):
            return
        stderr = self._proc.stderr_text()
        if self._proc.timed_out:
            raise MediaError(ErrorCode.MEDIA_TIMEOUT, f"the session reached its limit of "
                                                      f"{self.limits.max_duration_s:g} s")
        if self._video_size is not None and self._video_size[0] * self._video_size[1] > self.limits.max_pixels:
            h, w = self._video_size
            raise MediaError(ErrorCode.TOO_MANY_PIXELS, f"the stream is {w}x{h}; the limit is "
                                                        f"{self.limits.max_pixels} pixels per frame")
        message = ffmpeg_message(stderr, "stream", "ffmpeg could not read the stream")
        if "matches no streams" in stderr:
            raise MediaError(ErrorCode.NO_VIDEO_STREAM, "the stream holds no video")
        if self._outputs_listed and not self._audio_declared:  # the same rule as an upload's (probe)
            raise MediaError(ErrorCode.NO_AUDIO_TRACK, "the stream has no sound (the model needs it: send the "
                                                       "microphone's track too)")
        if self._video_size is None:
            raise MediaError(ErrorCode.NOT_MEDIA, f"not a stream we read: {message}")
        raise MediaError(ErrorCode.CORRUPT_MEDIA, f"damaged stream: {message}")

    def _rate_limited(self, pts: float) -> bool:
        fps = self.options.fps
        if not fps:
            return False
        if self._last_processed_pts is not None and pts - self._last_processed_pts < 1.0 / fps - 1e-6:
            return True
        self._last_processed_pts = pts
        return False

    def _read_audio(self, fd: int) -> None:
        keep = int(AUDIO_KEEP_S * SAMPLE_RATE)
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            pending = b""
            while True:
                chunk = pipe.read(65536)
                if not chunk:
                    return
                pending += chunk
                usable = len(pending) - len(pending) % 4
                samples, pending = np.frombuffer(pending[:usable], dtype="<f4"), pending[usable:]
                with self._audio_lock:
                    self._audio = np.concatenate([self._audio, samples])
                    if len(self._audio) > keep:
                        cut = len(self._audio) - keep
                        self._audio, self._audio_start = self._audio[cut:], self._audio_start + cut

    def _watch(self) -> None:
        """The session's clocks. Idle: a stream that sends nothing for `idle_timeout_s` is ended, its frames
        still in ffmpeg processed, and the session fails with `idle_timeout`. Total: one that lasts
        `max_duration_s` is ended as if its client had ended it (its masks are its result). Either way, an
        ffmpeg that has not finished `END_GRACE_S` after being asked to is killed."""
        ended_at: float | None = None
        while not self._stop.wait(0.25):
            now = time.monotonic()
            if self._ended.is_set():
                ended_at = ended_at or now
                if now - ended_at > END_GRACE_S and self._proc is not None and self._proc.popen.poll() is None:
                    log.warning("live session %s: ffmpeg still running %gs after the end; killed", self.key,
                                END_GRACE_S)
                    self._proc.kill()
                    return
                continue
            if now - self._started_at > self.max_duration_s:
                log.info("live session %s reached %gs: ended", self.key, self.max_duration_s)
                self.ended_by = "max_duration"
                self.end()
            elif self.reconnect_s <= 0 and \
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
        with self._audio_lock:
            audio, start = self._audio, self._audio_start
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

    def _out_size(self) -> tuple[int, int]:
        """The size of a frame whose own size was not logged: the stream's, from ffmpeg's description of its
        input (upright when rotated); the model's if it was not seen either."""
        if self._video_size is not None:
            h, w = self._video_size
            return (w, h) if self.rotation % 180 == 90 else (h, w)
        size = self.predictor.input_size
        return size, size

    def _dropped_late(self, index: int) -> None:
        self._sizes.pop(index, None)
        self._arrivals.pop(index, None)
        self._dropped("late")

    def _dropped(self, reason: str) -> None:
        self.stats.dropped[reason] = self.stats.dropped.get(reason, 0) + 1
        if self.on_drop_reason is not None:
            self.on_drop_reason(reason)

