"""On-disk layouts of the three AVSBench settings: where every file lives (reading and writing the files
themselves is `model.lab.data.files`).

The loaders in `model.lab.data.avsbench` read through these functions, and the synthetic-scene generator
writes through them, so a synthetic dataset is byte-for-byte a valid AVSBench tree. The layouts are
those the official loaders and pre-processing scripts expect (OpenNLPLab/AVSBench:
`avs_scripts/avs_s4/dataloader.py`, `avs_scripts/avs_ms3/dataloader.py`, `avs_scripts/avss/color_dataloader.py`,
`avs_scripts/*/config.py`, `preprocess_scripts/preprocess_s4.py`, `preprocess_scripts/preprocess_ms3.py`).

Frame indices in this API are always 0-based (`t = 0 .. T-1`); the S4/MS3 files are numbered from 1 on disk
(`<name>_1.png` .. `<name>_5.png`), the AVSS files from 0 (`0.jpg` .. `9.jpg`). The functions do the shift.

S4 (`root` = the `Single-source` folder)::

    s4_meta_data.csv                                       name,start,category,split
    s4_data/visual_frames/<split>/<category>/<name>/<name>_<t+1>.png
    s4_data/gt_masks/<split>/<category>/<name>/<name>_<t+1>.png      (train: only <name>_1.png)
    s4_data/audio_log_mel/<split>/<category>/<name>.pkl            [5, 1, 96, 64] log-mel
    s4_data/audio_wav/<split>/<category>/<name>.wav                16 kHz

MS3 (`root` = the `Multi-sources` folder); note the frames are *not* under a split folder and carry the
`.mp4` of the raw video's file name (`preprocess_ms3.py` names them from `os.listdir(raw_videos)`)::

    ms3_meta_data.csv                                      video_id,split
    ms3_data/visual_frames/<name>/<name>.mp4_<t+1>.png
    ms3_data/gt_masks/<split>/<name>/<name>_<t+1>.png
    ms3_data/audio_log_mel/<split>/<name>.pkl
    ms3_data/audio_wav/<split>/<name>.wav

AVSS (`root` = the AVSBench-semantic release folder, `cfg.DATA.DIR_BASE`)::

    metadata.csv                                           vid,uid,s_min,s_sec,a_obj,split,label
    label2idx.json                                         {"background": 0, "accordion": 1, ...}
    <label>/<uid>/frames/<t>.jpg                           <label> = subset: v1s | v1m | v2
    <label>/<uid>/labels_rgb/<t>.png                       colour label maps (palette below)
    <label>/<uid>/audio.wav

CSV columns: the official loaders address S4/MS3 rows by *position* (`df.iloc[i][0]` = name,
`[2]` = category) and only the `split` column by name; AVSS rows by the names `uid`, `label`, `split`.
The header names of the other columns are not used by any loader; `name`/`category`/`split` (S4) and
`uid`/`label`/`split`/`a_obj`/`vid` (AVSS) appear in public code that reads these files, the remaining
names (`start`, `video_id`, `s_min`, `s_sec`) are our best reconstruction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = [
    "AVSS_CSV_COLUMNS",
    "AVSS_CSV_NAME",
    "AVSS_FRAMES",
    "AVSS_LABEL2IDX_NAME",
    "AVSS_SUBSETS",
    "AVSS_SUBSET_FRAMES",
    "MS3_CSV_COLUMNS",
    "MS3_CSV_NAME",
    "MS3_DATA_DIR",
    "MS3_FRAMES",
    "S4_CSV_COLUMNS",
    "S4_CSV_NAME",
    "S4_DATA_DIR",
    "S4_FRAMES",
    "SPLITS",
    "avss_audio_path",
    "avss_clip_dir",
    "avss_csv_path",
    "avss_frame_path",
    "avss_label2idx_path",
    "avss_label_path",
    "avss_palette",
    "avss_temporal_flags",
    "check_split",
    "check_subset",
    "class_to_colour",
    "colour_to_class",
    "ms3_audio_pkl_path",
    "ms3_audio_wav_path",
    "ms3_csv_path",
    "ms3_frame_path",
    "ms3_mask_path",
    "s4_audio_pkl_path",
    "s4_audio_wav_path",
    "s4_csv_path",
    "s4_frame_path",
    "s4_mask_path",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")

# --- S4: AVSBench-object, single source ---------------------------------------------------------
S4_FRAMES = 5  # one frame per second of a 5 s clip
S4_CSV_NAME = "s4_meta_data.csv"
S4_DATA_DIR = "s4_data"
# Read by position: 0 = video name, 2 = category; `split` by name (avs_s4/dataloader.py).
S4_CSV_COLUMNS: tuple[str, ...] = ("name", "start", "category", "split")

# --- MS3: AVSBench-object, multiple sources -----------------------------------------------------
MS3_FRAMES = 5
MS3_CSV_NAME = "ms3_meta_data.csv"
MS3_DATA_DIR = "ms3_data"
# Read by position: 0 = video name; `split` by name (avs_ms3/dataloader.py).
MS3_CSV_COLUMNS: tuple[str, ...] = ("video_id", "split")

# --- AVSS: AVSBench-semantic ---------------------------------------------------------------------
AVSS_FRAMES = 10  # every clip is padded to 10 frames
AVSS_CSV_NAME = "metadata.csv"
AVSS_LABEL2IDX_NAME = "label2idx.json"
# `uid`, `label` (the subset) and `split` are read by name (avss/color_dataloader.py).
AVSS_CSV_COLUMNS: tuple[str, ...] = ("vid", "uid", "s_min", "s_sec", "a_obj", "split", "label")
AVSS_SUBSETS: tuple[str, ...] = ("v1s", "v1m", "v2")
AVSS_SUBSET_FRAMES: dict[str, int] = {"v1s": 5, "v1m": 5, "v2": 10}  # real (unpadded) frames per clip
# Frames the training flag marks as labelled: v1s = S4 (first frame only), v1m = MS3, v2 = all ten.
_AVSS_SUBSET_GT_FRAMES: dict[str, int] = {"v1s": 1, "v1m": 5, "v2": 10}

PathLike = str | Path


def check_split(split: str) -> None:
    """Raise ValueError unless `split` is 'train', 'val' or 'test'."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


