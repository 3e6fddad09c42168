"""Probe an uploaded file with ffprobe, refuse what we will not process, describe the rest.

Every upload is hostile input to a large C codebase. The rules, each measured on ffmpeg 5.1:

* **Demuxer allow-list, enforced inside ffprobe.** `-protocol_whitelist file` is not enough: an HLS
  playlist, an ffconcat list or a DASH manifest is a local file that makes the demuxer open *other*
  local files (or wait forever on a FIFO). ffprobe therefore gets `-format_whitelist` with the demuxers
  below; libavformat checks it right after probing and before the demuxer reads its header, so a
  playlist is refused before anything it names is opened (tests prove it with a FIFO as the target).
  Allowed (ffprobe `format_name` contains one of): `mov` (mp4/mov/m4a/3gp), `matroska` (mkv/webm),
  `avi`, `mpegts` (.ts/.m2ts), `flv`. None of them follows references to other files: mov's external
  data references are off by default (`enable_drefs=0`) and we never turn them on. Never allowed: hls,
  concat, dash, sdp, image2, tty, lavfi, data and every other demuxer.
* **not_media vs corrupt_media.** A file ffprobe cannot open is `corrupt_media` when its first bytes carry
  the signature of a container we accept (`ftyp`/`moov`/`mdat`/... box, EBML, `RIFF....AVI `, MPEG-TS
  sync bytes, `FLV`): it is the right kind of file, damaged (typically an interrupted upload). Anything else
  ffprobe cannot open, and anything it opens with a demuxer outside the allow-list, is `not_media`.
  So an .mp3 or .wav upload is `not_media` (not a container we accept), while an audio-only .m4a, which
  is an accepted container without video, is `no_video_stream`.
* **What counts as video.** A probe can exit 0 and list no streams; cover art (`attached_pic`) and
  timed thumbnails are pictures, not video. Either way: `no_video_stream`.
* **Duration.** The video stream's own duration, never the container's (which can include a large start
  offset or a longer audio track). When no duration is known at all we do not refuse: the decoder caps the
  frames instead (see `worker.media.decode`). The video's start offset from the container start is
  reported as `start_time_s`; an offset longer than the duration limit is refused too, because audio has
  to be padded with silence up to it.
* **Deadline.** ffprobe runs under `run_bounded` with `MediaLimits.probe_timeout_s`: `media_timeout`.

This module is torch-free (the API process probes uploads) and imports nothing from `app`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from worker.contracts import ErrorCode
from worker.errors import MediaError
from worker.media.process import run_bounded

FFPROBE = "ffprobe"
FFMPEG = "ffmpeg"

ALLOWED_DEMUXERS: tuple[str, ...] = ("mov", "matroska", "avi", "mpegts", "flv")
"""Demuxers we open, by libavformat name; see the module docstring for why these and no others."""

FORMAT_WHITELIST = ",".join(ALLOWED_DEMUXERS)
"""Value of `-format_whitelist` for every ffprobe/ffmpeg call on an upload."""

_MOV_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid")


@dataclass(frozen=True)
class MediaLimits:
    """What we accept and how long ffmpeg may take; one object shared by the API and the worker.

    The decode deadline grows with the video: `decode_timeout_base_s + decode_timeout_per_media_s ×
    duration` (a 10 s clip gets 160 s, the 600 s maximum gets 6060 s). `max_fps` bounds the total work:
    a file may hold at most `max_duration_s × max_fps` frames, and a decoder that does not know the
    duration stops there.
    """

    max_duration_s: float = 600.0
    max_pixels: int = 3840 * 2160
    probe_timeout_s: float = 15.0
    decode_timeout_base_s: float = 60.0
    decode_timeout_per_media_s: float = 10.0
    max_fps: float = 240.0

    def __post_init__(self) -> None:
        for name in ("max_duration_s", "max_pixels", "probe_timeout_s", "decode_timeout_base_s", "max_fps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"MediaLimits.{name} must be positive, got {getattr(self, name)!r}")
        if self.decode_timeout_per_media_s < 0:
            raise ValueError("MediaLimits.decode_timeout_per_media_s must not be negative")

    def decode_timeout(self, duration_s: float | None) -> float:
        """Deadline in seconds for decoding a video of `duration_s` (the maximum when unknown)."""
        if duration_s is None or not math.isfinite(duration_s) or duration_s < 0:
            duration_s = self.max_duration_s
        return self.decode_timeout_base_s + self.decode_timeout_per_media_s * duration_s

    @property
    def max_frames(self) -> int:
        """The most frames one file may hold: `max_duration_s × max_fps`."""
        return math.ceil(self.max_duration_s * self.max_fps)


@dataclass(frozen=True)
class MediaInfo:
    """What the probe found, in the terms the decoder and the API need.

    * `width`/`height`: the DISPLAY size, i.e. after the rotation metadata is applied (swapped for 90/270).
      `coded_width`/`coded_height` are the size the frames are stored at (before rotation).
    * `rotation`: clockwise degrees (0/90/180/270) a player turns the stored frame to display it; the same
      sense as the legacy `rotate` tag (an upright phone video is 90). Angles are rounded to a right angle;
      mirroring in a display matrix is ignored.
    * `fps`: the average frame rate (for VFR files, frames / duration); 0.0 when ffprobe knows none.
    * `duration_s`: the video stream's duration, None when unknown. `start_time_s`: when the video stream
      starts on the decode timeline, which is 0 at the container start (frame timestamps and audio samples
      from `worker.media.decode` use that timeline).
    * `num_frames`: the container's frame count, else round(duration × fps), else None. An estimate: the
      decoder's count is the truth.
    * `video_stream_index`/`audio_stream_index`: absolute stream indexes, so the decoder reads exactly the
      streams that were probed (not, say, a cover-art picture listed first).
    """

    path: str
    format_name: str
    demuxer: str
    width: int
    height: int
    coded_width: int
    coded_height: int
    rotation: int
    fps: float
    duration_s: float | None
    start_time_s: float
    num_frames: int | None
    video_codec: str
    has_audio: bool
    audio_codec: str | None
    audio_sample_rate: int | None
    audio_channels: int | None
    video_stream_index: int = 0
    audio_stream_index: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field (job records, `--json` output)."""
        return asdict(self)


