"""`avs serve`, `avs worker`, `avs demo`, `avs bench service`: the HTTP service and its workers.

Settings come from `AVS_*` variables and are validated before anything starts (`SettingsError`, exit 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.cli.output import add_json_flag, emit, print_json


def _worker(args: argparse.Namespace) -> int:
    import os
    import time

    from worker.core.private_redis import broker_url
    from worker.core.settings import get_settings
    from worker.parent_watch import watch_supervisor

    settings = get_settings()  # invalid settings stop here, before Celery starts
    if broker_url(settings) is None:  # embedded: the private Redis is started by `avs serve`
        sys.stderr.write(f"avs worker: waiting for the private Redis of `avs serve` ({settings.broker_dir})\n")
        while broker_url(settings) is None:
            time.sleep(0.5)
    from worker.tasks import app

    watch_supervisor()
    quiet: list[str] = []
    if args.quiet:  # no banner, no superuser warning (containers run as root on purpose; README, "Deployment")
        import warnings

        from celery.exceptions import SecurityWarning

        warnings.filterwarnings("ignore", category=SecurityWarning)
        quiet = ["--quiet"]
    # Threads: several jobs per process share one model and its frame engine (README, "The frame engine").
    argv = [*quiet, "worker", "--pool=threads", f"--concurrency={settings.jobs_per_worker}",
            f"--loglevel={args.loglevel}", "-n", args.name or f"avs-{os.getpid()}@%h", "--without-gossip",
            "--without-mingle"]
    app.worker_main(argv)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import os
    import signal

    import uvicorn

    from app.cli.supervisor import WorkerSupervisor, private_metrics_dir
    from worker.core.private_redis import PrivateRedis
    from worker.core.settings import get_settings

    settings = get_settings()  # invalid settings stop here, before anything starts
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # API and worker processes write their metrics here (mmapped files); the API's /metrics aggregates them.
    metrics_dir = private_metrics_dir(settings.data_dir)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.environ["AVS_DATA_DIR"] = str(settings.data_dir)
    broker = None
    if settings.embedded:  # the private Redis first: the API and the worker both need it
        broker = PrivateRedis(settings.broker_dir)
        endpoint = broker.start()
        mode = (f"embedded broker (private Redis on {endpoint.host}:{endpoint.port}"
                f"{'' if broker.owned else ', shared with another avs serve'})")
    else:
        mode = f"broker {settings.broker_url}"
    sys.stderr.write(f"avs serve: data in {settings.data_dir}, {mode}, http://{args.host}:{args.port}\n")
    sys.stderr.write(f"avs serve: {_model_line(settings)}\n")
    worker = None
    try:
        if not args.no_worker:
            # quiet unless --verbose: no Celery banner, no superuser warning, warnings and errors only
            worker_log = ["--loglevel", args.loglevel.upper()] if args.verbose else ["--loglevel", "WARNING",
                                                                                     "--quiet"]
            worker = WorkerSupervisor([sys.executable, "-m", "app.cli", "worker", *worker_log],
                                      settings=settings).start()
        # uvicorn re-raises the signal that stopped it once it has shut down; with the default handlers that
        # would end this process before the `finally` below hands the worker its SIGTERM and waits for it.
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop_signal, lambda *_: None)
        uvicorn.run("app.api.main:app", host=args.host, port=args.port, workers=args.workers,
                    log_level=args.loglevel, root_path=_root_path(args.root_path))
    finally:
        if worker is not None:
            worker.stop()
        if broker is not None:
            broker.stop()  # last: the worker hands its jobs back through it
        import shutil

        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _model_line(settings) -> str:
    """Which model the worker will load and what it knows, read from the checkpoint's header (no torch)."""
    from worker.core.model_card import CardError, configured_checkpoint, model_summary, summary_line

    try:
        return summary_line(model_summary(configured_checkpoint(settings.checkpoint, settings.variant),
                                          settings.variant))
    except CardError as exc:
        return f"model: {exc}"


def _root_path(given: str | None) -> str:
    """`--root-path`, else `AVS_ROOT_PATH`: "" or "/prefix" (no trailing slash), as ASGI's root_path."""
    import os

    value = (os.environ.get("AVS_ROOT_PATH", "") if given is None else given).strip()
    return "/" + value.strip("/") if value.strip("/") else ""


