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
import os
import re
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
from worker.core.live_sources import LiveSource, with_read_timeout
from worker.core.media.containers import SNIFF_BYTES, sniff_container_head
from worker.core.media.media_info import MediaLimits
from worker.core.media.probe import ffmpeg_message
from worker.core.media.process import BoundedProcess
from worker.engine import FrameEngine, JobHandle, JobSpec
from worker.live.options import LiveOptions, LiveStats
from worker.masks import mask_records
from worker.media.decode import FrameBatch

log = logging.getLogger("avs.live")

_SHOWINFO = re.compile(r"Parsed_showinfo.*\]\s+(?:\[\w+\]\s+)?n:\s*(\d+)\s+pts:\s*(-?\d+|NOPTS)\s+pts_time:(\S+)")
_TIME_BASE = re.compile(r"Parsed_showinfo.*config in time_base:\s*(\d+)/(\d+)")
_INPUT_START = re.compile(r"Duration: .*?, start: (-?\d+(?:\.\d+)?)")
_VIDEO_SIZE = re.compile(r"Stream #0:\d+.*Video: .*?, (\d{2,5})x(\d{2,5})")
END_GRACE_S = 10.0  # an ffmpeg asked to finish that has not after this is killed
AUDIO_KEEP_S = 10.0  # seconds of sound kept for the embeddings (a window needs 0.975 s)


