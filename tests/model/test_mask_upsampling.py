"""Block-and-band upsampling of binary masks: bit-equal to the straightforward computation, close to PyTorch's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.mask_upsampling import upsample_mask, upsample_mask_reference
from model.predictor import logit_threshold, postprocess_logits


def _blob(S: int, n: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    yy, xx = np.meshgrid(np.arange(S), np.arange(S), indexing="ij")
    centres = rng.uniform(0.2 * S, 0.8 * S, (n, 2))
    radius = rng.uniform(0.05 * S, 0.3 * S, n)
    blobs = radius[:, None, None] - np.hypot(yy[None] - centres[:, 0, None, None], xx[None] - centres[:, 1, None, None])
    return (blobs + rng.normal(0, noise, blobs.shape)).astype(np.float32)


@pytest.mark.parametrize("S", [32, 56, 128])
@pytest.mark.parametrize("out_size", [(1080, 1920), (360, 640), (121, 161), (48, 64), (17, 300), (1, 1)])
def test_equal_to_the_reference_bit_for_bit(S: int, out_size: tuple[int, int]) -> None:
    rng = np.random.default_rng(S * 1000 + out_size[0])
    for logits, cut in ((_blob(S, 3, rng, 0.3), 0.0), (_blob(S, 2, rng, 0.0), 0.7),
                        (rng.normal(0, 1, (2, S, S)).astype(np.float32), -0.4),  # all boundary
                        (np.full((1, S, S), 0.25, np.float32), float(np.float32(0.25))),  # every value on the cut
                        (np.zeros((1, S, S), np.float32), 0.0)):
        assert np.array_equal(upsample_mask(logits, out_size, cut), upsample_mask_reference(logits, out_size, cut))


def test_close_to_pytorch_float32_interpolation() -> None:
    """PyTorch's float32 arithmetic rounds differently: masks may differ only where the value is within
    1e-4 of the cut."""
    rng = np.random.default_rng(7)
    logits = _blob(128, 4, rng, 0.5)
    up = F.interpolate(torch.from_numpy(logits)[:, None], size=(720, 1280), mode="bilinear", align_corners=False)
    ours = upsample_mask(logits, (720, 1280), 0.0).transpose(0, 2, 1)
    differ = ours != (up[:, 0] > 0).numpy()
    assert np.abs(up[:, 0].numpy()[differ]).max(initial=0.0) < 1e-4
    assert differ.mean() < 1e-5


def test_the_predictor_path_uses_it_and_returns_masks_in_frame_layout() -> None:
    rng = np.random.default_rng(3)
    logits = torch.from_numpy(_blob(128, 2, rng, 0.2))[:, None]
    masks = postprocess_logits(logits, (90, 160), logit_threshold(0.5))
    assert masks.shape == (2, 90, 160)
    assert masks.dtype == np.uint8
    assert np.array_equal(masks, upsample_mask_reference(logits[:, 0].numpy(), (90, 160), 0.0).transpose(0, 2, 1))
    assert masks.transpose(1, 2, 0).flags.f_contiguous  # what COCO RLE reads without a copy
