"""The video exports, each one pass of the overlay renderer (`worker.overlay.write_overlay`: frames decoded
again, paired with their mask lines, encoded with their source times) with its own drawing:

    overlay-outline.mp4   each class in its colour (binary: red), blended, with a 1-pixel outline at full colour
    side-by-side.mp4      the original frame | the overlay, one picture twice as wide
    alpha.webm            VP9 with an alpha channel (yuva420p): the frame where the mask is, transparent elsewhere
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from worker.core.media.media_info import MediaInfo, MediaLimits
from worker.core.media.probe import FFMPEG
from worker.masks import record_labels
from worker.media.ffmpeg_input import input_url, media_input_args, timeline_filter
from worker.overlay import SOUNDING_COLOUR, blend, class_palette, drawn_frame, write_overlay


def outline(labels: np.ndarray) -> np.ndarray:
    """bool [h, w]: the pixels of a region (label > 0) that touch another label (4-neighbourhood) or the edge."""
    padded = np.pad(labels, 1, mode="constant", constant_values=0)
    centre = padded[1:-1, 1:-1]
    differs = ((padded[:-2, 1:-1] != centre) | (padded[2:, 1:-1] != centre)
               | (padded[1:-1, :-2] != centre) | (padded[1:-1, 2:] != centre))
    return differs & (centre > 0)


def _fitted(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if mask.shape == shape[:2]:
        return mask
    return np.asarray(Image.fromarray(mask).resize((shape[1], shape[0]), Image.NEAREST))


def _palette(num_classes: int) -> np.ndarray:
    return class_palette(num_classes) if num_classes > 1 else np.array([[0, 0, 0], SOUNDING_COLOUR], np.float32)


def outlined_frame(frame: np.ndarray, record: dict[str, Any], palette: np.ndarray) -> np.ndarray:
    """frame uint8 [h, w, 3] + its record -> the blended picture with outlines, uint8 [h, w, 3]."""
    labels = _fitted(record_labels(record), frame.shape)
    if "segments" not in record:
        labels = (labels > 0).astype(np.uint8)
    out = blend(frame, labels, palette if "segments" in record else None)
    edge = outline(labels)
    out[edge] = palette[labels[edge]].astype(np.uint8)
    return out


def write_outline(info: MediaInfo, masks_path: Path, out: Path, *, fps: float | None, num_classes: int,
                  limits: MediaLimits, hold: bool = False) -> Path:
    palette = _palette(num_classes)
    return write_overlay(info, masks_path, out, fps=fps, num_classes=num_classes, limits=limits, hold=hold,
                         draw=lambda frame, record, size: outlined_frame(frame, record, palette))


def write_side_by_side(info: MediaInfo, masks_path: Path, out: Path, *, fps: float | None, num_classes: int,
                       limits: MediaLimits, hold: bool = False) -> Path:
    palette = None if num_classes == 1 else class_palette(num_classes)

    def draw(frame: np.ndarray, record: dict[str, Any], size: tuple[int, int] | None) -> np.ndarray:
        plain = frame if size is None or size == frame.shape[:2] else drawn_frame(
            frame, np.zeros(size, np.uint8), size, None)
        return np.concatenate([plain, drawn_frame(frame, record_labels(record), size, palette)], axis=1)

    return write_overlay(info, masks_path, out, fps=fps, num_classes=num_classes, limits=limits, hold=hold,
                         draw=draw, out_size=(info.height, 2 * info.width))


def alpha_encoder_command(info: MediaInfo, out: Path) -> list[str]:
    """NUT rgba frames on stdin + the upload's audio track -> VP9 with alpha (yuva420p) + Opus in WebM; the same
    timestamps rule as `worker.overlay.encoder_command`."""
    audio: list[str] = []
    if info.audio_stream_index is not None:
        end_s = info.start_time_s + (info.duration_s or 0.0) + 1.0
        audio = ["-map", f"1:{info.audio_stream_index}", "-af", f"{timeline_filter(info)},atrim=end={end_s:.6f}",
                 "-c:a", "libopus", "-b:a", "96k"]
    return [
        FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "nut", "-i", "pipe:0",
        *media_input_args(info), "-i", input_url(info),
        "-map", "0:v:0", *audio,
        "-fps_mode", "passthrough",
        "-c:v", "libvpx-vp9", "-pix_fmt", "yuva420p", "-b:v", "0", "-crf", "34", "-deadline", "realtime",
        "-cpu-used", "8", "-auto-alt-ref", "0", "-f", "webm", str(out),
    ]  # fmt: skip


def write_alpha(info: MediaInfo, masks_path: Path, out: Path, *, fps: float | None, num_classes: int,
                limits: MediaLimits, hold: bool = False) -> Path:
    def draw(frame: np.ndarray, record: dict[str, Any], size: tuple[int, int] | None) -> np.ndarray:
        alpha = (_fitted(record_labels(record), frame.shape) > 0).astype(np.uint8) * 255
        return np.dstack([frame, alpha])

    return write_overlay(info, masks_path, out, fps=fps, num_classes=num_classes, limits=limits, hold=hold,
                         draw=draw, pix_fmt="rgba", encoder=alpha_encoder_command)
