"""Fixtures of the object store tests: one real OpenStack Swift (s3api) per session and `store`, one store of each
backend (`worker.core.objects`): the local directory and S3 against that Swift."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.core.objects.s3_store import S3Store
from worker.core.objects.store import LocalStore, ObjectStore
from worker.core.objects.swift_server import SwiftEndpoint, SwiftServer, swift_installed

BUCKET = "avs-tests"


@pytest.fixture(scope="session")
def swift(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwiftServer]:
    """A running Swift with s3api (skipped where `scripts/install-objectstore-deps.sh` has not run)."""
    if not swift_installed():
        pytest.skip("OpenStack Swift not installed (scripts/install-objectstore-deps.sh)")
    server = SwiftServer(tmp_path_factory.mktemp("swift"))
    server.start()
    print(f"\nSwift (s3api) started in {server.started_in_s:.2f} s", file=sys.stderr)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def swift_endpoint(swift: SwiftServer) -> SwiftEndpoint:
    assert swift.endpoint is not None
    return swift.endpoint


def make_s3_store(endpoint: SwiftEndpoint, prefix: str, **kwargs) -> S3Store:
    """An S3Store on the session's bucket under `prefix` (created when missing)."""
    return S3Store(BUCKET, prefix, endpoint_url=endpoint.url, access_key=endpoint.access_key,
                   secret_key=endpoint.secret_key, region=endpoint.region, create_bucket=True, **kwargs)


@pytest.fixture
def make_s3(swift_endpoint: SwiftEndpoint):
    """`make_s3(**S3Store options)` -> an S3Store on the session's bucket under a fresh prefix."""
    return lambda **kwargs: make_s3_store(swift_endpoint, f"t-{uuid.uuid4().hex}", **kwargs)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """A fresh, empty store of the parametrized backend (S3: a prefix of its own in the session's bucket)."""
    if request.param == "local":
        return LocalStore(tmp_path / "objects")
    return make_s3_store(request.getfixturevalue("swift_endpoint"), f"t-{uuid.uuid4().hex}")
