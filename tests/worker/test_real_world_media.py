"""Issue #10, every kind of everyday file: variable frame rates, files without a recorded duration, start
offsets, the overlay's timing and shape, everyday containers, resampling options, the audio track rule.

Each kind is tested on the issue's reproducer (the exact ffmpeg command) and on a second input of the same
kind built here (`real_world_clips`); the right values come from ffprobe itself (`-count_frames`, the
frames' own times, the streams' own fields), never from the code under test. The mask stream's end line
(kind 8) is tested with the API (`tests/app/test_api_jobs.py`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from real_world_clips import RealWorldClips, ffprobe_frame_times, ffprobe_json, ffprobe_stream, max_time_error

from model.predictor import AVSPredictor
from worker.core.contracts import ErrorCode
from worker.core.errors import MediaError
from worker.core.media.containers import ALLOWED_DEMUXERS, VIDEO_DEMUXERS
from worker.core.media.media_info import MediaInfo, MediaLimits
from worker.core.media.probe import count_frames, probe_media
from worker.masks import read_mask_lines
from worker.media.audio import read_audio
from worker.media.decode import FrameReader
from worker.pipeline import SegmentOptions, segment_video

SR = 16000
AVS = str(Path(sys.executable).with_name("avs"))


@pytest.fixture(scope="session")
def rw(tmp_path_factory: pytest.TempPathFactory) -> RealWorldClips:
    return RealWorldClips(tmp_path_factory.mktemp("real-world"))


@pytest.fixture(scope="module")
def predictor() -> AVSPredictor:
    return AVSPredictor.from_variant("avesformer-tiny")


def _decode(info: MediaInfo, **kwargs: object) -> list[float]:
    pts: list[float] = []
    for batch in FrameReader(info, size=(16, 16), **kwargs).iter_batches(16):  # type: ignore[arg-type]
        pts.extend(batch.pts_s)
    return pts


def _refused(path: Path, code: ErrorCode, **kwargs: object) -> MediaError:
    with pytest.raises(MediaError) as caught:
        probe_media(path, **kwargs)  # type: ignore[arg-type]
    assert caught.value.code is code, caught.value.message
    return caught.value


def _dominant_hz(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio[: SR]))
    return float(np.argmax(spectrum) * SR / min(len(audio), SR))


def _onset_s(samples: np.ndarray, rate: int) -> float:
    return float(np.flatnonzero(np.abs(samples) > 0.05)[0] / rate)


# ---------------------------------------------------------------------------- 1. variable frame rate
@pytest.mark.parametrize("name", ["vfr.webm", "burst.mp4", "burst.mkv", "rate_rises.mp4"])
def test_vfr_every_decoded_frame_comes_out_with_its_own_time(rw: RealWorldClips, name: str) -> None:
    path = rw(name)
    info = probe_media(path)
    pts = _decode(info)
    truth = ffprobe_frame_times(path)
    assert len(pts) == count_frames(path) == len(truth) == info.num_frames
    assert max_time_error(pts, truth) < 1e-3
    assert all(b > a for a, b in itertools.pairwise(pts))


def test_vfr_reproducer_one_mask_line_per_frame(rw: RealWorldClips, predictor: AVSPredictor, tmp_path: Path) -> None:
    path = rw("vfr.webm")
    assert ffprobe_stream(path)["avg_frame_rate"] == "5/1"  # the guess that used to decide what was kept
    result = segment_video(path, tmp_path, predictor, SegmentOptions(batch_size=8, png=True))
    lines = list(read_mask_lines(Path(result.masks_path)))
    assert result.frames == len(lines) == 160 == count_frames(path)
    assert len(list((tmp_path / "masks").glob("*.png"))) == 160  # one PNG per decoded frame too
    assert [r["frame_index"] for r in lines] == list(range(160))
    assert max_time_error([r["pts_s"] for r in lines], ffprobe_frame_times(path)) < 1e-3
    # the true average rate, not the header's guess: 40 frames in 8 s, then 120 in 4 s
    assert result.video["fps"] == pytest.approx(160 / 12.0, rel=0.01)


# ----------------------------------------------------------------------- 2. a limit never truncates
@pytest.mark.parametrize(("name", "seconds", "frames"), [("nodur.webm", 4.0, 100), ("nodur.mkv", 3.0, 90)])
def test_a_file_without_recorded_duration_is_measured_and_refused_when_too_long(
        rw: RealWorldClips, predictor: AVSPredictor, tmp_path: Path, name: str, seconds: float, frames: int) -> None:
    path = rw(name)
    header = ffprobe_json(path, "-show_format", "-show_streams")
    assert "duration" not in header["format"]  # really none recorded, anywhere
    assert "duration" not in header["streams"][0]
    info = probe_media(path)
    assert info.duration_s == pytest.approx(seconds, abs=0.02)
    assert info.num_frames == frames == count_frames(path)
    limits = MediaLimits(max_duration_s=seconds / 2)
    assert "lasts" in _refused(path, ErrorCode.TOO_LONG, limits=limits).message
    out = tmp_path / "out"
    with pytest.raises(MediaError) as caught:
        segment_video(path, out, predictor, SegmentOptions(limits=limits))
    assert caught.value.code is ErrorCode.TOO_LONG
    assert not list(out.glob("masks.ndjson*")), "nothing half-written"


def test_cli_refuses_too_long_instead_of_a_truncated_success(rw: RealWorldClips, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([AVS, "segment", str(rw("nodur.webm")), "--out", str(out), "--max-duration", "2", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["error"]["code"] == "too_long"
    assert not list(out.glob("masks.ndjson*"))


def test_the_decoder_refuses_what_a_lying_probe_let_through(rw: RealWorldClips) -> None:
    """The probe's packet scan is the first check; the frames really decoded are the second."""
    info = probe_media(rw("nodur.mkv"))  # 3 s, 90 frames
    lying = dataclasses.replace(info, duration_s=1.0, num_frames=30)
    with pytest.raises(MediaError) as caught:  # a frame more than 2 s after the first
        _decode(lying, limits=MediaLimits(max_duration_s=2.0))
    assert caught.value.code is ErrorCode.TOO_LONG
    with pytest.raises(MediaError) as caught:  # more frames than 10 s at 5 frames/s
        _decode(lying, limits=MediaLimits(max_duration_s=10.0, max_fps=5.0))
    assert caught.value.code is ErrorCode.TOO_LONG
    with pytest.raises(MediaError) as caught:  # with resampling: more than 2 s worth at 10 frames/s
        _decode(lying, fps=10.0, limits=MediaLimits(max_duration_s=2.0))
    assert caught.value.code is ErrorCode.TOO_LONG
    assert len(_decode(lying, max_frames=7)) == 7  # a prefix the caller asked for stops quietly
    assert len(_decode(lying, limits=MediaLimits(max_duration_s=3.0, max_fps=30.0))) == 90  # exactly at the limit


