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

The frames go through a frame engine (`worker.engine`): a decode thread per video, one batcher running
the model (a worker's engine mixes the frames of all its jobs in each batch), an encode thread per video
for upsampling, RLE and writing, in order. Memory stays bounded whatever the video's length.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.modeling.audio_frontend import SAMPLE_RATE
from model.predictor import AVSPredictor, logit_threshold
from worker.core.contracts import ErrorCode
from worker.core.errors import MediaError
from worker.core.media.media_info import MediaInfo, MediaLimits
from worker.core.media.probe import probe_media
from worker.engine import FrameEngine, JobSpec
from worker.masks import MaskWriter, mask_records
from worker.media.audio import read_audio
from worker.media.decode import FrameBatch, FrameReader

# The decoder's deadline is wall-clock for the whole pass, model time included (ffmpeg waits on a full
# pipe while the model works). Budget this much per expected frame on top of the media limits' decode
# deadline, so a slow CPU model (~1 frame/s for the b5 baselines here) is not killed mid-video.
SECONDS_PER_FRAME_BUDGET = 1.5
STAGES = ("probe", "decode", "audio_features", "inference", "encode")


@dataclass(frozen=True)
class SegmentOptions:
    batch_size: int = 8
    fps: float | None = None  # resample the video to this frame rate first; None = every decoded frame
    overlay: bool = False
    confidence: bool = False  # each mask line also carries a small probability map (worker.confidence)
    preview: bool = False  # also write preview.mp4 (a browser-safe copy, frame-exact with the masks)
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
    preview_path: str | None = None
    frames_skipped: int = 0  # undecodable frames before the first one (a stream starting mid-GOP)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds_total if self.seconds_total > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "frames_skipped": self.frames_skipped, "video": self.video,
                "timings": self.timings,
                "seconds_total": round(self.seconds_total, 4), "frames_per_second": round(self.fps, 3),
                "masks": self.masks_path, "overlay": self.overlay_path}


