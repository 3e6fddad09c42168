"""GET /jobs/{id}/masks (and /streams/{id}/masks): the complete lines of `masks.ndjson`, followed while the job
runs, then the end line.

The worker appends lines as batches finish; this reads only whole lines (a torn last line waits for its
newline), sends each frame at most once and in order (a redelivered job may rewrite the file), and ends with
`end_line` once the record says the job has finished.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import anyio
from starlette.requests import Request

from app.api.mask_signals import SAFETY_POLL_S, Wakeup, hub_for, wait_for_signal
from worker.core.job_record import JobRecord
from worker.core.jobstore import JobNotFound, JobStore
from worker.core.streams import ended_by

MASKS_POLL_S = 0.05  # without signals (a store that does not publish): a line reaches a follower this late at most
MASKS_READ_BYTES = 1 << 20
MAX_LINE_BYTES = 256 << 20  # a frame's line is KBs; this only bounds a runaway file
_FRAME_INDEX = re.compile(rb'"frame_index"\s*:\s*(-?\d+)')


def _poll_masks(store: JobStore, job_id: str, offset: int,
                known: JobRecord | None = None) -> tuple[JobRecord | None, bytes, int]:
    """(record, the COMPLETE lines from `offset`, file size). With `known` (a record read earlier that has
    not changed since, as the store's signals say), the record is not read again.

    The record is read BEFORE the file, so a record that says "finished" guarantees that the read after
    it saw every line the worker wrote. Only whole lines are returned, so `offset` always sits just after
    a newline: a torn last line is read again at the next poll (and a worker that truncates it after a
    crash and writes it anew is followed exactly).
    """
    record = known
    if record is None:
        try:
            record = store.get(job_id)
        except (JobNotFound, ValueError):
            return None, b"", 0
    try:
        with open(store.masks_path(job_id), "rb") as fh:
            size = fh.seek(0, 2)
            if size <= offset:
                return record, b"", size
            fh.seek(offset)
            data = fh.read(MASKS_READ_BYTES)
            cut = data.rfind(b"\n")
            while cut < 0 and len(data) < min(size - offset, MAX_LINE_BYTES):  # one line longer than a read
                more = fh.read(MASKS_READ_BYTES)
                if not more:
                    break
                found = more.rfind(b"\n")
                cut = len(data) + found if found >= 0 else -1
                data += more
            return record, data[:cut + 1], size
    except FileNotFoundError:
        return record, b"", 0


def _frame_index(line: bytes) -> int | None:
    match = _FRAME_INDEX.search(line, 0, 96)
    return int(match.group(1)) if match else None


def end_line(record: JobRecord, frames: int | None = None) -> bytes:
    """The last line of every complete mask stream: `{"end": true, "status", "frames", "error", "deleted"}`.

    `frames` is how many frame lines the job's result holds, i.e. the frame lines this stream carried from
    frame 0 (`follow_masks` counts them; None: the record's count): all of them when `status` is "succeeded",
    those written before the failure when "failed" (kept, readable), none when "cancelled" (a cancelled
    job's files are removed). `deleted`: the client deleted the job, its frame lines are gone. A
    stream that ends without this line was cut (the connection, the server): resume with `from_frame`.
    Frame readers recognise frame lines by `frame_index` and skip this one. A REST stream's end line also says
    why it ended (`ended_by`: source, max_duration, stopped; `worker.core.streams`).
    """
    end = {"end": True, "status": record.status.value,
           "frames": record.progress.frames_done if frames is None else frames,
           "error": record.error.model_dump() if record.error is not None else None, "deleted": record.deleted}
    if record.kind == "stream":
        end["ended_by"] = ended_by(record)
    return json.dumps(end, separators=(",", ":")).encode() + b"\n"


async def follow_masks(request: Request, store: JobStore, job_id: str, from_frame: int,
                       poll_s: float = MASKS_POLL_S, *, signals: bool = True,
                       safety_poll_s: float = SAFETY_POLL_S) -> AsyncIterator[bytes]:
    """The complete lines of `masks.ndjson` with frame_index >= from_frame, following a live job, then the
    end line (`end_line`) once the job has finished.

    With a Redis store (and `signals`), reads the record and the file again whenever the store signals a change
    (`app.api.mask_signals`), and at least every `safety_poll_s`; otherwise polls them every `poll_s` while the
    job is queued or running. Ends when the job
    is finished and the file is exhausted (with the end line), or without the end line when the record
    disappears or the client goes away. A partial last line is held back until its newline arrives (and
    never sent if it never does). Frames are sent at most once, in increasing order: if the worker rewrites
    the file (a redelivered job), already-sent frames are skipped.
    """
    url = getattr(store, "url", None)
    channel = getattr(store, "masks_channel", None)
    if not signals or url is None or channel is None:
        async for chunk in _follow(request, store, job_id, from_frame, None, poll_s):
            yield chunk
        return
    async with hub_for(url).watch(channel(job_id)) as event:
        async for chunk in _follow(request, store, job_id, from_frame, event, safety_poll_s):
            yield chunk


async def _follow(request: Request, store: JobStore, job_id: str, from_frame: int, event: Wakeup | None,
                  wait_s: float) -> AsyncIterator[bytes]:
    """`follow_masks`'s loop: read, send, then wait for `event` (cleared BEFORE each read, so a signal that
    arrives during the read is not lost) or `wait_s`. A wake-up for new lines only reads the file; the record
    is read again when it changed (its signal), after a safety poll, and whenever there is no `event`."""
    offset = 0
    last_sent = -1
    last_seen, seen = -1, 0  # frame lines the file held (from frame 0), each counted once
    record: JobRecord | None = None
    while True:
        known = None
        if event is not None:
            known = None if event.record_changed else record
            event.clear()
        record, data, size = await anyio.to_thread.run_sync(_poll_masks, store, job_id, offset, known)
        if record is None:
            return
        if size < offset:  # the file was rewritten shorter (or removed): read it again, skip what was sent
            offset = 0
            continue
        if data:
            offset += len(data)
            out = []
            for line in data.split(b"\n"):
                if not line.strip():
                    continue
                index = _frame_index(line)
                if index is not None:
                    if index > last_seen:
                        last_seen, seen = index, seen + 1
                    if index < from_frame or index <= last_sent:
                        continue
                    last_sent = index
                out.append(line)
            if out:
                yield b"\n".join(out) + b"\n"
            continue
        if record.finished:
            yield end_line(record, seen)
            return
        if await request.is_disconnected():
            return
        if not await wait_for_signal(event, wait_s) and event is not None:
            event.record_changed = True  # a safety poll reads everything
