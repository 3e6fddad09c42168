"""Training on AVSBench-layout data (real or synthetic): `avs train`.

AVSegFormer's recipe (model-spec §4.2) with the knobs a CPU run needs: AdamW, Dice + 0.1 auxiliary
Dice (binary) or cross-entropy + 0.1 auxiliary Dice (AVSS), a frozen VGGish when its weights are
given, a seed, one JSON line of losses per step, and a resumable state saved after every epoch.
Only labelled frames are fed to the network (frames are independent, so unlabelled ones would cost
compute and teach nothing).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from model.build import build_model
from model.checkpoint import config_differences, load_checkpoint, save_checkpoint
from model.config import AVSConfig, with_overrides
from model.errors import CheckpointError, ConfigError
from model.lab.data import files, layout
from model.lab.data.avsbench import AVSSDataset, MS3Dataset, S4Dataset
from model.lab.losses import binary_loss, semantic_loss
from model.modeling.avs_model import AVSModel
from model.state_dict import load_exact
from model.variants import get_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    data: str
    subset: str  # s4 | ms3 | avss
    variant: str
    out: str  # final checkpoint (safetensors); the resumable state lives in `<out>.state/`
    epochs: int = 10
    batch_size: int = 4  # clips per step (S4: 4 clips x 5 frames = 20 frames when all are labelled)
    lr: float = 1e-4
    weight_decay: float = 0.01
    seed: int = 123  # AVSegFormer's
    vggish: str | None = None  # converted VGGish weights: loaded and frozen
    pvt: str | None = None  # converted PVT-v2 (or ResNet-50) weights for the visual backbone
    init: str | None = None  # start from this checkpoint's weights (fine-tuning); a fresh optimizer and schedule
    overrides: tuple[str, ...] = ()  # dotted config overrides on top of the variant, e.g. "head.upsample_last=true"
    size: int | None = None  # training frame size; default: the variant's input size
    all_train_masks: bool = True  # S4: use every mask file present (synthetic data labels all frames)
    num_workers: int = 0
    save_dtype: str = "float32"  # "float16" halves the checkpoint (the shipped demo uses it)
    resume: bool = True
    max_steps: int | None = None  # stop early (smoke tests)


def make_dataset(data: str | Path, subset: str, split: str, size: int, *, all_train_masks: bool = False) -> Dataset:
    if subset == "s4":
        return S4Dataset(data, split, size, all_train_masks=all_train_masks)
    if subset == "ms3":
        return MS3Dataset(data, split, size)
    if subset == "avss":
        return AVSSDataset(data, split, size)
    raise ConfigError(f"subset must be s4, ms3 or avss, got {subset!r}")


def model_config_for(cfg: TrainConfig) -> AVSConfig:
    """The variant's config, with the weight files and, for AVSS, the dataset's classes."""
    model_cfg = with_overrides(get_config(cfg.variant), cfg.overrides)
    if cfg.subset == "avss":
        names = list(files.read_label2idx(layout.avss_label2idx_path(cfg.data)))
        model_cfg = model_cfg.replace(num_classes=len(names), class_names=tuple(names))
    if cfg.vggish:
        if model_cfg.audio.backbone != "vggish":
            raise ConfigError(f"--vggish given, but {cfg.variant} uses the {model_cfg.audio.backbone!r} audio encoder")
        model_cfg = model_cfg.replace(audio=dataclasses.replace(model_cfg.audio, weights=cfg.vggish, frozen=True))
    if cfg.pvt:
        model_cfg = model_cfg.replace(visual=dataclasses.replace(model_cfg.visual, weights=cfg.pvt))
    return model_cfg


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def labelled_frames(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clip batch [B, T, ...] -> labelled real frames: frames [N,3,S,S], audio [N,1,96,64], masks [N,S,S]."""
    keep = (batch["gt_valid"] & batch["frame_valid"]).flatten()  # [B*T]
    frames = batch["frames"].flatten(0, 1)[keep]
    audio = batch["audio"].flatten(0, 1)[keep]
    masks = batch["masks"].flatten(0, 1)[keep]
    return frames, audio, masks


def compute_loss(model: AVSModel, frames: torch.Tensor, audio: torch.Tensor, masks: torch.Tensor,
                 num_classes: int) -> dict[str, torch.Tensor]:
    out = model(frames, audio)
    if num_classes == 1:
        return binary_loss(out.mask_logits, out.aux_logits, masks)
    return semantic_loss(out.mask_logits, out.aux_logits, masks.long())


