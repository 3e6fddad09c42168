"""`avs serve`'s own output: quiet by default (no Celery banner, no superuser warning), everything with
--verbose; a taken worker metrics port is said and replaced by a free one (#23)."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import httpx

from .conftest import free_port, running_embedded, wait_until

BANNER = "[queues]"
ROOT_WARNING = "superuser privileges"


def test_quiet_by_default_and_a_taken_metrics_port_is_replaced(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        with running_embedded(tmp_path / "data", {"AVS_WORKER_METRICS_PORT": str(taken)}) as service:
            log = service.procs[0].log
            said = wait_until(lambda: re.search(r"metrics on port (\d+) \(port (\d+), AVS_WORKER_METRICS_PORT, "
                                                r"is taken\)", log.read_text()), 30, "the metrics port message")
            assert int(said.group(2)) == taken
            metrics = httpx.get(f"http://127.0.0.1:{said.group(1)}/metrics", timeout=10)
            assert metrics.status_code == 200
            assert "avs_" in metrics.text
            text = log.read_text()
    assert BANNER not in text
    if os.geteuid() == 0:  # the warning Celery prints for root, when it is root
        assert ROOT_WARNING not in text


def test_verbose_shows_the_worker_banner(tmp_path: Path) -> None:
    with running_embedded(tmp_path / "data", {"AVS_WORKER_METRICS_PORT": str(free_port())},
                          extra_args=("--verbose",)) as service:
        log = service.procs[0].log
        wait_until(lambda: BANNER in log.read_text(), 30, "the banner")
        text = log.read_text()
    assert "avs.segment" in text  # the banner's task list
    if os.geteuid() == 0:
        assert ROOT_WARNING in text
