"""Worker heartbeats as expiring Redis keys (`worker.core.state.heartbeats`), on the test session's real
redis-server (`state_env`, tests/conftest.py): a beat is seen, then gone after its TTL; what is not a heartbeat
is skipped and counted; prefixes are separate deployments; the worker runtime writes and forgets its key
(`avs serve`'s supervisor: tests/app/cli/test_supervisor_heartbeat.py); a Redis that does not answer is
`StateUnavailable`, quickly."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import redis

from worker.core.settings import ServiceSettings
from worker.core.state.errors import StateUnavailable
from worker.core.state.heartbeats import (
    STALE_FACTOR,
    WorkerHeartbeat,
    forget,
    heartbeat_board,
    heartbeat_key,
    heartbeat_ttl_s,
    names_key,
    read_heartbeats,
    write_heartbeat,
)
from worker.core.state.redis_store import connect


@pytest.fixture
def board(state_env) -> tuple[redis.Redis, str]:
    client = connect(state_env.url, 2.0)
    yield client, state_env.prefix
    client.close()


def _beat(name: str = "host-1", **fields) -> WorkerHeartbeat:
    return WorkerHeartbeat(name=name, hostname="host", pid=1, warm=True, last_seen=time.time(), **fields)


def test_a_beat_is_seen_then_expires_after_its_ttl(board) -> None:
    client, prefix = board
    write_heartbeat(client, prefix, _beat(live_url="ws://127.0.0.1:9/live", live_capacity=2), ttl_s=0.4)
    found = read_heartbeats(client, prefix)
    assert [b.name for b in found.beats] == ["host-1"]
    assert (found.beats[0].live_url, found.beats[0].live_capacity, found.malformed) == ("ws://127.0.0.1:9/live",
                                                                                       2, 0)
    assert 0 < client.pttl(heartbeat_key(prefix, "host-1")) <= 400
    time.sleep(0.6)
    assert read_heartbeats(client, prefix).beats == []
    assert client.smembers(names_key(prefix)) == set()  # the expired name is pruned from the set too


def test_a_refreshed_beat_lives_on(board) -> None:
    client, prefix = board
    for _ in range(4):  # each write renews the TTL: a live worker never expires
        write_heartbeat(client, prefix, _beat(), ttl_s=0.3)
        time.sleep(0.15)
    assert [b.name for b in read_heartbeats(client, prefix).beats] == ["host-1"]


def test_values_that_are_not_heartbeats_are_skipped_and_counted(board) -> None:
    client, prefix = board
    write_heartbeat(client, prefix, _beat("good"), ttl_s=30)
    bad = {"junk": "{not json", "negative": _beat("negative").model_dump_json().replace(
        '"live_sessions":0', '"live_sessions":-1'), "no-last-seen": '{"name": "no-last-seen", "warm": true}',
        "renamed": _beat("someone-else").model_dump_json()}
    for name, value in bad.items():
        client.set(heartbeat_key(prefix, name), value, px=30_000)
        client.sadd(names_key(prefix), name)
    found = read_heartbeats(client, prefix)
    assert [b.name for b in found.beats] == ["good"]
    assert found.malformed == len(bad)


def test_two_prefixes_do_not_see_each_other(board) -> None:
    client, prefix = board
    other = prefix + "other:"
    write_heartbeat(client, prefix, _beat("mine"), ttl_s=30)
    write_heartbeat(client, other, _beat("theirs"), ttl_s=30)
    assert [b.name for b in read_heartbeats(client, prefix).beats] == ["mine"]
    assert [b.name for b in read_heartbeats(client, other).beats] == ["theirs"]
    forget(client, other, "mine")  # forgetting a name in one deployment leaves the other's alone
    assert [b.name for b in read_heartbeats(client, prefix).beats] == ["mine"]
    forget(client, prefix, "mine")
    assert read_heartbeats(client, prefix).beats == []
    assert client.exists(heartbeat_key(prefix, "mine")) == 0


def test_a_redis_that_does_not_answer_is_state_unavailable_quickly() -> None:
    with socket.socket() as listener:  # accepts connections, never answers: a frozen Redis
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        client = connect(f"redis://127.0.0.1:{listener.getsockname()[1]}/0", 0.5)
        started = time.monotonic()
        with pytest.raises(StateUnavailable, match="worker heartbeats: read"):
            read_heartbeats(client, "avs:x:")
        with pytest.raises(StateUnavailable, match="worker heartbeats: write"):
            write_heartbeat(client, "avs:x:", _beat(), ttl_s=1)
        assert time.monotonic() - started < 3
        client.close()


def test_the_ttl_is_the_staleness_the_readers_use() -> None:
    assert heartbeat_ttl_s(2.0) == STALE_FACTOR * 2.0


def test_the_worker_runtime_writes_and_forgets_its_key(state_env, tmp_path: Path) -> None:
    from worker.heartbeat import WorkerRuntime  # imports no torch until the model loads

    settings = ServiceSettings(_env_file=None, data_dir=tmp_path, heartbeat_s=5)
    runtime = WorkerRuntime(settings)
    runtime._predictor = object()  # warm, as after a model load
    runtime.write_heartbeat()
    client, prefix = heartbeat_board(settings)
    assert prefix == state_env.prefix
    (beat,) = read_heartbeats(client, prefix).beats
    assert (beat.name, beat.pid, beat.warm, beat.live_url) == (runtime.name, os.getpid(), True, None)
    assert 14_000 < client.pttl(heartbeat_key(prefix, runtime.name)) <= 15_000  # 3 × 5 s
    assert not (tmp_path / "workers").exists()  # no heartbeat file any more
    runtime.stop()
    assert read_heartbeats(client, prefix).beats == []
    runtime.write_heartbeat()  # a late beat (a live session ending during the stop) does not bring it back
    assert read_heartbeats(client, prefix).beats == []
