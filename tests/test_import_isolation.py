"""The package boundaries, one rule each, checked on what a fresh interpreter really loads.

    app.api, worker.core  the API process and what it shares with the workers: no torch, numpy, pycocotools,
                          PyAV or `model` (the API image installs none of them)
    app.cli               `avs --help` and every parser: no torch, no `model` (handlers import what they need)
    worker                never imports `app` (imports point one way: app -> worker -> model)
    model                 never imports `app` or `worker`, nor the service's libraries
    every module          creates no file or folder when imported (the working directory and AVS_DATA_DIR
                          stay empty)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = {"torch", "numpy", "pycocotools", "av", "torchvision", "torchaudio", "timm", "PIL"}


def _modules_under(package: str) -> list[str]:
    """Every module name under `package`, from its folder (nothing imported to find them)."""
    root = REPO.joinpath(*package.split("."))
    names = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names)


def _loaded_after(modules: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> set[str]:
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\nprint('\\n'.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True, timeout=300,
                            check=True, cwd=cwd or REPO, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    return set(result.stdout.split())


def _top(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


def test_the_api_and_the_torch_free_core_load_nothing_heavy() -> None:
    modules = _modules_under("app.api") + _modules_under("worker.core")
    loaded = _loaded_after(modules)
    assert "app.api.main" in loaded
    assert "worker.core.job_record" in loaded
    assert not _top(loaded) & (HEAVY | {"model"})


def test_the_command_line_parser_loads_no_torch() -> None:
    loaded = _loaded_after(["app.cli", "app.cli.model_commands", "app.cli.media_commands", "app.cli.lab_commands",
                            "app.cli.service_commands"])
    subprocess.run([sys.executable, "-m", "app.cli", "--help"], cwd=REPO, capture_output=True, check=True, timeout=60)
    assert not _top(loaded) & {"torch", "model"}


def test_worker_never_imports_app() -> None:
    loaded = _loaded_after(_modules_under("worker"))
    assert "worker.pipeline" in loaded
    assert "app" not in _top(loaded)


def test_model_never_imports_service_code() -> None:
    loaded = _loaded_after(_modules_under("model"))
    assert "model.lab.training" in loaded
    assert not _top(loaded) & {"app", "worker", "fastapi", "celery", "starlette"}


@pytest.mark.parametrize("package", ["app", "worker", "model"])
def test_no_module_creates_files_when_imported(tmp_path: Path, package: str) -> None:
    cwd, data = tmp_path / "cwd", tmp_path / "data"
    cwd.mkdir()
    data.mkdir()
    _loaded_after(_modules_under(package), cwd=cwd, env={"AVS_DATA_DIR": str(data)})
    assert list(cwd.iterdir()) == []
    assert list(data.iterdir()) == []
