"""The media folder of a job on the shared data volume: `AVS_DATA_DIR/<folder>/<job_id>/`.

    upload<ext>     the uploaded video (deleted when the job ends)
    masks.ndjson    one line per frame, appended as batches finish
    overlay.mp4     when asked for

Only the media lives here; the job's record, its lock and its lease are in Redis (`worker.core.state.redis_store`,
issue #24). The media moves off the volume in the next issue. Torch-free.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from worker.core.job_record import is_job_id
from worker.core.state.errors import JobNotFound

MASKS = "masks.ndjson"
OVERLAY = "overlay.mp4"


class MediaFolder:
    """The media folders of one kind of record: `data_dir/jobs/` (the default) or `data_dir/streams/`."""

    def __init__(self, data_dir: str | Path, folder: str = "jobs") -> None:
        self.root = Path(data_dir) / folder
        self.root.mkdir(parents=True, exist_ok=True)

    def job_dir(self, job_id: str) -> Path:
        """The job's folder (not created); `JobNotFound` for an id that is not well formed (ids come from URLs:
        never let one walk the tree)."""
        if not is_job_id(job_id):
            raise JobNotFound(job_id)
        return self.root / job_id

    def masks_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / MASKS

    def overlay_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / OVERLAY

    def remove_media(self, job_id: str, *, everything: bool = False, keep: tuple[str, ...] = ()) -> None:
        """Delete the job's media files, except those named in `keep` (a failed job keeps the mask lines it
        wrote); with `everything`, the folder itself."""
        directory = self.job_dir(job_id)
        if not directory.exists():
            return
        if everything:
            shutil.rmtree(directory, ignore_errors=True)
            return
        for entry in directory.iterdir():
            if entry.name not in keep:
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
