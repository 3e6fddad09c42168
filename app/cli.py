"""`avs`: the project's command line.

This module is imported by the API process, so it must stay torch-free: every command imports what
it needs (torch, the model package) inside its handler.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXIT_ERROR = 2


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=False) + "\n")


def _emit(args: argparse.Namespace, result: Any, text: Callable[[], str]) -> int:
    """Every command's ending: one JSON object with --json, else a human-readable line."""
    if args.json:
        _print_json(result)
    else:
        print(text())
    return 0


# ----------------------------------------------------------------------------------------- model
def _model_list(args: argparse.Namespace) -> int:
    from model.variants import VARIANTS

    rows = [{"variant": name, "visual": cfg.visual.backbone, "audio": cfg.audio.backbone,
             "decoder": cfg.decoder.kind, "input_size": cfg.input_size} for name, cfg in VARIANTS.items()]
    if args.json:
        _print_json({"variants": rows})
    else:
        for row in rows:
            print(f"{row['variant']:24s} visual={row['visual']:10s} audio={row['audio']:7s} "
                  f"decoder={row['decoder']:12s} input={row['input_size']}")
    return 0


def _model_info(args: argparse.Namespace) -> int:
    from model.build import build_model
    from model.variants import get_config

    cfg = get_config(args.variant, num_classes=args.num_classes)
    model = build_model(cfg)
    groups = model.parameter_groups()
    info = {"variant": cfg.variant, "params_total": sum(groups.values()), "params": groups,
            "input_size": cfg.input_size, "num_classes": cfg.num_classes}
    if args.json:
        _print_json(info)
    else:
        print(f"{info['variant']}: {info['params_total']:,} parameters "
              f"(visual {groups['visual']:,}, audio {groups['audio']:,}, decoder {groups['decoder']:,}); "
              f"input {cfg.input_size}x{cfg.input_size}, {cfg.num_classes} class(es)")
        if args.config:
            print(json.dumps(cfg.to_dict(), indent=2))
    return 0


