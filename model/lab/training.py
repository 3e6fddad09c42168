"""Training on AVSBench-layout data (real or synthetic): `avs train`, on one process or many (`torchrun`).

AVSegFormer's recipe (model-spec §4.2) by default, with what training at scale needs: a device (`cuda[:N]`),
bfloat16/float16 autocast (a gradient scaler for float16), gradient accumulation and clipping, a warm-up +
decay schedule (`model.lab.lr_schedule`), `torch.compile`, data parallelism over `torch.distributed`
(`model.lab.distributed`: one process per GPU, or gloo processes on the CPU), evaluation on the validation
split every k epochs with the best checkpoint kept, TensorBoard events and a JSON line per step, and a state
saved atomically every k steps and at each epoch's end (`model.lab.train_state`) from which a killed run
resumes exactly where the state was taken (the same batches, the same random numbers).

Data parallel = one process with the same global batch: every process sees `batch_size` clips per step
from a `DistributedSampler` shard (the sampler's permutation depends only on the seed and the epoch, so the
union of the shards of a step is the batch a single process with `batch_size x world_size` clips sees), and
DDP averages the gradients. The losses are means over frames, so the two agree when every process has as
many labelled frames as the others (always true for MS3 and for S4's one labelled frame per clip).
Only labelled frames are fed to the network (frames are independent, so unlabelled ones would cost
compute and teach nothing).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from model.build import build_model
from model.checkpoint import save_checkpoint
from model.config import AVSConfig, with_overrides
from model.errors import ConfigError
from model.lab.data import files, layout
from model.lab.distributed import DistContext, barrier, broadcast_object, init_distributed, mean_over_ranks, shutdown
from model.lab.init_weights import initialise_from_checkpoint
from model.lab.lr_schedule import SCHEDULES, lr_factor
from model.lab.train_parts import (
    AMP_DTYPES,
    ShardSampler,
    amp_dtype,
    collate,
    compute_loss,
    labelled_frames,
    make_dataset,
    seed_everything,
)
from model.lab.train_state import Progress, TrainState
from model.variants import get_config

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class TrainConfig:
    data: str
    subset: str  # s4 | ms3 | avss
    variant: str
    out: str  # final checkpoint (safetensors); the resumable state lives in `<out>.state/`
    epochs: int = 10
    batch_size: int = 4  # clips per step and process (S4: 4 clips x 5 frames = 20 frames when all are labelled)
    lr: float = 1e-4
    weight_decay: float = 0.01
    seed: int = 123  # AVSegFormer's
    vggish: str | None = None  # converted VGGish weights: loaded and frozen
    pvt: str | None = None  # converted PVT-v2 (or ResNet-50) weights for the visual backbone
    init: str | None = None  # start from this checkpoint's tensors whose name and shape fit; fresh optimizer, schedule
    overrides: tuple[str, ...] = ()  # dotted config overrides on top of the variant, e.g. "head.upsample_last=true"
    size: int | None = None  # training frame size; default: the variant's input size
    all_train_masks: bool = True  # S4: use every mask file present (synthetic data labels all frames)
    num_workers: int = 0
    save_dtype: str = "float32"  # "float16" halves the checkpoint (the shipped demo uses it)
    resume: bool = True
    max_steps: int | None = None  # stop early (smoke tests)
    device: str = "cpu"  # cpu | cuda | cuda:N (under torchrun "cuda" is cuda:LOCAL_RANK)
    amp: str | None = None  # None | "bf16" | "fp16" | "auto" (bf16 where supported, else fp16)
    grad_accum: int = 1  # batches per optimizer step
    clip_grad: float = 0.0  # max global gradient norm (0: no clipping; the norm is logged either way)
    schedule: str = "cosine"  # constant | cosine | poly, after the warm-up
    warmup_steps: int = 0
    min_lr_ratio: float = 0.05  # where cosine/poly decay ends, as a fraction of `lr`
    compile: bool = False  # torch.compile the model
    freeze_backbone_epochs: int = 0  # the visual backbone gets no gradient during the first N epochs
    eval_every: int = 0  # evaluate on `eval_split` every k epochs (0: never)
    eval_from: int = 1  # the first epoch (1-based) evaluated
    eval_split: str = "val"
    save_every: int = 0  # also save the resumable state every k optimizer steps (0: at each epoch's end only)
    tensorboard: str | None = None  # event folder (default: `<out>.tb/`; "" for none)
    sync_bn: bool = True  # data parallel on GPUs: BatchNorm statistics over the global batch (SyncBatchNorm)


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


def check_train_config(cfg: TrainConfig) -> None:
    """Raise ConfigError for values no run could use (before anything is built or any process group joined)."""
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.grad_accum < 1:
        raise ConfigError("epochs, batch size and grad accumulation must be >= 1")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ConfigError(f"max_steps must be >= 1, got {cfg.max_steps}")
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
    if cfg.clip_grad < 0 or cfg.warmup_steps < 0 or cfg.save_every < 0 or cfg.eval_every < 0:
        raise ConfigError("clip_grad, warmup_steps, save_every and eval_every must not be negative")
    if not 0.0 <= cfg.min_lr_ratio <= 1.0:
        raise ConfigError(f"min_lr_ratio must be within [0, 1], got {cfg.min_lr_ratio}")
    if cfg.amp is not None and cfg.amp not in (*AMP_DTYPES, "auto"):
        raise ConfigError(f"--amp must be bf16, fp16 or auto, got {cfg.amp!r}")


def train(cfg: TrainConfig, *, on_step: Callable[[dict[str, Any]], None] | None = None,
          on_init: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train and write `cfg.out` (the last weights) and, with evaluation on, `<stem>.best<suffix>` (the best
    validation mIoU). Under torchrun every process calls this; only the main one writes and calls `on_step`.
    Returns the run's summary (also stored as the checkpoint's provenance).

    With `cfg.init`, every tensor of that checkpoint whose name and shape fit is taken
    (`model.lab.init_weights`); `on_init` gets the report (what was taken, what starts fresh) before the first
    step, and the summary keeps it as `init_report`.

    Raises ConfigError for bad settings or data, CheckpointError for an `init` of which no tensor fits.
    """
    check_train_config(cfg)
    ctx = init_distributed(cfg.device)
    try:
        return _Trainer(cfg, ctx, on_step, on_init).run()
    finally:
        shutdown(ctx)


