"""What a live session may be asked for (`LiveOptions`) and what it reports (`LiveStats`).

Every frame ffmpeg delivers is counted once, in exactly one of three ways, so that

    frames_received = frames_processed + frames_skipped_by_rate + frames_dropped

holds at the end of every session (while it runs, the frames waiting for the model are the difference):

* `frames_processed`: the frame got a mask.
* `frames_skipped_by_rate`: the client asked for at most `fps` frames a second and this one came sooner
  after the last one kept: skipped by the client's own cap, before it reached the model.
* `frames_dropped`: dropped because it was late: in the default mode (`drop_oldest`) a frame waiting for
  the model is dropped when `window` newer ones wait behind it. Never in `no_drop` mode.

Torch-free (plain dataclasses), so the CLI and the tests can read them without a model.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, Literal

LiveMode = Literal["drop_oldest", "no_drop"]
DROP_OLDEST: LiveMode = "drop_oldest"
NO_DROP: LiveMode = "no_drop"


@dataclass
class LiveOptions:
    """What the start message may set. `threshold`: binary masks' sigmoid threshold; `fps`: process at most
    this many frames per second (the others are skipped, `frames_skipped_by_rate`); `window`: frames that may
    wait for the model; `mode`: what happens when one more comes: `drop_oldest` drops the oldest waiting frame
    (the latency stays bounded), `no_drop` stops reading the input until there is room (every frame gets a
    mask; the sender is slowed down instead)."""

    threshold: float | None = None
    fps: float | None = None
    window: int = 8
    mode: LiveMode = DROP_OLDEST

    @property
    def drops(self) -> bool:
        """True when late frames are dropped (`drop_oldest`), False when the input is held back (`no_drop`)."""
        return self.mode != NO_DROP


@dataclass
class LiveStats:
    """The counts of one session (see the module docstring) and the latencies of its masks, in ms."""

    frames_received: int = 0
    frames_processed: int = 0
    frames_skipped_by_rate: int = 0
    frames_dropped: int = 0
    latencies_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=100_000))

    def summary(self) -> dict[str, Any]:
        """The end message's counts and latency percentiles (ms; None without a mask). `dropped` is the drops
        by reason (`late` only since frames over the fps cap are counted apart, in `frames_skipped_by_rate`),
        kept for clients that read it: its values always add up to `frames_dropped`."""
        lat = sorted(self.latencies_ms)
        pick = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 1)) if lat else (lambda q: None)
        return {"frames_received": self.frames_received, "frames_processed": self.frames_processed,
                "frames_skipped_by_rate": self.frames_skipped_by_rate, "frames_dropped": self.frames_dropped,
                "dropped": {"late": self.frames_dropped},
                "latency_p50_ms": pick(0.5), "latency_p95_ms": pick(0.95), "latency_max_ms": pick(1.0)}