# --------------------------------------------------------------------------------------- weights
def _weights_import(kind: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        from model import weight_import

        src, out = Path(args.file), Path(args.out)
        if kind == "vggish":
            info = weight_import.import_vggish(src, out)
        elif kind == "pvt":
            info = weight_import.import_pvt(src, out, backbone=args.backbone)
        else:
            info = weight_import.import_resnet50(src, out)
        if args.json:
            _print_json(info)
        else:
            print(f"wrote {info['out']}: {info['backbone']} weights, {int(info['num_params']):,} parameters")
        return 0
    return handler


# ----------------------------------------------------------------------------------------- bench
def _bench_model(args: argparse.Namespace) -> int:
    from model.bench import bench_model

    result = bench_model(args.variant, batch_size=args.batch_size, size=args.size, iters=args.iters,
                         warmup=args.warmup, device=args.device, threads=args.threads, amp=args.amp,
                         breakdown=args.breakdown)
    return _emit(args, result, lambda: (
        f"{result['variant']}: {result['fps']} frames/s ({result['ms_per_frame']} ms/frame) at batch "
        f"{result['batch_size']}, {result['size']}², {result['device']}, {result['threads']} threads"))


def _bench_compare(args: argparse.Namespace) -> int:
    from model.bench import bench_compare

    result = bench_compare(args.backbones, args.batch_sizes, size=args.size, iters=args.iters, warmup=args.warmup,
                           device=args.device, threads=args.threads)
    if args.json:
        _print_json(result)
    else:
        for row in result["rows"]:
            print(f"{row['backbone']:10s} batch {row['batch_size']}: AVESFormer {row['avesformer_fps']} fps, "
                  f"AVSegFormer {row['avsegformer_fps']} fps, speed-up x{row['speedup']}")
    return 0


# --------------------------------------------------------------------------------------- segment
def _load_predictor(args: argparse.Namespace):  # -> model.predictor.AVSPredictor (lazy import)
    from model.predictor import AVSPredictor
    from model.variants import DEFAULT_VARIANT, DEMO_CHECKPOINT

    if args.checkpoint:
        return AVSPredictor.from_checkpoint(args.checkpoint, variant=args.variant, device=args.device,
                                            threshold=args.threshold)
    if (args.variant in (None, DEFAULT_VARIANT)) and DEMO_CHECKPOINT.exists():
        return AVSPredictor.from_checkpoint(DEMO_CHECKPOINT, device=args.device, threshold=args.threshold)
    variant = args.variant or DEFAULT_VARIANT
    sys.stderr.write(f"avs: warning: no checkpoint for {variant}: using random weights, the masks mean nothing\n")
    return AVSPredictor.from_variant(variant, device=args.device, threshold=args.threshold)


def _media_limits(args: argparse.Namespace):  # -> worker.media.probe.MediaLimits
    from worker.media.probe import MediaLimits

    defaults = MediaLimits()
    return MediaLimits(max_duration_s=args.max_duration or defaults.max_duration_s,
                       max_pixels=args.max_pixels or defaults.max_pixels)


def _segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from worker.pipeline import SegmentOptions, segment_video

    predictor = _load_predictor(args)
    options = SegmentOptions(batch_size=args.batch_size, fps=args.fps, overlay=args.overlay, png=args.png,
                             limits=_media_limits(args))
    with tqdm(unit="frame", desc="segment", disable=None, file=sys.stderr) as bar:
        def progress(done: int, total: int | None) -> None:
            if total and bar.total != total:
                bar.total = total
            bar.update(done - bar.n)

        result = segment_video(args.video, args.out, predictor, options, on_progress=progress)
    summary = {**result.to_dict(), "variant": predictor.cfg.variant, "device": str(predictor.device)}
    if args.json:
        _print_json(summary)
    else:
        timings = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
        print(f"{result.frames} frames in {result.seconds_total:.2f}s ({result.fps:.1f} frames/s): {timings}")
        print(f"masks: {result.masks_path}" + (f"\noverlay: {result.overlay_path}" if result.overlay_path else ""))
    return 0


# ------------------------------------------------------------------------------ synth / train / eval
def _synth(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from worker.synth import write_synthetic_dataset

    with tqdm(total=args.videos, unit="clip", desc=f"synth {args.subset}", disable=None, file=sys.stderr) as bar:
        summary = write_synthetic_dataset(args.out, subset=args.subset, videos=args.videos, seed=args.seed,
                                          split=args.split, size=args.size, mp4=not args.no_mp4,
                                          on_clip=lambda n: bar.update(n - bar.n))
    return _emit(args, summary, lambda: (
        f"wrote {summary['videos']} {args.subset} clips ({args.split}) to {summary['out']}"))


def _train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from model.training import TrainConfig, train

    cfg = TrainConfig(data=args.data, subset=args.subset, variant=args.variant, out=args.out, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, seed=args.seed, vggish=args.vggish, pvt=args.pvt,
                      init=args.init, overrides=tuple(args.set), size=args.size, num_workers=args.workers,
                      save_dtype=args.save_dtype,
                      resume=not args.no_resume, max_steps=args.max_steps)
    with tqdm(unit="step", desc="train", disable=None, file=sys.stderr) as bar:
        def progress(row: dict[str, Any]) -> None:
            bar.total = row["steps_total"]
            bar.update(row["step"] - bar.n)
            bar.set_postfix(epoch=row["epoch"], loss=f"{row['loss']:.4f}")

        summary = train(cfg, on_step=progress)
    return _emit(args, summary, lambda: (
        f"trained {summary['steps']} steps in {summary['seconds']}s, final loss {summary['final_loss']}: "
        f"{args.out}"))


def _eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from model.checkpoint import load_checkpoint
    from model.evaluation import evaluate
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
    return _emit(args, result, lambda: f"{args.subset}/{args.split} ({args.audio} audio): mIoU {result['miou']:.4f}, "
                 f"F {result['fscore']:.4f} over {result['frames']} frames")


def _score(args: argparse.Namespace) -> int:
    from worker.scoring import score_masks

    result = score_masks(Path(args.masks), Path(args.ground_truth))
    return _emit(args, result, lambda: (
        f"mIoU {result['miou']:.4f} over {result['frames']} frames ({result['frames_missing']} missing)"))


# ----------------------------------------------------------------------------------- serve / worker
def _worker(args: argparse.Namespace) -> int:
    import os

    from worker.settings import get_settings
    from worker.tasks import app

    argv = ["worker", "--pool=solo", "--concurrency=1", f"--loglevel={args.loglevel}",
            "-n", args.name or f"avs-{os.getpid()}@%h", "--without-gossip", "--without-mingle"]
    if get_settings().embedded:
        argv.append("--without-heartbeat")  # the filesystem transport has no fanout for Celery's heartbeats
    app.worker_main(argv)
    return 0


def _terminate_with_parent() -> None:
    """In a child before exec: ask Linux for SIGTERM when the parent dies (PR_SET_PDEATHSIG)."""
    import contextlib
    import ctypes
    import signal

    with contextlib.suppress(OSError):  # not Linux/glibc: the forwarding in `_serve` still covers a normal exit
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _serve(args: argparse.Namespace) -> int:
    import os
    import shutil
    import signal
    import subprocess

    import uvicorn

    from worker.settings import ServiceSettings

    settings = ServiceSettings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # API and worker processes write their metrics here; the API's /metrics aggregates them all.
    metrics_dir = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or settings.data_dir / "prometheus")
    shutil.rmtree(metrics_dir, ignore_errors=True)  # stale files of dead processes would count forever
    metrics_dir.mkdir(parents=True, exist_ok=True)  # exist_ok: the directory may be a mount point
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.environ["AVS_DATA_DIR"] = str(settings.data_dir)
    mode = "embedded (filesystem broker, no server)" if settings.embedded else f"broker {settings.broker_url}"
    sys.stderr.write(f"avs serve: data in {settings.data_dir}, {mode}, http://{args.host}:{args.port}\n")
    worker = None
    if not args.no_worker:
        # Its own session, so a Ctrl-C or a group SIGTERM does not reach it twice (a second signal turns
        # Celery's warm shutdown into a cold one); instead the kernel sends it SIGTERM when this process
        # ends, however it ends (uvicorn re-raises the signal it caught, so a `finally` may never run).
        worker = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--loglevel", args.loglevel.upper()],
                                  start_new_session=True, preexec_fn=_terminate_with_parent)
    # uvicorn re-raises the signal that stopped it once it has shut down; with the default handlers that
    # would end this process before the `finally` below hands the worker its SIGTERM and waits for it.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda *_: None)
    try:
        uvicorn.run("app.main:app", host=args.host, port=args.port, workers=args.workers, log_level=args.loglevel)
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)  # warm shutdown: the current batch ends, the job is handed back
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()
    return 0


