"""Audio path: VGGish log-mel front end, VGGish / tiny encoders and VGGish weight import.

The front end is checked against a numpy re-derivation of the reference VGGish preprocessing
(`mel_features.py` / `vggish_input.py` of the AudioSet VGGish release) written here from its
description, independently of `model.modeling.audio_frontend`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from model.errors import ModelError, WeightImportError
from model.modeling.audio_encoder import TinyAudioEncoder, VGGish, remap_vggish_state_dict
from model.modeling.audio_frontend import (
    LogMelFrontend,
    example_index_for_time,
    num_examples,
    vggish_mel_matrix,
    waveform_to_examples,
)

SR = 16000

# ----------------------------------------------------------------------------------------------
# Independent numpy reference of the VGGish preprocessing (float64 throughout).
# ----------------------------------------------------------------------------------------------


def _np_hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _np_frames(signal: np.ndarray, width: int, step: int) -> np.ndarray:
    """[n] -> [count, width] rows signal[i*step : i*step + width], no padding."""
    count = 0 if len(signal) < width else 1 + (len(signal) - width) // step
    if count == 0:
        return np.zeros((0, width, *signal.shape[1:]), dtype=signal.dtype)
    return np.stack([signal[i * step : i * step + width] for i in range(count)])


def _np_mel_matrix(
    n_fft_bins: int = 257, n_mel: int = 64, lo: float = 125.0, hi: float = 7500.0
) -> np.ndarray:
    bins_mel = _np_hz_to_mel(np.linspace(0.0, SR / 2, n_fft_bins))
    edges = np.linspace(_np_hz_to_mel(lo), _np_hz_to_mel(hi), n_mel + 2)
    matrix = np.zeros((n_fft_bins, n_mel))
    for band in range(n_mel):
        left, peak, right = edges[band], edges[band + 1], edges[band + 2]
        up = (bins_mel - left) / (peak - left)
        down = (right - bins_mel) / (right - peak)
        matrix[:, band] = np.clip(np.minimum(up, down), 0.0, None)
    matrix[0] = 0.0
    return matrix


def _np_log_mel(signal: np.ndarray) -> np.ndarray:
    """[n] float64 waveform -> [frames, 64] log-mel, the reference way."""
    frames = _np_frames(signal, 400, 160)
    n = np.arange(400)
    periodic_hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / 400)
    magnitude = np.abs(np.fft.rfft(frames * periodic_hann, n=512))  # [frames, 257]
    return np.log(magnitude @ _np_mel_matrix() + 0.01)


def _np_examples(signal: np.ndarray) -> np.ndarray:
    """[n] -> [M, 96, 64] non-overlapping 0.96 s examples (the reference drops the partial one)."""
    return _np_frames(_np_log_mel(signal), 96, 96)


def _test_signal(seconds: float, seed: int = 0) -> np.ndarray:
    """Deterministic chirp (100 Hz -> 7 kHz) plus white noise, peak around 0.6."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SR)) / SR
    f0, f1 = 100.0, 7000.0
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
    return 0.5 * np.sin(phase) + 0.05 * rng.standard_normal(t.shape)


# ----------------------------------------------------------------------------------------------
# Front end vs. reference.
# ----------------------------------------------------------------------------------------------


def test_mel_matrix_matches_reference() -> None:
    ours = vggish_mel_matrix()
    assert ours.shape == (257, 64)
    assert ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), _np_mel_matrix(), atol=1e-6)


def test_examples_match_reference_without_padding() -> None:
    signal = _test_signal(3.3)
    ours = waveform_to_examples(torch.from_numpy(signal).float(), pad_end=False)
    reference = _np_examples(signal)
    assert reference.shape == (3, 96, 64)
    assert ours.shape == (3, 1, 96, 64)
    assert ours.dtype == torch.float32
    np.testing.assert_allclose(ours[:, 0].numpy(), reference, atol=1e-3, rtol=0)


def test_examples_match_reference_with_end_padding() -> None:
    signal = _test_signal(3.3, seed=1)
    ours = waveform_to_examples(torch.from_numpy(signal).float(), pad_end=True)
    # The documented rule: ceil(L / 15360) examples, computed on the signal zero-padded to 15360 M + 240.
    count = math.ceil(len(signal) / 15360)
    padded = np.concatenate([signal, np.zeros(15360 * count + 240 - len(signal))])
    reference = _np_examples(padded)
    assert reference.shape == (count, 96, 64) == (4, 96, 64)
    assert ours.shape == (count, 1, 96, 64)
    np.testing.assert_allclose(ours[:, 0].numpy(), reference, atol=1e-3, rtol=0)
    # Padding only appends examples: the whole ones are unchanged.
    unpadded = waveform_to_examples(torch.from_numpy(signal).float(), pad_end=False)
    torch.testing.assert_close(ours[: len(unpadded)], unpadded, atol=1e-5, rtol=0)


