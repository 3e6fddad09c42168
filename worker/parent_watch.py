"""A supervised worker stops when its supervisor is gone (`avs serve` killed with SIGKILL, or crashed).

`avs serve` starts its worker with `AVS_SUPERVISOR_PID` set. Without this watch, a SIGKILLed `avs serve`
left its worker running, unsupervised, beside the worker of the next `avs serve` (issue #27). Linux's
PR_SET_PDEATHSIG is not enough: it fires when the *thread* that spawned the child exits, and the supervisor
restarts its worker from a thread of its own. So the worker watches its parent: once `getppid()` is no longer
the supervisor, it stops itself: SIGTERM first (Celery's warm shutdown: no new job is taken), and if it has
not ended `EXIT_GRACE_S` later (a warm shutdown waits for the jobs in flight, which may take minutes), it
exits at once. Its jobs are not lost either way: their leases expire and the next worker resumes each after
its last complete frame, exactly as after a SIGKILL. Torch-free.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger("avs.worker")
ENV = "AVS_SUPERVISOR_PID"
POLL_S = 0.5
EXIT_GRACE_S = 10.0


def watch_supervisor(poll_s: float = POLL_S, exit_grace_s: float = EXIT_GRACE_S) -> threading.Thread | None:
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
                stop.wait(exit_grace_s)
                log.error("still running %g s after its supervisor died: exiting now (the jobs in flight are "
                          "resumed through their leases)", exit_grace_s)
                os._exit(70)  # EX_SOFTWARE

    thread = threading.Thread(target=watch, name="supervisor-watch", daemon=True)
    thread.start()
    return thread
