"""Real Dask scheduler and worker processes on loopback, for tests.

The commands come from ``deploy/commands.yaml``, the same file every
deployment in ``deploy/`` follows, so the tests exercise exactly what runs in
production, only on 127.0.0.1 with any free port:

    with real_cluster(tmp_path, n_workers=2) as cluster:
        with distributed.Client(cluster.address, security=cluster.security) as client:
            ...

Every process is started in its own session (process group) and the whole
group is killed on exit, whatever happened inside the ``with`` block; on Linux
the processes also get SIGTERM if the test process dies without cleaning up.
Logs go to files under ``tmp_path`` and are quoted in startup errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMANDS_FILE = REPO_ROOT / "deploy" / "commands.yaml"

LOOPBACK = "127.0.0.1"
#: Placeholder values the tests use: loopback only, any free port.
TEST_SCHEDULER_VALUES = {"host": LOOPBACK, "port": "0", "dashboard_address": f"{LOOPBACK}:0"}
TEST_WORKER_VALUES = {"host": LOOPBACK, "dashboard_address": f"{LOOPBACK}:0"}

START_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


# -- the commands ------------------------------------------------------------

def load_commands(path: Path = COMMANDS_FILE) -> dict[str, Any]:
    """``deploy/commands.yaml`` as a dict."""
    with open(path) as f:
        return yaml.safe_load(f)


def render(template: list[str], values: dict[str, Any]) -> list[str]:
    """Fill the ``{name}`` placeholders of an argv template; a missing value is an error."""
    out = []
    for token in template:
        missing = [n for n in _PLACEHOLDER.findall(token) if n not in values]
        if missing:
            raise KeyError(f"no value for placeholder(s) {missing} in {token!r}")
        out.append(_PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), token))
    return out


def _argv(role: str, values: dict[str, Any], tls: "TLSFiles | None") -> list[str]:
    commands = load_commands()
    spec = commands[role]
    argv = render(spec["argv"], {**spec.get("defaults", {}), **values})
    if tls is not None:
        argv += render(commands["tls"]["argv"], tls.values())
    return argv


def scheduler_argv(*, tls: "TLSFiles | None" = None, **values: Any) -> list[str]:
    """The scheduler command of ``deploy/commands.yaml`` with the tests' values.

    Keyword arguments override placeholder values (``host``, ``port``,
    ``dashboard_address``); the default listens on 127.0.0.1, any free port.
    """
    return _argv("scheduler", {**TEST_SCHEDULER_VALUES, **values}, tls)


def worker_argv(address: str, name: str, *, tls: "TLSFiles | None" = None, **values: Any) -> list[str]:
    """The worker command of ``deploy/commands.yaml`` for ``address`` and ``name``."""
    return _argv("worker", {**TEST_WORKER_VALUES, **values, "scheduler_address": address, "name": name}, tls)


def dask_launcher() -> list[str]:
    """How to run ``dask`` with this interpreter's environment."""
    script = Path(sys.executable).with_name("dask")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "dask"]


def executable_argv(argv: list[str]) -> list[str]:
    """``argv`` with the leading ``dask`` replaced by this environment's launcher."""
    if argv[0] != "dask":
        raise ValueError(f"expected a dask command, got {argv[0]!r}")
    return dask_launcher() + argv[1:]


# -- TLS ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TLSFiles:
    """A CA file and a certificate/key pair in PEM files (mutual TLS)."""

    ca_file: str
    cert: str
    key: str

    def values(self) -> dict[str, str]:
        """Values for the ``tls`` placeholders of ``deploy/commands.yaml``."""
        return {"tls_ca_file": self.ca_file, "tls_cert": self.cert, "tls_key": self.key}

    def security(self) -> Any:
        """A ``distributed.Security`` for a client presenting this certificate."""
        from distributed.security import Security

        return Security(tls_ca_file=self.ca_file, tls_client_cert=self.cert,
                        tls_client_key=self.key, require_encryption=True)


def tls_available() -> bool:
    return shutil.which("openssl") is not None


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {proc.stderr.strip()}")