# --------------------------------------------------------------------------------- 3. start offsets
@pytest.mark.parametrize(("name", "offset", "seconds", "frames"),
                         [("offset.mkv", 20.0, 2.0, 50), ("offset.webm", 35.0, 3.0, 60)])
def test_a_start_offset_is_not_duration(rw: RealWorldClips, name: str, offset: float, seconds: float,
                                        frames: int) -> None:
    path = rw(name)
    assert float(ffprobe_stream(path)["start_time"]) == pytest.approx(offset, abs=0.05)
    info = probe_media(path, MediaLimits(max_duration_s=10.0))
    assert info.duration_s == pytest.approx(seconds, abs=0.02)
    assert info.num_frames == info.expected_frames() == frames == count_frames(path)
    assert info.start_time_s < 0.1
    pts = _decode(info)
    assert pts[0] < 0.1
    assert pts[-1] < seconds
    assert abs(read_audio(info, sample_rate=SR).size - seconds * SR) < 0.1 * SR


def test_audio_starting_late_in_mpeg_ts_is_heard_late(tmp_path: Path) -> None:
    """MPEG-TS/PS tolerate timestamp jumps, and ffmpeg's own shift follows the first packet of whatever
    stream a process reads: read alone, audio that starts 1 s after the video used to land at 0."""
    path = tmp_path / "late.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25:duration=3",
                    "-itsoffset", "1", "-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:v", "libx264",
                    "-c:a", "aac", str(path)], check=True, timeout=60)
    info = probe_media(path)
    audio_start = float(ffprobe_stream(path, "a:0")["start_time"]) - float(ffprobe_stream(path)["start_time"])
    assert audio_start == pytest.approx(1.0, abs=0.05)
    assert _onset_s(read_audio(info, sample_rate=SR), SR) == pytest.approx(audio_start, abs=0.03)
    assert _decode(info)[0] == pytest.approx(0.0, abs=0.01)


