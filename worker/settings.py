"""Service settings shared by the API and the workers (pydantic-settings, `AVS_` environment prefix).

One class for both processes: they must agree on the data directory, the broker and the limits, and
a field defined twice is a field that drifts. Torch-free (the API imports it).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AVS_", env_file=".env", extra="ignore")

    data_dir: Path = Path("avs-data")  # uploads, job records, masks; shared volume in Docker Compose
    # None = embedded default: Celery's filesystem transport under data_dir/broker, no server needed.
    broker_url: str | None = None
    result_backend: str | None = None  # defaults to the broker when it is Redis; none in embedded mode
    # Upload and media limits (the API enforces them before a job exists).
    max_upload_bytes: int = 1 << 30  # 1 GiB, enforced while the body streams in
    max_duration_s: float = 600.0
    max_pixels: int = 3840 * 2160
    max_backlog: int = 100  # queued jobs; more are refused with 429 + Retry-After
    retry_after_s: int = 30
    result_ttl_s: float = 24 * 3600.0  # finished jobs (records, masks, overlay) are deleted after this
    cleanup_interval_s: float = 300.0
    # Comma-separated keys; when set, every route except health and metrics needs one (X-API-Key).
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Worker side.
    variant: str | None = None  # None: the shipped demo checkpoint's variant
    checkpoint: str | None = None  # None: the shipped demo checkpoint
    device: str = "cpu"  # "cuda" on a GPU worker (one worker process per GPU)
    batch_size: int = 8
    # Longer than the longest job: Redis redelivers an unacknowledged task after this (acks_late).
    visibility_timeout_s: float = 4 * 3600.0
    heartbeat_s: float = 5.0  # a warm worker refreshes its heartbeat file this often
    worker_metrics_port: int = 9101  # Prometheus endpoint of a worker process (0 = off)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @property
    def embedded(self) -> bool:
        return not self.broker_url

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def workers_dir(self) -> Path:
        return self.data_dir / "workers"


@lru_cache
def get_settings() -> ServiceSettings:
    return ServiceSettings()
