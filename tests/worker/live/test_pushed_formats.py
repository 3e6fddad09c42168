"""What a browser's MediaRecorder sends, pushed into a real `LiveSession` (real ffmpeg, the shipped tiny
model): WebM (VP8 + Opus, VP9 + Opus) and fragmented MP4 (H.264 + AAC), in small chunks as they are recorded.
Every frame comes out once, in order, with the timestamps ffprobe reads from the pushed bytes."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from model.predictor import load_predictor
from worker.core.live_sources import PUSHED
from worker.engine import FrameEngine
from worker.live.session import LiveOptions, LiveSession
from worker.media.samples import make_video

RECORDERS = {
    "webm-vp8-opus": ["-c:v", "libvpx", "-deadline", "realtime", "-c:a", "libopus", "-f", "webm",
                      "-cluster_time_limit", "100"],
    "webm-vp9-opus": ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-c:a", "libopus",
                      "-f", "webm", "-cluster_time_limit", "100"],
    "fmp4-h264-aac": ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac",
                      "-movflags", "frag_keyframe+empty_moov+default_base_moof", "-frag_duration", "100000",
                      "-f", "mp4"],
}


@pytest.fixture(scope="module")
def predictor():
    model = load_predictor()
    model.warmup(1)
    return model


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("rec") / "cam.mkv", duration_s=1.6, size=(160, 120), fps=25,
                      container="mkv")


@pytest.mark.parametrize("recorder", sorted(RECORDERS))
def test_a_recorder_stream_pushed_in_chunks(recorder: str, predictor, source: Path, tmp_path: Path) -> None:
    recorded = tmp_path / "recorded.bin"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(source), *RECORDERS[recorder], str(recorded)],
                   check=True, timeout=120)
    pts = sorted(float(x.strip(",")) for x in subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time", "-of", "csv=p=0",
         str(recorded)], capture_output=True, text=True, check=True, timeout=60).stdout.split() if x.strip(","))
    records: list[dict] = []
    session = LiveSession(PUSHED, FrameEngine(predictor, max_batch_size=4, max_wait_ms=0), records.append,
                          options=LiveOptions(window=len(pts) + 1))  # a window that holds every frame: no drop
    session.start()
    data = recorded.read_bytes()

    def push() -> None:
        for at in range(0, len(data), 4096):
            session.feed(data[at:at + 4096])
        session.end()

    threading.Thread(target=push, daemon=True).start()
    summary = session.wait()
    assert session.error is None
    assert session.ended_by == "client"
    assert summary["frames_received"] == summary["frames_processed"] == len(pts) == len(records)
    assert [r["frame_index"] for r in records] == list(range(len(pts)))
    assert [r["pts_s"] for r in records] == pytest.approx(pts, abs=1e-3)
    assert all(r["size"] == [120, 160] for r in records)
