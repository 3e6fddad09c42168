"""The API's documentation: /docs and /redoc load every asset from this server (no CDN), the OpenAPI document
declares the API key and the NDJSON lines' schemas and documents /live, and /asyncapi.json describes the
WebSocket's messages and the mask streams; every `$ref` of both documents resolves."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

_ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref" and isinstance(v, str)] + [
            r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


@pytest.mark.parametrize(("page", "script"), [("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")])
def test_doc_pages_load_every_asset_from_this_server(client: TestClient, page: str, script: str) -> None:
    html = client.get(page)
    assert html.status_code == 200
    assert "text/html" in html.headers["content-type"]
    assets = _ASSET.findall(html.text)
    assert any(a.endswith(script) for a in assets), assets
    assert not re.search(r"https?://", html.text), "the page must not reach out of this server"
    for asset in assets:
        assert asset.startswith("/"), asset
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert len(response.content) > 1000, asset  # the real bundle, not an error page
    assert "/openapi.json" in html.text


def test_openapi_declares_the_key_the_lines_and_live(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key",
                                 "description": schemes["ApiKey"]["description"]}
    assert schemes["Bearer"]["scheme"] == "bearer"
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            guarded = path.startswith(("/jobs", "/segment", "/streams"))
            assert (operation.get("security") == [{"ApiKey": []}, {"Bearer": []}]) is guarded, (method, path)
    schemas = doc["components"]["schemas"]
    line_fields = {"frame_index", "pts_s", "size", "counts", "segments", "confidence"}
    assert line_fields <= set(schemas["MaskLine"]["properties"])
    assert {"end", "status", "frames", "error", "deleted"} <= set(schemas["EndLine"]["properties"])
    masks = doc["paths"]["/jobs/{job_id}/masks"]["get"]["responses"]["200"]["content"]["application/x-ndjson"]
    assert masks["schema"]["oneOf"] == [{"$ref": "#/components/schemas/MaskLine"},
                                        {"$ref": "#/components/schemas/EndLine"}]
    assert "101" in doc["paths"]["/live"]["get"]["responses"]
    assert doc["externalDocs"]["url"] == "/asyncapi.json"
    for path in ("/jobs", "/jobs/{job_id}/preview.mp4", "/jobs/{job_id}/exports", "/jobs/{job_id}/exports/{name}"):
        assert path in doc["paths"], path
    assert "410" in doc["paths"]["/jobs/{job_id}"]["get"]["responses"]
    for ref in _refs(doc):
        _resolve(doc, ref)


def test_asyncapi_documents_live_and_the_streams(client: TestClient) -> None:
    response = client.get("/asyncapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["asyncapi"] == "2.6.0"
    live = doc["channels"]["/live"]
    sent = {m["name"] for m in live["publish"]["message"]["oneOf"]}
    received = {m["name"] for m in live["subscribe"]["message"]["oneOf"]}
    assert sent == {"LiveStart", "media", "LiveEndRequest"}
    assert received == {"LiveStarted", "LiveMask", "LiveEnd", "LiveError"}
    assert {"job_id", "job_url"} <= set(doc["components"]["schemas"]["LiveEnd"]["properties"])
    assert {"/jobs/{job_id}/masks", "/streams/{stream_id}/masks"} <= set(doc["channels"])
    for ref in _refs(doc):
        _resolve(doc, ref)


def test_docs_stay_open_with_keys(make_settings, recorder) -> None:
    from app.api.main import create_app

    with TestClient(create_app(make_settings(api_keys=["k"]), task_sender=recorder)) as client:
        for path in ("/docs", "/redoc", "/openapi.json", "/asyncapi.json", "/static-offline-docs/swagger-ui.css"):
            assert client.get(path).status_code == 200, path
        assert client.get("/jobs").status_code == 401
