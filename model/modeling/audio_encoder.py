"""Audio encoders: 0.96 s log-mel examples [N, 1, 96, 64] -> 128-d embeddings [N, 128].

* `VGGish` is the published AudioSet network (Hershey et al., "CNN Architectures for Large-Scale
  Audio Classification", ICASSP 2017, arXiv:1609.09430; TensorFlow release in the
  `research/audioset/vggish` directory of https://github.com/tensorflow/models), laid out so that
  the widely used PyTorch port of the released weights (`features.*`, `embeddings.*`) loads as is.
  It is the audio backbone of AVSBench, AVSegFormer and AVESFormer (usually frozen).
* `TinyAudioEncoder` is a small CPU-friendly stand-in used by the `avesformer-tiny` variant, for
  tests and demos where 72 M frozen parameters are not worth their cost.

`remap_vggish_state_dict` turns the public weight file, or the audio part of an AVSegFormer /
AVSBench checkpoint, into a state dict for `VGGish`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from model.errors import WeightImportError

__all__ = ["TinyAudioEncoder", "VGGish", "remap_vggish_state_dict"]

_EXAMPLE_FRAMES = 96  # time axis of one example (0.96 s of 10 ms frames)
_MEL_BINS = 64  # frequency axis
_EMBED_DIM = 128


def _check_examples(x: Tensor) -> None:
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, _EXAMPLE_FRAMES, _MEL_BINS):
        raise ValueError(
            f"expected log-mel examples of shape [N, 1, {_EXAMPLE_FRAMES}, {_MEL_BINS}], got {tuple(x.shape)}"
        )


class VGGish(nn.Module):
    """The VGGish network up to its 128-d embedding layer (no PCA / quantisation post-processing).

    Layout (indices matter: they are the state-dict keys of the public weights):

    * ``features``: conv3x3 (padding 1) + ReLU blocks 1→64, pool, 64→128, pool, 128→256, 256→256,
      pool, 256→512, 512→512, pool; convolutions at indices 0, 3, 6, 8, 11, 13. Each 2×2 max-pool
      halves time and frequency: 96×64 → 48×32 → 24×16 → 12×8 → 6×4.
    * ``embeddings``: Linear 12 288→4096, ReLU, Linear 4096→4096, ReLU, Linear 4096→128, ReLU
      (linears at 0, 2, 4).

    72 141 184 parameters in total. The final ReLU follows the common PyTorch port, whose outputs the
    AVS literature was trained on, so embeddings are non-negative.
    """

    embed_dim: int = _EMBED_DIM

    def __init__(self) -> None:
        super().__init__()

        def conv(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.ReLU(inplace=True)]

        def pool() -> nn.Module:
            return nn.MaxPool2d(kernel_size=2, stride=2)

        self.features = nn.Sequential(
            *conv(1, 64), pool(),  # 0, 1, 2
            *conv(64, 128), pool(),  # 3, 4, 5
            *conv(128, 256), *conv(256, 256), pool(),  # 6, 7, 8, 9, 10
            *conv(256, 512), *conv(512, 512), pool(),  # 11, 12, 13, 14, 15
        )  # fmt: skip
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 6 * 4, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, _EMBED_DIM),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Embed log-mel examples.

        Args:
            x: float tensor [N, 1, 96, 64]: N examples, 1 channel, 96 frames (time), 64 mel bands,
                as produced by `model.modeling.audio_frontend.waveform_to_examples`.

        Returns:
            Tensor [N, 128] of embeddings (non-negative).
        """
        _check_examples(x)
        x = self.features(x)  # [N, 512, 6, 4]: channels, time, frequency
        # The weights were trained in TensorFlow, whose feature maps are NHWC: the first FC layer
        # expects its 12 288 inputs ordered (time, frequency, channel), channel fastest. Flattening
        # PyTorch's NCHW map directly would feed every FC weight the wrong activation.
        x = x.permute(0, 2, 3, 1)  # [N, 6, 4, 512]
        x = x.reshape(x.shape[0], -1)  # [N, 12288], index = (h * 4 + w) * 512 + c
        return self.embeddings(x)  # [N, 128]


class TinyAudioEncoder(nn.Module):
    """Light audio encoder for the `avesformer-tiny` variant (≈114 k parameters, trained from scratch).

    Four conv3x3-BatchNorm-ReLU-maxpool stages (16, 32, 64, 128 channels) bring 96×64 down to 6×4,
    a global average pool gives 128 values, and Linear(128, 128) + ReLU produces an embedding with
    the same size and sign convention as VGGish, so the two are interchangeable downstream.
    """

    embed_dim: int = _EMBED_DIM

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c_out in channels:
            layers += [
                # No conv bias: the BatchNorm that follows has its own shift.
                nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=2, stride=2),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Linear(c_in, _EMBED_DIM), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        """Embed log-mel examples.

        Args:
            x: float tensor [N, 1, 96, 64] of log-mel examples.

        Returns:
            Tensor [N, 128] of non-negative embeddings.
        """
        _check_examples(x)
        x = self.features(x)  # [N, 128, 6, 4]
        x = self.pool(x).flatten(1)  # [N, 128, 1, 1] -> [N, 128]
        return self.head(x)  # [N, 128]


