"""REST streams through TestClient: POST /streams (the allow-list with /live's codes, room on the workers from
their heartbeats, the record and the message), the listing and the view, DELETE in each state, the masks with
their end line, the API key, the metrics and the OpenAPI document. No worker runs here: the records are moved
as a worker would move them (`worker.core.leases`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from api_support import FailingSender, Recorder, mask_line, write_heartbeat
from fastapi.testclient import TestClient

from app.api.main import create_app
from worker.core.contracts import JobStatus
from worker.core.jobstore import JobStore
from worker.core.leases import acquire, fenced_update
from worker.core.settings import ServiceSettings
from worker.core.streams import finish_stream, stream_store

URL = "udp://127.0.0.1:5000"
VIEW_KEYS = {"stream_id", "status", "source", "options", "frames", "created_at", "started_at", "finished_at",
             "ended_by", "error", "attempts", "takeovers", "stop_requested", "live", "urls"}


def _heartbeat(settings: ServiceSettings, name: str = "worker-1", *, capacity: int = 2, sessions: int = 0) -> None:
    """A warm worker with `capacity` live slots, `sessions` of them taken (what worker.heartbeat writes)."""
    write_heartbeat(settings, name, live_url="ws://127.0.0.1:1/live", live_sessions=sessions,
                    live_capacity=capacity)


@pytest.fixture
def setup(make_settings: Callable[..., ServiceSettings]) -> Iterator[tuple[TestClient, ServiceSettings, Recorder]]:
    settings = make_settings(live_sources=["udp://127.0.0.1"], retry_after_s=7)
    sender = Recorder()
    with TestClient(create_app(settings, task_sender=Recorder(), stream_sender=sender)) as client:
        yield client, settings, sender


def _create(client: TestClient, **fields: Any):
    return client.post("/streams", json={"source": URL, **fields})


def test_post_starts_a_queued_stream_and_sends_its_message(setup) -> None:
    client, settings, sender = setup
    _heartbeat(settings)
    response = _create(client, fps=5, window=3, mode="no_drop", threshold=0.4)
    assert response.status_code == 201, response.text
    body = response.json()
    stream_id = body["stream_id"]
    assert body == {"stream_id": stream_id, "status": "queued", "status_url": f"/streams/{stream_id}",
                    "masks_url": f"/streams/{stream_id}/masks"}
    assert response.headers["location"] == body["status_url"]
    assert sender.calls == [(stream_id,)]
    record = stream_store(settings).get(stream_id)
    assert record.kind == "stream"
    assert record.message_sent_at is not None
    assert client.get(f"/jobs/{stream_id}").status_code == 404  # a stream is not a job

    view = client.get(f"/streams/{stream_id}").json()
    assert set(view) == VIEW_KEYS
    assert (view["status"], view["source"], view["frames"], view["ended_by"]) == ("queued", URL, 0, None)
    assert view["options"] == {"threshold": 0.4, "fps": 5, "window": 3, "mode": "no_drop"}
    listing = client.get("/streams").json()["streams"]
    assert [s["stream_id"] for s in listing] == [stream_id]


@pytest.mark.parametrize(("source", "status", "code"), [
    ("udp://10.1.2.3:5000", 401, "unauthorized"),  # off the allow-list: /live's code
    ("file:///etc/passwd", 422, "invalid_request"),
    ("udp://127.0.0.1:5000?localaddr=10.0.0.1", 422, "invalid_request"),
    ("srt://user:pw@127.0.0.1:9000", 422, "invalid_request"),
])
def test_sources_not_ours_to_open_are_refused_before_anything_exists(setup, source: str, status: int,
                                                                     code: str) -> None:
    client, settings, sender = setup
    _heartbeat(settings)
    response = client.post("/streams", json={"source": source})
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert sender.calls == []
    assert list(stream_store(settings).list_ids()) == []
    assert f'avs_streams_refused_total{{code="{code}"}}' in client.get("/metrics").text


@pytest.mark.parametrize("body", [{}, {"source": URL, "mode": "drop_all"}, {"source": URL, "window": 65},
                                  {"source": URL, "record": True}, {"source": URL, "fps": -1}])
def test_bad_bodies_are_invalid_requests(setup, body: dict) -> None:
    client, settings, _ = setup
    _heartbeat(settings)
    response = client.post("/streams", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


def test_room_comes_from_the_heartbeats_and_the_streams_still_queued(setup) -> None:
    client, settings, sender = setup
    assert _create(client).json()["error"]["code"] == "not_ready"  # no warm worker at all
    _heartbeat(settings, capacity=2, sessions=1)  # one slot taken by a /live session
    assert _create(client).status_code == 201  # the last slot, for this stream (queued: no heartbeat counts it)
    full = _create(client)
    assert full.status_code == 429
    assert full.json()["error"]["code"] == "too_many_sessions"
    assert full.headers["retry-after"] == "7"
    _heartbeat(settings, "worker-2", capacity=4)  # another worker: room again
    assert _create(client).status_code == 201
    assert len(sender.calls) == 2


def test_a_stream_the_queue_did_not_take_is_refused_and_never_runs(make_settings) -> None:
    settings = make_settings(live_sources=["udp://127.0.0.1"])
    _heartbeat(settings)
    with TestClient(create_app(settings, task_sender=Recorder(), stream_sender=FailingSender())) as client:
        response = _create(client)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "not_ready"
        (record,) = stream_store(settings).records()
        assert record.status is JobStatus.FAILED


def _running(settings: ServiceSettings, client: TestClient) -> tuple[str, Any, JobStore]:
    _heartbeat(settings)
    stream_id = _create(client).json()["stream_id"]
    store = stream_store(settings)
    _, lease, _ = acquire(store, stream_id, "worker-1", 3600)
    return stream_id, lease, store


def test_delete_stops_a_stream_in_every_state(setup) -> None:
    client, settings, _ = setup
    _heartbeat(settings)
    queued = _create(client).json()["stream_id"]
    response = client.delete(f"/streams/{queued}")
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["ended_by"]) == ("cancelled", "stopped")
    assert client.delete(f"/streams/{queued}").status_code == 200  # idempotent

    running, lease, store = _running(settings, client)
    response = client.delete(f"/streams/{running}")
    assert response.status_code == 202  # its worker stops it
    assert response.json()["status"] == "running"
    assert response.json()["stop_requested"] is True
    fenced_update(store, lease, lambda r: finish_stream(r, JobStatus.CANCELLED, frames=0, summary={},
                                                        reason="stopped"))
    assert client.delete(f"/streams/{running}").json()["status"] == "cancelled"
    assert client.delete("/streams/" + "0" * 32).status_code == 404
    assert client.get("/streams/not-an-id").status_code == 404


def test_masks_read_like_a_jobs_with_the_reason_it_ended(setup) -> None:
    client, settings, _ = setup
    stream_id, lease, store = _running(settings, client)
    store.masks_path(stream_id).write_bytes(b"".join(mask_line(i) for i in range(4)))
    fenced_update(store, lease, lambda r: finish_stream(r, JobStatus.SUCCEEDED, frames=4,
                                                        summary={"frames_processed": 4}, reason="source"))
    lines = [json.loads(x) for x in client.get(f"/streams/{stream_id}/masks").text.splitlines()]
    *frames, end = lines
    assert [f["frame_index"] for f in frames] == [0, 1, 2, 3]
    assert end == {"end": True, "status": "succeeded", "frames": 4, "error": None, "deleted": False,
                   "ended_by": "source"}
    resumed = [json.loads(x) for x in client.get(f"/streams/{stream_id}/masks?from_frame=3").text.splitlines()]
    assert [f.get("frame_index") for f in resumed] == [3, None]
    view = client.get(f"/streams/{stream_id}").json()
    assert (view["frames"], view["ended_by"], view["attempts"]) == (4, "source", 1)
    assert client.get("/streams/" + "0" * 32 + "/masks").status_code == 404


def test_the_routes_need_the_api_key(make_settings) -> None:
    settings = make_settings(live_sources=["udp://127.0.0.1"], api_keys=["k1"])
    _heartbeat(settings)
    with TestClient(create_app(settings, task_sender=Recorder(), stream_sender=Recorder())) as client:
        assert _create(client).status_code == 401
        assert client.get("/streams").status_code == 401
        created = client.post("/streams", json={"source": URL}, headers={"X-API-Key": "k1"})
        assert created.status_code == 201
        stream_id = created.json()["stream_id"]
        for method, path in (("GET", f"/streams/{stream_id}"), ("GET", f"/streams/{stream_id}/masks"),
                             ("DELETE", f"/streams/{stream_id}")):
            assert client.request(method, path).status_code == 401
        assert client.get("/streams", headers={"X-API-Key": "k1"}).status_code == 200


def test_metrics_count_streams_per_state(setup) -> None:
    client, settings, _ = setup
    _heartbeat(settings)
    _create(client)
    text = client.get("/metrics").text
    assert 'avs_streams_in_state{state="queued"} 1.0' in text
    assert "avs_streams_created_total" in text


def test_openapi_documents_the_stream_routes(setup) -> None:
    client, _, _ = setup
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert set(paths["/streams"]) == {"get", "post"}
    assert set(paths["/streams/{stream_id}"]) == {"get", "delete"}
    assert "get" in paths["/streams/{stream_id}/masks"]
    post = paths["/streams"]["post"]
    assert post["tags"] == ["streams"]
    assert {"201", "401", "422", "429", "503"} <= set(post["responses"])
    body_schema = post["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert set(spec["components"]["schemas"][body_schema]["properties"]) == {"source", "threshold", "fps", "window",
                                                                              "mode"}
    view = spec["components"]["schemas"]["StreamView"]
    assert set(view["properties"]) == VIEW_KEYS