class SessionError(Exception):
    """Why a session ended badly, with a stable `code` (`idle_timeout`, `client_gone`, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = str(code), message


def live_command(source: LiveSource, *, size: int, audio_fd: int, max_pixels: int, realtime: bool = False,
                 copy_to: Path | None = None, read_timeout_s: float = 10.0) -> list[str]:
    """ffmpeg reading the source once and writing both outputs: frames (stdout) and sound (`audio_fd`), and,
    when `copy_to` is given, the stream itself, not re-encoded (Matroska), for a recorded session's overlay."""
    copy = ["-map", "0:v:0", "-map", "0:a:0?", "-c", "copy", "-f", "matroska", str(copy_to)] if copy_to else []
    url, timeout = with_read_timeout(source, read_timeout_s)
    return [
        "ffmpeg", "-hide_banner", "-nostats", "-loglevel", "repeat+level+info",
        *([] if source.pushed else ["-nostdin"]),
        "-protocol_whitelist", source.protocols, "-format_whitelist", ",".join(source.demuxers),
        # start decoding after 0.5 s of probing, not 5 s: the first mask comes that much sooner. (Not
        # `-fflags nobuffer`: it discards the packets read while probing, and a VP9 stream loses its key frame.)
        "-probesize", "500000", "-analyzeduration", "500000",
        # one decoding thread: frame threading holds back (threads - 1) frames, 40 ms each at 25 fps
        "-threads", "1",
        *(["-re"] if realtime else []),
        "-max_pixels", str(max_pixels), *timeout,
        "-i", url,
        "-map", "0:v:0", "-vf", f"scale={size}:{size}:flags=bilinear,format=rgb24,showinfo=checksum=0,settb=1,setpts=N",
        "-fps_mode", "passthrough", "-enc_time_base:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
        "-map", "0:a:0?", "-af", "aresample=async=1:first_pts=0,aformat=sample_fmts=flt:sample_rates=16000:"
        "channel_layouts=mono", "-flush_packets", "1", "-f", "f32le", f"pipe:{audio_fd}",
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
                 max_duration_s: float | None = None, on_skip: Callable[[], None] | None = None) -> None:
        self.source, self.engine, self.on_record = source, engine, on_record
        self.options = options or LiveOptions()
        self.limits = limits or MediaLimits()
        self.realtime, self.idle_timeout_s, self.key = realtime, idle_timeout_s, key
        self.on_latency, self.on_drop_reason, self.on_skip = on_latency, on_drop, on_skip
        self.copy_to = copy_to
        self.max_duration_s = max_duration_s or self.limits.max_duration_s
        self.ended_by: str | None = None  # "client", "source", "max_duration" when it ended well
        self._started_at = time.monotonic()
        self.predictor = engine.predictor
        self.stats = LiveStats()
        self._arrivals: dict[int, float] = {}
        self._pts: collections.deque[float] = collections.deque()
        self._time_base = 0.0
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
        read_fd, write_fd = os.pipe()
        command = live_command(self.source, size=self.predictor.input_size, audio_fd=write_fd,
                               max_pixels=self.limits.max_pixels, realtime=self.realtime, copy_to=self.copy_to,
                               read_timeout_s=self.idle_timeout_s)
        self._proc = BoundedProcess(command, timeout_s=self.limits.max_duration_s + 30.0, stdin=self.source.pushed,
                                    on_stderr_line=self._on_stderr, pass_fds=(write_fd,))
        os.close(write_fd)
        audio = threading.Thread(target=self._read_audio, args=(read_fd,), name=f"live-audio-{self.key[:8]}",
                                 daemon=True)
        watchdog = threading.Thread(target=self._watch, name=f"live-watch-{self.key[:8]}", daemon=True)
        self._threads = [audio, watchdog]
        for thread in self._threads:
            thread.start()
        self._handle = self.engine.submit(JobSpec(
            key=self.key, batches=self._frames(), table=None, encode=self._encode,
            should_cancel=self._stop.is_set, live_window=max(1, self.options.window), embed=self._embed,
            live_drop=self.options.drops, on_drop=lambda _index: self._dropped("late")))

    def feed(self, data: bytes) -> None:
        """Pushed media bytes, in order (a pushed session only)."""
        if self._proc is None or self._proc.popen.stdin is None or self._ended.is_set():
            return
        self._last_input = time.monotonic()
        if len(self._head) < SNIFF_BYTES:
            self._head += data[:SNIFF_BYTES - len(self._head)]
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
        return self.stats.summary()

    # -------------------------------------------------------------------------------------- inputs
    def _interrupt_again(self) -> None:
        if self._proc is not None and self._proc.popen.poll() is None:
            with contextlib.suppress(OSError):
                self._proc.popen.send_signal(signal.SIGINT)

    def _on_stderr(self, line: str) -> None:
        if self._video_size is None and not self._outputs_listed:
            if "Output #" in line:
                self._outputs_listed = True
            elif (start := _INPUT_START.search(line)) is not None:
                self._input_start = float(start.group(1))
            else:
                size = _VIDEO_SIZE.search(line)
                if size is not None:  # the input video's own size: masks are drawn at it
                    self._video_size = (int(size.group(2)), int(size.group(1)))
        match = _SHOWINFO.search(line)
        if match is not None:
            text = match.group(2)
            pts = int(text) * self._time_base if text != "NOPTS" and self._time_base else float(match.group(3))
            with self._cond:
                self._pts.append(pts)
                self._cond.notify_all()
            return
        match = _TIME_BASE.search(line)
        if match is not None:
            num, den = int(match.group(1)), int(match.group(2))
            self._time_base = num / den if den else 0.0

    def _frames(self) -> Iterator[FrameBatch]:
        """Frames as ffmpeg delivers them, one at a time (latency first), with their arrival times."""
        assert self._proc is not None
        assert self._proc.popen.stdout is not None
        size = self.predictor.input_size
        frame_bytes = size * size * 3
        stdout = self._proc.popen.stdout
        index = 0
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
                pts = (self._pts.popleft() if self._pts else index / 25.0) + self._input_start
            self.stats.frames_received += 1
            if self._rate_limited(pts):
                self._dropped("rate")
                index += 1
                continue
            self._arrivals[index] = arrived
            frame = np.frombuffer(data, dtype=np.uint8).reshape(1, size, size, 3)
            yield FrameBatch(frames=frame, pts_s=[pts], start_index=index)
            index += 1
        if not self._stop.is_set():
            if self.ended_by is None:
                self.ended_by = "source"  # the stream ended by itself (end of file, or no data for the timeout)
            self._check_exit(frames=index)

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
        ffmpeg that has delivered no frame for `END_GRACE_S` after being asked to finish is killed (a no_drop
        session's ffmpeg still holds the frames the model has not taken yet: draining them is progress)."""
        ended_at, received = 0.0, -1  # when the last frame came after the end; frames received then
        while not self._stop.wait(0.25):
            now = time.monotonic()
            if self._ended.is_set():
                if received != self.stats.frames_received:  # a frame came: the grace starts again
                    ended_at, received = now, self.stats.frames_received
                if now - ended_at > END_GRACE_S and self._proc is not None:
                    log.warning("live session %s: ffmpeg gave no frame for %gs after the end; killed", self.key,
                                END_GRACE_S)
                    self._proc.kill()
                    return
                continue
            if now - self._started_at > self.max_duration_s:
                log.info("live session %s reached %gs: ended", self.key, self.max_duration_s)
                self.ended_by = "max_duration"
                self.end()
            elif not self._writing and now - self._last_input > self.idle_timeout_s + (
                    0 if self.source.pushed else END_GRACE_S):
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
        masks = self.predictor.postprocess(logits, self._out_size(), threshold=self.options.threshold)
        records = mask_records(masks, start_index=start_index, pts_s=pts_s, class_names=self.predictor.class_names)
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
        """Masks at the stream's own size (as for files), from ffmpeg's description of its input; the model's
        size if it was not seen (a client draws them scaled over its picture either way)."""
        if self._video_size is not None:
            return self._video_size
        size = self.predictor.input_size
        return size, size

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

