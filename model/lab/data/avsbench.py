"""PyTorch datasets for the real AVSBench layouts: S4, MS3 and AVSS (AVSBench-semantic).

Each item is one clip, a dict of tensors::

    frames       float32 [T, 3, S, S]  RGB in [0, 1], bilinear resize (not normalised: the model does it)
    audio        float32 [T, 1, 96, 64] VGGish log-mel, example t goes with frame t
    masks        S4/MS3: float32 [T, S, S] 0/1;  AVSS: int64 [T, S, S] class ids (0 = background); nearest resize
    gt_valid     bool [T]  frames whose mask is a label (S4 train: frame 0 only; AVSS: gt_temporal_mask_flag)
    frame_valid  bool [T]  frames that exist (AVSS: vid_temporal_mask_flag; all true for S4/MS3)
    name         str       video name (S4/MS3) or uid (AVSS)
    category     str       S4 only: the sound category (the folder level of its layout)
    subset       str       AVSS only: v1s | v1m | v2

Paths come from `model.lab.data.layout`. Behaviour reproduced from OpenNLPLab/AVSBench
(`avs_scripts/avs_s4/dataloader.py`, `avs_scripts/avs_ms3/dataloader.py`, `avs_scripts/avss/color_dataloader.py`,
`avs_scripts/avss/torchvggish/vggish.py`, `preprocess_scripts/preprocess_{s4,ms3}.py`):

* Splits: rows whose `split` column equals the split, in file order. AVSS additionally keeps only the
  subsets asked for (column `label`).
* S4: 5 frames; in `train` only `<name>_1.png` is a mask (`mask_num = 1`), so frames 1..4 get an all-zero mask
  and `gt_valid = [1, 0, 0, 0, 0]`; val/test load all 5. MS3: 5 frames, all 5 masks in every split.
* S4/MS3 masks: the official readers turn 0/255 PNGs into 0/1 (S4 via PIL mode '1', MS3 via mode 'P' and
  `ToTensor`'s /255). We read the grey level and threshold at 128, identical on those files; on a non-binary
  PNG the originals differ (mode '1' dithers, mode 'P' gives fractional targets), we stay binary.
* S4/MS3 images: the official loaders do not resize (frames are stored at 224²); we resize to `size` when the
  stored size differs (PIL bilinear for frames, nearest for masks, as AVSegFormer's `Resize` does).
* AVSS images: train = resize the short side to `size` then centre-crop (`crop_resize_img`), val/test = resize
  to `size`² (`resize_img`); colour labels are resized the same way with nearest *before* the colour -> class
  look-up, exactly as the original. Disable the train crop with `train_crop=False`.
* AVSS padding: the number of frames is the number of `.jpg` files, the number of labels the number of
  `.png` files (train v1s clips have just `0.png`); both are padded to 10. Padded labels are 0 (background).
  Padded images are zeros *after* ImageNet normalisation in the original, i.e. the mean colour: we fill padded
  frames with `PAD_FRAME_RGB` (= ImageNet mean) so that the model's own normalisation gives exactly 0.
  For val/test the original asserts 5 labels (v1s/v1m) or 10 (v2); we raise the same way.
* Audio: S4/MS3 read `<name>.pkl` (pre-computed `[5, 1, 96, 64]`), or, if absent, compute it from the wav of the
  layout (or a `<name>.wav` next to the pkl) as `preprocess_s4.py` did: whole 0.96 s examples only
  (`pad_end=False`), a clip with fewer than 5 repeats its last example, extra examples are dropped. AVSS
  computes it from `audio.wav` as `avss/torchvggish/vggish.py` does: whole examples, zero-padded to 10 (zeros
  in the log-mel domain, not silence). Where the originals would crash we fit instead: extra examples are
  dropped, and a clip too short for one whole example (< 0.975 s) gets all-zero examples.
  Wav files: PCM 8/16/24/32-bit, channels averaged, resampled to 16 kHz with torchaudio.
* Pickles: the official `.pkl` files are `pickle.dump(tensor)`. They are opened by `load_log_mel_pkl`, which
  first tries `torch.load(weights_only=True)` (files written by `torch.save`) and otherwise a restricted
  unpickler that can only rebuild tensors; anything else (arbitrary classes, callables) is refused.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from model.errors import DatasetError
from model.lab.data import files, layout
from model.lab.data.avsbench_audio import audio_examples_from_wav, fit_examples, load_log_mel_pkl
from model.modeling.avs_model import IMAGENET_MEAN

__all__ = ["PAD_FRAME_RGB", "AVSSDataset", "MS3Dataset", "S4Dataset"]

# Padded AVSS frames: the original pads with zeros in normalised space, i.e. the ImageNet mean in [0, 1].
PAD_FRAME_RGB: tuple[float, float, float] = IMAGENET_MEAN
_MASK_THRESHOLD = 128  # grey level at or above which an S4/MS3 mask pixel is "sounding"


# ------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------
def _open(path: Path, mode: str) -> Image.Image:
    if not path.is_file():
        raise FileNotFoundError(f"missing file: {path}")
    with Image.open(path) as image:
        return image.convert(mode)


def _resize_square(image: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    return image if image.size == (size, size) else image.resize((size, size), resample)


def _resize_short_side_centre_crop(image: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    """`crop_resize_img` of avss/color_dataloader.py: short side -> size (long side truncated), centre crop."""
    w, h = image.size
    new_w, new_h = (int(w * size / h), size) if w > h else (size, int(h * size / w))
    image = image.resize((new_w, new_h), resample)
    # Python 3 round() (half to even), as in the original.
    left, top = round((new_w - size) / 2.0), round((new_h - size) / 2.0)
    return image.crop((left, top, left + size, top + size))


def _rgb_tensor(image: Image.Image) -> Tensor:
    """PIL RGB -> float32 [3, H, W] in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)


