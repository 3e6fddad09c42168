"""The media of the live-and-browser-media issue (#21), built with ffmpeg on first use: each kind's reproducer
and further inputs of the same kind built here (the kinds are what the tests check, not the files).

Kinds: frame size changes mid-stream; rotation (a display matrix) on a fragmented MP4; what every player plays
but a strict decoder refused (MPEG-TS segments joined with `cat`, a stream that begins on an interframe);
timestamps that restart inside one stream (two recordings back to back); ordinary browser input (video
without sound, an MP4 that is not fragmented). Each recording's sound is a tone of its own, so a test can tell
which sound a frame was given. The module has a unique name so that pytest's rootdir imports never clash.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

FF = ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-y"]
FRAGMENTED = ["-movflags", "frag_keyframe+empty_moov+default_base_moof", "-frag_duration", "200000"]


def _run(*args: str) -> None:
    subprocess.run([*FF, *args], check=True, timeout=120, capture_output=True)


def _recording(path: Path, size: str, *, seconds: float, rate: int = 20, tone: int = 440,
               codec: tuple[str, ...] = ("-c:v", "libvpx", "-b:v", "300k", "-g", "20"),
               audio: tuple[str, ...] = ("-c:a", "libopus"), muxer: tuple[str, ...] = ("-f", "webm", "-live", "1"),
               sound: bool = True) -> Path:
    """A MediaRecorder-like recording: testsrc2 at `size`, `tone` Hz, written the way a browser streams it."""
    inputs = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}"]
    if sound:
        inputs += ["-f", "lavfi", "-i", f"sine=frequency={tone}:sample_rate=48000:duration={seconds}"]
    _run(*inputs, *codec, *(audio if sound else ("-an",)), *muxer, str(path))
    return path


def _concat_copy(path: Path, parts: list[Path], muxer: tuple[str, ...]) -> None:
    """ffmpeg's concat demuxer, stream copy: one stream whose frame size changes where the parts meet."""
    listing = path.with_suffix(".txt")
    listing.write_text("".join(f"file '{part}'\n" for part in parts))
    _run("-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", *muxer, str(path))


def _cat(path: Path, parts: list[Path]) -> None:
    path.write_bytes(b"".join(part.read_bytes() for part in parts))


def _without_first_cluster(source: Path, path: Path) -> None:
    """The WebM with its first Cluster element cut out: it begins on an interframe (acolwell/mse-tools#8)."""
    data = source.read_bytes()
    cluster = bytes.fromhex("1F43B675")
    first = data.find(cluster)
    second = data.find(cluster, first + 4)
    assert 0 < first < second, "expected two clusters"
    path.write_bytes(data[:first] + data[second:])


