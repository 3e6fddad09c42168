"""Is a process that wrote a heartbeat still alive? Only answerable when it shares our PID namespace.

A heartbeat (`worker.heartbeat`) says which process wrote it; a reader on the same host and in the same PID
namespace (the embedded `avs serve`, several workers on one machine) can ask the kernel whether that process
still exists instead of waiting for the beat to go stale (3 × `heartbeat_s`). Containers have namespaces of
their own: there the identity differs, and the staleness rule alone applies. Torch-free (the API imports it).
"""

from __future__ import annotations

import functools
import os


@functools.cache
def pid_namespace() -> str | None:
    """`<boot id>/<PID namespace inode>`: equal for two processes exactly when their PIDs mean the same
    processes (same kernel boot, same namespace). None where /proc does not tell."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return None


def process_gone(pid: object, namespace: object) -> bool:
    """True when `pid` of `namespace` (as `pid_namespace()` gave it in the writer) is known not to run any more:
    same namespace as ours and no such process (or only its zombie). False when alive or unknowable."""
    if not isinstance(pid, int) or pid <= 0 or namespace is None or namespace != pid_namespace():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it exists, under another user
    try:  # a zombie has exited: only its exit status waits for its parent
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
