"""The embedded default's broker: a private Redis that `avs serve` starts for its data directory.

Why Redis and not a broker that needs no server (issue #27). kombu's filesystem transport, the embedded
broker until then, lost jobs: it creates a message file and then writes it, so a worker could take the file
in between, read 0 bytes and exit; it deletes a message when a worker takes it (no acknowledgement, so a
worker that dies before taking the job's lease loses it); and it was a second implementation of what
production runs on Redis. A private `redis-server` (Debian's package, installed by the set-up like ffmpeg)
gives the embedded mode the production broker: atomic pushes, acknowledgements, redelivery, the same code.

* **Where.** Loopback only, on a port chosen at the first start and kept while it stays free (so workers
  that outlive a restart of `avs serve` reconnect to the same address), with a random password. Its
  address is `AVS_DATA_DIR/broker/endpoint.json` (mode 0600): `avs worker` and every API process of the
  same data directory find it there.
* **Persistence.** Append-only file under `AVS_DATA_DIR/broker`, fsync every second: a restart loses no
  message older than a second, and a message lost anyway is sent again by the reconciler
  (`worker.core.leases`, "sent but never taken"). `maxmemory-policy noeviction`: a full Redis refuses a
  write (the submission answers 503) instead of dropping a queued message.
* **Lifetime.** Started before the API and the worker, stopped after them (SHUTDOWN, which writes the
  append-only file). It is in a session of its own (a Ctrl-C to the terminal does not stop it before the
  worker has handed its jobs back) and asks Linux for SIGTERM when `avs serve` dies (PR_SET_PDEATHSIG), so
  it never outlives its owner. A second `avs serve` on the same data directory uses the running one and
  leaves it running when it stops.

Torch-free: the API imports it (readiness reads the endpoint).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.core.settings import ServiceSettings

ENDPOINT_FILE = "endpoint.json"
START_TIMEOUT_S = 15.0


class PrivateRedisError(RuntimeError):
    """The private Redis could not be started (no `redis-server`, or it did not answer in time)."""

    code = "broker_unavailable"


@dataclass(frozen=True)
class Endpoint:
    """Where the private Redis listens."""

    host: str
    port: int
    password: str

    @property
    def url(self) -> str:
        """A `redis://` URL (database 0) for Celery and redis-py."""
        return f"redis://:{self.password}@{self.host}:{self.port}/0"


def broker_url(settings: ServiceSettings) -> str | None:
    """`AVS_BROKER_URL`, else the address of the data directory's private Redis (None while none is recorded)."""
    if settings.broker_url:
        return settings.broker_url
    endpoint = read_endpoint(settings.broker_dir)
    return endpoint.url if endpoint is not None else None


def endpoint_path(broker_dir: Path) -> Path:
    return broker_dir / ENDPOINT_FILE


def read_endpoint(broker_dir: Path) -> Endpoint | None:
    """The recorded endpoint of this data directory's private Redis; None when there is none (yet)."""
    try:
        data = json.loads(endpoint_path(broker_dir).read_text(encoding="utf-8"))
        return Endpoint(host=str(data["host"]), port=int(data["port"]), password=str(data["password"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_endpoint(broker_dir: Path, endpoint: Endpoint) -> None:
    path = endpoint_path(broker_dir)
    tmp = path.with_name(f".{ENDPOINT_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the password
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"host": endpoint.host, "port": endpoint.port, "password": endpoint.password}, f)
    os.replace(tmp, path)  # readers never see half a file


def answers(endpoint: Endpoint, timeout_s: float = 1.0) -> bool:
    """True when a Redis with this password answers PING at the endpoint."""
    import redis

    client = redis.Redis(host=endpoint.host, port=endpoint.port, password=endpoint.password,
                         socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _terminate_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (PR_SET_PDEATHSIG; the parent's main thread
    spawns it, so the signal comes with the process's death, not a thread's)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class PrivateRedis:
    """A `redis-server` for one data directory (see the module docstring).

    `start()` returns the endpoint, reusing a private Redis that already answers; `stop()` shuts down the one
    this object started (and only that one). Raises `PrivateRedisError` when `redis-server` is missing or does
    not answer within `START_TIMEOUT_S`.
    """

    def __init__(self, broker_dir: Path, *, host: str = "127.0.0.1", executable: str | None = None) -> None:
        self.broker_dir = Path(broker_dir)
        self.host = host
        self.executable = executable or shutil.which("redis-server")
        self.proc: subprocess.Popen | None = None
        self.endpoint: Endpoint | None = None

    @property
    def owned(self) -> bool:
        """True when this object started the server (and will stop it)."""
        return self.proc is not None

    def start(self) -> Endpoint:
        self.broker_dir.mkdir(parents=True, exist_ok=True)
        known = read_endpoint(self.broker_dir)
        if known is not None and answers(known):
            self.endpoint = known  # another `avs serve` of this data directory runs it: share, never stop it
            return known
        if self.executable is None:
            raise PrivateRedisError("the embedded default needs `redis-server` (Debian/Ubuntu: apt-get install "
                                    "redis-server; `make setup` installs it), or set AVS_BROKER_URL to a Redis")
        port = known.port if known is not None and known.host == self.host and _port_free(self.host, known.port) \
            else _free_port(self.host)
        endpoint = Endpoint(self.host, port, secrets.token_hex(16))
        log_path = self.broker_dir / "redis.log"
        command = [self.executable, "--bind", self.host, "--port", str(port), "--requirepass", endpoint.password,
                   "--dir", str(self.broker_dir.resolve()), "--appendonly", "yes", "--appendfsync", "everysec",
                   "--save", "", "--maxmemory-policy", "noeviction", "--daemonize", "no",
                   "--logfile", str(log_path.resolve()), "--protected-mode", "yes"]
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=_terminate_with_parent)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not answers(endpoint, timeout_s=0.5):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._kill()
                tail = log_path.read_text(errors="replace")[-800:] if log_path.exists() else ""
                raise PrivateRedisError(f"the private Redis did not start on {self.host}:{port}: {tail.strip()}")
            time.sleep(0.05)
        _write_endpoint(self.broker_dir, endpoint)
        self.endpoint = endpoint
        return endpoint

    def stop(self, timeout_s: float = 10.0) -> None:
        """Shut the server down (the append-only file is written first); nothing when it was not ours."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # Redis: flush the append-only file, then exit
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._kill()

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