# ------------------------------------------------------------------------------- parsing helpers
def _float(value: Any) -> float | None:
    """ffprobe numbers arrive as strings, sometimes "N/A"; None for anything that is not a finite number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    number = _float(value)
    if number is None or number != int(number):
        return None
    return int(number)


def _rate(value: Any) -> float | None:
    """"30000/1001" -> 29.97; None for "0/0", missing or nonsense."""
    if not isinstance(value, str):
        return None
    num, _, den = value.partition("/")
    numerator, denominator = _float(num), _float(den or "1")
    if numerator is None or denominator is None or numerator <= 0 or denominator <= 0:
        return None
    return numerator / denominator


_HMS = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)\s*$")


def _hms(value: Any) -> float | None:
    """Matroska's per-track `DURATION` tag, "00:00:02.000000000", in seconds."""
    if not isinstance(value, str):
        return None
    match = _HMS.match(value)
    if match is None:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _tag(stream: dict[str, Any], name: str) -> Any:
    tags = stream.get("tags")
    if not isinstance(tags, dict):
        return None
    for key, value in tags.items():
        if isinstance(key, str) and key.lower() == name.lower():
            return value
    return None


def demuxer_for(format_name: str) -> str | None:
    """The allowed demuxer to force with `-f` for ffprobe's `format_name`, or None if none is allowed."""
    for name in format_name.split(","):
        if name.strip() in ALLOWED_DEMUXERS:
            return name.strip()
    return None


