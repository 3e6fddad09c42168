"""`avs bench objects`: put/get throughput of one large object, local directory vs S3, in one run.

With no endpoint given it starts a throwaway Swift (`swift_server.SwiftServer`) and reports its start-up time
too. The body is generated as it streams (never held whole), and read back in 16 MiB ranges whose sha256 must
match what was sent (a wrong byte fails the bench instead of flattering it).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
import uuid
from pathlib import Path

from worker.core.objects.store import CHUNK_BYTES, LocalStore, ObjectStore

READ_BYTES = 16 << 20


class _Pattern:
    def __init__(self, size: int) -> None:
        self.left = size
        self.block = hashlib.sha256(b"avs-bench").digest() * (CHUNK_BYTES // 32)
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        whole, rest = divmod(n, len(self.block))
        data = b"".join([self.block] * whole + [self.block[:rest]])
        self.left -= n
        self.sha.update(data)
        return data


def measure(store: ObjectStore, size: int, key: str = "bench/object.bin") -> dict:
    """Put `size` bytes streamed, read them back in ranges; MB/s (10^6 bytes) of each. Raises AssertionError when
    the bytes read differ from the bytes sent, and the store's `ObjectStoreError`s."""
    body = _Pattern(size)
    began = time.monotonic()
    store.put_stream(key, body)
    put_s = time.monotonic() - began
    began = time.monotonic()
    sha = hashlib.sha256()
    for start in range(0, size, READ_BYTES):
        sha.update(store.read_range(key, start, READ_BYTES))
    get_s = time.monotonic() - began
    if sha.hexdigest() != body.sha.hexdigest():
        raise AssertionError(f"{type(store).__name__}: the bytes read back differ from the bytes sent")
    store.delete(key)
    return {"put_s": round(put_s, 3), "get_s": round(get_s, 3), "put_MBps": round(size / 1e6 / put_s, 1),
            "get_MBps": round(size / 1e6 / get_s, 1)}


def bench_objects(size_mb: int = 50, *, endpoint: str | None = None, access_key: str | None = None,
                  secret_key: str | None = None, bucket: str = "avs-bench", work_dir: Path | None = None) -> dict:
    """The local backend (a directory under `work_dir`) and S3 (`endpoint`, else a throwaway Swift), one object of
    `size_mb` MiB each. Raises `SwiftServerError` when Swift is needed and cannot start."""
    from worker.core.objects.s3_store import S3Store
    from worker.core.objects.swift_server import SwiftServer

    size = size_mb << 20
    with tempfile.TemporaryDirectory(prefix="avs-bench-objects-", dir=work_dir) as tmp:
        result: dict = {"size_bytes": size, "local": measure(LocalStore(Path(tmp) / "local"), size)}
        swift = None
        if endpoint is None:
            swift = SwiftServer(Path(tmp) / "swift")
            ep = swift.start()
            endpoint, access_key, secret_key = ep.url, ep.access_key, ep.secret_key
            result["swift_start_s"] = round(swift.started_in_s or 0.0, 2)
        try:
            store = S3Store(bucket, f"bench-{uuid.uuid4().hex}", endpoint_url=endpoint, access_key=access_key,
                            secret_key=secret_key, create_bucket=True, timeout_s=30.0)
            result["s3"] = {"endpoint": endpoint, **measure(store, size)}
        finally:
            if swift is not None:
                swift.stop()
    return result
