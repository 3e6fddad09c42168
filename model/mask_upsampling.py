"""Binary masks at the video's size from low-resolution logits, exactly and cheaply on a CPU.

The mask of a frame is `bilinear_upsample(logits) > cut` at the video's size (PyTorch's convention,
`align_corners=False`: output pixel d samples source coordinate `(d + 0.5) · in/out − 0.5`, clamped at 0,
between the two nearest source pixels). Done straightforwardly at 1080p that is 2 M interpolations and
comparisons per frame (7-10 ms on this project's 2-core machine, more than the tiny model's inference).

Most of that work is wasted: a bilinear value is a convex combination of its four source corners, so every
output pixel whose four corners are all above the cut is inside, and every one whose corners are all below
is outside, without computing anything. Output pixels sharing the same corners form a rectangular block
(a "cell", ~8 × 15 pixels at 128 → 1080 × 1920), so the mask is mostly a block-repeat of a 128 × 128 grid;
only cells whose corners straddle the cut (the object's boundary band, a few percent of the frame) are
interpolated, with the same float64 formula as the reference. A margin far above float64 rounding keeps
the decision of a "certain" cell identical to what the formula would give, so `upsample_mask` equals
`upsample_mask_reference` bit for bit (tested); the reference differs from PyTorch's float32
`F.interpolate` only where a value lies within ~1e-4 of the cut (rounding, tested too).

Masks come out transposed (`[n, W, H]`, C-contiguous), which is the column-major layout COCO RLE encodes,
so the encoder reads them without a copy. numpy only.
"""

from __future__ import annotations

import functools

import numpy as np

_MARGIN = 1e-9
"""Relative margin (of the largest |logit|) around the cut within which a cell is interpolated rather than
decided from its corners: ~10^7 times float64's rounding error of the formula."""


@functools.lru_cache(maxsize=64)
def _axis(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(lower source index, upper source index, lower weight, upper weight) per output position, float64."""
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    lower = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    w_upper = src - lower
    return lower, upper, 1.0 - w_upper, w_upper


def upsample_mask_reference(logits: np.ndarray, out_size: tuple[int, int], cut: float) -> np.ndarray:
    """The straightforward computation: logits [n, S, S] -> bilinear at `out_size` = (H, W), float64,
    then `> cut`. Returns uint8 [n, W, H] (transposed, see the module docstring)."""
    H, W = out_size
    y0, y1, wy0, wy1 = _axis(logits.shape[1], H)
    x0, x1, wx0, wx1 = _axis(logits.shape[2], W)
    values = logits.astype(np.float64)
    top = values[:, y0][:, :, x0] * wx0 + values[:, y0][:, :, x1] * wx1  # [n, H, W]
    bottom = values[:, y1][:, :, x0] * wx0 + values[:, y1][:, :, x1] * wx1
    full = top * wy0[:, None] + bottom * wy1[:, None]
    return np.ascontiguousarray((full > cut).transpose(0, 2, 1)).astype(np.uint8)


def upsample_mask(logits: np.ndarray, out_size: tuple[int, int], cut: float) -> np.ndarray:
    """logits float [n, S, S] -> uint8 masks [n, W, H] (transposed), equal to `upsample_mask_reference`.

    Cost: one block-repeat of an S × S grid per frame plus the interpolation of the boundary cells.
    """
    _, rows_in, cols_in = logits.shape
    H, W = out_size
    y0, _, wy0, wy1 = _axis(rows_in, H)
    x0, _, wx0, wx1 = _axis(cols_in, W)
    row_counts = np.bincount(y0, minlength=rows_in)  # output rows per cell row
    col_counts = np.bincount(x0, minlength=cols_in)
    values = np.ascontiguousarray(logits, dtype=np.float32)  # decisions on the stored values: exact in any type
    up_r = np.minimum(np.arange(rows_in) + 1, rows_in - 1)
    up_c = np.minimum(np.arange(cols_in) + 1, cols_in - 1)
    right, below = values[:, :, up_c], values[:, up_r]
    diagonal = below[:, :, up_c]
    low = np.minimum(np.minimum(values, right), np.minimum(below, diagonal))  # [n, S, S] per cell
    high = np.maximum(np.maximum(values, right), np.maximum(below, diagonal))
    margin = _MARGIN * (1.0 + abs(cut) + float(np.abs(values).max(initial=0.0)))
    inside = low > cut + margin
    unsure = ~inside & (high >= cut - margin)
    # Certain cells, block-repeated straight into the transposed layout [n, W, H]: first along H (a small
    # array), then whole H-long rows along W (contiguous copies).
    grid = inside.transpose(0, 2, 1).astype(np.uint8)  # [n, S(cols), S(rows)]
    out = np.repeat(np.repeat(grid, row_counts, axis=2), col_counts, axis=1)
    if unsure.any():
        _fill_band(out, values, unsure, cut, (wy0, wy1, row_counts), (wx0, wx1, col_counts))
    return out


def _fill_band(out: np.ndarray, values: np.ndarray, unsure: np.ndarray, cut: float,
               rows: tuple[np.ndarray, ...], cols: tuple[np.ndarray, ...]) -> None:
    """Interpolate the pixels of the unsure cells into `out` [n, W, H].

    A cell's four corners are the same for all its pixels, so each pixel is the reference's formula on four
    scalars and its own row and column weights: broadcast over the cell's block, cells grouped by block
    shape (two row counts × two column counts at most) so each group is one vector operation.
    """
    wy0, wy1, row_counts = rows
    wx0, wx1, col_counts = cols
    row_start = np.concatenate([[0], np.cumsum(row_counts)[:-1]])
    col_start = np.concatenate([[0], np.cumsum(col_counts)[:-1]])
    # cells no output pixel falls in (when the output is smaller than the logits) have nothing to fill
    frame, ci, cj = np.nonzero(unsure & (row_counts > 0)[:, None] & (col_counts > 0)[None, :])
    up_r = np.minimum(ci + 1, len(row_counts) - 1)  # the cell's lower and right corners (clamped at the edges)
    up_c = np.minimum(cj + 1, len(col_counts) - 1)
    a = values[frame, ci, cj].astype(np.float64)[:, None, None]  # the reference's arithmetic: float64
    b = values[frame, ci, up_c].astype(np.float64)[:, None, None]
    c = values[frame, up_r, cj].astype(np.float64)[:, None, None]
    d = values[frame, up_r, up_c].astype(np.float64)[:, None, None]
    shapes = row_counts[ci] * 100_000 + col_counts[cj]
    for shape in np.unique(shapes):
        k = np.flatnonzero(shapes == shape)
        n_rows, n_cols = int(row_counts[ci[k[0]]]), int(col_counts[cj[k[0]]])
        r = row_start[ci[k]][:, None] + np.arange(n_rows)  # [K, R] output rows
        q = col_start[cj[k]][:, None] + np.arange(n_cols)  # [K, C] output columns
        wxa, wxb = wx0[q][:, None, :], wx1[q][:, None, :]
        value = (a[k] * wxa + b[k] * wxb) * wy0[r][:, :, None] + (c[k] * wxa + d[k] * wxb) * wy1[r][:, :, None]
        out[frame[k][:, None, None], q[:, None, :], r[:, :, None]] = value > cut