def sniff_container(path: str | Path) -> str | None:
    """Guess the allowed container from the file's first bytes (its magic), without ffmpeg.

    Used only to classify files ffprobe cannot open: a recognised signature means "right kind of file,
    damaged" (corrupt_media), anything else "not a video we accept" (not_media).
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return None
    if len(head) >= 8 and head[4:8] in _MOV_BOXES:
        return "mov"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if head[:4] == b"RIFF" and head[8:12] in (b"AVI ", b"AVIX", b"AVI\x19"):
        return "avi"
    if head[:3] == b"FLV":
        return "flv"
    if len(head) >= 377 and head[0] == head[188] == head[376] == 0x47:
        return "mpegts"
    if len(head) >= 389 and head[4] == head[196] == head[388] == 0x47:  # M2TS: 4-byte prefix per packet
        return "mpegts"
    return None


_LOG_CONTEXT = re.compile(r"\[([\w,-]+) @ 0x[0-9a-f]+\]\s*")
_LEVEL_TAG = re.compile(r"\[(?:panic|fatal|error|warning|info|verbose|debug|trace)\]\s*")


def ffmpeg_message(stderr: str, path: str | Path, fallback: str) -> str:
    """The last (up to two) lines ffmpeg printed, fit for a user: the server-side path is replaced by the
    file's name, severity tags are dropped and log contexts like "[h264 @ 0x55d0...]" become "h264: "."""
    resolved, name = str(Path(path).resolve()), Path(path).name
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return fallback
    # The last line is often generic ("Invalid data found when processing input"); the one before it
    # usually says what was wrong ("moov atom not found").
    picked = list(dict.fromkeys(lines[-2:]))
    text = "; ".join(picked).replace(f"file:{resolved}", name).replace(resolved, name)
    text = _LEVEL_TAG.sub("", text)
    return _LOG_CONTEXT.sub(lambda m: "" if m.group(1) == "NULL" else f"{m.group(1)}: ", text)[:500]


def _refused_format(stderr: str) -> str | None:
    """The demuxer ffmpeg detected before `-format_whitelist` refused it ("hls", "concat", ...)."""
    match = re.search(r"\[([\w,-]+) @ 0x[0-9a-f]+\][^\n]*not on whitelist", stderr)
    return match.group(1) if match else None


def _rotation_cw(stream: dict[str, Any]) -> int:
    """Clockwise display rotation, normalised to 0/90/180/270.

    The Display Matrix side data (what ffmpeg 5.1 itself honours) wins; its `rotation` is counter-clockwise,
    so it is negated. The legacy `rotate` tag (clockwise) is the fallback for files without a matrix; the
    decoder applies the rotation itself from this value, so both sources give upright frames.
    """
    degrees_cw: float | None = None
    side_data = stream.get("side_data_list")
    if isinstance(side_data, list):
        for entry in side_data:
            if isinstance(entry, dict) and entry.get("side_data_type") == "Display Matrix":
                ccw = _float(entry.get("rotation"))
                if ccw is not None:
                    degrees_cw = -ccw
                    break
    if degrees_cw is None:
        degrees_cw = _float(_tag(stream, "rotate"))
    if degrees_cw is None:
        return 0
    return round(degrees_cw / 90.0) % 4 * 90


def _is_picture(stream: dict[str, Any]) -> bool:
    disposition = stream.get("disposition")
    if not isinstance(disposition, dict):
        return False
    return bool(disposition.get("attached_pic")) or bool(disposition.get("timed_thumbnails"))


# ------------------------------------------------------------------------------------------ probe
def ffprobe_command(path: str | Path) -> list[str]:
    """The exact ffprobe call: file protocol only, allowed demuxers only, JSON out.

    The input is given as `file:<absolute path>` so that no file name is ever read as an option or as
    another protocol (`concat:`, `pipe:`, ...).
    """
    return [
        FFPROBE, "-hide_banner", "-v", "error",
        "-protocol_whitelist", "file",
        "-format_whitelist", FORMAT_WHITELIST,
        "-print_format", "json", "-show_format", "-show_streams",
        "-i", f"file:{Path(path).resolve()}",
    ]  # fmt: skip


