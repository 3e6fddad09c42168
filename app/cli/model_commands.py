"""`avs model`, `avs weights`, `avs bench model|compare`: the network's variants, checkpoints, weights and speed.

Torch is imported inside the handlers, never at module level (`avs --help` and the API stay torch-free).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from app.cli.output import add_json_flag, emit, print_json


def _model_list(args: argparse.Namespace) -> int:
    from model.variants import VARIANTS

    rows = [{"variant": name, "visual": cfg.visual.backbone, "audio": cfg.audio.backbone,
             "decoder": cfg.decoder.kind, "input_size": cfg.input_size} for name, cfg in VARIANTS.items()]
    if args.json:
        print_json({"variants": rows})
    else:
        for row in rows:
            print(f"{row['variant']:24s} visual={row['visual']:10s} audio={row['audio']:7s} "
                  f"decoder={row['decoder']:12s} input={row['input_size']}")
    return 0


def _model_info(args: argparse.Namespace) -> int:
    if (args.checkpoint is None) == (args.variant is None):
        raise ValueError("give a checkpoint file or --variant (one of the two)")
    if args.checkpoint is not None:
        return _checkpoint_info(args)
    from model.build import build_model
    from model.variants import get_config

    cfg = get_config(args.variant, num_classes=args.num_classes)
    model = build_model(cfg)
    groups = model.parameter_groups()
    info = {"variant": cfg.variant, "params_total": sum(groups.values()), "params": groups,
            "input_size": cfg.input_size, "num_classes": cfg.num_classes}
    if args.json:
        print_json(info)
    else:
        print(f"{info['variant']}: {info['params_total']:,} parameters "
              f"(visual {groups['visual']:,}, audio {groups['audio']:,}, decoder {groups['decoder']:,}); "
              f"input {cfg.input_size}x{cfg.input_size}, {cfg.num_classes} class(es)")
        if args.config:
            print(json.dumps(cfg.to_dict(), indent=2))
    return 0


def _checkpoint_info(args: argparse.Namespace) -> int:
    """A checkpoint's card and preprocessing, from its header alone (no torch)."""
    from worker.core.model_card import read_model_card

    info = read_model_card(args.checkpoint)
    if args.json:
        print_json(info)
        return 0
    pre, parts = info["preprocessing"], info["params_by_part"]
    names = pre["class_names"] or []
    shown = ", ".join(names[:6]) + (f", ... ({len(names) - 6} more)" if len(names) > 6 else "")
    print(f"{info['path']}: {info['variant']}, {info['params']:,} tensor values (visual {parts['visual']:,}, "
          f"audio {parts['audio']:,}, decoder {parts['decoder']:,})")
    print(f"  input: {pre['input_size']}x{pre['input_size']} RGB, normalised with mean {pre['pixel_mean']} "
          f"std {pre['pixel_std']}; {pre['num_classes']} class(es){': ' + shown if shown else ''}")
    card = info["card"]
    if not card:
        print("  card: none (a checkpoint written before model cards)")
        return 0
    from model.card import CARD_FIELDS  # torch-free

    for key in sorted(card, key=lambda k: (CARD_FIELDS.index(k) if k in CARD_FIELDS else len(CARD_FIELDS), k)):
        value = card[key]
        text = "; ".join(f"{k}: {v}" for k, v in value.items()) if isinstance(value, dict) else value
        print(f"  {key}: {text}")
    return 0


def _import_avsegformer(args: argparse.Namespace) -> int:
    from model.avsegformer_import import describe_dropped, import_avsegformer

    info = import_avsegformer(Path(args.file), Path(args.out), setting=args.setting, backbone=args.backbone)
    return emit(args, info, lambda: (
        f"wrote {info['out']}: AVSegFormer {info['backbone']} {info['setting'].upper()} as {info['variant']} "
        f"({info['num_classes']} class(es), input {info['input_size']}x{info['input_size']}); "
        f"{info['keys_mapped']} official tensors mapped to {info['tensors_written']}, {info['params']:,} parameters"
        + (f"; '{info['stripped_prefix']}' prefix removed" if info["stripped_prefix"] else "")
        + f"\ndropped {len(info['dropped'])} tensors the official forward never uses:\n"
        + (describe_dropped(info["dropped"]) or "  (none)")
        + f"\nmetrics on the card: mIoU {info['card']['metrics']['mIoU']}, F {info['card']['metrics']['F-score']} "
        f"({info['card']['metrics']['status']})"))


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
        return emit(args, info, lambda: (
            f"wrote {info['out']}: {info['backbone']} weights, {int(info['num_params']):,} parameters"))
    return handler


