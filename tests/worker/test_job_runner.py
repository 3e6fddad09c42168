"""`worker.job_runner.run_job` on its own, without Celery: success, resume after a crash, cancellation before
and during a job, media failures, a broken model, and duplicate deliveries. The model is a fake with the
predictor's interface (the left half of every frame sounds), so these tests exercise the runner, not a
network; the upload is a real file decoded by ffmpeg."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from worker.core.contracts import JobStatus
from worker.core.job_record import JobOptions, JobRecord, Progress, UploadInfo, new_job_id
from worker.core.jobstore import JobStore
from worker.core.media.probe import count_frames, probe_media
from worker.core.settings import ServiceSettings
from worker.core.state import open_store
from worker.job_runner import complete_lines, run_job
from worker.masks import decode_rle, read_mask_lines
from worker.media.samples import make_video


class FakePredictor:
    """The predictor interface `segment_video` uses; the left half of every frame is the sounding object."""

    input_size = 16
    num_classes = 1
    class_names = ("sounding",)

    def __init__(self, *, fail_after_batches: int | None = None,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.batches = 0
        self.fail_after_batches = fail_after_batches
        self.on_batch = on_batch

    def audio_embeddings(self, waveform: np.ndarray) -> torch.Tensor:
        return torch.zeros(max(1, int(np.ceil(len(waveform) / 15360))), 128)

    def predict_logits(self, frames: np.ndarray, emb: torch.Tensor) -> torch.Tensor:
        self.batches += 1
        if self.on_batch is not None:
            self.on_batch(self.batches)
        if self.fail_after_batches is not None and self.batches > self.fail_after_batches:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        logits = torch.full((len(frames), 1, 16, 16), -5.0)
        logits[..., :8] = 5.0
        return logits

    def postprocess(self, logits: torch.Tensor, out_size: tuple[int, int], *, threshold: float | None = None):
        masks = torch.nn.functional.interpolate(logits, size=out_size, mode="nearest")[:, 0] > 0
        return masks.to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("runner") / "clip.mp4", duration_s=1.2, size=(64, 48), fps=25)


@pytest.fixture
def settings(tmp_path: Path, state_env: object) -> ServiceSettings:
    return ServiceSettings(_env_file=None, data_dir=tmp_path / "data", batch_size=4, worker_metrics_port=0)


@pytest.fixture
def store(settings: ServiceSettings) -> JobStore:
    return open_store(settings)


def _submit(store: JobStore, clip: Path, **options: object) -> str:
    """What the API leaves behind: the upload in the job's folder and a queued record with the probe."""
    job_id = new_job_id()
    job_dir = store.job_dir(job_id)
    job_dir.mkdir(parents=True)
    (job_dir / "upload.mp4").write_bytes(clip.read_bytes())
    info = probe_media(job_dir / "upload.mp4")
    store.create(JobRecord(job_id=job_id, options=JobOptions(**options), media=info,
                           upload=UploadInfo(filename="clip.mp4", bytes=clip.stat().st_size, path="upload.mp4"),
                           progress=Progress(frames_total=info.expected_frames(options.get("fps")))))  # type: ignore[arg-type]
    return job_id


def _run(store: JobStore, settings: ServiceSettings, job_id: str, predictor: FakePredictor | None = None) -> dict:
    predictor = predictor or FakePredictor()
    return run_job(job_id, store=store, settings=settings, predictor_factory=lambda: predictor)


