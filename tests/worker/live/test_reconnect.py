"""Issue #21: a pulled stream that drops and comes back, at a new size, keeps its session: a real ffmpeg sender
on 127.0.0.1 (MPEG-TS over UDP, real time), stopped and started again; a real `LiveSession` pulling it."""

from __future__ import annotations

import errno
import itertools
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from model.predictor import load_predictor
from worker.core.live_sources import cli_source
from worker.engine import FrameEngine
from worker.live.reconnect import Gaps, backoff_delays
from worker.live.session import LiveOptions, LiveSession
from worker.media.samples import make_video


@pytest.fixture(scope="module")
def predictor():
    model = load_predictor()
    model.warmup(1)
    return model


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _wait(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _send(clip: Path, port: int) -> None:
    subprocess.run(["ffmpeg", "-loglevel", "error", "-re", "-i", str(clip), "-map", "0", "-c", "copy", "-f", "mpegts",
                    f"udp://127.0.0.1:{port}?pkt_size=1316"], check=True, timeout=60)


def test_backoff_doubles_to_eight_seconds() -> None:
    assert list(itertools.islice(backoff_delays(), 6)) == [0.5, 1, 2, 4, 8, 8]
    gaps = Gaps()
    gaps.add(41, 4.2)
    assert gaps.summary() == {"reconnects": 1, "gap_s": 4.2, "gaps": [{"after_frame": 41, "seconds": 4.2}],
                              "source_lost": False}


def test_a_udp_source_that_restarts_at_a_new_size_keeps_its_session(predictor, tmp_path: Path) -> None:
    first = make_video(tmp_path / "a.ts", duration_s=2.0, size=(160, 120), fps=25, container="ts")
    second = make_video(tmp_path / "b.ts", duration_s=2.0, size=(96, 128), fps=25, container="ts")
    port = _free_udp_port()
    records: list[dict] = []
    session = LiveSession(cli_source(f"udp://127.0.0.1:{port}"), FrameEngine(predictor, max_batch_size=4,
                                                                              max_wait_ms=0),
                          records.append, options=LiveOptions(window=10_000), idle_timeout_s=1.5, reconnect_s=6.0)
    session.start()
    done: dict = {}
    waiter = threading.Thread(target=lambda: done.update(summary=session.wait()), daemon=True)
    waiter.start()
    _wait(lambda: _listening(port), 20)
    _send(first, port)
    # the first connection ends at its read timeout and lets the port go; only then is the source back (a
    # fixed sleep could send the second clip to the dying listener on a loaded machine)
    _wait(lambda: not _listening(port), 30)
    _wait(lambda: _listening(port), 20)
    _send(second, port)
    waiter.join(timeout=60)
    assert not waiter.is_alive()
    summary = done["summary"]
    assert session.error is None, session.error
    assert session.ended_by == "source_lost"  # the sender never came back a second time
    assert summary["reconnects"] == 1
    assert summary["source_lost"] is True
    (gap,) = summary["gaps"]
    assert 0.5 < gap["seconds"] < 12.0
    sizes = [tuple(r["size"]) for r in records]
    assert sizes[0] == (120, 160)
    assert sizes[-1] == (128, 96)  # the masks follow the new size
    assert summary["frames_received"] == len(records) >= 80  # nearly all of 2 x 50 frames
    assert [r["frame_index"] for r in records] == list(range(len(records)))
    times = [r["pts_s"] for r in records]
    assert all(b > a for a, b in itertools.pairwise(times))
    jump = times[gap["after_frame"] + 1] - times[gap["after_frame"]]
    assert jump == pytest.approx(gap["seconds"], abs=1e-3)  # the gap is on the timeline
