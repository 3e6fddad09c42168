"""The media layer on real files: every accepted container, odd sizes, rotation, VFR, channel layouts and
sample rates, audio/frame alignment, and each refusal code from a file that provokes it.

Files come from `conftest.Clips` (lavfi sources, built once per session). Frame counts are checked
against ffprobe's own decode count (`-count_frames`), not against our probe's estimate.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
from media_clips import MATRIX, Clips

from worker.core.contracts import ErrorCode
from worker.core.errors import MediaError
from worker.core.media.containers import FORMAT_WHITELIST
from worker.core.media.media_info import MediaInfo, MediaLimits
from worker.core.media.probe import count_frames, probe_media
from worker.media.audio import read_audio
from worker.media.decode import FrameReader

SR = 16000


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0


def _ffmpeg_children() -> list[int]:
    """Our own ffmpeg/ffprobe child processes (zombies included), read from /proc: no psutil needed."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == os.getpid() and comm in ("ffmpeg", "ffprobe"):
            found.append(int(entry))
    return found


def _decode_all(info: MediaInfo, **kwargs: object) -> tuple[np.ndarray, list[float]]:
    frames, pts = [], []
    for batch in FrameReader(info, **kwargs).iter_batches(16):  # type: ignore[arg-type]
        frames.append(batch.frames)
        pts.extend(batch.pts_s)
    return np.concatenate(frames), pts


# ------------------------------------------------------------------------------- contracts
def test_error_codes_are_stable_strings() -> None:
    assert {code.value for code in ErrorCode} == {
        "not_media", "no_video_stream", "no_audio_track", "corrupt_media", "too_long", "too_many_pixels",
        "media_timeout", "not_fragmented",
    }  # fmt: skip
    err = MediaError(ErrorCode.TOO_LONG, "too long by far")
    assert str(err) == "too long by far"
    assert err.code is ErrorCode.TOO_LONG
    assert err.code == "too_long"
    again = pickle.loads(pickle.dumps(err))
    assert (again.code, again.message) == (err.code, err.message)


def test_media_modules_do_not_import_torch() -> None:
    import subprocess
    import sys

    modules = ["worker.media.decode", "worker.media.audio", "worker.media.ffmpeg_input", "worker.media.samples"]
    code = f"import sys, {', '.join(modules)}; print('torch' in sys.modules, 'app' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["False", "False"]


