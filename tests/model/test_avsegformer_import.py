"""`avs weights import-avsegformer`: the official AVSegFormer layouts, built from the committed manifests.

The manifests (model/weights/manifests/) list every key and shape of the six published configurations
as the official code (github.com/vvvb-github/AVSegFormer at 7083cb6) builds them. Full-size tensors are
large (up to 186 M values), so most tests use meta tensors (shapes only, no memory) and one slow test
imports real random weights of the smallest configuration and runs them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app.cli import main
from model.avsegformer_import import (
    convert_avsegformer_state,
    detect_configuration,
    remap_avsegformer_state_dict,
)
from model.avsegformer_release import BACKBONES, SETTINGS, load_manifest
from model.build import build_model
from model.class_names import AVSS_CLASS_NAMES
from model.errors import WeightImportError

CONFIGS = [(b, s) for b in BACKBONES for s in SETTINGS]


def official_state(backbone: str, setting: str, *, device: str = "meta", dropped: bool = True,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in the official layout: the manifest's keys and shapes (meta, or random on the CPU)."""
    manifest = load_manifest(backbone, setting)
    shapes = {**manifest["keys"], **(manifest["dropped"] if dropped else {})}
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros(shape, dtype=torch.long, device=device)
        elif device == "meta":
            state[key] = torch.empty(shape, device="meta")
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=g)
        else:
            state[key] = torch.randn(shape, generator=g) * 0.02
    return state