def _binary_mask_tensor(path: Path, size: int) -> Tensor:
    grey = _resize_square(_open(path, "L"), size, Image.Resampling.NEAREST)
    return torch.from_numpy((np.asarray(grey) >= _MASK_THRESHOLD).astype(np.float32))


def _check_size(size: int) -> int:
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    return int(size)


# ------------------------------------------------------------------------------------------------
# S4 / MS3
# ------------------------------------------------------------------------------------------------
def _rows_of_split(csv_path: Path, split: str) -> list[list[str]]:
    """The metadata rows of `split`. DatasetError naming the file when it is missing, and naming the splits
    it does hold when `split` has no row (an evaluation of nothing would only fail later, obscurely)."""
    layout.check_split(split)
    if not csv_path.is_file():
        raise DatasetError(f"no metadata file {csv_path} (is --data the subset's folder?)")
    header, rows = files.read_csv_rows(csv_path)
    if "split" not in header:
        raise ValueError(f"{csv_path}: no 'split' column in header {header}")
    col = header.index("split")
    chosen = [row for row in rows if len(row) > col and row[col] == split]
    if not chosen:
        found = collections.Counter(row[col] for row in rows if len(row) > col)
        listing = ", ".join(f"{name} ({count} clips)" for name, count in sorted(found.items())) or "no clip at all"
        raise DatasetError(f"{csv_path}: no clip of split {split!r}; the file lists {listing}")
    return chosen


def _log_mel_for_clip(pkl: Path, wavs: Sequence[Path], count: int) -> Tensor:
    if pkl.is_file():
        return fit_examples(load_log_mel_pkl(pkl), count, "repeat_last")
    for wav in wavs:
        if wav.is_file():
            return audio_examples_from_wav(wav, count, "repeat_last")
    raise FileNotFoundError(f"no audio for clip: neither {pkl} nor any of {[str(w) for w in wavs]}")


