"""`avs`: the project's command line, one module per command group.

    model_commands    avs model list|info, avs weights import-*, avs bench model|compare
    media_commands    avs segment, avs score, avs bench segment|memory
    live_commands     avs live, avs bench live
    lab_commands      avs synth, avs train, avs eval
    distill_commands  avs distill
    service_commands  avs serve, avs worker, avs demo, avs bench service|followers
    export_commands   avs export onnx
    objects_commands  avs bench objects
    demo, client      what `avs demo` / `avs bench service` run: a local service and a stdlib HTTP client

Importing this package (and building the parser) loads no torch: every handler imports what it needs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from app.cli import (
    distill_commands,
    export_commands,
    lab_commands,
    live_commands,
    media_commands,
    model_commands,
    objects_commands,
    service_commands,
)
from app.cli.output import EXIT_ERROR, Parser, error_code, print_json

GROUPS = (model_commands, media_commands, live_commands, lab_commands, distill_commands, service_commands,
          export_commands, objects_commands)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="avs", description="AVESFormer audio-visual segmentation")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="benchmarks (JSON out)").add_subparsers(
        dest="action", required=True)
    for group in GROUPS:
        group.register(sub, bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except Exception as exc:
        code = error_code(exc)
        if code is None:
            raise
        sys.stderr.write(f"avs: error [{code}]: {exc}\n")
        if getattr(args, "json", False):
            print_json({"error": {"code": code, "message": str(exc)}})
        return EXIT_ERROR
