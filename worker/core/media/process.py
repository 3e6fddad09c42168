"""Child processes with a hard deadline, for ffmpeg/ffprobe on hostile input.

Why this exists instead of `subprocess.run(timeout=...)`:

* ffmpeg reading a live HLS playlist (or a FIFO, or a slow network-like source) can ignore SIGTERM and
  poll forever, and `subprocess.run` only kills the direct child. Every child here starts in its own
  session (`start_new_session=True`, so its process group id is its pid) and the deadline sends SIGKILL
  to the whole group, which cannot be caught or ignored.
* A streaming decoder writes megabytes of frames on stdout while it logs on stderr; if nobody drains
  stderr the child blocks on a full pipe and the deadline fires for no reason. `BoundedProcess` drains
  stderr on a background thread, keeps only the tail, and hands each line to listeners as it arrives
  (the frame reader parses `showinfo` timestamps that way).
* Nothing is left behind: the group is killed and the child reaped on every exit path, including a
  consumer that stops reading early or an exception in the caller.

This module is torch-free and imports nothing from `app`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import IO

STDERR_TAIL_BYTES = 1 << 20
"""How much of a child's stderr we keep: enough for any error message, bounded for hostile input."""

_MAX_LINE_BYTES = 64 * 1024
"""A line longer than this is cut into pieces, so one endless line cannot grow memory without bound."""

_REAP_TIMEOUT_S = 10.0
"""How long to wait for a SIGKILLed child to be reaped; SIGKILL makes this instant in practice."""


def kill_process_group(pgid: int) -> None:
    """SIGKILL every process in the group `pgid`; a group that is already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _tail_text(data: bytes, limit: int = STDERR_TAIL_BYTES) -> str:
    """Decode the last `limit` bytes of a child's output; undecodable bytes are replaced, never fatal."""
    return data[-limit:].decode("utf-8", errors="replace")


@dataclass(frozen=True)
class BoundedResult:
    """What a bounded child produced: exit status, stdout bytes, the tail of stderr, and whether the
    deadline killed it (then `returncode` is the negative signal number and output may be partial)."""

    returncode: int
    stdout: bytes
    stderr: str
    timed_out: bool


