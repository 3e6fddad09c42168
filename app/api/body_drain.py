"""Read what is left of a request body after an early answer, so that a proxy or a browser gets the answer.

The API refuses uploads before reading them (a wrong API key, a full backlog, a declared size over the cap,
a bad option ahead of the file). If the server then closes the connection with the body still arriving, the
sender's next write fails (EPIPE, or a reset) before it ever reads the answer: nginx turns the 401 or 429 into
a 502 Bad Gateway, and a browser's upload reports a network error instead of the API's error code. Servers
solve this with a bounded "lingering close" (nginx's `lingering_close`, Go's net/http reading up to 256 KB
of an unread body): answer, then keep reading and discarding for a while, then close. This middleware does
that inside the app: the answer is sent whole at once, and the response is held open (so the server keeps
reading) while the rest of the body is read, at most `max_bytes` for at most `max_seconds`, whichever comes
first; past either limit the connection is closed as before.
"""

from __future__ import annotations

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DRAIN_MAX_BYTES = 64 * 1024 * 1024
DRAIN_MAX_SECONDS = 10.0


class DrainUnreadBody:
    """Pure ASGI middleware: when the app answers an HTTP request whose body it did not read to the end, the
    answer is sent at once and the rest of the body is then read (and discarded) before the response is
    closed, bounded by `max_bytes` and `max_seconds`."""

    def __init__(self, app: ASGIApp, *, max_bytes: int = DRAIN_MAX_BYTES,
                 max_seconds: float = DRAIN_MAX_SECONDS) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _may_have_body(scope):
            await self.app(scope, receive, send)
            return
        finished = False  # the body's last message (or the client's disconnect) has been received

        async def tracking_receive() -> Message:
            nonlocal finished
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                finished = True
            return message

        async def draining_send(message: Message) -> None:
            nonlocal finished
            if message["type"] == "http.response.body" and not message.get("more_body", False) and not finished:
                # The answer goes out at once (its Content-Length tells the client it is whole), but the
                # response stays open while the rest of the body is read: once it is complete, the server
                # stops handing out the body (uvicorn answers every later receive() with a disconnect).
                await send({**message, "more_body": True})
                await self._drain(receive)
                finished = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send(message)

        await self.app(scope, tracking_receive, draining_send)

    async def _drain(self, receive: Receive) -> None:
        read = 0
        with anyio.move_on_after(self.max_seconds):
            while read <= self.max_bytes:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                read += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return


def _may_have_body(scope: Scope) -> bool:
    headers = dict(scope.get("headers") or [])
    if b"transfer-encoding" in headers:
        return True
    length = headers.get(b"content-length", b"0")
    return length.isdigit() and int(length) > 0
