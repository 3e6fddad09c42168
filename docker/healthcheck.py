"""Container health checks for the API and worker images (stdlib only: no curl in the images).

    python healthcheck.py api      # GET http://127.0.0.1:8000/healthz answers 200 (AVS_HEALTHCHECK_URL overrides)
    python healthcheck.py worker   # this container's worker heartbeat is fresh and its model is warm

A worker writes its heartbeat `<hostname>-<pid>` as an expiring key in the state Redis every `AVS_HEARTBEAT_S`
seconds once its model is loaded and warmed up (worker/heartbeat.py, `worker.core.state.heartbeats`), so
"healthy" means "warm and alive", not only "the process exists". The hostname of a container is its own, so
replicas sharing one Redis do not vouch for each other. The worker check reads the key with the worker's own
package (the image's venv: `AVS_STATE_URL` / `AVS_BROKER_URL`, `AVS_STATE_PREFIX`); the API check stays
stdlib-only. Exit status 0 = healthy, 1 = unhealthy (Docker's HEALTHCHECK contract).
"""

from __future__ import annotations

import os
import socket
import sys
import time
import urllib.error
import urllib.request
from typing import Any

API_URL = "http://127.0.0.1:8000/healthz"


def check_api(url: str, timeout_s: float = 4.0) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status == 200, f"{url}: HTTP {resp.status}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url}: {exc}"


def check_worker(settings: Any, hostname: str, now: float | None = None) -> tuple[bool, str]:
    """(healthy, why) for the worker on `hostname`: one of its heartbeats (`<hostname>-<pid>`) in the state Redis
    of `settings` (a `worker.core.settings.ServiceSettings`) is warm and at most `max(30, 6 × heartbeat_s)`
    seconds old. A Redis that does not answer is unhealthy, with the reason."""
    from worker.core.state.errors import StateUnavailable
    from worker.core.state.heartbeats import heartbeat_board, read_heartbeats

    now = time.time() if now is None else now
    max_age = max(30.0, 6 * settings.heartbeat_s)  # a few missed beats are tolerated (a GC pause, a slow Redis)
    try:
        client, prefix = heartbeat_board(settings)
        beats = [b for b in read_heartbeats(client, prefix).beats if b.name.startswith(f"{hostname}-")]
    except StateUnavailable as exc:
        return False, f"worker heartbeats not readable: {exc}"
    if not beats:
        return False, f"no heartbeat for {hostname} (model still loading, or it failed)"
    for beat in beats:
        if beat.warm and now - beat.last_seen <= max_age:
            return True, f"{beat.name}: warm, last seen {beat.age_s(now):.0f}s ago"
    return False, f"heartbeat of {hostname} older than {max_age:.0f}s or model not warm"


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("api", "worker"):
        sys.stderr.write("usage: healthcheck.py api|worker\n")
        return 2
    if argv[0] == "api":
        ok, why = check_api(os.environ.get("AVS_HEALTHCHECK_URL", API_URL))
    else:
        from worker.core.settings import ServiceSettings  # the worker image's venv (see the module docstring)

        ok, why = check_worker(ServiceSettings(), socket.gethostname())
    sys.stdout.write(why + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
