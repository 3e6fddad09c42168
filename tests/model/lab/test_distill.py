"""`avs distill` (#22): serving's decode, the teacher's cache, the loss, a few real distillation steps.

Real ffmpeg on real clips (`avs synth` mp4s, 4.8 s at 10 frames/s), the shipped demo checkpoint as the
teacher (a trained model), a student trained for a few steps on the CPU. The teacher is wrapped to count its
calls: the cache must not call it again (counted, never timed).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from model.build import build_model
from model.checkpoint import load_checkpoint, read_checkpoint_info
from model.lab.distill.dataset import CachedFrames, split_videos
from model.lab.distill.loss import disagreement, distill_loss
from model.lab.distill.report import agreement
from model.lab.distill.teacher import ModelTeacher
from model.lab.distill.teacher_cache import TeacherCache, find_videos
from model.lab.distill.training import DistillConfig, distill, student_config
from model.lab.train_parts import seed_everything
from model.lab.training import TrainConfig
from model.modeling.audio_frontend import SAMPLE_RATE, example_index_for_time, waveform_to_examples
from model.variants import DEMO_CHECKPOINT
from worker.core.media.probe import probe_media
from worker.distill_inputs import SamplingConfig, decode_for_distill, evenly_spaced
from worker.media.audio import read_audio
from worker.media.samples import make_video
from worker.synthetic_dataset import write_synthetic_dataset

SAMPLING = SamplingConfig(fps=2.0, max_frames=4)


class CountingTeacher:
    """The real teacher, counting the frames it is asked to label."""

    def __init__(self, inner: ModelTeacher) -> None:
        self.inner = inner
        self.calls = 0
        self.frames = 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def __call__(self, frames: np.ndarray, log_mel: np.ndarray) -> torch.Tensor:
        self.calls += 1
        self.frames += int(frames.shape[0])
        return self.inner(frames, log_mel)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("distill-clips")
    write_synthetic_dataset(root / "synth", subset="s4", videos=3, seed=21, size=64, mp4=True)
    videos = root / "videos"
    (videos / "sub").mkdir(parents=True)
    mp4s = sorted((root / "synth" / "mp4").glob("*.mp4"))
    shutil.copy(mp4s[0], videos / mp4s[0].name)
    shutil.copy(mp4s[1], videos / mp4s[1].name)
    shutil.copy(mp4s[2], videos / "sub" / mp4s[2].name)  # found recursively
    (videos / "notes.txt").write_text("not a video")  # ignored: not a video suffix
    return videos


@pytest.fixture(scope="module")
def teacher() -> ModelTeacher:
    return ModelTeacher.from_checkpoint(DEMO_CHECKPOINT)


def _decode(path: Path, sizes, *, sampling: SamplingConfig = SAMPLING):
    return decode_for_distill(path, sizes, sampling)


def test_decode_samples_frames_and_pairs_each_with_the_sound_serving_would_give(clips: Path) -> None:
    video = find_videos(clips)[0]
    clip = decode_for_distill(video, (128, 64), SAMPLING)
    assert set(clip.frames) == {128, 64}
    assert clip.frames[128].shape == (4, 128, 128, 3)
    assert clip.frames[64].shape == (4, 64, 64, 3)
    assert clip.decoded == 10  # 4.8 s at 2 frames/s
    assert np.allclose(clip.pts_s, [0.0, 1.5, 3.0, 4.5])  # the cap: first to last, evenly spaced
    # the pipeline's rule: the 0.96 s window of each frame's time, from the whole sound track
    wave = read_audio(probe_media(video), sample_rate=SAMPLE_RATE)
    examples = waveform_to_examples(torch.as_tensor(wave), pad_end=True).numpy()
    for row, t in zip(clip.log_mel, clip.pts_s, strict=True):
        assert np.array_equal(row, examples[example_index_for_time(t)])
    assert list(evenly_spaced(10, 4)) == [0, 3, 6, 9]
    assert list(evenly_spaced(3, 4)) == [0, 1, 2]


def test_second_labelling_reuses_the_cache_and_a_changed_video_is_labelled_again(
        clips: Path, teacher: ModelTeacher, tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    shutil.copytree(clips, videos)
    counting = CountingTeacher(teacher)
    cache = TeacherCache(tmp_path / "cache")
    first = cache.label(find_videos(videos), videos, counting, _decode, student_size=128,
                        sampling=SAMPLING.to_dict())
    assert counting.calls == 3
    assert first.frames_labelled == 12
    assert len(first.labelled) == 3
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert sorted(manifest["videos"]) == sorted(first.entries)
    arrays = cache.load(next(iter(first.entries.values())))
    assert arrays["teacher"].dtype == np.float16
    assert arrays["teacher"].shape == (4, 1, 64, 64)
    assert arrays["frames"].shape == (4, 128, 128, 3)

    again = TeacherCache(tmp_path / "cache").label(find_videos(videos), videos, counting, _decode,
                                                   student_size=128, sampling=SAMPLING.to_dict())
    assert counting.calls == 3
    assert again.frames_labelled == 0
    assert len(again.reused) == 3

    changed = find_videos(videos)[0]
    make_video(changed, duration_s=1.0, size=(96, 64), fps=10, tone_hz=660.0)
    third = TeacherCache(tmp_path / "cache").label(find_videos(videos), videos, counting, _decode,
                                                   student_size=128, sampling=SAMPLING.to_dict())
    rel = changed.relative_to(videos).as_posix()
    assert third.labelled == [rel]
    assert counting.calls == 4
    assert len(third.reused) == 2
    assert len(list((tmp_path / "cache" / "clips").glob("*.npz"))) == 3  # the stale labels were removed

    # other sampling settings are another key: everything is labelled again
    TeacherCache(tmp_path / "cache").label(find_videos(videos), videos, counting,
                                           partial(_decode, sampling=SamplingConfig(fps=1.0, max_frames=4)),
                                           student_size=128, sampling={"fps": 1.0, "max_frames": 4})
    assert counting.calls == 7


def test_a_refused_file_is_reported_and_the_others_are_labelled(clips: Path, teacher: ModelTeacher,
                                                                tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    shutil.copytree(clips, videos)
    (videos / "broken.mp4").write_bytes(b"this is not an mp4 file at all" * 10)
    report = TeacherCache(tmp_path / "cache").label(find_videos(videos), videos, teacher, _decode,
                                                    student_size=128, sampling=SAMPLING.to_dict())
    assert len(report.entries) == 3
    assert list(report.refused) == ["broken.mp4"]
    assert report.refused["broken.mp4"].startswith("not_media")


def test_loss_is_smallest_where_student_and_teacher_agree() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(2, 1, 16, 16) * 4
    aux = torch.zeros(2, 1, 8, 8)
    same = distill_loss(teacher.clone(), aux, teacher)
    other = distill_loss(-teacher, aux, teacher)
    assert same["soft"] < other["soft"]
    assert same["hard"] < other["hard"]
    assert disagreement(teacher, teacher) == 0.0
    assert disagreement(-teacher, teacher) == 1.0
    # multi-class: the KL term is zero for identical logits, and the teacher may be cached at another size
    classes = torch.randn(2, 5, 16, 16)
    multi = distill_loss(classes.clone(), aux, classes)
    assert float(multi["soft"]) == pytest.approx(0.0, abs=1e-5)
    small = torch.nn.functional.interpolate(classes, size=(8, 8), mode="bilinear", align_corners=False)
    assert distill_loss(classes, aux, small)["loss"].isfinite()
    with pytest.raises(ValueError, match="classes"):
        distill_loss(classes, aux, teacher)


def test_a_few_steps_lower_disagreement_and_a_second_run_does_not_call_the_teacher(
        clips: Path, teacher: ModelTeacher, tmp_path: Path) -> None:
    counting = CountingTeacher(teacher)
    out = tmp_path / "student.safetensors"
    train = TrainConfig(data="", subset="distill", variant="avesformer-tiny", out=str(out), epochs=4,
                        batch_size=4, lr=2e-3, tensorboard="", seed=7)
    cfg = DistillConfig(teacher=str(DEMO_CHECKPOINT), videos=str(clips), train=train, sampling=SAMPLING.to_dict(),
                        holdout=0.0, init_from_teacher=False, measure_fps=False)
    summary = distill(cfg, decode=_decode, teacher=counting)
    assert counting.calls == 3
    assert summary["labelling"]["frames_labelled_now"] == 12
    assert summary["training"]["steps"] == 12  # 12 frames / 4 per step x 4 epochs

    cache = TeacherCache(f"{out}.cache")
    entries = cache.manifest["videos"]
    data = CachedFrames(cache, entries, sorted(entries))

    seed_everything(7)  # the student as the run started it: same seed, same variant
    before = build_model(student_config("avesformer-tiny", teacher.cfg)).eval()
    after, info = load_checkpoint(out)
    # disagreement = 1 - the AVSBench mIoU of the student's masks against the teacher's on the frames seen
    d_before = 1 - agreement(before, info.config, data)["miou"]
    d_after = 1 - agreement(after, info.config, data)["miou"]
    assert d_after < d_before - 0.1, (d_before, d_after)
    card = read_checkpoint_info(out).card
    assert card["title"].startswith("avesformer-tiny distilled from AVESFormer-tiny trained on synthetic S4")
    assert "3 unlabelled videos" in card["title"]

    again = dataclasses.replace(train, out=str(tmp_path / "again.safetensors"), max_steps=1)
    second = distill(dataclasses.replace(cfg, train=again, cache=f"{out}.cache"), decode=_decode, teacher=counting)
    assert counting.calls == 3  # not called again
    assert second["labelling"]["reused_videos"] == 3
    assert second["labelling"]["frames_labelled_now"] == 0


def test_held_out_split_is_deterministic_and_leaves_both_sides_non_empty() -> None:
    names = [f"v{i}.mp4" for i in range(10)]
    train, held = split_videos(names, 0.2)
    assert len(held) == 2
    assert set(train) | set(held) == set(names)
    assert not set(train) & set(held)
    assert set(split_videos(list(reversed(names)), 0.2)[1]) == set(held)  # by name, not by position
    assert [len(side) for side in split_videos(names[:2], 0.9)] == [1, 1]
    assert split_videos(names, 0.0) == (names, [])


def test_an_avsbench_layout_becomes_videos_without_reading_a_label(tmp_path: Path) -> None:
    from PIL import Image

    from model.lab.data import layout
    from model.lab.data.avsbench_audio import load_log_mel_pkl
    from worker.distill_layout import LAYOUT_SAMPLE_FPS, layout_videos

    data = tmp_path / "s4"
    write_synthetic_dataset(data, subset="s4", videos=2, seed=3, size=128, mp4=False)
    shutil.rmtree(data / "s4_data" / "gt_masks")  # labels gone: nothing may need them
    folder = layout_videos(data, "s4", "train", tmp_path / "videos")
    videos = find_videos(folder)
    assert len(videos) == 2
    first_bytes = videos[0].read_bytes()
    category, name = videos[0].parent.name, videos[0].stem
    clip = decode_for_distill(videos[0], (128,), SamplingConfig(fps=LAYOUT_SAMPLE_FPS, max_frames=16))
    assert clip.frames[128].shape[0] == 5  # one per still
    assert np.allclose(clip.pts_s, np.arange(5) * 0.96, atol=1e-3)
    # each still hears its own 0.96 s window: the log-mel AVSBench's loader would give it
    pkl = load_log_mel_pkl(layout.s4_audio_pkl_path(data, "train", category, name)).numpy()
    assert np.abs(clip.log_mel - pkl).max() < 0.05  # the same sound, decoded by ffmpeg instead of torchaudio
    assert np.abs(clip.log_mel - np.roll(pkl, 1, axis=0)).max() > 1.0  # and not another window
    for t in range(5):  # lossless apart from the RGB <-> YUV 4:4:4 rounding
        still = np.asarray(Image.open(layout.s4_frame_path(data, "train", category, name, t)).convert("RGB"))
        assert np.abs(clip.frames[128][t].astype(int) - still.astype(int)).mean() < 2.0
    layout_videos(data, "s4", "train", tmp_path / "again")  # bit-exact: the cache key of a clip is stable
    assert (tmp_path / "again" / category / f"{name}.mkv").read_bytes() == first_bytes


def test_a_multi_class_teacher_gives_a_multi_class_student(clips: Path, tmp_path: Path) -> None:
    from model.checkpoint import save_checkpoint
    from model.variants import get_config

    names = ("background", "circle", "square", "star")
    tcfg = get_config("avsegformer-tiny").replace(num_classes=4, class_names=names)
    torch.manual_seed(0)
    teacher_path = save_checkpoint(build_model(tcfg).eval(), tcfg, tmp_path / "teacher4.safetensors")
    out = tmp_path / "student4.safetensors"
    train = TrainConfig(data="", subset="distill", variant="avesformer-tiny", out=str(out), epochs=1,
                        batch_size=4, max_steps=2, tensorboard="")
    cfg = DistillConfig(teacher=str(teacher_path), videos=str(clips), train=train, sampling=SAMPLING.to_dict(),
                        holdout=0.34, measure_fps=False)
    summary = distill(cfg, decode=_decode)
    _model, info = load_checkpoint(out)
    assert info.config.num_classes == 4
    assert info.config.class_names == names
    assert summary["student"]["num_classes"] == 4
    assert summary["training"]["init_report"]["taken"]["tensors"] > 0  # the teacher's shared tensors
    assert set(summary["agreement"]) == {"normal", "silence", "shuffle"}
    assert 0.0 <= summary["agreement"]["normal"]["miou"] <= 1.0
    arrays = TeacherCache(f"{out}.cache").load(next(iter(TeacherCache(f"{out}.cache").manifest["videos"].values())))
    assert arrays["teacher"].shape[1] == 4  # the cache keeps every class's logits


def test_ground_truth_joins_the_loss_only_when_asked(tmp_path: Path, teacher: ModelTeacher) -> None:
    from model.lab.distill.ground_truth import layout_masks
    from worker.distill_layout import LAYOUT_SAMPLE_FPS, layout_videos

    data = tmp_path / "s4"
    write_synthetic_dataset(data, subset="s4", videos=2, seed=4, size=128, mp4=False)
    videos = layout_videos(data, "s4", "train", tmp_path / "videos")
    sampling = SamplingConfig(fps=LAYOUT_SAMPLE_FPS, max_frames=16)
    rel = find_videos(videos)[0].relative_to(videos).as_posix()
    masks, valid = layout_masks(data, "s4", "train", rel, np.arange(5) * 0.96, 128)
    assert bool(valid.all())
    assert masks.shape == (5, 128, 128)
    assert 0 < float(masks.mean()) < 0.5  # a sounding shape, not an empty or full mask

    rows = {}
    for weight in (0.0, 1.0):
        out = tmp_path / f"student-{weight}.safetensors"
        train = TrainConfig(data="", subset="distill", variant="avesformer-tiny", out=str(out), epochs=1,
                            batch_size=5, max_steps=1, tensorboard="")
        cfg = DistillConfig(teacher=str(DEMO_CHECKPOINT), videos=str(videos), train=train,
                            sampling=sampling.to_dict(), holdout=0.0, measure_fps=False, init_from_teacher=False,
                            gt_data=str(data), gt_subset="s4", gt_split="train", gt_weight=weight,
                            cache=str(tmp_path / "cache"))
        distill(cfg, decode=partial(_decode, sampling=sampling), teacher=teacher)
        rows[weight] = json.loads(Path(f"{out}.log.jsonl").read_text().splitlines()[0])
    assert "gt" not in rows[0.0]
    assert rows[1.0]["gt"] > 0
    assert rows[1.0]["loss"] == pytest.approx(rows[0.0]["loss"] + rows[1.0]["gt"], abs=1e-3)


def test_the_cli_distills_and_refuses_bad_input_with_a_code(clips: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(root)}

    def avs(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "app.cli", "distill", *args, "--json"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)

    out = tmp_path / "s.safetensors"
    run = avs("--teacher", str(DEMO_CHECKPOINT), "--videos", str(clips), "--out", str(out), "--max-frames", "2",
              "--max-steps", "1", "--batch-size", "2", "--holdout", "0.34", "--no-fps", "--tensorboard", "")
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout)
    assert summary["labelling"]["frames"] == 6  # 3 videos x the cap of 2
    assert summary["sampling"] == {"fps": 2.0, "max_frames": 2}
    assert summary["heldout_videos"] == 1
    assert Path(summary["report"]).is_file()

    missing = avs("--teacher", str(DEMO_CHECKPOINT), "--videos", str(tmp_path / "nowhere"), "--out", str(out))
    assert missing.returncode == 2
    assert json.loads(missing.stdout)["error"]["code"] == "invalid_config"
    no_layout = avs("--teacher", str(DEMO_CHECKPOINT), "--videos", str(clips), "--gt-weight", "1", "--out", str(out))
    assert no_layout.returncode == 2
    assert "--gt-weight needs --data" in no_layout.stderr


def test_two_gloo_processes_distill_from_one_labelling(clips: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                         "MASTER_"))},
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    out = tmp_path / "ddp.safetensors"
    run = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2",
                          "-m", "app.cli", "distill", "--teacher", str(DEMO_CHECKPOINT), "--videos", str(clips),
                          "--out", str(out), "--max-frames", "2", "--holdout", "0", "--max-steps", "2",
                          "--batch-size", "2", "--no-fps", "--tensorboard", "", "--json"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])  # rank 0 alone prints the summary
    assert summary["training"]["world_size"] == 2
    assert summary["training"]["global_batch"] == 4
    assert summary["labelling"]["frames_labelled_now"] == 6
    manifest = json.loads((tmp_path / "ddp.safetensors.cache" / "manifest.json").read_text())
    assert len(manifest["videos"]) == 3
    assert len(list((tmp_path / "ddp.safetensors.cache" / "clips").glob("*.npz"))) == 3
