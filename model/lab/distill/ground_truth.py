"""Optional ground truth for `avs distill --data DIR --gt-weight W`: the layout's masks of the sampled stills.

The cache never holds labels (the teacher's labels are what distillation learns from); when the user asks
for it, the masks of the frames that have one are read here, at training time, from the AVSBench layout the
videos were made from (`worker.distill_layout`: video `<category>/<name>.mkv` (S4), `<name>.mkv` (MS3) or
`<subset>/<uid>.mkv` (AVSS), still t shown from 0.96 t s). Frames without a mask file (S4 train stills 2-5 in
the real release) are marked invalid and get no ground-truth loss.

Masks are read as `model.lab.data.avsbench` reads them: S4/MS3 grey >= 128 -> 1, nearest resize; AVSS colour
labels resized with nearest, then mapped to class ids through the AVSBench palette.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model.lab.data import files, layout

STILL_SECONDS = 0.96


def _mask_path(data: Path, subset: str, split: str, rel: str, t: int) -> Path:
    stem = rel[: -len(Path(rel).suffix)] if Path(rel).suffix else rel
    if subset == "s4":
        category, name = stem.split("/", 1)
        return layout.s4_mask_path(data, split, category, name, t)
    if subset == "ms3":
        return layout.ms3_mask_path(data, split, stem, t)
    label, uid = stem.split("/", 1)
    return layout.avss_label_path(data, label, uid, t)


def layout_masks(data: str | Path, subset: str, split: str, rel: str, pts_s: np.ndarray,
                 size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ground truth of the frames of video `rel` (at `pts_s`, seconds) at side `size`.

    Returns (masks, valid): S4/MS3 float32 [n, S, S] 0/1, AVSS int64 [n, S, S] class ids; valid bool [n].
    """
    data = Path(data)
    n = len(pts_s)
    binary = subset in ("s4", "ms3")
    masks = torch.zeros(n, size, size, dtype=torch.float32 if binary else torch.int64)
    valid = torch.zeros(n, dtype=torch.bool)
    palette = None
    if not binary:
        palette = layout.avss_palette(len(files.read_label2idx(layout.avss_label2idx_path(data))))
    for i, t_s in enumerate(pts_s):
        path = _mask_path(data, subset, split, rel, round(float(t_s) / STILL_SECONDS))
        if not path.is_file():
            continue
        with Image.open(path) as image:
            if binary:
                grey = image.convert("L").resize((size, size), Image.Resampling.NEAREST)
                masks[i] = torch.from_numpy((np.asarray(grey) >= 128).astype(np.float32))
            else:
                rgb = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.NEAREST))
                masks[i] = torch.from_numpy(layout.colour_to_class(rgb, palette).astype(np.int64))
        valid[i] = True
    return masks, valid
