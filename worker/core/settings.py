"""Service settings shared by the API and the workers (pydantic-settings, `AVS_` environment prefix).

One class for both processes: they must agree on the data directory, the broker and the limits, and
a field defined twice is a field that drifts. Torch-free (the API imports it).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.core.media.media_info import MediaLimits


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AVS_", env_file=".env", extra="ignore")

    data_dir: Path = Path("avs-data")  # uploads, job records, masks; shared volume in Docker Compose
    # None = embedded default: the private Redis that `avs serve` starts under data_dir/broker.
    broker_url: str | None = None
    # Job records, their locks, leases and admission live in Redis (worker.core.state, issue #24): the broker's
    # Redis (the private one in embedded mode) unless AVS_STATE_URL names another.
    state_url: str | None = None
    # Every state key starts with this, so several deployments (and tests) can share one Redis.
    state_prefix: str = Field("avs:state:", min_length=1)
    # Gone in #24 (Redis is the only backend): kept to refuse a left-over AVS_STATE_BACKEND=files clearly.
    state_backend: str | None = Field(None, exclude=True, repr=False)
    # A record lock in Redis expires after this (its holder died); shorter than the 10 s others wait for it.
    state_lock_ttl_s: float = Field(5.0, gt=0, lt=10)
    result_backend: str | None = None  # defaults to the broker when it is Redis; none in embedded mode
    # Upload and media limits (the API enforces them before a job exists); media defaults are MediaLimits'.
    max_upload_bytes: int = Field(1 << 30, gt=0)  # 1 GiB, enforced while the body streams in
    # one export of a job (PNG ZIP, COCO JSON, the videos): refused (413 export_too_large) when its estimate is
    # larger, removed when the file came out larger (worker.core.exports)
    max_export_bytes: int = Field(1 << 30, gt=0)
    max_duration_s: float = Field(MediaLimits.max_duration_s, gt=0)
    max_pixels: int = Field(MediaLimits.max_pixels, gt=0)
    max_backlog: int = Field(100, ge=1)  # queued jobs; more are refused with 429 + Retry-After
    retry_after_s: int = Field(30, ge=1)
    result_ttl_s: float = Field(24 * 3600.0, gt=0)  # finished jobs (records, masks, overlay) are deleted after this
    cleanup_interval_s: float = Field(300.0, gt=0)
    # Comma-separated keys; when set, every route except health and metrics needs one (X-API-Key).
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Worker side.
    variant: str | None = None  # None: the shipped demo checkpoint's variant
    checkpoint: str | None = None  # None: the shipped demo checkpoint
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?|mps)$")  # "cuda" on a GPU worker (one process per GPU)
    batch_size: int = Field(8, ge=1)  # the frame engine's maximum batch size (frames per inference call)
    max_batch_wait_ms: float = Field(5.0, ge=0)  # how long a batch that is not full waits for more frames
    jobs_per_worker: int = Field(4, ge=1)  # jobs one worker process runs at once, batched together
    # Longer than the longest job: Redis redelivers an unacknowledged task after this (acks_late).
    visibility_timeout_s: float = Field(4 * 3600.0, gt=0)
    heartbeat_s: float = Field(5.0, gt=0)  # a warm worker refreshes its heartbeat file this often
    # Job ownership (worker.core.leases): a running job's owner renews its lease every third of this; a lease
    # not renewed for this long means the owner is gone, and the reconciler requeues the job.
    lease_timeout_s: float = Field(30.0, gt=0)
    reconcile_interval_s: float = Field(5.0, gt=0)  # how often the API looks for expired leases and unsent jobs
    broker_timeout_s: float = Field(5.0, gt=0)  # every broker call gives up after this (503 + Retry-After)
    unsent_grace_s: float = Field(60.0, gt=0)  # a queued job without a sent message this old is sent again
    unsent_give_up_s: float = Field(3600.0, gt=0)  # ... and failed (not_ready) when it still is after this
    # A queued job whose message was sent this long ago and no longer waits in the broker's queue was taken and
    # never run (or lost): it is sent again (worker.core.leases, "sent but never taken").
    untaken_grace_s: float = Field(30.0, gt=0)
    worker_metrics_port: int = Field(9101, ge=0, le=65535)  # Prometheus endpoint of a worker process (0 = off)
    # Live sessions (worker.live): each worker serves them on its own WebSocket endpoint, which the API proxies.
    live_max_sessions: int = Field(4, ge=0)  # per worker process (0: no live sessions on this worker)
    live_host: str = "127.0.0.1"  # the worker's live endpoint binds here ("0.0.0.0" in containers)
    live_port: int = Field(0, ge=0, le=65535)  # 0: a free port, advertised in the worker's heartbeat
    live_advertise_host: str | None = None  # the host the API dials (default: live_host, or the hostname)
    live_idle_timeout_s: float = Field(10.0, gt=0)  # a session that receives no media this long ends
    live_max_duration_s: float = Field(3600.0, gt=0)  # a session ends (well) after this long
    # A pulled stream that drops is opened again (back-off 0.5 s doubling to 8 s) until this many seconds have
    # passed since its last frame; then the session ends (`ended_by: source_lost`). 0: end when it drops.
    live_reconnect_s: float = Field(30.0, ge=0)
    # Stream URLs a session may pull, by scheme and host ("udp://127.0.0.1,srt://camera.lan"); none by default:
    # a URL fetched for a client is a server-side request forgery hole until allow-listed.
    live_sources: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Media and results (issue #25, worker.core.objects): "file" (a directory under data_dir, one host) or
    # "s3://bucket/prefix" at object_store_endpoint (None: AWS) with these credentials (None: boto3's usual chain).
    object_store: str = Field("file", pattern=r"^(file|s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?)$")
    object_store_endpoint: str | None = None
    object_store_access_key: str | None = None
    object_store_secret_key: str | None = None
    object_store_region: str = "us-east-1"
    object_store_timeout_s: float = Field(5.0, gt=0)  # per request; tried twice, then 503 + Retry-After

    @field_validator("state_backend")
    @classmethod
    def _only_redis(cls, value: str | None) -> str | None:
        if value is not None and value.strip().lower() != "redis":
            raise ValueError("Redis is the only state backend since issue #24 (job.json + flock is gone): unset "
                             "AVS_STATE_BACKEND (or set it to 'redis'); AVS_STATE_URL names the Redis")
        return value

    @field_validator("api_keys", "live_sources", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    def media_limits(self) -> MediaLimits:
        """The media limits these settings set (the one place they are turned into `MediaLimits`)."""
        return MediaLimits(max_duration_s=self.max_duration_s, max_pixels=self.max_pixels)

    @property
    def embedded(self) -> bool:
        return not self.broker_url

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def objects_dir(self) -> Path:
        return self.data_dir / "objects"

    @property
    def workers_dir(self) -> Path:
        return self.data_dir / "workers"


@lru_cache
def get_settings() -> ServiceSettings:
    """The process's settings from the environment, validated once (`SettingsError` when invalid)."""
    try:
        return ServiceSettings()
    except ValidationError as exc:
        raise SettingsError(exc) from None


class SettingsError(ValueError):
    """Invalid `AVS_*` settings, with one line per problem naming the environment variable."""

    def __init__(self, exc: ValidationError) -> None:
        lines = []
        for error in exc.errors():
            name = "AVS_" + "_".join(str(part) for part in error["loc"]).upper()
            given = error.get("input")
            lines.append(f"{name}={given!r}: {error['msg']}" if given is not None else f"{name}: {error['msg']}")
        super().__init__("invalid settings: " + "; ".join(lines))