def test_frontend_batch_and_frame_count_match_reference() -> None:
    signal = _test_signal(0.4, seed=2)  # 6400 samples -> 38 frames
    batch = torch.from_numpy(np.stack([signal, signal[::-1].copy()])).float()
    frames = LogMelFrontend()(batch)
    assert frames.shape == (2, 1 + (6400 - 400) // 160, 64)
    np.testing.assert_allclose(frames[0].numpy(), _np_log_mel(signal), atol=1e-3, rtol=0)
    np.testing.assert_allclose(frames[1].numpy(), _np_log_mel(signal[::-1].copy()), atol=1e-3, rtol=0)


@pytest.mark.parametrize("frequency_hz", [300.0, 500.0, 1000.0, 2000.0, 4000.0, 6000.0, 7000.0])
def test_pure_tone_peaks_in_its_mel_band(frequency_hz: float) -> None:
    t = np.arange(SR) / SR
    tone = torch.from_numpy(0.5 * np.sin(2 * np.pi * frequency_hz * t)).float()
    log_mel = LogMelFrontend()(tone)[0]  # [frames, 64]
    peak_band = int(log_mel.mean(dim=0).argmax())
    centres = np.linspace(_np_hz_to_mel(125.0), _np_hz_to_mel(7500.0), 66)[1:-1]
    expected = int(np.argmin(np.abs(centres - _np_hz_to_mel(frequency_hz))))
    assert peak_band == expected


def test_frontend_has_no_checkpoint_state_and_follows_dtype() -> None:
    frontend = LogMelFrontend()
    assert frontend.state_dict() == {}
    assert list(frontend.parameters()) == []
    assert frontend.double()(torch.zeros(1000)).dtype == torch.float64


def test_frontend_rejects_bad_input() -> None:
    with pytest.raises(TypeError):
        LogMelFrontend()(torch.zeros(1000, dtype=torch.int16))
    with pytest.raises(ValueError, match="shape"):
        LogMelFrontend()(torch.zeros(1, 1, 1000))
    with pytest.raises(ValueError, match="shape"):
        waveform_to_examples(torch.zeros(2, 16000))


# ----------------------------------------------------------------------------------------------
# Shape rules.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_samples", "frames"), [(0, 0), (399, 0), (400, 1), (559, 1), (560, 2), (16000, 98)]
)
def test_frame_count(num_samples: int, frames: int) -> None:
    assert LogMelFrontend()(torch.zeros(num_samples)).shape == (1, frames, 64)


@pytest.mark.parametrize(
    ("seconds", "padded", "unpadded"),
    [
        (0.0, 0, 0),
        (0.5, 1, 0),  # short audio: one example only when padding
        (0.96, 1, 0),  # 96 frames need 15 600 samples (0.975 s), so 0.96 s is not a whole example
        (1.0, 2, 1),  # 0.04 s spill into the second window
        (5.0, 6, 5),  # AVSBench clip: 5 examples as in the reference, a 6th (mostly padding) with pad_end
    ],
)
def test_example_counts(seconds: float, padded: int, unpadded: int) -> None:
    num_samples = round(seconds * SR)
    assert num_examples(num_samples, pad_end=True) == padded
    assert num_examples(num_samples, pad_end=False) == unpadded
    waveform = torch.zeros(num_samples)
    assert waveform_to_examples(waveform, pad_end=True).shape == (padded, 1, 96, 64)
    assert waveform_to_examples(waveform, pad_end=False).shape == (unpadded, 1, 96, 64)


@pytest.mark.parametrize(("num_samples", "padded", "unpadded"), [(15599, 2, 0), (15600, 2, 1), (15361, 2, 0)])
def test_example_count_boundaries(num_samples: int, padded: int, unpadded: int) -> None:
    assert num_examples(num_samples, pad_end=True) == padded
    assert num_examples(num_samples, pad_end=False) == unpadded
    assert num_examples(15360, pad_end=True) == 1


def test_example_index_for_time() -> None:
    assert example_index_for_time(0.0) == 0
    assert example_index_for_time(0.5) == 0
    assert example_index_for_time(0.9599) == 0
    assert example_index_for_time(0.96) == 1
    assert example_index_for_time(1.92) == 2
    assert example_index_for_time(4.79) == 4
    assert example_index_for_time(4.8) == 5
    assert [example_index_for_time(0.96 * k) for k in range(500)] == list(range(500))
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="finite time"):
            example_index_for_time(bad)


