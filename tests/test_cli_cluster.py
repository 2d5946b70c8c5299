"""The embedded cluster `dem fit` starts, and what the CLI says when a cluster goes wrong.

Listening sockets are read from the operating system (psutil), not from
dem or distributed, so a server bound to every interface cannot hide.
"""

from __future__ import annotations

import psutil
import pytest

from dem.cli import Cluster, _start_cluster, dashboard_line
from dem.config import config_from_dict


def _listening() -> set[tuple[int, str, int]]:
    """(pid, ip, port) of every TCP socket this process and its children listen on."""
    me = psutil.Process()
    found = set()
    for proc in [me, *me.children(recursive=True)]:
        try:
            conns = proc.net_connections("tcp")
        except psutil.Error:
            continue
        found.update((proc.pid, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN)
    return found


def _embedded(*overrides: str) -> Cluster:
    cfg = config_from_dict({"data": {"path": "unused.zarr"},
                            "cluster": {"n_workers": 1, "memory_limit": "512MiB", "dashboard": True}},
                           list(overrides))
    return _start_cluster(cfg)


def test_embedded_cluster_and_dashboard_listen_on_loopback_only() -> None:
    before = _listening()
    cluster = _embedded()
    try:
        opened = _listening() - before
        line = dashboard_line(cluster)
    finally:
        cluster.close()
    # Scheduler, its HTTP server (the dashboard), nanny, worker: all on loopback.
    assert len(opened) >= 3, opened
    assert {ip for _, ip, _ in opened} == {"127.0.0.1"}, sorted(opened)
    http_port = int(line.rsplit(":", 1)[1].split("/")[0])
    assert line == f"dashboard: http://127.0.0.1:{http_port}/status"
    assert any(port == http_port for _, _, port in opened)


def test_dashboard_on_every_interface_only_when_asked_and_said_so() -> None:
    before = _listening()
    cluster = _embedded("cluster.dashboard_address='0.0.0.0:0'")
    try:
        opened = _listening() - before
        line = dashboard_line(cluster)
    finally:
        cluster.close()
    everywhere = [port for _, ip, port in opened if ip == "0.0.0.0"]
    assert len(everywhere) == 1, sorted(opened)
    assert line.startswith(f"dashboard: http://127.0.0.1:{everywhere[0]}/status (listening on every interface")
    # Only the dashboard was opened up; the scheduler and workers stay on loopback.
    assert {ip for _, ip, port in opened if port != everywhere[0]} == {"127.0.0.1"}
