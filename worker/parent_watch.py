"""A supervised worker stops when its supervisor is gone (`avs serve` killed with SIGKILL, or crashed).

`avs serve` starts its worker with `AVS_SUPERVISOR_PID` set. Without this watch, a SIGKILLed `avs serve`
left its worker running, unsupervised, beside the worker of the next `avs serve` (issue #27). Linux's
PR_SET_PDEATHSIG is not enough: it fires when the *thread* that spawned the child exits, and the supervisor
restarts its worker from a thread of its own. So the worker watches its parent: once `getppid()` is no longer
the supervisor, it stops itself with SIGTERM (Celery's warm shutdown: each job ends its current batch and
is handed back through its lease, which the next worker resumes). Torch-free.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger("avs.worker")
ENV = "AVS_SUPERVISOR_PID"
POLL_S = 0.5


def watch_supervisor(poll_s: float = POLL_S) -> threading.Thread | None:
    """Start the watch when `AVS_SUPERVISOR_PID` names our parent; None when unsupervised."""
    try:
        supervisor = int(os.environ.get(ENV, ""))
    except ValueError:
        return None
    if supervisor <= 0:
        return None

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(poll_s):
            if os.getppid() != supervisor:
                log.error("the supervising `avs serve` (pid %d) is gone: stopping this worker", supervisor)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    thread = threading.Thread(target=watch, name="supervisor-watch", daemon=True)
    thread.start()
    return thread
