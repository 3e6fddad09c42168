"""Imports point one way (app -> worker -> model) and the API side never loads torch."""

from __future__ import annotations

import subprocess
import sys


def _loaded_modules(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return set(result.stdout.split())


def test_cli_module_does_not_import_torch() -> None:
    loaded = _loaded_modules("import app.cli")
    assert "torch" not in loaded
    assert not any(name == "model" or name.startswith("model.") for name in loaded)


def test_model_package_does_not_import_service_code() -> None:
    loaded = _loaded_modules("import model.build, model.checkpoint, model.bench")
    assert not {"app", "worker", "fastapi", "celery"} & loaded