# ------------------------------------------------------------------------------------- 4. the overlay
@pytest.mark.parametrize("name", ["rate_rises.mp4", "vfr.webm", "rate_rises_rot90.mp4", "anamorphic.mp4",
                                  "anamorphic.vob"])
def test_overlay_keeps_every_frame_time_and_the_shape(rw: RealWorldClips, predictor: AVSPredictor, tmp_path: Path,
                                                      name: str) -> None:
    path = rw(name)
    result = segment_video(path, tmp_path, predictor, SegmentOptions(batch_size=8, overlay=True))
    overlay = Path(result.overlay_path)
    lines = list(read_mask_lines(Path(result.masks_path)))
    source_times = ffprobe_frame_times(path)
    overlay_times = ffprobe_frame_times(overlay)
    assert len(overlay_times) == len(source_times) == len(lines) == count_frames(path)
    assert max_time_error(overlay_times, source_times) < 2e-3
    # the shape a player shows: the source's display aspect (pixel aspect and rotation applied)
    src, ov = ffprobe_stream(path), ffprobe_stream(overlay)

    def shown(stream: dict) -> float:
        num, den = (int(x) for x in (stream.get("sample_aspect_ratio") or "1:1").replace("0:1", "1:1").split(":"))
        aspect = stream["width"] * num / (stream["height"] * den)
        rotated = any(abs(abs(float(d.get("rotation", 0))) - 90) < 1 for d in stream.get("side_data_list", []))
        return 1 / aspect if rotated else aspect

    assert shown(ov) == pytest.approx(shown(src), rel=0.01)
    info = probe_media(overlay)
    assert info.rotation == 0  # upright pixels: plays in shape without honouring metadata


def test_overlay_sound_stays_in_sync_with_a_rising_frame_rate(rw: RealWorldClips, predictor: AVSPredictor,
                                                               tmp_path: Path) -> None:
    path = rw("gated_vfr.mkv")  # 10 fps for 2 s, then 25 fps; silence until 1.5 s
    result = segment_video(path, tmp_path, predictor, SegmentOptions(batch_size=8, overlay=True))
    overlay = Path(result.overlay_path)
    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", str(overlay), "-map", "0:a", "-ac", "1", "-ar", str(SR),
                          "-f", "f32le", "-"], capture_output=True, check=True, timeout=60).stdout
    assert _onset_s(np.frombuffer(pcm, "<f4"), SR) == pytest.approx(1.5, abs=0.04)
    # the frame shown at 2.5 s is the source's frame at 2.5 s (at one constant rate it would be 40 % off)
    assert ffprobe_frame_times(overlay)[-1] == pytest.approx(ffprobe_frame_times(path)[-1], abs=1e-3)


# --------------------------------------------------------------------------------- 5. the containers
@pytest.mark.parametrize(("name", "demuxer"), [("x.mpg", "mpeg"), ("x.vob", "mpeg"), ("x.ogv", "ogg"),
                                               ("opus.ogv", "ogg"), ("x.wmv", "asf"), ("x.asf", "asf"),
                                               ("x.dv", "dv")])