def test_a_job_runs_to_success_on_the_stored_probe(store: JobStore, settings: ServiceSettings, clip: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = _submit(store, clip)
    import worker.pipeline

    def no_probe(*_: object, **__: object) -> None:
        raise AssertionError("the worker must use the probe result stored with the job")

    monkeypatch.setattr(worker.pipeline, "probe_media", no_probe)
    assert _run(store, settings, job_id) == {"job_id": job_id, "status": "succeeded", "frames": count_frames(clip)}
    record = store.get(job_id)
    assert record.status is JobStatus.SUCCEEDED
    assert record.progress.frames_done == record.progress.frames_total == count_frames(clip) == 30
    assert record.attempts == 1
    assert {"probe", "decode", "inference", "encode", "queue_wait", "total"} <= set(record.timings)
    lines = list(read_mask_lines(store.masks_path(job_id)))
    assert [r["frame_index"] for r in lines] == list(range(30))
    mask = decode_rle(lines[0]["counts"], lines[0]["size"])
    assert mask[:, :32].all()
    assert not mask[:, 32:].any()
    assert (store.job_dir(job_id) / "upload.mp4").exists()  # kept for the page and the video exports
    assert record.preview is None  # H.264 + AAC in MP4: a browser plays it as it is


def test_a_redelivered_job_resumes_after_the_last_complete_line(store: JobStore, settings: ServiceSettings,
                                                                clip: Path) -> None:
    job_id = _submit(store, clip)
    first = FakePredictor(fail_after_batches=2)  # dies in its third batch, after 8 frames were written
    assert _run(store, settings, job_id, first)["status"] == "failed"
    kept = store.masks_path(job_id).read_bytes()
    # what a SIGKILL mid-write looks like instead: the record still running, a torn last line
    store.set_fields(job_id, status=JobStatus.RUNNING, error=None, finished_at=None)
    (store.job_dir(job_id) / "upload.mp4").write_bytes(clip.read_bytes())
    store.masks_path(job_id).write_bytes(kept + b'{"frame_index": 8, "pts')
    assert complete_lines(store.masks_path(job_id)) == 8  # and the torn line is cut
    second = FakePredictor()
    assert _run(store, settings, job_id, second)["status"] == "succeeded"
    record = store.get(job_id)
    assert record.attempts == 2
    indexes = [r["frame_index"] for r in read_mask_lines(store.masks_path(job_id))]
    assert indexes == list(range(30))  # every frame exactly once
    assert store.masks_path(job_id).read_bytes().startswith(kept)  # the first 8 lines were not rewritten


def test_a_job_cancelled_before_it_starts_never_runs(store: JobStore, settings: ServiceSettings, clip: Path) -> None:
    job_id = _submit(store, clip)
    store.set_fields(job_id, cancel_requested=True)
    predictor = FakePredictor()
    assert _run(store, settings, job_id, predictor)["status"] == "cancelled"
    assert predictor.batches == 0
    record = store.get(job_id)
    assert record.status is JobStatus.CANCELLED
    assert record.started_at is None
    assert sorted(p.name for p in store.job_dir(job_id).iterdir()) == []  # media gone; the record is in Redis


def test_a_running_job_stops_within_a_batch_when_cancelled(store: JobStore, settings: ServiceSettings,
                                                           clip: Path) -> None:
    job_id = _submit(store, clip)

    def cancel_in_second_batch(batch: int) -> None:
        if batch == 2:
            store.set_fields(job_id, cancel_requested=True)  # what DELETE does while the job runs

    predictor = FakePredictor(on_batch=cancel_in_second_batch)
    assert _run(store, settings, job_id, predictor)["status"] == "cancelled"
    assert predictor.batches <= 2 + 2 + 1  # within the engine's prefetch window (2 batches), not the 8 of the video
    assert store.get(job_id).status is JobStatus.CANCELLED
    assert not store.masks_path(job_id).exists()


def test_a_media_failure_keeps_the_frames_written_and_says_why(store: JobStore, settings: ServiceSettings,
                                                               clip: Path, tmp_path: Path) -> None:
    job_id = _submit(store, clip)
    upload = store.job_dir(job_id) / "upload.mp4"
    faststart = tmp_path / "faststart.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(clip), "-c", "copy", "-movflags", "+faststart", str(faststart)],
                   check=True, timeout=60)
    data = faststart.read_bytes()
    upload.write_bytes(data[: len(data) * 2 // 3])  # the index whole, the media data cut: fails mid-decode
    result = _run(store, settings, job_id)
    assert result == {"job_id": job_id, "status": "failed", "error": "corrupt_media"}
    record = store.get(job_id)
    assert record.error is not None
    assert record.error.code == "corrupt_media"
    kept = list(read_mask_lines(store.masks_path(job_id)))
    assert record.progress.frames_done == len(kept) < 30
    assert not upload.exists()


def test_a_broken_model_fails_the_job_not_the_worker(store: JobStore, settings: ServiceSettings, clip: Path) -> None:
    job_id = _submit(store, clip)
    result = _run(store, settings, job_id, FakePredictor(fail_after_batches=0))
    assert result["status"] == "failed"
    record = store.get(job_id)
    assert record.error is not None
    assert (record.error.code, record.error.message) == ("internal_error",
                                                         "internal error while segmenting (RuntimeError)")


def test_duplicate_and_orphan_deliveries_are_no_ops(store: JobStore, settings: ServiceSettings, clip: Path) -> None:
    job_id = _submit(store, clip)
    assert _run(store, settings, job_id)["status"] == "succeeded"
    before = store.get(job_id).model_dump_json()
    predictor = FakePredictor()
    assert _run(store, settings, job_id, predictor) == {"job_id": job_id, "status": "succeeded"}
    assert predictor.batches == 0
    assert json.loads(store.get(job_id).model_dump_json()) == json.loads(before)
    missing = new_job_id()  # a message whose record is gone (expired, or never written)
    assert _run(store, settings, missing) == {"job_id": missing, "status": "missing"}


def _frame_times(path: Path) -> list[float]:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "frame=best_effort_timestamp_time", "-of", "json", str(path)],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    return [float(f["best_effort_timestamp_time"]) for f in json.loads(out)["frames"]]


def _streams(path: Path) -> dict[str, dict]:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                          "stream=codec_type,codec_name,pix_fmt,width,height", "-of", "json", str(path)],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    return {s["codec_type"]: s for s in json.loads(out)["streams"]}


