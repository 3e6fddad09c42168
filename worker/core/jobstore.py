"""Job records on the shared data volume: `AVS_DATA_DIR/jobs/<job_id>/`.

    job.json        the record (`worker.core.job_record.JobRecord`: status, progress, the probe result,
                    timings, error, options)
    upload<ext>     the uploaded video (deleted when the job ends)
    masks.ndjson    one line per frame, appended as batches finish
    overlay.mp4     when asked for

Files, not a database: the API and the workers share the volume anyway (the video is there), records
survive restarts of every process, and the embedded mode needs no server. Every read-modify-write
holds an exclusive `flock` on `job.lock`, so the API (cancel) and a worker (progress) never lose each
other's updates; the record is replaced atomically (write + rename), so readers never see half a file.
Torch-free: the API imports it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from worker.core.job_record import JobRecord, is_job_id

RECORD = "job.json"
MASKS = "masks.ndjson"
OVERLAY = "overlay.mp4"


LOCK_TIMEOUT_S = 10.0
"""How long a record's lock is waited for. A holder only keeps it for a read-modify-write or one batch of
mask lines, so a wait this long means a holder that is stopped (SIGSTOP, a frozen VM): give up, retry later."""


class JobNotFound(KeyError):
    """No record for this id (never created, expired, or not a well-formed id)."""


class JobLocked(TimeoutError):
    """The record's lock was not free within the timeout (its holder is stopped or stuck)."""


class JobStore:
    """The records of one folder of the data volume: `jobs/` (the default), or `streams/` for the REST streams
    (`worker.core.streams`), which share the record, its lock and its leases but are never listed as jobs."""

    def __init__(self, data_dir: str | Path, folder: str = "jobs") -> None:
        self.root = Path(data_dir) / folder
        self.root.mkdir(parents=True, exist_ok=True)

    # ----------------------------------------------------------------------------------- paths
    def job_dir(self, job_id: str) -> Path:
        if not is_job_id(job_id):  # ids come from URLs: never let one walk the tree
            raise JobNotFound(job_id)
        return self.root / job_id

    def masks_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / MASKS

    def overlay_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / OVERLAY

    # --------------------------------------------------------------------------------- records
    def create(self, record: JobRecord) -> JobRecord:
        """Write a new record (its directory may already hold the upload)."""
        self.job_dir(record.job_id).mkdir(parents=True, exist_ok=True)
        with self.locked(record.job_id):
            self.write(record)
        return record

    def get(self, job_id: str) -> JobRecord:
        """The record; `JobNotFound` when there is none. A file that does not parse raises `ValueError`."""
        path = self.job_dir(job_id) / RECORD
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise JobNotFound(job_id) from None
        try:
            return JobRecord.model_validate_json(text)
        except ValidationError as exc:
            raise ValueError(f"job {job_id}: unreadable record ({exc.error_count()} errors)") from exc

    def has_record(self, job_id: str) -> bool:
        """True when the job has a record (a folder without one is an upload being received, or abandoned)."""
        return (self.job_dir(job_id) / RECORD).is_file()

    def update(self, job_id: str, change: Callable[[JobRecord], None], *,
               timeout_s: float = LOCK_TIMEOUT_S) -> JobRecord:
        """Apply `change` (which edits the record in place) under the lock, write it, return it."""
        with self.locked(job_id, timeout_s=timeout_s):
            record = self.get(job_id)
            change(record)
            record.updated_at = time.time()
            self.write(record)
            return record

    def set_fields(self, job_id: str, **fields: Any) -> JobRecord:
        """Set top-level fields (validated as they are assigned) under the lock."""

        def change(record: JobRecord) -> None:
            for name, value in fields.items():
                setattr(record, name, value)

        return self.update(job_id, change)

    def notify(self, job_id: str, what: str = "lines") -> None:
        """Signal the followers of `job_id`'s mask stream that something changed (the Redis store publishes;
        here followers poll, so there is nothing to do)."""

    def list_ids(self) -> Iterator[str]:
        for entry in self.root.iterdir():
            if (entry / RECORD).is_file():
                yield entry.name

    def records(self) -> Iterator[JobRecord]:
        for job_id in self.list_ids():
            try:
                yield self.get(job_id)
            except (JobNotFound, ValueError):
                continue  # deleted or being created right now

    # -------------------------------------------------------------------------------- admission
    @contextmanager
    def admission(self, *, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """One lock for every API process: a backlog count and the reservation that follows it (the job's
        folder, made before its body is read) happen together, so concurrent uploads cannot all pass."""
        with _exclusive(self.root / ".admission.lock", timeout_s, "admission lock", poll_s=0.005):
            yield

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
            if record.finished and record.finished_at and now - record.finished_at > older_than_s:
                self.remove_files(record.job_id, keep_record=False)
                removed.append(record.job_id)
        return removed

    # -------------------------------------------------------------------------------- internals
    @contextmanager
    def locked(self, job_id: str, *, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """Hold the record's exclusive lock (`flock`, so across processes on the volume's host); `JobLocked`
        when it is not free within `timeout_s`, `JobNotFound` when the job's folder is gone."""
        directory = self.job_dir(job_id)
        if not directory.exists():
            raise JobNotFound(job_id)
        with _exclusive(directory / "job.lock", timeout_s, f"job {job_id}: record lock"):
            yield


    def write(self, record: JobRecord) -> None:
        """Replace job.json atomically (the caller holds `locked`); a failed write (a full disk) leaves no
        temporary file behind."""
        path = self.job_dir(record.job_id) / RECORD
        tmp = path.with_name(f".{RECORD}.{os.getpid()}.tmp")
        try:
            tmp.write_text(record.model_dump_json(), encoding="utf-8")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


@contextmanager
def _exclusive(path: Path, timeout_s: float, what: str, *, poll_s: float = 0.01) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` (across processes on the volume's host); `JobLocked` naming `what`
    when it is not free within `timeout_s`."""
    with open(path, "a+") as lock:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise JobLocked(f"{what} busy for {timeout_s:g} s") from None
                time.sleep(poll_s)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
