"""`avs export onnx`: a variant (random weights or a checkpoint's) as an ONNX file.

Torch is imported inside the handler, never at module level (`avs --help` stays torch-free).
"""

from __future__ import annotations

import argparse

from app.cli.output import add_json_flag, emit


def _export_onnx(args: argparse.Namespace) -> int:
    import torch

    from model.onnx_export import export_onnx

    if args.checkpoint:
        from model.checkpoint import load_checkpoint

        # `variant=` refuses a checkpoint whose stored architecture differs (ConfigError -> invalid_config),
        # before any tensor is read.
        model, info = load_checkpoint(args.checkpoint, variant=args.variant)
        config = info.config
    else:
        from model.build import build_model
        from model.variants import get_config

        config = get_config(args.variant)
        torch.manual_seed(args.seed)  # the same random weights on every run, so two exports can be compared
        model = build_model(config)
    summary = export_onnx(model, config, args.out, opset=args.opset, size=args.size)
    result = {**summary, "checkpoint": args.checkpoint, "seed": None if args.checkpoint else args.seed}
    inputs = ", ".join(f"{name} {shape}" for name, shape in summary["inputs"].items())
    outputs = ", ".join(f"{name} {shape}" for name, shape in summary["outputs"].items())
    return emit(args, result, lambda: (
        f"wrote {summary['path']}: {summary['variant']}, {summary['params']:,} parameters, opset {summary['opset']} "
        f"({summary['exporter']} exporter), {summary['file_bytes'] / 2**20:.1f} MiB; {inputs} -> {outputs}"))


def register(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add `export onnx` to the root parser's subcommands."""
    export_p = sub.add_parser("export", help="export a model to other runtimes").add_subparsers(
        dest="action", required=True)
    p = export_p.add_parser("onnx", help="ONNX file: frames + audio embeddings -> mask logits (dynamic batch)")
    p.add_argument("--variant", required=True, help="a name from `avs model list`")
    p.add_argument("--checkpoint", default=None,
                   help="a .safetensors checkpoint of that variant (default: random weights, seeded)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version (18 or later)")
    p.add_argument("--size", type=int, default=None,
                   help="frame side the graph is fixed to, a multiple of 32 (default: the variant's input size; "
                        "give the size a model was trained at with `avs train --size`)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (without --checkpoint)")
    add_json_flag(p)
    p.set_defaults(handler=_export_onnx)
