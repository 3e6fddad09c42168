"""Bounded child processes: the deadline kills the whole process group, nothing is left behind, and a
child that floods stderr never blocks."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

from worker.core.media.process import STDERR_TAIL_BYTES, BoundedProcess, run_bounded


def _gone(pid: int) -> bool:
    """True when no process (not even a zombie) has this pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _dead(pid: int) -> bool:
    """Gone, or a zombie waiting for its (new) parent to reap it: either way it runs no more."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def _group_dead(pgid: int) -> bool:
    """Every process of the group is gone or a zombie (zombies still count as members for killpg, and a
    container's pid 1 may never reap the grandchildren it inherits)."""
    members = [int(p) for p in os.listdir("/proc") if p.isdigit() and _pgid_of(int(p)) == pgid]
    return all(_dead(pid) for pid in members)


def _pgid_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[2])


def test_run_bounded_returns_output_and_status() -> None:
    result = run_bounded([sys.executable, "-c", "import sys; sys.stdout.write('out'); sys.stderr.write('err');"
                          "sys.exit(3)"], timeout_s=30)
    assert (result.returncode, result.stdout, result.stderr, result.timed_out) == (3, b"out", "err", False)
    echoed = run_bounded(["cat"], timeout_s=30, input_bytes=b"x" * 200_000)
    assert echoed.stdout == b"x" * 200_000


