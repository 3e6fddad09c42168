"""`avs distill --data`: the clips of an AVSBench-layout folder as videos, labels never read.

AVSBench stores a clip as stills (one per second: S4/MS3 5 PNGs, AVSS 5 or 10 JPEGs) and a wav. Each clip is
muxed once into a lossless Matroska file (FFV1 video + FLAC audio; bit-exact, so the teacher's cache key of
an unchanged clip stays the same), frame t shown during [0.96 t, 0.96 (t + 1)) s, the VGGish window the
AVSBench loaders pair it with; from there the clip takes the serving path like any user video
(`worker.distill_inputs`): with `--sample-fps 1.0416667` (one frame per 0.96 s, the default for `--data`)
every still is labelled once and hears its own window. Only frame and wav files are opened: no mask, no
label map, no log-mel pickle.
"""

from __future__ import annotations

from pathlib import Path

from model.lab.data import files, layout
from worker.core.contracts import ErrorCode
from worker.core.errors import MediaError
from worker.core.media.probe import FFMPEG
from worker.core.media.process import run_bounded

STILL_FPS = "25/24"  # one still per 0.96 s VGGish window
LAYOUT_SAMPLE_FPS = 25 / 24


def _clips(data: Path, subset: str, split: str) -> list[tuple[str, Path, str, int, Path]]:
    """(name, frame folder, frame pattern, first number, wav) per clip of `split`."""
    out = []
    if subset == "s4":
        header, rows = files.read_csv_rows(layout.s4_csv_path(data))
        col = header.index("split")
        for row in rows:
            if row[col] == split:
                name, category = row[0], row[2]
                frame = layout.s4_frame_path(data, split, category, name, 0)
                out.append((f"{category}/{name}", frame.parent, f"{name}_%d.png", 1,
                            layout.s4_audio_wav_path(data, split, category, name)))
    elif subset == "ms3":
        header, rows = files.read_csv_rows(layout.ms3_csv_path(data))
        col = header.index("split")
        for row in rows:
            if row[col] == split:
                name = row[0]
                frame = layout.ms3_frame_path(data, name, 0)
                out.append((name, frame.parent, f"{name}.mp4_%d.png", 1, layout.ms3_audio_wav_path(data, split, name)))
    elif subset == "avss":
        header, rows = files.read_csv_rows(layout.avss_csv_path(data))
        uid, label, col = header.index("uid"), header.index("label"), header.index("split")
        for row in rows:
            if row[col] == split:
                frame = layout.avss_frame_path(data, row[label], row[uid], 0)
                out.append((f"{row[label]}/{row[uid]}", frame.parent, "%d.jpg", 0,
                            layout.avss_audio_path(data, row[label], row[uid])))
    else:
        raise ValueError(f"subset must be s4, ms3 or avss, got {subset!r}")
    return out


def layout_videos(data: str | Path, subset: str, split: str, out_dir: str | Path, *,
                  timeout_s: float = 120.0) -> Path:
    """Write one `<out_dir>/<clip>.mkv` per clip of `split` (kept when it exists) and return `out_dir`.

    Raises MediaError(not_media) naming the clip when its frames or wav are missing or ffmpeg fails.
    """
    data, out = Path(data), Path(out_dir)
    clips = _clips(data, subset, split)
    if not clips:
        raise MediaError(ErrorCode.NOT_MEDIA, f"{data}: no {subset} clip of split {split!r}")
    for name, folder, pattern, first, wav in clips:
        target = out / f"{name}.mkv"
        if target.is_file():
            continue
        if not wav.is_file() or not folder.is_dir():
            raise MediaError(ErrorCode.NOT_MEDIA, f"{name}: missing frames ({folder}) or sound ({wav})")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.stem + ".partial.mkv")
        args = [FFMPEG, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-y",
                "-framerate", STILL_FPS, "-start_number", str(first), "-i", str(folder / pattern), "-i", str(wav),
                "-map", "0:v", "-map", "1:a", "-c:v", "ffv1", "-pix_fmt", "yuv444p", "-c:a", "flac",
                "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact", "-map_metadata", "-1",
                "-f", "matroska", str(tmp)]
        result = run_bounded(args, timeout_s=timeout_s)
        if result.timed_out or result.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise MediaError(ErrorCode.NOT_MEDIA, f"{name}: ffmpeg could not mux the clip: "
                                                  f"{result.stderr[-300:]}")
        tmp.replace(target)
    return out
