"""Mask-stream followers woken by Redis pub/sub (`app.api.mask_signals`), on a real redis-server: a line written
and signalled reaches a follower at once (the safety poll set far away), the end line follows the record's last
write, a lost signal only delays until the safety poll, and one connection serves many followers."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from pathlib import Path

import pytest

from app.api.mask_signals import hub_for
from app.api.mask_stream import follow_masks
from worker.core.contracts import JobStatus
from worker.core.job_record import JobRecord, UploadInfo, new_job_id
from worker.core.state.redis_store import RedisJobStore


class _Connected:
    """The one thing `follow_masks` asks of a Starlette request: the client is still there."""

    async def is_disconnected(self) -> bool:
        return False


@pytest.fixture
def store(tmp_path: Path, state_redis: str) -> RedisJobStore:
    """A store of this test alone on the session's redis-server (tests/conftest.py)."""
    return RedisJobStore(tmp_path / "data", state_redis, prefix=f"avs:test:{uuid.uuid4().hex}:")


def _running_job(store: RedisJobStore) -> str:
    job_id = new_job_id()
    store.create(JobRecord(job_id=job_id, upload=UploadInfo(path="upload.mp4"), status=JobStatus.RUNNING))
    return job_id


def _append(store: RedisJobStore, job_id: str, index: int, *, signal: bool = True) -> float:
    with open(store.masks_path(job_id), "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"frame_index": index, "pts_s": index / 25}) + "\n")
    written = time.monotonic()
    if signal:
        store.notify(job_id)
    return written


async def _collect(store: RedisJobStore, job_id: str, safety_poll_s: float,
                   arrivals: list[tuple[float, bytes]]) -> None:
    async for chunk in follow_masks(_Connected(), store, job_id, 0, safety_poll_s=safety_poll_s):  # type: ignore[arg-type]
        for line in chunk.splitlines():
            arrivals.append((time.monotonic(), line))


def _in_thread(delay_s: float, action) -> threading.Thread:
    def run() -> None:
        time.sleep(delay_s)
        action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_signalled_line_and_the_end_arrive_without_waiting_for_the_poll(store: RedisJobStore) -> None:
    job_id = _running_job(store)
    written: list[float] = []

    def writer() -> None:
        for index in range(5):
            written.append(_append(store, job_id, index))
            time.sleep(0.1)
        store.set_fields(job_id, status=JobStatus.SUCCEEDED)  # a record write signals too

    arrivals: list[tuple[float, bytes]] = []
    thread = _in_thread(0.3, writer)  # after the follower has subscribed and found nothing
    started = time.monotonic()
    asyncio.run(asyncio.wait_for(_collect(store, job_id, 30.0, arrivals), 10))
    thread.join()

    lines = [json.loads(line) for _, line in arrivals]
    assert [line["frame_index"] for line in lines[:-1]] == list(range(5))
    assert lines[-1]["end"] is True
    assert lines[-1]["status"] == "succeeded"
    assert lines[-1]["frames"] == 5
    delays = [arrived - w for (arrived, _), w in zip(arrivals, written, strict=False)]
    assert max(delays) < 0.5  # with the safety poll at 30 s, only the signal can have woken the follower
    assert time.monotonic() - started < 5


def test_a_lost_signal_only_delays_the_line_until_the_safety_poll(store: RedisJobStore) -> None:
    job_id = _running_job(store)
    arrivals: list[tuple[float, bytes]] = []
    written: list[float] = []

    async def scenario() -> None:
        follower = asyncio.create_task(_collect(store, job_id, 0.6, arrivals))
        await asyncio.sleep(0.2)
        written.append(await asyncio.to_thread(_append, store, job_id, 0, signal=False))
        await asyncio.sleep(1.5)
        await asyncio.to_thread(store.set_fields, job_id, status=JobStatus.SUCCEEDED)
        await asyncio.wait_for(follower, 5)

    asyncio.run(scenario())
    first_arrival, first = arrivals[0]
    assert json.loads(first)["frame_index"] == 0
    assert 0.0 <= first_arrival - written[0] <= 1.2  # no signal: found by the next safety poll
    assert json.loads(arrivals[-1][1])["end"] is True


def test_fifty_followers_share_one_connection_and_all_see_every_line(store: RedisJobStore) -> None:
    job_id = _running_job(store)
    results: list[list[tuple[float, bytes]]] = [[] for _ in range(50)]

    async def scenario() -> int:
        followers = [asyncio.create_task(_collect(store, job_id, 30.0, out)) for out in results]
        await asyncio.sleep(0.5)
        hub = hub_for(store.url)
        subscribed = len(hub._events.get(store.masks_channel(job_id), ()))
        for index in range(3):
            await asyncio.to_thread(_append, store, job_id, index)
            await asyncio.sleep(0.05)
        await asyncio.to_thread(store.set_fields, job_id, status=JobStatus.SUCCEEDED)
        await asyncio.wait_for(asyncio.gather(*followers), 10)
        assert store.masks_channel(job_id) not in hub._events  # the last follower left: unsubscribed
        return subscribed

    assert asyncio.run(scenario()) == 50
    for out in results:
        lines = [json.loads(line) for _, line in out]
        assert [line.get("frame_index") for line in lines[:-1]] == [0, 1, 2]
        assert lines[-1]["end"] is True


def test_the_followers_bench_measures_both_modes_with_every_line_delivered() -> None:
    from app.cli.followers_bench import bench_followers

    result = bench_followers(followers=3, duration_s=1.0, rate=20.0)
    for mode in (result["signals"], result["poll"]):
        assert mode["followers_complete"] == 3
        assert mode["lines"] == 20
        assert 0 <= mode["delay_ms_p50"] <= mode["delay_ms_p95"] <= mode["delay_ms_max"]
    assert result["poll"]["mode"] == "poll_50ms"
