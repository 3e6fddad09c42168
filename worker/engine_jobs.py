"""The jobs of the frame engine (`worker.engine`): what a caller submits (`JobSpec`), what it cost
(`JobStats`), the engine's state of each job in flight (`JobState`), and the offline audio rule that picks a
frame's row of a job's table of audio windows (`table_rows`, `audio_windows_for`).

Torch is used only for the table's rows; the rest is plain data.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from model.modeling.audio_frontend import example_index_for_time
from worker.media.decode import FrameBatch

END = object()  # the end of a job's encode queue


@dataclass(frozen=True)
class Failure:
    """An error of the decode or inference side, delivered through the encode queue in frame order: every
    frame inferred before it is still written."""

    error: BaseException


class Cancelled(Exception):
    """Raised between batches when `should_cancel()` says so; the partial output is removed."""


@dataclass
class JobSpec:
    """One video for the engine.

    `batches`: its decoded frames (a `FrameReader.iter_batches` generator; consumed on a thread of its own,
    closed when the job ends). `table`: audio embeddings [M + 1, D] on the model's device, row M = silence;
    None at submission lets decoding start while the sound is still being read (`JobHandle.set_table`): the
    job's frames wait for it.
    `encode(start_index, pts_s, logits)`: called on the job's encode thread, in frame order, with the logits
    [n, K, S, S] of consecutive frames (frames start_index .. start_index + n - 1: a live job's frames
    skipped or dropped end a run, and the next run is another call). `should_cancel()`: asked before each
    `encode`; True ends the job with `Cancelled` (it may also raise, e.g. a lost lease). `start_frame`: frames
    before it are skipped.
    `live_window` (a live job, whose batches are single frames): at most this many of its frames wait for the
    model; with `live_drop` one more drops the oldest (`on_drop(index)`), without it the job's decoding waits
    for room (back-pressure: nothing is dropped, the source is read more slowly). `embed(pts_s)`: a live
    job's audio embeddings, computed on the model's thread (instead of a `table`).
    """

    key: str
    batches: Iterator[FrameBatch]
    table: torch.Tensor | None
    encode: Callable[[int, list[float], torch.Tensor], None]
    should_cancel: Callable[[], bool] | None = None
    start_frame: int = 0
    live_window: int | None = None
    embed: Callable[[list[float]], torch.Tensor] | None = None
    on_drop: Callable[[int], None] | None = None
    live_drop: bool = True

    @property
    def audio_ready(self) -> bool:
        return self.table is not None or self.embed is not None


@dataclass
class JobStats:
    """What a finished job cost. `frames`: every decoded frame (skipped ones included); `inferred`: frames run
    through the model; `max_pending`: the most of its frames that waited for the model at once; seconds per
    stage (`inference` is this job's share of the batches it was in)."""

    frames: int = 0
    inferred: int = 0
    max_pending: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: {"decode": 0.0, "inference": 0.0, "encode": 0.0})


class JobState:
    """The engine's side of a submitted job: its frames waiting for the model, its encode queue, how it ended."""

    def __init__(self, spec: JobSpec, prefetch_frames: int) -> None:
        self.spec = spec
        self.prefetch_frames = prefetch_frames
        self.pending: collections.deque[tuple[int, float, np.ndarray]] = collections.deque()
        self.decoded_all = False
        self.decode_error: BaseException | None = None
        self.ended = False  # the end marker (or a failure) went to the encode queue
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.encode_queue: queue.Queue[Any] = queue.Queue()
        self.stats = JobStats()
        self.done = threading.Event()


def table_rows(table: torch.Tensor, pts_s: list[float]) -> torch.Tensor:
    """The offline rule: each frame's row of the job's table of 0.96 s windows (the last row is silence)."""
    windows = audio_windows_for(pts_s, table.shape[0] - 1)
    return table[torch.as_tensor(windows, device=table.device)]


def audio_windows_for(pts_s: list[float], num_windows: int) -> np.ndarray:
    """Index of the audio window of each frame; `num_windows` (one past the last) means silence."""
    idx = np.array([example_index_for_time(max(t, 0.0)) for t in pts_s], dtype=np.int64)
    return np.minimum(idx, num_windows)
