"""Exports of a finished job: what they are, where they live, what state each is in, how large one may be.

Made on demand by a worker (`avs.export`, `worker.exports`), cached in the job's folder and deleted with it:

    exports/<name>            the finished file (renamed into place: never half-written under this name)
    exports/<name>.pending    a generation is queued or running (made with O_EXCL: one request sends it)
    exports/<name>.error      the last generation failed: {"code", "message"}

States (`export_state`): absent, pending, ready, failed. A pending marker older than `PENDING_STALE_S` (its
worker died) counts as absent, so the next request queues the export again. Sizes are bounded by
`AVS_MAX_EXPORT_BYTES`: `estimate_bytes` is checked before generating (from the video's size, its frames and
the mask file's size), the file itself after. Torch-free: the API imports it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from worker.core.job_record import JobRecord

EXPORTS_DIR = "exports"
PENDING_STALE_S = 900.0
"""A pending marker this old belongs to a generation whose worker died: the export is queued again."""


@dataclass(frozen=True)
class ExportKind:
    name: str
    media_type: str
    needs_video: bool
    description: str


EXPORTS: dict[str, ExportKind] = {kind.name: kind for kind in [
    ExportKind("masks.zip", "application/zip", False,
               "one PNG per frame (frame_000000.png ...; 0/255, or the class id per pixel) + manifest.json"),
    ExportKind("coco.json", "application/json", False,
               "COCO: one image per frame, annotations with COCO RLE as pycocotools encodes it, categories from "
               "the model's class names"),
    ExportKind("overlay-outline.mp4", "video/mp4", True, "the video with each class in its colour and outlined"),
    ExportKind("alpha.webm", "video/webm", True, "VP9 with alpha: the sounding object on a transparent background"),
    ExportKind("side-by-side.mp4", "video/mp4", True, "the original | the mask overlay, side by side"),
    ExportKind("waveform.json", "application/json", True,
               "the sound's peaks (0..1, PEAKS_PER_SECOND a second) and the frames' times, for a timeline"),
]}

PEAKS_PER_SECOND = 50
State = Literal["absent", "pending", "ready", "failed"]


def export_dir(job_dir: Path) -> Path:
    return job_dir / EXPORTS_DIR


def export_path(job_dir: Path, name: str) -> Path:
    if name not in EXPORTS:  # names come from URLs: only the known ones become paths
        raise KeyError(name)
    return export_dir(job_dir) / name


def pending_path(job_dir: Path, name: str) -> Path:
    return export_path(job_dir, name).with_name(name + ".pending")


def error_path(job_dir: Path, name: str) -> Path:
    return export_path(job_dir, name).with_name(name + ".error")


def export_state(job_dir: Path, name: str, *, now: float | None = None) -> tuple[State, dict[str, Any] | None]:
    """(state, the error {"code", "message"} of a failed one)."""
    if export_path(job_dir, name).is_file():
        return "ready", None
    pending = pending_path(job_dir, name)
    try:
        if (time.time() if now is None else now) - pending.stat().st_mtime < PENDING_STALE_S:
            return "pending", None
    except FileNotFoundError:
        pass
    try:
        return "failed", json.loads(error_path(job_dir, name).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return "absent", None


def claim(job_dir: Path, name: str) -> bool:
    """Mark the export pending (clearing an old error); True when this caller made the mark and must queue the
    generation, False when one is already pending. A stale mark (`PENDING_STALE_S`) is taken over."""
    export_dir(job_dir).mkdir(exist_ok=True)
    pending = pending_path(job_dir, name)
    try:
        if time.time() - pending.stat().st_mtime >= PENDING_STALE_S:
            pending.unlink(missing_ok=True)
    except FileNotFoundError:
        pass
    try:
        fd = os.open(pending, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    os.close(fd)
    error_path(job_dir, name).unlink(missing_ok=True)
    return True


def record_failure(job_dir: Path, name: str, code: str, message: str) -> None:
    """The generation failed: keep why (`{"code", "message"}`), drop the pending mark."""
    if export_dir(job_dir).is_dir():
        error_path(job_dir, name).write_text(json.dumps({"code": code, "message": message}), encoding="utf-8")
    pending_path(job_dir, name).unlink(missing_ok=True)


def estimate_bytes(record: JobRecord, name: str, masks_bytes: int) -> int:
    """A generous estimate of the export's size in bytes, before it is made. Frames × pixels from the record
    (the video's probe; a live recording's mask lines give only the frame count), `masks_bytes`: the size of
    masks.ndjson. Videos: ~0.1 byte per pixel per frame (H.264 at CRF 23 on camera video) + 16 kB/s of sound;
    PNG masks: 1/16 byte per pixel (flat 0/255 regions deflate well); COCO: the RLE text + 300 bytes a frame."""
    frames = record.progress.frames_done
    if record.media is not None:
        pixels, duration = record.media.width * record.media.height, record.media.duration_s or 0.0
    else:
        pixels, duration = 640 * 480, frames / 25.0
    if name == "masks.zip":
        return frames * (pixels // 16 + 200) + 4096
    if name == "coco.json":
        return masks_bytes + frames * 300 + 4096
    if name == "waveform.json":
        return int(duration * PEAKS_PER_SECOND * 8 + frames * 12) + 4096
    video = int(frames * pixels * 0.1 + duration * 16_000)
    return 2 * video if name == "side-by-side.mp4" else video
