"""The segmentation pipeline: one video file in, one mask per decoded frame out.

This is the only implementation: `avs segment` calls it in-process and the Celery task calls it in a
worker. Stages (each timed, names shared with the Prometheus metrics):

    probe           ffprobe, allow-listed demuxers, limits                    (worker.core.media.probe)
    decode          frames streamed from one ffmpeg pipe, scaled by ffmpeg    (worker.media.decode)
                    + the audio track demuxed to 16 kHz mono
    audio_features  log-mel + audio encoder, once per 0.96 s window           (model.predictor)
    inference       the network on batches of frames                          (model.predictor)
    encode          upsampling to the video's size, thresholds, COCO RLE, NDJSON lines

Alignment rule: frame f with presentation time t_f gets the audio window m = floor(t_f / 0.96), the
VGGish example covering [0.96 m, 0.96 (m + 1)) s on the same timeline (both start at the container
start; a late-starting audio track is padded with leading silence by the decoder). This is AVSBench's
pairing (one 0.96 s example per 1 s frame) generalised to any frame rate: every frame gets the sound
being heard while it is on screen. Each window's embedding is computed once and shared by all the
frames it covers (25 frames per window at 25 fps), so the audio encoder costs ~1/24 of a per-frame
design. Frames past the end of the audio track get the embedding of silence.

Decoding overlaps inference: a thread pulls the next batch from ffmpeg's pipe (ffmpeg itself decodes
in its own process) while the main thread runs the model on the current one; the queue holds at most
`PREFETCH_BATCHES`, so memory stays bounded whatever the video's length.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.modeling.audio_frontend import SAMPLE_RATE, example_index_for_time
from model.predictor import AVSPredictor, logit_threshold
from worker.core.contracts import ErrorCode
from worker.core.errors import MediaError
from worker.core.media.media_info import MediaInfo, MediaLimits
from worker.core.media.probe import probe_media
from worker.masks import MaskWriter, mask_records
from worker.media.audio import read_audio
from worker.media.decode import FrameBatch, FrameReader

PREFETCH_BATCHES = 2  # decoded batches waiting for the model: enough to hide decode latency, bounded memory
# The decoder's deadline is wall-clock for the whole pass, model time included (ffmpeg waits on a full
# pipe while the model works). Budget this much per expected frame on top of the media limits' decode
# deadline, so a slow CPU model (~1 frame/s for the b5 baselines here) is not killed mid-video.
SECONDS_PER_FRAME_BUDGET = 1.5
STAGES = ("probe", "decode", "audio_features", "inference", "encode")


class Cancelled(Exception):
    """Raised between batches when `should_cancel()` says so; the partial output is removed."""


@dataclass(frozen=True)
class SegmentOptions:
    batch_size: int = 8
    fps: float | None = None  # resample the video to this frame rate first; None = every decoded frame
    overlay: bool = False
    png: bool = False
    limits: MediaLimits = field(default_factory=MediaLimits)
    threshold: float | None = None  # binary masks: overrides the predictor's sigmoid threshold
    atomic: bool = True  # offline: write .partial and rename; the service appends as batches finish
    start_frame: int = 0  # resume: frames before this index are decoded but not written again

    def __post_init__(self) -> None:
        """Every option checked here, once, for every caller (CLI, worker, tests): ValueError naming it."""
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.fps is not None and not 0 < self.fps <= self.limits.max_fps:
            raise ValueError(f"fps must be > 0 and at most {self.limits.max_fps:g}, got {self.fps:g}")
        if self.threshold is not None:
            logit_threshold(self.threshold)
        if self.start_frame < 0:
            raise ValueError(f"start_frame must not be negative, got {self.start_frame}")


@dataclass
class SegmentResult:
    frames: int
    video: dict[str, Any]
    timings: dict[str, float]
    seconds_total: float
    masks_path: str
    overlay_path: str | None = None

    @property
    def fps(self) -> float:
        return self.frames / self.seconds_total if self.seconds_total > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "video": self.video, "timings": self.timings,
                "seconds_total": round(self.seconds_total, 4), "frames_per_second": round(self.fps, 3),
                "masks": self.masks_path, "overlay": self.overlay_path}


class _StageClock:
    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self._lock = threading.Lock()  # the decode thread adds to it too

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.seconds.items()}


def _prefetch(batches: Iterator[FrameBatch], clock: _StageClock, stop: threading.Event) -> Iterator[FrameBatch]:
    """Run `batches` in a thread, `PREFETCH_BATCHES` ahead of the consumer; re-raise its errors here."""
    q: queue.Queue[FrameBatch | BaseException | None] = queue.Queue(maxsize=PREFETCH_BATCHES)

    def put(item: FrameBatch | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            while True:
                start = time.perf_counter()
                batch = next(batches, None)
                clock.add("decode", time.perf_counter() - start)
                if not put(batch) or batch is None:
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it in its thread
            put(exc)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # stops ffmpeg if the consumer gave up early

    thread = threading.Thread(target=produce, name="frame-decoder", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=30)


def audio_windows_for(pts_s: list[float], num_windows: int) -> np.ndarray:
    """Index of the audio window of each frame; `num_windows` (one past the last) means silence."""
    idx = np.array([example_index_for_time(max(t, 0.0)) for t in pts_s], dtype=np.int64)
    return np.minimum(idx, num_windows)


def segment_video(video: str | Path, out_dir: str | Path, predictor: AVSPredictor,
                  options: SegmentOptions = SegmentOptions(), *,
                  info: MediaInfo | None = None,
                  on_progress: Callable[[int, int | None], None] | None = None,
                  on_batch: Callable[[int, float], None] | None = None,
                  should_cancel: Callable[[], bool] | None = None,
                  fence: Callable[[], AbstractContextManager[Any]] = nullcontext) -> SegmentResult:
    """Segment every frame of `video` into `out_dir/masks.ndjson` (and optional PNGs / overlay.mp4).

    `fence()` is entered around every write of results (a batch of mask lines, the overlay's rename): the
    service passes its lease check (`worker.core.leases.fenced`), which raises instead of letting a former
    owner write.

    Raises:
        MediaError: the file is refused or fails to decode (its `.code` is stable).
        Cancelled: `should_cancel()` returned True between two batches.
    """
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clock = _StageClock()

    t = time.perf_counter()
    if info is None:
        info = probe_media(video, options.limits, require_audio=True)
    clock.add("probe", time.perf_counter() - t)

    t = time.perf_counter()
    wave = read_audio(info, sample_rate=SAMPLE_RATE, timeout_s=options.limits.decode_timeout(info.duration_s),
                      limits=options.limits)
    clock.add("decode", time.perf_counter() - t)

    t = time.perf_counter()
    embeddings = predictor.audio_embeddings(wave)  # [M, 128], one per 0.96 s window
    silence = predictor.audio_embeddings(np.zeros(1, dtype=np.float32))[:1]
    table = torch.cat([embeddings, silence])  # row M = silence, for frames after the audio ends
    clock.add("audio_features", time.perf_counter() - t)

    size = (predictor.input_size, predictor.input_size)
    expected = info.expected_frames(options.fps)
    budget = options.limits.decode_timeout(info.duration_s)
    budget += SECONDS_PER_FRAME_BUDGET * (expected or options.limits.max_output_frames(options.fps))
    # No frame cap of our own: the reader refuses (too_long) rather than stop early, so a limit can never
    # turn into a silently truncated success.
    reader = FrameReader(info, size=size, fps=options.fps, timeout_s=budget, limits=options.limits)
    writer = MaskWriter(out / "masks.ndjson", atomic=options.atomic, append=options.start_frame > 0)
    png_dir = out / "masks" if options.png else None
    if png_dir is not None:
        png_dir.mkdir(exist_ok=True)
    stop = threading.Event()
    frames_done = 0
    try:
        for batch in _prefetch(reader.iter_batches(options.batch_size), clock, stop):
            if should_cancel is not None and should_cancel():
                raise Cancelled(f"cancelled after {frames_done} frames")
            n = len(batch.pts_s)
            if batch.start_index + n <= options.start_frame:
                frames_done = batch.start_index + n
                continue  # already written by an earlier (interrupted) attempt
            t = time.perf_counter()
            windows = torch.from_numpy(audio_windows_for(batch.pts_s, embeddings.shape[0]))
            logits = predictor.predict_logits(batch.frames, table[windows.to(table.device)])
            if logits.device.type == "cuda":
                torch.cuda.synchronize(logits.device)  # attribute GPU time to inference, not to encode
            clock.add("inference", time.perf_counter() - t)
            if on_batch is not None:
                on_batch(n, time.perf_counter() - t)

            t = time.perf_counter()
            masks = predictor.postprocess(logits, (info.height, info.width), threshold=options.threshold)
            records = mask_records(masks, start_index=batch.start_index, pts_s=batch.pts_s,
                                   class_names=predictor.class_names)
            skip = max(0, options.start_frame - batch.start_index)
            with fence():
                writer.write(records[skip:])
            if png_dir is not None:
                _write_pngs(png_dir, masks[skip:], batch.start_index + skip, predictor.num_classes)
            clock.add("encode", time.perf_counter() - t)
            frames_done = batch.start_index + n
            if on_progress is not None:
                on_progress(frames_done, expected)
        if frames_done == 0:
            raise MediaError(ErrorCode.CORRUPT_MEDIA, "the video stream has no decodable frame")
        masks_path = writer.commit()
    except BaseException:
        stop.set()
        writer.abort()
        raise

    overlay_path = None
    if options.overlay:
        from worker.overlay import write_overlay

        t = time.perf_counter()
        overlay_path = str(write_overlay(info, masks_path, out / "overlay.mp4", fps=options.fps, fence=fence,
                                         num_classes=predictor.num_classes, limits=options.limits))
        clock.add("overlay", time.perf_counter() - t)
    return SegmentResult(frames=frames_done, video=info.to_dict(), timings=clock.rounded(),
                         seconds_total=time.perf_counter() - started, masks_path=str(masks_path),
                         overlay_path=overlay_path)


def _write_pngs(directory: Path, masks: np.ndarray, start_index: int, num_classes: int) -> None:
    from PIL import Image

    for i, mask in enumerate(masks):
        # binary: 0/255 so the PNG is visible as is; semantic: class ids (a palette-free label map)
        image = mask * 255 if num_classes == 1 else mask
        Image.fromarray(image.astype(np.uint8), mode="L").save(directory / f"{start_index + i:06d}.png")
