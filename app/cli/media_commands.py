"""`avs segment`, `avs score`, `avs bench segment|memory`: the pipeline on a video file, offline.

Torch is imported inside the handlers, never at module level.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.cli.output import add_json_flag, emit, print_json


def load_predictor(args: argparse.Namespace):  # -> model.predictor.AVSPredictor (torch: imported lazily)
    """The predictor the model options ask for (one loader for the CLI and the workers)."""
    from model.predictor import load_predictor as load

    return load(checkpoint=args.checkpoint, variant=args.variant, device=args.device, threshold=args.threshold,
                warn=lambda message: sys.stderr.write(f"avs: warning: {message}\n"))


def media_limits(args: argparse.Namespace):  # -> worker.core.media.media_info.MediaLimits
    from worker.core.media.media_info import MediaLimits

    return MediaLimits(max_duration_s=args.max_duration, max_pixels=args.max_pixels)


def _segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from worker.pipeline import SegmentOptions, segment_video

    predictor = load_predictor(args)
    options = SegmentOptions(batch_size=args.batch_size, fps=args.fps, overlay=args.overlay, png=args.png,
                             confidence=args.confidence, limits=media_limits(args))
    with tqdm(unit="frame", desc="segment", disable=None, file=sys.stderr) as bar:
        def progress(done: int, total: int | None) -> None:
            if total and bar.total != total:
                bar.total = total
            bar.update(done - bar.n)

        result = segment_video(args.video, args.out, predictor, options, on_progress=progress)
    summary = {**result.to_dict(), "variant": predictor.cfg.variant, "device": str(predictor.device)}
    if args.json:
        print_json(summary)
    else:
        timings = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
        print(f"{result.frames} frames in {result.seconds_total:.2f}s ({result.fps:.1f} frames/s): {timings}")
        print(f"masks: {result.masks_path}" + (f"\noverlay: {result.overlay_path}" if result.overlay_path else ""))
    return 0


def _score(args: argparse.Namespace) -> int:
    from worker.mask_scoring import score_masks

    result = score_masks(Path(args.masks), Path(args.ground_truth))
    return emit(args, result, lambda: (
        f"mIoU {result['miou']:.4f} over {result['frames']} frames ({result['frames_missing']} missing)"))


def _bench_segment(args: argparse.Namespace) -> int:
    from worker.pipeline_bench import InstantPredictor, bench_segment

    predictor = InstantPredictor() if args.model == "none" else load_predictor(args)
    result = bench_segment(args.video, predictor, batch_size=args.batch_size, iters=args.iters)
    if args.model == "none":
        return emit(args, result, lambda: (
            f"plumbing ceiling {result['pipeline_fps']} frames/s, {result['pipeline_over_ffmpeg_decode']:.2f}x "
            f"ffmpeg's own decode ({result['ffmpeg_decode_fps']} frames/s)"))
    return emit(args, result, lambda: (
        f"pipeline {result['pipeline_fps']} frames/s vs model {result['model_fps']} frames/s "
        f"(+{result['overhead_pct']}% per frame); peak RSS {result['peak_rss_mb']} MiB"))


def _bench_memory(args: argparse.Namespace) -> int:
    from worker.pipeline_bench import bench_memory

    width, height = (int(v) for v in args.size.lower().split("x"))
    extra = ["--device", args.device] + (["--checkpoint", args.checkpoint] if args.checkpoint else [])
    result = bench_memory(args.durations, size=(width, height), fps=args.fps, batch_size=args.batch_size,
                          extra_args=extra)
    if args.json:
        print_json(result)
    else:
        for run in result["runs"]:
            print(f"{run['duration_s']:>6g}s video: {run['frames']} frames, peak RSS {run['peak_rss_mb']} MiB")
        print(f"longest/shortest peak RSS: {result['rss_ratio_longest_to_shortest']}")
    return 0


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model and media options of every command that runs the pipeline."""
    from worker.core.media.media_info import MediaLimits  # torch-free

    p.add_argument("--variant", default=None, help="model variant (default: the demo checkpoint's)")
    p.add_argument("--checkpoint", default=None, help="our safetensors checkpoint (default: the shipped demo)")
    p.add_argument("--batch-size", type=int, default=8, help="frames per inference call")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    p.add_argument("--threshold", type=float, default=0.5, help="binary masks: sigmoid threshold, in (0, 1)")
    p.add_argument("--fps", type=float, default=None,
                   help="resample the video to N frames/s first (default: every decoded frame)")
    p.add_argument("--max-duration", type=float, default=MediaLimits.max_duration_s,
                   help="refuse longer videos (seconds)")
    p.add_argument("--max-pixels", type=int, default=MediaLimits.max_pixels,
                   help="refuse larger frames (width × height)")


def register(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add `segment`, `score` and `bench segment|memory` to the root parser's subcommands."""
    p = sub.add_parser("segment", help="segment the sounding objects of every frame of a video (offline)")
    p.add_argument("video", help="the video file (with sound)")
    p.add_argument("--out", required=True, help="output directory: masks.ndjson [+ masks/*.png, overlay.mp4]")
    add_model_args(p)
    p.add_argument("--overlay", action="store_true", help="also write overlay.mp4 (masks on the video, with sound)")
    p.add_argument("--png", action="store_true", help="also write one PNG mask per frame")
    p.add_argument("--confidence", action="store_true",
                   help="each mask line also carries `confidence`: the probability map at <= 64 px, base64 uint8")
    add_json_flag(p)
    p.set_defaults(handler=_segment)

    p = sub.add_parser("score", help="mIoU of a masks.ndjson against a ground-truth .gt.ndjson")
    p.add_argument("masks", help="the masks.ndjson (or a saved mask stream) to score")
    p.add_argument("ground_truth", help="the clip's .gt.ndjson (written by `avs synth`)")
    add_json_flag(p)
    p.set_defaults(handler=_score)

    p = bench.add_parser("segment", help="end-to-end pipeline frames/s vs the model alone, same run")
    p.add_argument("video", help="the video file to segment")
    add_model_args(p)
    p.add_argument("--iters", type=int, default=5, help="timed runs of the model alone")
    p.add_argument("--model", choices=["real", "none"], default="real",
                   help="none: an instant stand-in for the network (a fixed mask), so pipeline_fps is the ceiling of "
                        "decode + alignment + post-processing + writing")
    add_json_flag(p)
    p.set_defaults(handler=_bench_segment)
    p = bench.add_parser("memory", help="peak RSS of the pipeline on synthetic videos of several lengths")
    p.add_argument("--durations", nargs="+", type=float, default=[10.0, 60.0], help="video lengths (seconds)")
    p.add_argument("--size", default="640x360", help="video size, WIDTHxHEIGHT (pixels)")
    p.add_argument("--fps", type=int, default=25, help="video frame rate (frames/s)")
    p.add_argument("--batch-size", type=int, default=8, help="frames per inference call")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, ...")
    p.add_argument("--checkpoint", default=None, help="our safetensors checkpoint (default: the shipped demo)")
    add_json_flag(p)
    p.set_defaults(handler=_bench_memory)
