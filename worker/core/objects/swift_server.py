"""A throwaway OpenStack Swift with its S3 API (`s3api` middleware): the real S3-compatible server of the tests.

Why here (worker/core/objects) and not under tests/: the same server is meant to be the object store of the
multi-host namespace test and of the Compose stack (issue #25), both of which start it from product code, and
worker/core is torch-free, so any process (API, worker, test) can import it. It mirrors
`worker.core.private_redis.PrivateRedis`: a class that starts real processes on free loopback ports, waits until
they answer, and stops exactly what it started.

Why Swift and not Ceph's radosgw: radosgw needs a monitor and OSDs (a Ceph cluster); Swift's four WSGI servers
run from Debian's packages (`scripts/install-objectstore-deps.sh`) with a one-device ring each.

What `SwiftServer.start()` writes under its directory:
* `etc/`: swift.conf (hash salts, one storage policy), the account/container/object rings (one device each,
  replicas 1, built by `swift-ring-builder`), one config per server (`workers = 0`: one process each, so a test
  can SIGSTOP the proxy; `mount_check = false`; `user` = the current user, never `swift`);
* `devices/d1/`: the objects. Swift keeps metadata in user extended attributes, so the directory's filesystem
  must support them: `start()` checks with `os.setxattr` and raises `SwiftServerError` when it does not
  (tmpfs before Linux 6.6 and some overlay set-ups refuse `user.*`);
* `log/`: each server's stderr.

The servers run under Debian's `/usr/bin/python3` (swift lives in its dist-packages, not in our venv), through a
two-line bootstrap that points swift at our swift.conf (`set_swift_dir`) before `run_wsgi`, because swift reads
`/etc/swift/swift.conf` at import otherwise. Credentials are tempauth's: access key `<account>:<user>`, secret
random per start.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from worker.core.private_redis import _terminate_with_parent

SWIFT_PYTHON = "/usr/bin/python3"
START_TIMEOUT_S = 60.0
_BOOTSTRAP = ("import sys; from swift.common.utils import set_swift_dir; set_swift_dir(sys.argv[1]); "
              "from swift.common.wsgi import run_wsgi; sys.exit(run_wsgi(sys.argv[2], sys.argv[3], verbose=True))")
_SERVERS = ("account", "container", "object")


class SwiftServerError(RuntimeError):
    """Swift could not be started: packages missing, no user xattrs on the storage directory, or no answer."""

    code = "object_store_unavailable"


@dataclass(frozen=True)
class SwiftEndpoint:
    """How an S3 client reaches the server: path-style addressing, signature v4, region us-east-1."""

    url: str  # http://127.0.0.1:<port>
    access_key: str
    secret_key: str
    region: str = "us-east-1"


def swift_installed() -> bool:
    """True when Debian's swift packages are installed (the ring builder and the server modules)."""
    return shutil.which("swift-ring-builder") is not None and Path(SWIFT_PYTHON).exists() and \
        Path("/usr/lib/python3/dist-packages/swift/common/wsgi.py").exists()