@pytest.mark.parametrize(("backbone", "setting"), CONFIGS)
def test_every_official_key_maps_onto_our_variant(backbone: str, setting: str) -> None:
    manifest = load_manifest(backbone, setting)
    state = official_state(backbone, setting)
    ours, cfg, report = convert_avsegformer_state(state, setting=setting)
    # convert_avsegformer_state already checked names and shapes against the model built on the meta
    # device; here: every official tensor is accounted for, and the parameter count is the official one
    assert report["keys_mapped"] == len(manifest["keys"])
    assert report["dropped"] == sorted(manifest["dropped"])
    assert report["params"] == manifest["params_used"]
    with torch.device("meta"):
        reference = build_model(cfg).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in reference.items()}
    assert (report["setting"], report["backbone"], cfg.variant) == (setting, backbone, f"avsegformer-{backbone}")
    assert cfg.input_size == (224 if setting == "avss" else 512)
    assert cfg.num_classes == (71 if setting == "avss" else 1)
    assert cfg.class_names == (AVSS_CLASS_NAMES if setting == "avss" else ("sounding",))
    assert (cfg.pixel_mean, cfg.pixel_std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_the_dropped_keys_are_the_unused_branches() -> None:
    groups = {".".join(k.split(".")[:2]) for k in load_manifest("r50", "s4")["dropped"]}
    assert groups == {"head.fpn", "head.attn_fc", "backbone.layer3_2", "backbone.layer4_2"}
    assert {".".join(k.split(".")[:2]) for k in load_manifest("pvt_v2_b5", "avss")["dropped"]} == {
        "head.fpn", "head.attn_fc"}


def test_values_follow_their_keys() -> None:
    """Renamed tensors are the same tensors; packed in_proj rows become q, k, v in PyTorch's order."""
    packed_w, packed_b = torch.arange(12.0).view(6, 2), torch.arange(6.0)
    state = {
        "head.transformer.decoder.layers.2.cross_attn.in_proj_weight": packed_w,
        "head.transformer.decoder.layers.2.cross_attn.in_proj_bias": packed_b,
        "head.query_generator.layers.0.self_attn.in_proj_weight": packed_w,
        "head.mlp.layers.1.weight": torch.ones(1),
        "head.fc.4.weight": torch.full((1,), 4.0),
        "head.fc.2.bias": torch.full((1,), 2.0),
        "backbone.layer3_1.0.conv1.weight": torch.full((1,), 3.0),
        "backbone.block3.7.mlp.dwconv.dwconv.bias": torch.full((1,), 7.0),
        "head.transformer.encoder.layers.5.linear2.weight": torch.full((1,), 5.0),
        "vggish.embeddings.4.weight": torch.full((1,), 8.0),
    }
    ours = remap_avsegformer_state_dict(state)
    base = "decoder.decoder.2.cross_attn"
    assert torch.equal(ours[f"{base}.q_proj.weight"], packed_w[:2])
    assert torch.equal(ours[f"{base}.k_proj.weight"], packed_w[2:4])
    assert torch.equal(ours[f"{base}.v_proj.bias"], packed_b[4:])
    assert torch.equal(ours["decoder.query_generator.layers.0.self_attn.v_proj.weight"], packed_w[4:])
    assert ours["head.mlp.2.weight"] is state["head.mlp.layers.1.weight"]
    assert ours["head.fc.3.weight"] is state["head.fc.4.weight"]
    assert ours["head.fc.1.bias"] is state["head.fc.2.bias"]
    assert ours["visual_encoder.layer3.0.conv1.weight"] is state["backbone.layer3_1.0.conv1.weight"]
    assert ours["visual_encoder.body.stages.2.blocks.7.mlp.dwconv.bias"] is state[
        "backbone.block3.7.mlp.dwconv.dwconv.bias"]
    assert ours["decoder.encoder.5.ffn.fc2.weight"] is state["head.transformer.encoder.layers.5.linear2.weight"]
    assert ours["audio_encoder.embeddings.4.weight"] is state["vggish.embeddings.4.weight"]


def test_setting_and_backbone_come_from_the_keys_the_name_or_the_flags() -> None:
    avss = official_state("pvt_v2_b5", "avss")
    assert detect_configuration(avss) == ("avss", "pvt_v2_b5")
    binary = official_state("r50", "s4")
    assert detect_configuration(binary, filename="MS3_best.pth") == ("ms3", "r50")
    assert detect_configuration(binary, filename="work_dir/S4_best.pth") == ("s4", "r50")
    assert detect_configuration(binary, setting="ms3", filename="S4_best.pth") == ("ms3", "r50")  # the flag wins
    with pytest.raises(ValueError, match="--setting s4 or --setting ms3"):
        detect_configuration(binary, filename="checkpoint.pth")
    with pytest.raises(WeightImportError, match="--backbone pvt_v2_b5 given, but the file holds r50"):
        detect_configuration(binary, backbone="pvt_v2_b5", setting="s4")
    with pytest.raises(WeightImportError, match="not an official AVSegFormer checkpoint"):
        detect_configuration({"features.0.weight": torch.empty(1, device="meta")})


def test_a_flag_that_contradicts_the_head_is_a_shape_error_naming_the_key() -> None:
    with pytest.raises(WeightImportError, match=r"head\.fc\.4\.weight: file \(1, 32, 1, 1\), expected \(71, 32"):
        convert_avsegformer_state(official_state("r50", "s4"), setting="avss")


def test_dropped_keys_are_optional() -> None:
    state = official_state("r50", "ms3", dropped=False)
    _, _, report = convert_avsegformer_state(state, setting="ms3")
    assert report["dropped"] == []


def _import(tmp_path: Path, state: dict, name: str, *extra: str, capsys) -> tuple[int, dict]:
    src = tmp_path / name
    torch.save(state, src)
    code = main(["weights", "import-avsegformer", str(src), "--out", str(tmp_path / "out.safetensors"),
                 "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(("change", "named"), [
    ("missing", "head.transformer.decoder.layers.3.norm2.bias"),
    ("unexpected", "head.extra_branch.weight"),
    ("shape", "head.query_generator.query.weight"),
])
def test_layout_errors_are_bad_weights_naming_the_key(tmp_path: Path, capsys, change: str, named: str) -> None:
    state = official_state("pvt_v2_b5", "s4")
    if change == "missing":
        del state[named]
    elif change == "unexpected":
        state[named] = torch.empty(3, device="meta")
    else:
        state[named] = torch.empty(100, 256, device="meta")
    code, out = _import(tmp_path, {"module." + k: v for k, v in state.items()}, "S4_best.pth", capsys=capsys)
    assert code == 2
    assert out["error"]["code"] == "bad_weights"
    assert named in out["error"]["message"]
    assert {"missing": "1 missing keys", "unexpected": "1 unexpected keys",
            "shape": "1 wrong shapes"}[change] in out["error"]["message"]
    assert not (tmp_path / "out.safetensors").exists()


def test_wrappers_and_prefixes_reach_the_layout_check(tmp_path: Path, capsys) -> None:
    """`{"state_dict": ...}` and `module.` are unwrapped: the only complaint left is the planted one."""
    state = official_state("r50", "avss")
    del state["audio_proj.bias"]
    code, out = _import(tmp_path, {"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 3},
                        "AVSS_miou_best.pth", capsys=capsys)
    assert code == 2
    assert out["error"]["message"].endswith("1 missing keys: audio_proj.bias")


def test_s4_or_ms3_must_be_named(tmp_path: Path, capsys) -> None:
    code, out = _import(tmp_path, official_state("r50", "s4"), "best.pth", capsys=capsys)
    assert (code, out["error"]["code"]) == (2, "invalid_argument")
    assert "--setting" in out["error"]["message"]


@pytest.mark.slow
def test_import_load_and_run_the_smallest_configuration(tmp_path: Path, capsys) -> None:
    """R50 MS3 with random weights behind `module.`: import, read the card, load, run (~40 s on 2 cores)."""
    from model.checkpoint import load_checkpoint
    from model.predictor import load_predictor

    state = {"module." + k: v for k, v in official_state("r50", "ms3", device="cpu").items()}
    code, report = _import(tmp_path, state, "MS3_best.pth", capsys=capsys)
    assert code == 0
    assert (report["setting"], report["backbone"], report["stripped_prefix"]) == ("ms3", "r50", "module.")
    assert len(report["dropped"]) == len(load_manifest("r50", "ms3")["dropped"])
    assert report["card"]["metrics"]["mIoU"] == 53.81
    out = tmp_path / "out.safetensors"
    assert main(["model", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["card"]["metrics"]["status"] == "published by the source, not measured here"
    assert info["preprocessing"]["input_size"] == 512
    model, _ = load_checkpoint(out, variant="avsegformer-r50")
    # the same tensors: a renamed official tensor equals the source (here: the first conv, and a q slice)
    ours = model.state_dict()
    assert torch.equal(ours["visual_encoder.conv1.weight"], state["module.backbone.conv1.weight"])
    assert torch.equal(ours["decoder.decoder.0.self_attn.k_proj.weight"],
                       state["module.head.transformer.decoder.layers.0.self_attn.in_proj_weight"][256:512])
    frames, audio = torch.rand(2, 3, 64, 64), torch.randn(2, 1, 96, 64)
    with torch.inference_mode():
        result = model(frames, audio)
    assert result.mask_logits.shape == (2, 1, 64, 64)
    assert torch.isfinite(result.mask_logits).all()
    predictor = load_predictor(checkpoint=out)
    assert (predictor.input_size, predictor.class_names) == (512, ("sounding",))
