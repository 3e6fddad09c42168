"""`avs train --init`: every tensor whose name and shape fit is taken, the rest starts fresh, and both are said."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app.cli import main
from model.build import build_model
from model.checkpoint import save_checkpoint
from model.errors import CheckpointError
from model.lab.init_weights import describe_init, initialise_from_checkpoint
from model.variants import get_config
from worker.synthetic_dataset import write_synthetic_dataset


def _checkpoint(tmp_path: Path, variant: str, seed: int = 1) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    cfg = get_config(variant)
    model = build_model(cfg)
    return save_checkpoint(model, cfg, tmp_path / f"{variant}.safetensors"), model.state_dict()


def test_another_variant_takes_what_fits_and_says_what_starts_fresh(tmp_path: Path) -> None:
    """The AVSegFormer baseline -> AVESFormer on the same backbone: backbone, audio, neck and head convs carry over."""
    path, source = _checkpoint(tmp_path, "avsegformer-tiny")
    torch.manual_seed(2)
    cfg = get_config("avesformer-tiny")
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = initialise_from_checkpoint(model, cfg, path)
    after = model.state_dict()
    taken = set(report["taken_groups"])
    assert {"visual_encoder", "audio_encoder", "audio_proj", "neck.in_proj", "neck.level_embed",
            "head.lateral_conv", "head.out_conv", "head.fc"} <= taken
    assert not any(group.startswith("decoder.") for group in taken)
    for key in ("visual_encoder.body.patch_embed.proj.weight", "audio_proj.weight", "neck.level_embed",
                "head.fc.3.weight", "head.fusion_block.q_proj.weight"):
        assert torch.equal(after[key], source[key]), key
    # what the checkpoint lacks (the gate's q/kv biases: AVESFormer has them, the official-exact baseline not)
    # and the decoder keep their fresh values
    assert "head.fusion_block.q_proj.bias" in report["fresh_keys"]
    assert all(torch.equal(after[k], before[k]) for k in report["fresh_keys"])
    assert any(k.startswith("decoder.") for k in report["fresh_keys"])
    assert report["taken"]["tensors"] + report["fresh"]["tensors"] == len(after)
    assert any("decoder.query_generator" in k for k in report["unused_keys"])
    text = describe_init(report)
    assert "took" in text
    assert "starts fresh" in text
    assert "visual_encoder" in text


def test_the_same_variant_takes_everything(tmp_path: Path) -> None:
    path, source = _checkpoint(tmp_path, "avesformer-tiny")
    cfg = get_config("avesformer-tiny")
    torch.manual_seed(3)
    model = build_model(cfg)
    report = initialise_from_checkpoint(model, cfg, path)
    assert report["fresh"]["tensors"] == 0
    assert report["unused_keys"] == []
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.items())


def test_nothing_fitting_is_an_error(tmp_path: Path) -> None:
    path, _ = _checkpoint(tmp_path, "avesformer-tiny")
    model = torch.nn.Linear(3, 4)  # nothing of an AVS model
    with pytest.raises(CheckpointError, match="not one tensor"):
        initialise_from_checkpoint(model, get_config("avesformer-tiny"), path)


def test_avs_train_init_reports_taken_and_fresh(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    write_synthetic_dataset(data, subset="s4", videos=2, seed=1, size=64, mp4=False)
    init, _ = _checkpoint(tmp_path, "avsegformer-tiny")
    out = tmp_path / "run.safetensors"
    code = main(["train", "--data", str(data), "--subset", "s4", "--variant", "avesformer-tiny", "--out", str(out),
                 "--size", "64", "--epochs", "1", "--max-steps", "1", "--batch-size", "2", "--tensorboard", "",
                 "--init", str(init), "--json"])
    assert code == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    report = summary["init_report"]
    assert report["variant"] == "avsegformer-tiny"
    assert report["taken"]["tensors"] > 0
    assert report["fresh"]["tensors"] > 0
    assert "starts fresh" in captured.err  # said before the first step
