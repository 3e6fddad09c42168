"""Public weight files -> our safetensors -> the builders, on files the tests write.

The original PVT-v2 release layout is produced here by an independent inverse mapping (timm -> release),
so the importer's forward mapping is checked against a layout it did not generate itself.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
import torchvision

from app.cli import main as avs
from model.build import build_model
from model.errors import WeightImportError
from model.modeling.visual_encoder import PVTv2Encoder
from model.variants import get_config
from model.weight_import import import_pvt, import_resnet50, load_torch_file, read_converted_weights


def _to_release_layout(timm_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's PVT-v2 keys -> the original whai362/PVT release keys (plus its ImageNet head)."""
    out = {}
    for key, value in timm_state.items():
        key = key.replace("mlp.dwconv.", "mlp.dwconv.dwconv.")
        if key.startswith("patch_embed."):
            key = "patch_embed1." + key[len("patch_embed."):]
        elif m := re.match(r"stages\.(\d)\.downsample\.(.*)", key):
            key = f"patch_embed{int(m[1]) + 1}.{m[2]}"
        elif m := re.match(r"stages\.(\d)\.blocks\.(\d+)\.(.*)", key):
            key = f"block{int(m[1]) + 1}.{m[2]}.{m[3]}"
        elif m := re.match(r"stages\.(\d)\.norm\.(.*)", key):
            key = f"norm{int(m[1]) + 1}.{m[2]}"
        out[key] = value
    width = out["norm4.weight"].shape[0]
    out["head.weight"], out["head.bias"] = torch.randn(1000, width), torch.randn(1000)
    return out


@pytest.fixture(scope="module")
def pvt_b0() -> PVTv2Encoder:
    torch.manual_seed(3)
    encoder = PVTv2Encoder("pvt_v2_b0", drop_path_rate=0.0)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # make every tensor distinct from a fresh init
    return encoder


def test_release_layout_really_differs_from_timm(pvt_b0) -> None:
    release = _to_release_layout(pvt_b0.body.state_dict())
    assert "block1.0.mlp.dwconv.dwconv.weight" in release
    assert "patch_embed2.proj.weight" in release
    assert not set(release) & set(pvt_b0.body.state_dict())


def test_import_pvt_from_release_file_and_build_with_it(pvt_b0, tmp_path: Path, capsys) -> None:
    src = tmp_path / "pvt_v2_b0.pth"
    torch.save(_to_release_layout(pvt_b0.body.state_dict()), src)
    out = tmp_path / "pvt_v2_b0.safetensors"
    assert avs(["weights", "import-pvt", str(src), "--out", str(out), "--json"]) == 0
    assert '"backbone": "pvt_v2_b0"' in capsys.readouterr().out

    cfg = get_config("avesformer-pvt_v2_b0")
    cfg = dataclasses.replace(cfg, visual=dataclasses.replace(cfg.visual, weights=str(out)))
    model = build_model(cfg)
    for key, value in pvt_b0.body.state_dict().items():
        assert torch.equal(model.visual_encoder.body.state_dict()[key], value), key
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        for a, b in zip(model.visual_encoder(x), pvt_b0.eval()(x), strict=True):
            torch.testing.assert_close(a, b)


def test_import_pvt_from_avsegformer_checkpoint_layout(pvt_b0, tmp_path: Path) -> None:
    release = _to_release_layout(pvt_b0.body.state_dict())
    whole_model = {f"backbone.{k}": v for k, v in release.items()}
    whole_model["audio_proj.weight"] = torch.randn(256, 128)  # other parts of the checkpoint are ignored
    src = tmp_path / "avsegformer.pth"
    torch.save({"state_dict": whole_model}, src)
    info = import_pvt(src, tmp_path / "out.safetensors", backbone="pvt_v2_b0")
    state, meta = read_converted_weights(Path(str(info["out"])))
    assert meta["backbone"] == "pvt_v2_b0"
    assert meta["source"] == "avsegformer.pth"
    assert torch.equal(state["stages.3.norm.weight"], pvt_b0.body.state_dict()["stages.3.norm.weight"])


