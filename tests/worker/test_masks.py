"""COCO RLE encoding and masks.ndjson writing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from worker.masks import MaskWriter, decode_rle, encode_rle, mask_records, read_mask_lines


def test_rle_round_trip_on_odd_sizes() -> None:
    rng = np.random.default_rng(0)
    masks = (rng.random((3, 37, 53)) > 0.6).astype(np.uint8)
    counts = encode_rle(masks)
    assert all(isinstance(c, str) for c in counts)
    for mask, rle in zip(masks, counts, strict=True):
        np.testing.assert_array_equal(decode_rle(rle, mask.shape), mask)
        assert coco_mask.area({"size": list(mask.shape), "counts": rle.encode()}) == mask.sum()


def test_rle_is_column_major_like_coco() -> None:
    mask = np.zeros((2, 3), dtype=np.uint8)
    mask[0, 1] = 1  # column-major order: index 2 of 6
    (rle,) = encode_rle(mask[None])
    runs = coco_mask.frPyObjects({"size": [2, 3], "counts": [2, 1, 3]}, 2, 3)
    assert rle == runs["counts"].decode()


def test_binary_records() -> None:
    masks = np.zeros((2, 4, 5), dtype=np.uint8)
    masks[1, 1:3, 2:4] = 1
    records = mask_records(masks, start_index=10, pts_s=[0.4, 0.44], class_names=("sounding",))
    assert [r["frame_index"] for r in records] == [10, 11]
    assert records[1]["size"] == [4, 5]
    assert "segments" not in records[0]
    np.testing.assert_array_equal(decode_rle(records[1]["counts"], [4, 5]), masks[1])


def test_semantic_records_have_one_rle_per_class_present() -> None:
    names = tuple(f"c{i}" for i in range(5))
    labels = np.zeros((1, 6, 6), dtype=np.uint8)
    labels[0, :2] = 3
    labels[0, 4:] = 1
    (record,) = mask_records(labels, start_index=0, pts_s=[0.0], class_names=names)
    assert [(s["class_id"], s["class_name"]) for s in record["segments"]] == [(1, "c1"), (3, "c3")]
    np.testing.assert_array_equal(decode_rle(record["segments"][1]["counts"], [6, 6]), labels[0] == 3)
    np.testing.assert_array_equal(decode_rle(record["counts"], [6, 6]), labels[0] > 0)


def test_atomic_writer_commits_or_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "masks.ndjson"
    writer = MaskWriter(target)
    writer.write([{"frame_index": 0}])
    assert not target.exists()
    writer.abort()
    assert list(tmp_path.iterdir()) == []

    writer = MaskWriter(target)
    writer.write([{"frame_index": 0}, {"frame_index": 1}])
    writer.commit()
    assert [json.loads(line)["frame_index"] for line in target.read_text().splitlines()] == [0, 1]
    assert [r["frame_index"] for r in read_mask_lines(target, from_frame=1)] == [1]


def test_streaming_writer_appends_and_flushes_per_batch(tmp_path: Path) -> None:
    target = tmp_path / "masks.ndjson"
    writer = MaskWriter(target, atomic=False)
    writer.write([{"frame_index": 0}])
    assert target.read_text().count("\n") == 1  # visible to a reader before the job ends
    writer.commit()
    again = MaskWriter(target, atomic=False, append=True)
    again.write([{"frame_index": 1}])
    again.commit()
    assert target.read_text().count("\n") == 2


def test_encode_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError, match="n, h, w"):
        encode_rle(np.zeros((4, 4), dtype=np.uint8))
