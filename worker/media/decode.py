"""Decode probed media: frames as RGB batches through one ffmpeg pipe, audio as 16 kHz mono float.

Design, and why:

* **One ffmpeg process, rawvideo rgb24 on a pipe, read one batch at a time.** Memory stays at one batch
  whatever the video's length; scaling (bilinear, aspect ratio not kept: AVS models take a square input)
  and rotation happen inside ffmpeg, so Python only reshapes bytes.
* **Timestamps from `showinfo`.** rawvideo is bare pixels: it carries no timestamps, and with variable
  frame rates "index / fps" is wrong. A `showinfo` filter at the end of the chain logs every frame's pts on
  stderr before the frame reaches the pipe; `BoundedProcess` hands us those lines as they arrive, and a
  batch is released once all of its frames have their timestamp. Times are `pts × time_base` (exact; the
  `pts_time` text has only six significant digits), in seconds on ffmpeg's timeline, which is 0 at the
  container start. The audio from `read_audio` uses the same origin, so frame t and sample t·sr match.
* **Every decoded frame exactly once, whatever the frame rate.** `-fps_mode passthrough` (ffmpeg 5.1's
  spelling; `-vsync` is deprecated there) stops ffmpeg from duplicating or dropping frames to fake a
  constant rate. That alone is not enough for variable-frame-rate files: the raw pipe's timestamps are
  kept in an encoder time base derived from the *guessed* frame rate (5 fps for a MediaRecorder WebM that
  later runs at 30), so frames closer than one guessed tick collide, and the muxer reports "non
  monotonically increasing dts". After `showinfo` has logged each frame's real time, the chain therefore
  renumbers the frames (`settb=1,setpts=N`: frame n at n seconds, encoder time base 1 s): the pipe's
  timestamps can never collide and no rate guess decides which frames are kept.
* **Resampling.** With `fps=N` an `fps` filter resamples to a constant rate (frames duplicated or dropped by
  the filter, showinfo reports the new times) with `eof_action=pass`: a video shorter than one output
  period still yields its first frame (the sample at t = 0), so every `fps` > 0 gives at least one frame.
* **Limits refuse, never truncate.** The decode asks ffmpeg for one frame more than the limits allow
  (`MediaLimits.max_output_frames`); if that frame arrives, or a frame's time lies beyond
  `max_duration_s` from the first one, the reader raises `too_long` instead of stopping quietly (the
  probe already refuses such files from their packets; this is the check on what was really decoded).
  Only an explicit `max_frames` from the caller stops early on purpose.
* **Rotation from the probe, not from ffmpeg.** `-noautorotate` plus our own `transpose`/`hflip,vflip`
  from `MediaInfo.rotation`: the frames always come out at the display orientation the probe reported
  (ffmpeg 5.1's own autorotation ignores the legacy `rotate` tag, which the probe honours).
* **A fixed output size, and each frame's own size.** The chain always ends in `scale=W:H`, even at the
  native size, so a stream that changes resolution mid-way cannot shift the byte layout of the pipe;
  `-reinit_filter 0` keeps one filter graph across such a change (a rebuilt graph restarted `setpts=N` at 0:
  "non monotonically increasing dts", issue #21), and `showinfo`, placed before `scale`, logs the size each
  frame was decoded at: `FrameBatch.sizes` gives every frame's display size, at which its mask is drawn.
  `-max_pixels` makes the decoder itself refuse oversized pictures (a mid-stream size change to
  16k × 16k would otherwise allocate gigabytes).
* **One timeline.** `continuous_video_pts` first in the chain: timestamps that restart inside the stream (two
  recordings in one file) continue where the previous part ended (`worker.media.ffmpeg_input`).
* **The deadline is wall-clock for the whole iteration**, consumer time included: ffmpeg waits on a full
  pipe while the consumer works. A slow consumer (CPU inference on a long video) must pass a `timeout_s`
  that covers its own processing time as well.
* **Hostile input.** The probed demuxer is forced (`-f`), `-format_whitelist`/`-protocol_whitelist` are
  passed again, the file is named `file:<absolute path>`, and a SIGKILL deadline covers the whole decode.

Damaged streams (decided deliberately; see the tests): ffmpeg's decoders conceal most bitstream damage and
go on with an error message but exit 0, i.e. they output garbage frames silently. Any error-level message
logged after the first frame came out is fatal: the reader kills ffmpeg and raises
`MediaError(corrupt_media)` with ffmpeg's message instead of yielding the batch (except the few messages
in `BENIGN_ERRORS`, which describe the container, not damage). What a player decodes we decode too (issue
#21): a stream that starts mid-GOP (a cut MPEG-TS recording, a WebM whose first cluster was lost) has its
undecodable frames before the first keyframe skipped and counted (`frames_skipped`), and a packet the
demuxer flags as corrupt (the continuity counters of two MPEG-TS segments joined with `cat`) is a warning,
not an error: `-xerror`, which turned both into failures, is not used. The hole this leaves: with
frame-threaded decoding an error can be logged a few packets before the first frame reaches showinfo, so
damage within the first few frames of a stream may pass.

Audio uses only ffmpeg's exit status: concealed glitches last one codec frame (~20 ms) and the model pools
~1 s windows.

This module does not import torch.
"""

