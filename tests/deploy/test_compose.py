"""docker-compose.yml and the CPU override: the Compose Specification schema, and the deployment rules
(scalable workers, GPU reservation, health checks, start order, graceful stop, `${VAR:-default}`
configuration, named volumes) checked on the files as Docker Compose would read and merge them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema  # the [dev] extra
import pytest

from worker.core.settings import ServiceSettings

from .conftest import (
    COMPOSE,
    COMPOSE_GPU,
    COMPOSE_SCHEMA,
    DOCKER,
    REPO,
    compose_model,
    load_yaml,
    parse_duration,
    variables,
)

SETTINGS_FIELDS = {f"AVS_{name.upper()}" for name in ServiceSettings.model_fields}
DATA_TARGET = "/data"
METRICS_PORT = "9101"


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return compose_model(COMPOSE)


@pytest.fixture(scope="module")
def gpu() -> dict[str, Any]:
    return compose_model(COMPOSE, COMPOSE_GPU)


def _validate(model: dict[str, Any]) -> None:
    assert COMPOSE_SCHEMA.is_file(), f"no Compose Specification schema at {COMPOSE_SCHEMA} (shared/ beside the repo)"
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(model), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "write environment as a mapping (merges predictably across files)"
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _volume_targets(service: dict[str, Any]) -> dict[str, str]:
    """target -> source for the short `source:target[:mode]` syntax."""
    out = {}
    for entry in service.get("volumes", []):
        source, target, *_ = str(entry).split(":")
        out[target] = source
    return out


# ------------------------------------------------------------------------------------------- schema
def test_compose_file_validates_against_the_compose_spec(base: dict[str, Any]) -> None:
    _validate(base)


def test_gpu_override_merged_validates_against_the_compose_spec(gpu: dict[str, Any]) -> None:
    _validate(gpu)


def test_compose_validates_with_every_variable_set() -> None:
    """The same files with non-default values (ports, tags, limits, weights) still form a valid model."""
    env = {"AVS_API_PORT": "9000", "AVS_IMAGE_TAG": "1.2.3", "AVS_API_PROCESSES": "8", "AVS_DEVICE": "cuda",
           "AVS_MAX_UPLOAD_BYTES": "2147483648", "AVS_API_KEYS": "k1,k2", "AVS_RESULT_TTL_S": "3600",
           "AVS_CHECKPOINT": "/weights/real.safetensors", "AVS_WEIGHTS_DIR": "/srv/avs/weights",
           "AVS_WORKER_STOP_GRACE": "5m", "GRAFANA_PORT": "3001", "REDIS_IMAGE": "avs-local/redis", "REDIS_TAG": "7",
           "PYTHON_IMAGE": "avs-local/python:3.11-bookworm"}
    model = compose_model(COMPOSE, COMPOSE_GPU, env=env)
    _validate(model)
    assert model["services"]["api"]["ports"] == ["0.0.0.0:9000:8000"]
    assert model["services"]["api"]["image"] == "avesformer-api:1.2.3"
    assert model["services"]["worker"]["environment"]["AVS_CHECKPOINT"] == "/weights/real.safetensors"
    assert "/srv/avs/weights:/weights:ro" in model["services"]["worker"]["volumes"]
    assert model["services"]["worker"]["environment"]["AVS_DEVICE"] == "cuda"
    assert model["services"]["redis"]["image"] == "avs-local/redis:7"  # a local stand-in, where Hub is unreachable
    assert model["services"]["worker"]["build"]["args"] == {"PYTHON_IMAGE": "avs-local/python:3.11-bookworm",
                                                            "AVS_DEVICE": "cuda"}


# ------------------------------------------------------------------------------------ configuration
@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_GPU], ids=lambda p: p.name)
def test_every_variable_is_var_with_default(path: Path) -> None:
    text = "\n".join(line.split(" #")[0] for line in path.read_text(encoding="utf-8").splitlines())
    refs = variables(text)
    bad = [f"{name} (op {op!r})" for name, op, _ in refs if op != ":-"]
    assert not bad, f"use ${{VAR:-default}} for every variable: {bad}"
    if path == COMPOSE:
        names = {name for name, _, _ in refs}
        for expected in ("AVS_IMAGE_TAG", "AVS_API_PORT", "AVS_MAX_UPLOAD_BYTES", "AVS_API_KEYS", "AVS_RESULT_TTL_S",
                         "AVS_CHECKPOINT", "AVS_WEIGHTS_DIR", "AVS_DEVICE", "AVS_API_PROCESSES", "REDIS_TAG",
                         "PROMETHEUS_TAG", "GRAFANA_TAG", "GRAFANA_PORT", "PROMETHEUS_PORT"):
            assert expected in names, f"{expected} is not configurable"


def test_settings_variables_mean_the_setting_they_are_named_after() -> None:
    """`${AVS_X:-...}` where AVS_X is a service setting may only feed the environment key AVS_X."""
    raw = load_yaml(COMPOSE)

    def walk(node: Any, key: str | None) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, str(k))
        elif isinstance(node, list):
            for v in node:
                walk(v, key)
        elif isinstance(node, str):
            for name, _, _ in variables(node):
                if name in SETTINGS_FIELDS and name != "AVS_BROKER_URL":  # flower shares the broker URL
                    assert key == name, f"${{{name}}} is used for {key!r}; AVS_* names are service settings"
    walk(raw, None)


def test_service_environments_are_valid_settings(base: dict[str, Any], gpu: dict[str, Any],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Each AVS_* key is a real setting and the defaults parse (a typo would be silently ignored)."""
    for model, service, device in ((base, "api", "cpu"), (base, "worker", "cpu"), (gpu, "worker", "cuda")):
        env = _env(model["services"][service])
        avs = {k: v for k, v in env.items() if k.startswith("AVS_")}
        unknown = sorted(set(avs) - SETTINGS_FIELDS)
        assert not unknown, f"{service}: not settings of worker/core/settings.py: {unknown}"
        for key in SETTINGS_FIELDS:
            monkeypatch.delenv(key, raising=False)
        for key, value in avs.items():
            monkeypatch.setenv(key, value)
        settings = ServiceSettings(_env_file=None)
        assert str(settings.data_dir) == DATA_TARGET
        assert settings.broker_url == "redis://redis:6379/0"
        assert not settings.embedded
        assert settings.api_keys == []
        assert settings.checkpoint in (None, "")
        if service == "worker":
            assert settings.device == device
            assert settings.worker_metrics_port == int(METRICS_PORT)