class S4Dataset(Dataset):
    """AVSBench-object single-source clips (see the module docstring for the exact rules).

    Args:
        root: the `Single-source` folder (holds `s4_meta_data.csv` and `s4_data/`).
        split: 'train', 'val' or 'test'.
        size: output side S of frames and masks.
        all_train_masks: also use train masks of frames 2-5 when their files exist. AVSBench ships
            only frame 1's mask for train clips, so on the real data this changes nothing; our synthetic
            scenes label every frame, and using them all gives 5x the supervision per clip.
    """

    num_frames = layout.S4_FRAMES

    def __init__(self, root: str | Path, split: str, size: int = 224, *, all_train_masks: bool = False) -> None:
        self.root, self.split, self.size = Path(root), split, _check_size(size)
        rows = _rows_of_split(layout.s4_csv_path(self.root), split)
        for row in rows:
            if len(row) < 3:
                raise ValueError(f"{layout.s4_csv_path(self.root)}: row {row} has no category (column 2)")
        self.clips: list[tuple[str, str]] = [(row[0], row[2]) for row in rows]  # (name, category), by position
        # Train clips carry one mask (frame 0), val/test all five (`mask_num` in avs_s4/dataloader.py).
        self.num_masks = 1 if split == "train" else self.num_frames
        self.all_train_masks = all_train_masks

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name, category = self.clips[index]
        root, split, size, t_count = self.root, self.split, self.size, self.num_frames
        num_masks = self.num_masks
        if self.all_train_masks and split == "train":
            num_masks = 1
            while num_masks < t_count and layout.s4_mask_path(root, split, category, name, num_masks).is_file():
                num_masks += 1
        frames = torch.stack([
            _rgb_tensor(_resize_square(_open(layout.s4_frame_path(root, split, category, name, t), "RGB"),
                                       size, Image.Resampling.BILINEAR))
            for t in range(t_count)
        ])
        masks = torch.zeros(t_count, size, size)
        for t in range(num_masks):
            masks[t] = _binary_mask_tensor(layout.s4_mask_path(root, split, category, name, t), size)
        pkl = layout.s4_audio_pkl_path(root, split, category, name)
        audio = _log_mel_for_clip(pkl, [layout.s4_audio_wav_path(root, split, category, name), pkl.with_suffix(".wav")],
                                  t_count)
        gt_valid = torch.arange(t_count) < num_masks
        return {"frames": frames, "audio": audio, "masks": masks, "gt_valid": gt_valid,
                "frame_valid": torch.ones(t_count, dtype=torch.bool), "name": name, "category": category}


class MS3Dataset(Dataset):
    """AVSBench-object multi-source clips: 5 frames, all labelled in every split.

    Args:
        root: the `Multi-sources` folder (holds `ms3_meta_data.csv` and `ms3_data/`).
        split: 'train', 'val' or 'test'.
        size: output side S of frames and masks.
    """

    num_frames = layout.MS3_FRAMES

    def __init__(self, root: str | Path, split: str, size: int = 224) -> None:
        self.root, self.split, self.size = Path(root), split, _check_size(size)
        self.names: list[str] = [row[0] for row in _rows_of_split(layout.ms3_csv_path(self.root), split)]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = self.names[index]
        root, split, size, t_count = self.root, self.split, self.size, self.num_frames
        frames = torch.stack([
            _rgb_tensor(_resize_square(_open(layout.ms3_frame_path(root, name, t), "RGB"), size,
                                       Image.Resampling.BILINEAR))
            for t in range(t_count)
        ])
        masks = torch.stack([_binary_mask_tensor(layout.ms3_mask_path(root, split, name, t), size)
                             for t in range(t_count)])
        pkl = layout.ms3_audio_pkl_path(root, split, name)
        audio = _log_mel_for_clip(pkl, [layout.ms3_audio_wav_path(root, split, name), pkl.with_suffix(".wav")], t_count)
        all_true = torch.ones(t_count, dtype=torch.bool)
        return {"frames": frames, "audio": audio, "masks": masks, "gt_valid": all_true,
                "frame_valid": all_true.clone(), "name": name}