from __future__ import annotations

import math
import re
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker.core.contracts import ErrorCode
from worker.core.errors import MediaError
from worker.core.media.media_info import MediaInfo, MediaLimits
from worker.core.media.probe import FFMPEG, ffmpeg_message
from worker.core.media.process import BoundedProcess
from worker.media.ffmpeg_input import continuous_video_pts, input_url, media_input_args
from worker.media.frame_log import (
    DECODE_ERROR,
    ERROR_LINE,
    display_size,
    frame_seconds,
    parse_frame_line,
    parse_time_base,
)

_PTS_WAIT_SLICE_S = 0.05
BENIGN_ERRORS = re.compile(r"Found unknown-length element with ID 0x18538067")
"""Error-level messages that describe the container, not damage: a second Matroska Segment (a recording that
restarts inside the stream; its timestamps are made continuous, `worker.media.ffmpeg_input`)."""


@dataclass
class FrameBatch:
    """Consecutive decoded frames.

    `frames`: uint8 [n, H, W, 3] RGB. `pts_s`: n presentation times in seconds (ffmpeg timeline, 0 at the
    container start). `start_index`: index of the first frame in the whole decode (frame_index in outputs).
    `sizes`: n display sizes (height, width) the frames were decoded at (None: not known, the video's size).
    """

    frames: np.ndarray
    pts_s: list[float]
    start_index: int
    sizes: list[tuple[int, int]] | None = None

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def _rotation_filters(rotation: int) -> list[str]:
    """Filters that turn a stored frame clockwise by `rotation` degrees (0/90/180/270)."""
    return {0: [], 90: ["transpose=clock"], 180: ["hflip", "vflip"], 270: ["transpose=cclock"]}[rotation % 360]


