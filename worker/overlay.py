"""`overlay.mp4`: the masks blended onto the original frames, with the original sound, in sync and in shape.

A second streaming pass after segmentation. The original frames are decoded again (`FrameReader`, in an
ffmpeg process: the upload is hostile input and never enters this process's own libav), each is blended
with its mask from `masks.ndjson` (also streamed) and handed to an encoder ffmpeg. Memory holds one frame,
whatever the video's length.

Why the frames travel in NUT and not as bare pixels: a raw pipe carries no timestamps, so the encoder would
invent a constant rate and a variable-frame-rate source would drift away from its sound (1.17 s by the end
of an 8 s clip whose rate rises from 15 to 30 frames/s). PyAV, used only as a muxer of our own frames,
wraps each blended frame in ffmpeg's NUT container with its source presentation time (microseconds); the
encoder reads that with `-fps_mode passthrough` and `-copyts`, so every overlay frame keeps its source
time, and its sound is the source's chosen audio track moved to the same timeline.

Geometry: the frames are upright (the source's rotation applied by the decoder, so no rotation metadata
is needed) and carry the source's pixel aspect ratio (`setsar`), so the overlay plays in the source's shape
in any player. H.264 in yuv420p needs even sizes: an odd dimension is padded by one pixel. A stream whose
frame size changes mid-way (issue #21) keeps the first frame's size as the overlay's: a frame of another
shape is fitted inside it with its own aspect ratio (black bars), its mask with it, since players do not
follow a resolution change inside one MP4 track.
"""

from __future__ import annotations

import colorsys
import itertools
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from worker.core.contracts import ErrorCode
from worker.core.errors import MediaError
from worker.core.media.media_info import MediaInfo, MediaLimits
from worker.core.media.probe import FFMPEG
from worker.core.media.process import BoundedProcess
from worker.masks import read_mask_lines, record_labels
from worker.media.decode import FrameReader
from worker.media.ffmpeg_input import input_url, media_input_args, timeline_filter

ALPHA = 0.5  # mask opacity
SOUNDING_COLOUR = np.array([255, 48, 48], dtype=np.float32)  # binary masks: red
TIME_BASE = Fraction(1, 1_000_000)  # NUT timestamps in microseconds: finer than any source's frame times
PTS_TOLERANCE_S = 1e-3  # a frame and its mask line must agree on the time to this much


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


def encoder_command(info: MediaInfo, out: Path, origin_s: float = 0.0) -> list[str]:
    """The encoder: NUT frames on stdin (input 0) + the upload's chosen audio track (input 1) -> H.264 + AAC.

    `-copyts` (from `media_input_args`) keeps every timestamp as given: the frames' are already on the
    decode timeline, the audio is moved there by `timeline_filter` and ends at most 1 s after the video.
    `origin_s`: the decode time the frames were moved back from (`write_overlay`'s `zero`): the sound before
    it is cut and the rest moved back by as much, so it stays under its frames."""
    num, den = info.sample_aspect_ratio
    audio: list[str] = []
    if info.audio_stream_index is not None:
        end_s = info.start_time_s + (info.duration_s or 0.0) + 1.0
        shift = f",atrim=start={origin_s:.6f},asetpts=PTS-{origin_s:.6f}/TB" if origin_s else ""
        audio = ["-map", f"1:{info.audio_stream_index}", "-af",
                 f"{timeline_filter(info)},atrim=end={end_s:.6f}{shift}",
                 "-c:a", "aac", "-b:a", "128k"]
    return [
        FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "nut", "-i", "pipe:0",
        *media_input_args(info), "-i", input_url(info),  # the upload: allow-listed demuxer, file: URL
        "-map", "0:v:0", *audio,
        "-vf", f"pad=ceil(iw/2)*2:ceil(ih/2)*2,setsar={num}/{den}",
        "-fps_mode", "passthrough", "-enc_time_base:v", "-1",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p",
        "-movflags", "+faststart", "-f", "mp4", str(out),
    ]  # fmt: skip


Shown = tuple[np.ndarray, float, dict[str, Any], tuple[int, int] | None]
"""(frame at the overlay's size, its time, its mask record, the frame's own display size)."""


