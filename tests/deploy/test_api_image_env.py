"""The API image's Python environment resolves without torch: a fresh virtualenv, the project installed with
the `[api]` extra and the image's constraints (a real resolution through pip and its configured indexes, no
`--no-deps`), from the same files the Dockerfile copies; then the API imports and torch is nowhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import DOCKER, DOCKERFILES, REPO, dockerfile

# What docker/api.Dockerfile's `wheel` stage copies (checked below against the Dockerfile itself).
PROJECT_FILES = ["pyproject.toml", "README.md", "app", "worker", "model"]

_PROBE = """
import importlib.util, json, sys
import app.api.main, app.cli, worker.core.celery_app, worker.core.settings
print(json.dumps({
    "torch_imported": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")),
    "torch_installed": importlib.util.find_spec("torch") is not None,
    "heavy_installed": [m for m in ("torchvision", "torchaudio", "timm") if importlib.util.find_spec(m)],
    "routes": sorted(app.api.main.app.openapi()["paths"]),
}))
"""


def test_project_files_match_the_api_dockerfile() -> None:
    copied = set()
    for i in dockerfile(DOCKERFILES["api"]):
        if i.name == "COPY" and i.stage == 1:  # the wheel stage
            copied.update(i.args.split()[:-1])
    assert copied == set(PROJECT_FILES)


@pytest.mark.slow  # about 80-90 s on the 2-core CI machines: a fresh venv and a real resolution
@pytest.mark.timeout(600)
def test_api_extra_resolves_and_imports_without_torch(tmp_path: Path) -> None:
    start = time.monotonic()
    src = tmp_path / "src"
    src.mkdir()
    for name in PROJECT_FILES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AVS_", "PROMETHEUS_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    # The machine's pip configuration (indexes, mirrors) applies; dependencies are resolved for real.
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-c", str(DOCKER / "constraints.txt"),
                              f"{src}[api]"], env=env, capture_output=True, text=True, timeout=540)
    assert install.returncode == 0, (install.stdout + install.stderr)[-6000:]

    probe = subprocess.run([str(python), "-c", _PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120)
    assert probe.returncode == 0, probe.stderr[-4000:]
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    assert found["torch_imported"] == []
    assert not found["torch_installed"], "the [api] extra pulled in torch"
    assert found["heavy_installed"] == []
    assert {"/segment", "/healthz", "/metrics"} <= set(found["routes"])
    # The console script the image's ENTRYPOINT runs.
    cli = subprocess.run([str(venv / "bin" / "avs"), "serve", "--help"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert "--no-worker" in cli.stdout
    print(f"fresh [api] venv: {time.monotonic() - start:.0f}s")
