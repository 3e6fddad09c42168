"""The S3 backend of the object store (AWS S3, Swift's s3api, Ceph RGW, MinIO, R2, GCS interoperability).

Why boto3 and not obstore: boto3's `upload_fileobj` streams a non-seekable body as a multipart upload whose
memory is bounded by `multipart_chunksize x max_in_memory_upload_chunks` (16 MiB here, plus the part being read;
the tests measure under 32 MiB for 50 MB), `generate_presigned_url` signs the GET that ffmpeg reads, and
botocore exposes per-call connect/read timeouts and a bounded retry count as plain settings. It is pure Python
(no native wheel to pin per platform) and the S3 client operators already know. obstore is faster for bulk
transfers, but its file-like streaming from a synchronous reader and its error mapping were less direct here.

Bounded calls: every request gives up after `timeout_s` (connect and read) and is tried `attempts` times in all
(botocore's "standard" retry mode), so a dead or frozen store raises `ObjectStoreUnavailable` within about
`attempts x (2 x timeout_s)`, never hangs a request handler.
"""

from __future__ import annotations

import io
from typing import BinaryIO

from worker.core.objects.errors import ObjectNotFound, ObjectStoreError, ObjectStoreFull, ObjectStoreUnavailable
from worker.core.objects.store import validate_key

MULTIPART_BYTES = 8 << 20  # bodies above this go up as a multipart upload of 8 MiB parts


class S3Store:
    """Objects under `s3://bucket/prefix` at `endpoint_url` (None: AWS). Path-style addressing and signature v4,
    which every S3-compatible server accepts. `create_bucket=True` creates the bucket when missing (tests,
    the embedded stack)."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 access_key: str | None = None, secret_key: str | None = None, region: str = "us-east-1",
                 timeout_s: float = 5.0, attempts: int = 2, retry_after_s: int = 5,
                 create_bucket: bool = False) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.retry_after_s = retry_after_s
        config = Config(connect_timeout=timeout_s, read_timeout=timeout_s, region_name=region,
                        signature_version="s3v4", s3={"addressing_style": "path"},
                        retries={"mode": "standard", "total_max_attempts": attempts},
                        # loopback or the operator's endpoint: never an HTTP(S)_PROXY from the environment
                        proxies={}, tcp_keepalive=True,
                        # checksums only where S3 requires them: the CRC32 headers botocore adds by default are
                        # refused by several S3-compatible servers (Swift's s3api, GCS interoperability)
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required")
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            config=config)
        self.transfer = TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES,
                                       max_concurrency=2, use_threads=True)
        # s3transfer reads ahead up to this many parts of a non-seekable body (default 10 = 80 MiB per upload);
        # boto3's TransferConfig does not take it as an argument, its s3transfer base class reads the attribute
        self.transfer.max_in_memory_upload_chunks = 2  # one per upload thread
        if create_bucket:
            self._call(self._ensure_bucket)

    def _ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _call(self, fn, *args, key: str = "", **kwargs):
        """Run one botocore call, translating its failures into the typed errors."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in ("NoSuchKey", "404", "NotFound", "NoSuchBucket") or status == 404:
                raise ObjectNotFound(f"no object {key}") from e
            if code in ("EntityTooLarge", "QuotaExceeded", "InsufficientStorage") or status == 507:
                raise ObjectStoreFull(f"the object store refused {key}: {code}") from e
            if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "RequestTimeout"):
                raise ObjectStoreUnavailable(f"the object store failed on {key}: {code}",
                                             retry_after_s=self.retry_after_s) from e
            raise ObjectStoreError(f"the object store refused {key}: {code} ({status})") from e
        except S3UploadFailedError as e:  # upload_fileobj wraps the failing part's error in a message only
            text = str(e)
            if "EntityTooLarge" in text or "QuotaExceeded" in text or "507" in text:
                raise ObjectStoreFull(f"the object store refused {key}: {text}") from e
            raise ObjectStoreUnavailable(f"upload of {key} failed: {text}", retry_after_s=self.retry_after_s) from e
        except BotoCoreError as e:  # connection refused/reset, connect or read timeout (after the retries)
            raise ObjectStoreUnavailable(f"the object store did not answer ({type(e).__name__}) on {key}",
                                         retry_after_s=self.retry_after_s) from e

    def put_stream(self, key: str, fileobj: BinaryIO) -> int:
        counted = _CountingReader(fileobj)
        self._call(self.client.upload_fileobj, counted, self.bucket, self._key(key), Config=self.transfer, key=key)
        return counted.size

    def put_bytes(self, key: str, data: bytes) -> int:
        self._call(self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data, key=key)
        return len(data)

    def get(self, key: str) -> bytes:
        def fetch() -> bytes:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        return self._call(fetch, key=key)

    def read_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""

        def fetch() -> bytes:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key),
                                          Range=f"bytes={start}-{start + length - 1}")["Body"].read()
        try:
            return self._call(fetch, key=key)
        except ObjectStoreError as e:  # 416: the range starts past the end (a local file reads b"" there)
            if "InvalidRange" in e.message:
                return b""
            raise

    def exists(self, key: str) -> bool:
        try:
            self._call(self.client.head_object, Bucket=self.bucket, Key=self._key(key), key=key)
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str) -> list[str]:
        def pages() -> list[str]:
            keys = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                keys.extend(o["Key"][len(self.prefix):] for o in page.get("Contents", []))
            return keys
        return sorted(self._call(pages, key=prefix))

    def delete(self, prefix: str) -> int:
        """Delete every object under `prefix`, one DELETE each: DeleteObjects needs a Content-MD5 that Swift's
        s3api insists on and botocore no longer sends (it sends CRC32), and a job holds tens of objects."""
        keys = self.list(prefix)
        for key in keys:
            self._call(self.client.delete_object, Bucket=self.bucket, Key=self.prefix + key, key=key)
        return len(keys)

    def presigned_url(self, key: str, expires_s: int = 3600) -> str:
        """A signed GET URL valid for `expires_s` (signing is local: no request, so no outage error here)."""
        return self.client.generate_presigned_url("get_object", Params={"Bucket": self.bucket,
                                                                        "Key": self._key(key)},
                                                  ExpiresIn=expires_s)


class _CountingReader(io.RawIOBase):
    """A read-only view of a stream that counts the bytes read (upload_fileobj does not report a size)."""

    def __init__(self, inner: BinaryIO) -> None:
        self.inner = inner
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.size += len(data)
        return data
