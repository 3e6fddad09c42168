"""AVSPredictor: numpy frames and waveforms in, masks out.

`AVSModel.forward` is tensors in, tensors out. Everything around it lives here, in stages that can be
tested one by one (the shape of SAM's `SamPredictor` and LitServe's setup/predict/encode split):

    audio_embeddings(waveform)      16 kHz mono float32 -> one 128-d embedding per 0.96 s window
    predict_logits(frames, emb)     uint8 [n, h, w, 3] RGB + [n, 128] -> logits [n, K, S, S] on the device
    postprocess(logits, (H, W))     -> uint8 masks [n, H, W] at the video's own size (0/1, or class ids)

Device placement, resizing to the model's input size, `inference_mode`, float16 autocast on CUDA and
thresholding all happen here and nowhere else.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.build import build_model
from model.class_names import class_names_for
from model.config import AVSConfig
from model.mask_upsampling import upsample_mask
from model.modeling.audio_frontend import (
    EXAMPLE_FRAMES,
    SAMPLE_RATE,
    STFT_HOP_SAMPLES,
    STFT_WINDOW_SAMPLES,
    LogMelFrontend,
    waveform_to_examples,
)
from model.modeling.avs_model import AVSModel
from model.variants import DEFAULT_VARIANT, DEMO_CHECKPOINT, get_config

AUDIO_BATCH = 64  # log-mel examples per audio-encoder call: VGGish's 48 MB of FC weights are read once per call
DEFAULT_THRESHOLD = 0.5

log = logging.getLogger("avs.model")


def logit_threshold(threshold: float) -> float:
    """The logit cut equivalent to `sigmoid(x) > threshold`: log(t / (1 - t)), so masks skip the sigmoid.

    Raises ValueError unless 0 < threshold < 1 (0 and 1 would be -inf / +inf: every pixel or none).
    """
    if not (isinstance(threshold, int | float) and 0.0 < threshold < 1.0):
        raise ValueError(f"threshold must be strictly between 0 and 1, got {threshold!r}")
    return math.log(threshold / (1.0 - threshold))


def load_predictor(*, checkpoint: str | Path | None = None, variant: str | None = None, device: str = "cpu",
                   threshold: float = DEFAULT_THRESHOLD,
                   warn: Callable[[str], None] = log.warning) -> AVSPredictor:
    """The model the CLI and the workers run, chosen one way everywhere:

    `checkpoint` when given (checked against `variant` when both are); else the shipped demo checkpoint when
    `variant` is None or its own variant; else `variant` with random weights, after `warn(...)` says that
    its masks mean nothing. Raises `CheckpointError`, `ConfigError` or `ValueError` (threshold).
    """
    logit_threshold(threshold)  # fail before loading anything
    if checkpoint:
        return AVSPredictor.from_checkpoint(checkpoint, variant=variant, device=device, threshold=threshold)
    if variant in (None, DEFAULT_VARIANT) and DEMO_CHECKPOINT.exists():
        return AVSPredictor.from_checkpoint(DEMO_CHECKPOINT, device=device, threshold=threshold)
    variant = variant or DEFAULT_VARIANT
    warn(f"no checkpoint for {variant}: using random weights, the masks mean nothing")
    return AVSPredictor.from_variant(variant, device=device, threshold=threshold)


class AVSPredictor:
    def __init__(self, model: AVSModel, cfg: AVSConfig, *, device: str | torch.device = "cpu",
                 threshold: float = DEFAULT_THRESHOLD, amp: bool = True) -> None:
        self._logit_threshold = logit_threshold(threshold)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.cfg = cfg
        self.threshold = threshold
        self.amp = amp and self.device.type == "cuda"
        self.class_names = class_names_for(cfg)
        self._frontend: LogMelFrontend | None = None  # the live path's log-mel front end, built once

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, path: str | Path, *, variant: str | None = None, device: str = "cpu",
                        threshold: float = DEFAULT_THRESHOLD) -> AVSPredictor:
        from model.checkpoint import load_checkpoint

        model, info = load_checkpoint(path, variant=variant)
        return cls(model, info.config, device=device, threshold=threshold)

    @classmethod
    def from_variant(cls, variant: str, *, device: str = "cpu", threshold: float = DEFAULT_THRESHOLD,
                     seed: int = 0) -> AVSPredictor:
        """Randomly initialised weights: for benchmarks and plumbing tests, not for real masks."""
        torch.manual_seed(seed)
        cfg = get_config(variant)
        return cls(build_model(cfg), cfg, device=device, threshold=threshold)

    @property
    def input_size(self) -> int:
        return self.cfg.input_size

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp)

    def warmup(self, batch_size: int = 1) -> None:
        """One forward pass so the first real batch does not pay for allocator and kernel set-up."""
        frames = np.zeros((batch_size, self.input_size, self.input_size, 3), dtype=np.uint8)
        emb = self.audio_embeddings(np.zeros(SAMPLE_RATE, dtype=np.float32))[:1].expand(batch_size, -1)
        self.predict_logits(frames, emb)

    # ------------------------------------------------------------------------------------ stages
    @torch.inference_mode()
    def embeddings_ending_at(self, waveform: np.ndarray, start_sample: int, ends_s: list[float]) -> torch.Tensor:
        """The live alignment rule: for each time t in `ends_s`, the embedding of the sound heard in the 0.96 s
        that end at t (the 96 log-mel frames whose windows end at or before t), from `waveform` (16 kHz mono
        float32 whose first sample is absolute sample `start_sample`). Sound from before the buffer (or the
        stream) counts as silence; a t past the sound received so far gets the latest 0.96 s there is (the
        sound lags the picture by a packet at most). Returns [n, D] on the device.

        The log-mel frames sit on one absolute grid (frame k covers samples 160 k .. 160 k + 400, as
        VGGish's 10 ms hop from the stream's start), so a ring buffer that dropped its oldest samples gives
        the same frames as the whole stream; only the span the batch needs is transformed (a batch costs
        about one second of audio, however long the buffer), then one audio-encoder call."""
        if self._frontend is None:
            self._frontend = LogMelFrontend()
        hop, window = STFT_HOP_SAMPLES, STFT_WINDOW_SAMPLES
        ends = [int(np.floor(t * SAMPLE_RATE + 1e-6)) for t in ends_s]
        last_frame = [(end - window) // hop for end in ends]  # the last frame whose window ends by t
        first = max(min(last_frame) - EXAMPLE_FRAMES + 1, -(-start_sample // hop))  # inside the buffer
        stop = min(max(last_frame), (start_sample + len(waveform) - window) // hop)  # last frame we can compute
        silence = self._frontend(torch.zeros(window))[0][:1]  # the log-mel of silence
        if stop >= first:
            span = np.asarray(waveform[first * hop - start_sample:stop * hop + window - start_sample], dtype=np.float32)
            frames = self._frontend(torch.as_tensor(span))[0]  # [F, 64]; row i is frame first + i
        else:
            frames = silence[:0]
        examples = []
        for k in last_frame:
            lo, hi = max(k - EXAMPLE_FRAMES + 1, first) - first, min(k, stop) - first + 1
            chunk = frames[max(0, lo):max(0, hi)]
            if chunk.shape[0] < EXAMPLE_FRAMES:  # before the sound began (or not received yet): silence
                chunk = torch.cat([silence.expand(EXAMPLE_FRAMES - chunk.shape[0], -1), chunk])
            examples.append(chunk)
        batch = torch.stack(examples)[:, None].to(self.device)  # [n, 1, 96, 64]
        with self._autocast():
            return self.model.encode_audio(batch).float()

    @torch.inference_mode()
    def audio_embeddings(self, waveform: np.ndarray) -> torch.Tensor:
        """waveform [L] float32 at 16 kHz -> embeddings [M, 128] on the device, M = ceil(L / 15360) (>= 1).

        Window m covers [0.96 m, 0.96 (m + 1)) s; the last partial window is zero-padded (silence).
        """
        wave = torch.as_tensor(np.asarray(waveform, dtype=np.float32))
        if wave.numel() == 0:
            wave = torch.zeros(1)  # no audio at all: one window of silence
        examples = waveform_to_examples(wave, pad_end=True)  # [M, 1, 96, 64]
        chunks = []
        for start in range(0, examples.shape[0], AUDIO_BATCH):
            batch = examples[start:start + AUDIO_BATCH].to(self.device)
            with self._autocast():
                chunks.append(self.model.encode_audio(batch).float())
        return torch.cat(chunks)

    @torch.inference_mode()
    def predict_logits(self, frames: np.ndarray, audio_embedding: torch.Tensor) -> torch.Tensor:
        """frames uint8 [n, h, w, 3] RGB (any size), audio_embedding [n, 128] -> logits [n, K, S, S] float32."""
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be [n, h, w, 3] RGB, got shape {frames.shape}")
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)  # [n, 3, h, w] in [0, 1]
        S = self.input_size
        if x.shape[-2:] != (S, S):
            x = F.interpolate(x, size=(S, S), mode="bilinear", align_corners=False, antialias=True)
        with self._autocast():
            out = self.model(x, audio_embedding=audio_embedding.to(self.device))
        return out.mask_logits.float()

    def postprocess(self, logits: torch.Tensor, out_size: tuple[int, int], *,
                    threshold: float | None = None) -> np.ndarray:
        """logits [n, K, S, S] -> uint8 masks [n, H, W] at `out_size` = (H, W) (see `postprocess_logits`).
        `threshold` (binary only) overrides the predictor's; ValueError unless strictly between 0 and 1."""
        cut = self._logit_threshold if threshold is None else logit_threshold(threshold)
        return postprocess_logits(logits, out_size, cut)


