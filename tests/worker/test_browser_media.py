"""Issue #21: media as browsers and cameras really send it, through the upload path (`segment_video`: what
`avs segment` and a worker run for POST /segment) and the live path (a pushed `LiveSession`), with one rule for
both. The truth is ffprobe's (frame counts, frame sizes, display rotation), never the code under test.

Kinds: frame size changes mid-stream; rotation on live input; what a player plays (joined MPEG-TS segments, a
stream beginning on an interframe); timestamps that restart inside one stream; ordinary browser input (no
sound, an MP4 that is not fragmented).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from browser_media_clips import BrowserMedia

from model.predictor import load_predictor
from worker.core.errors import MediaError
from worker.core.live_sources import PUSHED
from worker.core.media.probe import count_frames, probe_media
from worker.engine import FrameEngine
from worker.live.session import LiveOptions, LiveSession
from worker.masks import read_mask_lines
from worker.media.audio import read_audio
from worker.pipeline import SegmentOptions, segment_video


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> BrowserMedia:
    return BrowserMedia(tmp_path_factory.mktemp("browser-media"))


@pytest.fixture(scope="module")
def predictor():
    model = load_predictor()
    model.warmup(1)
    return model


def ffprobe_frames(path: Path) -> list[dict]:
    """Every decoded video frame as ffprobe sees it: display size (rotation applied) and time."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "frame=width,height,best_effort_timestamp_time:frame_side_data=rotation:stream_side_data="
                          "rotation", "-show_streams", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True, timeout=120)
    data = json.loads(out.stdout)
    rotation = 0
    for side in data["streams"][0].get("side_data_list", []):
        if "rotation" in side:
            rotation = int(side["rotation"])
    frames = []
    for frame in data["frames"]:
        w, h = int(frame["width"]), int(frame["height"])
        frames.append({"size": [w, h] if rotation % 180 else [h, w],
                       "time": float(frame.get("best_effort_timestamp_time", "nan"))})
    return frames


def upload(path: Path, predictor, tmp_path: Path) -> tuple[list[dict], object]:
    result = segment_video(path, tmp_path / "out", predictor, SegmentOptions(batch_size=4))
    return list(read_mask_lines(Path(result.masks_path))), result


def pushed(path: Path, predictor, chunk: int = 4096) -> tuple[list[dict], LiveSession, dict]:
    """Push the file into a live session in chunks, as a browser does; (records, session, summary)."""
    records: list[dict] = []
    session = LiveSession(PUSHED, FrameEngine(predictor, max_batch_size=4, max_wait_ms=0), records.append,
                          options=LiveOptions(window=10_000), idle_timeout_s=5)  # a window that never drops
    session.start()
    data = path.read_bytes()

    def push() -> None:
        for at in range(0, len(data), chunk):
            session.feed(data[at:at + chunk])
        session.end()

    threading.Thread(target=push, daemon=True).start()
    summary = session.wait()
    return records, session, summary


def check_stream(records: list[dict], truth: list[dict]) -> None:
    """One mask per decoded frame, in order, each at that frame's own display size, timestamps rising."""
    assert len(records) == len(truth)
    assert [r["frame_index"] for r in records] == list(range(len(truth)))
    assert [r["size"] for r in records] == [f["size"] for f in truth]
    assert all(b["pts_s"] > a["pts_s"] for a, b in itertools.pairwise(records))


# ------------------------------------------------------------------ 1. frame size changes mid-stream
SIZE_CHANGES = ["size_change.webm", "size_change.ts", "size_change_vp9.mkv"]


@pytest.mark.parametrize("name", SIZE_CHANGES)
def test_a_size_change_gives_each_frame_its_own_size_on_upload(name: str, media, predictor, tmp_path: Path) -> None:
    path = media(name)
    truth = ffprobe_frames(path)
    assert len({tuple(f["size"]) for f in truth}) >= 2, "the file should change size"
    records, _ = upload(path, predictor, tmp_path)
    check_stream(records, truth)


@pytest.mark.parametrize("name", ["size_change.webm", "size_change_vp9.mkv"])
def test_a_size_change_gives_each_frame_its_own_size_live(name: str, media, predictor) -> None:
    path = media(name)
    records, session, summary = pushed(path, predictor)
    assert session.error is None, session.error
    check_stream(records, ffprobe_frames(path))
    assert summary["frames_received"] == len(records)


def test_the_overlay_follows_a_size_change(media, predictor, tmp_path: Path) -> None:
    """The overlay keeps the first frame's size; a frame of another shape is fitted inside it with its own
    aspect ratio, and its mask with it (black bars beside it)."""
    path = media("size_change.webm")
    result = segment_video(path, tmp_path / "out", predictor, SegmentOptions(batch_size=4, overlay=True))
    overlay = Path(result.overlay_path)
    frames = ffprobe_frames(overlay)
    assert len(frames) == len(ffprobe_frames(path))
    assert {tuple(f["size"]) for f in frames} == {(240, 320)}
    last = subprocess.run(["ffmpeg", "-v", "error", "-sseof", "-0.3", "-i", str(overlay), "-frames:v", "1",
                           "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"], capture_output=True, check=True,
                          timeout=60).stdout
    picture = np.frombuffer(last, dtype=np.uint8).reshape(240, 320, 3)
    # a 240x320 (portrait) frame fitted in 320x240: 180 px wide, 70 px of black on each side
    assert picture[:, :62].max() < 40
    assert picture[:, -62:].max() < 40
    assert picture[:, 80:240].mean() > 40


