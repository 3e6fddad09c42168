"""VGGish log-mel front end: 16 kHz mono waveform -> 0.96 s examples of 96 × 64 log-mel frames.

The VGGish audio encoder was trained on a very specific input representation, and its released
weights only give meaningful embeddings when fed exactly that representation. This module
re-implements the reference preprocessing of the VGGish release in PyTorch/torchaudio:

    S. Hershey et al., "CNN Architectures for Large-Scale Audio Classification", ICASSP 2017
    (arXiv:1609.09430); reference code and weights: the `research/audioset/vggish` directory of
    https://github.com/tensorflow/models (`mel_features.py`, `vggish_input.py`, `vggish_params.py`).

Recipe, as in the reference:

1. frames of 25 ms (400 samples) every 10 ms (160 samples), no centre padding;
2. each frame multiplied by a *periodic* Hann window of length 400;
3. magnitude (not power) of a 512-point real FFT -> 257 bins;
4. projection onto 64 triangular mel bands between 125 Hz and 7500 Hz, the triangles being drawn on
   the HTK mel scale (mel = 1127 ln(1 + f / 700)) and evaluated in the mel domain;
5. log(mel + 0.01);
6. non-overlapping groups of 96 frames (0.96 s) form one example [1, 96, 64] for the CNN.

Resampling to 16 kHz and down-mixing to mono are the caller's job (the reference uses resampy; any
good resampler is fine, the network is not sensitive to the exact filter).

Example counting (see `num_examples`), with L the number of samples:

* ``pad_end=False`` (the reference behaviour): only whole examples, M = F // 96 with
  F = 1 + (L - 400) // 160 frames (F = 0 when L < 400). One example needs 400 + 95 × 160 = 15 600
  samples (0.975 s), so a clip of exactly 0.96 s yields *zero* examples and a 5 s clip yields 5.
* ``pad_end=True``: the timeline is tiled by windows [0.96 m, 0.96 (m + 1)) and every window that
  contains at least one sample becomes an example, M = ceil(L / 15 360); the waveform is zero-padded
  at the end to 15 360 M + 240 samples, exactly what 96 M frames need. Empty audio (L = 0) gives
  zero examples, any non-empty audio at least one. Guarantee: for every time t in [0, L / 16 000),
  ``example_index_for_time(t) < num_examples(L, pad_end=True)``.
"""

from __future__ import annotations

import math

import torch
import torchaudio
from torch import Tensor, nn

__all__ = [
    "EXAMPLE_FRAMES",
    "EXAMPLE_SAMPLES",
    "EXAMPLE_SECONDS",
    "FFT_LENGTH",
    "LOG_OFFSET",
    "MEL_MAX_HZ",
    "MEL_MIN_HZ",
    "NUM_MEL_BINS",
    "SAMPLE_RATE",
    "STFT_HOP_S",
    "STFT_HOP_SAMPLES",
    "STFT_WINDOW_S",
    "STFT_WINDOW_SAMPLES",
    "LogMelFrontend",
    "example_index_for_time",
    "hz_to_mel",
    "num_examples",
    "num_frames",
    "vggish_mel_matrix",
    "waveform_to_examples",
]

# --- Parameters of the published VGGish preprocessing (`vggish_params.py`). ---
SAMPLE_RATE = 16000
STFT_WINDOW_S = 0.025
STFT_HOP_S = 0.010
STFT_WINDOW_SAMPLES = round(SAMPLE_RATE * STFT_WINDOW_S)  # 400
STFT_HOP_SAMPLES = round(SAMPLE_RATE * STFT_HOP_S)  # 160
# The reference uses the next power of two of the window length as the FFT size.
FFT_LENGTH = 1 << (STFT_WINDOW_SAMPLES - 1).bit_length()  # 512
NUM_FFT_BINS = FFT_LENGTH // 2 + 1  # 257
NUM_MEL_BINS = 64
MEL_MIN_HZ = 125
MEL_MAX_HZ = 7500
LOG_OFFSET = 0.01  # keeps log() finite on silence
EXAMPLE_FRAMES = 96
EXAMPLE_SECONDS = 0.96
EXAMPLE_SAMPLES = EXAMPLE_FRAMES * STFT_HOP_SAMPLES  # 15 360 samples between example starts

# HTK mel scale constants used by the reference.
_MEL_BREAK_HZ = 700.0
_MEL_HIGH_Q = 1127.0

# torch.stft centres a window shorter than n_fft inside the n_fft-long frame, i.e. the 400 window
# taps sit at offsets 56..455 of each 512-sample frame. The reference instead takes the 400 samples
# starting at the frame start and zero-pads them at the end to 512. Shifting the signal right by
# 56 samples makes torch's windowed samples exactly the reference ones; the remaining difference
# (where the 112 zeros sit inside the FFT buffer) is a circular shift, which changes only the phase
# of the FFT, never its magnitude.
_STFT_ALIGN_PAD = (FFT_LENGTH - STFT_WINDOW_SAMPLES) // 2  # 56


