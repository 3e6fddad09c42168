"""docker/prometheus/prometheus.yml passes `promtool check config`, scrapes what the compose file runs
(the API by name, every worker replica through Docker's DNS), and every dashboard query is valid PromQL
(`promtool check rules` on the queries written as recording rules)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from .conftest import COMPOSE, DOCKER, compose_model, dashboard_exprs, load_yaml, tool

PROMETHEUS_YML = DOCKER / "prometheus" / "prometheus.yml"
# Grafana's variables, as Grafana would expand them for a 15 s scrape interval.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def promtool() -> str:
    exe = tool("promtool")
    if exe is None:
        pytest.fail("promtool is not installed: `apt-get install -y --no-install-recommends prometheus` "
                    "(Debian's package ships /usr/bin/promtool)")
    return exe


def expand_grafana_vars(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unexpanded Grafana variable in {expr}"
    return expr


def test_promtool_check_config() -> None:
    proc = subprocess.run([promtool(), "check", "config", str(PROMETHEUS_YML)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_promtool_rejects_a_broken_config(tmp_path: Path) -> None:
    """The check above can fail: a config with an unknown field does not pass."""
    broken = tmp_path / "prometheus.yml"
    broken.write_text(PROMETHEUS_YML.read_text(encoding="utf-8").replace("refresh_interval", "refresh_intervall"),
                      encoding="utf-8")
    proc = subprocess.run([promtool(), "check", "config", str(broken)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    assert exprs
    rules = {"groups": [{"name": "avs-dashboard", "rules": [
        {"record": f"avs:dashboard_query_{n}", "expr": expand_grafana_vars(expr)} for n, (_, expr) in enumerate(exprs)
    ]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(json.dumps(rules), encoding="utf-8")  # JSON is YAML
    proc = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_scrape_targets_match_the_compose_services() -> None:
    config = load_yaml(PROMETHEUS_YML)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    services = compose_model(COMPOSE)["services"]

    api_targets = [t for sc in jobs["avs-api"]["static_configs"] for t in sc["targets"]]
    assert api_targets == ["api:8000"]
    assert "api" in services
    command = services["api"]["command"]
    assert command[command.index("--port") + 1] == "8000"

    # Workers: discovered through Docker's DNS, one A record per replica (`--scale worker=N`).
    (dns,) = jobs["avs-worker"]["dns_sd_configs"]
    assert dns["names"] == ["worker"]
    assert dns["type"] == "A"
    worker = services["worker"]
    assert str(dns["port"]) == worker["environment"]["AVS_WORKER_METRICS_PORT"]
    assert str(dns["port"]) in [str(p) for p in worker["expose"]]
    assert "static_configs" not in jobs["avs-worker"], "a static worker target would miss scaled replicas"
    for job in jobs.values():
        assert job.get("metrics_path", "/metrics") == "/metrics"
    assert re.fullmatch(r"\d+s", config["global"]["scrape_interval"])