def run_bounded(args: list[str], *, timeout_s: float, input_bytes: bytes | None = None) -> BoundedResult:
    """Run `args` to completion or until `timeout_s` seconds have passed, whichever comes first.

    On the deadline the whole process group is SIGKILLed and the child reaped, so the call returns
    (with `timed_out=True`) no later than shortly after the deadline. The group is also killed after a
    normal exit, which removes any helper the child left running. stdout is returned whole (callers bound
    it with ffmpeg's own `-t`/`-frames` options); stderr is cut to its last ~1 MB.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    popen = subprocess.Popen(
        list(args),
        stdin=subprocess.PIPE if input_bytes is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    timed_out = False
    try:
        try:
            out, err = popen.communicate(input_bytes, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_process_group(popen.pid)
            # The group is dead, so the pipes reach EOF at once; the timeout only guards against a child
            # stuck in the kernel (uninterruptible sleep), which SIGKILL cannot hurry.
            try:
                out, err = popen.communicate(timeout=_REAP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                out, err = b"", b""
    finally:
        # Runs on success, on the deadline and on exceptions (KeyboardInterrupt included): kill whatever
        # is left of the group and reap the child so that it never lingers as a zombie. The group id cannot
        # be reused while any member is alive, so this cannot hit an unrelated process.
        kill_process_group(popen.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=_REAP_TIMEOUT_S)
        for stream in (popen.stdin, popen.stdout, popen.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
    return BoundedResult(
        returncode=popen.returncode if popen.returncode is not None else -signal.SIGKILL,
        stdout=out,
        stderr=_tail_text(err),
        timed_out=timed_out,
    )


StderrListener = Callable[[str], None]


class BoundedProcess:
    """A streaming child process with a deadline, used as a context manager.

    ```
    with BoundedProcess(["ffmpeg", ...], timeout_s=60, on_stderr_line=parse) as proc:
        data = proc.popen.stdout.read(n)
        ...
        status = proc.wait()
    if proc.timed_out: ...
    ```

    * `popen` is the `subprocess.Popen`; stdin/stdout are pipes when asked for, else /dev/null.
    * stderr is always a pipe, drained by a daemon thread: each line (without its end-of-line) goes to
      every listener as soon as it arrives, and the last ~1 MB is kept for `stderr_text()`.
    * A watchdog timer SIGKILLs the process group at the deadline and sets `timed_out`.
    * Leaving the `with` block (normally, by an exception, or because a generator using it was closed)
      kills the group if it is still running and reaps the child.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        timeout_s: float,
        stdin: bool = False,
        stdout: bool = True,
        on_stderr_line: StderrListener | None = None,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.args = list(args)
        self.timeout_s = timeout_s
        self.timed_out = False
        self.listener_errors: list[BaseException] = []
        self._listeners: list[StderrListener] = [on_stderr_line] if on_stderr_line is not None else []
        self._tail: deque[str] = deque()
        self._tail_bytes = 0
        self._lock = threading.Lock()
        self._closed = False
        self.popen: subprocess.Popen[bytes] = subprocess.Popen(
            self.args,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            pass_fds=pass_fds,  # extra output pipes (a live session's sound)
        )
        assert self.popen.stderr is not None
        self._stderr_thread = threading.Thread(
            target=self._drain_stderr, args=(self.popen.stderr,), name=f"stderr-{self.popen.pid}", daemon=True
        )
        self._stderr_thread.start()
        self._watchdog = threading.Timer(timeout_s, self._on_deadline)
        self._watchdog.daemon = True
        self._watchdog.start()

    # ------------------------------------------------------------------------------------ stderr
    def add_stderr_listener(self, callback: StderrListener) -> None:
        """Call `callback(line)` for every stderr line from now on (use `on_stderr_line` to see them all).

        Callbacks run on the drain thread: keep them short. An exception in one is recorded in
        `listener_errors` and does not stop the draining (a stalled drain would stall the child).
        """
        with self._lock:
            self._listeners.append(callback)

    def stderr_text(self) -> str:
        """The last ~1 MB of what the child wrote on stderr so far, lines joined by newlines."""
        with self._lock:
            return "\n".join(self._tail)

    def stderr_finished(self) -> bool:
        """True once the child's stderr reached end-of-file and every line went to the listeners."""
        return not self._stderr_thread.is_alive()

    def join_stderr(self, timeout_s: float | None = None) -> bool:
        """Wait until stderr is fully drained (the child exited or closed it); True when it is."""
        self._stderr_thread.join(timeout_s)
        return not self._stderr_thread.is_alive()

    def _emit(self, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace")
        with self._lock:
            listeners = list(self._listeners)
            self._tail.append(line)
            self._tail_bytes += len(raw) + 1
            while self._tail_bytes > STDERR_TAIL_BYTES and len(self._tail) > 1:
                self._tail_bytes -= len(self._tail.popleft().encode("utf-8", errors="replace")) + 1
        for listener in listeners:
            try:
                listener(line)
            except Exception as exc:  # a broken parser must not block the child on a full pipe
                with self._lock:
                    if len(self.listener_errors) < 16:
                        self.listener_errors.append(exc)

    def _drain_stderr(self, stream: IO[bytes]) -> None:
        """Read stderr until EOF, splitting on '\\n' and '\\r' (ffmpeg's progress lines use '\\r')."""
        pending = b""
        fd = stream.fileno()
        try:
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                pending += chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    self._emit(raw)
                while len(pending) > _MAX_LINE_BYTES:
                    self._emit(pending[:_MAX_LINE_BYTES])
                    pending = pending[_MAX_LINE_BYTES:]
            if pending:
                self._emit(pending)
        finally:
            with contextlib.suppress(OSError):
                stream.close()

    # -------------------------------------------------------------------------------- lifecycle
    def _on_deadline(self) -> None:
        if self.popen.poll() is None:
            self.timed_out = True
            kill_process_group(self.popen.pid)

    def poll(self) -> int | None:
        """The exit status if the child has finished, else None."""
        return self.popen.poll()

    def wait(self) -> int:
        """Wait for the child to exit (the watchdog bounds this by the deadline) and for stderr to be
        fully drained, so that `stderr_text()` and the listeners have seen everything; return the status."""
        returncode = self.popen.wait()
        self.join_stderr(_REAP_TIMEOUT_S)
        return returncode

    def kill(self) -> None:
        """SIGKILL the child's whole process group now (idempotent)."""
        if self.popen.returncode is None:
            kill_process_group(self.popen.pid)

    def close(self) -> None:
        """Stop the watchdog, kill the group if it still runs, reap the child and close the pipes."""
        if self._closed:
            return
        self._closed = True
        self._watchdog.cancel()
        # Unconditionally: a running child dies, and after a normal exit anything it left in its group goes too.
        kill_process_group(self.popen.pid)
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=_REAP_TIMEOUT_S)
        self.join_stderr(_REAP_TIMEOUT_S)

    def __enter__(self) -> BoundedProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
