"""The Celery application, configured for long GPU jobs. Imports no torch (the API imports this module
to send tasks; CUDA must never be touched before a worker forks).

No module-level app: importing this module reads no settings and creates no file (`worker.tasks` builds
the worker's app; the API builds its own on its first send).

One broker for every mode: Redis. `AVS_BROKER_URL` names it in production; the embedded default (no
`AVS_BROKER_URL`) uses the private Redis that `avs serve` starts for its data directory
(`worker.core.private_redis`). Both run the project's transport (`worker.core.broker_transport`: kombu's
Redis transport that sets a malformed message aside instead of stopping the worker).
"""

from __future__ import annotations

from celery import Celery

from worker.core.private_redis import broker_url
from worker.core.settings import ServiceSettings, get_settings

TRANSPORT = "worker.core.broker_transport:Transport"


def celery_config(settings: ServiceSettings) -> dict[str, object]:
    conf: dict[str, object] = {
        "task_serializer": "json",
        "accept_content": ["json"],  # never unpickle a message
        "result_serializer": "json",
        # A task is acknowledged only when it has finished, and a worker that dies mid-task (SIGKILL,
        # OOM) gives its message back: the job is redelivered, not lost.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Each of the worker's AVS_JOBS_PER_WORKER threads holds one job, none waiting in a buffer: a job
        # reserved but not started would wait behind others while another worker sits idle.
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": settings.jobs_per_worker,
        "task_ignore_result": True,  # the job record on the data volume is the result
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
    }
    url = broker_url(settings)
    if url is not None:
        conf["broker_url"] = url
        if url.startswith(("redis://", "rediss://")):
            conf["broker_transport"] = TRANSPORT
        conf["broker_connection_timeout"] = settings.broker_timeout_s
        conf["broker_transport_options"] = {
            # A backstop only: a dead worker's job is recovered through its lease (worker.core.leases) within
            # seconds, and a redelivered message for a job whose owner is alive does nothing.
            "visibility_timeout": settings.visibility_timeout_s,
            # A frozen or partitioned Redis fails a call within this, instead of blocking its thread for good.
            "socket_timeout": settings.broker_timeout_s,
            "socket_connect_timeout": settings.broker_timeout_s,
        }
        backend = settings.result_backend or (url if url.startswith("redis") else None)
        if backend:
            conf["result_backend"] = backend
            conf["result_expires"] = int(settings.result_ttl_s)
    return conf


def create_celery(settings: ServiceSettings | None = None) -> Celery:
    """A Celery app for `settings` (default: the environment's). Touches nothing on disk; with no broker
    configured and no private Redis recorded, the app has no broker URL (Celery's default, which fails to
    connect), so a caller that needs the broker checks `broker_url(settings)` first."""
    settings = settings or get_settings()
    app = Celery("avs")
    app.conf.update(celery_config(settings))
    return app
