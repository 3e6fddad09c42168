"""`preview.mp4`: the upload as a browser plays it, for the files a browser cannot decode (AVI, MPEG-TS, HEVC,
...; the rule is `worker.core.media.browser_safe`).

The same pass as the overlay (`worker.overlay.write_overlay`) with nothing drawn: the frames are decoded
again at the video's display size (rotation applied, pixel aspect ratio kept), each is paired with its
mask line (the pairing checks frame index and time), and each is encoded with its source time
(`-fps_mode passthrough`), moved back by the first mask line's `pts_s` (t0; the sound with it). So the preview
holds one frame per mask line (a live recording: also the frames the session skipped, each after its mask's),
mask N's frame at media time `pts_s` N - t0 exactly and the first frame at 0 s, in H.264 (yuv420p, even
size) + AAC with `+faststart`: the page draws mask N over the frame the browser shows at `pts_s` N - t0,
with no guess at where the file's timeline starts (the job's `media.preview_start_s` says 0).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from worker.core.media.media_info import MediaInfo, MediaLimits
from worker.overlay import drawn_frame, write_overlay

PREVIEW = "preview.mp4"


def _plain(frame: np.ndarray, record: dict[str, Any], size: tuple[int, int] | None) -> np.ndarray:
    """The frame as it is (a frame of another shape than the video's first is put back in its own shape)."""
    if size is None or size == frame.shape[:2]:
        return frame
    return drawn_frame(frame, np.zeros(size, dtype=np.uint8), size, None)


def write_preview(info: MediaInfo, masks_path: Path, out_path: Path, *, fps: float | None, limits: MediaLimits,
                  fence: Callable[[], AbstractContextManager[Any]] = nullcontext, hold: bool = False) -> Path:
    """Write the browser-safe preview of `info`'s file to `out_path`, one frame per line of `masks_path` (made at
    `fps`; None: every decoded frame). `hold`: a live recording's masks skip frames; the preview then has every
    frame from the first mask on (`write_overlay`). Raises `MediaError` like `write_overlay`; nothing is left
    on failure."""
    return write_overlay(info, masks_path, out_path, fps=fps, num_classes=1, limits=limits, fence=fence, draw=_plain,
                         hold=hold, zero=True)