# Prefixes under which VGGish weights appear in other projects' files. `module.` comes from
# DataParallel / DistributedDataParallel; `vggish.` is the attribute name in AVSegFormer;
# `audio_backbone.` the one in AVSBench's audio extractor. They may be stacked.
_WRAPPER_PREFIXES = ("module.",)
_AUDIO_PREFIXES = ("vggish.", "audio_backbone.")
# Keys of the PCA post-processor that the PyTorch port bundles with the network; we do not use it.
_POSTPROCESS_PREFIX = "pproc."
# Top-level keys under which training frameworks nest the state dict itself.
_CONTAINER_KEYS = ("state_dict", "model")


def _expected_vggish_shapes() -> dict[str, tuple[int, ...]]:
    # Built on the meta device: shapes only, no memory and no initialisation cost.
    with torch.device("meta"):
        reference = VGGish()
    return {key: tuple(value.shape) for key, value in reference.state_dict().items()}


def _strip_prefixes(key: str) -> tuple[str, bool]:
    """Remove stacked known prefixes; also say whether an audio-module prefix was among them."""
    under_audio_prefix = False
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES + _AUDIO_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                under_audio_prefix |= prefix in _AUDIO_PREFIXES
                stripped = True
    return key, under_audio_prefix


def _preview(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def remap_vggish_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Bring VGGish weights from a public file into this module's `VGGish` layout.

    Accepted inputs:

    * the PyTorch port of the released weights: ``features.{0,3,6,8,11,13}.{weight,bias}`` and
      ``embeddings.{0,2,4}.{weight,bias}``, optionally with the PCA parameters ``pproc.*``;
    * the same keys behind ``vggish.`` / ``audio_backbone.`` and/or ``module.`` prefixes, as in
      AVSegFormer and AVSBench checkpoints; when such an audio prefix is present, keys outside it
      (visual backbone, decoder, ...) are ignored, so a whole AVS checkpoint can be passed;
    * any of the above nested under a top-level ``state_dict`` or ``model`` key.

    Args:
        state_dict: mapping from parameter names to tensors, e.g. `torch.load(path, weights_only=True)`.

    Returns:
        A new dict with exactly the keys of `VGGish().state_dict()` (the tensors are not copied);
        load it with ``strict=True``.

    Raises:
        WeightImportError: the mapping is not a VGGish state dict: keys missing or unexpected, a value
            that is not a tensor, two keys that map to the same name, or a shape mismatch. The
            message lists the offending keys.
    """
    if not isinstance(state_dict, Mapping):
        raise WeightImportError(f"expected a mapping of parameter names to tensors, got {type(state_dict)}")
    for container in _CONTAINER_KEYS:
        inner = state_dict.get(container)
        if isinstance(inner, Mapping):
            state_dict = inner
            break

    # Original key -> (stripped key, whether it sat under an audio prefix).
    stripped = {key: _strip_prefixes(str(key)) for key in state_dict}
    if any(under_audio for _, under_audio in stripped.values()):
        stripped = {key: value for key, value in stripped.items() if value[1]}

    remapped: dict[str, Tensor] = {}
    source_of: dict[str, str] = {}
    collisions: list[str] = []
    not_tensors: list[str] = []
    for original, (key, _) in stripped.items():
        if key.startswith(_POSTPROCESS_PREFIX):
            continue
        if key in remapped:
            collisions.append(f"{source_of[key]!r} and {original!r} -> {key!r}")
            continue
        value = state_dict[original]
        if not isinstance(value, Tensor):
            not_tensors.append(f"{original} ({type(value).__name__})")
            continue
        remapped[key] = value
        source_of[key] = original

    expected = _expected_vggish_shapes()
    # Keys present but rejected (not tensors, collisions) are reported as such, not as missing.
    missing = sorted(set(expected) - {key for key, _ in stripped.values()})
    unexpected = sorted(source_of[k] for k in set(remapped) - set(expected))
    mismatched = sorted(
        f"{source_of[k]}: file {tuple(remapped[k].shape)}, expected {expected[k]}"
        for k in set(remapped) & set(expected)
        if tuple(remapped[k].shape) != expected[k]
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_preview(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_preview(mismatched)}")
    if not_tensors:
        problems.append(f"values that are not tensors: {_preview(not_tensors)}")
    if collisions:
        problems.append(f"keys that collide after removing prefixes: {_preview(collisions)}")
    if problems:
        raise WeightImportError(
            "not a VGGish state dict (expected the torchvggish layout 'features.*' / 'embeddings.*', "
            "optionally behind 'module.', 'vggish.' or 'audio_backbone.'); " + "; ".join(problems)
        )
    return remapped
