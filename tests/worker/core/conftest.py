"""Fixtures for the state tests: one real `redis-server` per session (AOF on, `noeviction`, as the README asks of a
deployment) and `make_store`, which builds a job store of either backend (`worker.core.state`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from worker.core.jobstore import JobStore
from worker.core.private_redis import PrivateRedis
from worker.core.state.redis_store import RedisJobStore

StoreFactory = Callable[[Path], JobStore]


@pytest.fixture(scope="session")
def state_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a real redis-server started for this test session (skipped where none is installed)."""
    server = PrivateRedis(tmp_path_factory.mktemp("state-redis"))
    if server.executable is None:
        pytest.skip("redis-server not installed")
    endpoint = server.start()
    try:
        yield endpoint.url
    finally:
        server.stop()


@pytest.fixture(params=["files", "redis"])
def make_store(request: pytest.FixtureRequest) -> StoreFactory:
    """`make_store(data_dir)` -> a store of the parametrized backend; with redis, every store a test makes shares
    one key prefix of its own (so two stores of a test are two processes' views of one state)."""
    if request.param == "files":
        return lambda data_dir: JobStore(data_dir)
    url = request.getfixturevalue("state_redis")
    prefix = f"avs:test:{uuid.uuid4().hex}:"
    return lambda data_dir: RedisJobStore(data_dir, url, prefix=prefix, timeout_s=5.0)
