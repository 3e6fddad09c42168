"""`avs distill`: label the user's videos with a teacher once, train a student on the labels, report.

The student's training is `avs train`'s (`model.lab.training._Trainer`: device, autocast, torchrun data
parallel, schedules, gradient accumulation/clipping, resumable state, JSONL + TensorBoard, best checkpoint),
with three hooks replaced: the items are the cached frames (`CachedFrames`), the loss is
`model.lab.distill.loss.distill_loss` on the teacher's logits, and the validation metric is agreement with
the teacher on held-out videos (`model.lab.distill.report.agreement`).

Under torchrun the main process labels first; the others wait, then find every video in the cache (their
teacher is loaded only for its fingerprint and never called).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.config import AVSConfig, with_overrides
from model.errors import ConfigError
from model.lab.distill.dataset import CachedFrames, split_videos
from model.lab.distill.loss import DEFAULT_HARD_WEIGHT, DEFAULT_SOFT_WEIGHT, DEFAULT_TEMPERATURE, distill_loss
from model.lab.distill.report import AUDIO_MODES, agreement, frames_per_second
from model.lab.distill.teacher import ModelTeacher
from model.lab.distill.teacher_cache import Decode, LabelReport, TeacherCache, find_videos
from model.lab.distributed import DistContext, barrier, init_distributed, shutdown
from model.lab.losses import binary_loss, semantic_loss
from model.lab.training import TrainConfig, _Trainer, check_train_config
from model.variants import get_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    """One distillation. `train` carries the student's training settings (`TrainConfig`; its `data` and
    `subset` are ignored, `init` is set by `init_from_teacher` unless given)."""

    teacher: str  # the teacher's checkpoint
    videos: str  # folder of the user's videos (recursive)
    train: TrainConfig
    cache: str | None = None  # default: `<out>.cache/`
    sampling: dict[str, Any] = dataclasses.field(default_factory=dict)  # recorded in the cache key
    logit_size: int | None = None  # default: `teacher_cache.default_logit_size`
    holdout: float = 0.1  # share of the videos held out for agreement when no `eval_videos`
    eval_videos: str | None = None  # held-out videos (labelled by the teacher, never trained on)
    eval_data: str | None = None  # AVSBench-layout folder with ground truth for the final report
    eval_subset: str = "s4"
    eval_split: str = "test"
    temperature: float = DEFAULT_TEMPERATURE
    soft_weight: float = DEFAULT_SOFT_WEIGHT
    hard_weight: float = DEFAULT_HARD_WEIGHT
    init_from_teacher: bool = True  # the student starts from the teacher's tensors whose name and shape fit
    gt_data: str | None = None  # the AVSBench layout the videos came from (`--data`): its masks, when gt_weight > 0
    gt_subset: str = "s4"
    gt_split: str = "train"
    gt_weight: float = 0.0  # weight of the recipe's supervised loss on frames that have a mask (0: none)
    measure_fps: bool = True


def student_config(variant: str, teacher_cfg: AVSConfig, overrides: Sequence[str] = ()) -> AVSConfig:
    """The student's variant with the teacher's classes (a 71-class AVSS teacher gives a 71-class student)."""
    cfg = with_overrides(get_config(variant), tuple(overrides))
    if teacher_cfg.num_classes != cfg.num_classes or teacher_cfg.class_names != cfg.class_names:
        cfg = cfg.replace(num_classes=teacher_cfg.num_classes, class_names=teacher_cfg.class_names)
    return cfg


class DistillTrainer(_Trainer):
    """`_Trainer` on a teacher's cache (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext, dcfg: DistillConfig, teacher_cfg: AVSConfig,
                 cache: TeacherCache, train_entries: dict[str, dict[str, Any]], train_names: list[str],
                 heldout: CachedFrames | None,
                 on_step: Callable[[dict[str, Any]], None] | None = None,
                 on_init: Callable[[dict[str, Any]], None] | None = None) -> None:
        super().__init__(cfg, ctx, on_step, on_init)
        self.dcfg, self.teacher_cfg, self.cache = dcfg, teacher_cfg, cache
        self.train_entries, self.train_names, self.heldout = train_entries, train_names, heldout

    def _model_config(self) -> AVSConfig:
        return student_config(self.cfg.variant, self.teacher_cfg, self.cfg.overrides)

    def _train_dataset(self) -> Any:
        dcfg = self.dcfg
        gt = (dcfg.gt_data, dcfg.gt_subset, dcfg.gt_split) if dcfg.gt_weight > 0 and dcfg.gt_data else None
        dataset = CachedFrames(self.cache, self.train_entries, self.train_names, ground_truth=gt)
        if gt is not None and dataset.gt_valid is not None and not bool(dataset.gt_valid.any()):
            raise ConfigError(f"--gt-weight: no sampled frame has a mask in {dcfg.gt_data} ({dcfg.gt_split})")
        if len(dataset) == 0:
            raise ConfigError("no cached frame to train on")
        side = int(dataset.frames.shape[1])
        if side != self.size:
            raise ConfigError(f"the cache holds {side}-pixel frames, the student trains at {self.size}")
        if self.cfg.eval_every and (self.heldout is None or len(self.heldout) == 0):
            raise ConfigError("--eval-every needs held-out videos (--eval-videos or --holdout > 0)")
        return dataset

    def _batch_loss(self, module: torch.nn.Module, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], int]:
        device = self.ctx.device
        frames = batch["frames"].to(device, non_blocking=True)
        out = module(frames, batch["audio"].to(device, non_blocking=True))
        losses = distill_loss(out.mask_logits, out.aux_logits, batch["teacher"].to(device, non_blocking=True),
                              temperature=self.dcfg.temperature, soft_weight=self.dcfg.soft_weight,
                              hard_weight=self.dcfg.hard_weight)
        if "gt_valid" in batch and bool(batch["gt_valid"].any()):  # the recipe's own loss on labelled frames
            rows = batch["gt_valid"].to(device)
            gt = batch["gt"].to(device)[rows]
            mask_logits, aux_logits = out.mask_logits.float()[rows], out.aux_logits.float()[rows]
            supervised = binary_loss(mask_logits, aux_logits, gt) if self.model_cfg.num_classes == 1 else \
                semantic_loss(mask_logits, aux_logits, gt.long())
            losses["gt"] = supervised["loss"]
            losses["loss"] = losses["loss"] + self.dcfg.gt_weight * supervised["loss"]
        return losses, int(frames.shape[0])

    def _evaluate(self) -> dict[str, Any]:
        assert self.heldout is not None
        return agreement(self.model, self.model_cfg, self.heldout, device=str(self.ctx.device))


