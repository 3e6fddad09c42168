"""The resumable state of a training run: `<out>.state/step-<N>/`, written so that a kill at any moment
leaves the last complete state readable.

    model.safetensors   the weights (our checkpoint format)
    trainer.pt          optimizer, lr schedule, grad scaler, progress (epoch, batches done in it, step,
                        best validation mIoU) and every rank's random generators (tensors and plain values
                        only: loaded with `weights_only=True`, nothing is unpickled as code)

A state is written into a hidden `.partial-step-<N>/` folder by the main process and renamed into place
(an atomic rename), then older states beyond the last two are removed: a reader sees complete states only.
Under torchrun every rank reads the same folder (several machines: put `--out` on a shared file system, as
for any torchrun checkpoint).
"""

from __future__ import annotations

import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import AVSConfig
from model.lab.distributed import DistContext, barrier
from model.modeling.avs_model import AVSModel

KEEP = 2


@dataclass
class Progress:
    """Where a run is: `epoch` (0-based, the one in progress), `batches_done` of it (per process), optimizer
    `step`s so far, the best validation mIoU and its epoch, and the layout it was saved under (a resume with
    another world size or batch restarts the epoch, as its batches no longer line up)."""

    epoch: int = 0
    batches_done: int = 0
    step: int = 0
    best_miou: float | None = None
    best_epoch: int | None = None
    world_size: int = 1
    batch_size: int = 0
    grad_accum: int = 1


def rng_state() -> dict[str, Any]:
    """This process's generators: torch (CPU and, when present, CUDA), NumPy, Python."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
             "python": [version, list(internal), gauss_next]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class TrainState:
    """Saving and finding the states of the run whose final checkpoint is `out`."""

    def __init__(self, out: Path) -> None:
        self.root = out.with_name(out.name + ".state")

    def latest(self) -> Path | None:
        """The newest complete state, or None."""
        if not self.root.is_dir():
            return None
        states = sorted(p for p in self.root.glob("step-*") if (p / "trainer.pt").is_file())
        return states[-1] if states else None

    def save(self, ctx: DistContext, model: AVSModel, model_cfg: AVSConfig, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
             progress: Progress) -> None:
        """Collective: every rank calls it (their generators are gathered); the main process writes."""
        rngs = [None] * ctx.world_size if ctx.is_main else None
        if ctx.distributed:
            dist.gather_object(rng_state(), rngs, dst=0)
        else:
            rngs = [rng_state()]
        if ctx.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            name = f"step-{progress.step:09d}-epoch-{progress.epoch:04d}-batch-{progress.batches_done:07d}"
            partial = self.root / f".partial-{name}"
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            save_checkpoint(model, model_cfg, partial / "model.safetensors",
                            provenance={"epoch": progress.epoch, "step": progress.step})
            torch.save({"progress": asdict(progress), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rngs},
                       partial / "trainer.pt")
            final = self.root / name
            shutil.rmtree(final, ignore_errors=True)
            partial.rename(final)  # the state exists complete, or not at all
            self._prune()
        barrier(ctx)

    def load(self, path: Path, ctx: DistContext, model: AVSModel, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler) -> Progress:
        """Restore weights, optimizer, schedule, scaler and this rank's generators; returns the progress."""
        saved, _ = load_checkpoint(path / "model.safetensors")
        model.load_state_dict(saved.state_dict())
        state = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        progress = Progress(**state["progress"])
        rngs = state["rng"]
        if len(rngs) == ctx.world_size:
            set_rng_state(rngs[ctx.rank])
        return progress

    def _prune(self) -> None:
        for stale in self.root.glob(".partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        states = sorted(p for p in self.root.glob("step-*") if (p / "trainer.pt").is_file())
        for old in states[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
