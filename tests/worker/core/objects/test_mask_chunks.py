"""Mask-line chunks named by fencing token (worker.core.objects.mask_chunks), on both backends."""

from __future__ import annotations

import json

import pytest

from worker.core.objects.mask_chunks import MaskChunkWriter, chunk_key, read_mask_lines
from worker.core.objects.store import ObjectStore


def line(frame: int, owner: int) -> str:
    return json.dumps({"frame_index": frame, "pts_s": frame / 25, "owner": owner})


def lines(frames: range, owner: int) -> list[str]:
    return [line(f, owner) for f in frames]


def owners(store: ObjectStore, job: str) -> dict[int, int]:
    return {json.loads(text)["frame_index"]: json.loads(text)["owner"] for text in read_mask_lines(store, job).lines}


def test_chunk_names_sort_by_token_then_seq() -> None:
    assert chunk_key("j", 2, 3) == "masks/j/000000000002-00000003.ndjson"
    assert sorted([chunk_key("j", 10, 0), chunk_key("j", 9, 99), chunk_key("j", 10, 1)]) == \
        [chunk_key("j", 9, 99), chunk_key("j", 10, 0), chunk_key("j", 10, 1)]
    with pytest.raises(ValueError, match="out of range"):
        chunk_key("j", -1, 0)


def test_one_owner_reads_back_in_frame_order(store: ObjectStore) -> None:
    writer = MaskChunkWriter(store, "job1", token=1)
    with pytest.raises(RuntimeError):
        writer.write(lines(range(0, 3), 1))  # no start marker yet
    writer.begin(0)
    for start in range(0, 30, 10):
        writer.write(lines(range(start, start + 10), 1))
    read = read_mask_lines(store, "job1")
    assert read.frames == list(range(30))
    assert read.lines == lines(range(30), 1)
    assert (read.stale, read.repeated, read.torn) == (0, 0, 0)
    assert read_mask_lines(store, "job1", after_frame=24).frames == list(range(25, 30))
    assert read_mask_lines(store, "other").frames == []


def test_a_stale_owners_overlapping_frames_are_never_served(store: ObjectStore) -> None:
    """Owner 1 (token 1) writes 0-19; owner 2 takes the lease, resumes at 15 and writes 15-34; owner 1, not yet
    aware, writes 20-29 afterwards. Frames 15-29 of owner 1 are stale whenever they were written."""
    old, new = MaskChunkWriter(store, "j", token=1), MaskChunkWriter(store, "j", token=2)
    old.begin(0)
    old.write(lines(range(0, 10), 1))
    old.write(lines(range(10, 20), 1))
    new.begin(15)
    new.write(lines(range(15, 25), 2))
    old.write(lines(range(20, 30), 1))  # the stale owner's late chunk
    new.write(lines(range(25, 35), 2))
    read = read_mask_lines(store, "j")
    assert read.frames == list(range(35))  # every frame exactly once, in order
    assert owners(store, "j") == {f: (1 if f < 15 else 2) for f in range(35)}
    assert read.stale == 15
    assert read.repeated == 0
    assert read.torn == 0


def test_the_new_owners_start_marker_alone_hides_the_stale_frames(store: ObjectStore) -> None:
    """Before owner 2 has written a mask, its marker already cuts owner 1 at frame 10: a follower never sees a
    frame that would later be replaced."""
    old = MaskChunkWriter(store, "j", token=1)
    old.begin(0)
    old.write(lines(range(0, 10), 1))
    MaskChunkWriter(store, "j", token=2).begin(10)
    old.write(lines(range(10, 20), 1))
    read = read_mask_lines(store, "j")
    assert read.frames == list(range(10))
    assert read.stale == 10


def test_three_owners_each_cut_by_the_next(store: ObjectStore) -> None:
    a, b, c = (MaskChunkWriter(store, "j", token=t) for t in (3, 7, 12))  # tokens need not be consecutive
    a.begin(0)
    a.write(lines(range(0, 8), 3))
    b.begin(5)
    b.write(lines(range(5, 12), 7))
    c.begin(9)
    c.write(lines(range(9, 14), 12))
    a.write(lines(range(8, 20), 3))
    b.write(lines(range(12, 20), 7))
    assert owners(store, "j") == {f: 3 if f < 5 else 7 if f < 9 else 12 for f in range(14)}


def test_a_retried_chunk_is_served_once(store: ObjectStore) -> None:
    writer = MaskChunkWriter(store, "j", token=4)
    writer.begin(0)
    writer.write(lines(range(0, 5), 4))
    writer.write(lines(range(3, 8), 4))  # a retry after a put that had in fact landed
    read = read_mask_lines(store, "j")
    assert read.frames == list(range(8))
    assert read.repeated == 2


def test_torn_or_foreign_lines_are_never_served(store: ObjectStore) -> None:
    writer = MaskChunkWriter(store, "j", token=1)
    writer.begin(0)
    writer.write(lines(range(0, 3), 1))
    body = (line(3, 1) + "\n" + "not json\n" + json.dumps({"frame_index": "4"}) + "\n" + line(5, 1)[:-9]).encode()
    store.put_bytes(chunk_key("j", 1, 2), body)
    store.put_bytes("masks/j/notes.txt", b"ignored: not a chunk name\n")
    read = read_mask_lines(store, "j")
    assert read.frames == [0, 1, 2, 3]
    assert read.torn == 3
    with pytest.raises(ValueError, match="no newline"):
        writer.write(["two\nlines"])
