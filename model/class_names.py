"""Output class names.

AVSBench-semantic (AVSS) labels: background plus 70 sounding-object categories, in the order of the
dataset's `label2idx.json` (index 0 = background) [M: from memory of the AVSBench release, not
re-verified here; a checkpoint trained on other labels stores its own `class_names` in its config].
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
