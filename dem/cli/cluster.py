"""Starting or connecting to the Dask cluster a ``dem`` command runs on."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

from dem.cli.common import _SAVED_LEVELS, _quiet_logs, session
from dem.config import Config
from dem.errors import ConfigError


@dataclasses.dataclass
class Cluster:
    """A connected client and, for an embedded cluster, the cluster itself."""

    client: Any
    local: Any = None

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.local is not None:
                self.local.close()


def _start_cluster(cfg: Config) -> Cluster:
    import logging

    from distributed import Client, LocalCluster

    if not session.debug and _SAVED_LEVELS:  # running under main(): importing distributed reset its levels
        _quiet_logs()
    c = cfg.cluster
    if c.address is not None:
        security = None
        if c.security is not None:
            from distributed.security import Security

            security = Security(tls_ca_file=c.security.tls_ca_file, tls_client_cert=c.security.tls_client_cert,
                                tls_client_key=c.security.tls_client_key, require_encryption=True)
        try:
            client = Client(c.address, security=security, timeout=c.connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cannot connect to the Dask scheduler at cluster.address={c.address!r}: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        return Cluster(client)
    # The scheduler always serves HTTP (health, metrics). Port 0 takes a free
    # port, where None would mean 8787 and a warning when that is taken; the
    # host is explicit because distributed binds ":0" to every interface.
    with _workers_ignore_sigint():
        local = LocalCluster(
            n_workers=c.n_workers, threads_per_worker=c.threads_per_worker, memory_limit=c.memory_limit,
            processes=True, host=c.host, dashboard_address=c.dashboard_address or f"{_bracketed(c.host)}:0",
            scheduler_kwargs={"dashboard": c.dashboard},
            # Task errors come back to this process and are reported once, as one
            # line; workers' own logs only add noise (`dem --debug` shows them).
            silence_logs=logging.WARNING if session.debug else logging.CRITICAL,
        )
    try:
        client = Client(local)
        # Workers the nanny restarts later are spawned with this process's
        # own SIGINT handler in place; the plugin makes them ignore it too.
        client.register_plugin(_ignore_sigint_plugin(), name="dem-ignore-sigint")
        return Cluster(client, local)
    except BaseException:
        local.close()
        raise


@contextlib.contextmanager
def _workers_ignore_sigint() -> Any:
    """Start worker processes with SIGINT ignored (an ignored signal survives exec; a handler does not).

    Ctrl-C in a terminal goes to the whole process group: without this, each
    embedded worker prints a KeyboardInterrupt traceback (60+ lines for two)
    before dem's one line, although this process stops them anyway. A Ctrl-C
    during the few seconds of start-up is ignored.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _ignore_sigint_plugin() -> Any:
    """A distributed worker plugin: the worker process ignores SIGINT (its nanny's process stops it).

    Defined here, not at module level, so that the CLI imports distributed
    only when it starts a cluster (the class then travels by value).
    """
    from distributed.diagnostics.plugin import WorkerPlugin

    class IgnoreSigint(WorkerPlugin):
        idempotent = True

        def setup(self, worker: Any) -> None:
            import signal
            import threading

            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)

    return IgnoreSigint()


def _bracketed(host: str) -> str:
    """An IPv6 address in brackets, so ``host:port`` stays parseable."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def dashboard_line(cluster: Cluster) -> str | None:
    """``dashboard: <link>`` for the address the dashboard really listens on.

    distributed's ``dashboard_link`` names the scheduler's host even when the
    HTTP server is bound to every interface; then the line says so, since
    anyone who can reach this machine can open it.
    """
    link = getattr(cluster.client, "dashboard_link", None)
    server = getattr(getattr(cluster.local, "scheduler", None), "http_server", None)
    if server is None:
        return f"dashboard: {link}" if link else None
    bound = sorted({sock.getsockname()[:2] for sock in getattr(server, "_sockets", {}).values()})
    if not bound:
        return f"dashboard: {link}" if link else None
    everywhere = [port for host, port in bound if host in ("0.0.0.0", "::", "")]
    if everywhere:
        return (f"dashboard: http://127.0.0.1:{everywhere[0]}/status (listening on every interface, "
                f"port {everywhere[0]}: reachable from the network; set cluster.dashboard_address to restrict it)")
    host, port = bound[0]
    return f"dashboard: http://{_bracketed(host)}:{port}/status"
