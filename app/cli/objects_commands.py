"""`avs bench objects`: the object store's put/get throughput, local directory vs S3 (worker.core.objects.bench)."""

from __future__ import annotations

import argparse

from app.cli.output import add_json_flag, emit


def _bench_objects(args: argparse.Namespace) -> int:
    from worker.core.objects.bench import bench_objects

    result = bench_objects(args.size_mb, endpoint=args.endpoint, access_key=args.access_key,
                           secret_key=args.secret_key, bucket=args.bucket)
    return emit(args, result, lambda: (
        f"{args.size_mb} MiB: local put {result['local']['put_MBps']} MB/s, get {result['local']['get_MBps']} MB/s;"
        f" S3 put {result['s3']['put_MBps']} MB/s, get {result['s3']['get_MBps']} MB/s"
        + (f" (Swift started in {result['swift_start_s']} s)" if "swift_start_s" in result else "")))


def register(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add `bench objects` to the bench subcommands."""
    p = bench.add_parser("objects", help="object store put/get throughput: local directory vs S3")
    p.add_argument("--size-mb", type=int, default=50, help="the object's size in MiB")
    p.add_argument("--endpoint", default=None, help="an S3 endpoint (default: start a throwaway Swift)")
    p.add_argument("--access-key", default=None, help="with --endpoint: the S3 access key")
    p.add_argument("--secret-key", default=None, help="with --endpoint: the S3 secret key")
    p.add_argument("--bucket", default="avs-bench", help="created when missing")
    add_json_flag(p)
    p.set_defaults(handler=_bench_objects)
