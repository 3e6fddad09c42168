"""Model cards and preprocessing carried by checkpoints; the shipped demo checkpoint's card and weights."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from app.cli import main
from model.build import build_model
from model.card import DEMO_CARD, rewrite_card
from model.checkpoint import load_checkpoint, read_checkpoint_info, save_checkpoint
from model.predictor import load_predictor
from model.variants import DEFAULT_VARIANT, DEMO_CHECKPOINT, get_config
from worker.core.model_card import CardError, read_model_card

REPO = Path(__file__).resolve().parents[2]
# sha256 of the demo checkpoint's tensor bytes (everything after the header) as trained and committed; the
# card was added later by rewriting the header only.
DEMO_TENSOR_SHA256 = "8ceb46578bcc5a2dfc5c8dfdf7e5c1b6861f86e2a6c5febd11b25a54801438d2"
CARD = {"title": "test", "metrics": {"mIoU": 0.5, "status": "measured here"}, "licence": "unstated"}


def _tensor_bytes_sha256(path: Path) -> str:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + length:]).hexdigest()


def _tiny_checkpoint(tmp_path: Path, **config_changes) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    cfg = get_config("avesformer-tiny").replace(**config_changes)
    model = build_model(cfg)
    return save_checkpoint(model, cfg, tmp_path / "tiny.safetensors", card=CARD), model


def test_card_and_preprocessing_survive_save_and_load(tmp_path: Path) -> None:
    path, _ = _tiny_checkpoint(tmp_path, input_size=64, pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.25, 0.25, 0.25),
                               class_names=("drum",))
    info = read_checkpoint_info(path)
    assert info.card == CARD
    assert (info.config.input_size, info.config.pixel_mean, info.config.class_names) == (64, (0.5,) * 3, ("drum",))
    header = read_model_card(path)  # the torch-free reader sees the same
    assert header["card"] == CARD
    assert header["preprocessing"] == {"input_size": 64, "pixel_mean": [0.5] * 3, "pixel_std": [0.25] * 3,
                                       "num_classes": 1, "class_names": ["drum"]}
    model, _ = load_checkpoint(path)
    assert torch.equal(model.pixel_mean.flatten(), torch.tensor([0.5] * 3))
    assert header["params"] == sum(v.numel() for v in model.state_dict().values())


def test_the_predictor_uses_the_checkpoints_input_size_and_normalisation(tmp_path: Path) -> None:
    path, model = _tiny_checkpoint(tmp_path, input_size=64, pixel_mean=(0.2, 0.3, 0.4), pixel_std=(0.5, 0.6, 0.7))
    predictor = load_predictor(checkpoint=path)
    frames = np.random.default_rng(0).integers(0, 256, (2, 96, 80, 3), dtype=np.uint8)
    emb = torch.rand(2, 128)
    logits = predictor.predict_logits(frames, emb)
    assert logits.shape == (2, 1, 64, 64)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    with torch.inference_mode():
        direct = model(x, audio_embedding=emb).mask_logits
    assert torch.allclose(logits, direct, atol=1e-6)
    # the network normalises with the checkpoint's numbers, not ImageNet's
    assert torch.equal(predictor.model.pixel_mean.flatten(), torch.tensor([0.2, 0.3, 0.4]))
    assert torch.equal(predictor.model.pixel_std.flatten(), torch.tensor([0.5, 0.6, 0.7]))


def test_preprocessing_does_not_count_as_architecture(tmp_path: Path) -> None:
    """An imported checkpoint at 512 px still loads as its variant (input size and mean/std change no tensor)."""
    path, _ = _tiny_checkpoint(tmp_path, input_size=512)
    _, info = load_checkpoint(path, variant="avesformer-tiny")
    assert info.config.input_size == 512


def test_rewriting_the_card_keeps_every_tensor_byte(tmp_path: Path) -> None:
    path, _ = _tiny_checkpoint(tmp_path)
    before = _tensor_bytes_sha256(path)
    rewrite_card(path, {"title": "renamed"})
    assert _tensor_bytes_sha256(path) == before
    assert read_checkpoint_info(path).card == {"title": "renamed"}
    rewrite_card(path, None)
    assert read_model_card(path)["card"] is None
    load_checkpoint(path)  # still a valid safetensors file


def test_the_demo_checkpoint_card_and_weights() -> None:
    card = read_model_card(DEMO_CHECKPOINT)["card"]
    assert card == DEMO_CARD
    assert "synthetic shapes only, not for real video" in card["intended_use"]
    assert _tensor_bytes_sha256(DEMO_CHECKPOINT) == DEMO_TENSOR_SHA256
    model, _ = load_checkpoint(DEMO_CHECKPOINT, variant=DEFAULT_VARIANT)
    g = torch.Generator().manual_seed(5)
    frames, audio = torch.rand(2, 3, 128, 128, generator=g), torch.randn(2, 1, 96, 64, generator=g)
    with torch.inference_mode():
        logits = model(frames, audio).mask_logits
    # recorded before cards existed (and before the AVSegFormer exactness fields were added)
    got = torch.tensor([logits.mean(), logits[0, 0, 64, 64], logits[1, 0, 10, 100], logits.abs().max()])
    torch.testing.assert_close(got, torch.tensor([-8.185802, -2.913495, -26.744152, 58.244244]),
                               rtol=1e-5, atol=1e-4)


def test_model_info_prints_a_checkpoints_card(tmp_path: Path, capsys) -> None:
    assert main(["model", "info", str(DEMO_CHECKPOINT), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["variant"] == DEFAULT_VARIANT
    assert info["card"]["intended_use"].startswith("synthetic shapes only")
    assert main(["model", "info", str(DEMO_CHECKPOINT)]) == 0
    text = capsys.readouterr().out
    assert "intended_use: synthetic shapes only, not for real video" in text
    assert "input: 128x128" in text
    assert main(["model", "info", str(tmp_path / "nope.safetensors"), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "bad_checkpoint"
    assert main(["model", "info", "--json"]) == 2  # neither a checkpoint nor --variant
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "invalid_argument"


def test_card_reader_refuses_other_files(tmp_path: Path) -> None:
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"not a safetensors file")
    with pytest.raises(CardError, match="not a safetensors file"):
        read_model_card(other)


def test_the_card_modules_load_no_torch() -> None:
    code = ("import sys, model.card, model.avsegformer_release, worker.core.model_card; "
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
