"""End to end with real processes: HTTP in, streamed masks out, on Redis and on the embedded broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from worker.core.media.probe import count_frames
from worker.mask_scoring import score_masks
from worker.masks import read_mask_lines
from worker.media.samples import make_video

from .conftest import Service

AVS = str(Path(sys.executable).with_name("avs"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A synthetic S4 clip with its ground truth (`.gt.ndjson`)."""
    root = tmp_path_factory.mktemp("clip")
    subprocess.run([AVS, "synth", "--out", str(root), "--subset", "s4", "--videos", "1", "--seed", "77",
                    "--split", "test", "--size", "96"], check=True, capture_output=True, timeout=300)
    return next((root / "mp4").glob("*.mp4"))


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("long") / "long.mp4", duration_s=24.0, size=(96, 72), fps=25)


def _submit(service: Service, video: Path, **fields: str) -> dict:
    with service.client() as http, video.open("rb") as f:
        response = http.post("/segment", files={"file": (video.name, f, "video/mp4")}, data=fields)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/jobs/{response.json()['job_id']}"
    return response.json()


def _wait(service: Service, job_id: str, predicate, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    with service.client() as http:
        while time.monotonic() < deadline:
            record = http.get(f"/jobs/{job_id}").json()
            if predicate(record):
                return record
            time.sleep(0.2)
    raise AssertionError(f"timed out waiting on job {job_id}: {record}")


def _stream_masks(service: Service, job_id: str, **params: int) -> list[dict]:
    """The frame lines of a complete stream; the stream must end with a succeeded end line covering them."""
    with service.client() as http, http.stream("GET", f"/jobs/{job_id}/masks", params=params, timeout=300) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    *frames, end = lines
    assert end == {"end": True, "status": "succeeded", "frames": end["frames"], "error": None, "deleted": False}
    assert len(frames) == end["frames"] - params.get("from_frame", 0)
    return frames


def _same_masks_as_offline(service: Service, clip: Path, streamed: list[dict], tmp_path: Path) -> None:
    """The HTTP result must equal `avs segment` on the same clip with the same model: same mIoU, same RLEs."""
    http_masks = tmp_path / "http.ndjson"
    http_masks.write_text("".join(json.dumps(r) + "\n" for r in streamed))
    offline = tmp_path / "offline"
    subprocess.run([AVS, "segment", str(clip), "--out", str(offline), "--batch-size", "4"], check=True,
                   capture_output=True, env=service.env, timeout=300)
    gt = clip.with_suffix(".gt.ndjson")
    http_score, offline_score = score_masks(http_masks, gt), score_masks(offline / "masks.ndjson", gt)
    assert http_score["frames"] == offline_score["frames"] == count_frames(clip)
    assert http_score["miou"] == pytest.approx(offline_score["miou"], abs=1e-3)
    offline_lines = list(read_mask_lines(offline / "masks.ndjson"))
    same = sum(a["counts"] == b["counts"] for a, b in zip(streamed, offline_lines, strict=True))
    assert same >= 0.95 * len(streamed)  # thread scheduling may flip a boundary pixel, nothing more


def test_embedded_upload_stream_and_score(embedded_service: Service, clip: Path, tmp_path: Path) -> None:
    job = _submit(embedded_service, clip)
    streamed = _stream_masks(embedded_service, job["job_id"])  # follows the job until it ends
    assert [r["frame_index"] for r in streamed] == list(range(count_frames(clip)))
    record = _wait(embedded_service, job["job_id"], lambda r: r["status"] == "succeeded")
    assert record["progress"]["frames_done"] == len(streamed)
    assert {"probe", "decode", "audio_features", "inference", "encode"} <= set(record["timings"])
    resumed = _stream_masks(embedded_service, job["job_id"], from_frame=40)
    assert [r["frame_index"] for r in resumed] == list(range(40, len(streamed)))
    _same_masks_as_offline(embedded_service, clip, streamed, tmp_path)

    with embedded_service.client() as http:
        metrics = http.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    # worker metrics reach the API's /metrics through the shared multiprocess directory
    frames = sum(s.value for s in families["avs_frames_processed"].samples if s.name.endswith("_total"))
    assert frames >= len(streamed)
    assert "avs_job_duration_seconds" in families
    assert "avs_stage_duration_seconds" in families


def test_redis_worker_metrics_overlay_and_cancel(redis_service: Service, clip: Path, long_clip: Path) -> None:
    job = _submit(redis_service, clip, overlay="true")
    record = _wait(redis_service, job["job_id"], lambda r: r["status"] in ("succeeded", "failed"))
    assert record["status"] == "succeeded", record
    with redis_service.client() as http:
        overlay = http.get(f"/jobs/{job['job_id']}/overlay.mp4")
        assert overlay.status_code == 200
        assert overlay.content[4:8] == b"ftyp"  # an mp4

    running = _submit(redis_service, long_clip)
    queued = _submit(redis_service, long_clip)
    _wait(redis_service, running["job_id"], lambda r: r["progress"]["frames_done"] > 0)
    with redis_service.client() as http:
        deleted = http.delete(f"/jobs/{queued['job_id']}")
        assert (deleted.status_code, deleted.json()["status"]) == (200, "cancelled")
        gone = http.get(f"/jobs/{queued['job_id']}")  # deleted: every route of the job says so (#23)
        assert (gone.status_code, gone.json()["error"]["code"]) == (410, "job_deleted")
        t0 = time.monotonic()
        assert http.delete(f"/jobs/{running['job_id']}").status_code in (200, 202)
    deadline = time.monotonic() + 30
    while (cancelled := redis_service.record(running["job_id"]))["status"] != "cancelled":
        assert time.monotonic() < deadline, cancelled
        time.sleep(0.2)
    assert time.monotonic() - t0 < 10  # stops within a batch, not at the end of the video
    assert cancelled["progress"]["frames_done"] < count_frames(long_clip)
    job_dir = redis_service.data_dir / "jobs" / running["job_id"]
    assert not (job_dir / "masks.ndjson").exists()
    # the queued job never ran, even though its message was delivered after the cancel
    time.sleep(2)
    never = redis_service.record(queued["job_id"])
    assert never["status"] == "cancelled"
    assert never["started_at"] is None

    port = redis_service.env["AVS_WORKER_METRICS_PORT"]
    worker_metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    families = {f.name: f for f in text_string_to_metric_families(worker_metrics)}
    finished = {s.labels.get("status"): s.value for s in families["avs_jobs_finished"].samples
                if s.name == "avs_jobs_finished_total"}
    assert finished.get("succeeded", 0) >= 1
    assert finished.get("cancelled", 0) >= 1


def test_sigkill_mid_job_is_redelivered_without_duplicates(redis_service: Service, long_clip: Path) -> None:
    job = _submit(redis_service, long_clip)
    _wait(redis_service, job["job_id"], lambda r: r["progress"]["frames_done"] >= 16)
    worker = next(p for p in redis_service.procs if p.name == "worker")
    os.killpg(worker.popen.pid, signal.SIGKILL)  # no warm shutdown, no ack: the message stays unacknowledged
    worker.popen.wait(timeout=10)
    frames_at_kill = redis_service.record(job["job_id"])
    assert frames_at_kill["status"] == "running"
    redis_service.start("worker", "worker")  # a fresh worker restores the message after the visibility timeout
    record = _wait(redis_service, job["job_id"], lambda r: r["status"] in ("succeeded", "failed"), timeout=240)
    assert record["status"] == "succeeded", record
    assert record["attempts"] == 2
    lines = list(read_mask_lines(redis_service.data_dir / "jobs" / job["job_id"] / "masks.ndjson"))
    assert [r["frame_index"] for r in lines] == list(range(count_frames(long_clip)))


def test_a_job_that_fails_midway_says_so_at_the_end_of_its_stream(embedded_service: Service, long_clip: Path,
                                                                   tmp_path: Path) -> None:
    """Issue #10, kind 8: a follower can tell from the stream alone that it did not get every frame, and the
    frames written before the failure stay readable, with the same end line."""
    damaged = tmp_path / "damaged.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(long_clip), "-c", "copy", "-movflags", "+faststart",
                    str(damaged)], check=True, timeout=60)
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) * 2 // 3])  # an interrupted upload: the index (first) is whole, the data
    # ends two thirds in, so the probe accepts it and decoding breaks there
    job = _submit(embedded_service, damaged)
    with embedded_service.client() as http, \
            http.stream("GET", f"/jobs/{job['job_id']}/masks", timeout=300) as response:
        assert response.status_code == 200
        *frames, end = [json.loads(line) for line in response.iter_lines() if line]
    assert end["end"] is True
    assert end["status"] == "failed"
    assert end["error"]["code"] == "corrupt_media"
    assert 0 < end["frames"] == len(frames) < count_frames(long_clip)
    assert [r["frame_index"] for r in frames] == list(range(len(frames)))
    with embedded_service.client() as http:
        again = [json.loads(line) for line in http.get(f"/jobs/{job['job_id']}/masks").text.splitlines()]
        record = http.get(f"/jobs/{job['job_id']}").json()
    assert again == [*frames, end]  # what was kept, and the same final word
    assert record["status"] == "failed"
    assert record["progress"]["frames_done"] == len(frames)