def _frames_with_masks(reader: FrameReader, masks: Iterator[dict[str, Any]], *, hold: bool = False
                       ) -> Iterator[Shown]:
    """(frame, pts_s, mask record) for every decoded frame; the decode and the masks must agree, and a frame
    with a mask line of its own is given that line's `pts_s` as its time (the page finds mask N at `pts_s` N).
    `hold`
    (a live session, which drops frames): a frame without a mask of its own shows the last one before it,
    as the session's viewer saw it; frames before the first mask are left out."""
    if hold:
        yield from _frames_holding_masks(reader, masks)
        return
    for batch in reader.iter_batches(1):
        record = next(masks, None)
        if record is None:
            return
        pts = batch.pts_s[0]
        if record["frame_index"] != batch.start_index or abs(float(record["pts_s"]) - pts) > PTS_TOLERANCE_S:
            raise RuntimeError(f"overlay: frame {batch.start_index} at {pts:.6f} s does not match its mask line "
                               f"(frame {record['frame_index']} at {record['pts_s']} s)")
        yield batch.frames[0], float(record["pts_s"]), record, batch.sizes[0] if batch.sizes else None


def _frames_holding_masks(reader: FrameReader, masks: Iterator[dict[str, Any]]) -> Iterator[Shown]:
    current, upcoming = None, next(masks, None)
    shift = 0.0  # mask time - decode time of the current mask's own frame (0 until one is seen)
    for batch in reader.iter_batches(1):
        while upcoming is not None and upcoming["frame_index"] <= batch.start_index:
            current, upcoming = upcoming, next(masks, None)
        if current is not None:
            # the mask's own frame at the mask's time (the stream copy's clock may differ from the session's),
            # the frames held after it as far after it as they are in the copy
            if current["frame_index"] == batch.start_index:
                shift = float(current["pts_s"]) - batch.pts_s[0]
            pts = batch.pts_s[0] + shift
            yield batch.frames[0], pts, current, batch.sizes[0] if batch.sizes else None


Draw = Callable[[np.ndarray, dict[str, Any], "tuple[int, int] | None"], np.ndarray]
"""(frame uint8 [H, W, 3] at the video's size, its mask record, the frame's own display size) -> the picture."""


def write_overlay(info: MediaInfo, masks_path: Path, out_path: Path, *, fps: float | None, num_classes: int,
                  limits: MediaLimits, fence: Callable[[], AbstractContextManager[Any]] = nullcontext,
                  hold: bool = False, draw: Draw | None = None, out_size: tuple[int, int] | None = None,
                  pix_fmt: str = "rgb24", encoder: Callable[[MediaInfo, Path], list[str]] | None = None,
                  zero: bool = False) -> Path:
    """Write `out_path` (an mp4) from the source `info` and its `masks_path`; see the module docstring.

    `fps` must be the rate the masks were made at (None: every decoded frame); `hold`: masks may skip frames
    (a live session's; see `_frames_with_masks`); `fence()` is held while the
    finished file replaces `out_path` (see `segment_video`). `draw` makes each picture (default: the mask
    blended in red, or in its class's colour; `worker.preview` draws nothing, `worker.exports` outlines);
    `out_size` (h, w) is the size of what it draws (default: the video's), `pix_fmt` its pixel format (rgb24,
    or rgba for a picture with alpha) and `encoder(info, out)` the encoder's command (default:
    `encoder_command`, H.264 + AAC in MP4). `zero` (the preview the page plays): every time is moved back by
    the first mask line's `pts_s`, so the file's first frame is at 0 s and mask N's frame at `pts_s` N minus
    the first's, exactly (the default encoder only: its sound is moved with it).
    Raises `MediaError` (`media_timeout`, or `corrupt_media` when the encoder fails); nothing is left at
    `out_path` on failure.
    """
    timeout = limits.decode_timeout(info.duration_s) * 2
    tmp = out_path.with_name(out_path.name + ".partial" + out_path.suffix)
    if draw is None:
        palette = None if num_classes == 1 else class_palette(num_classes)

        def draw(frame: np.ndarray, record: dict[str, Any], size: tuple[int, int] | None) -> np.ndarray:
            return drawn_frame(frame, record_labels(record), size, palette)
    reader = FrameReader(info, size=None, fps=fps, timeout_s=timeout, limits=limits)
    frames = _frames_with_masks(reader, read_mask_lines(masks_path), hold=hold)
    try:
        first = next(frames, None)
        if first is None:
            raise MediaError(ErrorCode.CORRUPT_MEDIA, "overlay: no frame to draw")
        origin = float(first[2]["pts_s"]) if zero else 0.0
        command = encoder_command(info, tmp, origin) if encoder is None else encoder(info, tmp)
        with BoundedProcess(command, timeout_s=timeout, stdin=True,
                            stdout=False) as encoder_process:
            encoder_process_stdin = encoder_process.popen.stdin
            assert encoder_process_stdin is not None
            try:
                _mux(encoder_process_stdin, out_size or (info.height, info.width), pix_fmt, first, frames, draw,
                     origin)
            except (BrokenPipeError, av.error.BrokenPipeError):
                pass  # the encoder died: its exit status and stderr below say why
            finally:
                encoder_process_stdin.close()
            code = encoder_process.wait()
            if encoder_process.timed_out or code != 0:
                raise MediaError(ErrorCode.MEDIA_TIMEOUT if encoder_process.timed_out else ErrorCode.CORRUPT_MEDIA,
                                 f"overlay encoding failed: {encoder_process.stderr_text()[-500:]}")
        with fence():
            tmp.replace(out_path)
    finally:
        frames.close()
        tmp.unlink(missing_ok=True)
    return out_path