def _bench_model(args: argparse.Namespace) -> int:
    if args.runtime == "onnxruntime":
        return _bench_onnxruntime(args)
    from model.lab.model_bench import bench_model

    if not args.variant and not args.checkpoint:
        raise ValueError("give --variant or --checkpoint")
    result = bench_model(args.variant, batch_size=args.batch_size, size=args.size, iters=args.iters,
                         warmup=args.warmup, device=args.device, threads=args.threads, amp=args.amp,
                         breakdown=args.breakdown, checkpoint=args.checkpoint, amp_dtype=args.amp_dtype,
                         channels_last=args.channels_last, compile=args.compile)
    return emit(args, result, lambda: (
        f"{result['variant']}: {result['fps']} frames/s ({result['ms_per_frame']} ms/frame) at batch "
        f"{result['batch_size']}, {result['size']}², {result['device']}, {result['threads']} threads"))


def _bench_onnxruntime(args: argparse.Namespace) -> int:
    if args.device != "cpu" or args.amp or args.breakdown or args.compile or args.channels_last:
        raise ValueError("--runtime onnxruntime runs on the CPU, without --amp, --breakdown, --compile or "
                         "--channels-last")
    from model.lab.model_bench import bench_onnxruntime

    if not args.variant:
        raise ValueError("--runtime onnxruntime needs --variant")
    result = bench_onnxruntime(args.variant, batch_size=args.batch_size, size=args.size or 224, iters=args.iters,
                               warmup=args.warmup, threads=args.threads, opset=args.opset)
    return emit(args, result, lambda: (
        f"{result['variant']} without audio encoder, batch {result['batch_size']}, {result['size']}², "
        f"{result['threads']} threads: torch {result['torch_fps']} frames/s ({result['torch_ms_per_frame']} ms/frame), "
        f"onnxruntime {result['onnxruntime']} {result['onnxruntime_fps']} frames/s "
        f"({result['onnxruntime_ms_per_frame']} ms/frame), x{result['speedup']}; "
        f"max |logit difference| {result['max_abs_diff']:.2e}"))


def _bench_compare(args: argparse.Namespace) -> int:
    from model.lab.model_bench import bench_compare

    backbones = args.backbones if args.backbones is not None else [] if args.checkpoint else DEFAULT_BACKBONES
    result = bench_compare(backbones, args.batch_sizes, size=args.size or 224, iters=args.iters,
                           warmup=args.warmup, device=args.device, threads=args.threads, checkpoints=args.checkpoint)
    if args.json:
        print_json(result)
    else:
        for row in result["rows"]:
            which = f"{Path(row['checkpoint']).name} vs AVESFormer" if row["checkpoint"] else row["backbone"]
            print(f"{which:10s} {row['size']}² batch {row['batch_size']}: AVESFormer {row['avesformer_fps']} fps, "
                  f"AVSegFormer {row['avsegformer_fps']} fps, speed-up x{row['speedup']}")
    return 0


DEFAULT_BACKBONES = ["pvt_v2_b0", "pvt_v2_b2", "pvt_v2_b5", "r50"]