# ------------------------------------------------------------------------------------------------
# S4 paths
# ------------------------------------------------------------------------------------------------
def s4_csv_path(root: PathLike) -> Path:
    """`<root>/s4_meta_data.csv`."""
    return Path(root) / S4_CSV_NAME


def s4_frame_path(root: PathLike, split: str, category: str, name: str, t: int) -> Path:
    """RGB frame t (0-based) of an S4 clip: `s4_data/visual_frames/<split>/<category>/<name>/<name>_<t+1>.png`."""
    check_split(split)
    return Path(root) / S4_DATA_DIR / "visual_frames" / split / category / name / f"{name}_{t + 1}.png"


def s4_mask_path(root: PathLike, split: str, category: str, name: str, t: int) -> Path:
    """Binary GT mask of frame t (0-based): `s4_data/gt_masks/<split>/<category>/<name>/<name>_<t+1>.png`."""
    check_split(split)
    return Path(root) / S4_DATA_DIR / "gt_masks" / split / category / name / f"{name}_{t + 1}.png"


def s4_audio_pkl_path(root: PathLike, split: str, category: str, name: str) -> Path:
    """Pre-computed log-mel `[5, 1, 96, 64]`: `s4_data/audio_log_mel/<split>/<category>/<name>.pkl`."""
    check_split(split)
    return Path(root) / S4_DATA_DIR / "audio_log_mel" / split / category / f"{name}.pkl"


def s4_audio_wav_path(root: PathLike, split: str, category: str, name: str) -> Path:
    """16 kHz soundtrack: `s4_data/audio_wav/<split>/<category>/<name>.wav`."""
    check_split(split)
    return Path(root) / S4_DATA_DIR / "audio_wav" / split / category / f"{name}.wav"


# ------------------------------------------------------------------------------------------------
# MS3 paths
# ------------------------------------------------------------------------------------------------
def ms3_csv_path(root: PathLike) -> Path:
    """`<root>/ms3_meta_data.csv`."""
    return Path(root) / MS3_CSV_NAME


def ms3_frame_path(root: PathLike, name: str, t: int) -> Path:
    """RGB frame t (0-based): `ms3_data/visual_frames/<name>/<name>.mp4_<t+1>.png` (no split folder)."""
    return Path(root) / MS3_DATA_DIR / "visual_frames" / name / f"{name}.mp4_{t + 1}.png"


def ms3_mask_path(root: PathLike, split: str, name: str, t: int) -> Path:
    """Binary GT mask of frame t (0-based): `ms3_data/gt_masks/<split>/<name>/<name>_<t+1>.png`."""
    check_split(split)
    return Path(root) / MS3_DATA_DIR / "gt_masks" / split / name / f"{name}_{t + 1}.png"


def ms3_audio_pkl_path(root: PathLike, split: str, name: str) -> Path:
    """Pre-computed log-mel `[5, 1, 96, 64]`: `ms3_data/audio_log_mel/<split>/<name>.pkl`."""
    check_split(split)
    return Path(root) / MS3_DATA_DIR / "audio_log_mel" / split / f"{name}.pkl"


def ms3_audio_wav_path(root: PathLike, split: str, name: str) -> Path:
    """16 kHz soundtrack: `ms3_data/audio_wav/<split>/<name>.wav`."""
    check_split(split)
    return Path(root) / MS3_DATA_DIR / "audio_wav" / split / f"{name}.wav"


# ------------------------------------------------------------------------------------------------
# AVSS paths
# ------------------------------------------------------------------------------------------------
def check_subset(subset: str) -> None:
    """Raise ValueError unless `subset` is an AVSS subset (v1s, v1m, v2)."""
    if subset not in AVSS_SUBSETS:
        raise ValueError(f"AVSS subset must be one of {AVSS_SUBSETS}, got {subset!r}")


