"""Encode in-memory frames and a waveform into a playable H.264 + AAC mp4 (for synthetic clips)."""

from __future__ import annotations

import tempfile
import wave
from pathlib import Path

import numpy as np

from worker.core.contracts import ErrorCode
from worker.core.errors import MediaError
from worker.core.media.process import BoundedProcess


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> Path:
    """float32 [-1, 1] mono -> 16-bit PCM wav."""
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())
    return path


def encode_mp4(frames: np.ndarray, audio: np.ndarray, *, fps: float, sample_rate: int, out: Path,
               timeout_s: float = 300.0) -> Path:
    """frames uint8 [F, H, W, 3] RGB at a constant `fps`, audio float32 [L] -> `out` (h264 yuv420p + aac).

    Every input frame becomes exactly one output frame (constant frame rate, no -shortest), so the
    clip's ground truth lines up one-to-one with what a decoder returns.
    """
    _, H, W, _ = frames.shape
    if H % 2 or W % 2:
        raise ValueError(f"yuv420p needs even sizes, got {W}x{H}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".partial.mp4")
    with tempfile.TemporaryDirectory() as tmp:
        wav = write_wav(Path(tmp) / "audio.wav", audio, sample_rate)
        args = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
                "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{W}x{H}", "-r", f"{fps:g}", "-i", "pipe:0",
                "-i", str(wav), "-map", "0:v:0", "-map", "1:a:0",
                "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
                "-c:a", "aac", "-b:a", "96k", "-movflags", "+faststart", str(tmp_out)]
        with BoundedProcess(args, timeout_s=timeout_s, stdin=True, stdout=False) as proc:
            assert proc.popen.stdin is not None
            try:
                proc.popen.stdin.write(np.ascontiguousarray(frames).tobytes())
            except BrokenPipeError:
                pass  # reported through the exit status below
            finally:
                proc.popen.stdin.close()
            code = proc.wait()
            if code != 0 or proc.timed_out:
                tmp_out.unlink(missing_ok=True)
                raise MediaError(ErrorCode.MEDIA_TIMEOUT if proc.timed_out else ErrorCode.CORRUPT_MEDIA,
                                 f"encoding {out.name} failed: {proc.stderr_text()[-500:]}")
    tmp_out.replace(out)
    return out
