"""The live alignment rule: a live frame at time t hears the sound of the 0.96 s that END at t
(`AVSPredictor.embeddings_ending_at`: the 96 log-mel frames whose 25 ms windows end by t), never sound from after
t, which a live stream does not have yet. The offline rule (`worker.engine.audio_windows_for` over
`audio_embeddings`) gives a frame the fixed 0.96 s window [0.96 m, 0.96 (m + 1)) that contains t, future included.

The clips are built so that the two rules hear different things: silence then a tone (offline hears the tone
coming; live does not), and a tone that stops (live still hears it; offline's window is silent).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.modeling.audio_frontend import EXAMPLE_FRAMES, SAMPLE_RATE, STFT_HOP_SAMPLES, STFT_WINDOW_SAMPLES
from model.predictor import AVSPredictor, load_predictor
from worker.engine import audio_windows_for

SR = SAMPLE_RATE
SPAN = STFT_WINDOW_SAMPLES + (EXAMPLE_FRAMES - 1) * STFT_HOP_SAMPLES  # 15 600 samples: what 96 frames cover
SAME = {"atol": 1e-4, "rtol": 1e-4}
DIFFERENT = 0.05  # the smallest max-abs difference that counts as "another sound" (silence vs tone: > 1)


@pytest.fixture(scope="module")
def predictor() -> AVSPredictor:
    return load_predictor()  # the shipped tiny demo checkpoint, on the CPU


def _tone(seconds: float, hz: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def _silence_embedding(predictor: AVSPredictor) -> torch.Tensor:
    return predictor.audio_embeddings(np.zeros(15360, dtype=np.float32))[0]


def _offline(predictor: AVSPredictor, wave: np.ndarray, times: list[float]) -> torch.Tensor:
    table = predictor.audio_embeddings(wave)
    silence = _silence_embedding(predictor)[None]
    table = torch.cat([table, silence])  # row M = silence, as the worker builds its table
    return table[torch.as_tensor(audio_windows_for(times, table.shape[0] - 1))]


def _far(a: torch.Tensor, b: torch.Tensor) -> bool:
    return float((a - b).abs().max()) > DIFFERENT


def _live_end_sample(t: float) -> int:
    """One past the last sample the live rule hears at t: the end of the last 25 ms frame that ends by t."""
    last_frame = int((t * SR - STFT_WINDOW_SAMPLES) // STFT_HOP_SAMPLES)
    return last_frame * STFT_HOP_SAMPLES + STFT_WINDOW_SAMPLES


# ---------------------------------------------------------------------------------- the two rules differ
def test_offline_hears_a_sound_that_has_not_begun_yet_live_does_not(predictor: AVSPredictor) -> None:
    wave = _tone(3.0)
    wave[:SR] = 0.0  # silent until 1.0 s, then a loud tone
    t = 0.99
    assert audio_windows_for([t], 10)[0] == 1  # offline: the window [0.96, 1.92) s, tone from 1.0 s on
    live = predictor.embeddings_ending_at(wave, 0, [t])[0]
    offline = _offline(predictor, wave, [t])[0]
    silence = _silence_embedding(predictor)
    torch.testing.assert_close(live, silence, **SAME)  # live: only the silent 0.975 s before 0.99 s
    assert _far(offline, silence), "the offline window 1 holds the tone"
    assert _far(live, offline)
    # once the tone has begun, live hears it too
    assert _far(predictor.embeddings_ending_at(wave, 0, [1.3])[0], silence)


def test_live_still_hears_a_sound_that_stopped_offline_does_not(predictor: AVSPredictor) -> None:
    wave = np.zeros(3 * SR, dtype=np.float32)
    wave[: int(0.95 * SR)] = _tone(0.95)  # a tone until 0.95 s, then silence
    t = 1.5
    assert audio_windows_for([t], 10)[0] == 1  # offline: [0.96, 1.92) s, all silent
    live = predictor.embeddings_ending_at(wave, 0, [t])[0]
    offline = _offline(predictor, wave, [t])[0]
    silence = _silence_embedding(predictor)
    torch.testing.assert_close(offline, silence, **SAME)
    assert _far(live, silence), "live hears 0.525 .. 0.95 s of tone"
    # a full window after the tone stopped, live is silent too
    torch.testing.assert_close(predictor.embeddings_ending_at(wave, 0, [1.95])[0], silence, **SAME)


def test_live_embedding_is_that_of_the_span_ending_at_t(predictor: AVSPredictor) -> None:
    """Live at t == the offline embedding of exactly the 96 frames' samples that end by t (any t, any phase)."""
    wave = np.concatenate([_tone(1.2, 300), _noise(int(0.9 * SR)), _tone(1.4, 1200, 0.2)])
    times = [1.0, 1.337, 1.9, 2.05, 2.71, 3.4999]
    live = predictor.embeddings_ending_at(wave, 0, times)
    assert live.shape == (len(times), 128)
    for row, t in zip(live, times, strict=True):
        end = _live_end_sample(t)
        assert t * SR - STFT_HOP_SAMPLES < end <= t * SR  # ends by t, less than a hop before it
        reference = predictor.audio_embeddings(wave[end - SPAN:end])[0]  # window 0 = those 96 frames
        torch.testing.assert_close(row, reference, **SAME)
    # and the times of one call are independent of each other
    torch.testing.assert_close(live[2], predictor.embeddings_ending_at(wave, 0, [times[2]])[0], **SAME)


