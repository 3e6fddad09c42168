"""Typed object store errors with stable codes and the HTTP answer each one maps to.

The codes are stable API like `worker.core.contracts.ServiceErrorCode` (clients branch on them); they live here
until the store is wired into the API (issue #25), when they join that enum. `storage_full` is the same code the
data volume's ENOSPC already answers.
"""

from __future__ import annotations


class ObjectStoreError(Exception):
    """An object store call failed; `code` (stable string) and `http_status` say how the API answers it."""

    code = "object_store_error"
    http_status = 500

    def __init__(self, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class ObjectStoreUnavailable(ObjectStoreError):
    """The store did not answer within the bounded time (timeouts, refused connections, 5xx after retries):
    HTTP 503 with `Retry-After: retry_after_s`; nothing was stored by the failed call."""

    code = "object_store_unavailable"
    http_status = 503

    def __init__(self, message: str, *, retry_after_s: int = 5) -> None:
        super().__init__(message, retry_after_s=retry_after_s)


class ObjectNotFound(ObjectStoreError):
    """No object under this key (HTTP 404)."""

    code = "not_found"
    http_status = 404


class ObjectStoreFull(ObjectStoreError):
    """The store refused the write for lack of space or quota (HTTP 507)."""

    code = "storage_full"
    http_status = 507
