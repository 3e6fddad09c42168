"""The Grafana provisioning and dashboard: the JSON loads, points at the provisioned datasource, shows what
operators need, and every metric its queries name exists in the service's real `/metrics`: the real API
(`avs serve --no-worker`, several processes) plus the real worker metrics module writing into the same
multiprocess directory, as the embedded `avs serve` does."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import COMPOSE, DASHBOARD, DOCKER, REPO, compose_model, dashboard_exprs, load_yaml, tool

PROVISIONING = DOCKER / "grafana" / "provisioning"
METRIC = re.compile(r"\bavs_[a-z0-9_]+\b")
# Panels the deployment issue asks for: (what, a fragment its query must contain).
REQUIRED_QUERIES = [
    ("job latency p50", "histogram_quantile(0.5, sum by (le) (rate(avs_job_duration_seconds_bucket"),
    ("job latency p95", "histogram_quantile(0.95, sum by (le) (rate(avs_job_duration_seconds_bucket"),
    ("seconds per stage", "sum by (stage) (rate(avs_stage_duration_seconds_sum"),
    ("batch size", "avs_inference_batch_size"),
    ("frames per second", "rate(avs_frames_processed_total[1m])"),
    ("backlog", "avs_backlog_jobs"),
    ("failures by code", "sum by (code) (increase(avs_jobs_failed_total"),
    ("HTTP request rate", "rate(avs_http_requests_total"),
    ("HTTP latency", "avs_http_request_duration_seconds_bucket"),
    ("live sessions", "sum(avs_live_sessions)"),
    ("live latency p95", "histogram_quantile(0.95, sum by (le) (rate(avs_live_latency_seconds_bucket"),
    ("live drops by reason", "sum by (reason) (rate(avs_live_frames_dropped_total"),
    ("live frames skipped by the sessions' fps cap", "sum(rate(avs_live_frames_skipped_by_rate_total"),
    ("REST streams by state", "avs_streams_in_state"),
    ("REST stream runs by outcome", "sum by (status) (increase(avs_streams_ended_total"),
]


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _all_panels(panel.get("panels", []))


# --------------------------------------------------------------------------------------------- static
def test_dashboard_loads_and_uses_the_provisioned_datasource() -> None:
    dash = _dashboard()
    assert dash["uid"] == "avs-service"
    assert dash["title"]
    (datasource,) = load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in compose_model(COMPOSE)["services"]
    ids = []
    for panel in _all_panels(dash["panels"]):
        ids.append(panel["id"])
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"]) == panel["datasource"]
            assert target["expr"].strip()
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_dashboard_provider_points_at_the_mounted_folder() -> None:
    (provider,) = load_yaml(PROVISIONING / "dashboards" / "avs.yml")["providers"]
    assert provider["type"] == "file"
    grafana = compose_model(COMPOSE)["services"]["grafana"]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in grafana["volumes"]}
    assert mounts[provider["options"]["path"]] == "./docker/grafana/dashboards"
    assert (REPO / mounts[provider["options"]["path"]] / DASHBOARD.name).is_file()


@pytest.mark.parametrize(("what", "fragment"), REQUIRED_QUERIES, ids=[w for w, _ in REQUIRED_QUERIES])
def test_dashboard_has_the_required_panels(what: str, fragment: str) -> None:
    assert any(fragment in expr for _, expr in dashboard_exprs()), f"no {what} query containing {fragment!r}"


def test_dashboard_aggregates_over_replicas() -> None:
    """Histogram quantiles are computed over every worker/process: `sum by (le, ...)` inside."""
    for title, expr in dashboard_exprs():
        for inner in re.findall(r"histogram_quantile\([^,]+,\s*(.*)\)$", expr):
            assert inner.startswith("sum by (le"), f"{title}: {expr}"


# ----------------------------------------------------------------------------------------------- live
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _post_file(url: str, name: str, data: bytes, content_type: str) -> int:
    import urllib.error
    import urllib.request

    boundary = "avs-deploy-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _clip(path: Path) -> bytes:
    """One second of video with a sound track (a valid submission)."""
    ffmpeg = tool("ffmpeg")
    if ffmpeg is None:
        pytest.fail("ffmpeg is not installed (scripts/install-system-deps.sh installs it)")
    subprocess.run([ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:duration=1",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000:duration=1", "-shortest",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)],
                   check=True, capture_output=True, timeout=60)
    return path.read_bytes()


# Observes one sample of every metric the worker module defines, in the shared multiprocess directory.
_WORKER_SAMPLES = """
from prometheus_client.metrics import MetricWrapperBase
import worker.prometheus as m

names = []
for obj in vars(m).values():
    if not isinstance(obj, MetricWrapperBase):
        continue
    labels = {n: ("inference" if n == "stage" else "deploy_test") for n in obj._labelnames}
    sample = obj.labels(**labels) if labels else obj
    if hasattr(sample, "observe"):
        sample.observe(1.0)
    else:
        sample.inc()
    names.append(obj._name)
print(" ".join(names))
"""


@pytest.fixture
def live_api(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVS_", "PROMETHEUS_"))}
    env.update({"AVS_DATA_DIR": str(tmp_path / "data"), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
                "PYTHONUNBUFFERED": "1"})
    port = _free_port()
    log = tmp_path / "api.log"
    with log.open("w") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--no-worker", "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", "2", "--loglevel", "warning"],
                                cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"avs serve exited:\n{log.read_text(errors='replace')[-4000:]}"
            with contextlib.suppress(OSError):
                if _get(f"{base}/healthz", timeout=2)[0] == 200:
                    break
            assert time.monotonic() < deadline, f"API not up in 60 s:\n{log.read_text(errors='replace')[-4000:]}"
            time.sleep(0.3)
        yield base, env
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_dashboard_metrics_exist_in_the_real_metrics_output(live_api: tuple[str, dict[str, str]],
                                                            tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    base, env = live_api
    # Traffic that makes the label-carrying API series appear: requests, one accepted and one refused upload.
    assert _get(f"{base}/healthz")[0] == 200
    _get(f"{base}/readyz")
    assert _get(f"{base}/jobs/does-not-exist")[0] == 404
    assert _post_file(f"{base}/segment", "clip.mp4", _clip(tmp_path / "clip.mp4"), "video/mp4") == 202
    assert _post_file(f"{base}/segment", "notes.txt", b"not a video at all\n" * 100, "text/plain") in (415, 422)
    # The worker's metrics, from the real module, into the directory the API aggregates.
    proc = subprocess.run([sys.executable, "-c", _WORKER_SAMPLES], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "avs_job_duration_seconds" in proc.stdout.split()

    status, body = _get(f"{base}/metrics")
    assert status == 200
    exposed = {sample.name for family in text_string_to_metric_families(body.decode()) for sample in family.samples}
    referenced = {name for _, expr in dashboard_exprs() for name in METRIC.findall(expr)}
    missing = sorted(referenced - exposed)
    assert not missing, f"the dashboard queries metrics /metrics does not expose: {missing}"
    # The container health check probes the same route.
    check = subprocess.run([sys.executable, str(DOCKER / "healthcheck.py"), "api"],
                           env={**env, "AVS_HEALTHCHECK_URL": f"{base}/healthz"}, capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