@pytest.mark.parametrize("num_samples", [1, 8000, 15360, 15361, 16000, 80000, 160001])
def test_every_time_in_the_audio_has_a_padded_example(num_samples: int) -> None:
    count = num_examples(num_samples, pad_end=True)
    last_time = (num_samples - 1) / SR
    assert example_index_for_time(last_time) == count - 1


# ----------------------------------------------------------------------------------------------
# VGGish.
# ----------------------------------------------------------------------------------------------

# The torchvggish layout, written out independently of the model code.
VGGISH_SHAPES: dict[str, tuple[int, ...]] = {
    "features.0.weight": (64, 1, 3, 3),
    "features.0.bias": (64,),
    "features.3.weight": (128, 64, 3, 3),
    "features.3.bias": (128,),
    "features.6.weight": (256, 128, 3, 3),
    "features.6.bias": (256,),
    "features.8.weight": (256, 256, 3, 3),
    "features.8.bias": (256,),
    "features.11.weight": (512, 256, 3, 3),
    "features.11.bias": (512,),
    "features.13.weight": (512, 512, 3, 3),
    "features.13.bias": (512,),
    "embeddings.0.weight": (4096, 12288),
    "embeddings.0.bias": (4096,),
    "embeddings.2.weight": (4096, 4096),
    "embeddings.2.bias": (4096,),
    "embeddings.4.weight": (128, 4096),
    "embeddings.4.bias": (128,),
}


@pytest.fixture(scope="module")
def vggish() -> VGGish:
    torch.manual_seed(0)
    return VGGish().eval()


@pytest.fixture(scope="module")
def log_mel_batch() -> Tensor:
    return waveform_to_examples(torch.from_numpy(_test_signal(2.0, seed=3)).float())  # [3, 1, 96, 64]


def test_vggish_layout_and_parameter_count(vggish: VGGish) -> None:
    assert sum(p.numel() for p in vggish.parameters()) == 72_141_184
    assert {k: tuple(v.shape) for k, v in vggish.state_dict().items()} == VGGISH_SHAPES
    assert vggish.embed_dim == 128


def test_vggish_forward(vggish: VGGish, log_mel_batch: Tensor) -> None:
    with torch.no_grad():
        out = vggish(log_mel_batch)
    assert out.shape == (len(log_mel_batch), 128)
    assert torch.isfinite(out).all()
    assert (out >= 0).all()
    with pytest.raises(ValueError, match="96, 64"):
        vggish(torch.zeros(1, 1, 64, 96))


def test_vggish_flattens_in_tensorflow_hwc_order(vggish: VGGish, log_mel_batch: Tensor) -> None:
    captured: dict[str, Tensor] = {}
    hooks = [
        vggish.features.register_forward_hook(lambda m, i, o: captured.__setitem__("conv", o.clone())),
        vggish.embeddings[0].register_forward_hook(lambda m, i, o: captured.__setitem__("fc1", o.clone())),
    ]
    try:
        with torch.no_grad():
            vggish(log_mel_batch)
    finally:
        for hook in hooks:
            hook.remove()
    conv = captured["conv"]  # [N, 512, 6, 4] NCHW
    assert conv.shape == (len(log_mel_batch), 512, 6, 4)
    fc = vggish.embeddings[0]
    # A TensorFlow dense layer after an NHWC map: column (h * 4 + w) * 512 + c of the kernel reads
    # channel c at (h, w).
    kernel = fc.weight.detach().reshape(4096, 6, 4, 512)  # [out, h, w, c]
    expected = torch.einsum("ohwc,nchw->no", kernel, conv) + fc.bias.detach()
    torch.testing.assert_close(captured["fc1"], expected, atol=1e-4, rtol=1e-4)
    # Sanity: the PyTorch-native (c, h, w) flatten would give something else.
    nchw = conv.reshape(len(conv), -1) @ fc.weight.detach().T + fc.bias.detach()
    assert not torch.allclose(nchw, expected, atol=1e-3)


def test_tiny_audio_encoder() -> None:
    torch.manual_seed(0)
    encoder = TinyAudioEncoder()
    assert sum(p.numel() for p in encoder.parameters()) < 150_000
    assert encoder.embed_dim == 128
    out = encoder(torch.randn(4, 1, 96, 64))  # train mode: BatchNorm uses batch statistics
    assert out.shape == (4, 128)
    encoder.eval()
    with torch.no_grad():
        out = encoder(torch.randn(2, 1, 96, 64))
    assert out.shape == (2, 128)
    assert torch.isfinite(out).all()
    assert (out >= 0).all()


# ----------------------------------------------------------------------------------------------
# Weight import.
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torchvggish_weights() -> dict[str, Tensor]:
    """Random tensors in the public torchvggish layout, small enough to keep activations sane."""
    generator = torch.Generator().manual_seed(1234)
    weights: dict[str, Tensor] = {}
    for key, shape in VGGISH_SHAPES.items():
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        weights[key] = torch.randn(shape, generator=generator) * (2.0 / fan_in) ** 0.5
    return weights


