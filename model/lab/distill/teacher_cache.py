"""The teacher runs once per video: its soft masks, the sampled frames and their sound, cached on disk.

Layout of a cache folder::

    manifest.json        {"version", "videos": {relative path: entry}}, rewritten atomically after each video
    clips/<name>.npz     one compressed file per video (np.savez_compressed):
                           frames       uint8 [n, S, S, 3]  the student's inputs (S = the student's side)
                           log_mel      float32 [n, 1, 96, 64] the sound each frame hears
                           pts_s        float64 [n]
                           teacher      float16 [n, K, L, L] the teacher's logits, bilinearly resized to L

An entry's `key` is sha256 of (teacher weights fingerprint, sha256 of the video's bytes, the preprocessing:
student side, teacher side, sampling rate and cap, logit side, cache format). A video whose key is unchanged
is reused without decoding it or calling the teacher; a changed key (new teacher, edited video, other
sampling) labels that video again, and only that one. A video the decoder refuses is reported with its
error code and skipped; the run fails only when no video at all could be labelled.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from model.errors import ConfigError

CACHE_FORMAT = 1
MANIFEST = "manifest.json"
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".ts", ".mpg", ".mpeg", ".flv", ".3gp", ".ogv")


class Teacher(Protocol):
    """What the cache needs of a teacher (`model.lab.distill.teacher.ModelTeacher` is the real one)."""

    fingerprint: str
    input_size: int
    num_classes: int

    def __call__(self, frames: np.ndarray, log_mel: np.ndarray) -> torch.Tensor: ...


class Decoded(Protocol):
    """What the cache needs of a decoded video (`worker.distill_inputs.DecodedClip`)."""

    frames: dict[int, np.ndarray]
    log_mel: np.ndarray
    pts_s: np.ndarray
    decoded: int


Decode = Callable[[Path, Sequence[int]], Decoded]


def default_logit_size(teacher_side: int) -> int:
    """The side L at which the teacher's logits are kept: a quarter of its input, at least 64 (never above
    the input): 64 for 128- and 224-pixel models, 128 for 512."""
    return min(teacher_side, max(64, teacher_side // 4))


def find_videos(folder: str | Path) -> list[Path]:
    """Every file under `folder` (recursively) whose suffix is a video container's, sorted. ConfigError when
    the folder does not exist or holds none (the decoder decides later whether each really is a video)."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"--videos {folder}: not a folder")
    videos = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise ConfigError(f"--videos {folder}: no video file ({', '.join(VIDEO_SUFFIXES)}) under it")
    return videos


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class LabelReport:
    """What one labelling pass did: `entries` (relative path -> manifest entry) of every usable video,
    `labelled` / `reused` (relative paths), `refused` (relative path -> "code: message"), frames the teacher
    labelled in this pass and its seconds (decode time apart)."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    labelled: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    frames_labelled: int = 0
    teacher_seconds: float = 0.0
    decode_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        frames = sum(e["frames"] for e in self.entries.values())
        return {"videos": len(self.entries), "frames": frames, "labelled_videos": len(self.labelled),
                "reused_videos": len(self.reused), "refused": self.refused,
                "frames_labelled_now": self.frames_labelled, "teacher_seconds_now": round(self.teacher_seconds, 2),
                "decode_seconds_now": round(self.decode_seconds, 2),
                "teacher_seconds_cached": round(sum(e["teacher_seconds"] for e in self.entries.values()), 2)}


class TeacherCache:
    """The cache folder of one distillation (see the module docstring)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.manifest_path = self.folder / MANIFEST
        self.manifest = self._read_manifest()

    def _read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.is_file():
            return {"version": CACHE_FORMAT, "videos": {}}
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {"version": CACHE_FORMAT, "videos": {}}  # unreadable: everything is labelled again
        if manifest.get("version") != CACHE_FORMAT or not isinstance(manifest.get("videos"), dict):
            return {"version": CACHE_FORMAT, "videos": {}}
        return manifest

    def _write_manifest(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.manifest_path.with_name(MANIFEST + ".partial")
        tmp.write_text(json.dumps(self.manifest, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.manifest_path)

    def clip_path(self, entry: dict[str, Any]) -> Path:
        """Where an entry's arrays live: `<folder>/clips/<entry["file"]>`."""
        return self.folder / "clips" / entry["file"]

    def load(self, entry: dict[str, Any]) -> dict[str, np.ndarray]:
        """The arrays of one entry (see the module docstring)."""
        with np.load(self.clip_path(entry)) as data:
            return {name: data[name] for name in data.files}

    def label(self, videos: Sequence[Path], root: Path, teacher: Teacher, decode: Decode, *, student_size: int,
              sampling: dict[str, Any], logit_size: int | None = None,
              on_video: Callable[[int, int, str], None] | None = None) -> LabelReport:
        """Make sure every video of `videos` (files under `root`) has an up-to-date entry; label what is
        missing or stale. `sampling` is recorded in the key (the decoder applies it). Returns a LabelReport.

        Raises ConfigError when not one video could be decoded."""
        logit_size = logit_size or default_logit_size(teacher.input_size)
        preprocessing = {"student_size": int(student_size), "teacher_size": int(teacher.input_size),
                         "sampling": sampling, "logit_size": int(logit_size), "format": CACHE_FORMAT}
        report = LabelReport()
        known: dict[str, Any] = self.manifest["videos"]
        for index, video in enumerate(videos):
            rel = video.relative_to(root).as_posix()
            key = hashlib.sha256(json.dumps({"teacher": teacher.fingerprint, "video": file_sha256(video),
                                             "preprocessing": preprocessing}, sort_keys=True).encode()).hexdigest()
            entry = known.get(rel)
            if entry is not None and entry.get("key") == key and self.clip_path(entry).is_file():
                report.entries[rel] = entry
                report.reused.append(rel)
            else:
                try:
                    entry = self._label_one(video, rel, key, teacher, decode, student_size, logit_size, report)
                except Exception as exc:  # a refused video (MediaError) is reported and skipped; bugs propagate
                    code = getattr(exc, "code", None)
                    if code is None:
                        raise
                    report.refused[rel] = f"{getattr(code, 'value', code)}: {exc}"
                    known.pop(rel, None)
                    continue
                known[rel] = entry
                report.entries[rel] = entry
                report.labelled.append(rel)
                self._write_manifest()
            if on_video is not None:
                on_video(index + 1, len(videos), rel)
        if not report.entries:
            detail = "; ".join(f"{k}: {v}" for k, v in list(report.refused.items())[:3])
            raise ConfigError(f"no video could be labelled ({detail})")
        return report

    def _label_one(self, video: Path, rel: str, key: str, teacher: Teacher, decode: Decode, student_size: int,
                   logit_size: int, report: LabelReport) -> dict[str, Any]:
        started = time.perf_counter()
        clip = decode(video, (teacher.input_size, student_size))
        report.decode_seconds += time.perf_counter() - started
        started = time.perf_counter()
        logits = teacher(clip.frames[teacher.input_size], clip.log_mel)  # [n, K, S, S]
        seconds = time.perf_counter() - started
        report.teacher_seconds += seconds
        report.frames_labelled += int(logits.shape[0])
        small = F.interpolate(logits.float(), size=(logit_size, logit_size), mode="bilinear", align_corners=False)
        name = f"{hashlib.sha256(rel.encode()).hexdigest()[:16]}-{key[:16]}.npz"
        entry = {"key": key, "file": name, "frames": int(logits.shape[0]), "decoded_frames": int(clip.decoded),
                 "teacher_seconds": round(seconds, 4), "num_classes": int(logits.shape[1])}
        path = self.clip_path(entry)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".partial.npz")
        np.savez_compressed(tmp, frames=clip.frames[student_size], log_mel=clip.log_mel.astype(np.float32),
                            pts_s=np.asarray(clip.pts_s, dtype=np.float64),
                            teacher=small.numpy().astype(np.float16))
        os.replace(tmp, path)
        old = self.manifest["videos"].get(rel)
        if old is not None and old.get("file") != name:
            self.clip_path(old).unlink(missing_ok=True)  # the stale labels of this video
        return entry
