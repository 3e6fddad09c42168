"""Fixtures every test directory shares: the state Redis (issue #24: Redis is the only coordination store).

* `state_redis` (session): the URL of one real `redis-server` started for the test session, configured as the
  README asks of a deployment (append-only file on, `maxmemory-policy noeviction`; `worker.core.private_redis`).
* `state_env` (per test): `AVS_STATE_URL` and a key prefix of the test's own (`AVS_STATE_PREFIX`) in the
  environment, so every `ServiceSettings` the test builds (and every process it starts) shares that Redis
  without seeing another test's jobs.
* `make_store(data_dir, folder="jobs")`: a store on that Redis and prefix (two stores a test makes are two
  processes' views of one state).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from worker.core.private_redis import PrivateRedis
from worker.core.state import close_stores
from worker.core.state.redis_store import RedisJobStore

StoreFactory = Callable[..., RedisJobStore]


@pytest.fixture(scope="session")
def state_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a real redis-server started for this test session (redis-server is a test dependency:
    scripts/install-test-deps.sh installs Debian's)."""
    server = PrivateRedis(tmp_path_factory.mktemp("state-redis"))
    if server.executable is None:
        pytest.fail("redis-server is not installed (run scripts/install-test-deps.sh)")
    endpoint = server.start()
    try:
        yield endpoint.url
    finally:
        server.stop()


@dataclass(frozen=True)
class StateEnv:
    """The state Redis and key prefix of one test."""

    url: str
    prefix: str


@pytest.fixture
def state_env(state_redis: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[StateEnv]:
    """`AVS_STATE_URL` / `AVS_STATE_PREFIX` set for this test (a fresh prefix); the stores opened in the test are
    closed after it."""
    env = StateEnv(state_redis, f"avs:test:{uuid.uuid4().hex}:")
    monkeypatch.setenv("AVS_STATE_URL", env.url)
    monkeypatch.setenv("AVS_STATE_PREFIX", env.prefix)
    monkeypatch.delenv("AVS_STATE_BACKEND", raising=False)
    yield env
    close_stores()


@pytest.fixture
def make_store(state_env: StateEnv) -> Iterator[StoreFactory]:
    """`make_store(data_dir, folder="jobs")` -> a store on the test's Redis and prefix."""
    made: list[RedisJobStore] = []

    def make(data_dir: Path, folder: str = "jobs", **options: float) -> RedisJobStore:
        store = RedisJobStore(data_dir, state_env.url, folder, prefix=state_env.prefix, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.client.close()
