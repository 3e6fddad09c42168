"""Facts about the published AVSegFormer checkpoints: configurations, preprocessing, metrics, key manifests.

Source: github.com/vvvb-github/AVSegFormer at commit 7083cb6 (Gao, Chen, Chen, Wang, Lu, "AVSegFormer:
Audio-Visual Segmentation with Transformer", AAAI 2024, arXiv 2307.01146). Its README links six trained
checkpoints: ResNet-50 and PVT-v2-b5, each for AVSBench S4, MS3 and AVSS. Everything here was read from
that commit; `model.avsegformer_import` uses it to turn those files into our checkpoints.

Preprocessing, from the data loaders (not the configs, whose `img_size=(224, 224)` the S4/MS3 loaders
ignore): `dataloader/s4_dataset.py` and `ms3_dataset.py` resize every frame to 512x512
(`transforms.Resize([512, 512])` on a PIL image: bilinear), `dataloader/v2_dataset.py` (AVSS) resizes
val/test frames to 224x224 (PIL bilinear; training: short side 224, centre crop 224); all normalise with
ImageNet's mean/std. Audio: VGGish log-mel examples (`model/vggish/vggish_input.py`, the TensorFlow
release's recipe), precomputed by AVSBench for S4/MS3 and computed from `audio.wav` for AVSS.

Torch-free: nothing here imports torch.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from model.card import NOT_MEASURED
from model.class_names import AVSS_CLASS_NAMES
from model.config import IMAGENET_MEAN, IMAGENET_STD

SOURCE_URL = "https://github.com/vvvb-github/AVSegFormer"
SOURCE_COMMIT = "7083cb6"
SETTINGS = ("s4", "ms3", "avss")
BACKBONES = ("r50", "pvt_v2_b5")  # the flag values; our variants are avsegformer-r50 / avsegformer-pvt_v2_b5
MANIFEST_DIR = Path(__file__).resolve().parent / "weights" / "manifests"

INPUT_SIZE = {"s4": 512, "ms3": 512, "avss": 224}  # from the data loaders (see the module docstring)
NUM_CLASSES = {"s4": 1, "ms3": 1, "avss": len(AVSS_CLASS_NAMES)}

# README table of the source (mIoU %, F-score x100, on each setting's test split).
PUBLISHED_METRICS: dict[tuple[str, str], tuple[float, float]] = {
    ("s4", "r50"): (76.38, 86.7), ("s4", "pvt_v2_b5"): (83.06, 90.5),
    ("ms3", "r50"): (53.81, 65.6), ("ms3", "pvt_v2_b5"): (61.33, 73.0),
    ("avss", "r50"): (26.58, 31.5), ("avss", "pvt_v2_b5"): (37.31, 42.8),
}

_DATASET = {
    "s4": "AVSBench-object, single-source subset (S4); training clips have their first frame labelled",
    "ms3": "AVSBench-object, multi-source subset (MS3)",
    "avss": "AVSBench-semantic (AVSS: v1s + v1m + v2 clips, 70 categories + background)",
}
_BACKBONE_LABEL = {"r50": "ResNet-50", "pvt_v2_b5": "PVT-v2-b5"}
_FRAMES = {
    "s4": "RGB resized to 512x512 (PIL bilinear; dataloader/s4_dataset.py), /255, ImageNet mean/std",
    "ms3": "RGB resized to 512x512 (PIL bilinear; dataloader/ms3_dataset.py), /255, ImageNet mean/std",
    "avss": "RGB resized to 224x224 for val/test (PIL bilinear; dataloader/v2_dataset.py; training: short side "
            "224 then centre crop 224), /255, ImageNet mean/std",
}
_AUDIO = ("VGGish log-mel: 16 kHz mono, 25 ms periodic-Hann windows every 10 ms, magnitude of a 512-point FFT, "
          "64 mel bands 125-7500 Hz, log(mel + 0.01), one 0.96 s example [1, 96, 64] per second of the clip")
_AUDIO_SOURCE = {
    "s4": "precomputed by AVSBench (.pkl, 5 examples per 5 s clip)",
    "ms3": "precomputed by AVSBench (.pkl, 5 examples per 5 s clip)",
    "avss": "computed from audio.wav when loaded; 5 s clips padded to 10 examples with all-zero examples",
}


def variant_for(backbone: str) -> str:
    """Our variant holding the architecture of the official `backbone` ("r50" or "pvt_v2_b5")."""
    return f"avsegformer-{backbone}"


@cache
def load_manifest(backbone: str, setting: str) -> dict[str, Any]:
    """The committed key manifest of one official configuration.

    Returns the JSON object: `keys` (official key -> shape, every tensor the official forward uses),
    `dropped` (key -> shape, tensors it never uses), `params_used`, `params_all`, `source`, `commit`.
    Raises ValueError for an unknown configuration.
    """
    if backbone not in BACKBONES or setting not in SETTINGS:
        raise ValueError(f"no AVSegFormer release for backbone {backbone!r}, setting {setting!r}; "
                         f"backbones {BACKBONES}, settings {SETTINGS}")
    path = MANIFEST_DIR / f"avsegformer-{backbone}-{setting}.json"
    return json.loads(path.read_text(encoding="utf-8"))


def published_card(setting: str, backbone: str, *, file: str | None = None,
                   sha256: str | None = None) -> dict[str, Any]:
    """The model card of an imported official checkpoint (fields in `model.card`).

    The metrics are the source README's, marked NOT_MEASURED: nothing here evaluated them.
    """
    miou, fscore = PUBLISHED_METRICS[(setting, backbone)]
    source: dict[str, Any] = {"url": SOURCE_URL, "commit": SOURCE_COMMIT}
    if file is not None:
        source["file"] = file
    if sha256 is not None:
        source["sha256"] = sha256
    return {
        "title": f"AVSegFormer ({_BACKBONE_LABEL[backbone]}) trained on AVSBench {setting.upper()} by its authors",
        "trained_on": {"dataset": _DATASET[setting], "split": "train",
                       "selected_on": f"val (best mIoU; scripts/{setting}/train.py)"},
        "metrics": {"mIoU": miou, "F-score": fscore, "units": "percent (mIoU), x100 (F-score)", "split": "test",
                    "where": f"README table of {SOURCE_URL} at {SOURCE_COMMIT}", "status": NOT_MEASURED},
        "source": source,
        "licence": f"unstated (no licence file or statement in {SOURCE_URL} at {SOURCE_COMMIT})",
        "intended_use": f"research baseline for audio-visual segmentation on AVSBench {setting.upper()}-like video",
        "preprocessing": {"frames": _FRAMES[setting], "audio": f"{_AUDIO}; {_AUDIO_SOURCE[setting]}"},
    }


def preprocessing_fields(setting: str) -> dict[str, Any]:
    """The config fields that make the predictor feed frames the way the official loader did."""
    names = AVSS_CLASS_NAMES if setting == "avss" else ("sounding",)
    return {"input_size": INPUT_SIZE[setting], "pixel_mean": IMAGENET_MEAN, "pixel_std": IMAGENET_STD,
            "num_classes": NUM_CLASSES[setting], "class_names": names}
