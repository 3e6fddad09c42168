"""CUDA paths (run when a GPU is present; CI machines have none, so these skip there)."""

from __future__ import annotations

import pytest
import torch

from model.build import build_model
from model.lab.model_bench import bench_model
from model.variants import get_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_fp16_autocast_matches_fp32_on_cuda() -> None:
    torch.manual_seed(0)
    model = build_model(get_config("avesformer-pvt_v2_b2")).cuda()
    frames, audio = torch.rand(2, 3, 224, 224, device="cuda"), torch.randn(2, 1, 96, 64, device="cuda")
    with torch.inference_mode():
        full = model(frames, audio).mask_logits
        with torch.autocast("cuda", dtype=torch.float16):
            half = model(frames, audio).mask_logits
    assert torch.isfinite(half).all()
    agreement = ((full > 0) == (half.float() > 0)).float().mean()
    assert agreement > 0.99


def test_bench_on_cuda_reports_the_gpu() -> None:
    result = bench_model("avesformer-tiny", batch_size=4, size=128, iters=3, device="cuda", amp=True)
    assert result["amp"] is True
    assert "cpu" not in str(result["device"]).lower()
    assert float(result["fps"]) > 0