def _label(dcfg: DistillConfig, teacher: ModelTeacher, decode: Decode, cache_dir: Path, folder: str,
           student_size: int, on_video: Callable[[int, int, str], None] | None) -> tuple[TeacherCache, LabelReport]:
    cache = TeacherCache(cache_dir)  # its manifest read now: after the main process wrote it
    return cache, cache.label(find_videos(folder), Path(folder), teacher, decode, student_size=student_size,
                              sampling=dcfg.sampling, logit_size=dcfg.logit_size, on_video=on_video)


def _labelled(ctx: DistContext, fn: Callable[[], tuple[TeacherCache, LabelReport]]) -> tuple[TeacherCache,
                                                                                           LabelReport]:
    """The main process labels, then the others read the cache it wrote (and call no teacher)."""
    done = fn() if ctx.is_main else None
    barrier(ctx)
    return done if done is not None else fn()


def distill(dcfg: DistillConfig, *, decode: Decode, on_step: Callable[[dict[str, Any]], None] | None = None,
            on_init: Callable[[dict[str, Any]], None] | None = None,
            on_video: Callable[[int, int, str], None] | None = None,
            teacher: ModelTeacher | None = None) -> dict[str, Any]:
    """Label, train, report (see the module docstring); writes `dcfg.train.out` with a model card and
    `<out>.distill.json` (the returned summary). `decode(path, sides)` is `worker.distill_inputs`'s decoder
    bound to the sampling; `teacher` replaces the one read from `dcfg.teacher` (tests count its calls).

    Raises ConfigError / CheckpointError for bad settings or files, and when no video could be labelled.
    """
    cfg = dcfg.train
    check_train_config(cfg)
    if not 0.0 <= dcfg.holdout < 1.0:
        raise ConfigError(f"--holdout must be in [0, 1), got {dcfg.holdout}")
    started = time.perf_counter()
    ctx = init_distributed(cfg.device)
    try:
        if teacher is None:
            teacher = ModelTeacher.from_checkpoint(dcfg.teacher, device=str(ctx.device))
        student_cfg = student_config(cfg.variant, teacher.cfg, cfg.overrides)
        size = cfg.size or student_cfg.input_size
        cache_dir = Path(dcfg.cache or f"{cfg.out}.cache")
        cache, labels = _labelled(ctx, lambda: _label(dcfg, teacher, decode, cache_dir, dcfg.videos, size,
                                                      on_video))
        names = sorted(labels.entries)
        eval_labels = None
        if dcfg.eval_videos:
            eval_cache, eval_labels = _labelled(ctx, lambda: _label(dcfg, teacher, decode, cache_dir / "heldout",
                                                                    dcfg.eval_videos, size, on_video))
            train_names, held_names = names, sorted(eval_labels.entries)
            heldout = CachedFrames(eval_cache, eval_labels.entries, held_names)
        else:
            train_names, held_names = split_videos(names, dcfg.holdout)
            heldout = CachedFrames(cache, labels.entries, held_names) if held_names else None
        init = cfg.init if cfg.init is not None else (dcfg.teacher if dcfg.init_from_teacher else None)
        tcfg = dataclasses.replace(cfg, data=str(cache_dir), subset="distill", init=init)
        trainer = DistillTrainer(tcfg, ctx, dcfg, teacher.cfg, cache, labels.entries, train_names, heldout,
                                 on_step, on_init)
        training = trainer.run()
        summary: dict[str, Any] = {}
        if ctx.is_main:
            summary = _report(dcfg, teacher, trainer, labels, eval_labels, train_names, held_names, training,
                              started)
        barrier(ctx)
        return summary
    finally:
        shutdown(ctx)


