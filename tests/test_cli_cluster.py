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


# -- losing the scheduler (issue 17, item 8) -------------------------------------------

def _cluster_procs():
    import sys
    from pathlib import Path

    here = str(Path(__file__).parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import cluster_procs

    return cluster_procs


@pytest.mark.slow
def test_losing_the_scheduler_mid_fit_is_one_line_with_the_resume_command(tmp_path) -> None:
    import os
    import subprocess
    import sys

    import yaml

    from dem.data.generate import generate_dataset

    procs = _cluster_procs()
    generate_dataset(tmp_path / "mix.zarr", 4_000, 2, 2, chunk_rows=1_000, seed=1)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({
        "data": {"path": str(tmp_path / "mix.zarr")}, "model": {"n_components": 2},
        "fit": {"max_iter": 40, "tol": 0.0, "random_state": 0, "partition_rows": 1_000},
        "output": {"run_dir": "run"}}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    run = tmp_path / "run"
    with procs.real_cluster(tmp_path / "first", n_workers=1) as cluster:
        # The client waits cluster.connect_timeout for a lost scheduler to come back before it gives up.
        fit = subprocess.Popen([sys.executable, "-m", "dem.cli", "fit", "--set", f"cluster.address={cluster.address}",
                                "--set", "cluster.connect_timeout=2"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            for line in fit.stdout:
                if line.startswith("iteration    2"):
                    break
            procs.stop(cluster.scheduler)  # the scheduler goes away mid-fit
            _, stderr = fit.communicate(timeout=120)
        finally:
            fit.kill()
        address = cluster.address
    assert fit.returncode == 1
    # This used to be a 93-line FutureCancelledError traceback ("scheduler-connection-lost").
    assert stderr.splitlines() == [
        f"error: lost the connection to the Dask scheduler at {address}; once a scheduler is up, continue with "
        f"`dem resume {run} --set cluster.address={address}` (or the new scheduler's address)"], stderr
    # The advice works: the same command against a new scheduler finishes the fit.
    with procs.real_cluster(tmp_path / "second", n_workers=1) as cluster:
        resumed = subprocess.run([sys.executable, "-m", "dem.cli", "resume", str(run), "--set",
                                  f"cluster.address={cluster.address}"], cwd=tmp_path, capture_output=True,
                                 text=True, env=env, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    history = yaml.safe_load((run / "history.json").read_text())
    assert len(history) == 40 and sum(bool(h["resumed"]) for h in history) == 1


# -- Ctrl-C (issue 17, item 9) ---------------------------------------------------------------

def _ignores_sigint(pid: int) -> bool:
    """From the kernel: whether process ``pid`` has SIGINT's disposition set to ignore."""
    import signal

    with open(f"/proc/{pid}/status") as fh:
        mask = next(int(line.split()[1], 16) for line in fh if line.startswith("SigIgn:"))
    return bool(mask & (1 << (signal.SIGINT - 1)))


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="reads /proc")
def test_embedded_workers_ignore_sigint_also_after_a_restart() -> None:
    import os

    # A suite started in the background (`cmd &` in a script) ignores SIGINT from the
    # start; what dem owes this process is to leave its disposition as it found it.
    before = _ignores_sigint(os.getpid())
    cluster = _embedded("cluster.n_workers=2")
    try:
        pids = sorted(cluster.client.run(os.getpid).values())
        assert len(pids) == 2 and all(_ignores_sigint(p) for p in pids)
        assert _ignores_sigint(os.getpid()) == before  # a foreground process still gets its KeyboardInterrupt
        cluster.client.restart()  # the nanny spawns new worker processes
        new = sorted(cluster.client.run(os.getpid).values())
        assert set(new).isdisjoint(pids) and all(_ignores_sigint(p) for p in new)
    finally:
        cluster.close()


@pytest.mark.slow
def test_ctrl_c_prints_one_line_and_no_worker_tracebacks(tmp_path) -> None:
    import os
    import signal
    import subprocess
    import sys

    import yaml

    from dem.data.generate import generate_dataset

    generate_dataset(tmp_path / "mix.zarr", 4_000, 2, 2, chunk_rows=1_000, seed=1)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({
        "data": {"path": str(tmp_path / "mix.zarr")}, "model": {"n_components": 2},
        "fit": {"max_iter": 100_000, "tol": 0.0, "random_state": 0, "partition_rows": 1_000},
        "cluster": {"n_workers": 2, "memory_limit": "1GiB", "dashboard": False}, "output": {"run_dir": "run"}}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    # Its own session, like a shell job: SIGINT to the group reaches dem and every worker process.
    # SIGINT's default restored in the child, as a shell gives a foreground job, even when
    # this suite itself runs in the background with SIGINT ignored.
    fit = subprocess.Popen([sys.executable, "-m", "dem.cli", "fit"], cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in fit.stdout:
            if line.startswith("iteration    3"):
                break
        os.killpg(fit.pid, signal.SIGINT)
        _, stderr = fit.communicate(timeout=120)
    finally:
        fit.kill()
    assert fit.returncode == 130
    # This used to be 66 lines of worker KeyboardInterrupt/CancelledError tracebacks first.
    assert [line for line in stderr.splitlines() if line.strip()] == [
        f"error: interrupted; continue with `dem resume {tmp_path / 'run'}`"], stderr
