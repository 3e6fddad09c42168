"""The offline pipeline on real media made by ffmpeg: one mask line per decoded frame, aligned audio,
outputs at the video's own size, overlay with sound, cancellation, resume."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model.predictor import AVSPredictor
from worker.core.media.probe import count_frames, probe_media
from worker.engine import Cancelled
from worker.masks import decode_rle, read_mask_lines
from worker.media.samples import make_video
from worker.pipeline import SegmentOptions, segment_video

AVS = str(Path(sys.executable).with_name("avs"))

CLIPS = {
    "mp4": {"container": "mp4"},
    "webm": {"container": "webm"},
    "mkv": {"container": "mkv"},
    "mov": {"container": "mov"},
    "avi": {"container": "avi"},
    "vfr": {"container": "mkv", "vfr": True},
    "rotated": {"container": "mp4", "rotation": 90},
    "odd_size": {"container": "mkv", "size": (161, 121)},
    "stereo_48k": {"container": "mp4", "channels": 2, "sample_rate": 48000},
    "surround_8k": {"container": "mkv", "channels": 6, "sample_rate": 8000},
}


@pytest.fixture(scope="module")
def predictor() -> AVSPredictor:
    return AVSPredictor.from_variant("avesformer-tiny")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipeline-clips")
    made = {}
    for name, kwargs in CLIPS.items():
        ext = {"mkv": "mkv", "webm": "webm", "mov": "mov", "avi": "avi"}.get(kwargs["container"], "mp4")
        made[name] = make_video(root / f"{name}.{ext}", duration_s=1.5, **{"size": (96, 72), **kwargs})
    return made


@pytest.mark.parametrize("name", list(CLIPS))
def test_one_mask_line_per_decoded_frame(name: str, clips, predictor, tmp_path: Path) -> None:
    video = clips[name]
    info = probe_media(video)
    result = segment_video(video, tmp_path, predictor, SegmentOptions(batch_size=4))
    lines = list(read_mask_lines(Path(result.masks_path)))
    assert len(lines) == result.frames == count_frames(video)
    assert [r["frame_index"] for r in lines] == list(range(len(lines)))
    pts = [r["pts_s"] for r in lines]
    assert all(b > a for a, b in itertools.pairwise(pts))
    for record in (lines[0], lines[-1]):
        assert record["size"] == [info.height, info.width]
        assert decode_rle(record["counts"], record["size"]).shape == (info.height, info.width)
    assert set(result.timings) >= {"probe", "decode", "audio_features", "inference", "encode"}


def test_rotated_video_gets_masks_at_display_size(clips, predictor, tmp_path: Path) -> None:
    info = probe_media(clips["rotated"])
    assert (info.width, info.height) == (72, 96)  # 96x72 coded, rotated by 90 degrees
    result = segment_video(clips["rotated"], tmp_path, predictor)
    assert next(read_mask_lines(Path(result.masks_path)))["size"] == [96, 72]


def test_frames_get_the_audio_window_that_covers_them(tmp_path: Path, predictor) -> None:
    """Sound starts at 1.0 s: frames in [0, 0.96) must get the embedding of silence, later frames not."""
    video = make_video(tmp_path / "late_sound.mp4", duration_s=3.0, size=(64, 48), fps=10, sound_start_s=1.0)
    silence = predictor.audio_embeddings(np.zeros(16000, dtype=np.float32))[0]
    seen: list[torch.Tensor] = []  # the audio embedding each frame was segmented with, in frame order
    original = predictor.predict_logits

    def spy(frames, emb):
        seen.extend(emb.clone())
        return original(frames, emb)

    predictor.predict_logits = spy  # type: ignore[method-assign]
    try:
        result = segment_video(video, tmp_path / "out", predictor, SegmentOptions(batch_size=4))
    finally:
        del predictor.predict_logits
    pts = [r["pts_s"] for r in read_mask_lines(Path(result.masks_path))]
    assert len(pts) == len(seen) == 30
    for t, emb in zip(pts, seen, strict=True):
        is_silent = torch.allclose(emb, silence, atol=1e-4)
        if t < 0.96:
            assert is_silent, f"frame at {t}s must hear the silent first window"
        elif t >= 1.92:
            assert not is_silent, f"frame at {t}s must hear the tone"
    # one embedding per window, shared: frames of the same window get identical vectors
    by_window: dict[int, torch.Tensor] = {}
    for t, emb in zip(pts, seen, strict=True):
        window = int(t // 0.96)
        if window in by_window:
            torch.testing.assert_close(by_window[window], emb)
        by_window[window] = emb


def test_resampled_fps_png_and_overlay(clips, predictor, tmp_path: Path) -> None:
    video = clips["mp4"]
    result = segment_video(video, tmp_path, predictor, SegmentOptions(batch_size=4, fps=10, png=True, overlay=True))
    # 38 frames at 25 frames/s span 1.52 s: one output frame per 0.1 s of it, the last period included
    assert probe_media(video).duration_s == pytest.approx(1.52)
    assert result.frames == 16
    pngs = sorted((tmp_path / "masks").glob("*.png"))
    assert len(pngs) == 16
    assert [p.name for p in pngs][:2] == ["000000.png", "000001.png"]
    overlay = Path(result.overlay_path)
    assert overlay.exists()
    assert count_frames(overlay) == 16
    info = probe_media(overlay)
    assert info.has_audio  # the original sound is muxed in
    assert (info.width, info.height) == (96, 72)


def test_cancel_between_batches_leaves_no_result(clips, predictor, tmp_path: Path) -> None:
    calls = []

    def cancel_after_first_batch() -> bool:
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(Cancelled):
        segment_video(clips["mp4"], tmp_path, predictor, SegmentOptions(batch_size=4),
                      should_cancel=cancel_after_first_batch)
    assert not list(tmp_path.glob("masks.ndjson*"))


def test_resume_writes_each_frame_exactly_once(clips, predictor, tmp_path: Path) -> None:
    video = clips["mp4"]
    total = count_frames(video)
    first = SegmentOptions(batch_size=4, atomic=False)
    segment_video(video, tmp_path, predictor, first)
    lines = (tmp_path / "masks.ndjson").read_text().splitlines()
    # simulate a worker killed after 9 frames: keep those lines, resume from frame 9
    (tmp_path / "masks.ndjson").write_text("\n".join(lines[:9]) + "\n")
    segment_video(video, tmp_path, predictor, SegmentOptions(batch_size=4, atomic=False, start_frame=9))
    indices = [r["frame_index"] for r in read_mask_lines(tmp_path / "masks.ndjson")]
    assert indices == list(range(total))


def test_cli_segment_json_summary(clips, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run([AVS, "segment", str(clips["webm"]), "--out", str(out), "--variant", "avesformer-tiny",
                             "--batch-size", "4", "--json"], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["frames"] == count_frames(clips["webm"])
    assert summary["video"]["width"] == 96
    assert {"probe", "decode", "audio_features", "inference", "encode"} <= set(summary["timings"])
    assert summary["frames_per_second"] > 0
    assert (out / "masks.ndjson").exists()


@pytest.mark.parametrize(("maker", "code"), [
    ("text", "not_media"), ("video_only", "no_audio_track"), ("audio_only", "no_video_stream"),
    ("truncated", "corrupt_media"), ("long", "too_long"), ("big", "too_many_pixels"),
])
def test_cli_refusals_exit_non_zero_with_the_code(maker: str, code: str, tmp_path: Path) -> None:
    path, extra = _bad_file(maker, tmp_path)
    out = tmp_path / "out"
    result = subprocess.run([AVS, "segment", str(path), "--out", str(out), "--variant", "avesformer-tiny",
                             "--json", *extra], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2
    assert f"[{code}]" in result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["error"]["code"] == code
    assert "Traceback" not in result.stderr
    assert not (out / "masks.ndjson").exists()


def _bad_file(kind: str, tmp_path: Path) -> tuple[Path, list[str]]:
    if kind == "text":
        path = tmp_path / "notes.mp4"
        path.write_text("this is not a video\n" * 100)
        return path, []
    if kind == "video_only":
        return make_video(tmp_path / "silent.mp4", duration_s=1.0, size=(64, 48), audio=False), []
    if kind == "audio_only":
        path = tmp_path / "audio.m4a"
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "sine=duration=1",
                        "-c:a", "aac", str(path)], check=True, timeout=60)
        return path, []
    if kind == "truncated":
        video = make_video(tmp_path / "whole.mp4", duration_s=2.0, size=(64, 48))
        data = video.read_bytes()
        path = tmp_path / "truncated.mp4"
        path.write_bytes(data[: len(data) // 2])
        return path, []
    if kind == "long":
        return make_video(tmp_path / "long.mp4", duration_s=3.0, size=(64, 48)), ["--max-duration", "2"]
    return make_video(tmp_path / "big.mp4", duration_s=1.0, size=(128, 96)), ["--max-pixels", "10000"]
