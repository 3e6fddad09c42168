"""`coco.json`: the job's masks in the COCO object-detection format (https://cocodataset.org/#format-data).

One image per frame (id = frame_index + 1, with its `pts_s`), one annotation per frame and class present,
whose `segmentation` is the mask stream's own COCO RLE (`{"size": [h, w], "counts": str}`, exactly as
pycocotools encodes it, so `pycocotools.coco.COCO` loads the file and `annToMask` gives back the stream's
masks), `area` and `bbox` from pycocotools, `iscrowd` 0. Categories are the model's classes (background,
id 0, left out); a binary model has one, "sounding object".
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pycocotools import mask as coco_mask

from worker.masks import read_mask_lines

BINARY_CATEGORY = "sounding object"


def categories(class_names: list[str], seen: dict[int, str]) -> list[dict[str, Any]]:
    """COCO categories from the model's `class_names` (index = class id), else from the names the mask lines
    carried (`seen`: class id -> name), else the binary model's one category."""
    if len(class_names) > 1:
        return [{"id": i, "name": name, "supercategory": "sound"} for i, name in enumerate(class_names) if i > 0]
    if seen:
        return [{"id": i, "name": seen[i], "supercategory": "sound"} for i in sorted(seen)]
    return [{"id": 1, "name": BINARY_CATEGORY, "supercategory": "sound"}]


def _annotation(ann_id: int, image_id: int, category_id: int, size: list[int], counts: str) -> dict[str, Any]:
    rle = {"size": [int(size[0]), int(size[1])], "counts": counts.encode("ascii")}
    x, y, w, h = (float(v) for v in coco_mask.toBbox(rle))
    return {"id": ann_id, "image_id": image_id, "category_id": category_id,
            "segmentation": {"size": rle["size"], "counts": counts}, "area": int(coco_mask.area(rle)),
            "bbox": [x, y, w, h], "iscrowd": 0}


def coco_document(masks_path: Path, *, class_names: list[str], job_id: str) -> dict[str, Any]:
    """The COCO dict of the mask lines in `masks_path` (empty masks give an image and no annotation)."""
    images, annotations, seen = [], [], {}
    for record in read_mask_lines(masks_path):
        image_id = record["frame_index"] + 1
        h, w = record["size"]
        images.append({"id": image_id, "file_name": f"frame_{record['frame_index']:06d}.png", "width": w,
                       "height": h, "frame_index": record["frame_index"], "pts_s": record["pts_s"]})
        parts: Iterator[tuple[int, str]]
        if "segments" in record:
            parts = ((s["class_id"], s["counts"]) for s in record["segments"])
            seen.update({s["class_id"]: s["class_name"] for s in record["segments"]})
        else:
            parts = iter([(1, record["counts"])])
        for category_id, counts in parts:
            annotation = _annotation(len(annotations) + 1, image_id, category_id, record["size"], counts)
            if annotation["area"] > 0:
                annotations.append(annotation)
    return {"info": {"description": f"AVESFormer masks of job {job_id}", "version": "1.0"},
            "licenses": [], "images": images, "annotations": annotations,
            "categories": categories(class_names, seen)}


def write_coco(masks_path: Path, out: Path, *, class_names: list[str], job_id: str) -> Path:
    with out.open("w", encoding="utf-8") as fh:
        json.dump(coco_document(masks_path, class_names=class_names, job_id=job_id), fh, separators=(",", ":"))
    return out
