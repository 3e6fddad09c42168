"""The export routes through TestClient with a recording sender (the worker's side, `worker.exports`, has its
own tests; tests/e2e/test_exports.py runs both for real): states, idempotent queueing, refusals, deletion."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from api_support import Recorder, add_job, mask_line
from fastapi.testclient import TestClient

from app.api.main import create_app
from worker.core.contracts import JobStatus
from worker.core.exports import EXPORTS, export_path, pending_path
from worker.core.jobstore import JobStore
from worker.core.settings import ServiceSettings
from worker.core.state import open_store


@pytest.fixture
def exports_sent() -> Recorder:
    return Recorder()


@pytest.fixture
def store(settings: ServiceSettings) -> JobStore:
    return open_store(settings)


@pytest.fixture
def client(settings: ServiceSettings, recorder: Recorder, exports_sent: Recorder) -> Iterator[TestClient]:
    with TestClient(create_app(settings, task_sender=recorder, export_sender=exports_sent)) as test_client:
        yield test_client


def _finished(store: JobStore, frames: int = 3) -> str:
    job_id = add_job(store, JobStatus.SUCCEEDED, progress={"frames_done": frames, "frames_total": frames})
    store.masks_path(job_id).write_bytes(b"".join(mask_line(i) for i in range(frames)))
    return job_id


def _states(client: TestClient, job_id: str) -> dict[str, str]:
    return {e["name"]: e["status"] for e in client.get(f"/jobs/{job_id}/exports").json()["exports"]}


def test_list_post_and_download(client: TestClient, store: JobStore, exports_sent: Recorder) -> None:
    job_id = _finished(store)
    listed = client.get(f"/jobs/{job_id}/exports").json()["exports"]
    assert [e["name"] for e in listed] == list(EXPORTS)
    assert {e["status"] for e in listed} == {"absent"}
    by_name = {e["name"]: e for e in listed}
    assert by_name["coco.json"]["available"] is True
    assert by_name["side-by-side.mp4"]["available"] is False  # this record keeps no probed video
    assert by_name["masks.zip"]["url"] == f"/jobs/{job_id}/exports/masks.zip"

    response = client.post(f"/jobs/{job_id}/exports/coco.json")
    assert (response.status_code, response.json()["status"]) == (202, "pending")
    assert response.headers["retry-after"] == "2"
    assert client.post(f"/jobs/{job_id}/exports/coco.json").status_code == 202  # idempotent: sent once
    assert exports_sent.calls == [(job_id, "coco.json")]
    assert _states(client, job_id)["coco.json"] == "pending"
    response = client.get(f"/jobs/{job_id}/exports/coco.json")
    assert (response.status_code, response.json()["status"]) == (202, "pending")

    # the worker's part: the file appears, the mark goes
    path = export_path(store.job_dir(job_id), "coco.json")
    path.write_text(json.dumps({"images": []}))
    pending_path(store.job_dir(job_id), "coco.json").unlink()
    response = client.get(f"/jobs/{job_id}/exports/coco.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"images": []}
    assert f'{job_id}-coco.json' in response.headers["content-disposition"]
    entry = {e["name"]: e for e in client.get(f"/jobs/{job_id}/exports").json()["exports"]}["coco.json"]
    assert (entry["status"], entry["size_bytes"]) == ("ready", path.stat().st_size)
    assert client.post(f"/jobs/{job_id}/exports/coco.json").status_code == 200  # ready already: nothing sent
    assert exports_sent.calls == [(job_id, "coco.json")]


def test_get_starts_an_absent_export(client: TestClient, store: JobStore, exports_sent: Recorder) -> None:
    job_id = _finished(store)
    assert client.get(f"/jobs/{job_id}/exports/masks.zip").status_code == 202
    assert exports_sent.calls == [(job_id, "masks.zip")]


def test_failed_export_says_why_and_a_post_retries(client: TestClient, store: JobStore,
                                                   exports_sent: Recorder) -> None:
    job_id = _finished(store)
    client.post(f"/jobs/{job_id}/exports/masks.zip")
    job_dir = store.job_dir(job_id)
    pending_path(job_dir, "masks.zip").unlink()
    (job_dir / "exports" / "masks.zip.error").write_text(json.dumps({"code": "export_failed", "message": "boom"}))
    response = client.get(f"/jobs/{job_id}/exports/masks.zip")
    assert (response.status_code, response.json()["error"]) == (500, {"code": "export_failed", "message": "boom"})
    assert client.post(f"/jobs/{job_id}/exports/masks.zip").status_code == 202
    assert len(exports_sent.calls) == 2
    assert _states(client, job_id)["masks.zip"] == "pending"


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED])
def test_exports_need_a_succeeded_job(client: TestClient, store: JobStore, exports_sent: Recorder,
                                      status: JobStatus) -> None:
    job_id = add_job(store, status)
    for method in ("POST", "GET"):
        response = client.request(method, f"/jobs/{job_id}/exports/coco.json")
        assert (response.status_code, response.json()["error"]["code"]) == (409, "job_not_finished")
    assert exports_sent.calls == []


def test_refusals(client: TestClient, store: JobStore, make_settings, recorder: Recorder) -> None:
    job_id = _finished(store)
    response = client.post(f"/jobs/{job_id}/exports/secrets.txt")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")
    assert "masks.zip" in response.json()["error"]["message"]
    response = client.post(f"/jobs/{job_id}/exports/alpha.webm")  # no video kept with this record
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")
    sent = Recorder()
    small_app = create_app(make_settings(max_export_bytes=1000), task_sender=recorder, export_sender=sent)
    with TestClient(small_app) as small:
        response = small.post(f"/jobs/{job_id}/exports/coco.json")
        assert (response.status_code, response.json()["error"]["code"]) == (413, "export_too_large")
        assert "AVS_MAX_EXPORT_BYTES=1000" in response.json()["error"]["message"]
    assert sent.calls == []


def test_exports_go_with_the_job(client: TestClient, store: JobStore) -> None:
    job_id = _finished(store)
    client.post(f"/jobs/{job_id}/exports/coco.json")
    export_path(store.job_dir(job_id), "coco.json").write_text("{}")
    assert client.delete(f"/jobs/{job_id}").status_code == 200
    assert not (store.job_dir(job_id) / "exports").exists()
    for method, path in [("GET", "/exports"), ("GET", "/exports/coco.json"), ("POST", "/exports/masks.zip")]:
        response = client.request(method, f"/jobs/{job_id}{path}")
        assert (response.status_code, response.json()["error"]["code"]) == (410, "job_deleted"), path
