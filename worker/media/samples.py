"""Synthetic test media made with ffmpeg's lavfi sources: nothing is downloaded, everything is tiny.

The tests (and the benchmarks) need real files in every container we accept, with known properties:
odd sizes, rotation metadata, variable frame rate, several channel layouts and sample rates, and sound
that starts at a known time (to check that audio and frames share one timeline). `make_video` builds
them in a fraction of a second each.

Video is `testsrc2` (a moving pattern, so codecs really code something), scaled to the requested size
because testsrc2 silently rounds odd sizes down to even ones. Audio is a sine tone from `aevalsrc`, the
same on every channel, gated to silence before `sound_start_s`.
"""

from __future__ import annotations

from pathlib import Path

from worker.core.media.probe import FFMPEG
from worker.core.media.process import run_bounded

_CONTAINERS: dict[str, tuple[str, str]] = {
    # container -> (default video codec, default audio codec)
    "mp4": ("libx264", "aac"),
    "mov": ("libx264", "aac"),
    "webm": ("libvpx-vp9", "libopus"),
    "mkv": ("ffv1", "flac"),
    "avi": ("mjpeg", "pcm_s16le"),
    "ts": ("libx264", "aac"),
    "flv": ("libx264", "aac"),
}

_MUXERS = {"mp4": "mp4", "mov": "mov", "webm": "webm", "mkv": "matroska", "avi": "avi", "ts": "mpegts", "flv": "flv"}

_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 8: "7.1"}


def _video_codec_args(codec: str, width: int, height: int) -> list[str]:
    """Fast settings per encoder, with a pixel format that accepts the (possibly odd) frame size."""
    odd = width % 2 == 1 or height % 2 == 1
    if codec == "libx264":
        # yuv420p needs even sizes in libx264 ("width not divisible by 2"); 4:4:4 accepts any size.
        return ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv444p" if odd else "yuv420p"]
    if codec == "libvpx-vp9":
        return ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "200k",
                "-pix_fmt", "yuv420p"]
    if codec == "mjpeg":
        return ["-c:v", "mjpeg", "-q:v", "5", "-pix_fmt", "yuvj444p" if odd else "yuvj420p"]
    if codec == "ffv1":
        return ["-c:v", "ffv1", "-pix_fmt", "yuv420p"]
    return ["-c:v", codec]


