"""A live session kept as a job like any other: its masks, its video (the stream as received, remuxed to
Matroska, with an H.264 preview for the page), on request an overlay, and the exports, all with the job routes.

While the session runs its files are written in the job's directory, without a record: the job routes,
the listing and the reconciler see nothing (no record, no lease to expire, nothing to redeliver), and a
session whose client vanishes leaves nothing (`discard`). When it ends the masks are committed and the
record is written once, already finished (`finish`): succeeded, or failed with the masks made so far (as
a file job that fails keeps its masks). A worker killed mid-session leaves a directory with only the
`.live` marker's files; `sweep_orphans` removes those at the next worker start.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from worker.core.contracts import JobStatus
from worker.core.errors import MediaError
from worker.core.job_record import JobError, JobOptions, JobRecord, Progress, UploadInfo, is_job_id
from worker.core.jobstore import JobStore
from worker.core.media.media_info import MediaInfo, MediaLimits
from worker.core.media.probe import probe_media
from worker.masks import MaskWriter
from worker.overlay import write_overlay
from worker.preview import PREVIEW, write_preview

log = logging.getLogger("avs.live")

MARKER = ".live"
STREAM_COPY = "stream.mkv"


class Recording:
    """The files of one recorded session (job id = session id). `copy_path`: where the session's ffmpeg
    copies the stream (kept as the job's video when the session succeeds), when an overlay is wanted or
    `keep_video` (False for a pulled network stream without overlay: a copy would stop it from reconnecting,
    `worker.live.session`); None otherwise. `key_id`: the API key's id (`worker.core.api_keys.key_id`), so the
    recording is listed with its client's jobs."""

    def __init__(self, store: JobStore, job_id: str, *, threshold: float | None, overlay: bool,
                 key_id: str | None = None, keep_video: bool = True) -> None:
        self.store, self.job_id, self.key_id = store, job_id, key_id
        self.options = JobOptions(threshold=threshold, overlay=overlay)
        self.dir = store.job_dir(job_id)
        self.dir.mkdir(parents=True, exist_ok=False)
        (self.dir / MARKER).touch()
        self.created_at = time.time()
        self.writer = MaskWriter(store.masks_path(job_id), atomic=True)
        self.copy_path: Path | None = self.dir / STREAM_COPY if overlay or keep_video else None

    def write(self, record: dict[str, Any]) -> None:
        """One frame's mask record (without the live-only fields)."""
        self.writer.write([{k: v for k, v in record.items() if k not in ("type", "latency_ms")}])

    def finish(self, summary: dict[str, Any], error: tuple[str, str] | None, *, num_classes: int,
               limits: MediaLimits, rotation: int = 0) -> JobRecord:
        """Commit the masks, keep the video, render the overlay when asked, write the record.

        The stream copy is kept as the job's video (`upload`, probed into `media`) when the session succeeded
        with frames, with `preview.mp4` (H.264 + AAC, every frame from the first mask on) for the page; otherwise
        it is removed. A copy that cannot be read fails the recording only when an overlay was asked for.

        `rotation`: the clockwise display rotation of the session's input (ffmpeg applied it to the frames the
        masks were made from). The copy of the stream is Matroska, which keeps no display matrix, so it is
        turned the same way for the overlay, which then plays upright like the masks (issue #21)."""
        self.writer.commit()
        info: MediaInfo | None = None
        preview = None
        if error is None and self.copy_path is not None and self.copy_path.is_file() and summary["frames_processed"]:
            try:
                info = probe_media(self.copy_path, limits, require_audio=False)
                if rotation % 360 and info.rotation == 0:
                    info = rotated(info, rotation)
                if self.options.overlay:
                    write_overlay(info, self.store.masks_path(self.job_id), self.store.overlay_path(self.job_id),
                                  fps=None, num_classes=num_classes, limits=limits, hold=True)
            except MediaError as exc:
                info = None
                if self.options.overlay:
                    error = (exc.code.value, f"overlay: {exc.message}")
                else:
                    log.warning("live recording %s: its video is not kept (%s)", self.job_id, exc.message)
            if info is not None:
                try:
                    preview = write_preview(info, self.store.masks_path(self.job_id), self.dir / PREVIEW, fps=None,
                                            limits=limits, hold=True).name
                except MediaError as exc:  # the masks and the video stand without it
                    log.warning("live recording %s: no preview (%s)", self.job_id, exc.message)
        if info is None and self.copy_path is not None:
            self.copy_path.unlink(missing_ok=True)
        finished = time.time()
        record = JobRecord(
            job_id=self.job_id, kind="live", options=self.options, created_at=self.created_at,
            started_at=self.created_at,
            progress=Progress(frames_done=summary["frames_processed"], frames_total=summary["frames_processed"]),
            timings={"total": round(finished - self.created_at, 4)},
            live={k: v for k, v in summary.items() if k != "type"},
            media=info, preview=preview, api_key_id=self.key_id,
            upload=UploadInfo(filename=STREAM_COPY, bytes=self.copy_path.stat().st_size, path=STREAM_COPY)
            if info is not None and self.copy_path is not None else None)
        # the session ran in the API process, with no lease: the record is born finished, through the one
        # transition every job's end goes through
        record.finish(JobStatus.FAILED if error else JobStatus.SUCCEEDED, now=finished,
                      error=JobError(code=error[0], message=error[1]) if error else None, by_owner=False)
        self.store.create(record)
        (self.dir / MARKER).unlink(missing_ok=True)
        return record

    def discard(self) -> None:
        """Nothing kept: the client went away before ending the session."""
        self.writer.abort()
        shutil.rmtree(self.dir, ignore_errors=True)


def rotated(info: MediaInfo, rotation: int) -> MediaInfo:
    """`info` of a stream stored unrotated, shown turned `rotation` degrees clockwise (display size swapped
    for 90/270, as the probe reports a rotated file)."""
    quarter = rotation % 180 == 90
    return dataclasses.replace(info, rotation=rotation % 360, width=info.height if quarter else info.width,
                               height=info.width if quarter else info.height)


def sweep_orphans(store: JobStore, *, older_than_s: float, now: float | None = None) -> list[str]:
    """Remove the directories of recorded sessions whose worker died (a marker, no record, older than
    `older_than_s`); their ids."""
    now = time.time() if now is None else now
    removed = []
    for entry in store.root.iterdir():
        marker = entry / MARKER
        try:
            stale = (marker.is_file() and is_job_id(entry.name) and not store.has_record(entry.name)
                     and now - marker.stat().st_mtime > older_than_s)
        except OSError:
            continue
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    return removed
