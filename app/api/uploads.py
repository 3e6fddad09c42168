"""Streaming multipart upload: the request body goes to disk while it arrives, under a size cap.

FastAPI's `UploadFile` is not used on purpose: Starlette parses the WHOLE multipart body (spooling the
file to a temporary file) before the route runs, so a size check in the route comes too late and a
chunked upload without `Content-Length` could fill the disk. Here the route reads `request.stream()`
itself and feeds each chunk to python-multipart's push parser (`MultipartParser`, callbacks):

* the `file` part is written chunk by chunk to `<job_dir>/upload<ext>` (buffered, ~1 MiB per write,
  each write offloaded to a thread so the event loop never waits on the disk);
* the small form fields (`fps`, `threshold`, `overlay`) are kept in memory, at most `MAX_FIELD_BYTES`
  each, and validated as soon as each one ends (a bad field sent before the file stops the upload
  before the video arrives); unknown fields, a second file, or more than `MAX_PARTS` parts are refused;
* the cap: the file part may hold at most `max_file_bytes`; the whole body at most that plus
  `FORM_OVERHEAD_BYTES` (boundaries, part headers, fields). Both are checked on every chunk, so an
  over-size upload is refused (413) as soon as it passes the cap, with or without `Content-Length`
  (the route refuses a declared `Content-Length` above the body cap before reading anything).

Errors raise `ApiError`; `ClientDisconnect` (the client went away) propagates. The caller owns the job
directory and removes it on any failure. The extension of the saved file comes from a small allow-list
by the client's filename, else `.bin`: it is a convenience for people looking at the volume, never
trusted (ffprobe decides what the file is).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import anyio
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import Request

from app.api.errors import ApiError
from worker.core.contracts import ServiceErrorCode
from worker.core.media.containers import FILE_EXTENSIONS

FILE_FIELD = "file"
FORM_OVERHEAD_BYTES = 64 * 1024
MAX_FIELD_BYTES = 1024
MAX_PARTS = 16
FLUSH_BYTES = 1 << 20

ALLOWED_EXTENSIONS = FILE_EXTENSIONS

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def invalid(message: str) -> ApiError:
    return ApiError(ServiceErrorCode.INVALID_REQUEST, message)


def storage_full(retry_after_s: int) -> ApiError:
    """507 `storage_full` + Retry-After: the data volume, or the disk under the state Redis, is full."""
    return ApiError(ServiceErrorCode.STORAGE_FULL, "no space left on the data volume; retry later",
                    headers={"Retry-After": str(retry_after_s)})


def too_large(limit: int) -> ApiError:
    return ApiError(ServiceErrorCode.TOO_LARGE, f"the upload is larger than the limit of {limit} bytes")


def sanitize_filename(raw: str | None) -> str | None:
    """The client's file name fit for a record: last path component, no control characters, ≤ 255 chars."""
    if not raw:
        return None
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE.sub("", name).strip()[:255]
    return None if name in ("", ".", "..") else name


def upload_extension(filename: str | None) -> str:
    suffix = Path(filename or "").suffix.lower()
    return suffix if suffix in ALLOWED_EXTENSIONS else ".bin"


_BOUNDARY = re.compile(rb"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")
"""RFC 2046 §5.1.1: 1 to 70 characters from `bchars`, not ending in a space."""


def multipart_boundary(content_type: str | None) -> bytes:
    """The boundary of a `multipart/form-data` Content-Type; `invalid_request` for anything else."""
    try:
        ctype, params = parse_options_header(content_type)
    except Exception:  # whatever a hostile header makes the parser raise
        raise invalid("unreadable Content-Type header") from None
    if ctype != b"multipart/form-data":
        raise invalid("the body must be multipart/form-data with a `file` part")
    boundary = params.get(b"boundary")
    if not boundary:
        raise invalid("multipart/form-data without a boundary")
    if not _BOUNDARY.match(boundary):
        raise invalid("the multipart boundary must be 1 to 70 characters as RFC 2046 allows")
    return boundary


@dataclass
class ReceivedUpload:
    path: Path | None = None  # None: no `file` part
    filename: str | None = None  # sanitised client name
    bytes: int = 0
    fields: dict[str, str] = field(default_factory=dict)


