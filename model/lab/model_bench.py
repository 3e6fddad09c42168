"""Model speed benchmark: frames per second of one variant, median of several timed iterations.

The timed call is the whole `AVSModel.forward` on random frames and one log-mel example per frame, so
the audio encoder is included (as in EASE's speed table, model-spec §5.3). With `breakdown=True` the
visual and audio encoders are also timed alone; "decoder" is the rest (neck, decoder, head).
`bench_onnxruntime` times PyTorch against ONNX Runtime from the audio embedding on (no audio encoder).
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

from model.build import build_model
from model.variants import get_config


def _timed(fn: Callable[[], object], *, iters: int, warmup: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # CUDA is asynchronous: wait, or we time the launch only
        times.append(time.perf_counter() - start)
    return times


def _check_timing(*, batch_size: int, size: int, iters: int, warmup: int, threads: int | None) -> None:
    """ValueError for counts no benchmark can use; applies `threads` to torch."""
    if batch_size < 1 or iters < 1 or warmup < 0:
        raise ValueError("batch_size and iters must be >= 1, warmup >= 0")
    if size % 32:
        raise ValueError(f"size {size} must be a multiple of 32")
    if threads:
        torch.set_num_threads(threads)


def bench_model(variant: str | None, *, batch_size: int = 1, size: int | None = None, iters: int = 10,
                warmup: int = 2, device: str = "cpu", threads: int | None = None, amp: bool = False,
                breakdown: bool = False, seed: int = 0, checkpoint: str | None = None,
                amp_dtype: str = "float16", channels_last: bool = False, compile: bool = False) -> dict[str, object]:
    """Frames/s of one model's full forward (frames [B, 3, size, size] + log-mel [B, 1, 96, 64]).

    The model is `variant` with random weights, or `checkpoint` (an imported AVSegFormer, say) loaded as it
    is; `size` defaults to the checkpoint's own input size (512 for the published S4/MS3 models), else 224.
    `amp`: autocast to `amp_dtype` (float16 or bfloat16; CUDA only); `channels_last`: the model and frames in
    channels-last memory format; `compile`: `torch.compile` (its compilation happens in the warm-up runs).
    """
    dev = torch.device(device)
    torch.manual_seed(seed)
    if checkpoint is not None:
        from model.checkpoint import load_checkpoint

        model, info = load_checkpoint(checkpoint, variant=variant)
        cfg, variant = info.config, info.variant
    else:
        if variant is None:
            raise ValueError("give a variant or a checkpoint")
        cfg = get_config(variant)
        model = build_model(cfg)
    size = size or (cfg.input_size if checkpoint is not None else 224)
    _check_timing(batch_size=batch_size, size=size, iters=iters, warmup=warmup, threads=threads)
    model = model.to(dev).eval()
    frames = torch.rand(batch_size, 3, size, size, device=dev)
    log_mel = torch.randn(batch_size, 1, 96, 64, device=dev)
    if channels_last:
        model, frames = model.to(memory_format=torch.channels_last), frames.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if compile else model
    if amp_dtype not in ("float16", "bfloat16"):
        raise ValueError(f"amp_dtype must be float16 or bfloat16, got {amp_dtype!r}")
    autocast = torch.autocast(dev.type, dtype=getattr(torch, amp_dtype), enabled=amp and dev.type == "cuda")

    def run(fn: Callable[[], object]) -> list[float]:
        def call() -> object:
            with torch.inference_mode(), autocast:
                return fn()
        return _timed(call, iters=iters, warmup=warmup, device=dev)

    total = statistics.median(run(lambda: forward(frames, log_mel)))
    ms_per_frame = 1000 * total / batch_size
    result: dict[str, object] = {
        "variant": variant,
        "checkpoint": checkpoint,
        "fps": round(batch_size / total, 3),
        "ms_per_frame": round(ms_per_frame, 3),
        "batch_size": batch_size,
        "size": size,
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "threads": torch.get_num_threads(),
        "iters": iters,
        "amp": amp_dtype if amp and dev.type == "cuda" else None,
        "channels_last": channels_last,
        "compile": compile,
        "params_total": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
    }
    if breakdown:
        visual = statistics.median(run(lambda: model.visual_encoder((frames - model.pixel_mean) / model.pixel_std)))
        audio = statistics.median(run(lambda: model.encode_audio(log_mel)))
        result["ms_per_frame_breakdown"] = {
            "visual": round(1000 * visual / batch_size, 3),
            "audio": round(1000 * audio / batch_size, 3),
            "decoder": round(1000 * max(total - visual - audio, 0.0) / batch_size, 3),
        }
    return result


def _pairs(backbones: list[str], checkpoints: list[str]) -> Iterator[tuple[str, str | None, dict[str, nn.Module],
                                                                           int | None]]:
    """(backbone, checkpoint, {"avesformer", "avsegformer"} models, the checkpoint's input size) to compare:
    random weights per backbone, then each checkpoint (an imported AVSegFormer) beside AVESFormer on its
    backbone."""
    from model.checkpoint import load_checkpoint

    for backbone in backbones:
        torch.manual_seed(0)
        yield backbone, None, {kind: build_model(get_config(f"{kind}-{backbone}"))
                               for kind in ("avesformer", "avsegformer")}, None
    for checkpoint in checkpoints:
        model, info = load_checkpoint(checkpoint)
        kind, _, backbone = info.variant.partition("-")
        if kind != "avsegformer":
            raise ValueError(f"{checkpoint}: --checkpoint compares an AVSegFormer checkpoint, this is {info.variant}")
        torch.manual_seed(0)
        yield backbone, checkpoint, {"avesformer": build_model(get_config(f"avesformer-{backbone}")),
                                     "avsegformer": model}, info.config.input_size


def bench_compare(backbones: list[str], batch_sizes: list[int], *, size: int = 224, iters: int = 5,
                  warmup: int = 1, device: str = "cpu", threads: int | None = None,
                  checkpoints: list[str] | None = None) -> dict[str, object]:
    """AVESFormer vs the AVSegFormer baseline on the same backbones, in one process and one run.

    The two models of a pair are timed in alternation (A, B, A, B, ...) and each gets the median of
    its own runs, so a slow drift in machine load (other processes, thermal limits) hits both alike
    and the ratio stays meaningful on a noisy shared machine. Each of `checkpoints` (an imported
    AVSegFormer) is timed at its own input size beside AVESFormer on its backbone (its row says so).
    """
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    rows = []
    for backbone, checkpoint, built, own_size in _pairs(backbones, checkpoints or []):
        models = {kind: model.to(dev).eval() for kind, model in built.items()}
        pair_size = own_size or size
        for batch_size in batch_sizes:
            frames = torch.rand(batch_size, 3, pair_size, pair_size, device=dev)
            log_mel = torch.randn(batch_size, 1, 96, 64, device=dev)
            calls = {kind: functools.partial(m, frames, log_mel) for kind, m in models.items()}
            times: dict[str, list[float]] = {kind: [] for kind in models}
            with torch.inference_mode():
                for call in calls.values():
                    _timed(call, iters=0, warmup=warmup, device=dev)
                for _ in range(iters):
                    for kind, call in calls.items():
                        times[kind] += _timed(call, iters=1, warmup=0, device=dev)
            fps = {kind: batch_size / statistics.median(t) for kind, t in times.items()}
            rows.append({
                "backbone": backbone, "batch_size": batch_size, "size": pair_size, "checkpoint": checkpoint,
                "avesformer_fps": round(fps["avesformer"], 3), "avsegformer_fps": round(fps["avsegformer"], 3),
                "avesformer_params": sum(p.numel() for p in models["avesformer"].parameters()),
                "avsegformer_params": sum(p.numel() for p in models["avsegformer"].parameters()),
                "speedup": round(fps["avesformer"] / fps["avsegformer"], 2),
            })
        del models
    return {"size": size, "iters": iters, "device": device, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "rows": rows}


def bench_onnxruntime(variant: str, *, batch_size: int = 1, size: int = 224, iters: int = 10, warmup: int = 2,
                      threads: int | None = None, opset: int = 18, seed: int = 0) -> dict[str, object]:
    """PyTorch vs ONNX Runtime (CPU) on the same model, inputs and threads, in one process and one run.

    The timed call is frames [B, 3, size, size] + audio embeddings [B, 128] -> mask logits [B, K, size, size]
    in both runtimes: the audio encoder is left out of both (the ONNX graph starts at the embedding, see
    `model.onnx_export`), so these numbers are not comparable with `bench_model`'s. The model is exported
    to a temporary file at `size`. ONNX Runtime gets `intra_op_num_threads = torch.get_num_threads()`
    so neither side has more cores, and no spin-waiting between runs. The two runtimes are timed in
    alternation (as in `bench_compare`) and each reports the median of its own `iters` runs.

    Returns the `bench_model` fields (with "fps"/"ms_per_frame" those of ONNX Runtime), "torch_fps",
    "torch_ms_per_frame", "onnxruntime_fps", "onnxruntime_ms_per_frame", "speedup" (ORT fps / torch
    fps), "max_abs_diff" (largest |logit difference| on the timed inputs), "onnxruntime" (version),
    "opset", "exporter", "export_s".

    Raises:
        ValueError: batch_size or iters < 1, warmup < 0, size not a multiple of 32.
        ImportError: onnx, onnxscript or onnxruntime is not installed.
    """
    import tempfile

    import onnxruntime as ort

    from model.onnx_export import export_onnx

    _check_timing(batch_size=batch_size, size=size, iters=iters, warmup=warmup, threads=threads)
    dev = torch.device("cpu")
    torch.manual_seed(seed)
    cfg = get_config(variant)
    model = build_model(cfg).eval()
    frames = torch.rand(batch_size, 3, size, size)
    with torch.inference_mode():
        # Real embeddings (of random log-mel), not random numbers: the encoder's output range is what the
        # decoder sees in service.
        embedding = model.encode_audio(torch.randn(batch_size, 1, 96, 64))
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1  # one graph node at a time, like torch's eager execution
    # ORT's idle workers spin-wait after each run by default; in alternation they would hold the cores
    # torch's next run needs (measured: torch up to 2x slower right after an ORT run with spinning on).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    with tempfile.TemporaryDirectory(prefix="avs-onnx-") as tmp:
        start = time.perf_counter()
        export = export_onnx(model, cfg, f"{tmp}/{variant}.onnx", opset=opset, size=size)
        export_s = time.perf_counter() - start
        # The session holds the graph in memory once built, so the file can go with the folder.
        session = ort.InferenceSession(export["path"], options, providers=["CPUExecutionProvider"])
    feeds = {"frames": frames.numpy(), "audio_embedding": embedding.numpy()}

    def run_torch() -> torch.Tensor:
        with torch.inference_mode():
            return model(frames, audio_embedding=embedding).mask_logits

    def run_ort() -> torch.Tensor:
        return torch.from_numpy(session.run(None, feeds)[0])

    calls = {"torch": run_torch, "onnxruntime": run_ort}
    max_abs_diff = float((run_torch() - run_ort()).abs().max())
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        _timed(call, iters=0, warmup=warmup, device=dev)
    for _ in range(iters):
        for name, call in calls.items():
            times[name] += _timed(call, iters=1, warmup=0, device=dev)
    median = {name: statistics.median(t) for name, t in times.items()}
    fps = {name: batch_size / m for name, m in median.items()}
    ms = {name: 1000 * m / batch_size for name, m in median.items()}
    return {
        "variant": variant,
        "runtime": "onnxruntime",
        "timed": "frames + audio embedding -> mask logits (audio encoder excluded, both runtimes)",
        "fps": round(fps["onnxruntime"], 3),
        "ms_per_frame": round(ms["onnxruntime"], 3),
        "batch_size": batch_size,
        "size": size,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "iters": iters,
        "amp": False,
        "params_timed": export["params"],  # the graph's: the audio encoder is not in it
        "torch": torch.__version__,
        "torch_fps": round(fps["torch"], 3),
        "torch_ms_per_frame": round(ms["torch"], 3),
        "onnxruntime_fps": round(fps["onnxruntime"], 3),
        "onnxruntime_ms_per_frame": round(ms["onnxruntime"], 3),
        "speedup": round(fps["onnxruntime"] / fps["torch"], 3),
        "max_abs_diff": max_abs_diff,
        "onnxruntime": ort.__version__,
        "onnxruntime_spinning": False,
        "opset": export["opset"],
        "exporter": export["exporter"],
        "export_s": round(export_s, 1),
    }
