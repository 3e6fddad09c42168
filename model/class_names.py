"""Output class names.

AVSBench-semantic (AVSS) labels: background plus 70 sounding-object categories. Index i is the class the
AVSS loaders decode from palette colour i, i.e. the name whose value is i + 1 in the data release's
`label2idx.json` (background = 1 there, black in the palette). The official AVSegFormer repository
(github.com/vvvb-github/AVSegFormer at 7083cb6) does not ship that file: its loader reads
`data/AVSS/label2idx.json` from the AVSBench-semantic download. Checked name by name against the copy of
that file in github.com/YenanLiu/DDESeg (`label2idx.json`, 71 entries). A checkpoint trained on other
labels stores its own `class_names` in its config.
"""

from __future__ import annotations

from model.config import AVSConfig

AVSS_CLASS_NAMES: tuple[str, ...] = (
    "background", "accordion", "airplane", "axe", "baby", "bassoon", "bell", "bird", "boat", "boy", "bus",
    "car", "cat", "cello", "clarinet", "clipper", "clock", "dog", "donkey", "drum", "duck", "elephant",
    "emergency-car", "erhu", "flute", "frying-food", "girl", "goose", "guitar", "gun", "guzheng", "hair-dryer",
    "handpan", "harmonica", "harp", "helicopter", "hen", "horse", "keyboard", "leopard", "lion", "man",
    "marimba", "missile-rocket", "motorcycle", "mower", "parrot", "piano", "pig", "pipa", "saw", "saxophone",
    "sheep", "sitar", "sorna", "squirrel", "tabla", "tank", "tiger", "tractor", "train", "trombone", "truck",
    "trumpet", "tuba", "ukulele", "utv", "vacuum-cleaner", "violin", "wolf", "woman",
)


def class_names_for(cfg: AVSConfig) -> tuple[str, ...]:
    """The config's own names, else AVSBench's for a 71-class head, else "sounding" / "class_<i>"."""
    if cfg.class_names:
        return cfg.class_names
    if cfg.num_classes == 1:
        return ("sounding",)
    if cfg.num_classes == len(AVSS_CLASS_NAMES):
        return AVSS_CLASS_NAMES
    return tuple(f"class_{i}" for i in range(cfg.num_classes))
