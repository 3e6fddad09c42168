"""AVSPredictor stages: audio windows, resizing, thresholds and upsampling to the video's size."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.predictor import AVSPredictor


@pytest.fixture(scope="module")
def predictor() -> AVSPredictor:
    return AVSPredictor.from_variant("avesformer-tiny", threshold=0.5)


@pytest.mark.parametrize(("seconds", "windows"), [(0.0, 1), (0.5, 1), (0.96, 1), (1.0, 2), (5.0, 6)])
def test_one_embedding_per_started_window(predictor: AVSPredictor, seconds: float, windows: int) -> None:
    emb = predictor.audio_embeddings(np.zeros(int(seconds * 16000), dtype=np.float32))
    assert emb.shape == (windows, 128)


def test_embeddings_depend_on_the_sound(predictor: AVSPredictor) -> None:
    t = np.arange(32000) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    silence = np.zeros_like(tone)
    loud, quiet = predictor.audio_embeddings(tone), predictor.audio_embeddings(silence)
    assert (loud - quiet).abs().max() > 1e-3
    torch.testing.assert_close(quiet[0], quiet[1])  # two silent windows embed identically


def test_predict_logits_resizes_any_frame_size(predictor: AVSPredictor) -> None:
    frames = np.random.default_rng(0).integers(0, 255, (3, 90, 170, 3), dtype=np.uint8)
    emb = predictor.audio_embeddings(np.zeros(16000, dtype=np.float32))[:1].expand(3, -1)
    logits = predictor.predict_logits(frames, emb)
    S = predictor.input_size
    assert logits.shape == (3, 1, S, S)
    assert logits.dtype == torch.float32
    with pytest.raises(ValueError, match="RGB"):
        predictor.predict_logits(frames[..., 0], emb)


def test_binary_postprocess_thresholds_at_the_video_size(predictor: AVSPredictor) -> None:
    logits = torch.full((2, 1, 8, 8), -5.0)
    logits[0, 0, :, :4] = 5.0  # left half sounding in frame 0
    masks = predictor.postprocess(logits, (121, 161))  # odd sizes on purpose
    assert masks.shape == (2, 121, 161)
    assert masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 1}
    assert masks[0, :, :70].all()
    assert not masks[0, :, 90:].any()
    assert not masks[1].any()


def test_threshold_is_a_probability(predictor: AVSPredictor) -> None:
    logit_of_0_7 = math.log(0.7 / 0.3)
    logits = torch.full((1, 1, 4, 4), logit_of_0_7 - 0.01)
    strict = AVSPredictor(predictor.model, predictor.cfg, threshold=0.7)
    lenient = AVSPredictor(predictor.model, predictor.cfg, threshold=0.6)
    assert not strict.postprocess(logits, (4, 4)).any()
    assert lenient.postprocess(logits, (4, 4)).all()
    with pytest.raises(ValueError, match="threshold"):
        AVSPredictor(predictor.model, predictor.cfg, threshold=1.0)


def test_semantic_postprocess_gives_class_ids() -> None:
    semantic = AVSPredictor.from_variant("avesformer-tiny")
    semantic.cfg = semantic.cfg.replace(num_classes=71)
    logits = torch.zeros(1, 71, 4, 4)
    logits[0, 17, :2] = 10.0  # class 17 on the top half
    labels = semantic.postprocess(logits, (40, 30))
    assert labels.shape == (1, 40, 30)
    assert (labels[0, :20] == 17).all()
    assert (labels[0, 20:] == 0).all()


def test_warmup_runs(predictor: AVSPredictor) -> None:
    predictor.warmup(2)