def _demo(args: argparse.Namespace) -> int:
    from app.cli.demo import run_demo

    summary = run_demo(Path(args.out))
    if args.json:
        print_json(summary)
    else:
        print(f"segmented {summary['frames']} frames over HTTP: first mask after "
              f"{summary['seconds_to_first_mask']}s, all in {summary['seconds_total']}s; "
              f"mIoU against the clip's ground truth {summary['miou_vs_ground_truth']}")
        print(f"masks:   {summary['masks']}\noverlay: {summary['overlay']}  (the sounding object in red, with sound)")
    return 0


def _bench_service(args: argparse.Namespace) -> int:
    import tempfile

    from app.cli.demo import make_sample_clip
    from app.cli.service_bench import bench_service

    with tempfile.TemporaryDirectory() as tmp:
        video = Path(args.video) if args.video else make_sample_clip(Path(tmp) / "clips")
        result = bench_service(video, Path(tmp), concurrency=args.concurrency, runs=args.runs,
                               batch_size=args.batch_size)
    return emit(args, result, lambda: (
        f"{result['jobs']} job(s) at once: {result['aggregate_fps']} frames/s vs model {result['model_fps']} "
        f"frames/s ({result['aggregate_over_model']:.0%}); first mask p50 {result['first_mask_p50_s']}s, "
        f"p95 {result['first_mask_p95_s']}s"))


def _bench_followers(args: argparse.Namespace) -> int:
    from app.cli.followers_bench import bench_followers

    result = bench_followers(followers=args.followers, duration_s=args.duration, rate=args.rate)
    sig, poll = result["signals"], result["poll"]
    return emit(args, result, lambda: (
        f"{result['followers']} followers, {result['lines']} lines at {result['rate_lines_per_s']:g}/s: "
        f"signals p50/p95 {sig['delay_ms_p50']}/{sig['delay_ms_p95']} ms, CPU {sig['follower_cpu_s_per_s']} s/s; "
        f"{poll['mode']} p50/p95 {poll['delay_ms_p50']}/{poll['delay_ms_p95']} ms, "
        f"CPU {poll['follower_cpu_s_per_s']} s/s"))


def register(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add `serve`, `worker`, `demo` and `bench service` to the root parser's subcommands."""
    p = sub.add_parser("serve", help="the HTTP API + one worker (embedded broker unless AVS_BROKER_URL is set)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    p.add_argument("--workers", type=int, default=1, help="API processes (uvicorn workers)")
    p.add_argument("--no-worker", action="store_true", help="API only (workers run elsewhere)")
    p.add_argument("--root-path", default=None,
                   help="the path prefix a reverse proxy serves the API under, e.g. /avs (default: $AVS_ROOT_PATH); "
                        "job URLs and the web page's links carry it")
    p.add_argument("--loglevel", default="info", help="uvicorn's log level (and the worker's with --verbose)")
    p.add_argument("--verbose", action="store_true", help="the worker's Celery banner, superuser warning and info "
                                                          "logs too (default: its warnings and errors only)")
    p.set_defaults(handler=_serve)

    p = sub.add_parser("worker", help="a Celery worker: one process, one model, one GPU")
    p.add_argument("--loglevel", default="INFO", help="Celery log level")
    p.add_argument("--name", default=None, help="Celery node name (default: avs-<pid>@<host>)")
    p.add_argument("--quiet", action="store_true", help="no Celery banner and no superuser warning")
    p.set_defaults(handler=_worker)

    p = sub.add_parser("demo", help="serve, submit a synthetic clip over HTTP, stream masks, write the overlay")
    p.add_argument("--out", default="runs/demo", help="folder for the clip, masks.ndjson and overlay.mp4")
    add_json_flag(p)
    p.set_defaults(handler=_demo)

    p = bench.add_parser("service", help="frames/s through HTTP + Celery vs the model alone; time to first mask")
    p.add_argument("--video", default=None, help="the video to submit (default: a synthetic sample clip)")
    p.add_argument("--concurrency", type=int, default=1, help="copies of the video submitted at the same moment "
                                                               "(and the worker's jobs at once)")
    p.add_argument("--runs", type=int, default=3, help="rounds, one after the other; the best is reported")
    p.add_argument("--batch-size", type=int, default=8, help="the worker's frames per inference call")
    add_json_flag(p)
    p.set_defaults(handler=_bench_service)

    p = bench.add_parser("followers", help="delay from a mask line's write to its followers, and their CPU: "
                                           "Redis signals vs the former 50 ms poll, in one run")
    p.add_argument("--followers", type=int, default=50, help="followers of one stream")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of lines per mode")
    p.add_argument("--rate", type=float, default=25.0, help="lines written per second (a 25 frames/s stream)")
    add_json_flag(p)
    p.set_defaults(handler=_bench_followers)