def supports_user_xattrs(directory: Path) -> bool:
    """True when files under `directory` accept `user.*` extended attributes (Swift's object metadata)."""
    probe = directory / f".xattr-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        os.setxattr(probe, "user.avs.probe", b"1")
        return os.getxattr(probe, "user.avs.probe") == b"1"
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class SwiftServer:
    """Account, container and object servers and the proxy (s3api + tempauth) of one throwaway Swift.

    `start()` returns the S3 endpoint once the proxy answers `/healthcheck` and an authenticated S3 request
    (raises `SwiftServerError` after `START_TIMEOUT_S`); `started_in_s` is how long that took. `stop()` ends the
    four processes (SIGTERM, then SIGKILL after `timeout_s`). `proxy_pid` lets a test freeze the proxy (SIGSTOP)
    to make an outage.
    """

    def __init__(self, directory: Path, *, host: str = "127.0.0.1", account: str = "avs", user: str = "tester") -> None:
        self.directory = Path(directory).resolve()
        self.host = host
        self.account = account
        self.user = user
        self.procs: dict[str, subprocess.Popen] = {}
        self.endpoint: SwiftEndpoint | None = None
        self.started_in_s: float | None = None

    @property
    def proxy_pid(self) -> int:
        """The proxy server's process id (raises KeyError before `start()`)."""
        return self.procs["proxy"].pid

    def start(self) -> SwiftEndpoint:
        if not swift_installed():
            raise SwiftServerError("OpenStack Swift is not installed (scripts/install-objectstore-deps.sh)")
        began = time.monotonic()
        etc, devices, logs = self.directory / "etc", self.directory / "devices", self.directory / "log"
        for d in (etc, devices / "d1", logs):
            d.mkdir(parents=True, exist_ok=True)
        if not supports_user_xattrs(devices / "d1"):
            raise SwiftServerError(f"{devices} is on a filesystem without user extended attributes; Swift needs "
                                   "them (choose a directory on ext4/xfs/btrfs)")
        ports = {name: _free_port(self.host) for name in (*_SERVERS, "proxy")}
        secret = secrets.token_hex(16)
        self._write_configs(etc, devices, ports, secret)
        for name in _SERVERS:
            self._build_ring(etc, name, ports[name])
        for name in (*_SERVERS, "proxy"):
            log = (logs / f"{name}.log").open("ab")
            self.procs[name] = subprocess.Popen(
                [SWIFT_PYTHON, "-c", _BOOTSTRAP, str(etc), str(etc / f"{name}-server.conf"), f"{name}-server"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                preexec_fn=_terminate_with_parent, env={**os.environ, "PYTHONPATH": ""})
            log.close()
        endpoint = SwiftEndpoint(f"http://{self.host}:{ports['proxy']}", f"{self.account}:{self.user}", secret)
        self._wait_ready(endpoint, ports, began + START_TIMEOUT_S)
        self.endpoint = endpoint
        self.started_in_s = time.monotonic() - began
        return endpoint

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every process this object started (a stopped proxy is continued first, so SIGTERM reaches it)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.terminate()
        deadline = time.monotonic() + timeout_s
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def log_tail(self, chars: int = 1500) -> str:
        """The end of every server's log (for error messages)."""
        out = []
        for name in (*_SERVERS, "proxy"):
            path = self.directory / "log" / f"{name}.log"
            if path.exists():
                out.append(f"--- {name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(out)

    def _write_configs(self, etc: Path, devices: Path, ports: dict[str, int], secret: str) -> None:
        (etc / "swift.conf").write_text(
            f"[swift-hash]\nswift_hash_path_suffix = {secrets.token_hex(8)}\nswift_hash_path_prefix = avs\n\n"
            "[storage-policy:0]\nname = Policy-0\ndefault = yes\n")
        user = os.environ.get("USER") or _current_user()
        common = (f"[DEFAULT]\nbind_ip = {self.host}\nworkers = 0\nuser = {user}\nswift_dir = {etc}\n"
                  f"devices = {devices}\nmount_check = false\nlog_level = WARNING\n")
        for name in _SERVERS:
            (etc / f"{name}-server.conf").write_text(
                f"{common}bind_port = {ports[name]}\n\n[pipeline:main]\npipeline = {name}-server\n\n"
                f"[app:{name}-server]\nuse = egg:swift#{name}\n")
        # s3api before tempauth (it turns the S3 signature into something tempauth checks); slo for multipart
        # uploads; cache because tempauth insists on one (no memcached runs: lookups miss, which is fine here).
        (etc / "proxy-server.conf").write_text(
            f"{common}bind_port = {ports['proxy']}\n\n[pipeline:main]\n"
            "pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth "
            "copy slo dlo proxy-logging proxy-server\n\n"
            "[app:proxy-server]\nuse = egg:swift#proxy\naccount_autocreate = true\n\n"
            f"[filter:tempauth]\nuse = egg:swift#tempauth\nuser_{self.account}_{self.user} = {secret} .admin\n\n"
            "[filter:s3api]\nuse = egg:swift#s3api\nlocation = us-east-1\n\n"
            "[filter:cache]\nuse = egg:swift#memcache\nmemcache_servers = 127.0.0.1:1\n\n"
            "[filter:catch_errors]\nuse = egg:swift#catch_errors\n\n"
            "[filter:gatekeeper]\nuse = egg:swift#gatekeeper\n\n"
            "[filter:healthcheck]\nuse = egg:swift#healthcheck\n\n"
            "[filter:proxy-logging]\nuse = egg:swift#proxy_logging\n\n"
            "[filter:listing_formats]\nuse = egg:swift#listing_formats\n\n"
            "[filter:copy]\nuse = egg:swift#copy\n\n"
            "[filter:slo]\nuse = egg:swift#slo\n\n"
            "[filter:dlo]\nuse = egg:swift#dlo\n")

    def _build_ring(self, etc: Path, name: str, port: int) -> None:
        builder = str(etc / f"{name}.builder")
        for args in (["create", "6", "1", "1"], ["add", f"r1z1-{self.host}:{port}/d1", "100"], ["rebalance"]):
            result = subprocess.run(["swift-ring-builder", builder, *args], capture_output=True, text=True,
                                    timeout=30)
            # rebalance exits 1 with a warning on a ring this small; the ring file is what counts
            if result.returncode not in (0, 1):
                raise SwiftServerError(f"swift-ring-builder {name} {args[0]}: {result.stdout}{result.stderr}")
        if not (etc / f"{name}.ring.gz").exists():
            raise SwiftServerError(f"swift-ring-builder wrote no {name}.ring.gz")

    def _wait_ready(self, endpoint: SwiftEndpoint, ports: dict[str, int], deadline: float) -> None:
        while True:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                self.stop()
                why = f"{', '.join(dead)} exited" if dead else "no answer in time"
                raise SwiftServerError(f"Swift did not start ({why}):\n{self.log_tail()}")
            # the backend servers have no /healthcheck (a connect means run_wsgi has bound and serves); the proxy has
            if all(_connects(self.host, ports[n]) for n in _SERVERS) and \
                    _http_ok(f"http://{self.host}:{ports['proxy']}/healthcheck"):
                return
            time.sleep(0.1)


def _http_ok(url: str) -> bool:
    try:  # no proxy: a loopback health check must never go through an HTTP(S)_PROXY of the environment
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=1.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
