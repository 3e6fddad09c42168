"""`avs bench service`: the service end to end under load, against the model alone, in one run.

Starts the service as `avs serve` does (embedded broker unless `AVS_BROKER_URL` is set), with a worker that
runs `concurrency` jobs at once, submits `concurrency` copies of the video at the same moment through HTTP,
follows every mask stream to its end line, and compares the aggregate rate with the worker's model alone at
the same batch size (measured after the service stopped, in the same run). The worker's memory is read from
`/proc` (its pid comes from its heartbeat), idle and at the peak.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Any

from app.cli.client import Client, local_service


def _rss_mb(pid: int, field: str) -> float | None:
    """VmRSS / VmHWM of a process in MiB (Linux), None when it is gone or unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _one(client: Client, video: Path, started: threading.Event, out: dict[str, Any]) -> None:
    started.wait()
    t0 = time.perf_counter()
    job = client.submit(video)
    out["uploaded_s"] = time.perf_counter() - t0
    frames = 0
    for _ in client.stream_masks(job["job_id"]):
        if frames == 0:
            out["first_mask_s"] = time.perf_counter() - t0
        frames += 1
    out["frames"], out["done_s"] = frames, time.perf_counter() - t0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def bench_service(video: Path, work_dir: Path, *, concurrency: int = 1, runs: int = 1,
                  batch_size: int = 8) -> dict[str, Any]:
    """`runs` rounds of `concurrency` simultaneous jobs; the best round's numbers, every round's in `per_run`."""
    from model.predictor import load_predictor
    from worker.core.settings import ServiceSettings
    from worker.pipeline_bench import model_fps

    env = {"AVS_BATCH_SIZE": str(batch_size), "AVS_JOBS_PER_WORKER": str(max(1, concurrency))}
    rounds = []
    with local_service(work_dir / "service", env=env) as client:
        workers = client.get_json("/readyz")["workers"]
        worker_pid = workers[0]["pid"] if workers else None
        idle_rss = _rss_mb(worker_pid, "VmRSS") if worker_pid else None
        for _ in range(runs):
            started = threading.Event()
            outs: list[dict[str, Any]] = [{} for _ in range(concurrency)]
            threads = [threading.Thread(target=_one, args=(client, video, started, out)) for out in outs]
            for thread in threads:
                thread.start()
            t0 = time.perf_counter()
            started.set()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - t0
            frames = sum(o["frames"] for o in outs)
            firsts = [o["first_mask_s"] for o in outs]
            rounds.append({"aggregate_fps": round(frames / wall, 3), "frames": frames, "seconds_total": round(wall, 3),
                           "first_mask_p50_s": round(statistics.median(firsts), 3),
                           "first_mask_p95_s": round(_percentile(firsts, 0.95), 3),
                           "upload_p50_s": round(statistics.median(o["uploaded_s"] for o in outs), 3)})
        peak_rss = _rss_mb(worker_pid, "VmHWM") if worker_pid else None
    # the worker's model alone (AVS_CHECKPOINT/AVS_VARIANT/AVS_DEVICE as the worker read them), same batch
    # size, after the service has stopped (no contention)
    settings = ServiceSettings()
    predictor = load_predictor(checkpoint=settings.checkpoint, variant=settings.variant, device=settings.device)
    model = model_fps(predictor, batch_size)
    best = max(rounds, key=lambda r: r["aggregate_fps"])
    growth = None
    if idle_rss is not None and peak_rss is not None and concurrency > 0:
        growth = round((peak_rss - idle_rss) / concurrency, 1)
    return {"video": str(video), "jobs": concurrency, "runs": runs, "batch_size": batch_size,
            "frames": best["frames"], "aggregate_fps": best["aggregate_fps"], "model_fps": round(model, 3),
            "aggregate_over_model": round(best["aggregate_fps"] / model, 3),
            "first_mask_p50_s": best["first_mask_p50_s"], "first_mask_p95_s": best["first_mask_p95_s"],
            "worker_idle_rss_mb": idle_rss, "worker_peak_rss_mb": peak_rss,
            "worker_rss_growth_mb_per_job": growth, "per_run": rounds}