def _timing_args(p: argparse.ArgumentParser, *, iters: int, warmup: int) -> None:
    p.add_argument("--size", type=int, default=None,
                   help="frame side in pixels (square input; default: a checkpoint's own input size, else 224)")
    p.add_argument("--iters", type=int, default=iters, help="timed runs; the median is reported")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed runs first")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def register(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add `model`, `weights` and `bench model|compare` to the root parser's subcommands."""
    model_p = sub.add_parser("model", help="model variants").add_subparsers(
        dest="action", required=True)
    p = model_p.add_parser("list", help="list the variants")
    add_json_flag(p)
    p.set_defaults(handler=_model_list)
    p = model_p.add_parser("info", help="a checkpoint's card and preprocessing, or a variant's parameter counts")
    p.add_argument("checkpoint", nargs="?", default=None, help="a checkpoint (.safetensors): print its model card")
    p.add_argument("--variant", default=None, help="a name from `avs model list`")
    p.add_argument("--num-classes", type=int, default=None, help="1 (S4/MS3, the default) or 71 (AVSS)")
    p.add_argument("--config", action="store_true", help="also print the full config (text mode)")
    add_json_flag(p)
    p.set_defaults(handler=_model_info)

    weights_p = sub.add_parser("weights", help="convert public weight files").add_subparsers(dest="action",
                                                                                             required=True)
    for kind, helptext in (("vggish", "torchvggish vggish-10086976.pth"),
                           ("pvt", "PVT-v2 release file (pvt_v2_b*.pth) or an AVSegFormer checkpoint"),
                           ("resnet50", "torchvision resnet50 state dict")):
        p = weights_p.add_parser(f"import-{kind}", help=f"convert {helptext} to safetensors")
        p.add_argument("file", help=f"the {helptext}")
        p.add_argument("--out", required=True, help="the .safetensors file to write")
        if kind == "pvt":
            p.add_argument("--backbone", default=None, help="expected variant, e.g. pvt_v2_b5 (checked)")
        add_json_flag(p)
        p.set_defaults(handler=_weights_import(kind))
    p = weights_p.add_parser("import-avsegformer", help="convert a published AVSegFormer checkpoint "
                                                         "(github.com/vvvb-github/AVSegFormer) to our checkpoint")
    p.add_argument("file", help="the official .pth (R50 or PVT-v2-b5; S4, MS3 or AVSS)")
    p.add_argument("--out", required=True, help="the .safetensors checkpoint to write")
    p.add_argument("--setting", choices=("s4", "ms3", "avss"), default=None,
                   help="default: from the keys (71 classes: avss) and, for S4/MS3, the file name")
    p.add_argument("--backbone", choices=("r50", "pvt_v2_b5"), default=None, help="default: from the keys")
    add_json_flag(p)
    p.set_defaults(handler=_import_avsegformer)

    p = bench.add_parser("model", help="model frames/s (torch: full forward incl. audio encoder; "
                                       "onnxruntime: torch vs ONNX Runtime from the audio embedding on)")
    p.add_argument("--variant", default=None, help="a name from `avs model list` (random weights)")
    p.add_argument("--checkpoint", default=None,
                   help="a checkpoint instead (an imported AVSegFormer: timed at its own input size)")
    p.add_argument("--batch-size", type=int, default=1, help="frames per forward pass")
    _timing_args(p, iters=10, warmup=2)
    p.add_argument("--amp", action="store_true", help="autocast (CUDA only) to --amp-dtype")
    p.add_argument("--amp-dtype", choices=("float16", "bfloat16"), default="float16", help="the autocast dtype")
    p.add_argument("--channels-last", action="store_true", help="model and frames in channels-last memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (compiled during the warm-up)")
    p.add_argument("--breakdown", action="store_true", help="also time visual and audio encoders alone")
    p.add_argument("--runtime", choices=("torch", "onnxruntime"), default="torch",
                   help="onnxruntime: export to ONNX, time torch and ONNX Runtime (CPU) alternately in one run")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset of the export (--runtime onnxruntime)")
    add_json_flag(p)
    p.set_defaults(handler=_bench_model)
    p = bench.add_parser("compare", help="AVESFormer vs AVSegFormer frames/s on the same backbones")
    p.add_argument("--backbones", nargs="+", default=None,
                   help=f"visual backbones to compare on, random weights (default: {' '.join(DEFAULT_BACKBONES)}, "
                        "or none with --checkpoint)")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8], help="frames per forward pass, each")
    p.add_argument("--checkpoint", nargs="+", default=[],
                   help="imported AVSegFormer checkpoints, each timed at its own input size beside AVESFormer "
                        "on its backbone")
    _timing_args(p, iters=5, warmup=1)
    add_json_flag(p)
    p.set_defaults(handler=_bench_compare)