def _layouts(weights: dict[str, Tensor]) -> Iterator[tuple[str, dict[str, object]]]:
    pca = {"pproc._pca_matrix": torch.randn(128, 128), "pproc._pca_means": torch.randn(128, 1)}
    yield "torchvggish", {**weights, **pca}
    # AVSegFormer: the network is the `vggish` attribute of the model; other keys must be ignored.
    avsegformer = {f"vggish.{k}": v for k, v in {**weights, **pca}.items()}
    yield "avsegformer", {**avsegformer, "backbone.patch_embed1.proj.weight": torch.zeros(64, 3, 7, 7)}
    # AVSBench trained under DataParallel: `module.audio_backbone.`, nested in a `state_dict` entry.
    avsbench = {f"module.audio_backbone.{k}": v for k, v in weights.items()}
    yield "avsbench", {"state_dict": {**avsbench, "module.encoder_backbone.conv1.weight": torch.zeros(1)}}


@pytest.fixture(scope="module")
def weight_files(
    tmp_path_factory: pytest.TempPathFactory, torchvggish_weights: dict[str, Tensor]
) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("vggish_weights")
    files = {}
    for name, content in _layouts(torchvggish_weights):
        files[name] = folder / f"{name}.pth"
        torch.save(content, files[name])
    return files


@pytest.mark.parametrize("layout", ["torchvggish", "avsegformer", "avsbench"])
def test_remap_loads_public_layouts(
    layout: str,
    weight_files: dict[str, Path],
    torchvggish_weights: dict[str, Tensor],
    vggish: VGGish,
    log_mel_batch: Tensor,
) -> None:
    loaded = torch.load(weight_files[layout], weights_only=True)
    remapped = remap_vggish_state_dict(loaded)
    assert set(remapped) == set(VGGISH_SHAPES)
    vggish.load_state_dict(remapped, strict=True)
    for key, tensor in torchvggish_weights.items():
        assert torch.equal(vggish.state_dict()[key], tensor), key
    with torch.no_grad():
        out = vggish(log_mel_batch)
        # Reference: the same network evaluated directly with the source tensors.
        reference = torch.func.functional_call(vggish, torchvggish_weights, (log_mel_batch,))
    assert torch.equal(out, reference)
    assert (out > 0).any()


def test_remap_rejects_a_wrong_file(tmp_path: Path) -> None:
    path = tmp_path / "not_vggish.pth"
    torch.save(
        {
            "features.0.weight": torch.zeros(64, 1, 5, 5),  # wrong kernel size
            "embeddings.0.bias": torch.zeros(4096),
            "classifier.weight": torch.zeros(10, 128),  # not a VGGish key
        },
        path,
    )
    with pytest.raises(WeightImportError) as excinfo:
        remap_vggish_state_dict(torch.load(path, weights_only=True))
    message = str(excinfo.value)
    assert "features.0.weight: file (64, 1, 5, 5), expected (64, 1, 3, 3)" in message
    assert "classifier.weight" in message
    assert "missing keys" in message
    assert "embeddings.4.weight" in message
    assert "embeddings.0.bias" not in message  # present with the right shape: not a problem
    assert isinstance(excinfo.value, ModelError)


def _meta_weights() -> dict[str, object]:
    return {k: torch.empty(shape, device="meta") for k, shape in VGGISH_SHAPES.items()}


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda sd: sd.pop("embeddings.4.weight"), "missing keys: embeddings.4.weight"),
        (
            lambda sd: sd.__setitem__("features.1.weight", torch.zeros(1)),
            "unexpected keys: features.1.weight",
        ),
        (lambda sd: sd.__setitem__("features.13.bias", torch.zeros(256)), "features.13.bias: file (256,)"),
        (lambda sd: sd.__setitem__("features.0.bias", [0.0] * 64), "not tensors: features.0.bias"),
        (lambda sd: sd.__setitem__("module.features.0.bias", torch.zeros(64)), "collide"),
    ],
)
def test_remap_reports_each_problem(edit: Callable[[dict[str, object]], object], needle: str) -> None:
    state_dict = _meta_weights()
    edit(state_dict)
    with pytest.raises(WeightImportError, match=re.escape(needle)):
        remap_vggish_state_dict(state_dict)


def test_remap_accepts_meta_tensors_and_unrelated_files_fail() -> None:
    assert set(remap_vggish_state_dict(_meta_weights())) == set(VGGISH_SHAPES)
    resnet_like = {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 2048)}
    with pytest.raises(WeightImportError, match=r"conv1\.weight"):
        remap_vggish_state_dict(resnet_like)
