"""ONNX export of a variant: frames + audio embeddings in, mask logits out.

The exported graph starts after the audio encoder: the service computes one audio embedding per 0.96 s
window and shares it across the frames it covers, so the audio network has no place in a per-frame
graph. Both AVESFormer and the AVSegFormer baseline export (the baseline's deformable attention is plain
PyTorch with `grid_sample`, which ONNX has since opset 16).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.config import AVSConfig
from model.errors import ConfigError
from model.modeling.avs_model import AVSModel

INPUT_NAMES = ("frames", "audio_embedding")
OUTPUT_NAME = "mask_logits"
AUDIO_EMBED_DIM = 128  # VGGish's (and the tiny encoder's) embedding width
MIN_OPSET = 18


class MaskLogits(nn.Module):
    """`AVSModel` as ONNX sees it: (frames [N, 3, S, S], audio_embedding [N, 128]) -> mask logits [N, K, S, S]."""

    def __init__(self, model: AVSModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor, audio_embedding: torch.Tensor) -> torch.Tensor:
        return self.model(frames, audio_embedding=audio_embedding).mask_logits


def export_onnx(model: AVSModel, config: AVSConfig, out_path: Path | str, *, opset: int = 18, batch_size: int = 2,
                dynamic_batch: bool = True, size: int | None = None) -> dict[str, Any]:
    """Write `model` (the mask-logit path, audio encoder excluded) to one self-contained ONNX file.

    The graph takes `frames` [N, 3, S, S] float32 RGB in [0, 1] and `audio_embedding` [N, 128] float32
    (`AVSModel.encode_audio` output) and returns `mask_logits` [N, K, S, S] float32 (pre-sigmoid for
    K = 1, pre-softmax for K = 71). S is fixed at export (`size`, default the config's input size); N is
    symbolic ("N") with `dynamic_batch`, else fixed at `batch_size`, which is also the example batch traced.

    The default exporter (`torch.onnx.export(dynamo=True)`, needs onnxscript) is tried first; if it fails,
    the TorchScript exporter (`dynamo=False`), and the summary says which one wrote the file. The model is
    exported in eval mode and handed back in the mode it came in. The file is checked with `onnx.checker`.

    Returns:
        {"path", "variant", "opset" (as written in the file), "exporter" ("dynamo" or "torchscript"),
         "inputs": {name: shape}, "outputs": {name: shape} (shapes list ints, "N" for the dynamic batch),
         "file_bytes", "params" (parameters in the graph, i.e. without the audio encoder)}, plus
         "dynamo_error" when the fallback was used.

    Raises:
        ValueError: `size` not a positive multiple of 32, `batch_size` < 1 (or < 2 with `dynamic_batch`:
            torch.export treats a traced size of 1 as a constant), `opset` < 18.
        ConfigError: neither exporter can convert this model (both error messages are in it), or the file
            holds another opset than asked for (an opset newer than the installed onnx/onnxscript know).
        onnx.checker.ValidationError: the written file is not valid ONNX (an exporter bug).
    """
    import onnx

    size = config.input_size if size is None else size
    if size <= 0 or size % 32:
        raise ValueError(f"size {size} must be a positive multiple of 32")
    if batch_size < (2 if dynamic_batch else 1):
        raise ValueError(f"batch_size {batch_size} must be >= 2 for a dynamic batch, >= 1 otherwise")
    if opset < MIN_OPSET:
        # The dynamo exporter writes opset 18 and down-converts; ONNX's version converter fails on this
        # graph (measured for 17), and the exporter then keeps the file at 18 with only a warning.
        raise ValueError(f"opset {opset} is not supported: the exporter writes opset {MIN_OPSET} or later")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    example = (torch.rand(batch_size, 3, size, size, device=device),
               torch.randn(batch_size, AUDIO_EMBED_DIM, device=device))
    was_training = model.training
    wrapper = MaskLogits(model).eval()  # eval() recurses: dropout off, BatchNorm on its running statistics
    try:
        exporter, dynamo_error = _export(wrapper, example, out_path, opset=opset, dynamic_batch=dynamic_batch)
    finally:
        model.train(was_training)

    onnx.checker.check_model(str(out_path))  # a path, not a loaded proto: also works for > 2 GB files
    proto = onnx.load(str(out_path), load_external_data=False)
    written = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if written != opset:
        raise ConfigError(f"asked for opset {opset}, but the {exporter} exporter wrote opset {written}")
    summary: dict[str, Any] = {
        "path": str(out_path),
        "variant": config.variant,
        "opset": written,
        "exporter": exporter,
        "inputs": {v.name: _shape(v) for v in proto.graph.input},
        "outputs": {v.name: _shape(v) for v in proto.graph.output},
        "file_bytes": sum(p.stat().st_size for p in (out_path, out_path.with_name(out_path.name + ".data"))
                          if p.exists()),
        "params": sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in model.audio_encoder.parameters()),
    }
    if dynamo_error:
        summary["dynamo_error"] = dynamo_error
    return summary


def _export(wrapper: nn.Module, example: tuple[torch.Tensor, torch.Tensor], out_path: Path, *, opset: int,
            dynamic_batch: bool) -> tuple[str, str | None]:
    """Write the file with the dynamo exporter, else the TorchScript one; returns (exporter, dynamo error)."""
    common: dict[str, Any] = {"input_names": list(INPUT_NAMES), "output_names": [OUTPUT_NAME],
                              "opset_version": opset, "verbose": False}
    dynamo_error = None
    try:
        with warnings.catch_warnings():
            # Both inputs share the batch axis, so the exporter merges the two "N" names and says so.
            warnings.filterwarnings("ignore", message=r".*axis name: N will not be used")
            shapes = {name: {0: "N"} for name in INPUT_NAMES} if dynamic_batch else None
            # external_data=False: one file to ship (the exporter still splits it past 2 GB, ONNX's limit).
            torch.onnx.export(wrapper, example, str(out_path), dynamo=True, external_data=False,
                              dynamic_shapes=shapes, **common)
        return "dynamo", None
    except Exception as exc:  # any failure of the new exporter (missing onnxscript, an unsupported op): fall back
        dynamo_error = f"{type(exc).__name__}: {_first_line(exc)}"
    try:
        axes = {name: {0: "N"} for name in (*INPUT_NAMES, OUTPUT_NAME)} if dynamic_batch else None
        with torch.no_grad():
            torch.onnx.export(wrapper, example, str(out_path), dynamo=False, dynamic_axes=axes, **common)
    except Exception as exc:
        raise ConfigError(f"cannot export this model to ONNX. dynamo exporter: {dynamo_error}; "
                          f"TorchScript exporter: {type(exc).__name__}: {_first_line(exc)}") from exc
    return "torchscript", dynamo_error


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def _shape(value: Any) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
