"""Mask encoding and the `masks.ndjson` file.

One JSON line per decoded frame, COCO RLE at the video's own resolution (pycocotools; counts as an
ASCII string, the compressed form every COCO tool reads):

    binary (S4/MS3): {"frame_index": 0, "pts_s": 0.0, "size": [h, w], "counts": "..."}
    semantic (AVSS): {"frame_index": 0, "pts_s": 0.0, "size": [h, w], "counts": "<all sounding pixels>",
                      "segments": [{"class_id": 17, "class_name": "dog", "counts": "..."}, ...]}

In the semantic form `counts` is the union of the non-background classes, so a client that only wants
"where is the sound" reads both forms the same way; `segments` has one RLE per class present
(background, id 0, is the complement and is left out).

The service's mask stream (`GET /jobs/{id}/masks`) ends with one more line once the job has finished,
`{"end": true, "status": ..., "frames": ..., "error": ..., "deleted": ...}` (see `app.api.mask_stream.end_line`).
Frame lines are the ones with a `frame_index`; readers here skip every other line, so a saved stream
reads like a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from pycocotools import mask as coco_mask


def encode_rle(masks: np.ndarray) -> list[str]:
    """uint8/bool masks [n, h, w] -> n compressed COCO RLE strings (column-major, as COCO defines them)."""
    if masks.ndim != 3:
        raise ValueError(f"masks must be [n, h, w], got {masks.shape}")
    if masks.shape[0] == 0:
        return []
    # pycocotools wants [h, w, n] uint8 in Fortran order
    fortran = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8, copy=False))
    return [rle["counts"].decode("ascii") for rle in coco_mask.encode(fortran)]


def decode_rle(counts: str, size: Sequence[int]) -> np.ndarray:
    """One RLE string and [h, w] -> uint8 mask [h, w]."""
    return coco_mask.decode({"size": [int(size[0]), int(size[1])], "counts": counts.encode("ascii")})


def record_labels(record: dict[str, Any]) -> np.ndarray:
    """A frame record back to its mask: uint8 [h, w] at the record's `size`, 0/1 for a binary record, class
    ids for a semantic one (its `segments`)."""
    size = record["size"]
    if "segments" not in record:
        return decode_rle(record["counts"], size)
    labels = np.zeros((int(size[0]), int(size[1])), dtype=np.uint8)
    for segment in record["segments"]:
        labels[decode_rle(segment["counts"], size) > 0] = segment["class_id"]
    return labels


def mask_records(masks: np.ndarray, *, start_index: int, pts_s: Sequence[float],
                 class_names: Sequence[str]) -> list[dict[str, Any]]:
    """masks uint8 [n, h, w] (0/1, or class ids when len(class_names) > 1) -> one record per frame."""
    n, h, w = masks.shape
    semantic = len(class_names) > 1
    union = encode_rle(masks > 0)
    records = []
    for i in range(n):
        record: dict[str, Any] = {"frame_index": start_index + i, "pts_s": round(float(pts_s[i]), 6),
                                  "size": [h, w], "counts": union[i]}
        if semantic:
            present = [int(c) for c in np.unique(masks[i]) if c != 0]
            per_class = encode_rle(np.stack([masks[i] == c for c in present])) if present else []
            record["segments"] = [{"class_id": c, "class_name": class_names[c], "counts": rle}
                                  for c, rle in zip(present, per_class, strict=True)]
        records.append(record)
    return records


class MaskWriter:
    """Writes `masks.ndjson`.

    atomic=True (offline CLI): lines go to `<name>.partial`, renamed on `commit()`; `abort()` deletes it,
    so a failed or cancelled run never leaves a half-written result under the final name.
    atomic=False (service): lines are appended to the final file and flushed per batch, so a client can
    stream them while the job runs; the job record, not the file name, says whether it finished.
    """

    def __init__(self, path: Path, *, atomic: bool = True, append: bool = False) -> None:
        self.path = path
        self.atomic = atomic
        self._target = path.with_name(path.name + ".partial") if atomic else path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO | None = self._target.open("a" if append else "w", encoding="utf-8")
        self.lines = 0

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        assert self._file is not None, "writer already closed"
        for record in records:
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
            self.lines += 1
        self._file.flush()

    def commit(self) -> Path:
        self._close(sync=True)
        if self.atomic:
            os.replace(self._target, self.path)
        return self.path

    def abort(self) -> None:
        self._close(sync=False)
        if self.atomic:
            self._target.unlink(missing_ok=True)

    def _close(self, *, sync: bool) -> None:
        if self._file is not None:
            if sync:
                self._file.flush()
                os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


def is_frame_record(record: Any) -> bool:
    """True for a frame line (it has a `frame_index`), False for the stream's end line or anything else."""
    return isinstance(record, dict) and isinstance(record.get("frame_index"), int)


def read_mask_lines(path: Path, *, from_frame: int = 0) -> Iterator[dict[str, Any]]:
    """Stream the frame records of a masks.ndjson file (one at a time: never the whole file in memory);
    other lines (a saved stream's end line) are skipped."""
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                if is_frame_record(record) and record["frame_index"] >= from_frame:
                    yield record
