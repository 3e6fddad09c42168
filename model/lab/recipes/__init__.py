"""Training recipes as files: `s4.toml`, `ms3.toml`, `avss.toml` (AVSegFormer's published schedules,
model-spec §4.2), or any TOML file with `TrainConfig` field names."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from model.errors import ConfigError

RECIPES_DIR = Path(__file__).parent


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def load_recipe(name_or_path: str, *, subset: str | None = None) -> dict[str, Any]:
    """A recipe's fields. `name_or_path`: a shipped recipe's name or a .toml file. Raises ConfigError for an
    unknown recipe, a field `TrainConfig` does not have, or a recipe written for another subset than `subset`."""
    from model.lab.training import TrainConfig

    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise ConfigError(f"no recipe {name_or_path!r}; shipped: {', '.join(recipe_names())}, or a .toml file")
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"recipe {path}: {exc}") from None
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"recipe {path}: unknown field(s) {', '.join(unknown)}")
    if subset is not None and values.get("subset", subset) != subset:
        raise ConfigError(f"recipe {path} is for {values['subset']}, not --subset {subset}")
    return values
