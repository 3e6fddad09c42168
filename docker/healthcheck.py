"""Container health checks for the API and worker images (stdlib only: no curl in the images).

    python healthcheck.py api      # GET http://127.0.0.1:8000/healthz answers 200 (AVS_HEALTHCHECK_URL overrides)
    python healthcheck.py worker   # this container's worker heartbeat is fresh and its model is warm

A worker writes `AVS_DATA_DIR/workers/<hostname>-<pid>.json` every `AVS_HEARTBEAT_S` seconds once its
model is loaded and warmed up (worker/heartbeat.py), so "healthy" means "warm and alive", not only "the
process exists". The hostname of a container is its own, so replicas sharing the data volume do not
vouch for each other. Exit status 0 = healthy, 1 = unhealthy (Docker's HEALTHCHECK contract).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

API_URL = "http://127.0.0.1:8000/healthz"


def check_api(url: str, timeout_s: float = 4.0) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status == 200, f"{url}: HTTP {resp.status}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url}: {exc}"


def check_worker(data_dir: Path, hostname: str, heartbeat_s: float, now: float | None = None) -> tuple[bool, str]:
    now = time.time() if now is None else now
    max_age = max(30.0, 6 * heartbeat_s)  # a few missed beats are tolerated (GC pause, a slow disk)
    beats = sorted((data_dir / "workers").glob(f"{hostname}-*.json"))
    if not beats:
        return False, f"no heartbeat for {hostname} in {data_dir / 'workers'} (model still loading, or it failed)"
    for path in beats:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            last_seen = float(record.get("last_seen", path.stat().st_mtime))
        except (OSError, ValueError):
            continue  # being replaced right now, or unreadable: look at the others
        if record.get("warm", True) and now - last_seen <= max_age:
            return True, f"{path.name}: warm, last seen {now - last_seen:.0f}s ago"
    return False, f"heartbeat of {hostname} older than {max_age:.0f}s or model not warm"


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("api", "worker"):
        sys.stderr.write("usage: healthcheck.py api|worker\n")
        return 2
    if argv[0] == "api":
        ok, why = check_api(os.environ.get("AVS_HEALTHCHECK_URL", API_URL))
    else:
        ok, why = check_worker(Path(os.environ.get("AVS_DATA_DIR", "avs-data")), socket.gethostname(),
                               float(os.environ.get("AVS_HEARTBEAT_S", "5")))
    sys.stdout.write(why + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
