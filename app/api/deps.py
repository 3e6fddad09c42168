"""Dependencies shared by the routers, as `Annotated` aliases (the full-stack FastAPI template's style).

* `SettingsDep`: `worker.core.settings.get_settings`, which `create_app(settings)` overrides for its app, and
  tests may override through `app.dependency_overrides[get_settings]`.
* `StoreDep`: the `JobStore` of the settings' state backend (`worker.core.state.open_store`, one per place).
* `TaskSenderDep`: a callable `(job_id) -> None` that queues `avs.segment(job_id)`; the app keeps it in
  `app.state.task_sender` (the real Celery sender, or a test's recorder).
* `StreamStoreDep`, `StreamSenderDep`: the same two for the REST streams (`worker.core.streams`): their
  records' folder, and `avs.stream(stream_id)` (`app.state.stream_sender`).
* `require_api_key`: the auth guard of the job routes (health, readiness, metrics and docs stay open).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from app.api.errors import ApiError
from worker.core.api_keys import key_accepted, presented_key
from worker.core.contracts import TASK_SEGMENT, ServiceErrorCode
from worker.core.jobstore import JobStore
from worker.core.settings import ServiceSettings, get_settings
from worker.core.state import open_store

TaskSender = Callable[[str], None]

SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]


def get_store(settings: SettingsDep) -> JobStore:
    return open_store(settings)


StoreDep = Annotated[JobStore, Depends(get_store)]


def get_stream_store(settings: SettingsDep) -> JobStore:
    from worker.core.streams import STREAMS_FOLDER

    return open_store(settings, STREAMS_FOLDER)


StreamStoreDep = Annotated[JobStore, Depends(get_stream_store)]


def get_task_sender(request: Request) -> TaskSender:
    return request.app.state.task_sender


TaskSenderDep = Annotated[TaskSender, Depends(get_task_sender)]


def get_stream_sender(request: Request) -> TaskSender:
    return request.app.state.stream_sender


StreamSenderDep = Annotated[TaskSender, Depends(get_stream_sender)]


class CelerySender:
    """Sends `task(job_id)` (`avs.segment` by default; `avs.stream` for the REST streams) through the project's
    Celery app, built lazily for these settings.

    Lazy so that importing or creating the API touches no broker (and creates no broker directory);
    the publish retries briefly, so a broker that is down fails the request in about a second (503)
    instead of hanging it.
    """

    def __init__(self, settings: ServiceSettings, task: str = TASK_SEGMENT) -> None:
        self.settings, self.task = settings, task
        self._celery = None
        self._lock = threading.Lock()

    def _app(self):  # -> celery.Celery
        with self._lock:
            if self._celery is None:
                # torch-free; imported on first send only
                from worker.core.celery_app import broker_url, create_celery

                if broker_url(self.settings) is None:  # embedded: `avs serve` has not started its Redis
                    raise ConnectionError("the embedded broker is not running (start `avs serve`)")
                self._celery = create_celery(self.settings)
            return self._celery

    def __call__(self, job_id: str, *more: str) -> None:
        """Send `task(job_id, *more)`; a job's or stream's task (no `more`) has the id as its task id."""
        self._app().send_task(
            # The job id as the task id: the reconciler finds which jobs still wait in the queue by it. An export's
            # message (job id, name) gets a task id of its own, so it is never taken for its job's.
            self.task, args=[job_id, *more], task_id=None if more else job_id,
            # The job record is the result: no result-backend subscription per task in the API process
            # (with Redis it would also make a send block ~20 s on its reconnect loop when Redis is down).
            ignore_result=True,
            retry=True, retry_policy={"max_retries": 2, "interval_start": 0.0, "interval_step": 0.5,
                                      "interval_max": 0.5},
        )

    def waiting_job_ids(self) -> set[str] | None:
        """The jobs whose message waits in the queue (`worker.core.broker_queue`); None when the broker cannot
        be read that way (not Redis, or not running). Raises when Redis does not answer in time."""
        from worker.core.broker_queue import waiting_job_ids
        from worker.core.celery_app import broker_url

        url = broker_url(self.settings)
        if url is None or not url.startswith(("redis://", "rediss://")):
            return None
        return waiting_job_ids(url, timeout_s=self.settings.broker_timeout_s)


# Declared for the OpenAPI document (its security schemes, either one); the check itself reads the headers.
_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="ApiKey",
                           description="one of AVS_API_KEYS (no key needed when it is empty)")
_BEARER = HTTPBearer(auto_error=False, scheme_name="Bearer", description="the same key as a bearer token")


def require_api_key(request: Request, settings: SettingsDep,
                    _header: Annotated[str | None, Security(_KEY_HEADER)] = None,
                    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)] = None) -> None:
    """401 `unauthorized` unless `X-API-Key: <key>` (or `Authorization: Bearer <key>`) names a configured key
    (`worker.core.api_keys`: constant-time comparison against every key)."""
    if not settings.api_keys:
        return
    presented = presented_key(request.headers)
    if presented is None:
        raise ApiError(ServiceErrorCode.UNAUTHORIZED, "an API key is required (X-API-Key header)",
                       headers={"WWW-Authenticate": "Bearer"})
    if not key_accepted(settings.api_keys, presented):
        raise ApiError(ServiceErrorCode.UNAUTHORIZED, "invalid API key", headers={"WWW-Authenticate": "Bearer"})


ApiKeyGuard = Depends(require_api_key)
