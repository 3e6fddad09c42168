"""Learning-rate schedules as a factor of the peak rate per optimizer step (for `LambdaLR`).

Linear warm-up (Goyal et al., "Accurate, Large Minibatch SGD", 2017) from `warmup_start` x peak, then:
`constant` (AVSegFormer's recipe: no schedule), `cosine` decay to `min_ratio` x peak (Loshchilov & Hutter,
SGDR, without restarts), or `poly` decay with power 0.9 (DeepLab; Mask2Former/COMBO) to `min_ratio`.
"""

from __future__ import annotations

import math

from model.errors import ConfigError

SCHEDULES = ("constant", "cosine", "poly")


def lr_factor(step: int, *, total_steps: int, warmup_steps: int = 0, schedule: str = "cosine",
              min_ratio: float = 0.05, warmup_start: float = 0.001) -> float:
    """Factor of the peak learning rate at optimizer step `step` (0-based) of `total_steps`.

    Raises ConfigError for an unknown schedule.
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_start + (1.0 - warmup_start) * step / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0), span) / span
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * (1.0 - progress) ** 0.9
