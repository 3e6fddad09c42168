"""The API's documentation, complete and offline.

* `/docs` (Swagger UI) and `/redoc` with their JavaScript and CSS served by this server from the
  `fastapi-offline` package (`create_docs_app`): the pages work with no internet access.
* The OpenAPI document (`openapi_document`) declares the API key (`X-API-Key` header or `Authorization:
  Bearer`), carries the NDJSON lines' schemas (`MaskLine`, `EndLine`) and documents `/live` (a WebSocket:
  the upgrade request) with a link to
* `/asyncapi.json`: an AsyncAPI 2.6 document of the `/live` WebSocket's messages and of the NDJSON mask streams
  (`asyncapi_document`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline

from app.api.stream_schemas import (
    EndLine,
    LiveEnd,
    LiveEndRequest,
    LiveError,
    LiveMask,
    LiveStarted,
    MaskLine,
    component_schemas,
)
from worker.core.live_protocol import LiveStart

ASYNCAPI_URL = "/asyncapi.json"
DESCRIPTION = (
    "Segments the objects that make the sound in a video. Upload with `POST /segment`, follow `GET /jobs/{id}`, "
    "read the masks as NDJSON from `GET /jobs/{id}/masks` (one `MaskLine` per frame, then one `EndLine`), "
    "download exports (`/jobs/{id}/exports`). Live sessions use the `/live` WebSocket; its messages and the "
    f"NDJSON streams are described in the AsyncAPI document at [{ASYNCAPI_URL}]({ASYNCAPI_URL}). "
    "With `AVS_API_KEYS` set, every route but health, readiness, model, metrics and these docs needs a key "
    "(`X-API-Key` or `Authorization: Bearer`; `?api_key=` on `/live`). Errors are "
    "`{\"error\": {\"code\", \"message\"}}` with stable codes.")


def create_docs_app(**kwargs: Any) -> FastAPI:
    """A FastAPI app whose /docs and /redoc load their assets from this server (`fastapi-offline`'s copy of
    Swagger UI and ReDoc, under /static-offline-docs), never from a CDN."""
    return FastAPIOffline(description=DESCRIPTION, **kwargs)


_LIVE_PATH = {"get": {
    "tags": ["live"], "summary": "A live session (WebSocket; send the start message, then media)",
    "description": "Upgrade to a WebSocket (`ws://host/live`). The messages both ways are in the AsyncAPI "
                   f"document at {ASYNCAPI_URL}. A browser passes the key as `?api_key=`.",
    "operationId": "live_websocket",
    "parameters": [{"name": "api_key", "in": "query", "required": False, "schema": {"type": "string"},
                    "description": "the API key, for clients that cannot set headers"}],
    "responses": {"101": {"description": "Switching Protocols: the session runs on the socket"},
                  "403": {"description": "no or a wrong API key (the handshake is refused)"}},
}}


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of `app` (cached on it) with the extras above."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, summary=app.summary, description=app.description,
                      routes=app.routes)
    components = doc.setdefault("components", {})
    components.setdefault("schemas", {}).update(component_schemas(MaskLine, EndLine))
    doc["paths"]["/live"] = _LIVE_PATH
    ndjson = {"schema": {"oneOf": [{"$ref": "#/components/schemas/MaskLine"},
                                   {"$ref": "#/components/schemas/EndLine"}]},
              "x-ndjson-line": True}
    for path in ("/jobs/{job_id}/masks", "/streams/{stream_id}/masks"):
        get = doc["paths"].get(path, {}).get("get")
        if get is not None:
            get["responses"]["200"]["content"] = {"application/x-ndjson": ndjson}
    doc["externalDocs"] = {"description": "AsyncAPI: /live messages and NDJSON streams", "url": ASYNCAPI_URL}
    app.openapi_schema = doc
    return doc


def asyncapi_document(version: str) -> dict[str, Any]:
    """AsyncAPI 2.6: the `/live` WebSocket (client -> server: LiveStart, binary media, end; server -> client:
    started, mask, end, error) and the NDJSON mask streams of jobs and REST streams (server -> client)."""
    schemas = component_schemas(LiveStart, LiveEndRequest, LiveStarted, LiveMask, LiveEnd, LiveError, MaskLine,
                                EndLine)
    for schema in schemas.values():  # AsyncAPI's components live under #/components/schemas too
        schema.pop("title", None)

    def message(name: str, summary: str, content_type: str = "application/json") -> dict[str, Any]:
        return {"name": name, "summary": summary, "contentType": content_type,
                "payload": {"$ref": f"#/components/schemas/{name}"}}

    ndjson_lines = {"oneOf": [message("MaskLine", "one frame's mask", "application/x-ndjson"),
                              message("EndLine", "the last line: how the job ended", "application/x-ndjson")]}
    return {
        "asyncapi": "2.6.0",
        "info": {"title": "AVESFormer segmentation service: live sessions and mask streams", "version": version,
                 "description": "The WebSocket `/live` and the NDJSON streams the REST API describes only as "
                                "responses. Every text frame on `/live` is one JSON object with a `type`; binary "
                                "frames are media (WebM/Matroska or fragmented MP4)."},
        "defaultContentType": "application/json",
        "servers": {"service": {"url": "{host}", "protocol": "ws",
                                "variables": {"host": {"default": "localhost:8000"}},
                                "security": [{"apiKey": []}]}},
        "channels": {
            "/live": {
                "description": "One live session per connection: start, media (or a pulled `source`), end.",
                "bindings": {"ws": {"method": "GET", "query": {"type": "object", "properties": {
                    "api_key": {"type": "string"}}}}},
                "publish": {"operationId": "liveClientSends", "summary": "what the client sends",
                            "message": {"oneOf": [
                                message("LiveStart", "the first message: options, and a source URL to pull"),
                                {"name": "media", "summary": "a chunk of the pushed stream",
                                 "contentType": "application/octet-stream",
                                 "payload": {"type": "string", "format": "binary"}},
                                message("LiveEndRequest", "no more media: finish the frames and end")]}},
                "subscribe": {"operationId": "liveServerSends", "summary": "what the server sends",
                              "message": {"oneOf": [
                                  message("LiveStarted", "the session runs"),
                                  message("LiveMask", "one processed frame's mask"),
                                  message("LiveEnd", "the summary; the socket closes after it"),
                                  message("LiveError", "refused before starting; the socket closes")]}},
            },
            "/jobs/{job_id}/masks": {
                "description": "HTTP GET, NDJSON: a job's mask lines, followed while it runs, then the end line.",
                "parameters": {"job_id": {"schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}},
                "bindings": {"http": {"type": "request", "method": "GET"}},
                "subscribe": {"operationId": "jobMaskLines", "message": ndjson_lines},
            },
            "/streams/{stream_id}/masks": {
                "description": "HTTP GET, NDJSON: a REST stream's mask lines while it runs, then the end line.",
                "parameters": {"stream_id": {"schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}},
                "bindings": {"http": {"type": "request", "method": "GET"}},
                "subscribe": {"operationId": "streamMaskLines", "message": ndjson_lines},
            },
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"apiKey": {"type": "httpApiKey", "name": "X-API-Key", "in": "header",
                                           "description": "or ?api_key= on /live (browsers)"}},
        },
    }