def make_video(
    path: Path,
    *,
    duration_s: float = 2.0,
    size: tuple[int, int] = (160, 120),
    fps: float = 25,
    container: str = "mp4",
    video_codec: str | None = None,
    audio: bool = True,
    audio_codec: str | None = None,
    sample_rate: int = 44100,
    channels: int = 1,
    rotation: int = 0,
    vfr: bool = False,
    sound_start_s: float | None = None,
    tone_hz: float = 440.0,
    timeout_s: float = 120,
    audio_delay_s: float = 0.0,
) -> Path:
    """Write a synthetic clip to `path` and return it.

    * `container`: mp4, mov (h264 + aac), webm (vp9 + opus), mkv (ffv1 + flac), avi (mjpeg + pcm_s16le),
      ts, flv (h264 + aac); `video_codec`/`audio_codec` override the defaults.
    * `size=(width, height)`, odd sizes included.
    * `rotation`: clockwise display rotation (0/90/180/270) written as mp4/mov rotation metadata, so
      `probe_media(...).rotation == rotation`. ffmpeg 5.1's mov muxer reads the legacy `rotate` tag as a
      counter-clockwise angle (the demuxer of older releases wrote the clockwise one), so we write the
      negated angle; and it keeps the tag only when stream-copying, so the clip is remuxed once. Tests pin
      both down.
    * `vfr=True`: drops every 4th and every 7th frame while keeping the others' timestamps, so frame
      intervals vary (40/80/120 ms at 25 fps) and the container stores a variable frame rate.
    * `sound_start_s`: silence until that time, the tone after it. `audio_delay_s`: the audio stream itself
      starts that late in the container (`-itsoffset`), i.e. a player must insert silence before it.
    * `channels`: 1, 2, 6 (5.1), ...; `sample_rate`: any rate the audio codec accepts.
    """
    path = Path(path)
    if container not in _CONTAINERS:
        raise ValueError(f"unknown container {container!r}; known: {sorted(_CONTAINERS)}")
    width, height = size
    if rotation % 90 != 0:
        raise ValueError(f"rotation must be a multiple of 90, got {rotation}")
    rotation %= 360
    if rotation and container not in ("mp4", "mov"):
        raise ValueError("rotation metadata is written for mp4/mov only (ffmpeg 5.1's other muxers drop it)")
    if channels not in _LAYOUTS:
        raise ValueError(f"channels must be one of {sorted(_LAYOUTS)}, got {channels}")
    default_video, default_audio = _CONTAINERS[container]
    path.parent.mkdir(parents=True, exist_ok=True)

    # testsrc2 rounds odd sizes down, so render at the next even size and scale to the exact one.
    source_w, source_h = width + width % 2, height + height % 2
    args = [FFMPEG, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size={source_w}x{source_h}:rate={fps:g}:duration={duration_s:g}"]
    if audio:
        gate = f"*gte(t,{sound_start_s:g})" if sound_start_s is not None else ""
        expr = f"0.5*sin(2*PI*{tone_hz:g}*t){gate}"
        if audio_delay_s:
            args += ["-itsoffset", f"{audio_delay_s:g}"]
        args += ["-f", "lavfi", "-i",
                 f"aevalsrc=exprs='{expr}':s={sample_rate}:c={_LAYOUTS[channels]}:d={duration_s:g}"]
    filters = [f"scale={width}:{height}"]
    if vfr:
        filters.insert(0, "select='not(eq(mod(n,4),3)+eq(mod(n,7),5))'")
    args += ["-map", "0:v"] + (["-map", "1:a"] if audio else [])
    args += ["-vf", ",".join(filters)]
    args += _video_codec_args(video_codec or default_video, width, height)
    if vfr:
        args += ["-fps_mode", "vfr"]
        if container in ("mp4", "mov"):
            args += ["-video_track_timescale", "1000"]
    if audio:
        args += ["-c:a", audio_codec or default_audio]
    # ffmpeg 5.1 drops the `rotate` tag of a stream it encodes and honours it only when copying, so a
    # rotated clip is encoded first and then remuxed with the tag.
    encoded = path.with_name(f".{path.stem}.unrotated{path.suffix}") if rotation else path
    args += ["-f", _MUXERS[container], str(encoded)]
    try:
        _run(args, timeout_s, path)
        if rotation:
            _run([FFMPEG, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-y",
                  "-i", str(encoded), "-map", "0", "-c", "copy",
                  "-metadata:s:v:0", f"rotate={(360 - rotation) % 360}",
                  "-f", _MUXERS[container], str(path)], timeout_s, path)
    finally:
        if encoded != path:
            encoded.unlink(missing_ok=True)
    return path


def _run(args: list[str], timeout_s: float, path: Path) -> None:
    result = run_bounded(args, timeout_s=timeout_s)
    if result.timed_out or result.returncode != 0:
        path.unlink(missing_ok=True)
        reason = "timed out" if result.timed_out else result.stderr.strip()[-800:]
        raise RuntimeError(f"making {path.name} failed: {reason}\ncommand: {' '.join(args)}")


def make_audio(
    path: Path,
    *,
    duration_s: float = 2.0,
    codec: str = "aac",
    sample_rate: int = 44100,
    channels: int = 1,
    tone_hz: float = 440.0,
    timeout_s: float = 60,
) -> Path:
    """Write an audio-only file (e.g. an .m4a) to `path`: a container we accept, without video."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = [FFMPEG, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i",
            f"aevalsrc=exprs='0.5*sin(2*PI*{tone_hz:g}*t)':s={sample_rate}:c={_LAYOUTS[channels]}:d={duration_s:g}",
            "-c:a", codec, str(path)]
    _run(args, timeout_s, path)
    return path