def _mux(sink: Any, size: tuple[int, int], pix_fmt: str, first: Shown, rest: Iterator[Shown], draw: Draw,
         origin_s: float = 0.0) -> None:
    """Draw and write every frame (`size` (h, w), `pix_fmt`) to `sink` as NUT rawvideo with its presentation
    time less `origin_s`."""
    with av.open(sink, mode="w", format="nut") as container:
        stream = container.add_stream("rawvideo")
        stream.width, stream.height, stream.pix_fmt = size[1], size[0], pix_fmt
        stream.time_base = stream.codec_context.time_base = TIME_BASE
        last = -1
        for frame, pts_s, record, size in itertools.chain([first], rest):
            drawn = draw(frame, record, size)
            picture = av.VideoFrame.from_ndarray(drawn, format=pix_fmt)
            # strictly increasing, as a muxer requires; equal source times (never in a valid file) move 1 µs
            last = picture.pts = max(round((pts_s - origin_s) / TIME_BASE), last + 1)
            picture.time_base = TIME_BASE
            container.mux(stream.encode(picture))
        container.mux(stream.encode(None))


def fit_inside(size: tuple[int, int], canvas: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a picture of display size `size` (h, w) fitted inside `canvas` (h, w)
    with its aspect ratio kept and centred."""
    scale = min(canvas[0] / size[0], canvas[1] / size[1])
    height, width = max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
    return (canvas[0] - height) // 2, (canvas[1] - width) // 2, height, width


def drawn_frame(frame: np.ndarray, mask: np.ndarray, size: tuple[int, int] | None,
                palette: np.ndarray | None) -> np.ndarray:
    """The overlay picture for `frame` (uint8 [H, W, 3] at the overlay's size) and its `mask` (uint8 [h, w], the
    frame's own size). A frame whose display size `size` has another shape than the overlay was stretched by
    the decoder: it is put back in its own shape inside the overlay, with black bars."""
    from PIL import Image

    canvas = frame.shape[:2]
    if size is None or size == canvas or size[0] * canvas[1] == size[1] * canvas[0]:
        if mask.shape != canvas:  # same shape, another size: the mask follows the picture
            mask = np.asarray(Image.fromarray(mask).resize((canvas[1], canvas[0]), Image.NEAREST))
        return blend(frame, mask, palette)
    top, left, height, width = fit_inside(size, canvas)
    picture = np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR))
    mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))
    out = np.zeros_like(frame)
    out[top:top + height, left:left + width] = blend(picture, mask, palette)
    return out
