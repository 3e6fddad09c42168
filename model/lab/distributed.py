"""Data-parallel training on `torch.distributed`, launched by `torchrun` (or not at all).

`torchrun --nproc_per_node N avs train ...` starts N copies of the command with `RANK`, `WORLD_SIZE`,
`LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT` set; several machines add `--nnodes`, `--node_rank` and a
rendezvous (`--rdzv_backend c10d --rdzv_endpoint HOST:PORT`), which reach us through the same variables. A
plain `avs train` sees none of them and runs as a world of one, through the same code path.

Backends: NCCL between GPUs, gloo on the CPU (PyTorch's own choices, "Distributed communication package").
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from model.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: `rank` of `world_size` processes, `local_rank` on its machine, `device`."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """The one process that writes checkpoints, logs and TensorBoard events."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not an integer (set by torchrun)") from None


def resolve_device(device: str, local_rank: int, world_size: int) -> torch.device:
    """`cpu`, `cuda` (this process's GPU under torchrun: cuda:LOCAL_RANK) or `cuda:N`.

    Raises ConfigError when CUDA is asked for and absent, or a GPU index does not exist.
    """
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device must be cpu, cuda or cuda:N for training, got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available on this machine")
        index = dev.index if dev.index is not None else (local_rank if world_size > 1 else 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: GPU {index} does not exist ({torch.cuda.device_count()} visible)")
        dev = torch.device("cuda", index)
        torch.cuda.set_device(dev)
    elif dev.type != "cpu":
        raise ConfigError(f"--device must be cpu, cuda or cuda:N for training, got {device!r}")
    return dev


def init_distributed(device: str, *, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank, world_size)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=dev if dev.type == "cuda" else None)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def mean_over_ranks(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """The mean of each value over every process (what a log line should say), in one all-reduce."""
    if not ctx.distributed or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return {k: float(v) / ctx.world_size for k, v in zip(keys, tensor.tolist(), strict=True)}


def broadcast_object(value: Any, ctx: DistContext) -> Any:
    """Rank 0's `value` on every rank (a decision only the main process can make, e.g. "new best")."""
    if not ctx.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
