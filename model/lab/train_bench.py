"""Training-step speed: `avs bench train`, full precision against autocast (and eager against
`torch.compile`), in one process and one run.

A step is what `avs train` does per batch: forward on `frames` frames with their log-mel examples, the
recipe's loss, backward, AdamW. Inputs are random (speed does not depend on content). The configurations are
timed in alternation (A, B, A, B, ...), each the median of its own steps, so drift in machine load hits all of
them alike and the ratios hold on a noisy machine. Compilation and warm-up steps are not timed (the
compile's own cost is reported as `compile_s`).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from model.build import build_model
from model.lab.losses import binary_loss
from model.variants import get_config


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_train(variant: str, *, frames: int = 10, size: int | None = None, device: str = "cpu",
                amp: str | None = "bf16", compile_model: bool = False, steps: int = 5, warmup: int = 2,
                seed: int = 0) -> dict[str, Any]:
    """Steps/s of `variant` at `frames` frames per step and `size`² pixels, full precision vs `amp`
    ("bf16" | "fp16" | None) and, with `compile_model`, eager vs compiled. Raises ValueError for bad counts."""
    if frames < 1 or steps < 1 or warmup < 0:
        raise ValueError("frames and steps must be >= 1, warmup >= 0")
    dev = torch.device(device)
    cfg = get_config(variant)
    size = size or cfg.input_size
    torch.manual_seed(seed)
    x = torch.rand(frames, 3, size, size, device=dev)
    audio = torch.randn(frames, 1, 96, 64, device=dev)
    masks = (torch.rand(frames, size, size, device=dev) > 0.5).float()
    runs: dict[str, dict[str, Any]] = {}
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    setups = [("float32", None, False)]
    if amp:
        setups.append((amp, dtypes[amp], False))
    if compile_model:
        setups.append(("float32+compile", None, True))
    models = {}
    for name, dtype, compiled in setups:
        torch.manual_seed(seed)
        model = build_model(cfg).to(dev).train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        scaler = torch.amp.GradScaler(dev.type, enabled=dtype is torch.float16)
        module = torch.compile(model) if compiled else model

        def step(module=module, optimizer=optimizer, scaler=scaler, dtype=dtype) -> None:
            with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                out = module(x, audio)
            loss = binary_loss(out.mask_logits.float(), out.aux_logits.float(), masks)["loss"]
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

        started = time.perf_counter()
        for _ in range(max(warmup, 1 if compiled else 0)):
            step()
        _sync(dev)
        runs[name] = {"times": [], "compile_s": round(time.perf_counter() - started, 1) if compiled else None}
        models[name] = step
    for _ in range(steps):
        for name, step in models.items():
            _sync(dev)
            started = time.perf_counter()
            step()
            _sync(dev)
            runs[name]["times"].append(time.perf_counter() - started)
    result: dict[str, Any] = {"variant": variant, "frames_per_step": frames, "size": size, "steps": steps,
                              "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                              "threads": torch.get_num_threads(), "torch": torch.__version__, "runs": {}}
    for name, run in runs.items():
        median = statistics.median(run["times"])
        result["runs"][name] = {"steps_per_s": round(1 / median, 3), "frames_per_s": round(frames / median, 2),
                                "ms_per_step": round(1000 * median, 1), "compile_s": run["compile_s"]}
    base = result["runs"]["float32"]["steps_per_s"]
    result["speedup_vs_float32"] = {name: round(run["steps_per_s"] / base, 3)
                                    for name, run in result["runs"].items() if name != "float32"}
    return result