@pytest.mark.parametrize(("name", "args", "fps"), [
    # MPEG-4 Part 2 + MP3 in AVI: no browser decodes it
    ("clip.avi", ["-c:v", "mpeg4", "-q:v", "5", "-c:a", "libmp3lame", "-b:a", "64k"], 10),
    # H.264 + MP2 in MPEG-TS, which starts 1.4 s into its clock: a browser plays no TS
    ("clip.ts", ["-c:v", "libx264", "-preset", "veryfast", "-c:a", "mp2", "-f", "mpegts"], 25),
])
def test_an_upload_a_browser_cannot_play_gets_a_frame_exact_preview(
        store: JobStore, settings: ServiceSettings, tmp_path: Path, name: str, args: list[str], fps: int) -> None:
    source = tmp_path / name
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc=size=66x50:rate={fps}:duration=1.5",
                    "-f", "lavfi", "-i", "sine=frequency=440:duration=1.5", *args, str(source)],
                   check=True, timeout=120)
    job_id = _submit(store, source)
    assert _run(store, settings, job_id)["status"] == "succeeded"
    record = store.get(job_id)
    assert record.preview == "preview.mp4"
    preview = store.job_dir(job_id) / "preview.mp4"
    streams = _streams(preview)
    assert (streams["video"]["codec_name"], streams["video"]["pix_fmt"], streams["audio"]["codec_name"]) == (
        "h264", "yuv420p", "aac")
    assert (streams["video"]["width"], streams["video"]["height"]) == (66, 50)  # the display size (even already)
    lines = list(read_mask_lines(store.masks_path(job_id)))
    times = _frame_times(preview)
    assert len(times) == len(lines) == count_frames(source)
    half_frame = 0.5 / fps
    assert max(abs(t - line["pts_s"]) for t, line in zip(times, lines, strict=True)) < half_frame


def test_confidence_maps_ride_along_only_when_asked(store: JobStore, settings: ServiceSettings, clip: Path) -> None:
    import base64

    plain = _submit(store, clip)
    assert _run(store, settings, plain)["status"] == "succeeded"
    assert all("confidence" not in line for line in read_mask_lines(store.masks_path(plain)))  # off by default

    job_id = _submit(store, clip, confidence=True)
    assert _run(store, settings, job_id)["status"] == "succeeded"
    lines = list(read_mask_lines(store.masks_path(job_id)))
    assert len(lines) == 30
    for line in lines:
        entry = line["confidence"]
        assert (entry["size"], entry["counts"]) == ([48, 64], None)  # 64 px on the long side: the clip's own size
        values = np.frombuffer(base64.b64decode(entry["data"]), np.uint8).reshape(48, 64)
        # the fake model: logit +5 on the left half (sigmoid 0.993), -5 on the right (0.007)
        assert values[:, :28].min() >= 250
        assert values[:, 36:].max() <= 5
        assert line["counts"] == lines[0]["counts"]  # the masks themselves are unchanged


def test_confidence_map_size_keeps_the_shape() -> None:
    from worker.confidence import map_size

    assert map_size((1080, 1920)) == (36, 64)
    assert map_size((1920, 1080)) == (64, 36)
    assert map_size((48, 64)) == (48, 64)
    assert map_size((2, 4000)) == (1, 64)