def segment_video(video: str | Path, out_dir: str | Path, predictor: AVSPredictor,
                  options: SegmentOptions = SegmentOptions(), *,
                  info: MediaInfo | None = None,
                  on_progress: Callable[[int, int | None], None] | None = None,
                  should_cancel: Callable[[], bool] | None = None,
                  fence: Callable[[], AbstractContextManager[Any]] = nullcontext,
                  engine: FrameEngine | None = None) -> SegmentResult:
    """Segment every frame of `video` into `out_dir/masks.ndjson` (and optional PNGs / overlay.mp4).

    `engine`: the frame engine whose model and batches this job shares with others (a worker's); without
    one, a private engine runs this video alone. `fence()` is entered around every write of results (a
    batch of mask lines, the overlay's rename): the service passes its lease check
    (`worker.core.leases.fenced`), which raises instead of letting a former owner write.

    Raises:
        MediaError: the file is refused or fails to decode (its `.code` is stable).
        Cancelled: `should_cancel()` returned True between two batches.
    """
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings = dict.fromkeys(STAGES, 0.0)

    t = time.perf_counter()
    if info is None:
        info = probe_media(video, options.limits, require_audio=True)
    timings["probe"] = time.perf_counter() - t

    own_engine = engine is None
    if engine is None:
        engine = FrameEngine(predictor, max_batch_size=options.batch_size, max_wait_ms=0)
    try:
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

        sizes: dict[int, tuple[int, int]] = {}  # frame index -> the display size it was decoded at

        def batches() -> Iterator[FrameBatch]:
            for batch in reader.iter_batches(options.batch_size):
                for i, size in enumerate(batch.sizes or ()):
                    sizes[batch.start_index + i] = size
                yield batch

        def encode(start_index: int, pts_s: list[float], logits: torch.Tensor) -> None:
            frame_sizes = [sizes.pop(start_index + i, (info.height, info.width)) for i in range(len(pts_s))]
            records = encode_masks(predictor, logits, start_index, pts_s, frame_sizes, options.threshold,
                                   confidence=options.confidence)
            with fence():
                writer.write(records)
            if png_dir is not None:
                _write_pngs(png_dir, records, start_index, predictor.num_classes)
            if on_progress is not None:
                on_progress(start_index + len(records), expected)

        # Frames start decoding now, while the sound is read and encoded: the first batch is ready sooner.
        handle = engine.submit(JobSpec(key=str(video), batches=batches(), table=None,
                                       encode=encode, should_cancel=should_cancel, start_frame=options.start_frame))
        try:
            try:
                t = time.perf_counter()
                wave = read_audio(info, sample_rate=SAMPLE_RATE,
                                  timeout_s=options.limits.decode_timeout(info.duration_s), limits=options.limits)
                timings["decode"] += time.perf_counter() - t

                def embed() -> torch.Tensor:  # on the model's thread, between two batches of other jobs
                    embeddings = predictor.audio_embeddings(wave)  # [M, 128], one per 0.96 s window
                    silence = predictor.audio_embeddings(np.zeros(1, dtype=np.float32))[:1]
                    return torch.cat([embeddings, silence])  # row M = silence, after the audio ends

                t = time.perf_counter()
                handle.set_table(engine.run_in_model_thread(embed))
                timings["audio_features"] = time.perf_counter() - t
            except BaseException as exc:
                handle.fail(exc)
            stats = engine.finish(handle)
            if stats.frames == 0:
                raise MediaError(ErrorCode.CORRUPT_MEDIA, "the video stream has no decodable frame")
            masks_path = writer.commit()
        except BaseException:
            writer.abort()
            raise
    finally:
        if own_engine:
            engine.close()
    for stage, seconds in stats.seconds.items():
        timings[stage] += seconds

    overlay_path = None
    if options.overlay:
        from worker.overlay import write_overlay

        t = time.perf_counter()
        overlay_path = str(write_overlay(info, masks_path, out / "overlay.mp4", fps=options.fps, fence=fence,
                                         num_classes=predictor.num_classes, limits=options.limits))
        timings["overlay"] = time.perf_counter() - t
    preview_path = None
    if options.preview:
        from worker.preview import PREVIEW, write_preview

        t = time.perf_counter()
        preview_path = str(write_preview(info, masks_path, out / PREVIEW, fps=options.fps, fence=fence,
                                         limits=options.limits))
        timings["preview"] = time.perf_counter() - t
    return SegmentResult(frames=stats.frames, video=info.to_dict(), frames_skipped=reader.frames_skipped,
                         timings={k: round(v, 4) for k, v in timings.items()},
                         seconds_total=time.perf_counter() - started, masks_path=str(masks_path),
                         overlay_path=overlay_path, preview_path=preview_path)


def encode_masks(predictor: AVSPredictor, logits: torch.Tensor, start_index: int, pts_s: list[float],
                 sizes: list[tuple[int, int]], threshold: float | None, *,
                 confidence: bool = False) -> list[dict[str, Any]]:
    """Mask records for consecutive frames whose display sizes may differ (a stream whose resolution changes):
    each run of equal sizes is upsampled and encoded at its own size. `logits` [n, C, h, w]; `sizes` n
    (height, width) pairs. Returns n records (`worker.masks.mask_records`), with `confidence`
    (`worker.confidence`) when asked."""
    records: list[dict[str, Any]] = []
    start = 0
    while start < len(sizes):
        end = start
        while end < len(sizes) and sizes[end] == sizes[start]:
            end += 1
        masks = predictor.postprocess(logits[start:end], sizes[start], threshold=threshold)
        run = mask_records(masks, start_index=start_index + start, pts_s=pts_s[start:end],
                           class_names=predictor.class_names)
        if confidence:
            from worker.confidence import confidence_maps

            for record, entry in zip(run, confidence_maps(logits[start:end], sizes[start]), strict=True):
                record["confidence"] = entry
        records.extend(run)
        start = end
    return records


def _write_pngs(directory: Path, records: list[dict[str, Any]], start_index: int, num_classes: int) -> None:
    from PIL import Image

    from worker.masks import record_labels

    for i, record in enumerate(records):
        mask = record_labels(record)
        # binary: 0/255 so the PNG is visible as is; semantic: class ids (a palette-free label map)
        image = mask * 255 if num_classes == 1 else mask
        Image.fromarray(image.astype(np.uint8), mode="L").save(directory / f"{start_index + i:06d}.png")
