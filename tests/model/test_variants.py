"""Contract tests over every registered variant (timm-style): build, counts, shapes, gradients, checkpoints.

Full-size variants run at 64x64 (any multiple of 32 works) so the whole file stays around a minute or
two on 2 CPU cores; the tiny variants also run at their own input size.
"""

from __future__ import annotations

import pytest
import torch

from model.build import build_model
from model.checkpoint import load_checkpoint, save_checkpoint
from model.modeling.avs_model import AVSModel
from model.variants import VARIANTS, get_config

VGGISH_PARAMS = 72_141_184
AVSEGFORMER_B5_REPORTED = 186_053_504  # official AVSegFormer code, PVT-v2-b5 + VGGish (ARCHITECTURE.md)
SIZE = 64

def _model(variant: str) -> AVSModel:
    torch.manual_seed(0)
    return build_model(get_config(variant))


def _count_on_meta(variant: str) -> dict[str, int]:
    """Parameter counts without allocating or initialising weights (fast even for b5)."""
    with torch.device("meta"):
        return _model(variant).parameter_groups()


@pytest.fixture(scope="module", params=list(VARIANTS))
def built(request) -> tuple[str, AVSModel]:
    # Module scope + params: pytest groups the tests by variant, so each variant is built once.
    return request.param, _model(request.param)


def _inputs(n: int, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, size, size, generator=g), torch.randn(n, 1, 96, 64, generator=g)


def test_forward_shapes_and_finite(built: tuple[str, AVSModel]) -> None:
    _, model = built
    frames, audio = _inputs(2)
    with torch.inference_mode():
        out = model(frames, audio)
    assert out.mask_logits.shape == (2, 1, SIZE, SIZE)
    assert out.aux_logits.shape == (2, 1, SIZE // 4, SIZE // 4)
    assert torch.isfinite(out.mask_logits).all()
    assert torch.isfinite(out.aux_logits).all()


def test_parameter_groups_add_up(built: tuple[str, AVSModel]) -> None:
    variant, model = built
    groups = model.parameter_groups()
    assert sum(groups.values()) == sum(p.numel() for p in model.parameters())
    assert min(groups.values()) > 0
    cfg = get_config(variant)
    if cfg.audio.backbone == "vggish":
        assert groups["audio"] == VGGISH_PARAMS


def test_backward_reaches_trainable_parts_only(built: tuple[str, AVSModel]) -> None:
    variant, model = built
    model.train()
    frames, audio = _inputs(2)
    out = model(frames, audio)
    loss = out.mask_logits.sigmoid().mean() + out.aux_logits.mean()
    loss.backward()
    decoder_grads = [p.grad for n, p in model.named_parameters() if n.startswith(("decoder.", "head."))]
    assert all(g is not None and torch.isfinite(g).all() for g in decoder_grads)
    assert any(g.abs().sum() > 0 for g in decoder_grads)
    visual_grads = [p.grad for p in model.visual_encoder.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in visual_grads)
    audio_grads = [p.grad for p in model.audio_encoder.parameters()]
    if get_config(variant).audio.frozen:
        assert all(g is None for g in audio_grads), "a frozen audio encoder must not receive gradients"
    else:
        assert any(g is not None and g.abs().sum() > 0 for g in audio_grads)
    model.zero_grad(set_to_none=True)
    model.eval()


def test_checkpoint_round_trip(built: tuple[str, AVSModel], tmp_path) -> None:
    variant, model = built
    cfg = get_config(variant)
    path = save_checkpoint(model, cfg, tmp_path / "model.safetensors", provenance={"note": "test"})
    loaded, info = load_checkpoint(path, variant=variant)
    assert info.variant == variant
    assert info.config == cfg
    assert info.provenance["note"] == "test"
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)


@pytest.mark.parametrize("variant", ["avesformer-tiny", "avsegformer-tiny", "avesformer-pvt_v2_b0",
                                     "avsegformer-pvt_v2_b0"])