# --------------------------------------------------------------------------------- nothing from the future
def test_live_embedding_depends_only_on_the_sound_just_before_t(predictor: AVSPredictor) -> None:
    wave = _tone(4.0, 500)
    t = 2.5
    n = int(t * SR)
    base = predictor.embeddings_ending_at(wave, 0, [t])[0]

    future = wave.copy()
    future[n:] = _noise(len(wave) - n)  # anything after t: no effect
    torch.testing.assert_close(predictor.embeddings_ending_at(future, 0, [t])[0], base, **SAME)
    shorter = wave[:n]  # nor whether it was received at all
    torch.testing.assert_close(predictor.embeddings_ending_at(shorter, 0, [t])[0], base, **SAME)

    old = wave.copy()
    old[: n - SPAN - STFT_HOP_SAMPLES] = _noise(n - SPAN - STFT_HOP_SAMPLES, 1)  # older than the window: no effect
    torch.testing.assert_close(predictor.embeddings_ending_at(old, 0, [t])[0], base, **SAME)

    recent = wave.copy()
    recent[n - int(0.5 * SR):n - int(0.3 * SR)] = _noise(int(0.2 * SR), 2)  # inside (t - 0.96, t): heard
    assert _far(predictor.embeddings_ending_at(recent, 0, [t])[0], base)
    last = wave.copy()
    last[n - int(0.1 * SR):n - STFT_HOP_SAMPLES] = 0.0  # the last 100 ms before t: heard
    assert _far(predictor.embeddings_ending_at(last, 0, [t])[0], base)


# ------------------------------------------------------------------------------------------- ring buffer
@pytest.mark.parametrize("dropped_s", [0.5, 1.0, 1.52])
def test_a_ring_buffer_that_dropped_old_samples_gives_the_same_embeddings(predictor: AVSPredictor,
                                                                          dropped_s: float) -> None:
    wave = np.concatenate([_tone(1.0, 300), _noise(SR), _tone(2.0, 900)])
    start = int(dropped_s * SR) // STFT_HOP_SAMPLES * STFT_HOP_SAMPLES  # a cut on the hop grid
    times = [2.6, 3.1, 3.9]  # each window begins after the cut
    full = predictor.embeddings_ending_at(wave, 0, times)
    ring = predictor.embeddings_ending_at(wave[start:], start, times)
    torch.testing.assert_close(ring, full, **SAME)
    assert _far(full[0], full[2])  # the times really hear different sounds


def test_samples_missing_before_the_ring_start_count_as_silence(predictor: AVSPredictor) -> None:
    wave = _tone(3.0, 700)
    silence = _silence_embedding(predictor)
    # the buffer holds 2.0 .. 3.0 s; at 2.5 s only 0.5 s of it is in the window, the rest is silence
    ring = predictor.embeddings_ending_at(wave[2 * SR:], 2 * SR, [2.5])[0]
    full = predictor.embeddings_ending_at(wave, 0, [2.5])[0]
    assert _far(ring, full)  # not the full tone window
    assert _far(ring, silence)  # nor silence
    # the same as a stream whose sound began at 2.0 s after silence (the sound starts 25 ms in, so the frames
    # straddling the start hold zeros in both)
    quiet_start = wave.copy()
    quiet_start[: 2 * SR + STFT_WINDOW_SAMPLES] = 0.0
    torch.testing.assert_close(predictor.embeddings_ending_at(quiet_start[2 * SR:], 2 * SR, [2.5])[0],
                               predictor.embeddings_ending_at(quiet_start, 0, [2.5])[0], **SAME)
    # a time before the buffer began: only silence
    torch.testing.assert_close(predictor.embeddings_ending_at(wave[2 * SR:], 2 * SR, [1.5])[0], silence, **SAME)


# ------------------------------------------------------------------------------------ before the sound began
@pytest.mark.parametrize("t", [0.0, 0.01, 0.02])
def test_before_any_frame_of_sound_live_hears_silence(predictor: AVSPredictor, t: float) -> None:
    wave = _tone(2.0)  # loud from the very first sample
    torch.testing.assert_close(predictor.embeddings_ending_at(wave, 0, [t])[0], _silence_embedding(predictor),
                               **SAME)


def test_the_first_second_is_padded_with_silence(predictor: AVSPredictor) -> None:
    tone = _tone(2.0, 600)
    tone[:STFT_WINDOW_SAMPLES] = 0.0  # starts 25 ms in: a frame straddling the start holds only zeros
    t = 0.5
    early = predictor.embeddings_ending_at(tone, 0, [t])[0]  # 48 frames of sound, 48 of padding
    delayed = np.concatenate([np.zeros(SR, dtype=np.float32), tone])
    torch.testing.assert_close(early, predictor.embeddings_ending_at(delayed, 0, [t + 1.0])[0], **SAME)
    assert _far(early, _silence_embedding(predictor))
    assert _far(early, predictor.embeddings_ending_at(tone, 0, [1.5])[0])  # not yet a full window of tone


def test_empty_audio_is_silence(predictor: AVSPredictor) -> None:
    silence = _silence_embedding(predictor)
    out = predictor.embeddings_ending_at(np.zeros(0, dtype=np.float32), 0, [0.0, 0.7, 5.0])
    assert out.shape == (3, 128)
    for row in out:
        torch.testing.assert_close(row, silence, **SAME)
