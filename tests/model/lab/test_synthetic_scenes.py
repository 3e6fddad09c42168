"""Synthetic scenes: deterministic, the sound (not the look) decides the answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.lab.data.synthetic_scenes import (
    CATEGORIES,
    SEGMENT_S,
    ground_truth,
    make_scene,
    render_audio,
    render_frame,
)
from model.modeling.audio_frontend import waveform_to_examples


@pytest.mark.parametrize("subset", ["s4", "ms3", "avss"])
def test_scenes_are_deterministic(subset: str) -> None:
    a, b = make_scene(subset, 7, 3), make_scene(subset, 7, 3)
    assert a == b
    assert make_scene(subset, 8, 3) != a
    np.testing.assert_array_equal(render_audio(a), render_audio(b))
    np.testing.assert_array_equal(render_frame(a, 1.3, (96, 96))[0], render_frame(b, 1.3, (96, 96))[0])


def test_subset_rules() -> None:
    for i in range(20):
        s4, ms3, avss = make_scene("s4", 0, i), make_scene("ms3", 0, i), make_scene("avss", 0, i)
        assert s4.num_segments == ms3.num_segments == 5
        assert avss.num_segments == 10
        assert all(len(sounding) == 1 for sounding in s4.sounding)
        assert all(len(sounding) >= 1 for sounding in ms3.sounding)
        for scene in (s4, ms3, avss):
            categories = [o.category for o in scene.objects]
            assert len(set(categories)) == len(categories) >= 2  # distinct categories: the shape is the class
    assert abs(make_scene("s4", 0, 0).duration_s - 5 * SEGMENT_S) < 1e-9


def test_ground_truth_follows_the_sound_not_the_look() -> None:
    scene = make_scene("s4", 0, 5)
    changes = [i for i in range(1, 5) if scene.sounding[i] != scene.sounding[i - 1]]
    assert changes, "this scene's sounding object changes; pick another index if the generator changed"
    i = changes[0]
    t_before, t_after = SEGMENT_S * (i - 0.5), SEGMENT_S * (i + 0.5)
    _, ids_before = render_frame(scene, t_before, (128, 128))
    gt_before = ground_truth(scene, ids_before, t_before)
    gt_after = ground_truth(scene, render_frame(scene, t_after, (128, 128))[1], t_after)
    sounding_before = scene.sounding[i - 1][0] + 1
    assert gt_before.any()
    np.testing.assert_array_equal(gt_before > 0, ids_before == sounding_before)
    assert not np.array_equal(gt_before > 0, gt_after > 0)


def test_avss_ground_truth_holds_class_ids() -> None:
    scene = make_scene("avss", 1, 2)
    t = SEGMENT_S * 0.5
    gt = ground_truth(scene, render_frame(scene, t, (128, 128))[1], t)
    expected = {scene.objects[k].category + 1 for k in scene.sounding[0]}
    assert set(np.unique(gt)) - {0} <= expected
    assert set(np.unique(gt)) - {0}  # something sounds and is visible


def test_each_category_has_its_own_sound() -> None:
    """Log-mel examples of the eight signatures must be far apart: the audio alone can name the class."""
    means = []
    for category in range(len(CATEGORIES)):
        scene = next(s for i in range(200)
                     if (s := make_scene("s4", 3, i)).objects[s.sounding[0][0]].category == category)
        audio = render_audio(scene)[: int(SEGMENT_S * 16000)]
        means.append(waveform_to_examples(torch.from_numpy(audio))[0, 0].mean(0))  # mean spectrum [64]
    spectra = torch.stack(means)
    distances = torch.cdist(spectra, spectra) + torch.eye(len(CATEGORIES)) * 1e3
    assert float(distances.min()) > 1.0
