"""API metrics (Prometheus, base units, no job ids or raw paths in labels), multi-process correct.

* `avs_http_requests_total{route,method,status}` and `avs_http_request_duration_seconds{route,method}`:
  every request, health and metrics included, labelled by the route TEMPLATE (`/jobs/{job_id}`);
  requests that match no route are `route="unmatched"`, so a scanner cannot mint new series.
  The duration runs until the response ends (a followed mask stream lasts as long as its job).
* `avs_upload_bytes`: sizes of completed uploads (accepted or refused after the probe).
* `avs_jobs_submitted_total`, `avs_jobs_rejected_total{reason}` (reason = the error code),
  `avs_uploads_aborted_total` (the client went away mid-upload), `avs_live_refused_total{code}` (live
  sessions refused by the API; the workers count the sessions themselves, `avs_live_*`).
* `avs_backlog_jobs` and `avs_jobs_in_state{state}`: computed at scrape time from the job store by
  `JobStoreCollector`, so they are right whatever process created or advanced the jobs; likewise
  `avs_streams_in_state{state}` for the REST streams, with `avs_streams_created_total` and
  `avs_streams_refused_total{code}` (the workers count the runs, `avs_streams_started_total`, ...).

Multi-process: when `PROMETHEUS_MULTIPROC_DIR` is set (it must be set before `prometheus_client` is
first imported; `avs serve` does so), every process writes its samples to files there and `/metrics`
aggregates them with `MultiProcessCollector` into a fresh registry per scrape, so several uvicorn
workers, and a worker process sharing the directory, add up instead of answering at random.
Without it the default registry is served.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.counts import status_counter
from worker.core.contracts import JobStatus
from worker.core.jobstore import JobStore

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
UPLOAD_BUCKETS = tuple(float(1 << p) for p in (16, 18, 20, 22, 24, 26, 28, 30, 31, 32))  # 64 KiB .. 4 GiB

HTTP_REQUESTS = Counter("avs_http_requests", "HTTP requests by route template, method and status",
                        ["route", "method", "status"])
HTTP_DURATION = Histogram("avs_http_request_duration_seconds", "HTTP request duration until the response ends",
                          ["route", "method"], buckets=HTTP_BUCKETS)
UPLOAD_BYTES = Histogram("avs_upload_bytes", "Size of uploaded videos (completed uploads)", buckets=UPLOAD_BUCKETS)
JOBS_SUBMITTED = Counter("avs_jobs_submitted", "Jobs accepted and queued")
JOBS_REJECTED = Counter("avs_jobs_rejected", "Submissions refused, by error code", ["reason"])
UPLOADS_ABORTED = Counter("avs_uploads_aborted", "Uploads abandoned by the client before the body ended")
LEASES_EXPIRED = Counter("avs_leases_expired", "Running jobs whose owner's lease expired (requeued or, when a "
                         "cancel was asked for, cancelled) by the reconciler", ["action"])
LIVE_REFUSED = Counter("avs_live_refused", "Live sessions the API refused before any worker ran them, by error "
                       "code (unauthorized, invalid_request, too_many_sessions, not_ready)", ["code"])
LIVE_WORKER_LOST = Counter("avs_live_worker_lost", "Live sessions whose worker connection dropped mid-session "
                           "(the client got `worker_lost` and close code 1011)")
STREAMS_CREATED = Counter("avs_streams_created", "REST streams accepted (POST /streams) and queued for a worker")
STREAMS_REFUSED = Counter("avs_streams_refused", "POST /streams refused, by error code (invalid_request, "
                          "unauthorized, too_many_sessions, not_ready)", ["code"])
MESSAGES_RESENT = Counter("avs_job_messages_resent", "Job messages the reconciler sent again (a requeued job, "
                          "or one whose first send never happened)")
MESSAGES_UNTAKEN = Counter("avs_job_messages_untaken", "Queued jobs whose message had left the queue without the "
                           "job being run (a worker died before taking it, a malformed message set aside, a lost "
                           "broker), sent again by the reconciler")

UNMATCHED = "unmatched"


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class JobStoreCollector(Collector):
    """Backlog depth and jobs per state, read from the job records at scrape time; with `streams`, the REST
    streams per state too (`avs_streams_in_state`: running is how many run now)."""

    def __init__(self, store: JobStore, streams: JobStore | None = None) -> None:
        self.store, self.streams = store, streams

    def collect(self) -> Iterator[Metric]:
        counts = status_counter(self.store).counts()
        backlog = GaugeMetricFamily("avs_backlog_jobs", "Jobs queued and not started yet")
        backlog.add_metric([], counts.get(JobStatus.QUEUED.value, 0))
        yield backlog
        states = GaugeMetricFamily("avs_jobs_in_state", "Job records per status (until they expire)",
                                   labels=["state"])
        for state in JobStatus:
            states.add_metric([state.value], counts.get(state.value, 0))
        yield states
        if self.streams is not None:
            counts = status_counter(self.streams).counts()
            streams = GaugeMetricFamily("avs_streams_in_state", "REST stream records per status (until they "
                                        "expire)", labels=["state"])
            for state in JobStatus:
                streams.add_metric([state.value], counts.get(state.value, 0))
            yield streams


class _DefaultRegistry(Collector):
    """The process's default registry, as one collector of a per-scrape registry."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def render(store: JobStore, streams: JobStore | None = None) -> bytes:
    registry = CollectorRegistry()
    if multiprocess_dir():
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_DefaultRegistry())
    registry.register(JobStoreCollector(store, streams))
    return generate_latest(registry)


def mark_process_dead() -> None:
    """Drop this process's live-gauge files (multi-process mode) when it shuts down."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(os.getpid())


class MetricsMiddleware:
    """Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer streaming responses).

    The route template is read from `scope["route"]`, which the router sets on the shared scope when a
    route matches; it is read after the app returns. An exception that escapes before a response started
    (answered 500 by the outermost error middleware) is counted as 500; a stream cut by the client keeps
    the status it was sent with.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # stays 500 when an exception escapes before a response started

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            method = scope.get("method", "GET")
            HTTP_REQUESTS.labels(route, method, str(status)).inc()
            HTTP_DURATION.labels(route, method).observe(time.perf_counter() - start)
