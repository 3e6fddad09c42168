"""`masks.zip`: one 8-bit PNG per frame and a manifest, streamed into the archive one frame at a time.

    frame_000000.png ...   binary: 0 / 255; multi-class: the class id of each pixel (0 = background)
    manifest.json          {"frames": [{"file", "frame_index", "pts_s", "size"}], "binary", "class_names"}
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from worker.masks import read_mask_lines, record_labels


def png_name(frame_index: int) -> str:
    return f"frame_{frame_index:06d}.png"


def write_png_zip(masks_path: Path, out: Path, *, class_names: list[str]) -> Path:
    """Write `out` from `masks_path` (the job's mask lines). `class_names` (index = class id) are the model's;
    empty for a binary model. PNGs are stored, not deflated again (PNG is already deflate-compressed)."""
    binary = len(class_names) <= 1
    frames = []
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for record in read_mask_lines(masks_path):
            labels = record_labels(record)
            pixels = (labels > 0).astype(np.uint8) * 255 if binary and "segments" not in record else labels
            buffer = io.BytesIO()
            Image.fromarray(pixels.astype(np.uint8), mode="L").save(buffer, format="PNG", optimize=False)
            name = png_name(record["frame_index"])
            archive.writestr(name, buffer.getvalue())
            frames.append({"file": name, "frame_index": record["frame_index"], "pts_s": record["pts_s"],
                           "size": record["size"]})
        manifest = {"frames": frames, "binary": binary, "class_names": class_names,
                    "pixel_values": "0 = background, 255 = sounding object" if binary else "class id per pixel"}
        archive.writestr("manifest.json", json.dumps(manifest, indent=1), compress_type=zipfile.ZIP_DEFLATED)
    return out
