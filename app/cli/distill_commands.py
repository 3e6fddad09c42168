"""`avs distill`: a real-time student from any trained model, on the user's own unlabelled videos.

Torch is imported inside the handler, never at module level.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from app.cli.lab_commands import add_optimizer_args
from app.cli.output import add_json_flag, emit

_TRAIN_FIELDS = ("epochs", "batch_size", "lr", "weight_decay", "seed", "schedule", "warmup_steps", "min_lr_ratio",
                 "grad_accum", "clip_grad", "eval_every", "amp", "size", "max_steps", "save_every", "tensorboard")


def _distill(args: argparse.Namespace) -> int:
    import os

    if args.gt_weight and not args.data:
        raise ValueError("--gt-weight needs --data (an AVSBench layout with masks)")

    from functools import partial

    from tqdm import tqdm

    from model.lab.distill.training import DistillConfig, distill
    from model.lab.training import TrainConfig
    from worker.distill_inputs import DEFAULT_SAMPLE_FPS, SamplingConfig

    videos = args.videos
    fps = args.sample_fps
    if args.data:
        from worker.distill_layout import LAYOUT_SAMPLE_FPS, layout_videos

        # the AVSBench stills as lossless videos, one still per 0.96 s window (labels never read)
        videos = str(layout_videos(args.data, args.data_subset, args.data_split,
                                   f"{args.cache or args.out + '.cache'}/layout-videos"))
        fps = fps if fps is not None else LAYOUT_SAMPLE_FPS
    sampling = SamplingConfig(fps=fps if fps is not None else DEFAULT_SAMPLE_FPS, max_frames=args.max_frames)
    values = {name: getattr(args, name) for name in _TRAIN_FIELDS if getattr(args, name) is not None}
    train = TrainConfig(data="", subset="distill", variant=args.variant, out=args.out, init=args.init,
                        overrides=tuple(args.set), device=args.device, resume=not args.no_resume,
                        save_dtype=args.save_dtype, compile=args.compile, **values)
    cfg = DistillConfig(teacher=args.teacher, videos=videos, train=train, cache=args.cache,
                        sampling=sampling.to_dict(), logit_size=args.logit_size, holdout=args.holdout,
                        eval_videos=args.eval_videos, eval_data=args.eval_data, eval_subset=args.eval_subset,
                        eval_split=args.eval_split, temperature=args.temperature, soft_weight=args.soft_weight,
                        hard_weight=args.hard_weight, init_from_teacher=not args.no_init,
                        measure_fps=not args.no_fps, gt_data=args.data, gt_subset=args.data_subset,
                        gt_split=args.data_split, gt_weight=args.gt_weight)
    main = int(os.environ.get("RANK", "0")) == 0
    with tqdm(unit="step", desc="distill", disable=None if main else True, file=sys.stderr) as bar:
        def progress(row: dict[str, Any]) -> None:
            bar.total = row["steps_total"]
            bar.update(row["step"] - bar.n)
            bar.set_postfix(epoch=row["epoch"], loss=f"{row['loss']:.4f}")

        def video(done: int, total: int, name: str) -> None:
            bar.set_description(f"label {done}/{total}")

        try:
            summary = distill(cfg, decode=partial(_decode, sampling=sampling), on_step=progress, on_video=video)
        except KeyboardInterrupt:
            if main:
                sys.stderr.write(f"avs: interrupted; the same command reuses the teacher's cache and resumes from "
                                 f"the last state in {args.out}.state/\n")
            return 130
    if not main:
        return 0
    return emit(args, summary, lambda: _text(summary))


def _decode(path: Any, sizes: Any, *, sampling: Any) -> Any:
    from worker.distill_inputs import decode_for_distill

    return decode_for_distill(path, sizes, sampling)


def _text(summary: dict[str, Any]) -> str:
    lab = summary["labelling"]
    lines = [f"labelled {lab['frames_labelled_now']} frames of {lab['labelled_videos']} videos in "
             f"{lab['teacher_seconds_now']}s of teacher time ({lab['reused_videos']} videos from the cache, "
             f"{len(lab['refused'])} refused); {summary['train_frames']} frames of {summary['train_videos']} "
             f"videos trained on",
             f"student: {summary['student']['checkpoint']} ({summary['training']['steps']} steps, "
             f"{summary['training']['seconds']}s)"]
    if "agreement" in summary:
        a = summary["agreement"]
        lines.append(f"agreement with the teacher on {summary['heldout_videos']} held-out videos: mIoU "
                     f"{a['normal']['miou']} (silence {a['silence']['miou']}, shuffled sound {a['shuffle']['miou']})")
    if "ground_truth" in summary:
        for name in ("teacher", "student"):
            g = summary["ground_truth"][name]
            lines.append(f"{name} vs ground truth: mIoU {g['normal']['miou']}, silence drop {g['silence_drop']}, "
                         f"shuffle drop {g['shuffle_drop']}")
    if "frames_per_s" in summary:
        f = summary["frames_per_s"]
        lines.append(f"frames/s (batch {f['batch']}, {f['device']}): teacher {f['teacher']}, student {f['student']}")
    lines.append(f"report: {summary['report']}")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill", help="train a fast student on a teacher's masks of your own unlabelled videos",
        description="Label the videos under --videos with --teacher (once: the labels are cached beside a "
                    "manifest), train --variant on them with `avs train`'s machinery, and report agreement, "
                    "ground truth (--eval-data), the silence/shuffle checks and frames/s of both models.")
    p.add_argument("--teacher", required=True, help="the trained model's checkpoint (.safetensors)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--videos", help="folder of videos (any container the media pipeline takes; searched "
                                         "recursively)")
    source.add_argument("--data", help="an AVSBench-layout folder: its clips' frames and wav only (labels never "
                                       "read), muxed losslessly into <cache>/layout-videos")
    p.add_argument("--data-subset", default="s4", choices=["s4", "ms3", "avss"], help="--data's subset (default: s4)")
    p.add_argument("--data-split", default="train", choices=["train", "val", "test"],
                   help="--data's split (default: train)")
    p.add_argument("--variant", default="avesformer-tiny", help="the student (default: avesformer-tiny)")
    p.add_argument("--out", required=True, help="the student's checkpoint (.safetensors)")
    p.add_argument("--cache", default=None, help="the teacher's cache folder (default: <out>.cache)")
    p.add_argument("--sample-fps", type=float, default=None,
                   help="frames labelled per second of video (default: 2; with --data one per 0.96 s still)")
    p.add_argument("--max-frames", type=int, default=16,
                   help="at most this many frames per video, evenly spaced (default: 16)")
    p.add_argument("--logit-size", type=int, default=None,
                   help="side at which the teacher's logits are cached (default: a quarter of its input, >= 64)")
    p.add_argument("--holdout", type=float, default=0.1,
                   help="share of --videos held out for agreement when --eval-videos is not given (default: 0.1)")
    p.add_argument("--eval-videos", default=None, help="held-out videos for agreement with the teacher")
    p.add_argument("--eval-data", default=None, help="an AVSBench-layout folder with ground truth for the report")
    p.add_argument("--eval-subset", default="s4", choices=["s4", "ms3", "avss"], help="its subset (default: s4)")
    p.add_argument("--eval-split", default="test", choices=["train", "val", "test"], help="its split (default: test)")
    p.add_argument("--temperature", type=float, default=2.0, help="softening of the teacher's logits (default: 2)")
    p.add_argument("--soft-weight", type=float, default=1.0, help="weight of the soft-target term (default: 1)")
    p.add_argument("--hard-weight", type=float, default=1.0,
                   help="weight of Dice (CE for classes) on the teacher's hard masks (default: 1)")
    p.add_argument("--gt-weight", type=float, default=0.0,
                   help="with --data: add the recipe's supervised loss on the frames that have a mask, with this "
                        "weight (default: 0, labels never read)")
    p.add_argument("--init", default=None, help="start the student from this checkpoint (default: the teacher's "
                                                "tensors whose name and shape fit)")
    p.add_argument("--no-init", action="store_true", help="start the student from scratch")
    p.add_argument("--epochs", type=int, default=None, help="passes over the labelled frames (default: 10)")
    p.add_argument("--batch-size", type=int, default=None, help="frames per step and process (default: 4)")
    add_optimizer_args(p)
    p.add_argument("--eval-every", type=int, default=None,
                   help="agreement on the held-out videos every k epochs, best kept as <out stem>.best")
    p.add_argument("--size", type=int, default=None, help="the student's frame side (default: the variant's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="student config override")
    p.add_argument("--save-every", type=int, default=None,
                   help="also save the resumable state every k steps (default: at each epoch's end only)")
    p.add_argument("--tensorboard", default=None, help="TensorBoard event folder (default: <out>.tb; '' for none)")
    p.add_argument("--save-dtype", default="float32", choices=["float32", "float16"], help="checkpoint tensor type")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (default: all epochs)")
    p.add_argument("--no-resume", action="store_true", help="ignore a saved training state (the cache is kept)")
    p.add_argument("--no-fps", action="store_true", help="skip measuring frames/s of teacher and student")
    add_json_flag(p)
    p.set_defaults(handler=_distill)
