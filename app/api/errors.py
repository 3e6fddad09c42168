"""The one place that turns failures into HTTP answers.

Every error the API sends is `{"error": {"code": <stable code>, "message": <for a human>}}`, with the
codes of `worker.core.contracts.ErrorCode` (media refusals) and `ServiceErrorCode` (everything else). The
HTTP status is a function of the code alone (`STATUS_BY_CODE`), so a client may branch on either.
FastAPI's own failures are folded in: request validation -> 422 `invalid_request`, unknown routes ->
404 `not_found`, wrong method -> 405 `invalid_request`, and any unhandled exception -> 500
`internal_error` with a fixed message (the traceback goes to the log, never to the client).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from worker.core.contracts import ErrorCode, ServiceErrorCode
from worker.core.errors import MediaError
from worker.core.state.errors import StateLost, StateStorageFull, StateUnavailable

log = logging.getLogger("avs.api")

STATUS_BY_CODE: dict[str, int] = {
    # media refusals (probe): the container is not one we read -> 415; a readable file we cannot use -> 422
    ErrorCode.NOT_MEDIA: 415,
    ErrorCode.NO_VIDEO_STREAM: 422,
    ErrorCode.NO_AUDIO_TRACK: 422,
    ErrorCode.CORRUPT_MEDIA: 422,
    ErrorCode.TOO_LONG: 422,
    ErrorCode.TOO_MANY_PIXELS: 422,
    # The probe deadline expired: the *file* made ffprobe hang (a retry would hang again), so it is an
    # unusable upload (422), not a gateway timeout (504, which invites a retry).
    ErrorCode.MEDIA_TIMEOUT: 422,
    # service
    ServiceErrorCode.NOT_FOUND: 404,
    ServiceErrorCode.TOO_LARGE: 413,
    ServiceErrorCode.BACKLOG_FULL: 429,
    ServiceErrorCode.NOT_READY: 503,
    ServiceErrorCode.UNAUTHORIZED: 401,
    ServiceErrorCode.INVALID_REQUEST: 422,
    ServiceErrorCode.INTERNAL_ERROR: 500,
    ServiceErrorCode.STATE_LOST: 500,  # the state store lost data it held (worker.core.state)
    ServiceErrorCode.STORAGE_FULL: 507,  # RFC 4918 Insufficient Storage: the server's volume, not the request
    # every worker runs its maximum of live sessions (POST /streams; /live says it with close code 1013): a
    # capacity limit of the whole service, like backlog_full, with Retry-After
    ServiceErrorCode.TOO_MANY_SESSIONS: 429,
    ServiceErrorCode.JOB_DELETED: 410,  # the tombstone says the job existed and was deleted on purpose
    ServiceErrorCode.JOB_NOT_FINISHED: 409,
    ServiceErrorCode.EXPORT_TOO_LARGE: 413,
    ServiceErrorCode.EXPORT_FAILED: 500,
}

# Starlette/FastAPI HTTPExceptions (raised by the framework itself) -> our codes.
_CODE_BY_STATUS: dict[int, str] = {
    401: ServiceErrorCode.UNAUTHORIZED,
    403: ServiceErrorCode.UNAUTHORIZED,
    404: ServiceErrorCode.NOT_FOUND,
    413: ServiceErrorCode.TOO_LARGE,
    429: ServiceErrorCode.BACKLOG_FULL,
    503: ServiceErrorCode.NOT_READY,
    507: ServiceErrorCode.STORAGE_FULL,
}


class ApiError(Exception):
    """Raise anywhere in a request to answer `{error: {code, message}}` with the code's HTTP status."""

    def __init__(self, code: str, message: str, *, status: int | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = str(code)
        self.message = message
        self.status = status if status is not None else STATUS_BY_CODE.get(self.code, 500)
        self.headers = dict(headers or {})


def not_found(message: str) -> ApiError:
    return ApiError(ServiceErrorCode.NOT_FOUND, message)


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": str(code), "message": message}}


def error_response(code: str, message: str, *, status: int | None = None,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status or STATUS_BY_CODE.get(str(code), 500),
                        headers=dict(headers or {}))


def media_error_response(exc: MediaError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return error_response(exc.code, exc.message, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header"))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


def _closing(request: Request, headers: Mapping[str, str] | None) -> dict[str, str]:
    """An error answer to a request that carries a body closes the connection: the body may be unread
    (a 401, 413 or 429 answers before it), and draining gigabytes to keep the connection is no favour."""
    out = dict(headers or {})
    declared = request.headers.get("content-length", "0")
    if request.headers.get("transfer-encoding") or (declared.isdigit() and int(declared) > 0):
        out.setdefault("Connection", "close")
    return out


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.code, exc.message, status=exc.status, headers=_closing(request, exc.headers))

    @app.exception_handler(MediaError)
    async def _media_error(request: Request, exc: MediaError) -> JSONResponse:
        return media_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(ServiceErrorCode.INVALID_REQUEST, _validation_message(exc),
                              headers=_closing(request, None))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        if status >= 500:
            code = ServiceErrorCode.NOT_READY if status == 503 else ServiceErrorCode.INTERNAL_ERROR
        else:
            code = _CODE_BY_STATUS.get(status, ServiceErrorCode.INVALID_REQUEST)
        if status == 404:
            message = "no such route" if exc.detail in (None, "Not Found") else str(exc.detail)
        else:
            message = str(exc.detail) if exc.detail else "request refused"
        return error_response(code, message, status=status, headers=_closing(request, getattr(exc, "headers", None)))

    @app.exception_handler(StateUnavailable)
    async def _state_unavailable(request: Request, exc: StateUnavailable) -> JSONResponse:
        log.warning("state store unavailable on %s %s: %s", request.method, request.url.path, exc)
        return error_response(ServiceErrorCode.NOT_READY, "the job state store is not answering; retry later",
                              status=503, headers=_closing(request, {"Retry-After": "1"}))

    @app.exception_handler(StateStorageFull)
    async def _state_storage_full(request: Request, exc: StateStorageFull) -> JSONResponse:
        # Redis cannot write its append-only file (a full disk): the same answer as a full data volume
        log.warning("state store cannot persist on %s %s: %s", request.method, request.url.path, exc)
        settings = getattr(request.app.state, "settings", None)
        retry = str(settings.retry_after_s if settings is not None else 30)
        return error_response(ServiceErrorCode.STORAGE_FULL, "no space left for the job state; retry later",
                              status=507, headers=_closing(request, {"Retry-After": retry}))

    @app.exception_handler(StateLost)
    async def _state_lost(request: Request, exc: StateLost) -> JSONResponse:
        log.error("state store lost data on %s %s: %s", request.method, request.url.path, exc)
        return error_response(ServiceErrorCode.STATE_LOST, str(exc), status=500, headers=_closing(request, None))

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        # Runs in Starlette's outermost ServerErrorMiddleware; the details stay in the server log.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(ServiceErrorCode.INTERNAL_ERROR, "internal error")
