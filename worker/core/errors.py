"""Errors raised by the worker package.

`MediaError` carries a stable `ErrorCode` so that the CLI and the HTTP API can report a refusal
without parsing messages. This module must stay torch-free: the API process raises it while probing.
"""

from __future__ import annotations

from worker.core.contracts import ErrorCode


class MediaError(Exception):
    """An uploaded file cannot be processed; `code` says why, `message` says it for a human.

    The exception's `args` are `(code, message)` so that it survives pickling (multiprocessing,
    Celery's result backend), while `str()` is only the message, ready for `avs: error [code]: ...`.
    """

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        self.code = ErrorCode(code)
        self.message = message
        super().__init__(self.code, message)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"MediaError({self.code.value!r}, {self.message!r})"