# ------------------------------------------------------------------------------------------ services
def test_redis_is_a_durable_broker(base: dict[str, Any]) -> None:
    redis = base["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert _volume_targets(redis)["/data"] == "redis-data"
    assert "ports" not in redis, "Redis has no password: keep it on the compose network"


def test_api_service(base: dict[str, Any]) -> None:
    api = base["services"]["api"]
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert api["healthcheck"]["test"] == ["CMD", "python", "/usr/local/lib/avs/healthcheck.py", "api"]
    health_src = (DOCKER / "healthcheck.py").read_text(encoding="utf-8")
    assert 'API_URL = "http://127.0.0.1:8000/healthz"' in health_src
    command = api["command"]
    assert command[:2] == ["serve", "--no-worker"]
    assert command[command.index("--port") + 1] == "8000"
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert int(command[command.index("--workers") + 1]) >= 2, "several uvicorn processes"
    assert api["ports"] == ["0.0.0.0:8000:8000"]
    # PROMETHEUS_MULTIPROC_DIR on a tmpfs: empty at every container start (and `avs serve` wipes it too).
    multiproc = _env(api)["PROMETHEUS_MULTIPROC_DIR"]
    tmpfs = [str(t).split(":")[0] for t in api["tmpfs"]]
    assert any(multiproc == t or multiproc.startswith(t.rstrip("/") + "/") for t in tmpfs), (multiproc, tmpfs)
    assert all("mode=1777" in str(t) for t in api["tmpfs"]), "the non-root API user must be able to write there"
    assert _volume_targets(api)[DATA_TARGET] == "avs-data"


def test_worker_service_scales(base: dict[str, Any]) -> None:
    worker = base["services"]["worker"]
    assert "container_name" not in worker, "a fixed name forbids --scale worker=N"
    assert "ports" not in worker, "a fixed host port forbids --scale worker=N"
    env = _env(worker)
    # the metrics port, and the live endpoint the API dials (neither published on the host)
    assert [str(p) for p in worker["expose"]] == [METRICS_PORT, env["AVS_LIVE_PORT"]]
    assert env["AVS_LIVE_HOST"] == "0.0.0.0"
    assert env["AVS_WORKER_METRICS_PORT"] == METRICS_PORT
    assert env["AVS_DEVICE"] == "cpu"  # docker-compose.gpu.yml adds the GPU
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert worker["healthcheck"]["test"] == ["CMD", "python", "/usr/local/lib/avs/healthcheck.py", "worker"]
    assert parse_duration(worker["healthcheck"]["start_period"]) >= 120, "model load + CUDA init + warm-up"


def test_worker_gpu_reservation(gpu: dict[str, Any]) -> None:
    devices = gpu["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_worker_stops_gracefully(base: dict[str, Any]) -> None:
    """Long enough to finish the current batch (a few seconds on CPU) or hand the job back."""
    grace = parse_duration(base["services"]["worker"]["stop_grace_period"])
    assert 60 <= grace <= 600, grace
    assert base["services"]["worker"].get("init") is True, "an init reaps ffmpeg children and forwards SIGTERM"


def test_worker_shares_the_data_volume_and_mounts_weights_read_only(base: dict[str, Any]) -> None:
    api, worker = base["services"]["api"], base["services"]["worker"]
    assert _volume_targets(worker)[DATA_TARGET] == _volume_targets(api)[DATA_TARGET] == "avs-data"
    assert _env(worker)["AVS_DATA_DIR"] == _env(api)["AVS_DATA_DIR"] == DATA_TARGET
    weights = [v for v in worker["volumes"] if str(v).split(":")[1] == "/weights"]
    assert weights == ["./weights:/weights:ro"]
    assert _env(worker)["AVS_CHECKPOINT"] == "", "empty = the demo checkpoint shipped in the image"


def test_the_base_file_needs_no_gpu_and_the_gpu_override_adds_only_the_gpu(base: dict[str, Any],
                                                                          gpu: dict[str, Any]) -> None:
    """The base file runs anywhere (and with docker-compose 1.29, which has no `!reset`); the override adds the
    GPU reservation, the device and the image's device default, nothing else."""
    plain = base["services"]["worker"]
    assert "deploy" not in plain
    assert (_env(plain)["AVS_DEVICE"], _env(plain)["NVIDIA_VISIBLE_DEVICES"]) == ("cpu", "void")
    worker = gpu["services"]["worker"]
    assert (_env(worker)["AVS_DEVICE"], _env(worker)["NVIDIA_VISIBLE_DEVICES"]) == ("cuda", "all")
    assert worker["build"]["args"]["AVS_DEVICE"] == "cuda"
    for key in ("image", "volumes", "expose", "stop_grace_period", "healthcheck", "depends_on"):
        assert worker[key] == plain[key], key
    changed = {"AVS_DEVICE", "NVIDIA_VISIBLE_DEVICES"}
    assert {k: v for k, v in _env(worker).items() if k not in changed} == {
        k: v for k, v in _env(plain).items() if k not in changed}
    assert set(gpu["services"]) == set(base["services"])
    assert "!reset" not in COMPOSE_GPU.read_text(encoding="utf-8")


def test_monitoring_services(base: dict[str, Any]) -> None:
    services = base["services"]
    prom, grafana = services["prometheus"], services["grafana"]
    assert _volume_targets(prom)["/etc/prometheus/prometheus.yml"] == "./docker/prometheus/prometheus.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    assert _volume_targets(prom)["/prometheus"] == "prometheus-data"
    assert _volume_targets(grafana)["/etc/grafana/provisioning"] == "./docker/grafana/provisioning"
    assert _volume_targets(grafana)["/etc/grafana/dashboards"] == "./docker/grafana/dashboards"
    assert _volume_targets(grafana)["/var/lib/grafana"] == "grafana-data"
    home = _env(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DOCKER / "grafana" / "dashboards" / Path(home).name).is_file()
    # Dashboards and metrics are for operators: published on the loopback interface unless asked otherwise.
    assert prom["ports"] == ["127.0.0.1:9090:9090"]
    assert grafana["ports"] == ["127.0.0.1:3000:3000"]
    assert services["flower"]["profiles"] == ["flower"]


def test_every_service_is_healthchecked_and_waits_on_conditions(base: dict[str, Any]) -> None:
    for name, service in base["services"].items():
        if name != "flower":
            assert "healthcheck" in service, f"{name} has no healthcheck"
            check = service["healthcheck"]
            assert check["test"][0] == "CMD", name
            assert parse_duration(check["interval"]) <= 30, name
        assert service.get("restart") == "unless-stopped", name
        for dep, spec in service.get("depends_on", {}).items():
            assert isinstance(spec, dict), (name, dep)
            assert spec["condition"] in ("service_healthy", "service_started"), (name, dep)
            assert dep in base["services"], (name, dep)
            if dep == "redis":
                assert spec["condition"] == "service_healthy", name


def test_images_are_pinned(base: dict[str, Any]) -> None:
    for name, service in base["services"].items():
        image = service["image"]
        repo_name, _, tag = image.rpartition(":")
        assert repo_name, f"{name}: {image}"
        assert tag not in ("", "latest"), f"{name}: {image}"
        if "build" not in service:
            assert re.search(r"\d+\.\d+\.\d+", tag), f"{name}: pin an exact version, not {image}"
        else:
            assert (REPO / service["build"]["context"] / service["build"]["dockerfile"]).is_file(), name


def test_named_volumes(base: dict[str, Any]) -> None:
    declared = set(base["volumes"])
    assert {"avs-data", "redis-data", "prometheus-data", "grafana-data"} <= declared
    used = set()
    for name, service in base["services"].items():
        for target, source in _volume_targets(service).items():
            if source.startswith((".", "/")):
                if source.startswith("./docker/"):
                    assert (REPO / source).exists(), f"{name}: bind source {source} missing"
            else:
                used.add(source)
                assert source in declared, f"{name}: volume {source} for {target} is not declared"
    assert used == declared, f"declared but unused: {declared - used}"
