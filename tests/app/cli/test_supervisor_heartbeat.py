"""`avs serve`'s supervisor deletes a dead worker's heartbeat key at once (`app.cli.supervisor`), on the test
session's real redis-server (`state_env`, tests/conftest.py), and leaves the other workers' alone."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from app.cli.supervisor import WorkerSupervisor
from worker.core.settings import ServiceSettings
from worker.core.state.heartbeats import WorkerHeartbeat, heartbeat_board, read_heartbeats, write_heartbeat


def _beat(name: str) -> WorkerHeartbeat:
    return WorkerHeartbeat(name=name, hostname="host", pid=1, warm=True, last_seen=time.time())


def test_the_supervisor_forgets_a_dead_worker_at_once(state_env, tmp_path: Path) -> None:
    settings = ServiceSettings(_env_file=None, data_dir=tmp_path, heartbeat_s=5)
    client, prefix = heartbeat_board(settings)
    name = f"{socket.gethostname()}-999999"
    write_heartbeat(client, prefix, _beat(name), ttl_s=60)
    write_heartbeat(client, prefix, _beat("another-host-999999"), ttl_s=60)
    WorkerSupervisor(["true"], settings=settings)._forget(999999)
    assert [b.name for b in read_heartbeats(client, prefix).beats] == ["another-host-999999"]
