"""`avs synth` -> `avs train` -> `avs eval` -> `avs segment` + `avs score`, end to end on a tiny dataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model.lab.data.avsbench import AVSSDataset, MS3Dataset, S4Dataset
from model.lab.data.synthetic_scenes import CLASS_NAMES
from worker.core.media.probe import count_frames
from worker.masks import read_mask_lines

AVS = str(Path(sys.executable).with_name("avs"))


def _avs(*args: str, timeout: int = 600) -> dict:
    result = subprocess.run([AVS, *args, "--json"], capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    _avs("synth", "--out", str(root), "--subset", "s4", "--videos", "3", "--seed", "1", "--size", "96")
    _avs("synth", "--out", str(root), "--subset", "s4", "--videos", "2", "--seed", "2", "--split", "test",
         "--size", "96")
    return root


def test_synth_writes_the_avsbench_layout_and_playable_clips(dataset: Path) -> None:
    train, test = S4Dataset(dataset, "train", 64), S4Dataset(dataset, "test", 64)
    assert (len(train), len(test)) == (3, 2)
    clip = S4Dataset(dataset, "train", 64, all_train_masks=True)[0]
    assert clip["frames"].shape == (5, 3, 64, 64)
    assert clip["audio"].shape == (5, 1, 96, 64)
    assert bool(clip["gt_valid"].all())
    assert clip["masks"].sum() > 0
    assert not bool(S4Dataset(dataset, "train", 64)[0]["gt_valid"][1:].any())  # AVSBench rule kept by default
    videos = sorted((dataset / "mp4").glob("*.mp4"))
    assert len(videos) == 5
    gt = list(read_mask_lines(videos[0].with_suffix(".gt.ndjson")))
    assert len(gt) == count_frames(videos[0]) == 48  # 5 segments x 0.96 s at 10 frames/s
    assert gt[0]["size"] == [96, 96]


@pytest.mark.parametrize("subset", ["ms3", "avss"])
def test_synth_other_subsets_load(subset: str, tmp_path: Path) -> None:
    _avs("synth", "--out", str(tmp_path), "--subset", subset, "--videos", "2", "--seed", "0", "--size", "64",
         "--no-mp4")
    data = MS3Dataset(tmp_path, "train", 64) if subset == "ms3" else AVSSDataset(tmp_path, "train", 64)
    clip = data[0]
    frames = 5 if subset == "ms3" else 10
    assert clip["masks"].shape == (frames, 64, 64)
    if subset == "avss":
        assert int(clip["masks"].max()) < len(CLASS_NAMES)
        assert int(clip["masks"].max()) > 0


def test_train_resume_eval_segment_score(dataset: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "tiny.safetensors"
    common = ["train", "--data", str(dataset), "--subset", "s4", "--variant", "avesformer-tiny", "--out", str(ckpt),
              "--batch-size", "2", "--lr", "1e-3", "--size", "64"]
    first = _avs(*common, "--epochs", "1")
    assert first["steps"] == 2  # 3 clips, 2 per step
    resumed = _avs(*common, "--epochs", "2")
    assert resumed["steps"] == 4  # continued from the saved state, not from scratch
    log = [json.loads(line) for line in ckpt.with_name(ckpt.name + ".log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == [1, 1, 2, 2]
    assert ckpt.exists()

    normal = _avs("eval", "--data", str(dataset), "--subset", "s4", "--checkpoint", str(ckpt), "--size", "64")
    silent = _avs("eval", "--data", str(dataset), "--subset", "s4", "--checkpoint", str(ckpt), "--size", "64",
                  "--audio", "silence")
    assert {"miou", "fscore", "frames"} <= set(normal)
    assert normal["frames"] == 10  # 2 test clips x 5 labelled frames
    assert 0.0 <= normal["miou"] <= 1.0
    assert silent["audio"] == "silence"

    clip = sorted((dataset / "mp4").glob("syn_s4_2_*.mp4"))[0]
    summary = _avs("segment", str(clip), "--out", str(tmp_path / "seg"), "--checkpoint", str(ckpt))
    assert summary["frames"] == 48
    score = _avs("score", str(tmp_path / "seg" / "masks.ndjson"), str(clip.with_suffix(".gt.ndjson")))
    assert score["frames"] == 48
    assert score["frames_missing"] == 0
    assert 0.0 <= score["miou"] <= 1.0


def test_train_init_starts_from_a_checkpoint(dataset: Path, tmp_path: Path) -> None:
    import torch

    from model.build import build_model
    from model.checkpoint import load_checkpoint, save_checkpoint
    from model.config import with_overrides
    from model.errors import CheckpointError
    from model.lab.training import TrainConfig, train
    from model.variants import get_config

    # weights that differ from what train()'s own seed would build, from a config that differs from the
    # variant only where no tensor changes (the mask head's upsampling order)
    torch.manual_seed(7)
    default = get_config("avesformer-tiny").head.upsample_last
    start_cfg = with_overrides(get_config("avesformer-tiny"), [f"head.upsample_last={str(not default).lower()}"])
    start = build_model(start_cfg)
    save_checkpoint(start, start_cfg, tmp_path / "start.safetensors")
    cfg = TrainConfig(data=str(dataset), subset="s4", variant="avesformer-tiny", out=str(tmp_path / "ft.safetensors"),
                      init=str(tmp_path / "start.safetensors"), lr=0.0, size=64, batch_size=2, max_steps=1)
    summary = train(cfg)
    assert summary["init"] == cfg.init
    assert summary["init_report"]["config_differences"] == [f"head.upsample_last: {not default!r} != {default!r}"]
    assert summary["init_report"]["fresh"]["tensors"] == 0  # the same variant: every tensor taken
    tuned, info = load_checkpoint(cfg.out, variant="avesformer-tiny")
    assert info.config.head.upsample_last is default  # the run's own config, not the initial one
    # lr 0: one step changes no parameter, so the output holds exactly the initial weights
    for (name, before), after in zip(start.named_parameters(), tuned.parameters(), strict=True):
        assert torch.equal(before, after), name

    # another variant: what fits by name and shape is taken, the rest starts fresh and is listed (issue #20)
    other = train(TrainConfig(data=str(dataset), subset="s4", variant="avsegformer-tiny", out=str(tmp_path / "x.st"),
                              init=str(tmp_path / "start.safetensors"), size=64, max_steps=1))["init_report"]
    assert other["taken"]["tensors"] > 0
    assert other["fresh"]["tensors"] > 0
    assert any(key.startswith("decoder.") for key in other["fresh_keys"])  # AVSegFormer's own decoder
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError):  # not our checkpoint: a clear error, nothing half-loaded
        train(TrainConfig(data=str(dataset), subset="s4", variant="avesformer-tiny", out=str(tmp_path / "y.st"),
                          init=str(tmp_path / "empty"), size=64, max_steps=1))


def test_train_config_overrides_reach_the_checkpoint(dataset: Path, tmp_path: Path) -> None:
    from model.checkpoint import read_checkpoint_info
    from model.errors import ConfigError
    from model.lab.training import TrainConfig, train

    cfg = TrainConfig(data=str(dataset), subset="s4", variant="avesformer-tiny", out=str(tmp_path / "o.safetensors"),
                      overrides=("head.mlp_hidden=32", "decoder.num_queries=8"), size=64, batch_size=2,
                      max_steps=1)
    assert train(cfg)["overrides"] == list(cfg.overrides)
    stored = read_checkpoint_info(cfg.out).config
    assert stored.head.mlp_hidden == 32
    assert stored.decoder.num_queries == 8
    with pytest.raises(ConfigError, match=r"no field 'head\.upsample'"):
        train(TrainConfig(data=str(dataset), subset="s4", variant="avesformer-tiny", out=str(tmp_path / "b.st"),
                          overrides=("head.upsample=true",), size=64, max_steps=1))