def probe_media(
    path: str | Path,
    limits: MediaLimits = MediaLimits(),  # frozen, so one shared default instance is safe
    *,
    require_audio: bool = True,
) -> MediaInfo:
    """Probe `path` and return its `MediaInfo`, or raise `MediaError` with the reason it is refused.

    Refusals, in the order they are checked: not a regular file (missing, a directory, a FIFO) or empty ->
    `not_media`; probe deadline -> `media_timeout`; demuxer not allowed, or not openable and without the
    signature of an accepted container -> `not_media`; an accepted container that does not open ->
    `corrupt_media`; no video stream -> `no_video_stream`; no audio stream when `require_audio` ->
    `no_audio_track`; width × height over the limit -> `too_many_pixels`; video duration (or its start
    offset, or its frame count over `max_duration_s × max_fps`) over the limit -> `too_long`.
    """
    path = Path(path)
    if not path.is_file():
        # Also refuses FIFOs and devices, which would block ffprobe until its deadline.
        raise MediaError(ErrorCode.NOT_MEDIA, f"{path.name}: not a regular file")
    if path.stat().st_size == 0:
        raise MediaError(ErrorCode.NOT_MEDIA, f"{path.name}: the file is empty")

    result = run_bounded(ffprobe_command(path), timeout_s=limits.probe_timeout_s)
    if result.timed_out:
        raise MediaError(
            ErrorCode.MEDIA_TIMEOUT, f"{path.name}: probing did not finish within {limits.probe_timeout_s:g} s"
        )
    if "not on whitelist" in result.stderr:
        detected = _refused_format(result.stderr) or "unknown"
        raise MediaError(
            ErrorCode.NOT_MEDIA,
            f"{path.name}: format {detected!r} is not accepted (allowed: mp4/mov, mkv/webm, avi, mpeg-ts, flv)",
        )
    data: dict[str, Any] = {}
    if result.returncode == 0:
        try:
            parsed = json.loads(result.stdout.decode("utf-8", errors="replace") or "{}")
            data = parsed if isinstance(parsed, dict) else {}
        except json.JSONDecodeError:
            data = {}
    fmt = data.get("format") if isinstance(data.get("format"), dict) else None
    format_name = fmt.get("format_name") if fmt else None
    if result.returncode != 0 or not isinstance(format_name, str):
        reason = ffmpeg_message(result.stderr, path, "ffprobe could not read the file")
        if sniff_container(path) is not None:
            raise MediaError(ErrorCode.CORRUPT_MEDIA, f"{path.name}: damaged media file: {reason}")
        raise MediaError(ErrorCode.NOT_MEDIA, f"{path.name}: not a media file: {reason}")
    demuxer = demuxer_for(format_name)
    if demuxer is None:  # defence in depth: -format_whitelist already refused it
        raise MediaError(ErrorCode.NOT_MEDIA, f"{path.name}: container {format_name!r} not accepted")
    assert fmt is not None
    streams = [s for s in data.get("streams") or [] if isinstance(s, dict)]
    return _media_info(path, fmt, format_name, demuxer, streams, limits, require_audio)


