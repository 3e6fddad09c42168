"""500 small jobs back to back through `avs serve` on the embedded default: none lost (issue #27).

The filesystem broker lost 3 of 200 such jobs (a worker read a message file before it was written and
exited). Slow: `make test-slow`, or `pytest -m slow tests/e2e/test_soak.py -s` for the summary line.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from pathlib import Path

import httpx
import pytest

from worker.media.samples import make_video

from .conftest import running_embedded

JOBS = 500


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_500_small_jobs_back_to_back_lose_nothing(tmp_path: Path) -> None:
    clip = make_video(tmp_path / "clip.mp4", duration_s=0.4, size=(64, 48), fps=25)
    with running_embedded(tmp_path / "data", {"AVS_MAX_BACKLOG": "1000"}) as service:
        started = time.monotonic()
        data = clip.read_bytes()

        def submit(_: int) -> str:
            with httpx.Client(base_url=service.base_url, timeout=60) as http:
                response = http.post("/segment", files={"file": ("clip.mp4", data, "video/mp4")})
            assert response.status_code == 202, response.text
            return response.json()["job_id"]

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            job_ids = list(pool.map(submit, range(JOBS)))
        submitted = time.monotonic()
        assert len(set(job_ids)) == JOBS
        pending = set(job_ids)
        deadline = time.monotonic() + 1800
        statuses: dict[str, str] = {}
        with httpx.Client(base_url=service.base_url, timeout=60) as http:
            while pending and time.monotonic() < deadline:
                for job_id in list(pending):
                    status = http.get(f"/jobs/{job_id}").json()["status"]
                    if status in ("succeeded", "failed", "cancelled"):
                        statuses[job_id] = status
                        pending.discard(job_id)
                time.sleep(1.0)
            assert not pending, f"{len(pending)} of {JOBS} jobs never finished"
            assert set(statuses.values()) == {"succeeded"}, statuses
            frames = {len(http.get(f"/jobs/{job_id}/masks").text.splitlines()) for job_id in job_ids[::25]}
        assert all(proc.alive() for proc in service.procs)
        finished = time.monotonic()
        records = [service.record(job_id) for job_id in job_ids]
        print(json.dumps({"jobs": JOBS, "succeeded": sum(r["status"] == "succeeded" for r in records),
                          "lost": JOBS - len(statuses), "attempts_over_1": sum(r["attempts"] > 1 for r in records),
                          "submit_s": round(submitted - started, 1), "total_s": round(finished - started, 1),
                          "mask_lines_per_job": sorted(frames)}))
        assert len(frames) == 1  # every sampled job has the same number of lines: one per frame (+ the end line)