def _demo(args: argparse.Namespace) -> int:
    from app.demo import run_demo

    summary = run_demo(Path(args.out))
    if args.json:
        _print_json(summary)
    else:
        print(f"segmented {summary['frames']} frames over HTTP: first mask after "
              f"{summary['seconds_to_first_mask']}s, all in {summary['seconds_total']}s; "
              f"mIoU against the clip's ground truth {summary['miou_vs_ground_truth']}")
        print(f"masks:   {summary['masks']}\noverlay: {summary['overlay']}  (the sounding object in red, with sound)")
    return 0


def _bench_service(args: argparse.Namespace) -> int:
    import tempfile

    from app.demo import bench_service, make_sample_clip

    with tempfile.TemporaryDirectory() as tmp:
        video = Path(args.video) if args.video else make_sample_clip(Path(tmp) / "clips")
        result = bench_service(video, Path(tmp), runs=args.runs, batch_size=args.batch_size)
    return _emit(args, result, lambda: (
        f"service {result['service_fps']} frames/s vs model {result['model_fps']} frames/s "
        f"({result['service_over_model']:.0%}); first mask after {result['seconds_to_first_mask_median']}s"))


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variant", default=None, help="model variant (default: the demo checkpoint's)")
    p.add_argument("--checkpoint", default=None, help="our safetensors checkpoint (default: the shipped demo)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--threshold", type=float, default=0.5, help="binary masks: sigmoid threshold")
    p.add_argument("--fps", type=float, default=None, help="resample the video to N frames/s first")
    p.add_argument("--max-duration", type=float, default=None, help="refuse longer videos (seconds)")
    p.add_argument("--max-pixels", type=int, default=None, help="refuse larger frames (width*height)")


def _bench_segment(args: argparse.Namespace) -> int:
    from worker.bench import bench_segment

    predictor = _load_predictor(args)
    result = bench_segment(args.video, predictor, batch_size=args.batch_size, iters=args.iters)
    return _emit(args, result, lambda: (
        f"pipeline {result['pipeline_fps']} frames/s vs model {result['model_fps']} frames/s "
        f"(+{result['overhead_pct']}% per frame); peak RSS {result['peak_rss_mb']} MiB"))


def _bench_memory(args: argparse.Namespace) -> int:
    from worker.bench import bench_memory

    width, height = (int(v) for v in args.size.lower().split("x"))
    extra = ["--device", args.device] + (["--checkpoint", args.checkpoint] if args.checkpoint else [])
    result = bench_memory(args.durations, size=(width, height), fps=args.fps, batch_size=args.batch_size,
                          extra_args=extra)
    if args.json:
        _print_json(result)
    else:
        for run in result["runs"]:
            print(f"{run['duration_s']:>6g}s video: {run['frames']} frames, peak RSS {run['peak_rss_mb']} MiB")
        print(f"longest/shortest peak RSS: {result['rss_ratio_longest_to_shortest']}")
    return 0


# ------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avs", description="AVESFormer audio-visual segmentation")
    sub = parser.add_subparsers(dest="command", required=True)

    model_p = sub.add_parser("model", help="model variants").add_subparsers(dest="action", required=True)
    p = model_p.add_parser("list", help="list the variants")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_model_list)
    p = model_p.add_parser("info", help="parameter counts of a variant")
    p.add_argument("--variant", required=True)
    p.add_argument("--num-classes", type=int, default=None, help="1 (S4/MS3, default) or 71 (AVSS)")
    p.add_argument("--config", action="store_true", help="also print the full config (text mode)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_model_info)

    weights_p = sub.add_parser("weights", help="convert public weight files").add_subparsers(
        dest="action", required=True)
    for kind, helptext in (("vggish", "torchvggish vggish-10086976.pth"),
                           ("pvt", "PVT-v2 release file (pvt_v2_b*.pth) or an AVSegFormer checkpoint"),
                           ("resnet50", "torchvision resnet50 state dict")):
        p = weights_p.add_parser(f"import-{kind}", help=f"convert {helptext} to safetensors")
        p.add_argument("file")
        p.add_argument("--out", required=True)
        if kind == "pvt":
            p.add_argument("--backbone", default=None, help="expected variant, e.g. pvt_v2_b5 (checked)")
        p.add_argument("--json", action="store_true")
        p.set_defaults(handler=_weights_import(kind))

    p = sub.add_parser("segment", help="segment the sounding objects of every frame of a video (offline)")
    p.add_argument("video")
    p.add_argument("--out", required=True, help="output directory: masks.ndjson [+ masks/*.png, overlay.mp4]")
    _add_model_args(p)
    p.add_argument("--overlay", action="store_true", help="also write overlay.mp4 (masks on the video, with sound)")
    p.add_argument("--png", action="store_true", help="also write one PNG mask per frame")
    p.add_argument("--json", action="store_true", help="print one JSON summary object")
    p.set_defaults(handler=_segment)

    p = sub.add_parser("synth", help="synthetic audio-visual scenes (AVSBench layout + playable mp4)")
    p.add_argument("--out", required=True)
    p.add_argument("--subset", required=True, choices=["s4", "ms3", "avss"])
    p.add_argument("--videos", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train", choices=["train", "val", "test"])
    p.add_argument("--size", type=int, default=224, help="frame side in pixels")
    p.add_argument("--no-mp4", action="store_true", help="skip the playable mp4 + gt.ndjson (faster)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_synth)

    p = sub.add_parser("train", help="train on AVSBench-layout data (real or synthetic)")
    p.add_argument("--data", required=True)
    p.add_argument("--subset", required=True, choices=["s4", "ms3", "avss"])
    p.add_argument("--variant", default="avesformer-tiny")
    p.add_argument("--out", required=True, help="checkpoint to write (.safetensors)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=4, help="clips per step")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--vggish", default=None, help="converted VGGish weights (frozen)")
    p.add_argument("--pvt", default=None, help="converted visual backbone weights")
    p.add_argument("--init", default=None, help="start from this checkpoint's weights (same tensor names/shapes)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the variant's config, e.g. head.upsample_last=false (repeatable)")
    p.add_argument("--size", type=int, default=None, help="training frame size (default: the variant's)")
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    p.add_argument("--save-dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--no-resume", action="store_true", help="ignore a saved state and start over")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_train)

    p = sub.add_parser("eval", help="AVSBench-exact mIoU and F-score")
    p.add_argument("--data", required=True)
    p.add_argument("--subset", required=True, choices=["s4", "ms3", "avss"])
    p.add_argument("--checkpoint", default=None, help="default: the shipped demo checkpoint")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--audio", default="normal", choices=["normal", "silence", "shuffle"])
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_eval)

    p = sub.add_parser("serve", help="the HTTP API + one worker (embedded broker unless AVS_BROKER_URL is set)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="API processes (uvicorn workers)")
    p.add_argument("--no-worker", action="store_true", help="API only (workers run elsewhere)")
    p.add_argument("--loglevel", default="info")
    p.set_defaults(handler=_serve)

    p = sub.add_parser("worker", help="a Celery worker: one process, one model, one GPU")
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--name", default=None, help="Celery node name (default avs-<pid>@<host>)")
    p.set_defaults(handler=_worker)

    p = sub.add_parser("demo", help="serve, submit a synthetic clip over HTTP, stream masks, write the overlay")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_demo)

    p = sub.add_parser("score", help="mIoU of a masks.ndjson against a ground-truth .gt.ndjson")
    p.add_argument("masks")
    p.add_argument("ground_truth")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_score)

    bench_p = sub.add_parser("bench", help="benchmarks (JSON out)").add_subparsers(dest="action", required=True)
    p = bench_p.add_parser("model", help="model frames/s (full forward incl. audio encoder)")
    p.add_argument("--variant", required=True)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--amp", action="store_true", help="float16 autocast (CUDA only)")
    p.add_argument("--breakdown", action="store_true", help="also time visual and audio encoders alone")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_bench_model)
    p = bench_p.add_parser("compare", help="AVESFormer vs AVSegFormer frames/s on the same backbones")
    p.add_argument("--backbones", nargs="+", default=["pvt_v2_b0", "pvt_v2_b2", "pvt_v2_b5", "r50"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_bench_compare)
    p = bench_p.add_parser("segment", help="end-to-end pipeline frames/s vs the model alone, same run")
    p.add_argument("video")
    _add_model_args(p)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_bench_segment)
    p = bench_p.add_parser("memory", help="peak RSS of the pipeline on synthetic videos of several lengths")
    p.add_argument("--durations", nargs="+", type=float, default=[10.0, 60.0])
    p.add_argument("--size", default="640x360")
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_bench_memory)
    p = bench_p.add_parser("service", help="frames/s through HTTP + Celery vs the model alone; time to first mask")
    p.add_argument("--video", default=None, help="default: a synthetic sample clip")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_bench_service)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except Exception as exc:
        code = _error_code(exc)
        if code is None:
            raise
        sys.stderr.write(f"avs: error [{code}]: {exc}\n")
        if getattr(args, "json", False):
            _print_json({"error": {"code": code, "message": str(exc)}})
        return EXIT_ERROR


def _error_code(exc: Exception) -> str | None:
    """Stable codes for errors a user can fix; None for bugs (which keep their traceback)."""
    if "worker.errors" in sys.modules:
        from worker.errors import MediaError

        if isinstance(exc, MediaError):
            return str(exc.code)
    if "model.errors" not in sys.modules and not isinstance(exc, ValueError):
        return None
    if isinstance(exc, ValueError) and type(exc) is ValueError:
        return "invalid_argument"
    from model import errors

    codes = {errors.ConfigError: "invalid_config", errors.CheckpointError: "bad_checkpoint",
             errors.WeightImportError: "bad_weights"}
    for cls, code in codes.items():
        if isinstance(exc, cls):
            return code
    return None


if __name__ == "__main__":
    raise SystemExit(main())
