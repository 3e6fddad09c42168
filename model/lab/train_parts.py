"""The parts of a training step: datasets, the resumable shard sampler, batches, the losses, precision.

Split from `model.lab.training` (which runs the loop) so each part can be read and tested alone.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from model.errors import ConfigError
from model.lab.data.avsbench import AVSSDataset, MS3Dataset, S4Dataset
from model.lab.distributed import DistContext
from model.lab.losses import binary_loss, semantic_loss

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def make_dataset(data: str | Path, subset: str, split: str, size: int, *, all_train_masks: bool = False) -> Dataset:
    if subset == "s4":
        return S4Dataset(data, split, size, all_train_masks=all_train_masks)
    if subset == "ms3":
        return MS3Dataset(data, split, size)
    if subset == "avss":
        return AVSSDataset(data, split, size)
    raise ConfigError(f"subset must be s4, ms3 or avss, got {subset!r}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def labelled_frames(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clip batch [B, T, ...] -> labelled real frames: frames [N,3,S,S], audio [N,1,96,64], masks [N,S,S]."""
    keep = (batch["gt_valid"] & batch["frame_valid"]).flatten()  # [B*T]
    frames = batch["frames"].flatten(0, 1)[keep]
    audio = batch["audio"].flatten(0, 1)[keep]
    masks = batch["masks"].flatten(0, 1)[keep]
    return frames, audio, masks


def compute_loss(model: torch.nn.Module, frames: torch.Tensor, audio: torch.Tensor, masks: torch.Tensor,
                 num_classes: int) -> dict[str, torch.Tensor]:
    """The recipe's losses of one batch (model-spec §4.2); logits are cast to float32 first, so the losses are
    computed at full precision under autocast."""
    out = model(frames, audio)
    mask_logits, aux_logits = out.mask_logits.float(), out.aux_logits.float()
    if num_classes == 1:
        return binary_loss(mask_logits, aux_logits, masks)
    return semantic_loss(mask_logits, aux_logits, masks.long())


class ShardSampler(DistributedSampler):
    """`DistributedSampler` that can start an epoch part-way (a resumed run skips the clips it already saw).

    Its order depends only on (seed, epoch), as `DistributedSampler`'s does, so a resumed epoch continues
    with exactly the clips the killed run would have seen next.
    """

    def __init__(self, dataset: Dataset, ctx: DistContext, seed: int) -> None:
        super().__init__(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed,
                         drop_last=False)
        self.skip = 0

    def start_epoch(self, epoch: int, skip: int) -> None:
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self) -> int:
        return max(0, super().__len__() - self.skip)


def amp_dtype(amp: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `--amp` (None: full precision). "auto": bfloat16 where the device supports it
    (it needs no gradient scaler), else float16."""
    if amp is None:
        return None
    if amp == "auto":
        bf16 = device.type == "cpu" or torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float16
    if amp not in AMP_DTYPES:
        raise ConfigError(f"--amp must be bf16, fp16 or auto, got {amp!r}")
    return AMP_DTYPES[amp]


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return batch
