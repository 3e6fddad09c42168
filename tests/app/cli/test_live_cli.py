"""`avs live`, run as a real subprocess: a file played as a stream, mask records on stdout or in a file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from worker.core.media.probe import count_frames
from worker.media.samples import make_video

AVS = [str(Path(sys.executable).with_name("avs"))]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AVS, *args], capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("live-cli") / "clip.mkv", duration_s=2.0, size=(96, 64), fps=25,
                      container="mkv")


def test_live_file_in_real_time_writes_one_record_per_processed_frame(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "masks.ndjson"
    result = _run("live", str(clip), "--out", str(out), "--window", "50", "--json")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1  # --out: only the summary on stdout
    summary = json.loads(result.stdout)
    assert summary["type"] == "summary"
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["frames_received"] == count_frames(clip)
    assert summary["frames_processed"] == len(records)
    assert summary["frames_processed"] + summary["frames_dropped"] == summary["frames_received"]
    assert summary["frames_dropped"] == 0  # a 50-frame window holds the whole 2 s clip at worst
    assert [r["frame_index"] for r in records] == list(range(len(records)))
    pts = [r["pts_s"] for r in records]
    assert pts == sorted(pts)
    assert pts[-1] - pts[0] == pytest.approx((len(records) - 1) / 25, abs=1e-3)
    assert all(r["size"] == [64, 96] and r["latency_ms"] >= 0 for r in records)


def test_live_not_in_real_time_drops_the_oldest_and_stays_in_order(clip: Path) -> None:
    result = _run("live", str(clip), "--no-realtime", "--window", "1", "--json")
    assert result.returncode == 0, result.stderr
    *masks, last = result.stdout.splitlines()
    summary = json.loads(last)  # --json: the summary is stdout's last line, after the mask records
    assert summary["type"] == "summary"
    records = [json.loads(line) for line in masks]
    indices = [r["frame_index"] for r in records]
    assert indices == sorted(set(indices))
    assert summary["frames_processed"] + summary["frames_dropped"] == summary["frames_received"] == count_frames(clip)
    assert summary["dropped"]["late"] == summary["frames_dropped"]


def test_frames_over_the_fps_cap_are_skipped_not_dropped(clip: Path) -> None:
    """`--fps 5` on a 25 fps clip keeps one frame in five: the other four are the client's own cap at work,
    counted apart from the frames dropped because the model was late (none here: the window holds the clip)."""
    result = _run("live", str(clip), "--no-realtime", "--fps", "5", "--window", "50", "--json")
    assert result.returncode == 0, result.stderr
    *masks, last = result.stdout.splitlines()
    summary = json.loads(last)  # --json: the summary is stdout's last line, after the mask records
    assert summary["type"] == "summary"
    records = [json.loads(line) for line in masks]
    assert summary["frames_received"] == count_frames(clip) == 50
    assert summary["frames_processed"] == len(records) == 10
    assert summary["frames_skipped_by_rate"] == 40
    assert summary["frames_dropped"] == 0
    assert summary["dropped"] == {"late": 0}
    assert [r["frame_index"] for r in records] == list(range(0, 50, 5))


def test_live_refusals_have_codes(tmp_path: Path) -> None:
    missing = _run("live", str(tmp_path / "nope.mp4"))
    assert missing.returncode == 2
    assert "[not_media]" in missing.stderr
    scheme = _run("live", "gopher://127.0.0.1/x")
    assert scheme.returncode == 2
    assert "[invalid_request]" in scheme.stderr
    junk = tmp_path / "junk.webm"
    junk.write_bytes(b"\x00garbage" * 4096)
    refused = _run("live", str(junk))
    assert refused.returncode == 2
    assert "[not_media]" in refused.stderr or "[corrupt_media]" in refused.stderr