def hz_to_mel(frequencies_hz: Tensor) -> Tensor:
    """HTK mel scale as used by VGGish: ``1127 · ln(1 + f / 700)``.

    Args:
        frequencies_hz: frequencies in Hz, any shape.

    Returns:
        Mel values, same shape and dtype.
    """
    return _MEL_HIGH_Q * torch.log1p(frequencies_hz / _MEL_BREAK_HZ)


def vggish_mel_matrix(
    num_mel_bins: int = NUM_MEL_BINS,
    num_fft_bins: int = NUM_FFT_BINS,
    sample_rate: int = SAMPLE_RATE,
    lower_hz: float = MEL_MIN_HZ,
    upper_hz: float = MEL_MAX_HZ,
) -> Tensor:
    """Mel projection matrix built the VGGish way.

    Unlike `torchaudio.functional.melscale_fbanks`, which draws the triangles on a linear Hz axis,
    VGGish converts each FFT bin's centre frequency to mel and draws the triangles in the mel
    domain; the two differ by a few percent inside each band, enough to shift the embeddings.

    Args:
        num_mel_bins: number of mel bands.
        num_fft_bins: number of real-FFT bins (n_fft // 2 + 1), evenly spaced from 0 Hz to Nyquist.
        sample_rate: sample rate of the audio in Hz.
        lower_hz: lower edge of the lowest band, in Hz.
        upper_hz: upper edge of the highest band, in Hz.

    Returns:
        float32 tensor [num_fft_bins, num_mel_bins]; multiply a magnitude spectrogram whose last axis
        holds the FFT bins by it to get mel energies.
    """
    nyquist = sample_rate / 2.0
    if not 0.0 <= lower_hz < upper_hz <= nyquist:
        raise ValueError(f"need 0 <= lower_hz < upper_hz <= {nyquist}, got {lower_hz} and {upper_hz}")
    # Computed in float64 (like the numpy reference) and rounded once at the end.
    fft_bins_mel = hz_to_mel(torch.linspace(0.0, nyquist, num_fft_bins, dtype=torch.float64))
    # num_mel_bins + 2 edges: band i rises from edge i, peaks at edge i + 1 and falls to edge i + 2.
    edges = torch.linspace(
        float(hz_to_mel(torch.tensor(float(lower_hz), dtype=torch.float64))),
        float(hz_to_mel(torch.tensor(float(upper_hz), dtype=torch.float64))),
        num_mel_bins + 2,
        dtype=torch.float64,
    )
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]  # each [num_mel_bins]
    # Broadcast [num_fft_bins, 1] against [num_mel_bins] -> [num_fft_bins, num_mel_bins].
    mel = fft_bins_mel[:, None]
    rising = (mel - lower) / (centre - lower)
    falling = (upper - mel) / (upper - centre)
    weights = torch.minimum(rising, falling).clamp_min(0.0)
    # The reference zeroes the DC bin explicitly (it lies below 125 Hz anyway, so this only matters
    # if someone lowers `lower_hz` to 0).
    weights[0, :] = 0.0
    return weights.to(torch.float32)


def num_frames(num_samples: int) -> int:
    """Number of 25 ms / 10 ms log-mel frames the front end produces for `num_samples` samples."""
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if num_samples < STFT_WINDOW_SAMPLES:
        return 0
    return 1 + (num_samples - STFT_WINDOW_SAMPLES) // STFT_HOP_SAMPLES


