"""`avs demo` (what `make demo` runs): the service, end to end, on this machine.

demo: make a synthetic clip whose ground truth is known, start `avs serve` on the embedded default,
submit the clip over HTTP, stream its masks as they are produced, download the overlay video, score
the masks against the ground truth, print a summary, stop the server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from app.cli.client import Client, local_service

SAMPLE_SEED = 2026  # a seed the demo checkpoint never saw in training (it was trained on seed 1)


def make_sample_clip(out_dir: Path, *, seed: int = SAMPLE_SEED) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = sorted((out_dir / "mp4").glob(f"syn_s4_{seed}_*.mp4"))
    if existing:
        return existing[0]
    subprocess.run([sys.executable, "-m", "app.cli", "synth", "--out", str(out_dir), "--subset", "s4", "--videos", "1",
                    "--seed", str(seed), "--split", "test"], check=True, stdout=subprocess.DEVNULL)
    return sorted((out_dir / "mp4").glob(f"syn_s4_{seed}_*.mp4"))[0]


def submit_and_stream(client: Client, video: Path, out_dir: Path, *, overlay: bool) -> dict[str, Any]:
    """POST the video, stream its mask lines to out_dir/masks.ndjson; returns timings of the round trip."""
    start = time.perf_counter()
    job = client.submit(video, overlay="true" if overlay else "false")
    first_line = None
    frames = 0
    with (out_dir / "masks.ndjson").open("w") as f:
        for record in client.stream_masks(job["job_id"]):
            if first_line is None:
                first_line = time.perf_counter() - start
            f.write(json.dumps(record) + "\n")
            frames += 1
    final = client.wait(job["job_id"])
    total = time.perf_counter() - start
    return {"job": final, "frames": frames, "seconds_to_first_mask": round(first_line or total, 3),
            "seconds_total": round(total, 3), "frames_per_second": round(frames / total, 3) if total else 0.0}


def run_demo(out_dir: Path) -> dict[str, Any]:
    from worker.mask_scoring import score_masks

    out_dir = out_dir.resolve()
    video = make_sample_clip(out_dir / "clips")
    sys.stderr.write(f"demo: sample clip {video}\ndemo: starting avs serve (embedded broker)...\n")
    with local_service(out_dir / "service") as client:
        sys.stderr.write(f"demo: service ready at {client.base_url}; submitting...\n")
        run = submit_and_stream(client, video, out_dir, overlay=True)
        job = run["job"]
        if job["status"] != "succeeded":
            raise RuntimeError(f"demo job ended {job['status']}: {job.get('error')}")
        client.download(f"/jobs/{job['job_id']}/overlay.mp4", out_dir / "overlay.mp4")
    score = score_masks(out_dir / "masks.ndjson", video.with_suffix(".gt.ndjson"))
    return {"video": str(video), "frames": run["frames"], "miou_vs_ground_truth": score["miou"],
            "seconds_to_first_mask": run["seconds_to_first_mask"], "seconds_total": run["seconds_total"],
            "timings": job["timings"], "masks": str(out_dir / "masks.ndjson"), "overlay": str(out_dir / "overlay.mp4")}