class FrameReader:
    """Decode a probed video into RGB frame batches with per-frame timestamps.

    `size=(width, height)` scales every frame to that size (bilinear, aspect ratio not kept); None keeps
    the display size. `fps` resamples to a constant rate with ffmpeg's `fps` filter (at least one frame);
    None yields every decoded frame exactly once. `timeout_s` is the deadline of the whole decode (default:
    `limits.decode_timeout(duration)`). More frames than `limits.max_output_frames(fps)`, or a frame more
    than `limits.max_duration_s` after the first, raise `MediaError(too_long)`; `max_frames` stops the
    decode quietly after that many frames (the caller asked for a prefix). `limits` defaults to
    `MediaLimits()`. `frames_read` counts the frames yielded so far.
    """

    def __init__(
        self,
        info: MediaInfo,
        *,
        size: tuple[int, int] | None,
        fps: float | None = None,
        timeout_s: float | None = None,
        max_frames: int | None = None,
        limits: MediaLimits | None = None,
    ) -> None:
        self.info = info
        self.limits = limits if limits is not None else MediaLimits()
        width, height = size if size is not None else (info.width, info.height)
        if int(width) != width or int(height) != height or width <= 0 or height <= 0:
            raise ValueError(f"size must be two positive integers (width, height), got {size!r}")
        self.width, self.height = int(width), int(height)
        if fps is not None and not (math.isfinite(fps) and 0 < fps <= self.limits.max_fps):
            raise ValueError(f"fps must be in (0, {self.limits.max_fps:g}], got {fps!r}")
        self.fps = fps
        if max_frames is not None and max_frames < 0:
            raise ValueError(f"max_frames must not be negative, got {max_frames}")
        self.max_frames = max_frames
        self.timeout_s = timeout_s if timeout_s is not None else self.limits.decode_timeout(info.duration_s)
        self.frames_read = 0
        self._first_pts: float | None = None  # time of the first frame yielded, for the duration limit
        # State shared with the stderr thread, guarded by _cond.
        self._cond = threading.Condition()
        self._pts: deque[tuple[float, tuple[int, int]]] = deque()  # (time, display size) per frame announced
        self._time_base = 0.0
        self.frames_skipped = 0  # undecodable frames before the first one (a stream starting mid-GOP)
        self._last_pts: float | None = None
        self._frames_announced = 0
        self._fatal: str | None = None
        self._leading_errors: list[str] = []
        self._proc: BoundedProcess | None = None

    @property
    def frame_limit(self) -> int:
        """How many frames this reader yields at most: the limits' budget, lowered by `max_frames`."""
        budget = self.limits.max_output_frames(self.fps)
        return budget if self.max_frames is None else min(budget, self.max_frames)

    @property
    def _limit_is_the_budget(self) -> bool:
        """True when `frame_limit` is the limits' budget (passing it is `too_long`), not a caller's prefix."""
        return self.max_frames is None or self.max_frames > self.limits.max_output_frames(self.fps)

    @property
    def frame_bytes(self) -> int:
        return self.width * self.height * 3

    def filter_chain(self) -> str:
        """The -vf chain: continuous timestamps, resample rate, log time and size, scale (+ convert to RGB),
        rotate."""
        filters: list[str] = [continuous_video_pts()]
        if self.fps is not None:
            filters.append(f"fps={self.fps:.12g}:eof_action=pass")
        # checksum=0: the per-plane checksums and mean/stdev cost ~7 ms per 1080p frame and we only need the
        # time and the size (logged here, before `scale`: the size the frame was decoded at)
        filters.append("showinfo=checksum=0")
        rotation = self.info.rotation % 360
        stored_w, stored_h = (self.height, self.width) if rotation in (90, 270) else (self.width, self.height)
        filters.append(f"scale={stored_w}:{stored_h}:flags=bilinear")
        filters.append("format=rgb24")
        filters.extend(_rotation_filters(rotation))
        # The real times are logged; from here on frame n is at n s, so no two frames can ever share a
        # timestamp in the raw pipe (see the module docstring: VFR).
        filters.extend(["settb=1", "setpts=N"])
        return ",".join(filters)

    def command(self) -> list[str]:
        """The exact ffmpeg command line this reader runs."""
        max_pixels = max(self.limits.max_pixels, self.info.coded_width * self.info.coded_height)
        return [
            FFMPEG, "-hide_banner", "-nostdin", "-nostats",
            # showinfo logs at info level; "level" tags each line with its severity, "repeat" stops ffmpeg
            # from collapsing identical lines into "Last message repeated N times".
            "-loglevel", "repeat+level+info",
            *media_input_args(self.info),
            "-noautorotate",
            "-max_pixels", str(max_pixels),
            "-i", input_url(self.info),
            "-map", f"0:{self.info.video_stream_index}",
            "-an", "-sn", "-dn",
            "-vf", self.filter_chain(),
            "-fps_mode", "passthrough", "-enc_time_base:v", "1",
            # one frame past the limits' budget: if it arrives, the file is too long (never cut silently)
            "-frames:v", str(self.frame_limit + (1 if self._limit_is_the_budget else 0)),
            "-f", "rawvideo", "-pix_fmt", "rgb24",
            "pipe:1",
        ]  # fmt: skip

    # ------------------------------------------------------------------------- stderr (drain thread)
    def _on_stderr_line(self, line: str) -> None:
        frame = parse_frame_line(line)
        if frame is not None:
            with self._cond:
                seconds = frame_seconds(frame, self._time_base)
                if seconds is not None:
                    pts_s = seconds - self.info.origin_s
                else:  # no timestamp at all: one nominal frame after the previous one
                    step = 1.0 / (self.fps or self.info.fps or 25.0)
                    pts_s = (self._last_pts + step) if self._last_pts is not None else 0.0
                size = display_size(frame.width, frame.height, self.info.rotation) if frame.width \
                    else (self.info.height, self.info.width)
                self._last_pts = pts_s
                self._pts.append((pts_s, size))
                self._frames_announced += 1
                self._cond.notify_all()
            return
        time_base = parse_time_base(line)
        if time_base is not None:
            with self._cond:
                self._time_base = time_base
            return
        match = ERROR_LINE.match(line)
        if match is None or BENIGN_ERRORS.search(line):
            return
        with self._cond:
            if self._frames_announced == 0:
                if DECODE_ERROR.search(line):
                    self.frames_skipped += 1  # a packet before the first decodable frame: skipped, as players do
                if len(self._leading_errors) < 32:
                    self._leading_errors.append(line)
                return
            if self._fatal is None:
                self._fatal = line
            self._cond.notify_all()
            proc = self._proc
        if proc is not None:
            proc.kill()  # stop producing frames we are going to refuse anyway

    # ------------------------------------------------------------------------------- main thread
    def _error(self, proc: BoundedProcess, detail: str | None = None) -> MediaError:
        if proc.timed_out:
            return MediaError(
                ErrorCode.MEDIA_TIMEOUT,
                f"{Path(self.info.path).name}: decoding did not finish within {self.timeout_s:g} s",
            )
        if detail is None:
            detail = self._fatal  # we killed ffmpeg ourselves: the line that made us do it says why
        if detail is None:  # ffmpeg's error-level lines say what went wrong; info lines are showinfo noise
            errors = [line for line in proc.stderr_text().splitlines() if ERROR_LINE.match(line)]
            detail = "\n".join(errors) if errors else proc.stderr_text()
        reason = ffmpeg_message(detail, self.info.path, "ffmpeg failed without a message")
        return MediaError(ErrorCode.CORRUPT_MEDIA, f"{Path(self.info.path).name}: damaged video stream: {reason}")

    def _too_long(self, what: str) -> MediaError:
        return MediaError(ErrorCode.TOO_LONG, f"{Path(self.info.path).name}: the video holds {what}; the limit is "
                                              f"{self.limits.max_duration_s:g} s at {self.limits.max_fps:g} frames/s")

    def _check_duration(self, pts: list[float]) -> None:
        """`too_long` when a frame lies more than `max_duration_s` after the first one."""
        if self._first_pts is None and pts:
            self._first_pts = pts[0]
        if pts and self._first_pts is not None and max(pts) - self._first_pts > self.limits.max_duration_s + 1e-6:
            raise self._too_long(f"a frame {max(pts) - self._first_pts:.1f} s after the first")

    def _take_pts(self, proc: BoundedProcess, count: int) -> list[tuple[float, tuple[int, int]]]:
        """Wait until the stderr thread has parsed `count` frames' times and sizes (they are logged before the
        frames are written, so they are in the pipe already) and take them."""
        with self._cond:
            while len(self._pts) < count:
                if self._fatal is not None or proc.stderr_finished():
                    break
                self._cond.wait(_PTS_WAIT_SLICE_S)
            if self._fatal is not None:
                raise self._error(proc, self._fatal)
            if len(self._pts) < count:
                raise self._error(proc, f"ffmpeg reported no timestamp for frame {self.frames_read + len(self._pts)}")
            return [self._pts.popleft() for _ in range(count)]

    def _read_frames(self, proc: BoundedProcess, count: int) -> np.ndarray:
        """Read up to `count` whole frames; fewer only at end of stream. A torn frame is an error."""
        stdout = proc.popen.stdout
        assert stdout is not None
        frames = np.empty((count, self.height, self.width, 3), dtype=np.uint8)
        view = memoryview(frames).cast("B")
        filled = 0
        while filled < len(view):
            got = stdout.readinto(view[filled:])
            if not got:
                break
            filled += got
        whole = filled // self.frame_bytes
        if filled % self.frame_bytes:
            proc.wait()
            raise self._error(proc, "the decoder stopped in the middle of a frame")
        return frames[:whole]

    def iter_batches(self, batch_size: int) -> Iterator[FrameBatch]:
        """Yield `FrameBatch`es of `batch_size` frames (the last one may be shorter).

        Raises `MediaError(corrupt_media)` on decode errors and `MediaError(media_timeout)` at the deadline.
        Stopping early (break, `close()`, an exception in the consumer) kills ffmpeg at once.
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.frames_read = 0
        self._first_pts = None
        with self._cond:
            self._pts.clear()
            self._time_base, self._last_pts, self._frames_announced = 0.0, None, 0
            self._fatal, self._leading_errors = None, []
            self.frames_skipped = 0
        limit = self.frame_limit
        if limit == 0:
            return
        with BoundedProcess(self.command(), timeout_s=self.timeout_s, on_stderr_line=self._on_stderr_line) as proc:
            with self._cond:
                self._proc = proc
            try:
                while self.frames_read < limit:
                    want = min(batch_size, limit - self.frames_read)
                    frames = self._read_frames(proc, want)
                    if len(frames) < want:  # end of stream: judge the exit before releasing the last frames
                        returncode = proc.wait()
                        if proc.timed_out or returncode != 0:
                            raise self._error(proc)
                    if len(frames) == 0:
                        break
                    announced = self._take_pts(proc, len(frames))
                    pts = [time for time, _ in announced]
                    self._check_duration(pts)
                    if self.frames_read + len(frames) == limit and self._limit_is_the_budget \
                            and len(self._read_frames(proc, 1)):
                        raise self._too_long(f"more than {limit} frames")
                    batch = FrameBatch(frames=frames, pts_s=pts, start_index=self.frames_read,
                                       sizes=[size for _, size in announced])
                    self.frames_read += len(frames)
                    yield batch
                    if len(frames) < want:
                        break
                returncode = proc.wait()
                if proc.timed_out or returncode != 0:
                    raise self._error(proc)
                with self._cond:
                    if self._fatal is not None:
                        raise self._error(proc, self._fatal)
            finally:
                with self._cond:
                    self._proc = None

    def __iter__(self) -> Iterator[np.ndarray]:
        """Frames one by one ([H, W, 3] uint8), for convenience; batches are the efficient path."""
        for batch in self.iter_batches(32):
            yield from batch.frames
