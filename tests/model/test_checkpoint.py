"""Our checkpoint format: metadata, dtype, and clear errors for files that do not fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.build import build_model
from model.checkpoint import load_checkpoint, read_checkpoint_info, save_checkpoint
from model.errors import CheckpointError, ConfigError
from model.variants import get_config


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = get_config("avesformer-tiny")
    return cfg, build_model(cfg)


def test_metadata_carries_variant_config_and_provenance(tiny, tmp_path: Path) -> None:
    cfg, model = tiny
    path = save_checkpoint(model, cfg, tmp_path / "c.safetensors", provenance={"trained_on": "synthetic-s4"})
    info = read_checkpoint_info(path)
    assert info.variant == "avesformer-tiny"
    assert info.config == cfg
    assert info.provenance["trained_on"] == "synthetic-s4"
    assert {"created_at", "torch", "avesformer"} <= set(info.provenance)


def test_float16_checkpoint_is_half_the_size_and_close(tiny, tmp_path: Path) -> None:
    cfg, model = tiny
    full = save_checkpoint(model, cfg, tmp_path / "f32.safetensors")
    half = save_checkpoint(model, cfg, tmp_path / "f16.safetensors", dtype=torch.float16)
    assert half.stat().st_size < 0.55 * full.stat().st_size
    loaded, _ = load_checkpoint(half)
    x, a = torch.rand(1, 3, 64, 64), torch.randn(1, 1, 96, 64)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x, a).mask_logits, model(x, a).mask_logits, atol=5e-2, rtol=5e-2)


def test_loading_as_another_variant_names_the_differences(tiny, tmp_path: Path) -> None:
    cfg, model = tiny
    path = save_checkpoint(model, cfg, tmp_path / "c.safetensors")
    with pytest.raises(ConfigError, match=r"decoder\.kind: 'avsegformer' != 'elf'"):
        load_checkpoint(path, variant="avsegformer-tiny")


def test_semantic_checkpoint_loads_as_its_variant(tmp_path: Path) -> None:
    cfg = get_config("avesformer-tiny", num_classes=71)
    path = save_checkpoint(build_model(cfg), cfg, tmp_path / "avss.safetensors")
    model, info = load_checkpoint(path, variant="avesformer-tiny")
    assert info.config.num_classes == 71
    assert model.head.fc[-1].out_channels == 71


def test_missing_and_unexpected_keys_are_reported(tiny, tmp_path: Path) -> None:
    cfg, model = tiny
    path = save_checkpoint(model, cfg, tmp_path / "c.safetensors")
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        metadata = json.loads(f.read(header_len))["__metadata__"]
    tensors = load_file(str(path))
    del tensors["head.fc.3.weight"]
    tensors["head.extra.weight"] = torch.zeros(1)
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata=metadata)
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(broken)
    message = str(excinfo.value)
    assert "1 missing keys: head.fc.3.weight" in message
    assert "1 unexpected keys: head.extra.weight" in message


def test_files_that_are_not_our_checkpoints_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not an AVESFormer checkpoint"):
        load_checkpoint(foreign)


def test_save_is_atomic_and_leaves_no_partial_file(tiny, tmp_path: Path) -> None:
    cfg, model = tiny
    save_checkpoint(model, cfg, tmp_path / "c.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]