def test_import_pvt_rejects_the_wrong_variant_and_truncated_files(pvt_b0, tmp_path: Path) -> None:
    release = _to_release_layout(pvt_b0.body.state_dict())
    src = tmp_path / "b0.pth"
    torch.save(release, src)
    with pytest.raises(WeightImportError, match="pvt_v2_b0 weights, not pvt_v2_b2"):
        import_pvt(src, tmp_path / "x.safetensors", backbone="pvt_v2_b2")
    del release["block4.1.attn.q.weight"]
    torch.save(release, src)
    with pytest.raises(WeightImportError, match=r"missing keys: stages\.3\.blocks\.1\.attn\.q\.weight"):
        import_pvt(src, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()  # nothing half-written


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    src = tmp_path / "evil.pth"
    torch.save({"weight": Payload()}, src)
    with pytest.raises(WeightImportError, match="not a readable weight file"):
        load_torch_file(src)


def test_import_resnet50_torchvision_and_avsbench_layouts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(weights=None).state_dict()  # includes fc.*
    torchvision_file = tmp_path / "resnet50-19c8e357.pth"
    torch.save(reference, torchvision_file)
    out = tmp_path / "r50.safetensors"
    assert avs(["weights", "import-resnet50", str(torchvision_file), "--out", str(out)]) == 0

    cfg = get_config("avesformer-r50")
    model = build_model(dataclasses.replace(cfg, visual=dataclasses.replace(cfg.visual, weights=str(out))))
    assert torch.equal(model.visual_encoder.layer4[2].conv3.weight, reference["layer4.2.conv3.weight"])
    assert torch.equal(model.visual_encoder.bn1.running_mean, reference["bn1.running_mean"])

    # AVSBench's B2_ResNet keeps layer3_1/layer4_1 (used) and layer3_2/layer4_2 (unused copies)
    avsbench = {}
    for k, v in reference.items():
        if k.startswith(("layer3.", "layer4.")):
            avsbench[k.replace("layer3.", "layer3_1.").replace("layer4.", "layer4_1.")] = v
            avsbench[k.replace("layer3.", "layer3_2.").replace("layer4.", "layer4_2.")] = torch.zeros_like(v)
        elif not k.startswith("fc."):
            avsbench[k] = v
    avsbench_file = tmp_path / "avsbench.pth"
    torch.save({f"encoder_backbone.{k}": v for k, v in avsbench.items()}, avsbench_file)
    state, _ = read_converted_weights(Path(str(import_resnet50(avsbench_file, tmp_path / "b.safetensors")["out"])))
    assert torch.equal(state["layer3.0.conv1.weight"], reference["layer3.0.conv1.weight"])


def test_import_vggish_and_build_with_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    from model.modeling.audio_encoder import VGGish

    source = VGGish()
    src = tmp_path / "vggish-10086976.pth"
    torch.save(source.state_dict(), src)
    out = tmp_path / "vggish.safetensors"
    assert avs(["weights", "import-vggish", str(src), "--out", str(out)]) == 0
    cfg = get_config("avesformer-pvt_v2_b0")
    model = build_model(dataclasses.replace(cfg, audio=dataclasses.replace(cfg.audio, weights=str(out))))
    x = torch.randn(2, 1, 96, 64)
    with torch.inference_mode():
        torch.testing.assert_close(model.encode_audio(x), source.eval()(x))


def test_builder_refuses_weights_of_another_backbone(pvt_b0, tmp_path: Path) -> None:
    src = tmp_path / "b0.pth"
    torch.save(pvt_b0.body.state_dict(), src)  # timm layout is accepted as is
    out = tmp_path / "b0.safetensors"
    import_pvt(src, out)
    cfg = get_config("avesformer-pvt_v2_b2")
    with pytest.raises(WeightImportError, match=r"pvt_v2_b0.*wants 'pvt_v2_b2'"):
        build_model(dataclasses.replace(cfg, visual=dataclasses.replace(cfg.visual, weights=str(out))))


def test_cli_reports_a_bad_file_with_a_stable_code(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "not-weights.pth"
    bad.write_bytes(b"definitely not a checkpoint")
    assert avs(["weights", "import-vggish", str(bad), "--out", str(tmp_path / "o.safetensors")]) == 2
    assert "[bad_weights]" in capsys.readouterr().err
