"""Helpers for the deployment checks: Compose files read the way Docker Compose reads them (YAML with the
`!reset` / `!override` tags, `${VAR:-default}` interpolation, the override merge rules of the Compose
Specification), Dockerfiles split into instructions, and `.dockerignore` matching.

No Docker engine is needed (none runs on the CI machines): these are the files' own contracts.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # PyYAML: the [dev] extra

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_GPU = REPO / "docker-compose.gpu.yml"
# CI clones the repository with shared/ beside it.
COMPOSE_SCHEMA = REPO.parent / "shared" / "schemas" / "compose-spec.json"
DOCKERFILES = {"api": DOCKER / "api.Dockerfile", "worker": DOCKER / "worker.Dockerfile"}
DASHBOARD = DOCKER / "grafana" / "dashboards" / "avs-service.json"


def tool(name: str) -> str | None:
    """A command from this interpreter's environment first (pip-installed tools), then PATH."""
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


# ------------------------------------------------------------------------------------ compose YAML
@dataclass(frozen=True)
class Reset:
    """`!reset`: remove the attribute from what the earlier files defined."""

    value: Any


@dataclass(frozen=True)
class Override:
    """`!override`: replace the attribute instead of merging into it."""

    value: Any


class ComposeLoader(yaml.SafeLoader):
    pass


def _tagged(cls: type) -> Any:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        if isinstance(node, yaml.MappingNode):
            return cls(loader.construct_mapping(node, deep=True))
        if isinstance(node, yaml.SequenceNode):
            return cls(loader.construct_sequence(node, deep=True))
        return cls(loader.construct_scalar(node))
    return construct


ComposeLoader.add_constructor("!reset", _tagged(Reset))
ComposeLoader.add_constructor("!override", _tagged(Override))


def load_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=ComposeLoader)


# ------------------------------------------------------------------------------------ interpolation
_VAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?$", re.S)


def variables(text: str) -> list[tuple[str, str | None, str | None]]:
    """Every `${...}` / `$NAME` reference in `text` as (name, operator, argument); `$$` is skipped."""
    found = []
    for m in _VAR.finditer(text):
        if m.group("escaped"):
            continue
        if m.group("named"):
            found.append((m.group("named"), None, None))
            continue
        inner = _BRACED.match(m.group("braced"))
        if inner is None:
            raise ValueError(f"invalid interpolation ${{{m.group('braced')}}}")
        found.append((inner.group("name"), inner.group("op"), inner.group("arg")))
    return found


def _interpolate_str(text: str, env: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        if m.group("named"):
            return env.get(m.group("named"), "")
        inner = _BRACED.match(m.group("braced"))
        if inner is None:
            raise ValueError(f"invalid interpolation ${{{m.group('braced')}}}")
        name, op, arg = inner.group("name"), inner.group("op"), inner.group("arg") or ""
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return arg if value is None else value
        if op in (":?", "?"):
            if value is None or (op == ":?" and not value):
                raise ValueError(f"required variable {name} is missing: {arg}")
            return value
        if op == ":+":
            return arg if value else ""
        if op == "+":
            return "" if value is None else arg
        return value or ""
    return _VAR.sub(sub, text)


def interpolate(obj: Any, env: dict[str, str] | None = None) -> Any:
    """Compose's interpolation of every string value (keys are left alone, as Compose does)."""
    env = env or {}
    if isinstance(obj, dict):
        return {k: interpolate(v, env) for k, v in obj.items()}
    if isinstance(obj, list):
        return [interpolate(v, env) for v in obj]
    if isinstance(obj, Reset | Override):
        return type(obj)(interpolate(obj.value, env))
    if isinstance(obj, str):
        return _interpolate_str(obj, env)
    return obj


# ------------------------------------------------------------------------------------------- merge
_REPLACED_SEQUENCES = {"command", "entrypoint", "test"}  # shell commands are overridden, not appended
_UNIQUE_BY_TARGET = {"volumes", "tmpfs"}


def _target(entry: Any) -> Any:
    if isinstance(entry, dict):
        return entry.get("target")
    parts = str(entry).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def merge(base: Any, override: Any, key: str | None = None) -> Any:
    """Merge `override` into `base` by the Compose Specification's rules (compose-file/13-merge):
    mappings merge key by key, sequences append (volumes unique by target), `command`/`entrypoint`/
    `healthcheck.test` are replaced, scalars are replaced, `!reset` removes and `!override` replaces."""
    if isinstance(override, Override):
        return copy.deepcopy(override.value)
    if isinstance(base, dict) and isinstance(override, dict):
        out = copy.deepcopy(base)
        for k, v in override.items():
            if isinstance(v, Reset):
                out.pop(k, None)
            elif k in out:
                out[k] = merge(out[k], v, k)
            else:
                out[k] = strip_tags(v)
        return out
    if isinstance(base, list) and isinstance(override, list) and key not in _REPLACED_SEQUENCES:
        out = copy.deepcopy(base)
        for item in override:
            if key in _UNIQUE_BY_TARGET:
                out = [e for e in out if _target(e) != _target(item)]
            if item not in out:
                out.append(copy.deepcopy(item))
        return out
    return strip_tags(override)


def strip_tags(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: strip_tags(v) for k, v in obj.items() if not isinstance(v, Reset)}
    if isinstance(obj, list):
        return [strip_tags(v) for v in obj]
    if isinstance(obj, Override):
        return strip_tags(obj.value)
    return obj


def compose_model(*paths: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """What `docker compose -f a -f b config` works from: each file interpolated, then merged in order."""
    model: dict[str, Any] = {}
    for path in paths:
        model = merge(model, interpolate(load_yaml(path), env))
    return strip_tags(model)


def parse_duration(text: str) -> float:
    """Compose durations: `1m30s`, `90s`, `2h`, `500ms`."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


# -------------------------------------------------------------------------------------- Dockerfiles
@dataclass(frozen=True)
class Instruction:
    stage: int  # 0-based index of the FROM it belongs to
    name: str  # upper case: FROM, RUN, COPY, ...
    args: str  # continuation lines joined


def dockerfile(path: Path) -> list[Instruction]:
    out: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped by Docker
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        full = pending + line
        pending = ""
        name, _, args = full.partition(" ")
        name = name.upper()
        if name == "FROM":
            stage += 1
        out.append(Instruction(stage, name, args.strip()))
    return out


# --------------------------------------------------------------------------------------- .dockerignore
def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.index("]", i)
            out += pattern[i:end + 1]
            i = end + 1
            continue
        else:
            out += re.escape(c)
        i += 1
    return re.compile(f"^{out}$")


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent folders decides;
    a `!pattern` includes again."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip().strip("/")
        if pattern.startswith("./"):
            pattern = pattern[2:]
        regex = _ignore_regex(pattern)
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


# ------------------------------------------------------------------------------------------ dashboard
def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of the Grafana dashboard, panels inside rows included."""
    out = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                out.append((panel["title"], target["expr"]))
            walk(panel.get("panels", []))
    walk(json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"])
    return out
