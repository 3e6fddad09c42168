"""Frames to label and the sound each one hears, decoded exactly as serving decodes them (`avs distill`).

A distilled student must be trained on what the service will feed it, so this module reuses the offline
pipeline's pieces rather than a loader of its own (`worker.pipeline`):

* frames: `FrameReader` (one ffmpeg pipe, scaled to the model's square input by ffmpeg's bilinear filter,
  rotation from the probe), resampled to `SamplingConfig.fps` by ffmpeg's `fps` filter, as
  `avs segment --fps` does;
* sound: `read_audio` (16 kHz mono on the frames' timeline), cut into the 0.96 s VGGish examples of
  `waveform_to_examples(pad_end=True)` that `AVSPredictor.audio_embeddings` encodes, plus one example of
  silence for frames after the sound ends;
* pairing: `worker.engine_jobs.audio_windows_for`, the offline alignment rule (frame at t hears window
  floor(t / 0.96)).

Frames to label, not every frame: `fps` frames per second of video (default 2), at most `max_frames` per
video (default 16), the cap taken as evenly spaced frames over the whole video so a long video is covered
from start to end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.modeling.audio_frontend import SAMPLE_RATE, waveform_to_examples
from worker.core.contracts import ErrorCode
from worker.core.errors import MediaError
from worker.core.media.media_info import MediaLimits
from worker.core.media.probe import probe_media
from worker.engine_jobs import audio_windows_for
from worker.media.audio import read_audio
from worker.media.decode import FrameReader

DEFAULT_SAMPLE_FPS = 2.0
DEFAULT_MAX_FRAMES = 16


@dataclass(frozen=True)
class SamplingConfig:
    """Which frames of a video are labelled: `fps` per second of video, at most `max_frames` per video."""

    fps: float = DEFAULT_SAMPLE_FPS
    max_frames: int = DEFAULT_MAX_FRAMES

    def __post_init__(self) -> None:
        """ValueError for a rate that is not positive or a cap below 1."""
        if not self.fps > 0:
            raise ValueError(f"sample fps must be > 0, got {self.fps!r}")
        if self.max_frames < 1:
            raise ValueError(f"max frames per video must be >= 1, got {self.max_frames!r}")

    def to_dict(self) -> dict[str, Any]:
        """{"fps", "max_frames"}: what the teacher cache's key records."""
        return asdict(self)


@dataclass
class DecodedClip:
    """The sampled frames of one video and their sound.

    `frames`: {side S: uint8 [n, S, S, 3] RGB} (one entry per model input size asked for).
    `log_mel`: float32 [n, 1, 96, 64], the VGGish example each frame hears (silence past the sound's end).
    `pts_s`: n presentation times in seconds. `decoded`: frames decoded before the cap was applied.
    """

    frames: dict[int, np.ndarray]
    log_mel: np.ndarray
    pts_s: np.ndarray
    decoded: int
    video: dict[str, Any] = field(default_factory=dict)


def evenly_spaced(count: int, cap: int) -> np.ndarray:
    """Indices of at most `cap` of `count` items, spread evenly from the first to the last (all when
    count <= cap). Returns int64 [min(count, cap)]."""
    if count <= cap:
        return np.arange(count, dtype=np.int64)
    if cap == 1:
        return np.zeros(1, dtype=np.int64)
    return np.round(np.linspace(0, count - 1, cap)).astype(np.int64)


def decode_for_distill(path: str | Path, sizes: Sequence[int], sampling: SamplingConfig,
                       limits: MediaLimits | None = None) -> DecodedClip:
    """Decode `path` at each square side in `sizes`, sample its frames and pair each with its sound.

    Raises MediaError (stable codes of `worker.core.errors`: not_media, no_audio_track, corrupt_media, ...)
    for a file the service would refuse, with the file named.
    """
    limits = limits or MediaLimits()
    info = probe_media(path, limits, require_audio=True)
    frames: dict[int, np.ndarray] = {}
    pts: list[float] = []
    for side in dict.fromkeys(int(s) for s in sizes):
        reader = FrameReader(info, size=(side, side), fps=sampling.fps, limits=limits)
        batches = list(reader.iter_batches(32))
        if not batches:
            raise MediaError(ErrorCode.CORRUPT_MEDIA, f"{Path(path).name}: the video stream has no decodable frame")
        frames[side] = np.concatenate([b.frames for b in batches])
        these = [t for b in batches for t in b.pts_s]
        if pts and len(these) != len(pts):
            raise MediaError(ErrorCode.CORRUPT_MEDIA, f"{Path(path).name}: two decodes gave {len(pts)} and "
                                                      f"{len(these)} frames")
        pts = pts or these
    keep = evenly_spaced(len(pts), sampling.max_frames)
    wave = read_audio(info, sample_rate=SAMPLE_RATE, limits=limits)
    wave_t = torch.as_tensor(wave if wave.size else np.zeros(1, dtype=np.float32))
    examples = waveform_to_examples(wave_t, pad_end=True)  # [M, 1, 96, 64], as AVSPredictor.audio_embeddings
    silence = waveform_to_examples(torch.zeros(1), pad_end=True)[:1]  # the row past the end: silence
    table = torch.cat([examples, silence]).numpy()
    kept_pts = [pts[i] for i in keep]
    windows = audio_windows_for(kept_pts, examples.shape[0])
    return DecodedClip(frames={s: f[keep] for s, f in frames.items()}, log_mel=table[windows].astype(np.float32),
                       pts_s=np.asarray(kept_pts, dtype=np.float64), decoded=len(pts), video=info.to_dict())