class _Trainer:
    """One process's share of a run (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext, on_step: Callable[[dict[str, Any]], None] | None,
                 on_init: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.on_step = on_step if ctx.is_main else None
        self.on_init = on_init if ctx.is_main else None
        self.out = Path(cfg.out)
        self.amp = amp_dtype(cfg.amp, ctx.device)
        self.resumed_from: int | None = None  # the step of the state this run resumed from

    # ------------------------------------------------------------------------------------------- set-up
    def _build(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        seed_everything(cfg.seed)  # the same on every rank: identical initial weights (DDP also broadcasts)
        self.model_cfg = self._model_config()
        self.size = cfg.size or self.model_cfg.input_size
        self.dataset = self._train_dataset()
        self.sampler = ShardSampler(self.dataset, ctx, cfg.seed)
        self.loader = DataLoader(self.dataset, batch_size=cfg.batch_size, sampler=self.sampler,
                                 num_workers=cfg.num_workers, collate_fn=collate,
                                 pin_memory=ctx.device.type == "cuda", persistent_workers=cfg.num_workers > 0)
        self.model = build_model(self.model_cfg)
        self.init_report = initialise_from_checkpoint(self.model, self.model_cfg, cfg.init) if cfg.init else None
        if self.init_report is not None and self.on_init is not None:
            self.on_init(self.init_report)
        self._batch_norm_across_processes()
        self.model.to(ctx.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]  # not the frozen audio encoder
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps_per_epoch = math.ceil(math.ceil(len(self.sampler) / cfg.batch_size) / cfg.grad_accum)
        self.steps_total = cfg.epochs * steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(
            step, total_steps=self.steps_total, warmup_steps=cfg.warmup_steps, schedule=cfg.schedule,
            min_ratio=cfg.min_lr_ratio))
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=self.amp is torch.float16)
        self.state = TrainState(self.out)
        self.progress = Progress(world_size=ctx.world_size, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum)
        latest = self.state.latest() if cfg.resume else None
        if latest is not None:
            saved = self.state.load(latest, ctx, self.model, self.optimizer, self.scheduler, self.scaler)
            same_layout = (saved.world_size, saved.batch_size, saved.grad_accum) == \
                (ctx.world_size, cfg.batch_size, cfg.grad_accum)
            if saved.batches_done and not same_layout:
                log.warning("resumed with another world size, batch or accumulation: epoch %d restarts",
                            saved.epoch + 1)
                saved.batches_done = 0
            saved.world_size, saved.batch_size, saved.grad_accum = ctx.world_size, cfg.batch_size, cfg.grad_accum
            self.progress = saved
            self.resumed_from = saved.step
            if ctx.is_main:
                log.info("resumed from %s (epoch %d, step %d)", latest, saved.epoch + 1, saved.step)

    # Hooks a trainer of another kind overrides (`model.lab.distill.training` distils from a teacher's cache):
    # the model's config, the training items, one batch's losses, the validation metric.
    def _model_config(self) -> AVSConfig:
        return model_config_for(self.cfg)

    def _train_dataset(self) -> Any:
        """The items the sampler shards (AVSBench clips here); ConfigError when there are none."""
        cfg = self.cfg
        dataset = make_dataset(cfg.data, cfg.subset, "train", self.size, all_train_masks=cfg.all_train_masks)
        if len(dataset) == 0:
            raise ConfigError(f"{cfg.data} has no {cfg.subset} train clips")
        if cfg.eval_every and len(make_dataset(cfg.data, cfg.subset, cfg.eval_split, self.size)) == 0:
            raise ConfigError(f"--eval-every: {cfg.data} has no {cfg.subset} {cfg.eval_split} clips")
        return dataset

    def _batch_loss(self, module: torch.nn.Module, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], int]:
        """The losses of one collated batch (`"loss"` is optimised) and the number of frames they cover."""
        frames, audio, masks = (t.to(self.ctx.device, non_blocking=True) for t in labelled_frames(batch))
        if frames.shape[0] == 0:
            raise ConfigError("a batch without labelled frames (every AVSBench clip labels at least one)")
        return compute_loss(module, frames, audio, masks, self.model_cfg.num_classes), int(frames.shape[0])

    def _evaluate(self) -> dict[str, Any]:
        """The validation metrics (`miou` picks the best checkpoint, `fscore` is logged), main process only."""
        from model.lab.evaluation import evaluate

        cfg = self.cfg
        return evaluate(self.model, self.model_cfg, data=cfg.data, subset=cfg.subset, split=cfg.eval_split,
                        size=self.size, device=str(self.ctx.device))

    def _batch_norm_across_processes(self) -> None:
        """Trainable BatchNorm layers (ResNet-50, the tiny audio encoder; not PVT-v2 nor the frozen VGGish) see
        only their process's share of the batch. On GPUs they become SyncBatchNorm (statistics of the global
        batch, as one process would compute them); PyTorch has no SyncBatchNorm on the CPU, so gloo runs keep
        per-process statistics and say so."""
        if not self.ctx.distributed:
            return
        trainable_bn = [name for name, module in self.model.named_modules()
                        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
                        and any(p.requires_grad for p in module.parameters())]
        if not trainable_bn:
            return
        if self.ctx.device.type == "cuda" and self.cfg.sync_bn:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        elif self.ctx.is_main:
            log.warning("%d trainable BatchNorm layers (%s, ...) use per-process batch statistics: results differ "
                        "slightly from one process with the same global batch", len(trainable_bn), trainable_bn[0])

    def _wrap(self) -> torch.nn.Module:
        """The module the steps call: DDP around the model when distributed, compiled when asked. Built again
        when the backbone is unfrozen: DDP fixes the set of parameters it reduces when it is constructed."""
        module: torch.nn.Module = self.model
        if self.ctx.distributed:
            device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            module = DistributedDataParallel(module, device_ids=device_ids)
        if self.cfg.compile:
            module = torch.compile(module)
        return module

    def _writers(self) -> tuple[Any, Any]:
        if not self.ctx.is_main:
            return None, None
        self.out.parent.mkdir(parents=True, exist_ok=True)
        log_path = self.out.with_name(self.out.name + ".log.jsonl")
        if self.resumed_from is not None:
            _cut_log(log_path, self.resumed_from)  # lines a killed run wrote after its last state come again
        # a resumed run continues its log; a fresh one (--no-resume, or no state yet) starts a new one
        jsonl = log_path.open("a" if self.resumed_from is not None else "w", encoding="utf-8")
        folder = self.cfg.tensorboard if self.cfg.tensorboard is not None else str(self.out) + ".tb"
        if not folder:
            return jsonl, None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # pragma: no cover - the [train] extra brings it
            raise ConfigError("TensorBoard events need the `tensorboard` package (pip install -e '.[train]'), "
                              "or pass --tensorboard ''") from exc
        # purge_step: events a killed run wrote after its last saved state are dropped from the curves
        return jsonl, SummaryWriter(folder, purge_step=self.progress.step or None)

    # ------------------------------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        cfg, ctx = self.cfg, self.ctx
        self._build()
        jsonl, board = self._writers()
        started = time.perf_counter()
        last: dict[str, Any] = {}
        module, frozen_now = None, None
        try:
            while self.progress.epoch < cfg.epochs and not self._done():
                epoch = self.progress.epoch
                frozen = epoch < cfg.freeze_backbone_epochs
                if frozen != frozen_now:
                    self.model.visual_encoder.requires_grad_(not frozen)
                    module, frozen_now = self._wrap(), frozen
                last = self._epoch(module, jsonl, board, started) or last
                if self._done() and self.progress.batches_done:
                    break  # max_steps mid-epoch: the state below records where
                self.progress.epoch, self.progress.batches_done = epoch + 1, 0
                self._maybe_evaluate(epoch + 1, jsonl, board)
                self.state.save(ctx, self.model, self.model_cfg, self.optimizer, self.scheduler, self.scaler,
                                self.progress)
            if self.progress.batches_done:
                self.state.save(ctx, self.model, self.model_cfg, self.optimizer, self.scheduler, self.scaler,
                                self.progress)
        finally:
            if jsonl is not None:
                jsonl.close()
            if board is not None:
                board.close()
        summary = self._summary(last, time.perf_counter() - started)
        if ctx.is_main:
            dtype = torch.float16 if cfg.save_dtype == "float16" else None
            save_checkpoint(self.model.eval(), self.model_cfg, self.out, provenance={"training": summary},
                            dtype=dtype)
        barrier(ctx)
        return summary

    def _done(self) -> bool:
        return self.cfg.max_steps is not None and self.progress.step >= self.cfg.max_steps

    def _epoch(self, module: torch.nn.Module, jsonl: Any, board: Any, started: float) -> dict[str, Any]:
        cfg, ctx, progress = self.cfg, self.ctx, self.progress
        self.sampler.start_epoch(progress.epoch, progress.batches_done * cfg.batch_size)
        self.model.train()
        batches = len(self.loader)
        sums: dict[str, float] = {}
        frames_seen, micro, step_started = 0, 0, time.perf_counter()
        last: dict[str, Any] = {}
        autocast = torch.autocast(ctx.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None)
        for index, batch in enumerate(self.loader):
            micro += 1
            stepping = micro == cfg.grad_accum or index + 1 == batches
            # between the micro-batches of one step, gradients accumulate locally; DDP reduces on the last
            sync = contextlib.nullcontext() if stepping or not ctx.distributed else module.no_sync()
            with sync:
                with autocast:
                    losses, batch_frames = self._batch_loss(module, batch)
                self.scaler.scale(losses["loss"] / cfg.grad_accum).backward()
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
            frames_seen += batch_frames
            progress.batches_done += 1
            if not stepping:
                continue
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.clip_grad if cfg.clip_grad > 0 else math.inf)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            progress.step += 1
            seconds = time.perf_counter() - step_started
            values = {k: v / micro for k, v in sums.items()}
            values["grad_norm"] = float(grad_norm)
            values = mean_over_ranks(values, ctx)  # collective: every rank, every step
            last = {"epoch": progress.epoch + 1, "step": progress.step,
                    "frames": frames_seen * ctx.world_size, "lr": self.scheduler.get_last_lr()[0],
                    "seconds": round(time.perf_counter() - started, 2),
                    "frames_per_s": round(frames_seen * ctx.world_size / max(seconds, 1e-9), 2),
                    **{k: round(v, 5) for k, v in values.items()}}
            self._log(last, jsonl, board)
            sums, frames_seen, micro, step_started = {}, 0, 0, time.perf_counter()
            if cfg.save_every and progress.step % cfg.save_every == 0 and index + 1 < batches:
                self.state.save(ctx, self.model, self.model_cfg, self.optimizer, self.scheduler, self.scaler,
                                progress)
            if self._done():
                break
        return last

    def _log(self, row: dict[str, Any], jsonl: Any, board: Any) -> None:
        if jsonl is not None:
            jsonl.write(json.dumps(row) + "\n")
            jsonl.flush()
        if board is not None:
            for key in ("loss", "main", "aux", "soft", "hard", "grad_norm", "lr", "frames_per_s"):
                if key in row:
                    board.add_scalar(f"train/{key}", row[key], row["step"])
        if self.on_step is not None:
            self.on_step({**row, "steps_total": self.steps_total})

    def _maybe_evaluate(self, epoch: int, jsonl: Any, board: Any) -> None:
        """Every `eval_every` epochs from `eval_from`: AVSBench-exact metrics on the validation split, by the
        main process (the others wait), and the best checkpoint kept by mIoU (AVSegFormer's model selection)."""
        cfg, progress = self.cfg, self.progress
        if not cfg.eval_every or epoch < cfg.eval_from or (epoch - cfg.eval_from) % cfg.eval_every:
            return
        if self.ctx.is_main:
            result = self._evaluate()
            self.model.train()
            best = progress.best_miou is None or result["miou"] > progress.best_miou
            if best:
                progress.best_miou, progress.best_epoch = result["miou"], epoch
                save_checkpoint(self.model.eval(), self.model_cfg, self.best_path(),
                                provenance={"epoch": epoch, "step": progress.step, cfg.eval_split: result})
                self.model.train()
            row = {"epoch": epoch, "step": progress.step, "eval_split": cfg.eval_split, "miou": result["miou"],
                   "fscore": result["fscore"], "best": best}
            if jsonl is not None:
                jsonl.write(json.dumps(row) + "\n")
                jsonl.flush()
            if board is not None:
                board.add_scalar(f"{cfg.eval_split}/miou", result["miou"], progress.step)
                board.add_scalar(f"{cfg.eval_split}/fscore", result["fscore"], progress.step)
        barrier(self.ctx)
        # every rank keeps the same progress record (only the main one saves it, but all resume from it)
        progress.best_miou, progress.best_epoch = broadcast_object((progress.best_miou, progress.best_epoch),
                                                                   self.ctx)

    def best_path(self) -> Path:
        return self.out.with_name(f"{self.out.stem}.best{self.out.suffix}")

    def _summary(self, last: dict[str, Any], seconds: float) -> dict[str, Any]:
        cfg = self.cfg
        return {"variant": cfg.variant, "subset": cfg.subset, "data": str(cfg.data), "epochs": cfg.epochs,
                "steps": self.progress.step, "batch_size": cfg.batch_size, "world_size": self.ctx.world_size,
                "grad_accum": cfg.grad_accum, "global_batch": cfg.batch_size * self.ctx.world_size * cfg.grad_accum,
                "lr": cfg.lr, "schedule": cfg.schedule, "warmup_steps": cfg.warmup_steps, "seed": cfg.seed,
                "size": self.size, "device": str(self.ctx.device),
                "amp": str(self.amp).removeprefix("torch.") if self.amp is not None else None,
                "compile": cfg.compile, "freeze_backbone_epochs": cfg.freeze_backbone_epochs,
                "train_clips": len(self.dataset), "init": cfg.init, "init_report": self.init_report,
                "overrides": list(cfg.overrides), "final_loss": last.get("loss"),
                "best_miou": self.progress.best_miou, "best_epoch": self.progress.best_epoch,
                "best_checkpoint": str(self.best_path()) if self.progress.best_miou is not None else None,
                "resumed_from_step": self.resumed_from, "steps_this_run": self.progress.step - (self.resumed_from or 0),
                "seconds": round(seconds, 1)}


def _cut_log(path: Path, step: int) -> None:
    """Keep the JSONL log's lines of steps up to `step` (a resumed run writes the later ones again)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= step:
                kept.append(line)
        except (ValueError, AttributeError):
            continue  # a line torn by the kill
    tmp = path.with_suffix(path.suffix + ".partial")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    tmp.replace(path)