def avss_csv_path(root: PathLike) -> Path:
    """`<root>/metadata.csv`."""
    return Path(root) / AVSS_CSV_NAME


def avss_label2idx_path(root: PathLike) -> Path:
    """`<root>/label2idx.json`: class name -> class id, background first (id 0)."""
    return Path(root) / AVSS_LABEL2IDX_NAME


def avss_clip_dir(root: PathLike, subset: str, uid: str) -> Path:
    """`<root>/<subset>/<uid>`; the metadata column `label` holds the subset."""
    check_subset(subset)
    return Path(root) / subset / uid


def avss_frame_path(root: PathLike, subset: str, uid: str, t: int) -> Path:
    """RGB frame t (0-based): `<subset>/<uid>/frames/<t>.jpg`."""
    return avss_clip_dir(root, subset, uid) / "frames" / f"{t}.jpg"


def avss_label_path(root: PathLike, subset: str, uid: str, t: int) -> Path:
    """Colour label map of frame t (0-based): `<subset>/<uid>/labels_rgb/<t>.png`."""
    return avss_clip_dir(root, subset, uid) / "labels_rgb" / f"{t}.png"


def avss_audio_path(root: PathLike, subset: str, uid: str) -> Path:
    """`<subset>/<uid>/audio.wav` (log-mel is computed from it on the fly, as the official loader does)."""
    return avss_clip_dir(root, subset, uid) / "audio.wav"


def avss_temporal_flags(subset: str) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
    """The two 10-long flags of `avss/color_dataloader.py` for a subset.

    Returns:
        (vid_temporal_mask_flag, gt_temporal_mask_flag): which frames exist (v1s/v1m: the first 5, the
        other 5 are zero padding; v2: all 10) and which frames the training loss uses (v1s: frame 0 only,
        v1m: the first 5, v2: all 10).
    """
    check_subset(subset)
    real, labelled = AVSS_SUBSET_FRAMES[subset], _AVSS_SUBSET_GT_FRAMES[subset]
    return (
        tuple(t < real for t in range(AVSS_FRAMES)),
        tuple(t < labelled for t in range(AVSS_FRAMES)),
    )


# ------------------------------------------------------------------------------------------------
# AVSS palette: class id <-> colour
# ------------------------------------------------------------------------------------------------
def avss_palette(num_classes: int = 71) -> np.ndarray:
    """The AVSBench colour palette (`get_v2_pallete` in `avss/color_dataloader.py`).

    It is the PASCAL-VOC colour map: the bits of the class id are dealt out in turn to R, G, B (bit 0 to R,
    bit 1 to G, bit 2 to B, bit 3 to R, ...), filling each channel from its most significant bit down. So
    class 0 (background) is black, 1 = (128, 0, 0), 2 = (0, 128, 0), 3 = (128, 128, 0), 4 = (0, 0, 128), ...
    Colours are distinct for up to 256 classes.

    Args:
        num_classes: number of classes including background (71 for AVSS).

    Returns:
        uint8 array [num_classes, 3], row c = RGB colour of class c.
    """
    if not 1 <= num_classes <= 256:
        raise ValueError(f"num_classes must be in [1, 256], got {num_classes}")
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for class_id in range(num_classes):
        rgb = [0, 0, 0]
        bits, level = class_id, 7
        while bits:  # three bits per round, one to each channel, at decreasing significance
            for channel in range(3):
                rgb[channel] |= ((bits >> channel) & 1) << level
            bits >>= 3
            level -= 1
        palette[class_id] = rgb
    return palette


def _pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """[..., 3] uint8 -> [...] int64 code R·65536 + G·256 + B."""
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def colour_to_class(rgb: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Map a colour label image to class ids the way `color_mask_to_label` (avss/color_dataloader.py) does.

    The original stacks one boolean map per palette colour and takes the argmax over classes, so a pixel
    whose colour is in no palette entry gets class 0 (background), and if two entries shared a colour the
    lower id would win. Here the same result comes from one table look-up instead of K full-image compares.

    Args:
        rgb: uint8 array [H, W, 3].
        palette: uint8 array [K, 3] (`avss_palette`).

    Returns:
        int64 array [H, W] of class ids in [0, K).
    """
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must have shape [H, W, 3], got {rgb.shape}")
    codes = _pack_rgb(palette)
    unique_codes, first_index = np.unique(codes, return_index=True)  # sorted; first occurrence = lowest id
    pixels = _pack_rgb(rgb)
    pos = np.clip(np.searchsorted(unique_codes, pixels), 0, len(unique_codes) - 1)
    found = unique_codes[pos] == pixels
    return np.where(found, first_index[pos], 0).astype(np.int64)


def class_to_colour(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Class ids [H, W] -> colour label image uint8 [H, W, 3] (the inverse of `colour_to_class`)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must have shape [H, W], got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(palette)):
        raise ValueError(f"labels must lie in [0, {len(palette)}), got [{labels.min()}, {labels.max()}]")
    return palette[labels.astype(np.int64)]