class _State:
    """The resumable part of a run: `<out>.state/{model.safetensors,trainer.pt}`."""

    def __init__(self, out: Path) -> None:
        self.dir = out.with_name(out.name + ".state")
        self.model_path = self.dir / "model.safetensors"
        self.trainer_path = self.dir / "trainer.pt"

    def exists(self) -> bool:
        return self.model_path.is_file() and self.trainer_path.is_file()

    def save(self, model: AVSModel, model_cfg: AVSConfig, optimizer: torch.optim.Optimizer, *, epoch: int,
             step: int) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        save_checkpoint(model, model_cfg, self.model_path, provenance={"epoch": epoch, "step": step})
        tmp = self.trainer_path.with_suffix(".partial")
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        torch.save({"epoch": epoch, "step": step, "optimizer": optimizer.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "numpy_rng": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
                    "python_rng": list(random.getstate())}, tmp)
        tmp.replace(self.trainer_path)

    def load(self, model: AVSModel, optimizer: torch.optim.Optimizer) -> tuple[int, int]:
        saved, _ = load_checkpoint(self.model_path)
        model.load_state_dict(saved.state_dict())
        # our own file, but still loaded without unpickling code
        state = torch.load(self.trainer_path, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        kind, keys, pos, has_gauss, gauss = state["numpy_rng"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        version, internal, gauss_next = state["python_rng"]
        random.setstate((version, tuple(internal), gauss_next))
        return int(state["epoch"]), int(state["step"])


def train(cfg: TrainConfig, *, on_step: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train and write `cfg.out`. Returns a summary (also stored as the checkpoint's provenance)."""
    seed_everything(cfg.seed)
    model_cfg = model_config_for(cfg)
    size = cfg.size or model_cfg.input_size
    dataset = make_dataset(cfg.data, cfg.subset, "train", size, all_train_masks=cfg.all_train_masks)
    if len(dataset) == 0:
        raise ConfigError(f"{cfg.data} has no {cfg.subset} train clips")
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, generator=generator,
                        num_workers=cfg.num_workers, collate_fn=_collate, drop_last=False)
    model = build_model(model_cfg)
    init_differences: list[str] = []
    if cfg.init:
        init_differences = _initialise(model, model_cfg, cfg.init)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_total = cfg.epochs * len(loader)
    # cosine decay to 5% of the peak: the short CPU schedules converge noticeably better than with a flat lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, steps_total) / max(steps_total, 1))))

    out = Path(cfg.out)
    state = _State(out)
    epoch0, step = 0, 0
    if cfg.resume and state.exists():
        epoch0, step = state.load(model, optimizer)
        for _ in range(step):
            scheduler.step()
    log_path = out.with_name(out.name + ".log.jsonl")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    last: dict[str, Any] = {}
    with log_path.open("a", encoding="utf-8") as log:
        for epoch in range(epoch0, cfg.epochs):
            model.train()
            for batch in loader:
                frames, audio, masks = labelled_frames(batch)
                if frames.shape[0] == 0:
                    continue
                losses = compute_loss(model, frames, audio, masks, model_cfg.num_classes)
                optimizer.zero_grad(set_to_none=True)
                losses["loss"].backward()
                optimizer.step()
                scheduler.step()
                step += 1
                last = {"epoch": epoch + 1, "step": step, "frames": int(frames.shape[0]),
                        "lr": scheduler.get_last_lr()[0], "seconds": round(time.perf_counter() - started, 2),
                        **{k: round(float(v.detach()), 5) for k, v in losses.items()}}
                log.write(json.dumps(last) + "\n")
                log.flush()
                if on_step is not None:
                    on_step({**last, "steps_total": steps_total})
                if cfg.max_steps is not None and step >= cfg.max_steps:
                    break
            state.save(model, model_cfg, optimizer, epoch=epoch + 1, step=step)
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break
    summary = {"variant": cfg.variant, "subset": cfg.subset, "data": str(cfg.data), "epochs": cfg.epochs,
               "steps": step, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed, "size": size,
               "train_clips": len(dataset), "init": cfg.init, "init_differences": init_differences,
               "overrides": list(cfg.overrides), "final_loss": last.get("loss"),
               "seconds": round(time.perf_counter() - started, 1)}
    dtype = torch.float16 if cfg.save_dtype == "float16" else None
    save_checkpoint(model.eval(), model_cfg, out, provenance={"training": summary}, dtype=dtype)
    return summary


def _initialise(model: AVSModel, model_cfg: AVSConfig, path: str) -> list[str]:
    """Load a checkpoint's weights into `model` for fine-tuning; returns the config fields that differ.

    Every key and shape must match (load_exact names what does not), but the configs may differ in
    fields that change no tensor, e.g. where the mask head upsamples; those differences are returned so
    the run's summary records them. The optimizer and lr schedule start fresh, as in AVSBench's
    S4 -> MS3 initialisation.
    """
    start, info = load_checkpoint(path)
    if info.config.num_classes != model_cfg.num_classes:
        raise ConfigError(f"--init {path} has {info.config.num_classes} classes, this run needs "
                          f"{model_cfg.num_classes}")
    load_exact(model, start.state_dict(), source=f"--init {path}", error=CheckpointError)
    differences = config_differences(info.config, model_cfg)
    if differences:
        log.warning("--init %s was trained with a different config: %s", path, "; ".join(differences))
    return differences


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return batch
