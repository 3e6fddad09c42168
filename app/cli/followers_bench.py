"""`avs bench followers`: how late a mask line reaches the followers of its stream, and what following costs.

One run, both ways, on a private redis-server and the real code paths: a writer PROCESS appends mask lines at
`rate` lines/s with the service's `MaskWriter` and signals each one through the job store
(`RedisJobStore.notify`, as a REST stream does per frame), then ends the job; `followers` followers in THIS
process run `app.api.mask_stream.follow_masks` as `GET /jobs/{id}/masks` does. Mode `signals` is today's
(woken by Redis pub/sub, `app.api.mask_signals`); mode `poll` is the former 50 ms poll, kept here only as the
baseline. Reported per mode: the delay from a line's write (wall clock in the line) to its arrival at each
follower (p50/p95/max, ms; same host, one clock) and the followers' CPU time per second of wall time.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from app.api.mask_stream import MASKS_POLL_S, follow_masks


class _Connected:
    async def is_disconnected(self) -> bool:
        return False


def _write_lines(data_dir: str, url: str, prefix: str, job_id: str, lines: int, rate: float) -> None:
    """The writer process: `lines` lines at `rate` per second, each signalled, then the job's end."""
    from worker.core.contracts import JobStatus
    from worker.core.state.redis_store import RedisJobStore
    from worker.masks import MaskWriter

    store = RedisJobStore(data_dir, url, prefix=prefix)
    writer = MaskWriter(store.masks_path(job_id), atomic=False, append=True)
    start = time.monotonic()
    for index in range(lines):
        time.sleep(max(0.0, start + index / rate - time.monotonic()))
        writer.write([{"frame_index": index, "pts_s": index / rate, "written_at": time.time()}])
        store.notify(job_id)
    writer.commit()
    store.set_fields(job_id, status=JobStatus.SUCCEEDED)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def _follow(store: Any, job_id: str, signals: bool, delays: list[float]) -> None:
    async for chunk in follow_masks(_Connected(), store, job_id, 0, signals=signals):  # type: ignore[arg-type]
        now = time.time()
        for line in chunk.splitlines():
            record = json.loads(line)
            if "written_at" in record:
                delays.append(now - record["written_at"])


def _one_mode(data_dir: Path, url: str, *, signals: bool, followers: int, lines: int, rate: float) -> dict[str, Any]:
    from worker.core.contracts import JobStatus
    from worker.core.job_record import JobRecord, UploadInfo, new_job_id
    from worker.core.state.redis_store import RedisJobStore

    prefix = f"avs:bench:{uuid.uuid4().hex}:"
    store = RedisJobStore(data_dir, url, prefix=prefix)
    job_id = new_job_id()
    store.create(JobRecord(job_id=job_id, upload=UploadInfo(path="upload.mp4"), status=JobStatus.RUNNING))
    delays: list[list[float]] = [[] for _ in range(followers)]

    async def run() -> tuple[float, float]:
        tasks = [asyncio.create_task(_follow(store, job_id, signals, out)) for out in delays]
        await asyncio.sleep(0.5)  # every follower subscribed and waiting
        writer = multiprocessing.get_context("spawn").Process(
            target=_write_lines, args=(str(data_dir), url, prefix, job_id, lines, rate))
        cpu0, wall0 = time.process_time(), time.monotonic()
        writer.start()
        await asyncio.gather(*tasks)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        writer.join()
        return cpu, wall

    cpu, wall = asyncio.run(run())
    flat = [d * 1000 for out in delays for d in out]
    complete = sum(1 for out in delays if len(out) == lines)
    return {"mode": "signals" if signals else f"poll_{int(MASKS_POLL_S * 1000)}ms", "followers": followers,
            "lines": lines, "followers_complete": complete,
            "delay_ms_p50": round(statistics.median(flat), 2), "delay_ms_p95": round(_percentile(flat, 0.95), 2),
            "delay_ms_max": round(max(flat), 2), "follower_cpu_s_per_s": round(cpu / wall, 3),
            "seconds": round(wall, 2)}


def bench_followers(*, followers: int = 50, duration_s: float = 10.0, rate: float = 25.0) -> dict[str, Any]:
    """Both modes in one run (see the module docstring); `duration_s` of lines at `rate` lines/s each."""
    from worker.core.private_redis import PrivateRedis

    lines = max(1, round(duration_s * rate))
    with tempfile.TemporaryDirectory() as tmp:
        server = PrivateRedis(Path(tmp) / "redis")
        if server.executable is None:
            raise RuntimeError("redis-server is not installed (make setup installs it)")
        url = server.start().url
        try:
            modes = [_one_mode(Path(tmp) / f"data-{signals}", url, signals=signals, followers=followers,
                               lines=lines, rate=rate) for signals in (True, False)]
        finally:
            server.stop()
    signals, poll = modes
    return {"followers": followers, "rate_lines_per_s": rate, "lines": lines, "signals": signals, "poll": poll,
            "delay_p50_poll_over_signals": round(poll["delay_ms_p50"] / max(signals["delay_ms_p50"], 1e-3), 2),
            "cpu_poll_over_signals": round(poll["follower_cpu_s_per_s"]
                                           / max(signals["follower_cpu_s_per_s"], 1e-3), 2)}