# ------------------------------------------------------------------------------------------------
# AVSS
# ------------------------------------------------------------------------------------------------
def _numbered_files(folder: Path, suffix: str) -> int:
    """How many `<suffix>` files a clip folder holds (the official loader counts the listing)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"missing folder: {folder}")
    return sum(1 for p in folder.iterdir() if p.suffix.lower() == suffix and p.is_file())


class AVSSDataset(Dataset):
    """AVSBench-semantic clips, 10 frames each (v1s/v1m padded), colour labels mapped to class ids.

    Args:
        root: the release folder (holds `metadata.csv`, `label2idx.json`, `v1s/`, `v1m/`, `v2/`).
        split: 'train', 'val' or 'test'.
        size: output side S of frames and label maps.
        subsets: which subsets (metadata column `label`) to keep.
        train_crop: train split only: short-side resize + centre crop (official default) instead of a plain resize.
        num_classes: expected number of classes; None takes it from `label2idx.json` (71 for the release).
    """

    num_frames = layout.AVSS_FRAMES

    def __init__(self, root: str | Path, split: str, size: int = 224, subsets: Sequence[str] = layout.AVSS_SUBSETS,
                 *, train_crop: bool = True, num_classes: int | None = None) -> None:
        self.root, self.split, self.size = Path(root), split, _check_size(size)
        for subset in subsets:
            layout.check_subset(subset)
        self.subsets = tuple(subsets)
        csv_path = layout.avss_csv_path(self.root)
        rows = _rows_of_split(csv_path, split)
        header, _ = files.read_csv_rows(csv_path)
        missing = [c for c in ("uid", "label") if c not in header]
        if missing:
            raise ValueError(f"{csv_path}: header {header} lacks columns {missing}")
        uid_col, label_col = header.index("uid"), header.index("label")
        # (uid, subset) of the split's rows in the chosen subsets
        self.clips: list[tuple[str, str]] = [(row[uid_col], row[label_col]) for row in rows
                                             if row[label_col] in self.subsets]
        label2idx = files.read_label2idx(layout.avss_label2idx_path(self.root))
        self.class_names: tuple[str, ...] = tuple(sorted(label2idx, key=label2idx.__getitem__))
        if num_classes is not None and num_classes != len(self.class_names):
            raise ValueError(f"label2idx.json lists {len(self.class_names)} classes, expected {num_classes}")
        self.num_classes = len(self.class_names)
        # The palette depends only on the number of classes (get_v2_pallete asserts len == len(label2idx)).
        self.palette = layout.avss_palette(self.num_classes)
        self.crop = train_crop and split == "train"

    def __len__(self) -> int:
        return len(self.clips)

    def _prepare(self, image: Image.Image, resample: Image.Resampling) -> Image.Image:
        if self.crop:
            return _resize_short_side_centre_crop(image, self.size, resample)
        return _resize_square(image, self.size, resample)

    def __getitem__(self, index: int) -> dict[str, Any]:
        uid, subset = self.clips[index]
        root, size, t_count = self.root, self.size, self.num_frames
        clip = layout.avss_clip_dir(root, subset, uid)
        vid_flag, gt_flag = layout.avss_temporal_flags(subset)

        n_frames = _numbered_files(clip / "frames", ".jpg")
        n_labels = _numbered_files(clip / "labels_rgb", ".png")
        if n_frames > t_count or n_labels > t_count:
            raise ValueError(f"{clip}: {n_frames} frames / {n_labels} labels, at most {t_count} allowed")
        if self.split != "train":
            expected = layout.AVSS_SUBSET_FRAMES[subset]  # the official loader asserts this for val/test
            if n_labels != expected:
                raise ValueError(f"{clip}: {self.split} clip of {subset} needs {expected} label maps, found {n_labels}")

        frames = torch.tensor(PAD_FRAME_RGB, dtype=torch.float32).view(1, 3, 1, 1).repeat(t_count, 1, size, size)
        for t in range(n_frames):
            image = self._prepare(_open(layout.avss_frame_path(root, subset, uid, t), "RGB"), Image.Resampling.BILINEAR)
            frames[t] = _rgb_tensor(image)
        masks = torch.zeros(t_count, size, size, dtype=torch.int64)
        for t in range(n_labels):
            colour = self._prepare(_open(layout.avss_label_path(root, subset, uid, t), "RGB"), Image.Resampling.NEAREST)
            masks[t] = torch.from_numpy(layout.colour_to_class(np.asarray(colour), self.palette))
        audio = audio_examples_from_wav(layout.avss_audio_path(root, subset, uid), t_count, "zeros")
        return {"frames": frames, "audio": audio, "masks": masks, "gt_valid": torch.tensor(gt_flag),
                "frame_valid": torch.tensor(vid_flag), "name": uid, "subset": subset}