def test_everyday_containers_are_accepted(rw: RealWorldClips, name: str, demuxer: str) -> None:
    path = rw(name)
    info = probe_media(path)
    assert info.demuxer == demuxer
    assert demuxer in VIDEO_DEMUXERS
    assert len(_decode(info)) == count_frames(path) == info.num_frames
    # ffmpeg's sine source: amplitude 1/8, RMS 0.088 in mono
    tone = read_audio(info, sample_rate=SR)[SR // 4: -SR // 4]
    assert 0.04 < float(np.sqrt(np.mean(np.square(tone)))) < 0.1
    assert _dominant_hz(tone) == pytest.approx(440, abs=5)


@pytest.mark.parametrize("name", ["sound.wav", "cover.mp3", "sound.flac"])
def test_a_sound_file_has_no_video_stream(rw: RealWorldClips, name: str) -> None:
    err = _refused(rw(name), ErrorCode.NO_VIDEO_STREAM)
    if name == "cover.mp3":
        assert "cover art" in err.message


def test_the_allow_list_holds_no_demuxer_that_opens_other_files() -> None:
    followers = {"hls", "concat", "dash", "sdp", "rtp", "rtsp", "image2", "image2pipe", "imf", "vobsub",
                 "avisynth", "vapoursynth", "mxf", "webm_dash_manifest", "applehttp", "ffmetadata", "tee", "lavfi"}
    assert not set(ALLOWED_DEMUXERS) & followers
    listing = subprocess.run(["ffmpeg", "-hide_banner", "-demuxers"], capture_output=True, text=True, check=True).stdout
    available = {name for line in listing.splitlines()[4:] for name in line[4:].split(" ", 1)[0].split(",")}
    assert set(ALLOWED_DEMUXERS) <= available, "every allowed demuxer exists in this ffmpeg"


def test_a_subtitle_index_is_refused_without_opening_its_side_file(tmp_path: Path) -> None:
    """vobsub opens the `.sub` next to an `.idx`: a FIFO there would block a probe that followed it."""
    os.mkfifo(tmp_path / "upload.sub")
    index = tmp_path / "upload.idx"
    index.write_text("# VobSub index file, v7 (do not modify this line!)\nsize: 720x480\n"
                     "id: en, index: 0\ntimestamp: 00:00:01:000, filepos: 000000000\n")
    started = time.monotonic()
    _refused(index, ErrorCode.NOT_MEDIA, limits=MediaLimits(probe_timeout_s=10.0))
    assert time.monotonic() - started < 3.0


# ------------------------------------------------------------------------------ 6. options that yield
@pytest.mark.parametrize(("name", "fps", "frames"), [("clip.mp4", 0.01, 1), ("clip.mp4", 0.6, 2),
                                                     ("anamorphic.mp4", 0.3, 1), ("clip.mp4", 10.0, 20)])
def test_any_fps_yields_at_least_the_first_frame(rw: RealWorldClips, name: str, fps: float, frames: int) -> None:
    info = probe_media(rw(name))
    pts = _decode(info, fps=fps)
    assert len(pts) == frames == info.expected_frames(fps)
    assert pts[0] == pytest.approx(info.start_time_s, abs=1e-3)


def test_a_very_low_fps_segments_one_frame(rw: RealWorldClips, predictor: AVSPredictor, tmp_path: Path) -> None:
    result = segment_video(rw("clip.mp4"), tmp_path, predictor, SegmentOptions(fps=0.01, overlay=True))
    assert result.frames == 1
    assert count_frames(Path(result.overlay_path)) == 1


# ---------------------------------------------------------------------------------- 7. which sound
@pytest.mark.parametrize("name", ["two_tracks.mp4", "two_tracks.mkv"])
def test_the_default_audio_track_is_the_one_heard(rw: RealWorldClips, predictor: AVSPredictor, tmp_path: Path,
                                                  name: str) -> None:
    path = rw(name)
    assert ffprobe_stream(path, "a:1")["disposition"]["default"] == 1
    info = probe_media(path)
    assert (info.audio_stream_index, info.audio_tracks) == (2, 2)
    assert _dominant_hz(read_audio(info, sample_rate=SR)) == pytest.approx(1760, abs=5)  # not the first track's 220 Hz
    result = segment_video(path, tmp_path, predictor, SegmentOptions(batch_size=16))
    assert result.video["audio_stream_index"] == 2  # reported with the result


def test_an_audio_track_without_packets_is_no_track(rw: RealWorldClips) -> None:
    path = rw("empty_track.mkv")
    assert ffprobe_stream(path, "a:0")["codec_type"] == "audio"  # the track is declared...
    assert count_frames_of(path, "a:0") == 0  # ...and empty
    _refused(path, ErrorCode.NO_AUDIO_TRACK)


def test_an_empty_default_track_gives_way_to_a_track_with_sound(rw: RealWorldClips) -> None:
    path = rw("empty_then_real.mkv")
    assert count_frames_of(path, "a:0") == 0
    assert ffprobe_stream(path, "a:0")["disposition"]["default"] == 1
    info = probe_media(path)
    assert (info.audio_stream_index, info.audio_tracks) == (2, 1)
    assert _dominant_hz(read_audio(info, sample_rate=SR)) == pytest.approx(1760, abs=5)


def count_frames_of(path: Path, stream: str) -> int:
    data = ffprobe_json(path, "-count_packets", "-select_streams", stream, "-show_entries", "stream=nb_read_packets")
    return int(data["streams"][0].get("nb_read_packets", 0))  # ffprobe leaves it out for an empty stream
