"""`DrainUnreadBody`: an early answer is sent at once, and the response is closed only after the rest of the
body is read, within its limits."""

from __future__ import annotations

import anyio
import pytest

from app.api.body_drain import DrainUnreadBody


async def _refuse_at_once(scope, receive, send) -> None:  # an app that answers without reading the body
    await send({"type": "http.response.start", "status": 401, "headers": []})
    await send({"type": "http.response.body", "body": b"no"})


def _run(chunks: int, chunk: bytes, *, max_bytes: int, max_seconds: float = 5.0, delay_s: float = 0.0,
         content_length: bool = True) -> tuple[int, list[str]]:
    """Returns (body messages the client had sent when the answer started, the order of events)."""
    sent = 0
    events: list[str] = []

    async def receive():
        nonlocal sent
        if delay_s:
            await anyio.sleep(delay_s)
        sent += 1
        return {"type": "http.request", "body": chunk, "more_body": sent < chunks}

    async def send(message):
        events.append(f"{message['type']}@{sent}")

    headers = [(b"content-length", str(chunks * len(chunk)).encode())] if content_length else \
        [(b"transfer-encoding", b"chunked")]
    app = DrainUnreadBody(_refuse_at_once, max_bytes=max_bytes, max_seconds=max_seconds)
    anyio.run(app, {"type": "http", "method": "POST", "headers": headers}, receive, send)
    return sent, events


@pytest.mark.parametrize("content_length", [True, False])
def test_the_whole_body_is_read_before_an_early_answer(content_length: bool) -> None:
    sent, events = _run(50, b"x" * 1000, max_bytes=1 << 20, content_length=content_length)
    assert sent == 50
    # the answer before any more of the body is read; the response closed after all of it
    assert events == ["http.response.start@0", "http.response.body@0", "http.response.body@50"]


def test_reading_stops_at_the_byte_limit() -> None:
    sent, events = _run(10_000, b"x" * 1000, max_bytes=20_000)
    assert 20 <= sent <= 22  # a little past the limit, never the whole 10 MB
    assert events == ["http.response.start@0", "http.response.body@0", f"http.response.body@{sent}"]


def test_reading_stops_at_the_time_limit() -> None:
    sent, _ = _run(10_000, b"x", max_bytes=1 << 30, max_seconds=0.3, delay_s=0.01)
    assert 5 < sent < 100


def test_a_request_without_a_body_is_passed_through() -> None:
    events: list[str] = []

    async def receive():
        raise AssertionError("nothing may be read from a request without a body")

    async def send(message):
        events.append(message["type"])

    anyio.run(DrainUnreadBody(_refuse_at_once), {"type": "http", "method": "GET", "headers": []}, receive, send)
    assert events == ["http.response.start", "http.response.body"]
