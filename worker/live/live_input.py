"""The input side of a live session: the ffmpeg that reads one connection, what its log says, how it ended.

One ffmpeg per connection to the source (a pulled source that drops gets a new one: `worker.live.reconnect`)
writes frames at the model's size to stdout and the sound, 16 kHz mono float, to a pipe, and logs on stderr
what `ConnectionLog` reads: the input's start time and streams, its display rotation, its size, and, per frame,
showinfo's time and size. `exit_error` turns the way it ended into the error a client sees, or None.
"""

from __future__ import annotations

import math
import os
import re
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from worker.core.contracts import ErrorCode
from worker.core.errors import MediaError
from worker.core.live_sources import LiveSource, with_read_timeout
from worker.core.media.media_info import MediaLimits
from worker.core.media.probe import ffmpeg_message
from worker.core.media.process import BoundedProcess
from worker.media.ffmpeg_input import continuous_audio_pts, continuous_video_pts
from worker.media.frame_log import frame_seconds, parse_frame_line, parse_time_base

_INPUT_START = re.compile(r"Duration: .*?, start: (-?\d+(?:\.\d+)?)")
_VIDEO_SIZE = re.compile(r"Stream #0:\d+.*Video: .*?, (\d{2,5})x(\d{2,5})")
_AUDIO_STREAM = re.compile(r"Stream #0:\d+.*: Audio: ")
_ROTATION = re.compile(r"displaymatrix: rotation of (-?\d+(?:\.\d+)?) degrees")


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


class AudioRing:
    """The sound received so far (16 kHz mono float32), the newest `keep` samples, indexed from the session's
    start: sample i is at i / 16000 s on the session's timeline. A new connection after a gap first pads it
    with silence to where its timeline begins (`pad_to`), so every connection's sound lands at its frames'."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._samples = np.zeros(0, dtype=np.float32)
        self._start = 0  # absolute index of self._samples[0]
        self._lock = threading.Lock()

    @property
    def end(self) -> int:
        """Absolute index one past the newest sample."""
        with self._lock:
            return self._start + len(self._samples)

    def snapshot(self) -> tuple[np.ndarray, int]:
        """(the samples kept, the absolute index of the first)."""
        with self._lock:
            return self._samples, self._start

    def append(self, samples: np.ndarray) -> None:
        with self._lock:
            self._samples = np.concatenate([self._samples, samples])
            if len(self._samples) > self.keep:
                cut = len(self._samples) - self.keep
                self._samples, self._start = self._samples[cut:], self._start + cut

    def pad_to(self, end: int) -> None:
        """Silence up to absolute index `end` (nothing when the sound already reaches it)."""
        missing = end - self.end
        if missing > 0:
            self.append(np.zeros(missing, dtype=np.float32))

    def read_pipe(self, fd: int) -> None:
        """Append float32 samples from pipe `fd` until it closes (a thread per connection)."""
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            pending = b""
            while True:
                chunk = pipe.read(65536)
                if not chunk:
                    return
                pending += chunk
                usable = len(pending) - len(pending) % 4
                samples, pending = np.frombuffer(pending[:usable], dtype="<f4"), pending[usable:]
                self.append(samples)


class ConnectionLog:
    """What one connection's ffmpeg logs (fed line by line from its stderr thread).

    Until ffmpeg lists its outputs: the input's start time (`input_start`: ffmpeg moves its timeline to 0 there;
    an Opus track makes it negative, MPEG-TS 1.4 s or hours), whether it declares a sound stream
    (`audio_declared`), the display rotation (`rotation`, clockwise degrees) and the stored size
    (`video_size`, height and width). Then, for every frame, `on_frame(seconds, (height, width) | None)`:
    its time on the connection's timeline (NaN when it has none) and the upright size it was decoded at.
    """

    def __init__(self, on_frame: Callable[[float, tuple[int, int] | None], None]) -> None:
        self.on_frame = on_frame
        self.input_start = 0.0
        self.audio_declared = False
        self.rotation = 0
        self.video_size: tuple[int, int] | None = None
        self.outputs_listed = False
        self.time_base = 0.0

    def feed(self, line: str) -> None:
        if not self.outputs_listed:
            if "Output #" in line:
                self.outputs_listed = True
            elif (start := _INPUT_START.search(line)) is not None:
                self.input_start = float(start.group(1))
            elif _AUDIO_STREAM.search(line):
                self.audio_declared = True
            elif (rotation := _ROTATION.search(line)) is not None:
                self.rotation = round(-float(rotation.group(1)) / 90) * 90 % 360  # counter-clockwise in ffmpeg
            elif self.video_size is None and (size := _VIDEO_SIZE.search(line)) is not None:
                self.video_size = (int(size.group(2)), int(size.group(1)))
        frame = parse_frame_line(line)
        if frame is not None:
            seconds = frame_seconds(frame, self.time_base)
            self.on_frame(seconds if seconds is not None else math.nan,
                          (frame.height, frame.width) if frame.width else None)
            return
        time_base = parse_time_base(line)
        if time_base is not None:
            self.time_base = time_base


def exit_error(proc: BoundedProcess, log: ConnectionLog, *, frames: int, asked_to_stop: bool, pushed: bool,
               limits: MediaLimits) -> MediaError | None:
    """After a connection's last frame: None when ffmpeg ended well (or because we asked it to), else the
    error. A stream that gave no frame while ffmpeg reported errors is damaged, whatever its exit status.
    The codes are an upload's, by the same rules (`worker.core.media.probe`)."""
    code = proc.wait()
    proc.join_stderr(5)
    stderr = proc.stderr_text()
    if frames == 0 and "[error]" in stderr:
        code = code or 1
    if code == 0 or (asked_to_stop and not pushed and code in (255, -signal.SIGINT)):
        return None
    if proc.timed_out:
        return MediaError(ErrorCode.MEDIA_TIMEOUT, f"the session reached its limit of {limits.max_duration_s:g} s")
    if log.video_size is not None and log.video_size[0] * log.video_size[1] > limits.max_pixels:
        h, w = log.video_size
        return MediaError(ErrorCode.TOO_MANY_PIXELS, f"the stream is {w}x{h}; the limit is {limits.max_pixels} "
                                                     "pixels per frame")
    message = ffmpeg_message(stderr, "stream", "ffmpeg could not read the stream")
    if "matches no streams" in stderr:
        return MediaError(ErrorCode.NO_VIDEO_STREAM, "the stream holds no video")
    if log.outputs_listed and not log.audio_declared:  # the same rule as an upload's (probe)
        return MediaError(ErrorCode.NO_AUDIO_TRACK, "the stream has no sound (the model needs it: send the "
                                                    "microphone's track too)")
    if log.video_size is None:
        return MediaError(ErrorCode.NOT_MEDIA, f"not a stream we read: {message}")
    return MediaError(ErrorCode.CORRUPT_MEDIA, f"damaged stream: {message}")
