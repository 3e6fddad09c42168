"""What the streams of a file really hold, from one demux-only pass over its packets.

Container headers are a guess, sometimes absent, sometimes wrong: a file written to a pipe (what a
browser's MediaRecorder produces) has no duration at all; a Matroska file whose timestamps start at 20 s
records 22 s for a 2 s clip; a variable-frame-rate file's "frame rate" is whatever the first frames
suggested. Limits and estimates decided from headers therefore refuse good files and let long ones through.

`scan_packets` reads every packet once with ffprobe (`-show_entries packet=...`, no decoding: about
0.2 s for a 600 s 640x360 H.264 file on one core) and returns, per stream, how many packets it holds and
the span their timestamps cover. The probe takes duration, frame count and track emptiness from here, so
they are the same in every container.

The scan is bounded: ffprobe runs under a SIGKILL deadline, its output is parsed line by line as it
arrives (memory holds a few numbers per stream), and it is stopped as soon as the watched stream has
more packets than `max_packets` (the caller then refuses the file as too long).

This module is torch-free and imports nothing from `app`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from worker.core.media.process import BoundedProcess

FFPROBE = "ffprobe"
TIMELINE_RESTART_S = 0.5
"""A packet time this far before the stream's latest is a restart of its clock (two recordings in one file:
w3c/mediacapture-record#195), not B-frame reordering: the part that follows is counted after the part before,
as the decoders continue it (`worker.media.ffmpeg_input`)."""


@dataclass
class StreamPackets:
    """Packets of one stream. Times are in seconds on the stream's own timestamps (not shifted).

    `count`: packets read. `first_s`: the earliest presentation time; `last_s`/`before_last_s`: the two
    latest (None when no packet carried one); `last_duration_s`: the duration the latest packet declared.
    `restarts`: how often the stream's clock went back (`TIMELINE_RESTART_S`); times after a restart are
    counted from where the part before ended (`offset_s` added).
    """

    count: int = 0
    first_s: float | None = None
    last_s: float | None = None
    before_last_s: float | None = None
    last_duration_s: float | None = None
    restarts: int = 0
    offset_s: float = 0.0

    def add(self, time_s: float | None, duration_s: float | None) -> None:
        self.count += 1
        if time_s is None:
            return
        if self.last_s is not None and time_s + self.offset_s < self.last_s - TIMELINE_RESTART_S:
            step = self.last_s - self.before_last_s if self.before_last_s is not None else self.last_duration_s
            self.offset_s = self.last_s + (step or 0.0) - time_s
            self.restarts += 1
        time_s += self.offset_s
        self.first_s = time_s if self.first_s is None else min(self.first_s, time_s)
        if self.last_s is None or time_s > self.last_s:
            self.before_last_s, self.last_s = self.last_s, time_s
            self.last_duration_s = duration_s if duration_s and duration_s > 0 else None
        elif time_s < self.last_s and (self.before_last_s is None or time_s > self.before_last_s):
            self.before_last_s = time_s

    def span_s(self) -> float | None:
        """Seconds from the first frame's start to the last frame's end (None when unknown).

        The last frame lasts the gap before it, or less when its packet declares less: declared durations
        alone cannot be trusted (Matroska fills in the track's default duration, 0.2 s for a WebM whose
        frame rate rises from 5 to 30 frames/s), and a constant-rate file gets N / rate either way.
        """
        if self.first_s is None or self.last_s is None:
            return None
        gap = self.last_s - self.before_last_s if self.before_last_s is not None else None
        known = [d for d in (gap, self.last_duration_s) if d is not None]
        span = self.last_s + (min(known) if known else 0.0) - self.first_s
        return span if span > 0 else None


@dataclass(frozen=True)
class PacketScan:
    """`streams[index]` for every stream that had at least one packet; `stopped_early`: the scan was
    stopped because the watched stream passed `max_packets`; `returncode`/`stderr`: ffprobe's."""

    streams: dict[int, StreamPackets]
    stopped_early: bool
    timed_out: bool
    returncode: int
    stderr: str

    def packets(self, index: int) -> StreamPackets:
        return self.streams.get(index) or StreamPackets()


def _number(text: str | None) -> float | None:
    if text is None or text in ("", "N/A"):
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def scan_command(path: str | Path, demuxer: str, format_whitelist: str) -> list[str]:
    """ffprobe listing every packet as `stream_index=..|pts_time=..|dts_time=..|duration_time=..`."""
    return [
        FFPROBE, "-hide_banner", "-v", "error",
        "-protocol_whitelist", "file",
        "-format_whitelist", format_whitelist,
        "-f", demuxer,
        "-show_entries", "packet=stream_index,pts_time,dts_time,duration_time",
        "-of", "compact=p=0",
        "-i", f"file:{Path(path).resolve()}",
    ]  # fmt: skip


def scan_packets(path: str | Path, *, demuxer: str, format_whitelist: str, watch: int, max_packets: int,
                 timeout_s: float) -> PacketScan:
    """Count and time the packets of every stream of `path` (see the module docstring).

    `watch` is the stream whose count is bounded: after `max_packets + 1` of its packets ffprobe is killed
    and `stopped_early` is set. A packet's time is its pts, else its dts
    (AVI stores only decode times). Never raises for the file's content: the caller judges the result.
    """
    streams: dict[int, StreamPackets] = {}
    stopped = False
    with BoundedProcess(scan_command(path, demuxer, format_whitelist), timeout_s=timeout_s) as proc:
        stdout = proc.popen.stdout
        assert stdout is not None
        for raw in stdout:
            fields = dict(item.split("=", 1) for item in raw.decode("ascii", "replace").strip().split("|")
                          if "=" in item)
            try:
                index = int(fields.get("stream_index", ""))
            except ValueError:
                continue
            time_s = _number(fields.get("pts_time"))
            if time_s is None:
                time_s = _number(fields.get("dts_time"))
            packets = streams.setdefault(index, StreamPackets())
            packets.add(time_s, _number(fields.get("duration_time")))
            if index == watch and packets.count > max_packets:
                stopped = True
                proc.kill()
                break
        returncode = proc.wait()
        return PacketScan(streams=streams, stopped_early=stopped, timed_out=proc.timed_out,
                          returncode=0 if stopped else returncode, stderr=proc.stderr_text())
