"""Read what is left of a request body after an early answer, so that a proxy or a browser gets the answer.

The API refuses uploads before reading them (a wrong API key, a full backlog, a declared size over the cap,
a bad option ahead of the file). If the server then closes the connection with the body still arriving, the
sender's next write fails (EPIPE, or a reset) before it ever reads the answer: nginx turns the 401 or 429 into
a 502 Bad Gateway, and a browser's upload reports a network error instead of the API's error code. Servers
solve this with a bounded "lingering close" (nginx's `lingering_close`, Go's net/http reading up to 256 KB
of an unread body): keep reading and discarding for a while, then close. This middleware does that inside
the app, just before the answer is sent: at most `max_bytes`, for at most `max_seconds`, whichever comes first;
past either limit the connection is closed as before.
"""

from __future__ import annotations

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DRAIN_MAX_BYTES = 64 * 1024 * 1024
DRAIN_MAX_SECONDS = 10.0


class DrainUnreadBody:
    """Pure ASGI middleware: after the app has answered an HTTP request whose body it did not read to the
    end, read (and discard) the rest, bounded by `max_bytes` and `max_seconds`."""

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
            # Before the answer: once it is complete, the server stops handing out the body (uvicorn
            # answers every later receive() with a disconnect) and closes the connection.
            if message["type"] == "http.response.start" and not finished:
                await self._drain(receive)
                finished = True
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
