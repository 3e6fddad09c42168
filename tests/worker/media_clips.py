"""Synthetic media for the media-layer tests (lavfi sources, nothing downloaded), built on first use.

Every clip is tiny (160x120 or 161x121, 2 s) and built with `worker.media.samples` or a direct ffmpeg
call. `Clips("name")` builds a file once and caches it, so running one test does not pay for the whole
catalogue. The session fixture lives in `conftest.py`; this module has a unique name so that tests can
import `MATRIX` without clashing with other directories' conftest modules.
"""

from __future__ import annotations

import random
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker.media.samples import make_audio, make_video

# name -> make_video keyword arguments. The matrix tests iterate over MATRIX.
VIDEO_CLIPS: dict[str, dict[str, Any]] = {
    "mp4": {"container": "mp4"},
    "mov_8k": {"container": "mov", "sample_rate": 8000},
    "webm_51_48k": {"container": "webm", "channels": 6, "sample_rate": 48000},
    "mkv_stereo_22k": {"container": "mkv", "channels": 2, "sample_rate": 22050},
    "avi_stereo_11k": {"container": "avi", "channels": 2, "sample_rate": 11025},
    "mp4_51_48k": {"channels": 6, "sample_rate": 48000},
    "mp4_stereo_32k": {"channels": 2, "sample_rate": 32000},
    "mp4_16k": {"sample_rate": 16000},
    "ts": {"container": "ts"},
    "flv": {"container": "flv"},
    "odd_mp4": {"size": (161, 121)},
    "odd_webm": {"size": (161, 121), "container": "webm"},
    "odd_avi": {"size": (161, 121), "container": "avi"},
    "odd_mkv": {"size": (161, 121), "container": "mkv"},
    "vfr_mp4": {"vfr": True},
    "vfr_mkv": {"vfr": True, "container": "mkv"},
    "rot90": {"rotation": 90},
    "rot180": {"rotation": 180},
    "rot270": {"rotation": 270, "container": "mov"},
    # not in the matrix: special purposes
    "gate": {"sound_start_s": 1.0},
    "late_mp4": {"audio_delay_s": 1.0},
    "late_mkv": {"audio_delay_s": 0.5, "container": "mkv"},
    "video_only": {"audio": False},
    "long": {"duration_s": 6.0, "size": (320, 240)},
}

MATRIX = [name for name in VIDEO_CLIPS if name not in ("gate", "late_mp4", "late_mkv", "video_only", "long")]

_EXT = {"mp4": "mp4", "mov": "mov", "webm": "webm", "mkv": "mkv", "avi": "avi", "ts": "ts", "flv": "flv"}


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args],
                   check=True, timeout=60, capture_output=True)


