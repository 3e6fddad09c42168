"""`avs serve`'s own processes: the worker it supervises, and where its metrics files live.

Torch-free: `avs serve` runs the API in this process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from worker.core.settings import ServiceSettings
from worker.core.state.heartbeats import forget, heartbeat_board


class MetricsDirError(ValueError):
    """`PROMETHEUS_MULTIPROC_DIR` points into the data directory (where uploads can fill the disk)."""

    code = "invalid_settings"


def _runtime_base() -> Path:
    """A memory-backed folder for this user: `$XDG_RUNTIME_DIR`, else `/dev/shm`, else the temp folder."""
    for candidate in (os.environ.get("XDG_RUNTIME_DIR"), "/dev/shm"):
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK):
            return Path(candidate)
    return Path(tempfile.gettempdir())


def _inside(path: Path, directory: Path) -> bool:
    return path.resolve().is_relative_to(directory.resolve())


def private_metrics_dir(data_dir: Path) -> Path:
    """An empty folder for prometheus_client's multi-process files, never on the data volume.

    prometheus_client keeps each process's metrics in files it maps into memory; on a full volume the first
    write that needs a new page kills the process with SIGBUS (issue #27: a full data volume took `avs serve`
    and its worker down). So the files live in a memory-backed runtime folder of this `avs serve` alone
    (`<runtime>/avs-metrics-<data dir hash>-<pid>`), emptied at start (stale files of dead processes would
    count forever) and removed at exit; folders left by `avs serve` processes that are gone are removed too.
    `PROMETHEUS_MULTIPROC_DIR`, when set, is used instead (the Compose file mounts a tmpfs there), and refused
    when it lies inside the data directory. Raises `MetricsDirError` for that.
    """
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        directory = Path(given)
        if _inside(directory, data_dir):
            raise MetricsDirError(f"PROMETHEUS_MULTIPROC_DIR={given} is inside the data directory {data_dir}: "
                                  "its memory-mapped files would crash the service when uploads fill that disk; "
                                  "point it at a tmpfs (or leave it unset)")
    else:
        base = _runtime_base()
        tag = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
        for stale in base.glob(f"avs-metrics-{tag}-*"):
            pid = stale.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        directory = base / f"avs-metrics-{tag}-{os.getpid()}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)  # exist_ok: the folder may be a mount point
    return directory


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkerSupervisor:
    """`avs serve`'s worker: started in its own session, restarted when it dies (an out-of-memory kill, a
    GPU fault) with a back-off of 1 s doubling to 30 s (reset after a minute of life), stopped with a warm
    SIGTERM. Its jobs are recovered through their leases by the API's reconciler, not by this class.

    When the worker dies, what it left that would mislead is cleared at once: its heartbeat key (else
    `/readyz` says ready and `/live` picks it for up to 3 heartbeats) and its live gauges in the metrics
    folder (else `avs_live_sessions` keeps counting its sessions). The worker stops itself when this process
    is gone (`worker.parent_watch`, through `AVS_SUPERVISOR_PID`).
    """

    def __init__(self, command: list[str], *, settings: ServiceSettings) -> None:
        self.command = command
        self.settings = settings
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.started_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)

    def _spawn(self) -> None:
        # Its own session, so a Ctrl-C or a group SIGTERM does not reach it twice (a second signal turns
        # Celery's warm shutdown into a cold one); `stop()` sends the one SIGTERM.
        env = {**os.environ, "AVS_SUPERVISOR_PID": str(os.getpid())}
        self.proc = subprocess.Popen(self.command, start_new_session=True, env=env)
        self.started_at = time.monotonic()

    def start(self) -> WorkerSupervisor:
        self._spawn()
        self._thread.start()
        return self

    def _watch(self) -> None:
        backoff = 1.0
        while not self._stop.wait(0.5):
            assert self.proc is not None
            code = self.proc.poll()  # reaps it: a dead worker never lingers as a zombie
            if code is None:
                continue
            self._forget(self.proc.pid)
            if time.monotonic() - self.started_at > 60:
                backoff = 1.0
            sys.stderr.write(f"avs serve: the worker exited ({code}); restarting in {backoff:g}s\n")
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, 30.0)
            self.restarts += 1
            self._spawn()

    def _forget(self, pid: int) -> None:
        """Clear what the dead worker `pid` left: its heartbeat and its live gauges."""
        try:
            client, prefix = heartbeat_board(self.settings)
            forget(client, prefix, f"{socket.gethostname()}-{pid}")
        except Exception as exc:  # StateUnavailable, or its settings unfit: the key expires by itself
            sys.stderr.write(f"avs serve: the dead worker's heartbeat not removed ({exc}); it expires by itself\n")
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # warm shutdown: the current batch ends, the job is handed back
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc is not None:
            self._forget(self.proc.pid)