# ------------------------------------------------------------------------- 2. rotation on live input
@pytest.mark.parametrize("name", ["rotated_90.mp4", "rotated_270.mp4"])
def test_live_and_upload_agree_on_display_orientation(name: str, media, predictor, tmp_path: Path) -> None:
    path = media(name)
    info = probe_media(path)
    assert info.rotation in (90, 270)
    truth = ffprobe_frames(path)
    assert truth[0]["size"] == [160, 120]  # stored 160x120, shown upright
    uploaded, _ = upload(path, predictor, tmp_path)
    live, session, _ = pushed(path, predictor)
    assert session.error is None, session.error
    assert session.rotation == info.rotation
    check_stream(uploaded, truth)
    check_stream(live, truth)


# ---------------------------------------------------------------------------- 3. what a player plays
@pytest.mark.parametrize("name", ["joined.ts", "joined_mpeg2.ts"])
def test_mpegts_segments_joined_with_cat_decode_like_a_player(name: str, media, predictor, tmp_path: Path) -> None:
    path = media(name)
    records, _ = upload(path, predictor, tmp_path)
    assert len(records) == count_frames(path)
    # (live sessions pull MPEG-TS from a stream URL; tests/e2e/test_live.py sends the same over UDP)


def test_mpegts_pushed_over_the_socket_is_refused_with_a_clear_message(media, predictor) -> None:
    _, session, _ = pushed(media("joined.ts"), predictor)
    assert getattr(session.error, "code", None) == "not_media"
    assert "WebM" in str(session.error)
    assert "whitelist" not in str(session.error)


@pytest.mark.parametrize("name", ["lost_cluster.webm", "cut.ts"])
def test_a_stream_beginning_on_an_interframe_skips_to_its_first_keyframe(name: str, media, predictor,
                                                                         tmp_path: Path) -> None:
    path = media(name)
    decodable = count_frames(path)
    records, result = upload(path, predictor, tmp_path)
    assert len(records) == decodable
    assert result.frames_skipped > 0  # reported, not silent
    if path.suffix == ".webm":  # what a browser pushes: the same rule live
        live, session, _ = pushed(path, predictor)
        assert session.error is None, session.error
        assert len(live) == decodable


# ---------------------------------------------------------------- 4. timestamps that restart in a stream
def _dominant_hz(samples: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


@pytest.mark.parametrize(("name", "first_part_s"), [("twice.webm", 2.0), ("twice_rates.mkv", 1.5)])
def test_a_restart_inside_the_stream_continues_the_timeline_and_keeps_each_part_s_sound(
        name: str, first_part_s: float, media, predictor, tmp_path: Path) -> None:
    path = media(name)
    info = probe_media(path)
    assert info.timeline_restarts == 1
    assert info.duration_s == pytest.approx(2 * first_part_s, abs=0.15)
    records, _ = upload(path, predictor, tmp_path)
    assert len(records) == count_frames(path)
    times = [r["pts_s"] for r in records]
    assert all(b > a for a, b in itertools.pairwise(times))
    assert times[-1] == pytest.approx(2 * first_part_s, abs=0.15)
    wave = read_audio(info, sample_rate=16000)
    assert len(wave) / 16000 == pytest.approx(2 * first_part_s, abs=0.1)  # the second part's sound is kept
    cut = int(first_part_s * 16000)
    assert _dominant_hz(wave[cut - 8000:cut - 1000]) == pytest.approx(440, abs=20)
    assert _dominant_hz(wave[cut + 1000:cut + 8000]) == pytest.approx(1760, abs=20)
    live, session, _ = pushed(path, predictor)
    assert session.error is None, session.error
    assert len(live) == len(records)
    assert all(b["pts_s"] > a["pts_s"] for a, b in itertools.pairwise(live))


# ------------------------------------------------------------------------ 5. ordinary browser input
@pytest.mark.parametrize("name", ["video_only.webm", "video_only.mp4"])
def test_video_without_sound_is_no_audio_track_on_upload_and_live(name: str, media, predictor,
                                                                  tmp_path: Path) -> None:
    path = media(name)
    with pytest.raises(MediaError) as refused:
        upload(path, predictor, tmp_path)
    assert refused.value.code.value == "no_audio_track"
    _, session, _ = pushed(path, predictor)
    assert isinstance(session.error, MediaError)
    assert session.error.code.value == "no_audio_track"
    assert "pipe" not in session.error.message


@pytest.mark.parametrize("name", ["plain.mp4", "plain.mov"])
def test_an_mp4_that_is_not_fragmented_is_told_to_send_fragmented_mp4_live(name: str, media, predictor,
                                                                          tmp_path: Path) -> None:
    path = media(name)
    records, _ = upload(path, predictor, tmp_path)  # the same file is fine as an upload
    assert len(records) == count_frames(path)
    _, session, _ = pushed(path, predictor)
    assert getattr(session.error, "code", None) == "not_fragmented"
    assert "fragmented MP4" in str(session.error)


def test_a_fragmented_mp4_pushed_live_is_segmented(media, predictor) -> None:
    path = media("fragmented.mp4")
    records, session, _ = pushed(path, predictor)
    assert session.error is None, session.error
    assert len(records) == count_frames(path)
