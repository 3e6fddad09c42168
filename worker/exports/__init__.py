"""Make one export of a finished job (`avs.export`; the names, states and size rule are
`worker.core.exports`). One module per export: `png_zip`, `coco`, `videos`, `waveform`.

The file is written under a temporary name in the job's `exports/` folder, its size checked against
`AVS_MAX_EXPORT_BYTES`, and renamed into place only while the job still exists and was not deleted; a
failure leaves `<name>.error` (`export_failed`, `export_too_large`) and no file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from worker.core.contracts import JobStatus, ServiceErrorCode
from worker.core.errors import MediaError
from worker.core.exports import EXPORTS, export_dir, export_path, pending_path, record_failure
from worker.core.job_record import JobRecord
from worker.core.jobstore import JobNotFound, JobStore
from worker.core.settings import ServiceSettings

log = logging.getLogger("avs.worker")


def video_source(record: JobRecord, job_dir: Path):  # -> MediaInfo | None
    """The probed video kept with the job (the upload, or a live session's recording), None when none is."""
    info = record.media_info(job_dir)
    return info if info is not None and Path(info.path).is_file() else None


def _make(record: JobRecord, job_dir: Path, name: str, tmp: Path, settings: ServiceSettings) -> None:
    masks = job_dir / "masks.ndjson"
    class_names = list(record.class_names)
    num_classes = max(1, len(class_names))
    if name == "masks.zip":
        from worker.exports.png_zip import write_png_zip

        write_png_zip(masks, tmp, class_names=class_names)
        return
    if name == "coco.json":
        from worker.exports.coco import write_coco

        write_coco(masks, tmp, class_names=class_names, job_id=record.job_id)
        return
    info = video_source(record, job_dir)
    if info is None:
        raise MediaError("corrupt_media", "this job keeps no video to draw on")
    limits = settings.media_limits()
    if name == "waveform.json":
        from worker.exports.waveform import write_waveform

        write_waveform(info, masks, tmp, limits=limits)
        return
    from worker.exports import videos

    writer = {"overlay-outline.mp4": videos.write_outline, "side-by-side.mp4": videos.write_side_by_side,
              "alpha.webm": videos.write_alpha}[name]
    writer(info, masks, tmp, fps=record.options.fps, num_classes=num_classes, limits=limits,
           hold=record.kind == "live")


def run_export(job_id: str, name: str, *, store: JobStore, settings: ServiceSettings) -> dict[str, Any]:
    """Make export `name` of job `job_id` (a queued request: its pending mark exists). Returns a small status
    dict: ready / failed (with the code) / gone (the job was deleted or expired meanwhile)."""
    if name not in EXPORTS:
        return {"job_id": job_id, "name": name, "status": "failed", "error": "unknown export"}
    try:
        record = store.get(job_id)
        job_dir = store.job_dir(job_id)
    except JobNotFound:
        return {"job_id": job_id, "name": name, "status": "gone"}
    if record.deleted or not export_dir(job_dir).is_dir():
        return {"job_id": job_id, "name": name, "status": "gone"}
    if record.status is not JobStatus.SUCCEEDED:
        record_failure(job_dir, name, ServiceErrorCode.JOB_NOT_FINISHED.value, f"the job is {record.status.value}")
        return {"job_id": job_id, "name": name, "status": "failed", "error": ServiceErrorCode.JOB_NOT_FINISHED.value}
    out = export_path(job_dir, name)
    tmp = out.with_name(f".{name}.{os.getpid()}.partial{Path(name).suffix}")
    try:
        _make(record, job_dir, name, tmp, settings)
        size = tmp.stat().st_size
        if size > settings.max_export_bytes:
            raise _TooLarge(f"{name} came out at {size} bytes, over AVS_MAX_EXPORT_BYTES={settings.max_export_bytes}")
        try:
            if store.get(job_id).deleted:
                return {"job_id": job_id, "name": name, "status": "gone"}
        except JobNotFound:
            return {"job_id": job_id, "name": name, "status": "gone"}
        os.replace(tmp, out)
        pending_path(job_dir, name).unlink(missing_ok=True)
        return {"job_id": job_id, "name": name, "status": "ready", "size_bytes": size}
    except _TooLarge as exc:
        code, message = ServiceErrorCode.EXPORT_TOO_LARGE.value, str(exc)
    except MediaError as exc:
        code, message = ServiceErrorCode.EXPORT_FAILED.value, f"{name}: {exc.message}"
    except FileNotFoundError:  # the job's folder went away under us (deleted)
        return {"job_id": job_id, "name": name, "status": "gone"}
    except Exception as exc:  # a bug or a full disk: fail the export, keep the worker
        log.exception("export %s of job %s failed", name, job_id)
        code, message = ServiceErrorCode.EXPORT_FAILED.value, f"{name}: internal error ({type(exc).__name__})"
    finally:
        tmp.unlink(missing_ok=True)
    record_failure(job_dir, name, code, message)
    return {"job_id": job_id, "name": name, "status": "failed", "error": code}


class _TooLarge(Exception):
    pass
