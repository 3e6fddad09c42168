"""`avs synth`, `avs train`, `avs eval`: data, training and AVSBench-exact evaluation.

Torch is imported inside the handlers, never at module level.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from app.cli.output import add_json_flag, emit

SUBSETS = ("s4", "ms3", "avss")
SPLITS = ("train", "val", "test")


def _synth(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from worker.synthetic_dataset import write_synthetic_dataset

    with tqdm(total=args.videos, unit="clip", desc=f"synth {args.subset}", disable=None, file=sys.stderr) as bar:
        summary = write_synthetic_dataset(args.out, subset=args.subset, videos=args.videos, seed=args.seed,
                                          split=args.split, size=args.size, mp4=not args.no_mp4,
                                          on_clip=lambda n: bar.update(n - bar.n))
    return emit(args, summary, lambda: (
        f"wrote {summary['videos']} {args.subset} clips ({args.split}) to {summary['out']}"))


# `avs train` options that a recipe may set: (flag dest, TrainConfig field). A flag given on the command line
# wins over the recipe, the recipe over TrainConfig's defaults.
_RECIPE_FIELDS = ("variant", "epochs", "batch_size", "lr", "weight_decay", "seed", "schedule", "warmup_steps",
                  "min_lr_ratio", "grad_accum", "clip_grad", "freeze_backbone_epochs", "eval_every", "eval_from",
                  "eval_split", "all_train_masks", "amp", "size")


def _train(args: argparse.Namespace) -> int:
    import os

    from tqdm import tqdm

    from model.lab.recipes import load_recipe
    from model.lab.training import TrainConfig, train

    values: dict[str, Any] = {}
    if args.recipe:
        values.update(load_recipe(args.recipe, subset=args.subset))
    values.update({name: getattr(args, name) for name in _RECIPE_FIELDS if getattr(args, name) is not None})
    values.pop("subset", None)
    values.setdefault("variant", "avesformer-tiny")
    cfg = TrainConfig(data=args.data, subset=args.subset, out=args.out, vggish=args.vggish, pvt=args.pvt,
                      init=args.init, overrides=tuple(args.set), num_workers=args.workers,
                      save_dtype=args.save_dtype, resume=not args.no_resume, max_steps=args.max_steps,
                      device=args.device, compile=args.compile, save_every=args.save_every,
                      tensorboard=args.tensorboard, **values)
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 shows progress and the summary
    with tqdm(unit="step", desc="train", disable=None if main else True, file=sys.stderr) as bar:
        def progress(row: dict[str, Any]) -> None:
            bar.total = row["steps_total"]
            bar.update(row["step"] - bar.n)
            bar.set_postfix(epoch=row["epoch"], loss=f"{row['loss']:.4f}")

        def announce_init(report: dict[str, Any]) -> None:
            from model.lab.init_weights import describe_init

            bar.write(describe_init(report), file=sys.stderr)

        try:
            summary = train(cfg, on_step=progress, on_init=announce_init)
        except KeyboardInterrupt:
            if main:
                sys.stderr.write(f"avs: interrupted; the same command resumes from the last state saved in "
                                 f"{args.out}.state/ (--no-resume starts over)\n")
            return 130
    if not main:
        return 0
    best = f"; best {cfg.eval_split} mIoU {summary['best_miou']} (epoch {summary['best_epoch']})" \
        if summary["best_miou"] is not None else ""
    resumed = summary["resumed_from_step"]
    if resumed is not None and summary["steps_this_run"] == 0:
        text = f"already complete at step {resumed} ({args.out}); --no-resume trains again"
    else:
        start = f"resumed at step {resumed}, " if resumed is not None else ""
        text = (f"{start}trained to step {summary['steps']} in {summary['seconds']}s, final loss "
                f"{summary['final_loss']}{best}: {args.out}")
        if summary["init_report"] is not None:
            from model.lab.init_weights import describe_init

            text += "\n" + describe_init(summary["init_report"])
    return emit(args, summary, lambda: text)


def _eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from model.checkpoint import load_checkpoint
    from model.lab.evaluation import evaluate
    from model.variants import DEMO_CHECKPOINT

    path = args.checkpoint or DEMO_CHECKPOINT
    model, info = load_checkpoint(path)
    with tqdm(unit="clip", desc="eval", disable=None, file=sys.stderr) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = evaluate(model, info.config, data=args.data, subset=args.subset, split=args.split,
                          audio=args.audio, size=args.size, device=args.device, on_clip=progress)
    result["checkpoint"] = str(path)
    return emit(args, result, lambda: f"{args.subset}/{args.split} ({args.audio} audio): mIoU {result['miou']:.4f}, "
                f"F {result['fscore']:.4f} over {result['frames']} frames")


def _bench_train(args: argparse.Namespace) -> int:
    from model.lab.train_bench import bench_train

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    amp = None if args.amp == "none" else args.amp
    result = bench_train(args.variant, frames=args.frames, size=args.size, device=args.device, amp=amp,
                         compile_model=args.compile, steps=args.steps, warmup=args.warmup)
    return emit(args, result, lambda: "; ".join(
        f"{name}: {run['steps_per_s']} steps/s ({run['frames_per_s']} frames/s)"
        for name, run in result["runs"].items()))


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="the subset's folder in the AVSBench layout (real or `avs synth`)")
    p.add_argument("--subset", required=True, choices=SUBSETS, help="AVSBench subset: s4, ms3 or avss")


def register(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add `synth`, `train` and `eval` to the root parser's subcommands."""
    p = sub.add_parser("synth", help="synthetic audio-visual scenes (AVSBench layout + playable mp4)")
    p.add_argument("--out", required=True, help="folder to write the subset's layout into (created)")
    p.add_argument("--subset", required=True, choices=SUBSETS, help="which AVSBench subset's layout and task")
    p.add_argument("--videos", type=int, required=True, help="number of clips to make")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same clips")
    p.add_argument("--split", default="train", choices=SPLITS, help="the split the clips are listed under")
    p.add_argument("--size", type=int, default=224, help="frame side (pixels)")
    p.add_argument("--no-mp4", action="store_true", help="skip the playable mp4 + gt.ndjson (faster)")
    add_json_flag(p)
    p.set_defaults(handler=_synth)

    p = sub.add_parser("train", help="train on AVSBench-layout data (real or synthetic); under torchrun: data parallel",
                       description="Train on AVSBench-layout data. One process by default; data parallel with "
                                   "`torchrun --nproc_per_node N avs train ...` (NCCL on GPUs, gloo on the CPU).")
    _data_args(p)
    p.add_argument("--recipe", default=None,
                   help="a recipe's defaults: s4, ms3, avss (AVSegFormer's published schedules) or a .toml file; "
                        "flags given here win")
    p.add_argument("--variant", default=None, help="a name from `avs model list` (default: avesformer-tiny)")
    p.add_argument("--out", required=True, help="checkpoint to write (.safetensors); its state beside it")
    p.add_argument("--epochs", type=int, default=None, help="passes over the training split (default: 10)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="clips per step and process (5 frames each for S4; default: 4)")
    add_optimizer_args(p)
    p.add_argument("--freeze-backbone-epochs", type=int, default=None,
                   help="no gradient to the visual backbone for the first N epochs (default: 0)")
    p.add_argument("--eval-every", type=int, default=None,
                   help="evaluate on --eval-split every k epochs, keep the best as <out stem>.best (default: 0 = off)")
    p.add_argument("--eval-from", type=int, default=None, help="first epoch evaluated (default: 1)")
    p.add_argument("--eval-split", default=None, choices=SPLITS, help="the split evaluated (default: val)")
    p.add_argument("--save-every", type=int, default=0,
                   help="also save the resumable state every k steps (0: at each epoch's end only)")
    p.add_argument("--tensorboard", default=None, help="TensorBoard event folder (default: <out>.tb; '' for none)")
    p.add_argument("--vggish", default=None, help="converted VGGish weights (.safetensors; frozen)")
    p.add_argument("--pvt", default=None, help="converted visual backbone weights (.safetensors)")
    p.add_argument("--init", default=None,
                   help="start from this checkpoint's tensors whose names and shapes fit (e.g. an imported AVSegFormer "
                        "for an AVESFormer of the same backbone); what was taken and what starts fresh is printed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the variant's config, e.g. head.upsample_last=false (repeatable)")
    p.add_argument("--size", type=int, default=None, help="training frame side in pixels (default: the variant's)")
    p.add_argument("--all-train-masks", dest="all_train_masks", action="store_true", default=None,
                   help="S4: train on every mask present (synthetic data; the default unless a recipe says otherwise)")
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    p.add_argument("--save-dtype", default="float32", choices=["float32", "float16"], help="checkpoint tensor type")
    p.add_argument("--no-resume", action="store_true", help="ignore a saved state and start over")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (default: all epochs)")
    add_json_flag(p)
    p.set_defaults(handler=_train)

    p = bench.add_parser("train", help="training steps/s: full precision vs autocast (and vs torch.compile)")
    p.add_argument("--variant", default="avesformer-tiny", help="a name from `avs model list`")
    p.add_argument("--frames", type=int, default=10, help="frames per step (the recipes: 2 clips x 5 = 10)")
    p.add_argument("--size", type=int, default=None, help="frame side (default: the variant's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "none"], help="the autocast dtype compared")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (compile time reported apart)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    add_json_flag(p)
    p.set_defaults(handler=_bench_train)

    p = sub.add_parser("eval", help="AVSBench-exact mIoU and F-score")
    _data_args(p)
    p.add_argument("--checkpoint", default=None, help="our safetensors checkpoint (default: the shipped demo)")
    p.add_argument("--split", default="test", choices=SPLITS, help="the split to score")
    p.add_argument("--audio", default="normal", choices=["normal", "silence", "shuffle"],
                   help="the clip's own sound, silence, or another clip's sound (does the sound decide?)")
    p.add_argument("--size", type=int, default=None, help="frame side in pixels (default: the model's)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, ...")
    add_json_flag(p)
    p.set_defaults(handler=_eval)


def add_optimizer_args(p: argparse.ArgumentParser) -> None:
    """The flags `avs train` and `avs distill` share: optimizer, schedule, seed, device, precision, compile."""
    p.add_argument("--grad-accum", type=int, default=None, help="batches per optimizer step (default: 1)")
    p.add_argument("--lr", type=float, default=None, help="peak AdamW learning rate (default: 1e-4)")
    p.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default: 0.01)")
    p.add_argument("--schedule", default=None, choices=["constant", "cosine", "poly"],
                   help="after the warm-up (default: cosine to --min-lr-ratio)")
    p.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up, optimizer steps (default: 0)")
    p.add_argument("--min-lr-ratio", type=float, default=None, help="cosine/poly end, x peak lr (default: 0.05)")
    p.add_argument("--clip-grad", type=float, default=None, help="max global gradient norm (default: 0 = off)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: 123)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (under torchrun, cuda = cuda:LOCAL_RANK)")
    p.add_argument("--amp", nargs="?", const="auto", default=None, choices=["auto", "bf16", "fp16"],
                   help="mixed precision autocast: bf16, fp16 (with a gradient scaler), or auto (bf16 where "
                        "supported)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (see README for when it helps)")