# ------------------------------------------------------------------------------- the matrix
@pytest.mark.parametrize("name", MATRIX)
def test_probe_and_decode_every_kind_of_file(clip: Clips, name: str) -> None:
    path = clip(name)
    info = probe_media(path)
    expected = count_frames(path)
    assert info.has_audio
    assert info.duration_s == pytest.approx(2.0, abs=0.1)
    assert info.demuxer in FORMAT_WHITELIST.split(",")

    # scaled to a requested size (aspect ratio not kept)
    reader = FrameReader(info, size=(64, 48))
    count, pts = 0, []
    for batch in reader.iter_batches(7):
        assert batch.frames.dtype == np.uint8
        assert batch.frames.shape[1:] == (48, 64, 3)
        assert batch.start_index == count
        assert len(batch.pts_s) == len(batch.frames)
        count += len(batch.frames)
        pts.extend(batch.pts_s)
    assert count == expected == reader.frames_read
    assert all(b > a for a, b in itertools.pairwise(pts)), "timestamps must increase strictly"
    assert pts[0] == pytest.approx(info.start_time_s, abs=0.05)
    assert pts[-1] < info.start_time_s + info.duration_s + 1e-6

    # display size
    frames, _ = _decode_all(info, size=None)
    assert frames.shape == (expected, info.height, info.width, 3)
    assert frames.std() > 10, "a real picture, not a blank"

    audio = read_audio(info, sample_rate=SR)
    assert audio.dtype == np.float32
    assert audio.ndim == 1
    assert abs(audio.size - 2.0 * SR) < 0.1 * SR
    assert np.abs(audio).max() <= 1.0
    assert 0.2 < _rms(audio[SR // 4 : -SR // 4]) < 0.6  # the 0.5-amplitude tone, whatever the layout


def test_probe_reports_what_the_file_holds(clip: Clips) -> None:
    info = probe_media(clip("webm_51_48k"))
    assert (info.format_name, info.demuxer) == ("matroska,webm", "matroska")
    assert (info.video_codec, info.audio_codec, info.audio_channels, info.audio_sample_rate) == (
        "vp9", "opus", 6, 48000)
    info = probe_media(clip("avi_stereo_11k"))
    assert (info.demuxer, info.video_codec, info.audio_codec, info.audio_channels, info.audio_sample_rate) == (
        "avi", "mjpeg", "pcm_s16le", 2, 11025)
    info = probe_media(clip("mp4"))
    assert info.format_name == "mov,mp4,m4a,3gp,3g2,mj2"
    assert info.demuxer == "mov"
    assert (info.width, info.height, info.fps, info.num_frames) == (160, 120, 25.0, 50)
    d = info.to_dict()
    assert d["width"] == 160
    assert d["duration_s"] == pytest.approx(2.0)
    import json

    assert json.loads(json.dumps(d)) == d


def test_odd_size_is_kept(clip: Clips) -> None:
    for name in ("odd_mp4", "odd_webm", "odd_avi", "odd_mkv"):
        info = probe_media(clip(name))
        assert (info.width, info.height) == (161, 121), name


@pytest.mark.parametrize(("name", "k"), [("rot90", -1), ("rot180", 2), ("rot270", 1)])
def test_rotation_metadata_gives_upright_frames(clip: Clips, name: str, k: int) -> None:
    upright_info = probe_media(clip("mp4"))
    info = probe_media(clip(name))
    degrees = int(name.removeprefix("rot"))
    assert info.rotation == degrees
    assert (info.coded_width, info.coded_height) == (160, 120)
    assert (info.width, info.height) == ((120, 160) if degrees in (90, 270) else (160, 120))
    stored, _ = _decode_all(upright_info, size=None)
    shown, _ = _decode_all(info, size=None)
    expected = np.rot90(stored, k=k, axes=(1, 2))  # k=-1: a quarter turn clockwise
    assert shown.shape == expected.shape
    assert np.abs(shown.astype(np.int16) - expected).mean() < 2.0
    # a requested size is in display orientation too
    small, _ = _decode_all(info, size=(30, 40))
    assert small.shape[1:] == (40, 30, 3)


def test_vfr_frames_come_out_once_with_their_own_times(clip: Clips) -> None:
    for name in ("vfr_mp4", "vfr_mkv"):
        info = probe_media(clip(name))
        frames, pts = _decode_all(info, size=(32, 32))
        assert len(frames) == count_frames(clip(name)) == 33  # 50 frames, every 4th and 7th dropped
        gaps = np.round(np.diff(pts), 3)
        assert set(gaps.tolist()) == {0.04, 0.08, 0.12}, name


def test_fps_filter_resamples_to_a_constant_rate(clip: Clips) -> None:
    info = probe_media(clip("vfr_mp4"))
    frames, pts = _decode_all(info, size=(32, 32), fps=10)
    assert abs(len(frames) - 20) <= 1
    assert np.allclose(np.diff(pts), 0.1, atol=1e-6)
    frames, pts = _decode_all(info, size=(32, 32), fps=25)
    assert abs(len(frames) - 50) <= 1
    assert np.allclose(np.diff(pts), 0.04, atol=1e-6)


def test_max_frames_stops_quietly_and_an_unknown_duration_is_measured(clip: Clips) -> None:
    info = probe_media(clip("mp4"))
    frames, _ = _decode_all(info, size=(16, 16), max_frames=7)
    assert len(frames) == 7
    assert list(FrameReader(info, size=(16, 16), max_frames=0).iter_batches(4)) == []
    # no duration anywhere in the file: the probe measures it from the packets and applies the limit
    info = probe_media(clip("no_duration.mkv"))
    assert info.duration_s == pytest.approx(2.0)
    assert info.num_frames == 50
    _refused(clip("no_duration.mkv"), ErrorCode.TOO_LONG, limits=MediaLimits(max_duration_s=1.0))


def test_container_start_offset_is_not_duration(clip: Clips) -> None:
    # MPEG-TS timestamps start at ~101 s: not "too long" for a 10 s limit, and the timeline starts at 0
    info = probe_media(clip("offset.ts"), MediaLimits(max_duration_s=10.0))
    assert info.duration_s == pytest.approx(2.0, abs=0.1)
    assert info.start_time_s < 0.1
    _, pts = _decode_all(info, size=(16, 16))
    assert pts[0] < 0.1
    assert pts[-1] < 2.1
    audio = read_audio(info, sample_rate=SR)
    assert abs(audio.size - 2 * SR) < 0.1 * SR


# -------------------------------------------------------------------------------- alignment
def test_sound_start_is_where_the_audio_says(clip: Clips) -> None:
    info = probe_media(clip("gate"))
    audio = read_audio(info, sample_rate=SR)
    assert _rms(audio[: int(0.95 * SR)]) < 1e-3
    assert _rms(audio[int(1.05 * SR) : int(1.95 * SR)]) > 0.3
    onset = int(np.argmax(np.abs(audio) > 0.05)) / SR
    assert onset == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize(("name", "delay"), [("late_mp4", 1.0), ("late_mkv", 0.5)])
def test_audio_stream_that_starts_late_gets_leading_silence(clip: Clips, name: str, delay: float) -> None:
    info = probe_media(clip(name))
    _, pts = _decode_all(info, size=(16, 16))
    assert pts[0] == pytest.approx(0.0, abs=1e-6)  # video starts at the container start
    audio = read_audio(info, sample_rate=SR)
    onset = int(np.argmax(np.abs(audio) > 0.05)) / SR
    assert onset == pytest.approx(delay, abs=0.03)
    assert _rms(audio[: int((delay - 0.05) * SR)]) < 1e-3
    assert _rms(audio[int((delay + 0.05) * SR) : int((delay + 0.9) * SR)]) > 0.3
    assert audio.size / SR == pytest.approx(delay + 2.0, abs=0.1)  # the tone lasts 2 s after the delay


def test_audio_is_resampled_and_downmixed(clip: Clips) -> None:
    for name in ("mov_8k", "mp4_51_48k", "webm_51_48k", "avi_stereo_11k"):
        info = probe_media(clip(name))
        audio = read_audio(info, sample_rate=SR)
        spectrum = np.abs(np.fft.rfft(audio[SR // 4 : SR // 4 + SR]))
        assert np.argmax(spectrum) == pytest.approx(440, abs=2), name  # 1 s window: bin = Hz
        assert np.abs(audio).max() <= 1.0
    info = probe_media(clip("mp4"))
    assert abs(read_audio(info, sample_rate=8000).size - 16000) < 800


# --------------------------------------------------------------------------------- refusals
def _refused(path: Path, code: ErrorCode, **kwargs: object) -> MediaError:
    with pytest.raises(MediaError) as caught:
        probe_media(path, **kwargs)  # type: ignore[arg-type]
    assert caught.value.code is code, caught.value.message
    assert str(path.parent) not in caught.value.message, "messages must not leak server paths"
    return caught.value


def test_not_media(clip: Clips, tmp_path: Path) -> None:
    _refused(clip("text.mp4"), ErrorCode.NOT_MEDIA)
    _refused(clip("random.mp4"), ErrorCode.NOT_MEDIA)
    # a picture is not a video (image2/png demuxers are outside the allow-list)
    _refused(clip("picture.png"), ErrorCode.NOT_MEDIA)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    _refused(empty, ErrorCode.NOT_MEDIA)
    _refused(tmp_path, ErrorCode.NOT_MEDIA)
    _refused(tmp_path / "missing.mp4", ErrorCode.NOT_MEDIA)


def test_hls_playlist_with_real_segments_is_refused(clip: Clips, tmp_path: Path) -> None:
    import subprocess

    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", str(clip("mp4")), "-c", "copy",
                    "-f", "hls", "-hls_time", "1", "-hls_list_size", "0",
                    "-hls_segment_filename", str(tmp_path / "seg%d.ts"), str(tmp_path / "list.m3u8")],
                   check=True, timeout=60)
    assert list(tmp_path.glob("seg*.ts")), "the playlist points at real, playable segments"
    err = _refused(tmp_path / "list.m3u8", ErrorCode.NOT_MEDIA)
    assert "hls" in err.message
    disguised = tmp_path / "upload.mp4"  # whatever the file is called
    disguised.write_bytes((tmp_path / "list.m3u8").read_bytes())
    _refused(disguised, ErrorCode.NOT_MEDIA)


def test_ffconcat_list_with_a_real_entry_is_refused(clip: Clips, tmp_path: Path) -> None:
    listing = tmp_path / "upload.mp4"
    listing.write_text(f"ffconcat version 1.0\nfile '{clip('mp4')}'\n")
    assert "concat" in _refused(listing, ErrorCode.NOT_MEDIA).message


@pytest.mark.parametrize("kind", ["hls", "ffconcat"])
def test_playlists_are_never_followed(tmp_path: Path, kind: str) -> None:
    """The target is a FIFO with no writer: opening it would block until the deadline. A refusal well
    under the deadline proves ffprobe never opened it."""
    fifo = tmp_path / "target.ts"
    os.mkfifo(fifo)
    listing = tmp_path / "upload.mp4"
    if kind == "hls":
        listing.write_text("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\ntarget.ts\n"
                           "#EXT-X-ENDLIST\n")
    else:
        listing.write_text("ffconcat version 1.0\nfile target.ts\n")
    limits = MediaLimits(probe_timeout_s=10.0)
    started = time.monotonic()
    _refused(listing, ErrorCode.NOT_MEDIA, limits=limits)
    assert time.monotonic() - started < 3.0
    assert not _ffmpeg_children()


def test_a_fifo_upload_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "upload.mp4"
    os.mkfifo(fifo)
    started = time.monotonic()
    _refused(fifo, ErrorCode.NOT_MEDIA)
    assert time.monotonic() - started < 1.0


def test_no_video_stream(clip: Clips) -> None:
    _refused(clip("audio_only.m4a"), ErrorCode.NO_VIDEO_STREAM)
    assert "cover art" in _refused(clip("cover_art.m4a"), ErrorCode.NO_VIDEO_STREAM).message
    _refused(clip("empty_moov.mp4"), ErrorCode.NO_VIDEO_STREAM)  # ffprobe exits 0 and lists no streams


def test_no_audio_track(clip: Clips) -> None:
    _refused(clip("video_only"), ErrorCode.NO_AUDIO_TRACK)
    info = probe_media(clip("video_only"), require_audio=False)
    assert not info.has_audio
    assert info.audio_codec is None
    assert info.audio_sample_rate is None
    with pytest.raises(MediaError) as caught:
        read_audio(info, sample_rate=SR)
    assert caught.value.code is ErrorCode.NO_AUDIO_TRACK


def test_corrupt_container_does_not_open(clip: Clips) -> None:
    err = _refused(clip("truncated.mp4"), ErrorCode.CORRUPT_MEDIA)
    assert "moov" in err.message


def test_truncated_media_data_fails_while_decoding(clip: Clips) -> None:
    info = probe_media(clip("faststart_truncated.mp4"))  # the index is intact: probing succeeds
    with pytest.raises(MediaError) as caught:
        _decode_all(info, size=(16, 16))
    assert caught.value.code is ErrorCode.CORRUPT_MEDIA
    # Audio is lenient on purpose: the demuxer reports the cut at error level but ends the stream normally,
    # and what was read is valid sound; the job fails on the frames anyway.
    audio = read_audio(info, sample_rate=SR)
    assert 0 < audio.size < 1.9 * SR


@pytest.mark.parametrize(("clean_name", "damaged_name"), [
    ("clean_faststart.mp4", "garbage_middle.mp4"),  # h264: the decoder rejects NAL units
    ("webm_51_48k", "garbage_middle.webm"),  # matroska: the demuxer meets a broken element
    ("avi_stereo_11k", "garbage_middle.avi"),  # mjpeg: the decoder overreads
])
def test_garbage_mid_stream_raises_instead_of_yielding_garbage(clip: Clips, clean_name: str,
                                                               damaged_name: str) -> None:
    reference, _ = _decode_all(probe_media(clip(clean_name)), size=None)
    info = probe_media(clip(damaged_name))  # probes cleanly: the decoder is the judge of damage
    yielded: list[np.ndarray] = []

    def consume() -> None:
        for batch in FrameReader(info, size=None).iter_batches(4):
            yielded.append(batch.frames)

    with pytest.raises(MediaError) as caught:
        consume()
    assert caught.value.code is ErrorCode.CORRUPT_MEDIA
    got = np.concatenate(yielded) if yielded else np.zeros((0, 120, 160, 3), np.uint8)
    assert len(got) < 45
    # everything that was yielded before the error is exactly what the undamaged file holds
    assert np.array_equal(got, reference[: len(got)])
    assert not _ffmpeg_children()


def test_stream_cut_mid_gop_decodes_from_the_next_keyframe(clip: Clips) -> None:
    """Error messages before the first frame (undecodable leading packets) are tolerated: nothing garbage
    comes out of them, and the rest of the stream is fine."""
    path = clip("mid_gop.ts")
    info = probe_media(path)
    frames, pts = _decode_all(info, size=(32, 32))
    assert 0 < len(frames) == count_frames(path) < 100
    assert all(b > a for a, b in itertools.pairwise(pts))
    assert read_audio(info, sample_rate=SR).size > SR


def test_rotation_parsing_conventions() -> None:
    from worker.core.media.probe import _rotation_cw

    def matrix(ccw: float) -> dict[str, object]:
        return {"side_data_list": [{"side_data_type": "Display Matrix", "rotation": ccw}]}

    # Display Matrix rotation is counter-clockwise: -90 (an upright phone video) is 90 clockwise
    assert [_rotation_cw(matrix(a)) for a in (0, -90, 90, 180, -180, 270, -89.6)] == [0, 90, 270, 180, 180, 90, 90]
    # the legacy tag is clockwise and only used without a matrix
    assert _rotation_cw({"tags": {"rotate": "90"}}) == 90
    assert _rotation_cw({"tags": {"rotate": "-90"}}) == 270
    assert _rotation_cw({**matrix(90), "tags": {"rotate": "90"}}) == 270
    assert _rotation_cw({"tags": {"rotate": "nonsense"}}) == 0


def test_too_long(clip: Clips) -> None:
    err = _refused(clip("mp4"), ErrorCode.TOO_LONG, limits=MediaLimits(max_duration_s=1.5))
    assert "2.0 s" in err.message
    # the frame budget: 50 frames > 3 s × 10 frames/s
    _refused(clip("mp4"), ErrorCode.TOO_LONG, limits=MediaLimits(max_duration_s=3.0, max_fps=10.0))
    probe_media(clip("mp4"), MediaLimits(max_duration_s=2.5))


def test_too_many_pixels(clip: Clips) -> None:
    _refused(clip("mp4"), ErrorCode.TOO_MANY_PIXELS, limits=MediaLimits(max_pixels=160 * 120 - 1))
    probe_media(clip("mp4"), MediaLimits(max_pixels=160 * 120))
    _refused(clip("odd_mp4"), ErrorCode.TOO_MANY_PIXELS, limits=MediaLimits(max_pixels=161 * 121 - 1))


# ------------------------------------------------------------------------------- deadlines
def test_probe_deadline_is_media_timeout(clip: Clips) -> None:
    _refused(clip("mp4"), ErrorCode.MEDIA_TIMEOUT, limits=MediaLimits(probe_timeout_s=0.001))
    assert not _ffmpeg_children()


def test_decode_deadline_is_media_timeout(clip: Clips, tmp_path: Path) -> None:
    """ffmpeg blocked on a FIFO with no writer is killed at the deadline, for frames and for audio."""
    fifo = tmp_path / "stuck.mp4"
    os.mkfifo(fifo)
    info = dataclasses.replace(probe_media(clip("mp4")), path=str(fifo))
    started = time.monotonic()
    with pytest.raises(MediaError) as caught:
        _decode_all(info, size=(16, 16), timeout_s=1.0)
    assert caught.value.code is ErrorCode.MEDIA_TIMEOUT
    with pytest.raises(MediaError) as caught:
        read_audio(info, sample_rate=SR, timeout_s=1.0)
    assert caught.value.code is ErrorCode.MEDIA_TIMEOUT
    assert time.monotonic() - started < 6.0
    assert not _ffmpeg_children()


def test_default_decode_deadline_grows_with_duration() -> None:
    limits = MediaLimits()
    assert limits.decode_timeout(10.0) == pytest.approx(160.0)
    assert limits.decode_timeout(None) == pytest.approx(60.0 + 10.0 * 600.0)


# ----------------------------------------------------------------------------- early stop
def test_early_stop_leaves_no_ffmpeg_running(clip: Clips) -> None:
    info = probe_media(clip("long"))
    reader = FrameReader(info, size=None)
    batches = reader.iter_batches(2)
    first = next(batches)
    assert len(first) == 2
    assert _ffmpeg_children()
    batches.close()
    assert not _ffmpeg_children()
    assert reader.frames_read == 2

    for batch in FrameReader(info, size=(32, 32)).iter_batches(3):  # break out of a for loop
        assert len(batch) == 3
        break
    assert not _ffmpeg_children()

    def consume_and_fail() -> None:
        for _ in FrameReader(info, size=(32, 32)).iter_batches(3):
            raise KeyError("consumer bug")

    with pytest.raises(KeyError):
        consume_and_fail()
    assert not _ffmpeg_children()
