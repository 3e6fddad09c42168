"""The object store interface (worker.core.objects) on both backends, against a real Swift for S3."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
import tracemalloc
import uuid
from pathlib import Path

import pytest

from worker.core.objects import LocalStore, open_store
from worker.core.objects.errors import ObjectNotFound, ObjectStoreUnavailable
from worker.core.objects.s3_store import S3Store
from worker.core.objects.store import CHUNK_BYTES, ObjectStore
from worker.core.objects.swift_server import SwiftEndpoint, SwiftServer
from worker.core.settings import ServiceSettings

BUCKET = "avs-tests"  # conftest.BUCKET
BIG = 50 * 1024 * 1024


class PatternStream:
    """A readable stream of `size` pseudo-random bytes made on the fly (never held whole), with their sha256."""

    def __init__(self, size: int, seed: bytes = b"avs") -> None:
        self.left = size
        self.block = hashlib.sha256(seed).digest() * (CHUNK_BYTES // 32)
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        whole, rest = divmod(n, len(self.block))
        data = b"".join([self.block] * whole + [self.block[:rest]])  # one allocation of n bytes
        self.left -= n
        self.sha.update(data)
        return data


class FailingStream(PatternStream):
    """Breaks after 3 MiB, like a client that disconnects mid-upload."""

    def read(self, n: int = -1) -> bytes:
        if self.left < BIG - 3 * CHUNK_BYTES:
            raise OSError("client went away")
        return super().read(n)


def test_round_trip_list_range_delete(store: ObjectStore) -> None:
    assert store.put_bytes("uploads/a/video.mp4", b"0123456789") == 10
    store.put_bytes("uploads/a/meta.json", b"{}")
    store.put_bytes("uploads/b/video.mp4", b"x")
    store.put_bytes("uploads/a/video.mp4", b"abcdefghij")  # replaced whole
    assert store.get("uploads/a/video.mp4") == b"abcdefghij"
    assert store.read_range("uploads/a/video.mp4", 2, 3) == b"cde"
    assert store.read_range("uploads/a/video.mp4", 8, 100) == b"ij"
    assert store.exists("uploads/a/meta.json")
    assert not store.exists("uploads/a/nothing")
    assert store.list("uploads/a/") == ["uploads/a/meta.json", "uploads/a/video.mp4"]
    assert store.list("uploads/") == ["uploads/a/meta.json", "uploads/a/video.mp4", "uploads/b/video.mp4"]
    assert store.delete("uploads/a/") == 2
    assert store.list("uploads/") == ["uploads/b/video.mp4"]
    with pytest.raises(ObjectNotFound) as info:
        store.get("uploads/a/video.mp4")
    assert (info.value.code, info.value.http_status) == ("not_found", 404)
    with pytest.raises(ObjectNotFound):
        store.read_range("uploads/a/video.mp4", 0, 1)


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a", "a/."])
def test_keys_that_could_leave_the_root_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        LocalStore(tmp_path).put_bytes(key, b"x")


def test_a_50_mb_upload_streams_with_bounded_memory(store: ObjectStore) -> None:
    """50 MB from a stream that makes its bytes as it goes: Python's allocations peak far below the body's size
    (local: 1 MiB copies; S3: multipart, 8 MiB parts, two in memory), and the stored bytes are the sent ones."""
    body = PatternStream(BIG)
    tracemalloc.start()
    try:
        began = time.monotonic()
        assert store.put_stream("uploads/big/video.bin", body) == BIG
        put_s = time.monotonic() - began
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB while streaming 50 MiB"
    began = time.monotonic()
    sha = hashlib.sha256()
    for start in range(0, BIG, 16 << 20):
        sha.update(store.read_range("uploads/big/video.bin", start, 16 << 20))
    get_s = time.monotonic() - began
    assert sha.hexdigest() == body.sha.hexdigest()
    print(json.dumps({"backend": type(store).__name__, "put_MBps": round(BIG / 1e6 / put_s, 1),
                      "get_MBps": round(BIG / 1e6 / get_s, 1), "peak_MiB": round(peak / 2**20, 1)}))


def test_a_broken_upload_stores_nothing(store: ObjectStore) -> None:
    with pytest.raises(Exception):  # noqa: B017, PT011 - the backend's wrapping differs; nothing stored is the point
        store.put_stream("uploads/broken/video.bin", FailingStream(BIG))
    assert store.list("uploads/") == []


def _ffprobe_duration(url: str) -> float:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}  # ffmpeg honours http_proxy
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", url],
                         capture_output=True, text=True, timeout=30, env=env, check=True)
    return float(json.loads(out.stdout)["format"]["duration"])


def test_ffprobe_reads_the_presigned_url(store: ObjectStore, tmp_path: Path) -> None:
    from worker.media.samples import make_video

    clip = make_video(tmp_path / "clip.mp4", duration_s=2.0)
    with open(clip, "rb") as f:
        store.put_stream("uploads/clip/video.mp4", f)
    url = store.presigned_url("uploads/clip/video.mp4", expires_s=300)
    if isinstance(store, S3Store):
        assert url.startswith("http://127.0.0.1:")
        assert "X-Amz-Signature=" in url
    assert _ffprobe_duration(url) == pytest.approx(2.0, abs=0.1)


def test_a_presigned_url_is_refused_when_tampered(make_s3) -> None:
    store = make_s3()
    store.put_bytes("a/secret", b"x")
    url = store.presigned_url("a/secret").replace("a/secret", "a/other")
    with pytest.raises(subprocess.CalledProcessError):
        _ffprobe_duration(url)


def test_a_frozen_store_gives_the_typed_error_within_the_bounded_time(swift: SwiftServer, make_s3) -> None:
    """SIGSTOP the proxy: a call gives up after timeout x attempts with 503 + Retry-After; after SIGCONT what was
    stored before is still there and a put refused during the outage is absent or whole, never partial."""
    store = make_s3(timeout_s=1.0, attempts=2)
    store.put_bytes("kept", b"before the outage")
    os.kill(swift.proxy_pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        with pytest.raises(ObjectStoreUnavailable) as info:
            store.get("kept")
        elapsed = time.monotonic() - began
        with pytest.raises(ObjectStoreUnavailable):
            store.put_bytes("during", b"refused while frozen")
    finally:
        os.kill(swift.proxy_pid, signal.SIGCONT)
    assert elapsed < 6.0, f"took {elapsed:.1f} s"
    error = info.value
    assert (error.code, error.http_status) == ("object_store_unavailable", 503)
    assert error.retry_after_s is not None
    assert error.retry_after_s > 0
    assert store.get("kept") == b"before the outage"
    assert store.get("during") == b"refused while frozen" if store.exists("during") else True


def test_a_store_nobody_listens_on_is_unavailable_fast(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    store = S3Store(BUCKET, endpoint_url=f"http://127.0.0.1:{port}", access_key="a", secret_key="b",
                    timeout_s=1.0, attempts=2)
    began = time.monotonic()
    with pytest.raises(ObjectStoreUnavailable):
        store.put_bytes("x", b"y")
    assert time.monotonic() - began < 5.0


def test_settings_choose_the_backend(tmp_path: Path, swift_endpoint: SwiftEndpoint,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    local = open_store(ServiceSettings(data_dir=tmp_path))
    assert isinstance(local, LocalStore)
    assert local.root == (tmp_path / "objects").resolve()
    monkeypatch.setenv("AVS_OBJECT_STORE", f"s3://{BUCKET}/from-settings-{uuid.uuid4().hex}")
    monkeypatch.setenv("AVS_OBJECT_STORE_ENDPOINT", swift_endpoint.url)
    monkeypatch.setenv("AVS_OBJECT_STORE_ACCESS_KEY", swift_endpoint.access_key)
    monkeypatch.setenv("AVS_OBJECT_STORE_SECRET_KEY", swift_endpoint.secret_key)
    remote = open_store(ServiceSettings(data_dir=tmp_path))
    assert isinstance(remote, S3Store)
    remote.put_bytes("k", b"v")
    assert remote.get("k") == b"v"
    assert remote.list("") == ["k"]
    monkeypatch.setenv("AVS_OBJECT_STORE", "s3://Bad_Bucket")
    with pytest.raises(ValueError, match="object_store"):
        ServiceSettings(data_dir=tmp_path)


def test_bench_objects_reports_both_backends(swift_endpoint: SwiftEndpoint, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from app.cli import main

    assert main(["bench", "objects", "--size-mb", "4", "--endpoint", swift_endpoint.url, "--access-key",
                 swift_endpoint.access_key, "--secret-key", swift_endpoint.secret_key, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["size_bytes"] == 4 << 20
    for backend in ("local", "s3"):
        assert result[backend]["put_MBps"] > 0
        assert result[backend]["get_MBps"] > 0
    assert "swift_start_s" not in result  # an endpoint was given: no Swift started


def test_an_unreachable_endpoint_is_a_coded_cli_error(capsys: pytest.CaptureFixture[str]) -> None:
    from app.cli import main

    assert main(["bench", "objects", "--size-mb", "1", "--endpoint", "http://127.0.0.1:1", "--access-key", "a",
                 "--secret-key", "b"]) != 0
    assert "[object_store_unavailable]" in capsys.readouterr().err


def test_the_object_store_modules_are_torch_free() -> None:
    """The API will import them: none may pull torch in (boto3 is imported only by the S3 backend)."""
    import sys

    code = ("import sys, worker.core.objects, worker.core.objects.s3_store, worker.core.objects.mask_chunks, "
            "worker.core.objects.swift_server, worker.core.objects.bench, app.cli.objects_commands; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    lazy = "import sys, worker.core.objects; assert 'boto3' not in sys.modules, 'boto3 imported eagerly'"
    subprocess.run([sys.executable, "-c", lazy], check=True, timeout=60)
