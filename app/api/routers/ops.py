"""Operations routes, open without an API key: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.api import health, prometheus
from app.api.deps import SettingsDep, StoreDep, StreamStoreDep
from app.api.errors import error_response
from app.api.schemas import ErrorBody, ReadyResponse
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


@router.get("/metrics", response_class=Response, summary="Prometheus metrics (text format)")
def prometheus_metrics(store: StoreDep, streams: StreamStoreDep) -> Response:
    return Response(prometheus.render(store, streams), media_type=CONTENT_TYPE_LATEST)
