"""`avs synth`: write synthetic audio-visual scenes as an AVSBench dataset and as playable videos.

For each clip (see `model.lab.data.synthetic_scenes` for what a scene is):
- the AVSBench layout of the subset (`model.lab.data.layout`): one frame per 0.96 s segment, taken at the
  segment's middle, its mask (binary PNG, or colour label for AVSS), the clip's wav and log-mel
  examples, and the metadata csv row;
- `mp4/<name>.mp4` (H.264 + AAC, constant frame rate) and `mp4/<name>.gt.ndjson`: one line per video
  frame with the same fields as the service's `masks.ndjson`, so a clip can go through `avs segment`
  or `POST /segment` and be scored against its ground truth.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from model.lab.data import files, layout
from model.lab.data.synthetic_scenes import (
    CATEGORIES,
    CLASS_NAMES,
    SEGMENT_S,
    Scene,
    ground_truth,
    make_scene,
    render_audio,
    render_frame,
)
from model.modeling.audio_frontend import SAMPLE_RATE, waveform_to_examples
from worker.masks import MaskWriter, mask_records
from worker.media.encode import encode_mp4

VIDEO_FPS = 10  # playable clips: 10 frames/s keeps files small; every frame has ground truth


def write_synthetic_dataset(out: str | Path, *, subset: str, videos: int, seed: int, split: str = "train",
                            size: int = 224, fps: int = VIDEO_FPS, mp4: bool = True,
                            on_clip: Callable[[int], None] | None = None) -> dict[str, Any]:
    root = Path(out)
    layout.check_split(split)
    scenes = [make_scene(subset, seed, i) for i in range(videos)]
    palette = layout.avss_palette(len(CLASS_NAMES)) if subset == "avss" else None
    for i, scene in enumerate(scenes):
        audio = render_audio(scene)
        _write_avsbench_clip(root, scene, audio, split=split, size=size, palette=palette)
        if mp4:
            _write_playable_clip(root / "mp4", scene, audio, size=size, fps=fps)
        if on_clip is not None:
            on_clip(i + 1)
    _write_metadata(root, subset, scenes, split)
    return {"out": str(root), "subset": subset, "split": split, "videos": videos, "seed": seed,
            "segments_per_clip": scenes[0].num_segments if scenes else 0, "segment_s": SEGMENT_S,
            "mp4_fps": fps if mp4 else None, "classes": list(CLASS_NAMES if subset == "avss" else ("sounding",))}


def _segment_frames(scene: Scene, size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    frames, masks = [], []
    for i in range(scene.num_segments):
        t = SEGMENT_S * (i + 0.5)  # the middle of the segment: its sound is unambiguous there
        frame, ids = render_frame(scene, t, (size, size))
        frames.append(frame)
        masks.append(ground_truth(scene, ids, t))
    return frames, masks


def _write_avsbench_clip(root: Path, scene: Scene, audio: np.ndarray, *, split: str, size: int,
                         palette: np.ndarray | None) -> None:
    import torch

    frames, masks = _segment_frames(scene, size)
    examples = waveform_to_examples(torch.from_numpy(audio), pad_end=True)[: scene.num_segments]
    name = scene.name
    if scene.subset == "s4":
        category = _s4_category(scene)
        for t, (frame, mask) in enumerate(zip(frames, masks, strict=True)):
            files.write_frame(layout.s4_frame_path(root, split, category, name, t), frame)
            files.write_binary_mask(layout.s4_mask_path(root, split, category, name, t), mask)
        files.write_wav(layout.s4_audio_wav_path(root, split, category, name), audio, SAMPLE_RATE)
        files.write_log_mel(layout.s4_audio_pkl_path(root, split, category, name), examples)
    elif scene.subset == "ms3":
        for t, (frame, mask) in enumerate(zip(frames, masks, strict=True)):
            files.write_frame(layout.ms3_frame_path(root, name, t), frame)
            files.write_binary_mask(layout.ms3_mask_path(root, split, name, t), mask)
        files.write_wav(layout.ms3_audio_wav_path(root, split, name), audio, SAMPLE_RATE)
        files.write_log_mel(layout.ms3_audio_pkl_path(root, split, name), examples)
    else:
        assert palette is not None
        for t, (frame, mask) in enumerate(zip(frames, masks, strict=True)):
            files.write_frame(layout.avss_frame_path(root, "v2", name, t), frame)
            files.write_colour_label(layout.avss_label_path(root, "v2", name, t), mask, palette)
        files.write_wav(layout.avss_audio_path(root, "v2", name), audio, SAMPLE_RATE)


def _s4_category(scene: Scene) -> str:
    """AVSBench files S4 clips under the sounding category; ours is the first segment's source."""
    return CATEGORIES[scene.objects[scene.sounding[0][0]].category]


def _write_playable_clip(directory: Path, scene: Scene, audio: np.ndarray, *, size: int, fps: int) -> None:
    count = round(scene.duration_s * fps)
    frames = np.empty((count, size, size, 3), dtype=np.uint8)
    masks = np.empty((count, size, size), dtype=np.uint8)
    pts = []
    for k in range(count):
        t = k / fps
        frames[k], ids = render_frame(scene, t, (size, size))
        masks[k] = ground_truth(scene, ids, t)
        pts.append(t)
    encode_mp4(frames, audio, fps=fps, sample_rate=SAMPLE_RATE, out=directory / f"{scene.name}.mp4")
    names = CLASS_NAMES if scene.subset == "avss" else ("sounding",)
    writer = MaskWriter(directory / f"{scene.name}.gt.ndjson")
    writer.write(mask_records(masks, start_index=0, pts_s=pts, class_names=names))
    writer.commit()


def _write_metadata(root: Path, subset: str, scenes: list[Scene], split: str) -> None:
    """Write (or extend: other splits already there are kept) the subset's metadata csv."""
    if subset == "s4":
        path, columns = layout.s4_csv_path(root), layout.S4_CSV_COLUMNS
        new = [{"name": s.name, "start": 0, "category": _s4_category(s), "split": split} for s in scenes]
    elif subset == "ms3":
        path, columns = layout.ms3_csv_path(root), layout.MS3_CSV_COLUMNS
        new = [{"video_id": s.name, "split": split} for s in scenes]
    else:
        path, columns = layout.avss_csv_path(root), layout.AVSS_CSV_COLUMNS
        new = [{"vid": s.name, "uid": s.name, "s_min": 0, "s_sec": 0,
                "a_obj": "_".join(sorted({CATEGORIES[o.category] for o in s.objects})), "split": split,
                "label": "v2"} for s in scenes]
        files.write_label2idx(layout.avss_label2idx_path(root), CLASS_NAMES)
    key = "uid" if subset == "avss" else columns[0]
    names = {row[key] for row in new}
    kept: list[dict[str, object]] = []
    if path.exists():
        header, rows = files.read_csv_rows(path)
        kept = [dict(zip(header, row, strict=False)) for row in rows if row[header.index(key)] not in names]
    files.write_csv(path, columns, [*kept, *new])
