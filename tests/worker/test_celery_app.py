"""The broker: the embedded default's private Redis, and a transport that sets malformed messages aside.

Issue #27: kombu's filesystem transport let a worker read a message file before it was written and exit on
the empty JSON; the same kind of fault exists on Redis (a payload that is not a kombu envelope stops the
consumer, and the message, already popped, is gone). Here every such payload is set aside, and the
consumer goes on to the next message.
"""

from __future__ import annotations

import contextlib
import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Queue

from worker.core import broker_transport
from worker.core.broker_queue import waiting_job_ids
from worker.core.celery_app import TRANSPORT, create_celery
from worker.core.private_redis import PrivateRedis, PrivateRedisError, endpoint_path, read_endpoint
from worker.core.settings import ServiceSettings


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "data" / "broker")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_embedded_settings_use_the_private_redis_and_the_project_transport(tmp_path: Path,
                                                                           private_redis: PrivateRedis,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    settings = ServiceSettings(_env_file=None, data_dir=tmp_path / "data", broker_url=None, api_keys=[])
    app = create_celery(settings)
    assert private_redis.endpoint is not None
    assert app.conf.broker_url == private_redis.endpoint.url
    assert app.conf.broker_transport == TRANSPORT
    app.send_task("avs.segment", args=["0" * 32], task_id="0" * 32)

    assert list(cwd.iterdir()) == []  # nothing in the working directory
    assert waiting_job_ids(private_redis.endpoint.url, timeout_s=2) == {"0" * 32}
    mode = stat.S_IMODE(endpoint_path(settings.broker_dir).stat().st_mode)
    assert mode == 0o600  # the file holds the password


def test_a_second_start_shares_the_running_server_and_never_stops_it(private_redis: PrivateRedis) -> None:
    second = PrivateRedis(private_redis.broker_dir)
    assert second.start() == private_redis.endpoint
    assert not second.owned
    second.stop()  # not its server: nothing happens
    assert private_redis.endpoint is not None
    assert redis.Redis.from_url(private_redis.endpoint.url).ping()


def test_a_restart_keeps_the_port_and_the_queued_messages(tmp_path: Path) -> None:
    """Append-only persistence: a message pushed before a stop is there after the next start, and the port
    stays the same so workers that outlived `avs serve` reconnect."""
    broker_dir = tmp_path / "broker"
    first = PrivateRedis(broker_dir)
    endpoint = first.start()
    redis.Redis.from_url(endpoint.url).lpush("celery", "message-1")
    first.stop()
    second = PrivateRedis(broker_dir)
    try:
        again = second.start()
        assert again.port == endpoint.port
        assert redis.Redis.from_url(again.url).lrange("celery", 0, -1) == [b"message-1"]
    finally:
        second.stop()


def test_no_redis_server_is_a_clear_error(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path / "broker", executable=None)
    server.executable = None
    with pytest.raises(PrivateRedisError, match="apt-get install redis-server"):
        server.start()
    assert read_endpoint(tmp_path / "broker") is None


MALFORMED = [
    (b"", "not_json"),  # the 0-byte message of the filesystem transport's race
    (b"{\"body\": 1", "not_json"),  # half-written
    (b"\xff\xfe not utf-8", "not_json"),  # kombu decodes with replacement characters
    (b"[1, 2]", "not_an_envelope"),
    (json.dumps({"body": "x", "headers": {}}).encode(), "not_an_envelope"),
    (json.dumps({"body": "%%% not base64", "properties": {"delivery_tag": "t", "body_encoding": "base64"}}).encode(),
     "bad_body"),
]


def test_malformed_messages_are_set_aside_and_the_consumer_goes_on(private_redis: PrivateRedis) -> None:
    assert private_redis.endpoint is not None
    url = private_redis.endpoint.url
    client = redis.Redis.from_url(url)
    reasons: list[str] = []
    broker_transport.on_set_aside.append(reasons.append)
    received: list[object] = []
    queue = Queue("celery", Exchange("celery", type="direct"), routing_key="celery")
    try:
        with Connection(url, transport=TRANSPORT) as conn:
            with conn.Producer() as producer:  # declares the queue; the good message goes in first
                producer.publish({"job": "good"}, exchange=queue.exchange, routing_key="celery", declare=[queue],
                                 serializer="json")
            for payload, _reason in MALFORMED:  # BRPOP takes from the right: these come out first
                client.rpush("celery", payload)

            def on_message(body: object, message: object) -> None:
                received.append(body)
                message.ack()  # type: ignore[attr-defined]

            with Consumer(conn, queues=[queue], callbacks=[on_message], accept=["json"]):
                for _ in range(len(MALFORMED) + 5):
                    if received:
                        break
                    with contextlib.suppress(TimeoutError):
                        conn.drain_events(timeout=1)
    finally:
        broker_transport.on_set_aside.remove(reasons.append)
    assert received == [{"job": "good"}]
    assert sorted(reasons) == sorted(reason for _payload, reason in MALFORMED)
    kept = client.lrange(broker_transport.REJECTED_KEY, 0, -1)
    assert len(kept) == len(MALFORMED)  # every one kept for a person to read, raw where it did not decode
    assert {payload for payload, reason in MALFORMED if reason == "not_json"} - {b"\xff\xfe not utf-8"} <= set(kept)


@pytest.mark.parametrize(("payload", "problem"), [
    ({"body": "", "properties": {"delivery_tag": "t"}}, None),
    ({"body": "eyJhIjogMX0=", "properties": {"delivery_tag": "t", "body_encoding": "base64"}}, None),
    ("text", "not_an_envelope"),
    ({"properties": []}, "not_an_envelope"),
    ({"body": 5, "properties": {"delivery_tag": "t"}}, "bad_body"),
])
def test_envelope_problem(payload: object, problem: str | None) -> None:
    assert broker_transport.envelope_problem(payload) == problem