def test_semantic_head_has_71_classes(variant: str) -> None:
    torch.manual_seed(0)
    model = build_model(get_config(variant, num_classes=71))
    frames, audio = _inputs(2)
    with torch.inference_mode():
        out = model(frames, audio)
    assert out.mask_logits.shape == (2, 71, SIZE, SIZE)
    assert torch.isfinite(out.mask_logits).all()
    # the classes compete per pixel: a softmax over them sums to one everywhere
    probs = out.mask_logits.softmax(1).sum(1)
    torch.testing.assert_close(probs, torch.ones_like(probs))


def test_tiny_variant_runs_at_its_input_size_and_is_small() -> None:
    cfg = get_config("avesformer-tiny")
    model = _model("avesformer-tiny")
    frames, audio = _inputs(3, cfg.input_size)
    with torch.inference_mode():
        out = model(frames, audio)
    assert out.mask_logits.shape == (3, 1, cfg.input_size, cfg.input_size)
    # the demo checkpoint must fit in 20 MB: float32 weights of the tiny variant stay under 5 M parameters
    assert sum(p.numel() for p in model.parameters()) < 5_000_000


def test_avsegformer_b5_matches_the_reported_size() -> None:
    """Faithfulness check of the baseline reconstruction: within 5% of the official 186 M parameters."""
    total = sum(_count_on_meta("avsegformer-pvt_v2_b5").values())
    assert abs(total - AVSEGFORMER_B5_REPORTED) / AVSEGFORMER_B5_REPORTED < 0.05, total


def test_avesformer_decoder_is_much_smaller_than_the_baseline() -> None:
    ours = _count_on_meta("avesformer-pvt_v2_b2")["decoder"]
    base = _count_on_meta("avsegformer-pvt_v2_b2")["decoder"]
    assert ours < base / 2


def test_precomputed_audio_embedding_gives_the_same_masks() -> None:
    model = _model("avesformer-tiny")
    frames, audio = _inputs(4)
    with torch.inference_mode():
        direct = model(frames, audio).mask_logits
        shared = model(frames, audio_embedding=model.encode_audio(audio)).mask_logits
    torch.testing.assert_close(direct, shared)


def test_forward_rejects_mismatched_audio() -> None:
    model = _model("avesformer-tiny")
    frames, audio = _inputs(3)
    with pytest.raises(ValueError, match="audio windows"):
        model(frames, audio[:2])
    with pytest.raises(ValueError, match="exactly one"):
        model(frames)


def test_frames_are_independent() -> None:
    """No temporal modelling: a frame's mask must not depend on the other frames of the batch."""
    model = _model("avesformer-tiny")
    frames, audio = _inputs(4)
    with torch.inference_mode():
        batch = model(frames, audio).mask_logits
        single = model(frames[2:3], audio[2:3]).mask_logits
    torch.testing.assert_close(batch[2:3], single, atol=1e-5, rtol=1e-4)


def test_audio_changes_the_masks() -> None:
    """The audio token must reach the output (a model that ignores sound cannot do AVS)."""
    model = _model("avesformer-tiny")
    frames, audio = _inputs(2)
    with torch.inference_mode():
        a = model(frames, audio).mask_logits
        b = model(frames, torch.zeros_like(audio)).mask_logits
    assert (a - b).abs().max() > 1e-4


def test_config_overrides_are_typed_and_validated() -> None:
    from model.config import with_overrides
    from model.errors import ConfigError

    base = get_config("avesformer-tiny")
    changed = with_overrides(base, ["decoder.dim=96", "head.fc_channels=[16, 8]", "visual.drop_path_rate=0"])
    assert (changed.decoder.dim, changed.head.fc_channels, changed.visual.drop_path_rate) == (96, (16, 8), 0.0)
    assert isinstance(changed.visual.drop_path_rate, float)
    assert changed.audio == base.audio  # untouched sections stay as they were
    for bad, message in (("head.upsample_last=3", "is a bool"), ("decoder.dim=2.5", "is a int"),
                         ("decoder.nope=1", "no field"), ("nope.dim=1", "not a config section"),
                         ("decoder.dim", "section.field=value"), ("decoder.dim=30", "divisible")):
        with pytest.raises(ConfigError, match=message):
            with_overrides(base, [bad])