class _Sink:
    """python-multipart callbacks: route each part to the file or to a small in-memory field."""

    def __init__(self, job_dir: Path, max_file_bytes: int, allowed_fields: frozenset[str],
                 check_field: Callable[[str, str], None]) -> None:
        self.job_dir = job_dir
        self.max_file_bytes = max_file_bytes
        self.allowed_fields = allowed_fields
        self.check_field = check_field
        self.result = ReceivedUpload()
        self.parts = 0
        self.kind: str | None = None  # "file" | "field" while inside a part
        self.name = ""
        self.value = bytearray()
        self.headers: dict[bytes, bytes] = {}
        self._hname = bytearray()
        self._hvalue = bytearray()
        self.pending = bytearray()  # file bytes not yet written
        self.fh: BinaryIO | None = None

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {"on_part_begin": self.on_part_begin, "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished}

    # ---------------------------------------------------------------------------------- headers
    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise invalid(f"too many form parts (at most {MAX_PARTS})")
        self.headers = {}
        self.kind = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._hname += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]

    def on_header_end(self) -> None:
        self.headers[bytes(self._hname).strip().lower()] = bytes(self._hvalue).strip()
        self._hname.clear()
        self._hvalue.clear()

    def on_headers_finished(self) -> None:
        disposition, params = parse_options_header(self.headers.get(b"content-disposition"))
        name = params.get(b"name")
        if disposition != b"form-data" or not name:
            raise invalid("a form part without `Content-Disposition: form-data; name=...`")
        self.name = name.decode("utf-8", "replace")
        if self.name == FILE_FIELD:
            if self.result.path is not None:
                raise invalid("more than one `file` part")
            raw_filename = params.get(b"filename")
            self.result.filename = sanitize_filename(raw_filename.decode("utf-8", "replace") if raw_filename else None)
            self.result.path = self.job_dir / f"upload{upload_extension(self.result.filename)}"
            self.fh = open(self.result.path, "wb")  # noqa: SIM115 (closed by close())
            self.kind = "file"
        elif self.name in self.allowed_fields:
            if b"filename" in params:
                raise invalid(f"`{self.name}` must be a plain form field, not a file")
            if self.name in self.result.fields:
                raise invalid(f"`{self.name}` given twice")
            self.kind = "field"
            self.value.clear()
        else:
            allowed = ", ".join(sorted({FILE_FIELD, *self.allowed_fields}))
            raise invalid(f"unknown form field {self.name[:64]!r} (allowed: {allowed})")

    # ------------------------------------------------------------------------------------- data
    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.kind == "file":
            self.result.bytes += end - start
            if self.result.bytes > self.max_file_bytes:
                raise too_large(self.max_file_bytes)
            self.pending += data[start:end]
        elif self.kind == "field":
            self.value += data[start:end]
            if len(self.value) > MAX_FIELD_BYTES:
                raise invalid(f"form field `{self.name}` is longer than {MAX_FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if self.kind == "field":
            try:
                text = self.value.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise invalid(f"form field `{self.name}` is not UTF-8") from None
            self.check_field(self.name, text)  # raises ApiError for a bad value
            self.result.fields[self.name] = text
        self.kind = None

    # ------------------------------------------------------------------------------------ disk
    async def flush(self) -> None:
        if self.pending and self.fh is not None:
            chunk, self.pending = self.pending, bytearray()
            await anyio.to_thread.run_sync(self.fh.write, chunk)

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


async def receive_upload(request: Request, job_dir: Path, *, max_file_bytes: int,
                         allowed_fields: frozenset[str], check_field: Callable[[str, str], None]) -> ReceivedUpload:
    """Stream the multipart body of `request` into `job_dir`; see the module docstring.

    Raises `ApiError` (413 `too_large`, 422 `invalid_request`) or `starlette.requests.ClientDisconnect`.
    Files it wrote are left for the caller to remove.
    """
    boundary = multipart_boundary(request.headers.get("content-type"))
    max_body = max_file_bytes + FORM_OVERHEAD_BYTES
    job_dir.mkdir(parents=True, exist_ok=True)
    sink = _Sink(job_dir, max_file_bytes, allowed_fields, check_field)
    parser = MultipartParser(boundary, sink.callbacks())  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_body:
                raise too_large(max_file_bytes)
            try:
                parser.write(chunk)
            except (ApiError, OSError):
                raise  # our own refusals from the callbacks, and the disk (a full one is 507 upstream)
            except Exception:  # MultipartParseError and whatever else malformed input makes the parser raise
                raise invalid("malformed multipart body") from None
            if len(sink.pending) >= FLUSH_BYTES:
                await sink.flush()
        try:
            parser.finalize()
        except (ApiError, OSError):
            raise
        except Exception:
            raise invalid("malformed multipart body") from None
        if parser.state != MultipartState.END:
            raise invalid("incomplete multipart body (no closing boundary)")
        await sink.flush()
    finally:
        sink.close()
    return sink.result