def num_examples(num_samples: int, pad_end: bool = True) -> int:
    """Number of 0.96 s examples `waveform_to_examples` returns for `num_samples` samples.

    Args:
        num_samples: waveform length in samples at 16 kHz.
        pad_end: see the module docstring; True counts every 0.96 s window that holds audio
            (ceil(L / 15 360)), False only windows whose 96 frames fit entirely in the audio.

    Returns:
        The example count M (0 for empty audio in both modes).
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if pad_end:
        return -(-num_samples // EXAMPLE_SAMPLES)  # ceil division on ints, exact for any length
    return num_frames(num_samples) // EXAMPLE_FRAMES


def example_index_for_time(t_s: float) -> int:
    """Index of the example whose 0.96 s window [0.96 m, 0.96 (m + 1)) contains time `t_s`.

    Args:
        t_s: time in seconds from the start of the audio, >= 0.

    Returns:
        floor(t_s / 0.96). A time within a nanosecond below a window boundary counts as the
        boundary, so that e.g. t = 1.92 (not exactly representable) maps to window 2, not 1.
    """
    if not math.isfinite(t_s) or t_s < 0:
        raise ValueError(f"t_s must be a finite time >= 0 seconds, got {t_s}")
    return math.floor(t_s / EXAMPLE_SECONDS + 1e-9)


class LogMelFrontend(nn.Module):
    """Waveform -> VGGish log-mel frames.

    The module has no learnable parameters; its window and mel matrix are non-persistent buffers, so
    it follows `.to(device)` / `.double()` but adds nothing to a checkpoint. It computes in the dtype
    of its buffers (float32 by default) whatever the input dtype.
    """

    mel_matrix: Tensor  # [257, 64], non-persistent buffer

    def __init__(self) -> None:
        super().__init__()
        # torch.hann_window is periodic by default, which is what the reference uses.
        self.spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=FFT_LENGTH,
            win_length=STFT_WINDOW_SAMPLES,
            hop_length=STFT_HOP_SAMPLES,
            window_fn=torch.hann_window,
            wkwargs={"periodic": True},
            power=1.0,  # magnitude, not power
            center=False,
            normalized=False,
        )
        # torchaudio stores the window as a persistent buffer; re-register it as non-persistent so
        # that a model embedding this front end does not carry a constant window in its checkpoints.
        self.spectrogram.register_buffer("window", self.spectrogram.window, persistent=False)
        self.register_buffer("mel_matrix", vggish_mel_matrix(), persistent=False)

    def forward(self, waveform: Tensor) -> Tensor:
        """Compute log-mel frames.

        Args:
            waveform: float tensor [L] or [batch, L]; mono, 16 kHz, samples in [-1, 1].

        Returns:
            Tensor [batch, frames, 64] (batch = 1 for a 1-D input) with frames = 1 + (L - 400) // 160,
            or 0 frames when L < 400.
        """
        if not waveform.is_floating_point():
            raise TypeError(f"waveform must be a float tensor in [-1, 1], got dtype {waveform.dtype}")
        if waveform.dim() == 1:
            waveform = waveform.unsqueeze(0)
        if waveform.dim() != 2:
            raise ValueError(f"waveform must have shape [L] or [batch, L], got {tuple(waveform.shape)}")
        batch, length = waveform.shape
        dtype = self.mel_matrix.dtype
        waveform = waveform.to(dtype)
        frames = num_frames(length)
        if frames == 0:
            return waveform.new_zeros((batch, 0, NUM_MEL_BINS))
        # See `_STFT_ALIGN_PAD`: 56 zeros on the left align torch's frames with the reference ones,
        # 56 on the right let the last reference frame fit in a full 512-sample torch frame.
        padded = nn.functional.pad(waveform, (_STFT_ALIGN_PAD, _STFT_ALIGN_PAD))
        magnitude = self.spectrogram(padded)  # [batch, 257, frames]
        assert magnitude.shape[-1] == frames, (magnitude.shape, frames)
        mel = magnitude.transpose(1, 2) @ self.mel_matrix  # [batch, frames, 257] @ [257, 64]
        return torch.log(mel + LOG_OFFSET)  # [batch, frames, 64]


def waveform_to_examples(waveform: Tensor, *, pad_end: bool = True) -> Tensor:
    """Cut a waveform into VGGish input examples.

    Args:
        waveform: float tensor [L]; mono, 16 kHz, samples in [-1, 1].
        pad_end: if True, zero-pad the end so the last partial 0.96 s window becomes a whole example;
            if False, drop it (the reference behaviour). See the module docstring for the counts.

    Returns:
        float32 tensor [M, 1, 96, 64] on the waveform's device, M = `num_examples(L, pad_end)`;
        example m holds frames 96 m .. 96 m + 95, i.e. audio starting at 0.96 m seconds.
    """
    if waveform.dim() != 1:
        raise ValueError(f"waveform must have shape [L], got {tuple(waveform.shape)}")
    if not waveform.is_floating_point():
        raise TypeError(f"waveform must be a float tensor in [-1, 1], got dtype {waveform.dtype}")
    length = waveform.shape[0]
    count = num_examples(length, pad_end)
    if count == 0:
        return waveform.new_zeros((0, 1, EXAMPLE_FRAMES, NUM_MEL_BINS), dtype=torch.float32)
    if pad_end:
        # 96 M frames need 400 + (96 M - 1) × 160 = 15 360 M + 240 samples; never shorter than L.
        needed = count * EXAMPLE_SAMPLES + (STFT_WINDOW_SAMPLES - STFT_HOP_SAMPLES)
        waveform = nn.functional.pad(waveform, (0, needed - length))
    # A fresh front end costs ~3 ms to build, negligible next to the CNN; no shared state to manage.
    frames = LogMelFrontend().to(waveform.device)(waveform)[0]  # [F, 64]
    # Keep only whole examples (frames past the last whole example are dropped), then split:
    # [M × 96, 64] -> [M, 96, 64] -> [M, 1, 96, 64] (the CNN's single input channel).
    frames = frames[: count * EXAMPLE_FRAMES]
    return frames.reshape(count, 1, EXAMPLE_FRAMES, NUM_MEL_BINS)
