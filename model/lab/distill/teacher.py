"""The teacher of a distillation: a trained model behind one call, and a fingerprint of its weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from model.config import AVSConfig
from model.modeling.avs_model import AVSModel

TEACHER_BATCH = 16  # frames per forward pass when labelling


def weights_fingerprint(model: torch.nn.Module, cfg: AVSConfig) -> str:
    """sha256 over the config and every tensor of `model` (names, dtypes, shapes, bytes) in name order: the
    same weights give the same hex digest whatever file (or card) they were read from."""
    digest = hashlib.sha256(cfg.to_json().encode())
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().to("cpu").contiguous()
        digest.update(json.dumps([name, str(value.dtype), list(value.shape)]).encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


class ModelTeacher:
    """`teacher(frames, log_mel)`: uint8 [n, S, S, 3] RGB at `input_size` + float32 [n, 1, 96, 64] ->
    float32 logits [n, K, S, S] on the CPU, in batches of `TEACHER_BATCH`, in inference mode.

    Frames are fed as `AVSPredictor.predict_logits` feeds them (RGB / 255; the model normalises).
    """

    def __init__(self, model: AVSModel, cfg: AVSConfig, *, device: str = "cpu", source: str | None = None) -> None:
        self.model = model.to(device).eval()
        self.cfg = cfg
        self.device = torch.device(device)
        self.source = source
        self.fingerprint = weights_fingerprint(self.model, cfg)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str = "cpu") -> ModelTeacher:
        """Raises CheckpointError for a file that is not a readable checkpoint."""
        from model.checkpoint import load_checkpoint

        model, info = load_checkpoint(path)
        return cls(model, info.config, device=device, source=str(path))

    @property
    def input_size(self) -> int:
        """The side S of the square frames the teacher takes."""
        return self.cfg.input_size

    @property
    def num_classes(self) -> int:
        """K: 1 (binary masks) or the number of classes, background included."""
        return self.cfg.num_classes

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray, log_mel: np.ndarray) -> torch.Tensor:
        out = []
        for start in range(0, frames.shape[0], TEACHER_BATCH):
            x = torch.from_numpy(np.ascontiguousarray(frames[start:start + TEACHER_BATCH])).to(self.device)
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            a = torch.from_numpy(np.ascontiguousarray(log_mel[start:start + TEACHER_BATCH])).to(self.device)
            out.append(self.model(x, a).mask_logits.float().cpu())
        return torch.cat(out)