def _media_info(
    path: Path,
    fmt: dict[str, Any],
    format_name: str,
    demuxer: str,
    streams: list[dict[str, Any]],
    limits: MediaLimits,
    require_audio: bool,
) -> MediaInfo:
    videos = [s for s in streams if s.get("codec_type") == "video" and not _is_picture(s)]
    audios = [s for s in streams if s.get("codec_type") == "audio"]
    if not videos:
        pictures = " (only cover art)" if any(s.get("codec_type") == "video" for s in streams) else ""
        raise MediaError(ErrorCode.NO_VIDEO_STREAM, f"{path.name}: no video stream{pictures}")
    video = videos[0]
    audio = audios[0] if audios else None
    if audio is None and require_audio:
        raise MediaError(ErrorCode.NO_AUDIO_TRACK, f"{path.name}: no audio track (the model needs sound)")

    coded_width, coded_height = _int(video.get("width")) or 0, _int(video.get("height")) or 0
    if coded_width <= 0 or coded_height <= 0:
        raise MediaError(ErrorCode.CORRUPT_MEDIA, f"{path.name}: the video stream has no frame size")
    video_codec = video.get("codec_name")
    if not isinstance(video_codec, str) or not video_codec:
        raise MediaError(ErrorCode.CORRUPT_MEDIA, f"{path.name}: unknown video codec")
    rotation = _rotation_cw(video)
    width, height = (coded_height, coded_width) if rotation in (90, 270) else (coded_width, coded_height)
    if width * height > limits.max_pixels:
        raise MediaError(
            ErrorCode.TOO_MANY_PIXELS,
            f"{path.name}: {width}x{height} = {width * height} pixels per frame, the limit is {limits.max_pixels}",
        )

    # Timeline: ffmpeg puts 0 at the container start (its start_time, else the earliest stream start).
    stream_starts = [t for t in (_float(s.get("start_time")) for s in streams) if t is not None]
    container_start = _float(fmt.get("start_time"))
    if container_start is None:
        container_start = min(stream_starts, default=0.0)
    video_start = _float(video.get("start_time"))
    start_time_s = max(0.0, video_start - container_start) if video_start is not None else 0.0

    duration_s = _float(video.get("duration"))
    if duration_s is None:
        duration_s = _hms(_tag(video, "DURATION"))
    if duration_s is None:
        container_duration = _float(fmt.get("duration"))
        if container_duration is not None:
            duration_s = container_duration - start_time_s
    if duration_s is not None and duration_s <= 0:
        duration_s = None

    fps = _rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate")) or 0.0
    num_frames = _int(video.get("nb_frames"))
    if num_frames is None or num_frames <= 0:
        num_frames = round(duration_s * fps) if duration_s is not None and fps > 0 else None

    if duration_s is not None and duration_s > limits.max_duration_s:
        raise MediaError(
            ErrorCode.TOO_LONG,
            f"{path.name}: the video lasts {duration_s:.1f} s, the limit is {limits.max_duration_s:g} s",
        )
    if start_time_s > limits.max_duration_s:
        raise MediaError(
            ErrorCode.TOO_LONG,
            f"{path.name}: the video starts {start_time_s:.1f} s into the file, the limit is "
            f"{limits.max_duration_s:g} s",
        )
    if num_frames is not None and num_frames > limits.max_frames:
        raise MediaError(
            ErrorCode.TOO_LONG,
            f"{path.name}: {num_frames} frames, the limit is {limits.max_frames} "
            f"({limits.max_duration_s:g} s at {limits.max_fps:g} frames/s)",
        )

    return MediaInfo(
        path=str(path.resolve()),
        format_name=format_name,
        demuxer=demuxer,
        width=width,
        height=height,
        coded_width=coded_width,
        coded_height=coded_height,
        rotation=rotation,
        fps=fps,
        duration_s=duration_s,
        start_time_s=start_time_s,
        num_frames=num_frames,
        video_codec=video_codec,
        has_audio=audio is not None,
        audio_codec=(audio.get("codec_name") or None) if audio is not None else None,
        audio_sample_rate=_int(audio.get("sample_rate")) if audio is not None else None,
        audio_channels=_int(audio.get("channels")) if audio is not None else None,
        video_stream_index=_int(video.get("index")) or 0,
        audio_stream_index=_int(audio.get("index")) if audio is not None else None,
    )
