"""A job's mask lines as ordered chunks named by the lease's fencing token (issue #25).

Objects: `masks/<job>/<token:012d>-<seq:08d>.ndjson`. `token` is the fencing token of the lease under which the
owner wrote (worker.core.leases: every new owner of a job gets a larger one); `seq` counts that owner's chunks
from 0. A chunk is put whole (the backends' puts are atomic), so a reader never sees half a chunk; each chunk
holds complete NDJSON mask lines (`{"frame_index": n, ...}`), frames increasing.

An owner's first chunk (`seq` 0) is its *start marker*: one line `{"start_frame": F}` saying it resumed at frame
F (it read the stored lines first, so frames below F are kept from earlier owners). The reader's rules:
1. A line of token `t` is served only when its frame is below the start frame of every larger token present:
   once a new owner has started at F, an older owner's frames >= F are stale, whether the new owner has reached
   them yet or not (so a follower never sees a frame that is later replaced).
2. Lines come out in frame order, each frame at most once (the first by (token, seq) wins among the ones rule 1
   allows, which are the same owner's repeat or an older owner's identical line).
3. The unterminated tail of a chunk (no final newline), or a line that is not a JSON object with an integer
   `frame_index`, is never served (counted in `ChunkRead.torn`): a torn line cannot reach a client.

What fencing does not cover here: a stale owner must still check its lease before each put (the token makes its
late chunks harmless to readers; the check keeps it from wasting writes). The new owner must write its start
marker before its first mask chunk; between its taking the lease and that marker, a follower may read a stale
owner's frames >= F written in that window — the writer keeps the window to one put.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from worker.core.objects.store import ObjectStore

_NAME = re.compile(r"^(\d{12})-(\d{8})\.ndjson$")


def chunk_key(job_id: str, token: int, seq: int) -> str:
    """`masks/<job>/<token:012d>-<seq:08d>.ndjson` (zero-padded so that names sort as numbers)."""
    if token < 0 or seq < 0 or token >= 10**12 or seq >= 10**8:
        raise ValueError(f"token {token} / seq {seq} out of range")
    return f"masks/{job_id}/{token:012d}-{seq:08d}.ndjson"


class MaskChunkWriter:
    """Writes one owner's chunks of a job. `begin(start_frame)` puts the start marker (seq 0); `write(lines)`
    puts the next chunk (seq 1, 2, ...). Lines are NDJSON strings without their newline. Raises the store's
    `ObjectStoreError`s; a chunk that failed may be written again with `write` (a retry gets a new seq, and the
    reader serves each frame once)."""

    def __init__(self, store: ObjectStore, job_id: str, token: int) -> None:
        self.store = store
        self.job_id = job_id
        self.token = token
        self.seq = 0

    def begin(self, start_frame: int) -> None:
        self.store.put_bytes(chunk_key(self.job_id, self.token, 0), json.dumps({"start_frame": start_frame})
                             .encode() + b"\n")
        self.seq = 1

    def write(self, lines: list[str]) -> str:
        """Put `lines` as the next chunk; returns its key. `begin` must have been called."""
        if self.seq == 0:
            raise RuntimeError("MaskChunkWriter.begin(start_frame) must come before the first chunk")
        if any("\n" in line for line in lines):
            raise ValueError("a mask line holds no newline")
        key = chunk_key(self.job_id, self.token, self.seq)
        self.store.put_bytes(key, "".join(line + "\n" for line in lines).encode())
        self.seq += 1
        return key


@dataclass
class ChunkRead:
    """What `read_mask_lines` found: the served `lines` (frame order), their `frames`, and how many stored lines
    were `stale` (rule 1), `repeated` (rule 2) or `torn` (rule 3)."""

    lines: list[str] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    stale: int = 0
    repeated: int = 0
    torn: int = 0


def read_mask_lines(store: ObjectStore, job_id: str, *, after_frame: int = -1) -> ChunkRead:
    """The job's servable mask lines with `frame_index > after_frame` (a follower passes its last frame).

    One listing, then one GET per chunk. Raises the store's `ObjectStoreError`s (a chunk deleted between the
    listing and its GET is skipped: the job is being deleted)."""
    from worker.core.objects.errors import ObjectNotFound

    chunks: list[tuple[int, int, str]] = []
    for key in store.list(f"masks/{job_id}/"):
        m = _NAME.match(key.rsplit("/", 1)[-1])
        if m:
            chunks.append((int(m.group(1)), int(m.group(2)), key))
    chunks.sort()
    result = ChunkRead()
    starts: dict[int, int] = {}  # token -> start frame from its marker
    bodies: list[tuple[int, bytes]] = []
    for token, seq, key in chunks:
        try:
            body = store.get(key)
        except ObjectNotFound:
            continue
        if seq == 0:
            try:
                starts[token] = int(json.loads(body)["start_frame"])
            except (ValueError, KeyError, TypeError):
                result.torn += 1
            continue
        bodies.append((token, body))
    # the cut-off for token t: the smallest start frame of any larger token (rule 1)
    cutoff: dict[int, float] = {}
    smallest = float("inf")
    for token in sorted({t for t, _ in bodies} | set(starts), reverse=True):
        cutoff[token] = smallest
        if token in starts:
            smallest = min(smallest, starts[token])
    chosen: dict[int, str] = {}
    for token, body in bodies:
        text = body.decode("utf-8", errors="replace")
        *lines, tail = text.split("\n")  # `tail` is "" after a final newline, else an unterminated piece
        if tail:
            result.torn += 1
        for line in lines:
            frame = _frame_of(line)
            if frame is None:
                result.torn += 1
            elif frame >= cutoff[token]:
                result.stale += 1
            elif frame in chosen:
                result.repeated += 1
            elif frame > after_frame:
                chosen[frame] = line
    for frame in sorted(chosen):
        result.frames.append(frame)
        result.lines.append(chosen[frame])
    return result


def _frame_of(line: str) -> int | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    frame = record.get("frame_index") if isinstance(record, dict) else None
    return frame if isinstance(frame, int) and not isinstance(frame, bool) and frame >= 0 else None