def _report(dcfg: DistillConfig, teacher: ModelTeacher, trainer: DistillTrainer, labels: LabelReport,
            eval_labels: LabelReport | None, train_names: list[str], held_names: list[str],
            training: dict[str, Any], started: float) -> dict[str, Any]:
    """The final report of the main process; also rewrites the student's card and writes the JSON."""
    from model.card import rewrite_card

    device = str(trainer.ctx.device)
    student, scfg = trainer.model.eval(), trainer.model_cfg
    out = Path(dcfg.train.out)
    summary: dict[str, Any] = {
        "teacher": {"checkpoint": dcfg.teacher, "variant": teacher.cfg.variant, "fingerprint": teacher.fingerprint,
                    "card_title": _card_title(dcfg.teacher)},
        "student": {"checkpoint": str(out), "variant": scfg.variant, "num_classes": scfg.num_classes},
        "sampling": dcfg.sampling, "labelling": labels.to_dict(),
        "heldout_labelling": eval_labels.to_dict() if eval_labels is not None else None,
        "train_videos": len(train_names), "heldout_videos": len(held_names),
        "train_frames": len(trainer.dataset), "loss": {"temperature": dcfg.temperature,
                                                       "soft_weight": dcfg.soft_weight,
                                                       "hard_weight": dcfg.hard_weight,
                                                       "gt_weight": dcfg.gt_weight if dcfg.gt_data else 0.0},
        "training": training,
    }
    if trainer.heldout is not None and len(trainer.heldout):
        summary["agreement"] = {mode: agreement(student, scfg, trainer.heldout, audio=mode, device=device)
                                for mode in AUDIO_MODES}
        if teacher.input_size == scfg.input_size:  # the teacher's own masks when its sound is taken away
            summary["teacher_agreement"] = {mode: agreement(teacher.model, teacher.cfg, trainer.heldout, audio=mode,
                                                            device=device) for mode in ("silence", "shuffle")}
    if dcfg.eval_data:
        from model.lab.evaluation import evaluate

        gt: dict[str, Any] = {}
        for name, model, mcfg in (("teacher", teacher.model, teacher.cfg), ("student", student, scfg)):
            gt[name] = {mode: evaluate(model, mcfg, data=dcfg.eval_data, subset=dcfg.eval_subset,
                                       split=dcfg.eval_split, audio=mode, device=device)
                        for mode in AUDIO_MODES}
            gt[name]["silence_drop"] = round(gt[name]["normal"]["miou"] - gt[name]["silence"]["miou"], 4)
            gt[name]["shuffle_drop"] = round(gt[name]["normal"]["miou"] - gt[name]["shuffle"]["miou"], 4)
        gt["student_over_teacher"] = round(gt["student"]["normal"]["miou"] / max(gt["teacher"]["normal"]["miou"],
                                                                              1e-9), 4)
        summary["ground_truth"] = gt
    if dcfg.measure_fps:
        summary["frames_per_s"] = {"teacher": frames_per_second(teacher.model, teacher.input_size, device=device),
                                   "student": frames_per_second(student, scfg.input_size, device=device),
                                   "batch": 8, "device": device}
    summary["seconds_total"] = round(time.perf_counter() - started, 1)
    rewrite_card(out, _student_card(summary, len(train_names)))
    path = out.with_name(out.name + ".distill.json")
    path.write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    summary["report"] = str(path)
    return summary


def _card_title(path: str) -> str:
    from model.checkpoint import read_checkpoint_info

    info = read_checkpoint_info(path)
    return (info.card or {}).get("title") or f"{info.variant} ({Path(path).name})"


def _student_card(summary: dict[str, Any], videos: int) -> dict[str, Any]:
    teacher, student = summary["teacher"], summary["student"]
    metrics: dict[str, Any] = {"status": "measured here by `avs distill` (held-out videos of this run)"}
    if "agreement" in summary:
        metrics["agreement_mIoU_with_teacher"] = summary["agreement"]["normal"]["miou"]
    if "ground_truth" in summary:
        metrics["mIoU"] = summary["ground_truth"]["student"]["normal"]["miou"]
        metrics["F-score"] = summary["ground_truth"]["student"]["normal"]["fscore"]
        metrics["split"] = f"{summary['ground_truth']['student']['normal']['split']} split of the --eval-data folder"
    return {
        "title": f"{student['variant']} distilled from {teacher['card_title']} on {videos} unlabelled videos",
        "trained_on": {"dataset": f"{videos} unlabelled videos labelled by the teacher ({teacher['variant']}, "
                                  f"weights sha256 {teacher['fingerprint'][:16]}...)",
                       "split": f"{summary['labelling']['frames']} sampled frames"},
        "metrics": metrics,
        "source": {"url": "this repository (`avs distill`)", "teacher": teacher["checkpoint"]},
        "intended_use": "what the teacher was good for, at the student's speed; only as good as the teacher",
    }
