"""What a probed video is (`MediaInfo`) and what we accept (`MediaLimits`): plain values shared by the API,
the decoder and the worker. Filled in by `worker.core.media.probe`; torch-free, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class MediaLimits:
    """What we accept and how long ffmpeg may take; one object shared by the API and the worker.

    The decode deadline grows with the video: `decode_timeout_base_s + decode_timeout_per_media_s ×
    duration` (a 10 s clip gets 160 s, the 600 s maximum gets 6060 s). `max_fps` bounds the total work:
    a file may hold at most `max_duration_s × max_fps` frames (`max_frames`), checked on the packets by
    the probe and again on the decoded frames, where passing it is `too_long`, never a silent cut.
    """

    max_duration_s: float = 600.0
    max_pixels: int = 3840 * 2160
    probe_timeout_s: float = 15.0
    scan_timeout_s: float = 60.0
    decode_timeout_base_s: float = 60.0
    decode_timeout_per_media_s: float = 10.0
    max_fps: float = 240.0

    def __post_init__(self) -> None:
        for name in ("max_duration_s", "max_pixels", "probe_timeout_s", "scan_timeout_s", "decode_timeout_base_s",
                     "max_fps"):
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

    def max_output_frames(self, fps: float | None) -> int:
        """The most frames one decode may yield: `max_frames`, or with resampling to `fps` frames/s,
        `max_duration_s` worth of them (+1: the first frame sits at time 0)."""
        if fps is None:
            return self.max_frames
        return math.ceil(self.max_duration_s * fps) + 1


@dataclass(frozen=True)
class MediaInfo:
    """What the probe found, in the terms the decoder and the API need.

    * `width`/`height`: the DISPLAY size in stored pixels, i.e. after the rotation metadata is applied
      (swapped for 90/270). `coded_width`/`coded_height` are the size the frames are stored at.
      Masks have this size.
    * `sample_aspect_ratio`: (num, den) width of a pixel over its height, in display orientation (1:1 for
      square pixels; an anamorphic DVD frame of 720x576 shown at 16:9 has 64:45). A player shows the video
      at `display_aspect_ratio` = width × num / (height × den).
    * `rotation`: clockwise degrees (0/90/180/270) a player turns the stored frame to display it; the same
      sense as the legacy `rotate` tag (an upright phone video is 90). Angles are rounded to a right angle;
      mirroring in a display matrix is ignored.
    * `duration_s`: the video stream's own span from its packets (first frame's start to last frame's
      end), None only when no packet carries a timestamp. `start_time_s`: when the video stream starts
      on the decode timeline, which is 0 at the container start (frame timestamps and audio samples from
      `worker.media.decode` use that timeline).
    * `num_frames`: the video stream's packet count (one packet is one frame in every container we
      accept; the decoder's count is the truth). `fps`: num_frames / duration_s, the true average rate
      (for a VFR file the header's rate is a guess); else the header's rate; 0.0 when unknown.
    * `origin_s`: the container start in the streams' own timestamps: the zero of the decode timeline.
      The decoder and the audio reader run ffmpeg with `-copyts` and subtract it themselves, because
      ffmpeg's own shift is per process and, for MPEG-TS/PS (formats with timestamp discontinuities),
      follows the first packet of whichever stream the process reads: audio that starts 1 s after the
      video would otherwise be moved to 0 and heard 1 s early.
    * `video_stream_index`/`audio_stream_index`: absolute stream indexes of the streams in use, so the
      decoder reads exactly the streams that were probed. `audio_tracks`: how many audio streams with
      packets the file has; `audio_language`: the used track's language tag, if any.
    * `timeline_restarts`: how often the video's clock went back to an earlier time (two recordings in one
      file); the decoders continue such a part after the one before it, and `duration_s` counts them all.
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
    audio_tracks: int = 0
    audio_language: str | None = None
    sample_aspect_ratio: tuple[int, int] = (1, 1)
    origin_s: float = 0.0
    timeline_restarts: int = 0

    @property
    def display_aspect_ratio(self) -> float:
        """Width over height of the picture as a player shows it (pixel aspect applied)."""
        num, den = self.sample_aspect_ratio
        return self.width * num / (self.height * den)

    def expected_frames(self, fps: float | None = None) -> int | None:
        """How many frames a decode yields: every frame (`num_frames`), or, resampled to `fps` frames/s,
        one per 1/fps seconds of the span, at least the first (see `worker.media.decode`). An estimate
        for progress; None when unknown."""
        if fps is None:
            return self.num_frames
        if self.duration_s is None:
            return None
        return max(1, math.ceil(self.duration_s * fps - 1e-6))

    def summary(self) -> dict[str, Any]:
        """The public description of the video (a job's `video`): size, rate, duration, geometry, the
        container, and which audio track is heard. No server-side path."""
        return {
            "width": self.width, "height": self.height, "fps": self.fps, "duration_s": self.duration_s,
            "frames": self.num_frames, "start_time_s": self.start_time_s, "rotation": self.rotation,
            "sample_aspect_ratio": list(self.sample_aspect_ratio),
            "display_aspect_ratio": round(self.display_aspect_ratio, 6),
            "container": self.demuxer, "video_codec": self.video_codec, "video_stream_index": self.video_stream_index,
            "timeline_restarts": self.timeline_restarts,
            "audio": None if self.audio_stream_index is None else {
                "stream_index": self.audio_stream_index, "codec": self.audio_codec,
                "sample_rate": self.audio_sample_rate, "channels": self.audio_channels,
                "language": self.audio_language, "tracks": self.audio_tracks,
            },
        }  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field (`avs segment --json` output)."""
        data = asdict(self)
        data["sample_aspect_ratio"] = list(self.sample_aspect_ratio)
        data["display_aspect_ratio"] = round(self.display_aspect_ratio, 6)
        return data
