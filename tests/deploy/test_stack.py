"""The Compose stack built and run for real (`make deploy-test`; marker `deploy`, not in the default run).

Builds the API image and the CPU worker image from the Dockerfiles users deploy from (on local stand-ins for
the public base images where Docker Hub cannot be reached: scripts/make-base-images.sh), starts Redis, the
API, a worker and Prometheus with docker-compose, and checks what a user would: health, a synthetic clip
segmented over HTTP and scored against its ground truth, Prometheus scraping the API and the worker, a worker
container killed mid-job (the job completes on the restarted container, every frame once), a Redis restart
with jobs queued (AOF: none lost), image sizes, start-up times, non-root users, no torch in the API image.
Then `docker-compose down -v`. Containers talk over the project's compose network; the test reaches them
only on 127.0.0.1 ports it publishes.

A summary (times, sizes, mIoU) is written to `runs/deploy-test/summary.json` (AVS_DEPLOY_SUMMARY overrides).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cli.demo import make_sample_clip
from worker.mask_scoring import score_masks

# the images are built and the stack started in fixtures: minutes, not the default 10 min per test
pytestmark = [pytest.mark.deploy, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[2]
DOCKER = os.environ.get("AVS_DOCKER", "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker")
COMPOSE = os.environ.get("AVS_COMPOSE", shutil.which("docker-compose") or "docker-compose")
LOCAL_PYTHON = "avs-local/python:3.11-bookworm"
API_IMAGE, WORKER_IMAGE = "avesformer-api:deploy-test", "avesformer-worker:deploy-test"
SUMMARY: dict[str, Any] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 1800, check: bool = True) -> str:
    result = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result.stdout


def _image_exists(name: str) -> bool:
    return subprocess.run([DOCKER, "image", "inspect", name], capture_output=True).returncode == 0


def _wait(predicate, timeout: float, what: str, interval: float = 1.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class Stack:
    """One docker-compose project: its environment, its containers, its published ports."""

    def __init__(self, project: str, env: dict[str, str]) -> None:
        self.project = project
        self.env = env
        self.api = f"http://127.0.0.1:{env['AVS_API_PORT']}"
        self.prometheus = f"http://127.0.0.1:{env['PROMETHEUS_PORT']}"

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        return _run(COMPOSE, "-p", self.project, "-f", str(REPO / "docker-compose.yml"), *args, env=self.env,
                    timeout=timeout, check=check)

    def container(self, service: str) -> str:
        ids = self.compose("ps", "-q", service).split()
        assert ids, f"no {service} container"
        return ids[0]

    def health(self, service: str) -> str:
        out = _run(DOCKER, "inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}",
                   self.container(service), check=False)
        return out.strip()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api, timeout=60)


@pytest.fixture(scope="module")
def images() -> dict[str, Any]:
    if subprocess.run([DOCKER, "info"], capture_output=True).returncode != 0:
        pytest.fail(f"no Docker engine answers ({DOCKER} info): start dockerd (see docker/README.md)")
    base = os.environ.get("PYTHON_IMAGE")
    if base is None:  # the public image where it can be pulled, else the local stand-in
        pulled = subprocess.run([DOCKER, "pull", "python:3.11.14-slim-bookworm"], capture_output=True, timeout=120)
        base = "python:3.11.14-slim-bookworm" if pulled.returncode == 0 else LOCAL_PYTHON
    if base == LOCAL_PYTHON and not _image_exists(LOCAL_PYTHON):
        certs = " ".join(str(p) for p in Path("/usr/local/share/ca-certificates").glob("*.crt"))
        _run("bash", str(REPO / "scripts" / "make-base-images.sh"),
             env={**os.environ, "DOCKER": DOCKER, "EXTRA_CA_CERTS": certs})
    built = {}
    for name, dockerfile, extra in ((API_IMAGE, "docker/api.Dockerfile", ()),
                                    (WORKER_IMAGE, "docker/worker.Dockerfile", ("--build-arg", "AVS_DEVICE=cpu"))):
        started = time.monotonic()
        _run(DOCKER, "build", "--network", "host", "-f", str(REPO / dockerfile), "--build-arg",
             f"PYTHON_IMAGE={base}", *extra, "-t", name, str(REPO),
             env={**os.environ, "DOCKER_BUILDKIT": "1"}, timeout=3600)
        size = int(_run(DOCKER, "image", "inspect", "-f", "{{.Size}}", name).strip())
        built[name] = {"build_s": round(time.monotonic() - started, 1), "size_mb": round(size / 1e6)}
    SUMMARY["images"] = built
    SUMMARY["python_base"] = base
    return {"base": base}


@pytest.fixture(scope="module")
def stack(images: dict[str, Any]) -> Iterator[Stack]:
    local = images["base"] == LOCAL_PYTHON
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AVS_", "COMPOSE_"))},
           "AVS_API_IMAGE": API_IMAGE.split(":")[0], "AVS_WORKER_IMAGE": WORKER_IMAGE.split(":")[0],
           "AVS_IMAGE_TAG": "deploy-test", "AVS_API_BIND": "127.0.0.1", "AVS_API_PORT": str(_free_port()),
           "PROMETHEUS_PORT": str(_free_port()), "AVS_API_PROCESSES": "2", "AVS_BATCH_SIZE": "4",
           "AVS_WORKER_STOP_GRACE": "20s", "AVS_WEIGHTS_DIR": str(REPO / "model" / "weights")}
    if local:
        for ensure in ("redis", "prometheus"):
            if not _image_exists(f"avs-local/{ensure}:{7 if ensure == 'redis' else 2}"):
                certs = " ".join(str(p) for p in Path("/usr/local/share/ca-certificates").glob("*.crt"))
                _run("bash", str(REPO / "scripts" / "make-base-images.sh"), ensure,
                     env={**os.environ, "DOCKER": DOCKER, "EXTRA_CA_CERTS": certs})
        env.update({"REDIS_IMAGE": "avs-local/redis", "REDIS_TAG": "7",
                    "PROMETHEUS_IMAGE": "avs-local/prometheus", "PROMETHEUS_TAG": "2"})
    stack = Stack(f"avsdeploytest{os.getpid()}", env)
    started = time.monotonic()
    # Grafana is left out where its image cannot be had (no Debian package, no Hub): see docker/README.md
    services = ["redis", "api", "worker", "prometheus"]
    try:
        stack.compose("up", "-d", "--no-build", *services, timeout=900)
        SUMMARY["api_ready_s"] = round(time.monotonic() - started + _wait(
            lambda: stack.health("api") == "healthy", 300, "a healthy API container"), 1)
        SUMMARY["worker_warm_s"] = round(time.monotonic() - started + _wait(
            lambda: stack.health("worker") == "healthy", 600, "a healthy (warm) worker container"), 1)
        yield stack
    finally:
        logs = stack.compose("logs", "--no-color", "--tail", "60", check=False)
        stack.compose("down", "-v", "--remove-orphans", timeout=300, check=False)
        out = Path(os.environ.get("AVS_DEPLOY_SUMMARY", REPO / "runs" / "deploy-test" / "summary.json"))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(SUMMARY, indent=2) + "\n")
        (out.parent / "compose-logs.txt").write_text(logs)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sample_clip(tmp_path_factory.mktemp("deploy-clip"))


def _submit(stack: Stack, video: Path) -> str:
    with stack.client() as http, video.open("rb") as f:
        response = http.post("/segment", files={"file": (video.name, f, "video/mp4")})
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def _status(stack: Stack, job_id: str) -> dict[str, Any]:
    with stack.client() as http:
        return http.get(f"/jobs/{job_id}").json()


def _masks(stack: Stack, job_id: str, out: Path) -> list[dict[str, Any]]:
    with stack.client() as http, http.stream("GET", f"/jobs/{job_id}/masks", timeout=300) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line.strip()]
    frames = [line for line in lines if "frame_index" in line]
    out.write_text("".join(json.dumps(line) + "\n" for line in frames))
    assert lines, "an empty mask stream"
    assert lines[-1].get("end"), "the mask stream ended without its end line"
    return frames


def test_a_clip_is_segmented_over_http_and_scores_against_its_ground_truth(stack: Stack, clip: Path,
                                                                          tmp_path: Path) -> None:
    started = time.monotonic()
    job_id = _submit(stack, clip)
    frames = _masks(stack, job_id, tmp_path / "masks.ndjson")
    SUMMARY["clip_round_trip_s"] = round(time.monotonic() - started, 2)
    assert _status(stack, job_id)["status"] == "succeeded"
    score = score_masks(tmp_path / "masks.ndjson", clip.with_suffix(".gt.ndjson"))
    SUMMARY["miou_over_http"] = round(score["miou"], 4)
    assert [f["frame_index"] for f in frames] == list(range(score["frames"]))
    assert score["miou"] >= 0.9, score
    with stack.client() as http:  # the web page's files are in the API image (package data of the wheel)
        page, module = http.get("/"), http.get("/static/upload.js")
    assert page.status_code == 200
    assert 'src="static/main.js"' in page.text
    assert module.status_code == 200
    assert "javascript" in module.headers["content-type"]


def test_prometheus_scrapes_the_api_and_the_worker(stack: Stack) -> None:
    def targets() -> dict[str, str]:
        try:
            data = httpx.get(f"{stack.prometheus}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        except (httpx.HTTPError, ValueError, KeyError):
            return {}
        return {t["labels"]["job"]: t["health"] for t in data}

    _wait(lambda: targets().get("avs-api") == "up" and targets().get("avs-worker") == "up", 120,
          "Prometheus targets avs-api and avs-worker up", interval=3)
    query = httpx.get(f"{stack.prometheus}/api/v1/query", params={"query": "avs_frames_processed_total"},
                      timeout=5).json()
    assert query["data"]["result"], "the worker's frame counter is not in Prometheus"


def test_a_killed_worker_container_is_restarted_and_finishes_the_job_every_frame_once(
        stack: Stack, tmp_path: Path) -> None:
    from worker.media.samples import make_video

    long_clip = make_video(tmp_path / "long.mp4", duration_s=40.0, size=(160, 120), fps=25)
    job_id = _submit(stack, long_clip)
    _wait(lambda: _status(stack, job_id)["progress"]["frames_done"] >= 50, 300, "the job to be under way",
          interval=0.5)
    worker = stack.container("worker")
    _oom_kill(worker)
    killed_at = time.monotonic()
    _wait(lambda: stack.health("worker") in ("starting", "healthy")
          and _run(DOCKER, "inspect", "-f", "{{.RestartCount}}", worker).strip() != "0",
          180, "the worker container to be restarted", interval=1)
    _wait(lambda: _status(stack, job_id)["status"] == "succeeded", 600, "the job to finish", interval=2)
    SUMMARY["worker_kill_recovered_s"] = round(time.monotonic() - killed_at, 1)
    status = _status(stack, job_id)
    assert status["attempts"] == 2
    frames = _masks(stack, job_id, tmp_path / "long.ndjson")
    assert [f["frame_index"] for f in frames] == list(range(status["progress"]["frames_total"]))


def _oom_kill(container: str) -> None:
    """SIGKILL the container's main process, as the kernel's out-of-memory killer would: no warm shutdown, no
    ack, and the restart policy applies (`docker kill` counts as a manual stop, which it does not)."""
    init = int(_run(DOCKER, "inspect", "-f", "{{.State.Pid}}", container).strip())  # docker-init (init: true)
    children = Path(f"/proc/{init}/task/{init}/children").read_text().split()
    assert children, "the container's init has no child process"
    os.kill(int(children[0]), signal.SIGKILL)


def test_a_redis_restart_loses_no_accepted_job(stack: Stack, clip: Path) -> None:
    stack.compose("stop", "worker")  # the jobs stay queued in Redis
    jobs = [_submit(stack, clip) for _ in range(3)]
    stack.compose("restart", "redis")
    _wait(lambda: stack.health("redis") == "healthy", 120, "Redis back")
    restarted = time.monotonic()
    stack.compose("start", "worker")
    _wait(lambda: all(_status(stack, j)["status"] == "succeeded" for j in jobs), 600, "every queued job done",
          interval=2)
    SUMMARY["redis_restart_jobs_done_s"] = round(time.monotonic() - restarted, 1)


def test_images_run_as_non_root_and_the_api_image_has_no_torch(stack: Stack) -> None:
    for service in ("api", "worker"):
        assert _run(DOCKER, "exec", stack.container(service), "id", "-u").strip() == "10001"
        _wait(lambda service=service: stack.health(service) == "healthy", 300, f"{service} healthy")
    probe = subprocess.run([DOCKER, "run", "--rm", "--entrypoint", "python", API_IMAGE, "-c", "import torch"],
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode != 0
    assert "No module named 'torch'" in probe.stderr
