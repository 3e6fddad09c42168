"""`waveform.json`: the sound as peaks for a timeline under the player, with the frames' times.

    {"duration_s", "sample_rate_hz", "peaks_per_second", "peaks": [0..1 ...], "frames_pts_s": [...]}

`peaks[i]` is the largest absolute sample in [i, i + 1) / peaks_per_second seconds of the track the masks
were made with (mono, on the frames' timeline: `worker.media.audio.read_audio`), so 1.0 is full scale.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from worker.core.exports import PEAKS_PER_SECOND
from worker.core.media.media_info import MediaInfo, MediaLimits
from worker.masks import read_mask_lines
from worker.media.audio import read_audio

SAMPLE_RATE = 16_000


def peaks(wave: np.ndarray, sample_rate: int, per_second: int) -> list[float]:
    """float32 samples [n] -> ceil(n / (sample_rate / per_second)) peaks in 0..1, 4 decimals."""
    step = sample_rate // per_second
    count = math.ceil(len(wave) / step)
    padded = np.zeros(count * step, dtype=np.float32)
    padded[: len(wave)] = np.abs(wave)
    return [round(float(v), 4) for v in np.clip(padded.reshape(count, step).max(axis=1), 0.0, 1.0)]


def write_waveform(info: MediaInfo, masks_path: Path, out: Path, *, limits: MediaLimits) -> Path:
    wave = read_audio(info, sample_rate=SAMPLE_RATE, timeout_s=limits.decode_timeout(info.duration_s), limits=limits)
    document = {"duration_s": round(len(wave) / SAMPLE_RATE, 6), "sample_rate_hz": SAMPLE_RATE,
                "peaks_per_second": PEAKS_PER_SECOND, "peaks": peaks(wave, SAMPLE_RATE, PEAKS_PER_SECOND),
                "frames_pts_s": [r["pts_s"] for r in read_mask_lines(masks_path)]}
    out.write_text(json.dumps(document, separators=(",", ":")), encoding="utf-8")
    return out
