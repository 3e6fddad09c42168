"""The Celery application, configured for long GPU jobs. Imports no torch (the API imports this module
to send tasks; CUDA must never be touched before a worker forks).

No module-level app: importing this module reads no settings and creates no file (`worker.tasks` builds
the worker's app; the API builds its own on its first send).

Production: Redis broker and result backend. Embedded default (no `AVS_BROKER_URL`): kombu's
filesystem transport under `AVS_DATA_DIR/broker`, so `avs serve` runs with no server installed; the
same task code runs on both. The filesystem transport removes a message when it is fetched, so the
SIGKILL redelivery guarantee below holds on Redis only (documented in the README).
"""

from __future__ import annotations

from celery import Celery

from worker.core.settings import ServiceSettings, get_settings


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
    if settings.embedded:
        queue_dir = settings.broker_dir / "queue"
        conf["broker_url"] = "filesystem://"
        # kombu polls the folder once a second by default: the first mask would wait for it
        conf["worker_enable_remote_control"] = False  # needs fanout exchanges, which this transport lacks
        conf["broker_transport_options"] = {
            "data_folder_in": str(queue_dir), "data_folder_out": str(queue_dir),
            "processed_folder": str(settings.broker_dir / "processed"), "store_processed": False,
            # kombu's default is ./control in the current directory: keep every broker file under broker_dir
            "control_folder": str(settings.broker_dir / "control"),
            "polling_interval": 0.02,
        }
    else:
        conf["broker_url"] = settings.broker_url
        conf["broker_connection_timeout"] = settings.broker_timeout_s
        conf["broker_transport_options"] = {
            # A backstop only: a dead worker's job is recovered through its lease (worker.core.leases) within
            # seconds, and a redelivered message for a job whose owner is alive does nothing.
            "visibility_timeout": settings.visibility_timeout_s,
            # A frozen or partitioned Redis fails a call within this, instead of blocking its thread for good.
            "socket_timeout": settings.broker_timeout_s,
            "socket_connect_timeout": settings.broker_timeout_s,
        }
        backend = settings.result_backend or (settings.broker_url if settings.broker_url.startswith("redis") else None)
        if backend:
            conf["result_backend"] = backend
            conf["result_expires"] = int(settings.result_ttl_s)
    return conf


def ensure_broker_dirs(settings: ServiceSettings) -> None:
    """Create the embedded transport's folders (nothing to do on Redis). Called by whoever is about to use
    the broker (`create_celery(prepare=True)`, the worker at start-up), never at import."""
    if settings.embedded:
        for name in ("queue", "processed", "control"):
            (settings.broker_dir / name).mkdir(parents=True, exist_ok=True)


def create_celery(settings: ServiceSettings | None = None, *, prepare: bool = True) -> Celery:
    """A Celery app for `settings` (default: the environment's). `prepare` creates the embedded broker's
    folders; `prepare=False` touches nothing on disk (module import time)."""
    settings = settings or get_settings()
    app = Celery("avs")
    app.conf.update(celery_config(settings))
    if prepare:
        ensure_broker_dirs(settings)
    return app