def make_tls_files(directory: Path, *, ca: tuple[str, str] | None = None, name: str = "node") -> TLSFiles:
    """Create a CA (unless ``ca=(ca_cert, ca_key)`` is given) and a certificate it signs.

    The certificate (EC P-256, one day) is valid for client and server use on
    127.0.0.1/localhost, as scheduler, workers and clients of one test share it.
    Uses the ``openssl`` command line tool.
    """
    if not tls_available():
        raise RuntimeError("the openssl command line tool is needed to make test certificates")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    if ca is None:
        ca = (str(d / "ca.pem"), str(d / "ca.key"))
        _openssl("req", "-x509", *ec, "-keyout", ca[1], "-out", ca[0], "-days", "1",
                 "-subj", f"/CN=dem test CA {secrets.token_hex(4)}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    key, csr, cert = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem"
    _openssl("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}", cwd=d)
    _openssl("x509", "-req", "-in", str(csr), "-CA", ca[0], "-CAkey", ca[1],
             "-set_serial", str(secrets.randbits(63)), "-days", "1", "-out", str(cert),
             "-extfile", str(ext), cwd=d)
    return TLSFiles(ca_file=ca[0], cert=str(cert), key=str(key))


# -- processes ---------------------------------------------------------------

def _load_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Resolved here, not in the child: between fork and exec only a plain call is safe.
_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: SIGTERM it when the test process
    # dies, so a killed pytest does not leave a cluster behind (Linux only).
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def _environment(scratch: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["DASK_TEMPORARY_DIRECTORY"] = str(scratch)  # worker spill/scratch space inside tmp_path
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _spawn(argv: list[str], log: Path, scratch: Path) -> subprocess.Popen:
    scratch.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        return subprocess.Popen(
            executable_argv(argv),
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            cwd=scratch, env=_environment(scratch),
            start_new_session=True,  # own process group: killpg reaches the nanny's worker too
            preexec_fn=_die_with_parent if _PRCTL is not None else None,
        )


def log_tail(proc: subprocess.Popen, n: int = 40) -> str:
    """The last ``n`` lines of a process's log file."""
    path = getattr(proc, "log_path", None)
    if path is None or not Path(path).exists():
        return "(no log)"
    lines = Path(path).read_text(errors="replace").splitlines()
    return "\n".join(lines[-n:])


def stop(proc: subprocess.Popen | None, timeout: float = STOP_TIMEOUT) -> None:
    """Terminate a process's whole group: SIGTERM, then SIGKILL after ``timeout``.

    Never raises; SIGKILL goes to the group at the end in any case, so children
    that outlive their parent (a nanny's worker) are reaped too.
    """
    if proc is None:
        return
    pgid = proc.pid  # start_new_session: the group id is the leader's pid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)


_SCHEDULER_AT = re.compile(r"Scheduler at:\s+((?:tcp|tls)://\S+)")


def start_scheduler(tmp_path: Path, tls: TLSFiles | None = None,
                    timeout: float = START_TIMEOUT) -> tuple[subprocess.Popen, str]:
    """Start the scheduler command on 127.0.0.1 (any free port); return it and its address.

    The address is read from the scheduler's own log line ``Scheduler at: ...``.
    """
    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "scheduler.log"
    proc = _spawn(scheduler_argv(tls=tls), log, tmp_path / "scratch-scheduler")
    proc.log_path = log  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    try:
        while True:
            match = _SCHEDULER_AT.search(log.read_text(errors="replace")) if log.exists() else None
            if match:
                return proc, match.group(1)
            if proc.poll() is not None:
                raise RuntimeError(f"scheduler exited with code {proc.returncode}:\n{log_tail(proc)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"scheduler did not report its address in {timeout:.0f}s:\n{log_tail(proc)}")
            time.sleep(0.1)
    except BaseException:
        stop(proc)
        raise


def start_worker(address: str, name: str, tls: TLSFiles | None = None,
                 log_dir: Path | None = None) -> subprocess.Popen:
    """Start the worker command for scheduler ``address``, listening on 127.0.0.1 only."""
    log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="dem-worker-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    proc = _spawn(worker_argv(address, name, tls=tls), log, log_dir / f"scratch-{name}")
    proc.log_path = log  # type: ignore[attr-defined]
    return proc


@dataclasses.dataclass
class RealCluster:
    """A running scheduler and workers: ``address``, the ``Popen`` objects, TLS files."""

    address: str
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen]
    tls: TLSFiles | None = None

    @property
    def security(self) -> Any:
        """``Security`` for a client of this cluster (``None`` without TLS)."""
        return None if self.tls is None else self.tls.security()

    def client(self, timeout: float = 30, **kwargs: Any) -> Any:
        """A ``distributed.Client`` connected to this cluster (use it as a context manager)."""
        from distributed import Client

        return Client(self.address, security=self.security, timeout=timeout, **kwargs)

    def logs(self) -> str:
        parts = [f"--- scheduler ---\n{log_tail(self.scheduler)}"]
        parts += [f"--- worker {i} ---\n{log_tail(w)}" for i, w in enumerate(self.workers)]
        return "\n".join(parts)


@contextlib.contextmanager
def real_cluster(tmp_path: Path, n_workers: int = 2, tls: bool | TLSFiles = False,
                 timeout: float = START_TIMEOUT) -> Iterator[RealCluster]:
    """A scheduler and ``n_workers`` workers as separate processes on 127.0.0.1.

    ``tls=True`` makes a CA and a certificate under ``tmp_path/tls`` and runs
    everything with mutual TLS; pass a :class:`TLSFiles` to use your own.
    Waits (up to ``timeout`` seconds) until all workers have registered, and
    kills every process group on exit, also when the body raises.
    """
    tmp_path = Path(tmp_path)
    files = make_tls_files(tmp_path / "tls") if tls is True else (tls or None)
    scheduler: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = []
    try:
        scheduler, address = start_scheduler(tmp_path, tls=files, timeout=timeout)
        for i in range(n_workers):
            workers.append(start_worker(address, f"worker-{i}", tls=files, log_dir=tmp_path))
        cluster = RealCluster(address, scheduler, workers, files)
        _wait_for_workers(cluster, n_workers, timeout)
        yield cluster
    finally:
        for proc in workers:
            stop(proc)
        stop(scheduler)


def _wait_for_workers(cluster: RealCluster, n_workers: int, timeout: float) -> None:
    from distributed import Client

    try:
        with Client(cluster.address, security=cluster.security, timeout=timeout) as client:
            client.wait_for_workers(n_workers, timeout=timeout)
    except Exception as exc:
        dead = [f"worker {i} exited with {w.returncode}" for i, w in enumerate(cluster.workers)
                if w.poll() is not None]
        raise RuntimeError(f"{n_workers} workers did not register within {timeout:.0f}s "
                           f"({exc!r}; {', '.join(dead) or 'all processes alive'}):\n{cluster.logs()}") from exc