def _without_first_keyframe(source: Path, path: Path) -> None:
    """An MPEG-TS cut at a packet boundary after its first keyframe: it begins mid-GOP, as a cut recording."""
    data = source.read_bytes()
    cut = (len(data) // 5) // 188 * 188
    path.write_bytes(data[cut:])


class BrowserMedia:
    """`media("size_change.webm")` builds the file once per session and returns its path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[str, Path] = {}
        h264 = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "20")
        ts = ("-f", "mpegts")
        self._builders: dict[str, Callable[[Path], None]] = {
            # 1. frame size changes mid-stream (reproducers: VP8 WebM 320x240 then 240x320; H.264 MPEG-TS)
            "size_change.webm": lambda p: _concat_copy(p, [
                _recording(self.root / "sc_a.webm", "320x240", seconds=1.5, tone=440),
                _recording(self.root / "sc_b.webm", "240x320", seconds=1.5, tone=1760)], ("-f", "webm")),
            "size_change.ts": lambda p: _concat_copy(p, [
                _recording(self.root / "sc_a.mp4", "160x120", seconds=1.0, codec=h264, audio=("-c:a", "aac"),
                           muxer=("-f", "mp4")),
                _recording(self.root / "sc_b.mp4", "96x128", seconds=1.0, codec=h264, audio=("-c:a", "aac"),
                           muxer=("-f", "mp4"), tone=1760)], ts),
            "size_change_vp9.mkv": lambda p: _concat_copy(p, [  # three sizes, VP9, Matroska
                _recording(self.root / "sc9_a.webm", "128x96", seconds=1.0,
                           codec=("-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8")),
                _recording(self.root / "sc9_b.webm", "96x128", seconds=1.0,
                           codec=("-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8")),
                _recording(self.root / "sc9_c.webm", "192x144", seconds=1.0,
                           codec=("-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8"))],
                ("-f", "matroska")),
            # 2. rotation on a fragmented MP4 (Safari's recording of an upright phone: stored 160x120, shown 120x160)
            "rotated_90.mp4": lambda p: self._rotated(p, 270),  # ffmpeg 5.1's mov muxer takes the tag counter-clockwise
            "rotated_270.mp4": lambda p: self._rotated(p, 90),
            # 3. what a player plays: MPEG-TS segments joined with cat; a stream that begins on an interframe
            "joined.ts": lambda p: self._joined(p, h264),
            "joined_mpeg2.ts": lambda p: self._joined(p, ("-c:v", "mpeg2video", "-g", "12"), audio=("-c:a", "mp2")),
            "lost_cluster.webm": lambda p: _without_first_cluster(_recording(
                self.root / "lc_src.webm", "160x120", seconds=3.0, rate=25,
                codec=("-c:v", "libvpx", "-b:v", "300k", "-g", "25"),
                muxer=("-f", "webm", "-live", "1", "-cluster_time_limit", "300")), p),
            "cut.ts": lambda p: _without_first_keyframe(_recording(
                self.root / "cut_src.ts", "160x120", seconds=3.0, rate=25, codec=(*h264[:-1], "50"),
                audio=("-c:a", "aac"), muxer=ts), p),
            # 4. timestamps that restart: two recordings back to back in one file (440 Hz, then 1760 Hz)
            "twice.webm": lambda p: _cat(p, [_recording(self.root / "r1.webm", "160x120", seconds=2.0, tone=440),
                                             _recording(self.root / "r2.webm", "160x120", seconds=2.0, tone=1760)]),
            "twice_rates.mkv": lambda p: _cat(p, [  # Matroska, the second at another rate and size
                _recording(self.root / "rr1.mkv", "160x120", seconds=1.5, rate=25, tone=440,
                           muxer=("-f", "matroska", "-live", "1")),
                _recording(self.root / "rr2.mkv", "128x96", seconds=1.5, rate=15, tone=1760,
                           muxer=("-f", "matroska", "-live", "1"))]),
            # 5. ordinary browser input
            "video_only.webm": lambda p: _recording(p, "160x120", seconds=1.5, sound=False),
            "video_only.mp4": lambda p: _recording(p, "160x120", seconds=1.5, sound=False, codec=h264,
                                                   muxer=("-f", "mp4", *FRAGMENTED)),
            "plain.mp4": lambda p: _recording(p, "160x120", seconds=1.5, codec=h264, audio=("-c:a", "aac"),
                                              muxer=("-f", "mp4")),
            "plain.mov": lambda p: _recording(p, "160x120", seconds=1.5, codec=h264, audio=("-c:a", "aac"),
                                              muxer=("-f", "mov")),
            "fragmented.mp4": lambda p: _recording(p, "160x120", seconds=1.5, codec=h264, audio=("-c:a", "aac"),
                                                   muxer=("-f", "mp4", *FRAGMENTED)),
        }

    def __call__(self, name: str) -> Path:
        if name not in self._cache:
            path = self.root / name
            self._builders[name](path)
            self._cache[name] = path
        return self._cache[name]

    def _rotated(self, path: Path, tag: int) -> None:
        plain = _recording(self.root / f"rot{tag}_src.mp4", "160x120", seconds=1.5, rate=20,
                           codec=("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "20"),
                           audio=("-c:a", "aac"), muxer=("-f", "mp4"))
        _run("-i", str(plain), "-map", "0", "-c", "copy", "-metadata:s:v:0", f"rotate={tag}", *FRAGMENTED,
             "-f", "mp4", str(path))

    def _joined(self, path: Path, codec: tuple[str, ...], audio: tuple[str, ...] = ("-c:a", "aac")) -> None:
        whole = _recording(self.root / f"{path.stem}_whole.ts", "160x120", seconds=4.0, rate=25, codec=codec,
                           audio=audio, muxer=("-f", "mpegts"))
        pattern = self.root / f"{path.stem}_seg%d.ts"
        _run("-i", str(whole), "-map", "0", "-c", "copy", "-f", "segment", "-segment_time", "1",
             "-segment_format", "mpegts", str(pattern))
        segments = sorted(self.root.glob(f"{path.stem}_seg*.ts"), key=lambda p: int(p.stem.rsplit("seg", 1)[1]))
        assert len(segments) >= 3
        _cat(path, segments)
