"""The files of the real-world media issue (#10), built with ffmpeg on first use: each kind's reproducer, with
the exact command from the issue, and a second input of the same kind built here.

Also the ground truth the tests compare against, measured by ffprobe itself (never by the code under test):
`ffprobe_frame_times` (every decoded frame's time, from the container start, as `ffprobe -show_frames`
reports it) and `ffprobe_stream` (a stream's own fields). The module has a unique name so that pytest's
rootdir imports never clash with other directories' helpers.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

FF = ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-y"]
SINE = "sine=frequency=440:sample_rate"


def _run(args: list[str], *, stdout: Path | None = None) -> None:
    if stdout is None:
        subprocess.run(args, check=True, timeout=120, capture_output=True)
        return
    result = subprocess.run(args, check=True, timeout=120, capture_output=True)
    stdout.write_bytes(result.stdout)


def ffprobe_json(path: Path, *args: str) -> dict[str, Any]:
    out = subprocess.run(["ffprobe", "-v", "error", "-of", "json", *args, str(path)], check=True, timeout=120,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def ffprobe_frame_times(path: Path, stream: str = "v:0") -> list[float | None]:
    """Every decoded frame's presentation time in seconds from the container start (ffprobe's own view);
    None for a frame ffprobe gives no time (the last frame of an MPEG program stream may have none)."""
    data = ffprobe_json(path, "-select_streams", stream, "-show_entries",
                        "frame=best_effort_timestamp_time:format=start_time", "-show_format")
    start = float(data["format"].get("start_time", 0.0))
    return [float(f["best_effort_timestamp_time"]) - start if "best_effort_timestamp_time" in f else None
            for f in data["frames"]]


def max_time_error(times: list[float], truth: list[float | None]) -> float:
    """The largest difference between `times` and the frames of `truth` that have a time (same length)."""
    assert len(times) == len(truth)
    known = [(a, b) for a, b in zip(times, truth, strict=True) if a is not None and b is not None]
    assert len(known) >= len(truth) - 1, "at most one frame without a time"
    return max(abs(a - b) for a, b in known)


def ffprobe_stream(path: Path, stream: str = "v:0") -> dict[str, Any]:
    return ffprobe_json(path, "-select_streams", stream, "-show_streams")["streams"][0]


class RealWorldClips:
    """`clips("vfr.webm")` builds the file once per session and returns its path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[str, Path] = {}
        self._builders: dict[str, Callable[[Path], None]] = {
            # 1. variable frame rate (the reproducer: 5 fps then 30 fps, VP8/Opus written to a pipe)
            "vfr.webm": self._vfr_webm,
            "burst.mp4": self._burst_mp4,  # 4 fps then 60 fps, 90 kHz timescale: frames 16.7 ms apart
            "burst.mkv": lambda p: self._remux("burst.mp4", p),  # the same, remuxed (1 ms timestamps)
            # 2. no recorded duration
            "nodur.webm": self._nodur_webm,
            "nodur.mkv": self._nodur_mkv,  # ffv1 + flac Matroska written to a pipe
            # 3. a start offset
            "clip.mp4": self._clip,
            "offset.mkv": lambda p: _run([*FF, "-i", str(self("clip.mp4")), "-c", "copy", "-output_ts_offset",
                                          "20", str(p)]),
            "offset.webm": self._offset_webm,  # VP9 + Opus starting at 35 s
            # 4. the overlay's timing and geometry
            "rate_rises.mp4": self._rate_rises,
            "anamorphic.mp4": self._anamorphic_mp4,  # 96x64 stored, pixels twice as wide as tall (3:1 shown)
            "anamorphic.vob": self._anamorphic_vob,  # MPEG-2 program stream shown at 2.21:1
            "rate_rises_rot90.mp4": self._rotated_vfr,
            "gated_vfr.mkv": self._gated_vfr,  # sound starts at 1.5 s, frames at 10 then 25 fps
            # 5. everyday containers
            "x.mpg": lambda p: self._container(p, ["-c:v", "mpeg2video", "-c:a", "mp2", "-f", "mpeg"]),
            "x.ogv": lambda p: self._container(p, ["-c:v", "libtheora", "-c:a", "libvorbis"]),
            "x.wmv": lambda p: self._container(p, ["-c:v", "wmv2", "-c:a", "wmav2"]),
            "x.vob": lambda p: self._container(p, ["-c:v", "mpeg2video", "-c:a", "ac3", "-f", "vob"]),
            "opus.ogv": lambda p: self._container(p, ["-c:v", "libtheora", "-c:a", "libopus", "-f", "ogg"]),
            "x.asf": lambda p: self._container(p, ["-c:v", "msmpeg4", "-c:a", "wmav2", "-f", "asf"]),
            "x.dv": self._dv,
            "sound.wav": lambda p: _run([*FF, "-f", "lavfi", "-i", f"{SINE}=44100:duration=2", str(p)]),
            "cover.mp3": self._cover_mp3,
            "sound.flac": lambda p: _run([*FF, "-f", "lavfi", "-i", f"{SINE}=44100:duration=2", str(p)]),
            # 7. which sound
            "two_tracks.mp4": lambda p: self._two_tracks(p, "mp4"),  # 220 Hz first, 1760 Hz default second
            "two_tracks.mkv": lambda p: self._two_tracks(p, "matroska"),
            "empty_track.mkv": self._empty_track,  # one audio track, zero packets
            "empty_then_real.mkv": self._empty_then_real,  # an empty default track, then a real one
        }

    def __call__(self, name: str) -> Path:
        if name not in self._cache:
            path = self.root / name
            self._builders[name](path)
            self._cache[name] = path
        return self._cache[name]

    # --------------------------------------------------------------------------------- builders
    def _vfr_webm(self, path: Path) -> None:
        _run([*FF, "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=5:duration=8", "-f", "lavfi", "-i",
              "testsrc2=size=96x64:rate=30:duration=4", "-f", "lavfi", "-i", f"{SINE}=48000:duration=12",
              "-filter_complex", "[0:v][1:v]concat=n=2:v=1:a=0[v]", "-map", "[v]", "-map", "2:a", "-fps_mode", "vfr",
              "-c:v", "libvpx", "-b:v", "100k", "-c:a", "libopus", "-f", "webm", "pipe:1"], stdout=path)

    def _burst_mp4(self, path: Path) -> None:
        _run([*FF, "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=4:duration=3", "-f", "lavfi", "-i",
              "testsrc2=size=96x64:rate=60:duration=1", "-f", "lavfi", "-i", f"{SINE}=44100:duration=4",
              "-filter_complex", "[0:v][1:v]concat=n=2:v=1:a=0[v]", "-map", "[v]", "-map", "2:a", "-fps_mode", "vfr",
              "-video_track_timescale", "90000", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)])

    def _remux(self, source: str, path: Path) -> None:
        _run([*FF, "-i", str(self(source)), "-c", "copy", str(path)])

    def _nodur_webm(self, path: Path) -> None:
        _run([*FF, "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=4", "-f", "lavfi", "-i",
              f"{SINE}=48000:duration=4", "-c:v", "libvpx", "-b:v", "200k", "-c:a", "libopus", "-f", "webm", "pipe:1"],
             stdout=path)

    def _nodur_mkv(self, path: Path) -> None:
        _run([*FF, "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=30:duration=3", "-f", "lavfi", "-i",
              f"{SINE}=44100:duration=3", "-c:v", "ffv1", "-c:a", "flac", "-f", "matroska", "pipe:1"], stdout=path)

    def _clip(self, path: Path) -> None:
        _run([*FF, "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25:duration=2", "-f", "lavfi", "-i",
              f"{SINE}=48000:duration=2", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)])

    def _offset_webm(self, path: Path) -> None:
        _run([*FF, "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=20:duration=3", "-f", "lavfi", "-i",
              f"{SINE}=48000:duration=3", "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8",
              "-c:a", "libopus", "-output_ts_offset", "35", "-f", "webm", str(path)])

    def _rate_rises(self, path: Path) -> None:
        _run([*FF, "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=15:duration=6", "-f", "lavfi", "-i",
              "testsrc2=size=96x64:rate=30:duration=2", "-f", "lavfi", "-i", f"{SINE}=48000:duration=8",
              "-filter_complex", "[0:v][1:v]concat=n=2:v=1:a=0[v]", "-map", "[v]", "-map", "2:a", "-fps_mode", "vfr",
              "-video_track_timescale", "90000", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)])

    def _anamorphic_mp4(self, path: Path) -> None:
        _run([*FF, "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25:duration=1", "-f", "lavfi", "-i",
              f"{SINE}=44100:duration=1", "-vf", "setsar=2/1", "-c:v", "libx264", "-pix_fmt", "yuv420p",
              "-c:a", "aac", str(path)])

    def _anamorphic_vob(self, path: Path) -> None:
        _run([*FF, "-f", "lavfi", "-i", "testsrc2=size=128x96:rate=25:duration=1", "-f", "lavfi", "-i",
              f"{SINE}=48000:duration=1", "-vf", "setsar=2/1", "-c:v", "mpeg2video", "-c:a", "mp2", "-f", "vob",
              str(path)])

    def _rotated_vfr(self, path: Path) -> None:
        """An upright phone clip (rotation 90) whose rate rises: rotation metadata written by a remux."""
        unrotated = self.root / "rotvfr_unrotated.mp4"
        _run([*FF, "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=10:duration=1", "-f", "lavfi", "-i",
              "testsrc2=size=96x64:rate=30:duration=1", "-f", "lavfi", "-i", f"{SINE}=48000:duration=2",
              "-filter_complex", "[0:v][1:v]concat=n=2:v=1:a=0[v]", "-map", "[v]", "-map", "2:a", "-fps_mode", "vfr",
              "-video_track_timescale", "90000", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
              str(unrotated)])
        # ffmpeg 5.1's mov muxer takes the legacy tag counter-clockwise (see worker.media.samples)
        _run([*FF, "-i", str(unrotated), "-map", "0", "-c", "copy", "-metadata:s:v:0", "rotate=270", str(path)])

    def _gated_vfr(self, path: Path) -> None:
        _run([*FF, "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=10:duration=2", "-f", "lavfi", "-i",
              "testsrc2=size=96x64:rate=25:duration=1", "-f", "lavfi", "-i",
              "aevalsrc=exprs='0.5*sin(2*PI*440*t)*gte(t,1.5)':s=48000:d=3",
              "-filter_complex", "[0:v][1:v]concat=n=2:v=1:a=0[v]", "-map", "[v]", "-map", "2:a", "-fps_mode", "vfr",
              "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "flac", str(path)])

    def _container(self, path: Path, codec_args: list[str]) -> None:
        _run([*FF, "-i", str(self("clip.mp4")), *codec_args, str(path)])

    def _dv(self, path: Path) -> None:
        # DV allows only its broadcast geometry and two-channel PCM
        _run([*FF, "-f", "lavfi", "-i", "testsrc2=size=720x576:rate=25:duration=1", "-f", "lavfi", "-i",
              f"{SINE}=48000:duration=1", "-ac", "2", "-c:v", "dvvideo", "-pix_fmt", "yuv420p", "-c:a", "pcm_s16le",
              "-f", "dv", str(path)])

    def _cover_mp3(self, path: Path) -> None:
        _run([*FF, "-f", "lavfi", "-i", f"{SINE}=44100:duration=2", "-f", "lavfi", "-i",
              "testsrc2=size=64x64:duration=1", "-map", "0", "-map", "1", "-frames:v", "1", "-c:v", "mjpeg",
              "-disposition:v", "attached_pic", "-id3v2_version", "3", str(path)])

    def _two_tracks(self, path: Path, muxer: str) -> None:
        _run([*FF, "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25:duration=2", "-f", "lavfi", "-i",
              "sine=frequency=220:sample_rate=48000:duration=2", "-f", "lavfi", "-i",
              "sine=frequency=1760:sample_rate=48000:duration=2", "-map", "0:v", "-map", "1:a", "-map", "2:a",
              "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-disposition:a:0", "0",
              "-disposition:a:1", "default", "-f", muxer, str(path)])

    def _empty_track(self, path: Path) -> None:
        _run([*FF, "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25:duration=2", "-f", "lavfi", "-i",
              f"{SINE}=48000:duration=2", "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-pix_fmt", "yuv420p",
              "-c:a", "aac", "-frames:a", "0", str(path)])

    def _empty_then_real(self, path: Path) -> None:
        empty = self("empty_track.mkv")
        _run([*FF, "-i", str(empty), "-f", "lavfi", "-i", "sine=frequency=1760:sample_rate=48000:duration=2",
              "-map", "0:v", "-map", "0:a", "-map", "1:a", "-c:v", "copy", "-c:a:0", "copy", "-c:a:1", "aac",
              "-disposition:a:0", "default", "-disposition:a:1", "0", str(path)])
