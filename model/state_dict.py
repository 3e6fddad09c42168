"""Strict state-dict loading with an error that says exactly what does not fit."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from model.errors import ModelError


def describe_mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> str | None:
    """A readable list of missing keys, unexpected keys and shape mismatches, or None when all fit."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = sorted(
        f"{k}: file {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(given) if tuple(given[k].shape) != tuple(expected[k].shape))
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            shown = ", ".join(items[:8]) + (f", ... ({len(items) - 8} more)" if len(items) > 8 else "")
            parts.append(f"{len(items)} {label}: {shown}")
    return "; ".join(parts) or None


def load_exact(module: nn.Module, state: Mapping[str, torch.Tensor], *, source: str,
               error: type[ModelError]) -> None:
    """Load `state` into `module`, requiring the same keys and shapes; raise `error` naming `source` if not."""
    problem = describe_mismatch(module.state_dict(), state)
    if problem:
        raise error(f"{source} does not fit the model: {problem}")
    module.load_state_dict(state, strict=True)