class Clips:
    """Builds named test files on first use, under one session directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[str, Path] = {}
        self._special: dict[str, Callable[[Path], Path]] = {
            "audio_only.m4a": self._audio_only,
            "cover_art.m4a": self._cover_art,
            "empty_moov.mp4": self._empty_moov,
            "text.mp4": lambda p: _write(p, b"this is not a video, just some text\n" * 20),
            "random.mp4": lambda p: _write(p, random.Random(1234).randbytes(64 * 1024)),
            "sound.wav": self._wav,
            "picture.png": self._png,
            "truncated.mp4": self._truncated,
            "faststart_truncated.mp4": self._faststart_truncated,
            "garbage_middle.mp4": lambda p: self._garbage_middle(p, "clean_faststart.mp4"),
            "garbage_middle.webm": lambda p: self._garbage_middle(p, "webm_51_48k"),
            "garbage_middle.avi": lambda p: self._garbage_middle(p, "avi_stereo_11k"),
            "no_duration.mkv": self._no_duration,
            "offset.ts": self._offset_ts,
            "clean_faststart.mp4": self._clean_faststart,
            "mid_gop.ts": self._mid_gop_ts,
        }

    def __call__(self, name: str) -> Path:
        if name not in self._cache:
            if name in VIDEO_CLIPS:
                kwargs = VIDEO_CLIPS[name]
                path = self.root / f"{name}.{_EXT[kwargs.get('container', 'mp4')]}"
                self._cache[name] = make_video(path, **kwargs)
            else:
                self._cache[name] = self._special[name](self.root / name)
        return self._cache[name]

    # ------------------------------------------------------------------------------ builders
    def _audio_only(self, path: Path) -> Path:
        return make_audio(path, codec="aac")

    def _cover_art(self, path: Path) -> Path:
        png = self("picture.png")
        sound = make_audio(self.root / "cover_sound.m4a", codec="aac")
        _ffmpeg("-i", str(sound), "-i", str(png), "-map", "0", "-map", "1", "-c:a", "copy", "-c:v", "png",
                "-disposition:v:0", "attached_pic", str(path))
        return path

    def _empty_moov(self, path: Path) -> Path:
        """An mp4 with a valid `ftyp` and a `moov` holding only a movie header: ffprobe exits 0, no streams."""
        import struct

        def box(kind: bytes, body: bytes) -> bytes:
            return struct.pack(">I", 8 + len(body)) + kind + body

        ftyp = box(b"ftyp", b"isom" + struct.pack(">I", 512) + b"isomiso2mp41")
        matrix = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
        mvhd = box(b"mvhd", bytes(4) + struct.pack(">IIII", 0, 0, 1000, 0) + struct.pack(">IH", 0x10000, 0x100)
                   + bytes(10) + matrix + bytes(24) + struct.pack(">I", 2))
        return _write(path, ftyp + box(b"moov", mvhd))

    def _wav(self, path: Path) -> Path:
        return make_audio(path, codec="pcm_s16le")

    def _png(self, path: Path) -> Path:
        _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x64", "-frames:v", "1", str(path))
        return path

    def _truncated(self, path: Path) -> Path:
        """mp4 with its index (`moov`, written at the end) cut off: the file does not open."""
        data = self("mp4").read_bytes()
        return _write(path, data[: len(data) // 2])

    def _clean_faststart(self, path: Path) -> Path:
        _ffmpeg("-i", str(self("mp4")), "-c", "copy", "-movflags", "+faststart", str(path))
        return path

    def _faststart_truncated(self, path: Path) -> Path:
        """Index first, media data cut at 60 %: probes cleanly, fails while decoding."""
        data = self("clean_faststart.mp4").read_bytes()
        return _write(path, data[: int(len(data) * 0.6)])

    def _garbage_middle(self, path: Path, clean: str) -> Path:
        """The middle 8 KB of a clean clip overwritten with random bytes: it probes cleanly, and the
        demuxer or decoder meets garbage about half way."""
        data = bytearray(self(clean).read_bytes())
        middle = len(data) // 2
        if path.suffix == ".avi":  # hit a video chunk ("00dc"), not the larger interleaved PCM audio
            middle = data.index(b"00dc", middle) + 8 + 4096
        data[middle - 4096 : middle + 4096] = random.Random(99).randbytes(8192)
        return _write(path, bytes(data))

    def _no_duration(self, path: Path) -> Path:
        """Matroska written to a pipe: no duration anywhere (the muxer cannot seek back to write it)."""
        result = subprocess.run(
            ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error",
             "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=2",
             "-f", "lavfi", "-i", "sine=duration=2", "-c:v", "ffv1", "-c:a", "flac", "-f", "matroska", "pipe:1"],
            check=True, timeout=60, capture_output=True,
        )  # fmt: skip
        return _write(path, result.stdout)

    def _offset_ts(self, path: Path) -> Path:
        """MPEG-TS whose timestamps start at ~101 s (as in a cut broadcast recording)."""
        _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=2", "-f", "lavfi", "-i",
                "sine=duration=2", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac",
                "-output_ts_offset", "100", str(path))
        return path

    def _mid_gop_ts(self, path: Path) -> Path:
        """MPEG-TS cut 30 % in at a packet boundary, i.e. in the middle of a GOP (one keyframe every 2 s),
        like a recording started at a random moment: the decoder must drop the leading packets it cannot
        decode (with error messages) and then decode normally."""
        whole = self.root / "whole_gop.ts"
        _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=4", "-f", "lavfi", "-i",
                "sine=duration=4", "-c:v", "libx264", "-preset", "ultrafast", "-g", "50", "-pix_fmt", "yuv420p",
                "-c:a", "aac", str(whole))
        data = whole.read_bytes()
        packets = len(data) // 188
        return _write(path, data[int(packets * 0.3) * 188 :])


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
