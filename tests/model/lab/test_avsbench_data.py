"""AVSBench loaders on tiny datasets written in the real layouts (32×32 frames, short wavs)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from model.lab.data import (
    PAD_FRAME_RGB,
    AVSSDataset,
    MS3Dataset,
    S4Dataset,
    UnsafePickleError,
    files,
    layout,
    load_log_mel_pkl,
    read_wav,
)

SIDE = 32
SR = 16000


def rgb(seed: int, h: int = SIDE, w: int = SIDE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def square_mask(t: int) -> np.ndarray:
    m = np.zeros((SIDE, SIDE), dtype=np.uint8)
    m[4 + t: 12 + t, 8:20] = 1
    return m


def log_mel(seed: int, count: int = 5) -> torch.Tensor:
    return torch.randn(count, 1, 96, 64, generator=torch.Generator().manual_seed(seed))


def tone(seconds: float, rate: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return 0.3 * np.sin(2 * np.pi * 440 * t)


# ------------------------------------------------------------------------------------------------
# S4
# ------------------------------------------------------------------------------------------------
S4_CLIPS = [  # name, category, split, audio kind
    ("clipA", "dog_barking", "train", "pkl"),
    ("clipB", "race_car", "train", "pickle"),  # official format: pickle.dump(tensor)
    ("clipC", "dog_barking", "val", "wav"),  # no pkl: computed from audio_wav/
    ("clipD", "race_car", "test", "pkl"),
]


@pytest.fixture(scope="module")
def s4_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("Single-source")
    rows = []
    for i, (name, category, split, audio) in enumerate(S4_CLIPS):
        rows.append({"name": name, "start": 0, "category": category, "split": split})
        for t in range(layout.S4_FRAMES):
            files.write_frame(layout.s4_frame_path(root, split, category, name, t), rgb(10 * i + t))
        for t in range(1 if split == "train" else layout.S4_FRAMES):  # the release has 1 train mask per clip
            files.write_binary_mask(layout.s4_mask_path(root, split, category, name, t), square_mask(t))
        pkl = layout.s4_audio_pkl_path(root, split, category, name)
        if audio == "pkl":
            files.write_log_mel(pkl, log_mel(i))
        elif audio == "pickle":
            pkl.parent.mkdir(parents=True, exist_ok=True)
            lm = torch.randn(5, 96, 64, requires_grad=True)[:, None].float()  # non-leaf, as vggish_input makes it
            pkl.write_bytes(pickle.dumps(lm))
        else:
            files.write_wav(layout.s4_audio_wav_path(root, split, category, name), tone(2.0))  # 2 whole examples
    files.write_csv(layout.s4_csv_path(root), layout.S4_CSV_COLUMNS, rows)
    return root


def test_s4_split_filtering_and_shapes(s4_root: Path) -> None:
    train = S4Dataset(s4_root, "train", size=16)
    assert [name for name, _ in train.clips] == ["clipA", "clipB"]  # csv order kept
    assert len(S4Dataset(s4_root, "val")) == 1
    assert len(S4Dataset(s4_root, "test")) == 1
    item = train[0]
    assert item["frames"].shape == (5, 3, 16, 16)
    assert item["frames"].dtype == torch.float32
    assert item["frames"].min() >= 0.0
    assert item["frames"].max() <= 1.0
    assert item["audio"].shape == (5, 1, 96, 64)
    assert item["masks"].shape == (5, 16, 16)
    assert (item["name"], item["category"]) == ("clipA", "dog_barking")
    assert torch.equal(item["audio"], log_mel(0))


def test_s4_train_has_ground_truth_only_for_the_first_frame(s4_root: Path) -> None:
    item = S4Dataset(s4_root, "train", size=SIDE)[0]
    assert item["gt_valid"].tolist() == [True, False, False, False, False]
    assert item["frame_valid"].all()
    assert torch.equal(item["masks"][0], torch.from_numpy(square_mask(0)).float())
    assert item["masks"][1:].eq(0).all()
    test = S4Dataset(s4_root, "test", size=SIDE)[0]
    assert test["gt_valid"].all()
    for t in range(5):
        assert torch.equal(test["masks"][t], torch.from_numpy(square_mask(t)).float())


def test_s4_frames_are_the_stored_pixels(s4_root: Path) -> None:
    item = S4Dataset(s4_root, "val", size=SIDE)[0]  # no resize at the stored size
    expected = torch.from_numpy(rgb(20 + 3)).permute(2, 0, 1).float() / 255
    assert torch.equal(item["frames"][3], expected)


def test_s4_audio_from_official_pickle_and_from_wav(s4_root: Path) -> None:
    assert S4Dataset(s4_root, "train")[1]["audio"].shape == (5, 1, 96, 64)
    audio = S4Dataset(s4_root, "val")[0]["audio"]  # 2 s of audio: 2 whole examples, then the last repeated
    assert audio.shape == (5, 1, 96, 64)
    assert not torch.equal(audio[0], audio[1])
    assert torch.equal(audio[1], audio[2])
    assert torch.equal(audio[1], audio[4])


def test_s4_batches_collate(s4_root: Path) -> None:
    batch = next(iter(DataLoader(S4Dataset(s4_root, "train", size=16), batch_size=2)))
    assert batch["frames"].shape == (2, 5, 3, 16, 16)
    assert batch["gt_valid"].shape == (2, 5)
    assert batch["name"] == ["clipA", "clipB"]


def test_bad_split_is_refused(s4_root: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        S4Dataset(s4_root, "validation")


# ------------------------------------------------------------------------------------------------
# Pickle safety
# ------------------------------------------------------------------------------------------------
class _Payload:
    def __reduce__(self) -> tuple:
        return (os.getcwd, ())  # harmless, but a call nonetheless: must never run


def test_pkl_with_a_non_tensor_pickle_payload_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(UnsafePickleError, match=r"(posix|nt|os)\.getcwd"):
        load_log_mel_pkl(evil)
    wrapped = tmp_path / "wrapped.pkl"  # a tensor hidden next to a call is refused as well
    wrapped.write_bytes(pickle.dumps([torch.zeros(5, 1, 96, 64), _Payload()]))
    with pytest.raises(UnsafePickleError):
        load_log_mel_pkl(wrapped)


def test_pkl_must_hold_log_mel_examples(tmp_path: Path) -> None:
    as_dict = tmp_path / "dict.pkl"
    torch.save({"audio": torch.zeros(5, 1, 96, 64)}, as_dict)
    with pytest.raises(ValueError, match="expected a tensor"):
        load_log_mel_pkl(as_dict)
    wrong = tmp_path / "wrong.pkl"
    torch.save(torch.zeros(5, 1, 32, 32), wrong)
    with pytest.raises(ValueError, match=r"\[M, 1, 96, 64\]"):
        load_log_mel_pkl(wrong)
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="not a readable"):
        load_log_mel_pkl(garbage)


def test_pkl_round_trips(tmp_path: Path) -> None:
    x = log_mel(3)
    assert torch.equal(load_log_mel_pkl(files.write_log_mel(tmp_path / "a.pkl", x)), x)
    (tmp_path / "b.pkl").write_bytes(pickle.dumps(x))
    assert torch.equal(load_log_mel_pkl(tmp_path / "b.pkl"), x)


def test_wav_reading_and_resampling(tmp_path: Path) -> None:
    wav = files.write_wav(tmp_path / "a.wav", tone(0.5))
    samples, rate = read_wav(wav)
    assert rate == SR
    assert samples.shape == (8000,)
    assert torch.allclose(samples, torch.from_numpy(tone(0.5)).float(), atol=1 / 32768)


# ------------------------------------------------------------------------------------------------
# MS3
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ms3_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("Multi-sources")
    rows = []
    for i, (name, split) in enumerate([("m1", "train"), ("m2", "val"), ("m3", "train")]):
        rows.append({"video_id": name, "split": split})
        for t in range(layout.MS3_FRAMES):
            files.write_frame(layout.ms3_frame_path(root, name, t), rgb(100 + 10 * i + t))
            files.write_binary_mask(layout.ms3_mask_path(root, split, name, t), square_mask(t))
        files.write_log_mel(layout.ms3_audio_pkl_path(root, split, name), log_mel(50 + i))
    files.write_csv(layout.ms3_csv_path(root), layout.MS3_CSV_COLUMNS, rows)
    return root


def test_ms3_layout_and_all_frames_labelled(ms3_root: Path) -> None:
    assert layout.ms3_frame_path(ms3_root, "m1", 0).name == "m1.mp4_1.png"
    train = MS3Dataset(ms3_root, "train", size=SIDE)
    assert train.names == ["m1", "m3"]
    item = train[1]
    assert item["frames"].shape == (5, 3, SIDE, SIDE)
    assert item["gt_valid"].all()
    assert item["frame_valid"].all()
    for t in range(5):
        assert torch.equal(item["masks"][t], torch.from_numpy(square_mask(t)).float())
    assert torch.equal(item["audio"], log_mel(52))
    assert MS3Dataset(ms3_root, "val", size=8)[0]["masks"].shape == (5, 8, 8)


# ------------------------------------------------------------------------------------------------
# AVSS
# ------------------------------------------------------------------------------------------------
AVSS_CLASSES = ("background", "dog", "car", "piano", "woman")
AVSS_CLIPS = [  # uid, subset, split
    ("s_train", "v1s", "train"),
    ("m_train", "v1m", "train"),
    ("v2_train", "v2", "train"),
    ("s_test", "v1s", "test"),
    ("v2_val", "v2", "val"),
]


def label_map(t: int, class_id: int) -> np.ndarray:
    labels = np.zeros((SIDE, SIDE), dtype=np.int64)
    labels[2 + t: 10 + t, 3:15] = class_id
    labels[20:24, 20:24] = (class_id % 4) + 1
    return labels


@pytest.fixture(scope="module")
def avss_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("avss")
    palette = layout.avss_palette(len(AVSS_CLASSES))
    files.write_label2idx(layout.avss_label2idx_path(root), AVSS_CLASSES)
    rows = []
    for i, (uid, subset, split) in enumerate(AVSS_CLIPS):
        rows.append({"vid": f"yt{i}", "uid": uid, "s_min": 0, "s_sec": 0, "a_obj": "dog", "split": split,
                     "label": subset})
        n_frames = layout.AVSS_SUBSET_FRAMES[subset]
        n_labels = 1 if (subset == "v1s" and split == "train") else n_frames
        for t in range(n_frames):
            flat = np.zeros((SIDE, SIDE, 3), dtype=np.uint8)
            flat[...] = (25 * t, 200, 100)  # flat colours survive JPEG almost exactly
            files.write_frame(layout.avss_frame_path(root, subset, uid, t), flat)
        for t in range(n_labels):
            files.write_colour_label(layout.avss_label_path(root, subset, uid, t), label_map(t, 1 + i % 4), palette)
        rate = 8000 if subset == "v1m" else SR  # v1m audio exercises resampling
        files.write_wav(layout.avss_audio_path(root, subset, uid), tone(float(n_frames), rate), rate)
    files.write_csv(layout.avss_csv_path(root), layout.AVSS_CSV_COLUMNS, rows)
    return root


def test_palette_is_the_voc_colour_map() -> None:
    palette = layout.avss_palette(71)
    assert palette[:9].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128],
                                    [128, 0, 128], [0, 128, 128], [128, 128, 128], [64, 0, 0]]
    assert len({tuple(c) for c in palette.tolist()}) == 71


def test_colour_to_class_maps_unknown_colours_to_background() -> None:
    palette = layout.avss_palette(71)
    labels = np.arange(71).reshape(1, 71)
    image = layout.class_to_colour(labels, palette)
    assert np.array_equal(layout.colour_to_class(image, palette), labels)
    image[0, 5] = (1, 2, 3)  # in no palette entry: the original's argmax over all-False gives class 0
    assert layout.colour_to_class(image, palette)[0, 5] == 0


def test_avss_split_and_subset_filtering(avss_root: Path) -> None:
    train = AVSSDataset(avss_root, "train")
    assert train.clips == [("s_train", "v1s"), ("m_train", "v1m"), ("v2_train", "v2")]
    assert train.num_classes == 5
    assert train.class_names == AVSS_CLASSES
    assert AVSSDataset(avss_root, "train", subsets=("v2",)).clips == [("v2_train", "v2")]
    assert len(AVSSDataset(avss_root, "test")) == 1
    assert len(AVSSDataset(avss_root, "val")) == 1
    with pytest.raises(ValueError, match="subset"):
        AVSSDataset(avss_root, "train", subsets=("v3",))
    with pytest.raises(ValueError, match="5 classes"):
        AVSSDataset(avss_root, "train", num_classes=71)


def test_avss_v1s_train_padding_and_flags(avss_root: Path) -> None:
    item = AVSSDataset(avss_root, "train", size=SIDE)[0]
    assert (item["name"], item["subset"]) == ("s_train", "v1s")
    assert item["frames"].shape == (10, 3, SIDE, SIDE)
    assert item["masks"].shape == (10, SIDE, SIDE)
    assert item["masks"].dtype == torch.int64
    assert item["audio"].shape == (10, 1, 96, 64)
    assert item["frame_valid"].tolist() == [True] * 5 + [False] * 5
    assert item["gt_valid"].tolist() == [True] + [False] * 9
    assert torch.equal(item["masks"][0], torch.from_numpy(label_map(0, 1)))  # colour -> class ids
    assert item["masks"][1:].eq(0).all()  # only 0.png on disk: the rest padded with background
    pad = torch.tensor(PAD_FRAME_RGB).view(3, 1, 1).expand(3, SIDE, SIDE)
    assert all(torch.equal(item["frames"][t], pad) for t in range(5, 10))  # normalises to exactly 0
    assert (item["frames"][0, 1] - 200 / 255).abs().max() < 0.02  # real frame
    assert item["audio"][5:].eq(0).all()
    assert not item["audio"][4].eq(0).all()


def test_avss_v1m_and_v2_flags(avss_root: Path) -> None:
    train = AVSSDataset(avss_root, "train", size=16)
    v1m, v2 = train[1], train[2]
    assert v1m["frame_valid"].tolist() == [True] * 5 + [False] * 5
    assert v1m["gt_valid"].tolist() == [True] * 5 + [False] * 5
    assert v1m["masks"][4].ne(0).any()
    assert v1m["masks"][5:].eq(0).all()
    assert not v1m["audio"][4].eq(0).all()
    assert v1m["audio"][5:].eq(0).all()
    assert v2["frame_valid"].all()
    assert v2["gt_valid"].all()
    assert v2["masks"].shape == (10, 16, 16)
    assert v2["masks"][9].ne(0).any()
    assert set(v2["masks"].unique().tolist()) <= set(range(5))


def test_avss_test_clip_of_v1s_loads_its_five_labels(avss_root: Path) -> None:
    item = AVSSDataset(avss_root, "test", size=SIDE)[0]
    assert item["gt_valid"].tolist() == [True] + [False] * 9  # the flag still says v1s ...
    for t in range(5):  # ... but all five label maps are loaded (and evaluated by avss/test.py)
        assert torch.equal(item["masks"][t], torch.from_numpy(label_map(t, 4)))


def test_avss_eval_requires_all_labels(avss_root: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(avss_root, root)
    layout.avss_label_path(root, "v1s", "s_test", 4).unlink()
    with pytest.raises(ValueError, match="needs 5 label maps"):
        AVSSDataset(root, "test")[0]


def test_avss_train_crop_versus_eval_resize(tmp_path: Path) -> None:
    root = tmp_path / "avss_crop"
    files.write_label2idx(layout.avss_label2idx_path(root), AVSS_CLASSES)
    wide = np.zeros((SIDE, 48, 3), dtype=np.uint8)
    wide[:, :8] = (0, 0, 255)  # blue side bands, cut away by the centre crop
    wide[:, 40:] = (0, 0, 255)
    wide[:, 8:40] = (255, 0, 0)
    labels = np.zeros((SIDE, 48), dtype=np.int64)
    labels[:, :8] = 2
    palette = layout.avss_palette(5)
    rows = []
    for uid, split in (("a", "train"), ("b", "val")):
        rows.append({"vid": uid, "uid": uid, "s_min": 0, "s_sec": 0, "a_obj": "car", "split": split, "label": "v2"})
        for t in range(10):
            files.write_frame(layout.avss_frame_path(root, "v2", uid, t).with_suffix(".jpg"), wide)
            files.write_colour_label(layout.avss_label_path(root, "v2", uid, t), labels, palette)
        files.write_wav(layout.avss_audio_path(root, "v2", uid), tone(1.0))
    files.write_csv(layout.avss_csv_path(root), layout.AVSS_CSV_COLUMNS, rows)

    cropped = AVSSDataset(root, "train", size=SIDE)[0]
    assert cropped["frames"].shape == (10, 3, SIDE, SIDE)
    assert cropped["frames"][0, 2, :, 2:-2].max() < 0.1  # no blue left (JPEG may bleed into the edge columns)
    assert cropped["masks"].eq(0).all()  # the class-2 band was cropped away
    resized = AVSSDataset(root, "val", size=SIDE)[0]
    assert resized["frames"][0, 2, :, 0].min() > 0.9  # squeezed, the blue band is still there
    assert resized["masks"][0, :, 0].eq(2).all()
    assert AVSSDataset(root, "train", size=SIDE, train_crop=False)[0]["masks"][0, :, 0].eq(2).all()
