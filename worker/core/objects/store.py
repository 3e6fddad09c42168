"""The object store interface (issue #25) and its local-directory backend.

Keys are `/`-separated relative names (`uploads/<job>/video.mp4`, `masks/<job>/000000000002-00000003.ndjson`);
`validate_key` refuses anything that could leave the store's root. Every backend:
* `put_stream(key, fileobj)` stores a readable binary stream without holding it in memory (reads
  `CHUNK_BYTES` at a time) and returns its size; a key is replaced whole, readers see the old object or the new
  one, never a part (local: temp file + rename; S3: a PUT or a completed multipart upload is atomic);
* `get`, `read_range(key, start, length)`, `exists`, `list(prefix)` (sorted keys), `delete(prefix)` (count);
* `presigned_url(key, expires_s)`: what ffmpeg/ffprobe open (local: the file's absolute path; S3: a
  signed HTTP URL);
* raises only `worker.core.objects.errors.ObjectStoreError` subclasses (unavailable / not found / full).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO, Protocol

from worker.core.objects.errors import ObjectNotFound, ObjectStoreError, ObjectStoreFull

CHUNK_BYTES = 1 << 20  # a stream is copied 1 MiB at a time


def validate_key(key: str) -> str:
    """`key` itself when it is a safe relative name; ValueError for empty, absolute, `..` or `.` parts."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in key:
        raise ValueError(f"invalid object key {key!r}")
    return key


class ObjectStore(Protocol):
    """What the API and the workers call (see the module docstring for the contract)."""

    def put_stream(self, key: str, fileobj: BinaryIO) -> int: ...
    def put_bytes(self, key: str, data: bytes) -> int: ...
    def get(self, key: str) -> bytes: ...
    def read_range(self, key: str, start: int, length: int) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> list[str]: ...
    def delete(self, prefix: str) -> int: ...
    def presigned_url(self, key: str, expires_s: int = 3600) -> str: ...


class LocalStore:
    """Objects as files under `root` (the embedded default, one host). Temp files are `.<name>.<uuid>.tmp` next
    to the target and never listed; ENOSPC/EDQUOT raise `ObjectStoreFull`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def put_stream(self, key: str, fileobj: BinaryIO) -> int:
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        size = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as out:
                while chunk := fileobj.read(CHUNK_BYTES):
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())  # the rename must not publish a file whose data is still in the page cache
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ObjectStoreFull(f"no space left for {key}") from e
            raise ObjectStoreError(f"cannot store {key}: {e}") from e
        return size

    def put_bytes(self, key: str, data: bytes) -> int:
        import io

        return self.put_stream(key, io.BytesIO(data))

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as e:
            raise ObjectNotFound(f"no object {key}") from e

    def read_range(self, key: str, start: int, length: int) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                f.seek(start)
                return f.read(length)
        except FileNotFoundError as e:
            raise ObjectNotFound(f"no object {key}") from e

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        keys = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(".") and name.endswith(".tmp"):
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, prefix: str) -> int:
        keys = self.list(prefix)
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                (self.root / key).unlink()
        # a prefix that names a directory ("masks/<job>/") leaves no empty directory behind
        if prefix.endswith("/") and (self.root / prefix).is_dir():
            shutil.rmtree(self.root / prefix, ignore_errors=True)
        return len(keys)

    def presigned_url(self, key: str, expires_s: int = 3600) -> str:
        """The file's absolute path (ffmpeg opens it as is; nothing to sign on one host)."""
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(f"no object {key}")
        return str(path)
