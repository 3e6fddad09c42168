"""`avs live SOURCE` and `avs bench live`: segmentation of a stream while it plays.

`avs live` runs in this process (model, frame engine, one `LiveSession`), or, with `--server URL`, streams a
file to a running service's `/live`. Torch is imported inside the handlers, never at module level.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from app.cli.media_commands import add_model_args, load_predictor, media_limits
from app.cli.output import EXIT_ERROR, add_json_flag, emit


def _live(args: argparse.Namespace) -> int:
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115 - closed below
    try:
        summary = _live_remote(args, out) if args.server else _live_local(args, out)
    finally:
        if out is not sys.stdout:
            out.close()
    line = (f"{summary['frames_processed']} of {summary['frames_received']} frames segmented "
            f"({summary.get('frames_skipped_by_rate', 0)} skipped by the fps cap, {summary['frames_dropped']} dropped "
            f"late); latency p50 {summary['latency_p50_ms']} ms, p95 {summary['latency_p95_ms']} ms")
    job_id = summary.get("job_id")
    if args.json:
        # stdout, as the README says: the last line, after the mask records when they go to stdout too
        sys.stdout.write(json.dumps({**summary, "type": "summary"}) + "\n")
        sys.stdout.flush()
    else:
        sys.stderr.write(line + "\n")
        if job_id:
            sys.stderr.write(f"recorded as job {job_id}: {args.server.rstrip('/')}{summary.get('job_url') or ''}\n")
    if summary.get("error"):
        error = summary["error"]
        sys.stderr.write(f"avs: error [{error['code']}]: {error['message']}\n")
        return EXIT_ERROR
    return 0


def _write_record(out: Any, record: dict[str, Any]) -> None:
    out.write(json.dumps(record, separators=(",", ":")) + "\n")
    out.flush()


def _live_local(args: argparse.Namespace, out: Any) -> dict[str, Any]:
    from worker.core.live_sources import cli_source
    from worker.engine import FrameEngine
    from worker.live.server import error_of
    from worker.live.session import LiveOptions, LiveSession

    source = cli_source(args.source)
    predictor = load_predictor(args)
    predictor.warmup(1)
    engine = FrameEngine(predictor, max_batch_size=args.batch_size, max_wait_ms=0)
    session = LiveSession(source, engine, lambda record: _write_record(out, record),
                          options=LiveOptions(threshold=args.threshold, fps=args.fps, window=args.window,
                                              mode=args.mode),
                          limits=media_limits(args), realtime=source.url.startswith("file:") and not args.no_realtime,
                          idle_timeout_s=args.idle_timeout, reconnect_s=args.reconnect)
    session.start()
    try:
        summary = session.wait()  # this thread loaded the model: it runs it (worker.engine)
    except KeyboardInterrupt:
        session.end()
        summary = session.wait()
    error = error_of(session.error)
    return {**summary, "error": {"code": error[0], "message": error[1]} if error else None}


def _live_remote(args: argparse.Namespace, out: Any) -> dict[str, Any]:
    from app.cli.live_client import stream_file

    url = args.server.rstrip("/")
    url = url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    if not url.endswith("/live"):
        url += "/live"
    start = {"threshold": args.threshold, "fps": args.fps, "window": args.window, "record": args.record}
    if args.mode != "drop_oldest":  # only when asked: a server from before #21 refuses fields it does not know
        start["mode"] = args.mode
    is_url = "://" in args.source and not args.source.startswith("file://")
    if is_url:
        start["source"] = args.source
    result = asyncio.run(stream_file(url, None if is_url else Path(args.source), start, api_key=args.api_key,
                                     on_message=lambda m: _write_record(out, m) if m.get("type") == "mask" else None,
                                     stop_after_s=args.duration, realtime=not args.no_realtime))
    return {k: v for k, v in result.items() if k not in ("masks", "received_at", "started", "first_send_at")}


def _bench_live(args: argparse.Namespace) -> int:
    from app.cli.live_bench import bench_live

    result = bench_live(duration_s=args.duration, sessions=args.sessions, size=(args.width, args.height),
                        fps=args.fps, window=args.window, variant=args.variant, work_dir=args.work_dir,
                        max_fps=args.max_fps, mode=args.mode)
    return emit(args, result, lambda: (
        f"{result['sessions']} session(s) x {result['frames_sent'] // max(1, result['sessions'])} frames at "
        f"{args.width}x{args.height} {args.fps:g} fps: {result['frames_skipped_by_rate']} skipped by the fps cap, "
        f"{result['frames_dropped']} dropped late, {result['frames_lost_in_transit']} lost in transit "
        f"({result['dropped_fraction']:.1%} of the frames wanted), latency p50 {result['latency_p50_ms']} ms, "
        f"p95 {result['latency_p95_ms']} ms; targets met: {result['targets_met']}"))


def register(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add `live` and `bench live` to the root parser's subcommands."""
    p = sub.add_parser("live", help="segment a stream while it plays: a file at its own rate, or a stream URL")
    p.add_argument("source", help="a video file (played in real time), or udp://, tcp://, srt://, rtmp://, rtsp://, "
                                  "http(s):// stream URL")
    p.add_argument("--out", default=None, help="write the mask records here (default: stdout, one JSON per line)")
    p.add_argument("--window", type=int, default=2,
                   help="frames that may wait for the model; one more drops the oldest (never fall behind)")
    p.add_argument("--mode", choices=("drop_oldest", "no_drop"), default="drop_oldest",
                   help="no_drop: a frame more than --window waits (the source is read more slowly) instead of "
                        "dropping the oldest: every frame gets a mask")
    p.add_argument("--idle-timeout", type=float, default=10.0, help="end after this many seconds without media")
    p.add_argument("--reconnect", type=float, default=30.0,
                   help="a stream URL that drops is opened again (back-off 0.5 s to 8 s) until this many seconds "
                        "have passed since its last frame (0: end when it drops)")
    p.add_argument("--no-realtime", action="store_true", help="read a file as fast as possible (not at its rate)")
    p.add_argument("--server", default=None,
                   help="stream to a running service instead (http://host:port); a URL source is pulled by it")
    p.add_argument("--api-key", default=None, help="with --server: the service's API key")
    p.add_argument("--record", action="store_true", help="with --server: keep the session as a job")
    p.add_argument("--duration", type=float, default=None,
                   help="with --server and a stream URL: end the session after this many seconds")
    add_model_args(p)
    add_json_flag(p)
    p.set_defaults(handler=_live)

    p = bench.add_parser("live", help="live sessions over /live in real time: frames dropped, latency")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of stream per session")
    p.add_argument("--sessions", type=int, default=1, help="simultaneous sessions")
    p.add_argument("--width", type=int, default=640, help="the source's width in pixels")
    p.add_argument("--height", type=int, default=360, help="the source's height in pixels")
    p.add_argument("--fps", type=float, default=25.0, help="the source's frame rate")
    p.add_argument("--window", type=int, default=2, help="the sessions' window (frames waiting for the model)")
    p.add_argument("--mode", choices=("drop_oldest", "no_drop"), default="drop_oldest",
                   help="the sessions' mode: drop the oldest late frame, or hold the sender back")
    p.add_argument("--max-fps", type=float, default=None,
                   help="the sessions' fps cap (the start message's fps): frames over it are skipped, not dropped")
    p.add_argument("--variant", default=None, help="the worker's model variant (default: the demo checkpoint's)")
    p.add_argument("--work-dir", default=None, help="keep the service's data and log here (default: a temp dir)")
    add_json_flag(p)
    p.set_defaults(handler=_bench_live)
