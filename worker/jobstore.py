"""Job records on the shared data volume: `AVS_DATA_DIR/jobs/<job_id>/`.

    job.json        the record (status, progress, video info, timings, error, options)
    upload<ext>     the uploaded video (deleted when the job ends)
    masks.ndjson    one line per frame, appended as batches finish
    overlay.mp4     when asked for

Files, not a database: the API and the workers share the volume anyway (the video is there), records
survive restarts of every process, and the embedded mode needs no server. Every read-modify-write
holds an exclusive `flock` on `job.lock`, so the API (cancel) and a worker (progress) never lose each
other's updates; the record is replaced atomically (write + rename), so readers never see half a file.
The module is standard-library only: the torch-free API imports it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from worker.contracts import JobStatus

RECORD = "job.json"
MASKS = "masks.ndjson"
OVERLAY = "overlay.mp4"


class JobNotFound(KeyError):
    pass


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobStore:
    def __init__(self, data_dir: str | Path) -> None:
        self.root = Path(data_dir) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)

    # ----------------------------------------------------------------------------------- paths
    def job_dir(self, job_id: str) -> Path:
        if not job_id.isalnum() or len(job_id) > 64:  # ids come from URLs: never let one walk the tree
            raise JobNotFound(job_id)
        return self.root / job_id

    def masks_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / MASKS

    def overlay_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / OVERLAY

    # --------------------------------------------------------------------------------- records
    def create(self, job_id: str, record: dict[str, Any]) -> dict[str, Any]:
        directory = self.job_dir(job_id)
        directory.mkdir(parents=True, exist_ok=True)
        now = time.time()
        full = {"job_id": job_id, "status": JobStatus.QUEUED.value, "created_at": now, "updated_at": now,
                "started_at": None, "finished_at": None, "progress": {"frames_done": 0, "frames_total": None},
                "timings": {}, "error": None, "attempts": 0, "cancel_requested": False, **record}
        with self._locked(job_id):
            self._write(job_id, full)
        return full

    def get(self, job_id: str) -> dict[str, Any]:
        path = self.job_dir(job_id) / RECORD
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise JobNotFound(job_id) from None

    def update(self, job_id: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> dict[str, Any]:
        """Apply `change` to the record under the lock; `change` edits in place or returns a new dict."""
        with self._locked(job_id):
            record = self.get(job_id)
            result = change(record)
            record = result if result is not None else record
            record["updated_at"] = time.time()
            self._write(job_id, record)
            return record

    def set_fields(self, job_id: str, **fields: Any) -> dict[str, Any]:
        return self.update(job_id, lambda r: r.update(fields))

    def list_ids(self) -> Iterator[str]:
        for entry in self.root.iterdir():
            if (entry / RECORD).is_file():
                yield entry.name

    def records(self) -> Iterator[dict[str, Any]]:
        for job_id in self.list_ids():
            try:
                yield self.get(job_id)
            except (JobNotFound, json.JSONDecodeError):
                continue  # deleted or being created right now

    def count_by_status(self) -> dict[str, int]:
        counts = dict.fromkeys((s.value for s in JobStatus), 0)
        for record in self.records():
            counts[record["status"]] = counts.get(record["status"], 0) + 1
        return counts

    # ------------------------------------------------------------------------------------ files
    def remove_files(self, job_id: str, *, keep_record: bool = True, keep: tuple[str, ...] = ()) -> None:
        """Delete the job's media and results; keep `job.json` (a tombstone that says what happened) and the
        files named in `keep` (a failed job keeps the mask lines it wrote)."""
        directory = self.job_dir(job_id)
        if not directory.exists():
            return
        if not keep_record:
            shutil.rmtree(directory, ignore_errors=True)
            return
        for entry in directory.iterdir():
            if entry.name not in (RECORD, "job.lock", *keep):
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)

    def expire(self, older_than_s: float, *, now: float | None = None) -> list[str]:
        """Delete finished jobs whose end is older than `older_than_s` (result TTL). Returns their ids."""
        now = time.time() if now is None else now
        removed = []
        for record in list(self.records()):
            finished_at = record.get("finished_at")
            if JobStatus(record["status"]).finished and finished_at and now - finished_at > older_than_s:
                self.remove_files(record["job_id"], keep_record=False)
                removed.append(record["job_id"])
        return removed

    # -------------------------------------------------------------------------------- internals
    @contextmanager
    def _locked(self, job_id: str) -> Iterator[None]:
        directory = self.job_dir(job_id)
        if not directory.exists():
            raise JobNotFound(job_id)
        with open(directory / "job.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, job_id: str, record: dict[str, Any]) -> None:
        path = self.job_dir(job_id) / RECORD
        tmp = path.with_name(f".{RECORD}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, separators=(",", ":")), encoding="utf-8")
        os.replace(tmp, path)