def test_run_bounded_kills_the_whole_group_at_the_deadline() -> None:
    # The shell starts a grandchild that would outlive a kill of the shell alone.
    started = time.monotonic()
    result = run_bounded(["sh", "-c", "sleep 30 & echo $$ $!; wait"], timeout_s=1.0)
    elapsed = time.monotonic() - started
    assert result.timed_out
    assert result.returncode < 0
    assert 0.9 < elapsed < 5.0
    shell_pid, grandchild_pid = (int(x) for x in result.stdout.split())
    assert _gone(shell_pid), "the child must be reaped, not left as a zombie"
    # The grandchild was SIGKILLed with its group, but a kill is delivered asynchronously (one CI run saw it
    # still alive right after run_bounded returned); it is reparented to init, which may reap it a little
    # later (or never, in a container whose pid 1 does not reap): dead means gone or a zombie.
    deadline = time.monotonic() + 5
    while not (_dead(grandchild_pid) and _group_dead(shell_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _dead(grandchild_pid)
    assert _group_dead(shell_pid)


def test_run_bounded_cleans_up_helpers_left_by_a_child_that_exited() -> None:
    # The child exits at once but leaves a background helper holding no pipe: it must not survive.
    result = run_bounded(["sh", "-c", "sleep 30 </dev/null >/dev/null 2>&1 & echo $$"], timeout_s=10)
    assert not result.timed_out
    assert result.returncode == 0
    pgid = int(result.stdout)
    deadline = time.monotonic() + 5  # SIGKILL is delivered asynchronously (see the test above)
    while not _group_dead(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _group_dead(pgid)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_ffmpeg_blocked_on_a_fifo_is_killed_at_the_deadline(tmp_path: Path) -> None:
    fifo = tmp_path / "input.mp4"
    os.mkfifo(fifo)
    started = time.monotonic()
    result = run_bounded(["ffmpeg", "-nostdin", "-i", str(fifo), "-f", "null", "-"], timeout_s=1.0)
    assert result.timed_out
    assert time.monotonic() - started < 5.0


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_ffmpeg_polling_a_live_playlist_is_killed_at_the_deadline(tmp_path: Path) -> None:
    """A live HLS playlist (no #EXT-X-ENDLIST) makes ffmpeg reload it forever; SIGKILL ends it."""
    import subprocess

    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=64x48:rate=10:duration=1", "-c:v", "libx264", "-preset", "ultrafast",
                    "-f", "mpegts", str(tmp_path / "seg0.ts")], check=True, timeout=60)
    (tmp_path / "live.m3u8").write_text("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n"
                                        "#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:1.0,\nseg0.ts\n")
    started = time.monotonic()
    result = run_bounded(["ffmpeg", "-nostdin", "-protocol_whitelist", "file", "-i", str(tmp_path / "live.m3u8"),
                          "-f", "null", "-"], timeout_s=2.5)
    assert result.timed_out, "a live playlist is polled forever"
    assert time.monotonic() - started < 6.0


def test_bounded_process_watchdog_kills_and_flags() -> None:
    started = time.monotonic()
    with BoundedProcess(["sleep", "30"], timeout_s=0.5, stdout=False) as proc:
        status = proc.wait()
    assert proc.timed_out
    assert status < 0
    assert time.monotonic() - started < 5.0
    assert _gone(proc.popen.pid)


def test_bounded_process_exit_kills_a_running_child() -> None:
    with BoundedProcess(["sleep", "30"], timeout_s=60) as proc:
        pid = proc.popen.pid
        assert proc.poll() is None
    assert not proc.timed_out
    assert _gone(pid)
    assert _group_dead(pid)


def test_bounded_process_exception_in_the_body_still_cleans_up() -> None:
    pids: list[int] = []

    def body() -> None:
        with BoundedProcess(["sleep", "30"], timeout_s=60) as proc:
            pids.append(proc.popen.pid)
            raise RuntimeError("caller failed")

    with pytest.raises(RuntimeError):
        body()
    assert _gone(pids[0])


def test_stderr_flood_never_blocks_and_only_the_tail_is_kept() -> None:
    # 8 MB on stderr while stdout is also written: without a drain thread the child would block forever.
    code = ("import sys\n"
            "for i in range(80000): sys.stderr.write('line %06d '.ljust(100, 'x') % i + '\\n')\n"
            "sys.stdout.write('done')\n")
    seen: list[str] = []
    with BoundedProcess([sys.executable, "-c", code], timeout_s=60, on_stderr_line=seen.append) as proc:
        assert proc.popen.stdout is not None
        out = proc.popen.stdout.read()
        status = proc.wait()
    assert (status, out, proc.timed_out) == (0, b"done", False)
    assert len(seen) == 80000
    assert seen[0].startswith("line 000000")
    assert seen[-1].startswith("line 079999")
    tail = proc.stderr_text()
    assert len(tail.encode()) <= STDERR_TAIL_BYTES
    assert tail.endswith(seen[-1])
    assert len(tail.encode()) > STDERR_TAIL_BYTES // 2


def test_a_raising_listener_does_not_stall_the_child() -> None:
    seen: list[str] = []

    def broken(line: str) -> None:
        seen.append(line)
        raise ValueError(line)

    code = ("import sys\n"
            "for i in range(50000): sys.stderr.write('%d xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\\n' % i)\n"
            "sys.stdout.write('done')\n")
    with BoundedProcess([sys.executable, "-c", code], timeout_s=60, on_stderr_line=broken) as proc:
        assert proc.popen.stdout is not None
        assert proc.popen.stdout.read() == b"done"
        assert proc.wait() == 0
    assert len(seen) == 50000
    assert 0 < len(proc.listener_errors) <= 16
    assert isinstance(proc.listener_errors[0], ValueError)


def test_added_listener_sees_lines_while_the_child_runs() -> None:
    arrived = threading.Event()
    # The child writes to stderr only after we send it a line, so the listener is in place in time.
    code = "import sys, time\nsys.stdin.readline(); sys.stderr.write('ready\\n'); sys.stderr.flush(); time.sleep(30)\n"
    with BoundedProcess([sys.executable, "-c", code], timeout_s=60, stdin=True, stdout=False) as proc:
        proc.add_stderr_listener(lambda line: arrived.set() if line == "ready" else None)
        assert proc.popen.stdin is not None
        proc.popen.stdin.write(b"go\n")
        proc.popen.stdin.flush()
        assert arrived.wait(10)
        assert proc.poll() is None  # still sleeping: the line came while it ran
    assert "ready" in proc.stderr_text()


def test_invalid_deadlines_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        run_bounded(["true"], timeout_s=0)
    with pytest.raises(ValueError, match="positive"):
        BoundedProcess(["true"], timeout_s=-1)
