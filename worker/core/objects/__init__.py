"""Media and results in object storage (issue #25): one small interface, a local-directory and an S3 backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.core.objects.errors import ObjectNotFound, ObjectStoreError, ObjectStoreFull, ObjectStoreUnavailable
from worker.core.objects.store import LocalStore, ObjectStore

if TYPE_CHECKING:
    from worker.core.settings import ServiceSettings

__all__ = ["LocalStore", "ObjectNotFound", "ObjectStore", "ObjectStoreError", "ObjectStoreFull",
           "ObjectStoreUnavailable", "open_store"]


def open_store(settings: ServiceSettings) -> ObjectStore:
    """The store `AVS_OBJECT_STORE` names: `file` -> `LocalStore(data_dir/objects)`; `s3://bucket/prefix` -> an
    `S3Store` at `AVS_OBJECT_STORE_ENDPOINT` (boto3 is imported only then)."""
    if settings.object_store == "file":
        return LocalStore(settings.objects_dir)
    from worker.core.objects.s3_store import S3Store

    bucket, _, prefix = settings.object_store.removeprefix("s3://").partition("/")
    return S3Store(bucket, prefix, endpoint_url=settings.object_store_endpoint,
                   access_key=settings.object_store_access_key, secret_key=settings.object_store_secret_key,
                   region=settings.object_store_region, timeout_s=settings.object_store_timeout_s)
