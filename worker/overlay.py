"""`overlay.mp4`: the masks blended onto the original frames, with the original sound.

A second streaming pass after segmentation: the original frames are decoded at the video's display
size one at a time, each is blended with its mask read from `masks.ndjson` (also streamed), and
written to an H.264 encoder's stdin. Memory holds one frame, whatever the video's length.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np

from worker.contracts import ErrorCode
from worker.errors import MediaError
from worker.masks import decode_rle, read_mask_lines
from worker.media.decode import FrameReader, input_url, media_input_args
from worker.media.probe import MediaInfo, MediaLimits
from worker.media.process import BoundedProcess

ALPHA = 0.5  # mask opacity
SOUNDING_COLOUR = np.array([255, 48, 48], dtype=np.float32)  # binary masks: red


def class_palette(num_classes: int) -> np.ndarray:
    """[num_classes, 3] distinct colours: hues a golden angle apart; class 0 (background) is never drawn."""
    hues = [(i * 0.618033988749895) % 1.0 for i in range(num_classes)]
    return np.array([colorsys.hsv_to_rgb(h, 0.85, 1.0) for h in hues], dtype=np.float32) * 255


def blend(frame: np.ndarray, mask: np.ndarray, palette: np.ndarray | None) -> np.ndarray:
    """frame uint8 [h, w, 3], mask uint8 [h, w] (0/1 or class ids) -> blended uint8 [h, w, 3]."""
    out = frame.astype(np.float32)
    on = mask > 0
    colour = SOUNDING_COLOUR if palette is None else palette[mask[on]]
    out[on] = (1 - ALPHA) * out[on] + ALPHA * colour
    return out.astype(np.uint8)


def write_overlay(info: MediaInfo, masks_path: Path, out_path: Path, *, fps: float | None, num_classes: int,
                  limits: MediaLimits) -> Path:
    W, H = info.width, info.height
    rate = fps or info.fps or 25.0
    timeout = limits.decode_timeout(info.duration_s) * 2
    tmp = out_path.with_name(out_path.name + ".partial.mp4")
    args = [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{W}x{H}", "-r", f"{rate:.6f}", "-i", "pipe:0",
        *media_input_args(info), "-i", input_url(info),  # the upload: allow-listed demuxer, file: URL
        "-map", "0:v:0", "-map", "1:a:0?",
        # H.264 in yuv420p needs even sizes: pad by at most one pixel rather than fail on odd videos
        "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-b:a", "128k", "-shortest", "-movflags", "+faststart", str(tmp),
    ]
    palette = None if num_classes == 1 else class_palette(num_classes)
    masks = read_mask_lines(masks_path)
    reader = FrameReader(info, size=None, fps=fps, timeout_s=timeout)
    try:
        with BoundedProcess(args, timeout_s=timeout, stdin=True, stdout=False) as encoder:
            assert encoder.popen.stdin is not None
            try:
                for batch in reader.iter_batches(1):
                    record = next(masks, None)
                    if record is None:
                        break
                    mask = decode_rle(record["counts"], record["size"]) if num_classes == 1 else _labels(record)
                    encoder.popen.stdin.write(blend(batch.frames[0], mask, palette).tobytes())
            except BrokenPipeError:
                pass  # the encoder died: its exit status and stderr below say why
            finally:
                encoder.popen.stdin.close()
            code = encoder.wait()
            if encoder.timed_out or code != 0:
                raise MediaError(ErrorCode.MEDIA_TIMEOUT if encoder.timed_out else ErrorCode.CORRUPT_MEDIA,
                                 f"overlay encoding failed: {encoder.stderr_text()[-500:]}")
        tmp.replace(out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def _labels(record: dict) -> np.ndarray:
    h, w = record["size"]
    labels = np.zeros((h, w), dtype=np.uint8)
    for segment in record.get("segments", []):
        labels[decode_rle(segment["counts"], record["size"]) > 0] = segment["class_id"]
    return labels
