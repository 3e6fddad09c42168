"""Worker-side Prometheus metrics (base units; no job ids in labels).

Multi-process safe: when `PROMETHEUS_MULTIPROC_DIR` is set (the embedded `avs serve`, or several
worker processes), prometheus_client writes these to per-process files there and whoever serves
`/metrics` aggregates them with `MultiProcessCollector`.
"""

from __future__ import annotations

import errno
import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server

# Job-level histograms must reach minutes: a 10-minute video on a CPU worker takes a long time.
JOB_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

JOB_SECONDS = Histogram("avs_job_duration_seconds", "Job end-to-end time, from submission to the end.",
                        buckets=JOB_BUCKETS)
QUEUE_WAIT_SECONDS = Histogram("avs_job_queue_wait_seconds", "Time a job waited before a worker started it.",
                               buckets=JOB_BUCKETS)
STAGE_SECONDS = Histogram("avs_stage_duration_seconds", "Seconds per pipeline stage and job.", ["stage"],
                          buckets=STAGE_BUCKETS)
BATCH_SIZE = Histogram("avs_inference_batch_size", "Frames per inference batch.",
                       buckets=(1, 2, 4, 8, 16, 32, 64))
BATCH_SECONDS = Histogram("avs_inference_batch_seconds", "Seconds per inference batch.", buckets=BATCH_BUCKETS)
FRAMES = Counter("avs_frames_processed_total", "Frames segmented.")
JOBS_FINISHED = Counter("avs_jobs_finished_total", "Jobs that ended, by final status.", ["status"])
JOBS_FAILED = Counter("avs_jobs_failed_total", "Failed jobs by error code.", ["code"])
JOBS_TAKEN_OVER = Counter("avs_jobs_taken_over_total",
                          "Jobs this worker resumed after their former owner's lease expired.")
LEASE_WRITES_REFUSED = Counter("avs_lease_writes_refused_total",
                               "Writes a worker did not make because its lease on the job was gone.")
BROKER_MESSAGES_SET_ASIDE = Counter("avs_broker_messages_set_aside_total", "Malformed broker messages this worker "
                                    "set aside instead of running (worker.core.broker_transport), by reason.",
                                    ["reason"])
MODEL_LOAD_SECONDS = Histogram("avs_model_load_seconds", "Model load + warm-up time per worker process.",
                               buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))


LIVE_SESSIONS = Gauge("avs_live_sessions", "Live sessions in progress.", multiprocess_mode="livesum")
LIVE_SESSIONS_ENDED = Counter("avs_live_sessions_ended_total", "Live sessions that ended, by status "
                              "(succeeded, failed, client_gone) or refusal code.", ["status"])
LIVE_LATENCY_SECONDS = Histogram("avs_live_latency_seconds", "Live frames: from the frame's arrival (decoded) "
                                 "to its mask being sent.",
                                 buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.5, 1, 2.5, 5))
LIVE_FRAMES = Counter("avs_live_frames_processed_total", "Live frames segmented.")
LIVE_FRAMES_DROPPED = Counter("avs_live_frames_dropped_total", "Live frames dropped, by reason (late: the model "
                              "was behind and a newer frame came, in drop_oldest mode).", ["reason"])
LIVE_FRAMES_SKIPPED = Counter("avs_live_frames_skipped_by_rate_total", "Live frames skipped because the session "
                              "asked for fewer frames a second (its fps cap); never dropped as late.")
STREAMS_STARTED = Counter("avs_streams_started_total", "REST streams (POST /streams) a worker started running "
                          "(a stream taken over after its worker died counts again).")
STREAMS_ENDED = Counter("avs_streams_ended_total", "REST stream runs that ended on a worker, by outcome (succeeded, "
                        "failed, cancelled; handed_back: the worker stopped; lease_lost: taken over).", ["status"])
BATCH_JOBS = Histogram("avs_inference_batch_jobs", "Jobs whose frames share an inference batch.",
                       buckets=(1, 2, 3, 4, 6, 8, 12, 16))


def observe_batch(frames: int, seconds: float, jobs: int) -> None:
    """The frame engine's callback after every inference call."""
    BATCH_SIZE.observe(frames)
    BATCH_SECONDS.observe(seconds)
    BATCH_JOBS.observe(jobs)


def serve_worker_metrics(port: int) -> int | None:
    """Expose this worker's metrics on `port` (0 = off); aggregated over processes in multiprocess mode.
    Returns the port it serves on: `port`, or, when `port` is taken (another worker on this host), a free port
    the system picked; None when off. Other bind errors raise `OSError`."""
    if port <= 0:
        return None
    registry = None
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    try:
        server, _ = start_http_server(port, **({"registry": registry} if registry is not None else {}))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        server, _ = start_http_server(0, **({"registry": registry} if registry is not None else {}))
    return int(server.server_port)