@torch.inference_mode()
def postprocess_logits(logits: torch.Tensor, out_size: tuple[int, int], cut: float) -> np.ndarray:
    """logits [n, K, S, S] -> uint8 masks [n, H, W] at `out_size` = (H, W); `cut` is the logit threshold.

    Binary: the logits are upsampled bilinearly, then thresholded, which gives smooth edges at any size; on
    a GPU with `F.interpolate` on the device, on the CPU with `model.mask_upsampling.upsample_mask`, the same
    masks at a fraction of the cost (only the boundary band is interpolated; the result is a column-major
    view, which is what COCO RLE reads without a copy). Semantic (K > 1): argmax at the model's size, then
    nearest-neighbour upsampling of the class ids; upsampling 71 logit maps to a full-HD frame would cost
    590 MB per frame.
    """
    H, W = out_size
    if logits.shape[1] == 1:
        if logits.device.type == "cpu":  # exact, without interpolating the whole frame (model.mask_upsampling)
            return upsample_mask(logits[:, 0].numpy(), (H, W), cut).transpose(0, 2, 1)
        up = F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)
        masks = (up[:, 0] > cut).to(torch.uint8)
    else:
        labels = logits.argmax(1, keepdim=True).to(torch.uint8)  # [n, 1, S, S]; K <= 255
        masks = F.interpolate(labels, size=(H, W), mode="nearest")[:, 0]
    return masks.cpu().numpy()
