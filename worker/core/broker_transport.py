"""kombu's Redis transport, with one change: a malformed message is set aside instead of stopping the worker.

kombu pops a message off the queue's list (BRPOP) and then decodes it; a payload that is not JSON, or JSON
that is not a kombu envelope, raises inside the worker's event loop, which Celery treats as unrecoverable:
the worker exits (status 0), and the message, already popped, is gone. One bad push (a bug, a client of
another version, a hand-made `LPUSH`) would take every worker down one after the other. Here such a payload
is pushed onto `REJECTED_KEY` (the newest `REJECTED_KEEP` are kept, for a person to read), logged with the
job id it names if any, counted (`on_set_aside` hooks: the worker's `avs_broker_messages_set_aside_total`),
and the worker goes on. Its job, still `queued` with no message in the queue, is sent again by the
reconciler (`worker.core.leases`, "sent but never taken").

Selected with Celery's `broker_transport` setting (`worker.core.celery_app`) for every `redis://` broker: the
embedded default's private Redis and a production one run the same code. Torch-free.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from kombu.transport import redis as kombu_redis

log = logging.getLogger("avs.broker")

REJECTED_KEY = "avs:broker:rejected"
REJECTED_KEEP = 1000
on_set_aside: list[Callable[[str], None]] = []
"""Called with the reason (`not_json`, `not_an_envelope`, `bad_body`) of every message set aside."""

_JOB_ID = re.compile(r"[0-9a-f]{32}")


class MalformedMessage(ValueError):
    """A payload that decodes as JSON but is not a message kombu can deliver."""

    def __init__(self, reason: str, payload: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.payload = payload


def envelope_problem(payload: Any) -> str | None:
    """None when `payload` is a deliverable kombu envelope (a dict whose `properties` carry a delivery tag,
    whose body decodes under its `body_encoding`); else the reason it is not."""
    if not isinstance(payload, dict):
        return "not_an_envelope"
    properties = payload.get("properties")
    if not isinstance(properties, dict) or "delivery_tag" not in properties:
        return "not_an_envelope"
    body = payload.get("body")
    if body is not None and not isinstance(body, str):
        return "bad_body"
    if body and properties.get("body_encoding") == "base64":
        try:
            base64.b64decode(body.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            return "bad_body"
    return None


class Channel(kombu_redis.Channel):
    def _brpop_read(self, **options: Any) -> bool:
        try:
            return super()._brpop_read(**options)
        except json.JSONDecodeError as exc:
            self._set_aside(exc.doc, "not_json")
        except MalformedMessage as exc:
            self._set_aside(json.dumps(exc.payload, default=repr), exc.reason)
        return True  # one message was read (and set aside): the poller goes on

    def _set_aside(self, raw: str | bytes, reason: str) -> None:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        named = _JOB_ID.search(text)
        log.error("malformed broker message set aside in %s (%s)%s: %r", REJECTED_KEY, reason,
                  f"; it names job {named.group(0)}, which the reconciler sends again" if named else "", text[:200])
        try:
            with self.conn_or_acquire() as client:
                pipe = client.pipeline()
                pipe.lpush(REJECTED_KEY, raw)
                pipe.ltrim(REJECTED_KEY, 0, REJECTED_KEEP - 1)
                pipe.execute()
        except Exception as exc:  # Redis refusing the copy must not stop the worker either
            log.warning("could not keep the malformed message (%s)", exc)
        for hook in on_set_aside:
            try:
                hook(reason)
            except Exception:
                log.exception("on_set_aside hook failed")


class Transport(kombu_redis.Transport):
    Channel = Channel

    def _deliver(self, message: Any, queue: str) -> None:
        problem = envelope_problem(message)
        if problem is not None:
            raise MalformedMessage(problem, message)
        super()._deliver(message, queue)
