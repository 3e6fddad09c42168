"""Operations routes, open without an API key: liveness, readiness, the model card, Prometheus metrics."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.api import health, prometheus
from app.api.deps import SettingsDep, StoreDep, StreamStoreDep
from app.api.errors import error_response
from app.api.schemas import ErrorBody, ModelResponse, ReadyResponse
from worker.core.contracts import ServiceErrorCode

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process serves requests")
async def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@router.get("/readyz", response_model=ReadyResponse,
            responses={503: {"model": ErrorBody, "description": "`not_ready`: broker unreachable or no warm worker"}},
            summary="Readiness: the broker is reachable and a warm worker is present")
def readyz(settings: SettingsDep) -> Any:
    body, problem = health.readiness(settings)
    if problem is not None:
        return error_response(ServiceErrorCode.NOT_READY, problem)
    return JSONResponse(body)


@router.get("/model", response_model=ModelResponse,
            responses={503: {"model": ErrorBody, "description": "`not_ready`: no warm worker to ask"}},
            summary="The model the workers serve: its card (what it was trained on, how well it does, where it "
                    "comes from), input size and classes")
def model(settings: SettingsDep) -> Any:
    workers, _ = health.warm_workers(settings)
    models: dict[str, dict[str, Any]] = {}
    served_by: dict[str, list[str]] = {}
    for worker in workers:
        summary = worker.get("model")
        if isinstance(summary, dict):
            key = json.dumps(summary, sort_keys=True)
            models.setdefault(key, summary)
            served_by.setdefault(key, []).append(worker["name"])
    if not models:
        return error_response(ServiceErrorCode.NOT_READY, "no warm worker has reported its model yet")
    first, *others = models
    return JSONResponse({"model": models[first], "workers": served_by[first],
                         "other_models": [models[key] for key in others]})


@router.get("/asyncapi.json", summary="AsyncAPI 2.6: the /live WebSocket's messages and the NDJSON mask streams")
def asyncapi(request: Request) -> dict[str, Any]:
    from app.api.docs import asyncapi_document

    return asyncapi_document(request.app.version)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics (text format)")
def prometheus_metrics(store: StoreDep, streams: StreamStoreDep) -> Response:
    return Response(prometheus.render(store, streams), media_type=CONTENT_TYPE_LATEST)
