"""dem on a real Dask cluster: separate scheduler and worker processes on loopback.

The processes run exactly the commands of deploy/commands.yaml (see
tests/cluster_procs.py), so these tests cover what the deployments in deploy/
run: a fit through the cluster recovers the generating mixture and is bitwise
equal to the same fit in this process; the same over mutual TLS, where clients
without an accepted certificate are refused; and ``dem fit`` with
``cluster.address``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import dask
import numpy as np
import pytest
import yaml

import dem

try:
    from . import cluster_procs
except ImportError:  # tests/ is not a package: pytest put this directory on sys.path
    if str(Path(__file__).parent) not in sys.path:  # --import-mode=importlib does not
        sys.path.insert(0, str(Path(__file__).parent))
    import cluster_procs

pytestmark = pytest.mark.slow

MEANS = np.array([[-6.0, 0.0, 1.0], [0.0, 6.0, -1.0], [6.0, -2.0, 0.0]])
SCALES = np.array([1.0, 0.7, 1.3])
N_PER_COMPONENT = 2000
CHUNK_ROWS = 500
PARTITION_ROWS = 1000  # 6 partitions of 2 chunks
FIT_KWARGS = dict(random_state=0, max_iter=100, partition_rows=PARTITION_ROWS, init_params="kmeans")
REFUSAL_TIMEOUT = 5  # seconds a refused client may spend trying


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A Zarr group with ``X`` (rows chunked) drawn from a known mixture, and its labels."""
    import zarr

    rng = np.random.default_rng(12345)
    labels = np.repeat(np.arange(len(MEANS)), N_PER_COMPONENT)
    rng.shuffle(labels)
    X = MEANS[labels] + SCALES[labels, None] * rng.standard_normal((labels.size, MEANS.shape[1]))
    path = tmp_path_factory.mktemp("data") / "mixture.zarr"
    group = zarr.open_group(str(path), mode="w")
    arr = group.create_array("X", shape=X.shape, chunks=(CHUNK_ROWS, X.shape[1]), dtype="float64")
    arr[:] = X
    return str(path), X, labels


@pytest.fixture(scope="module")
def local_fit(dataset):
    """The reference: the same fit with dem's in-process scheduler (no client)."""
    assert _default_client() is None, "a distributed Client is active: this would not be a local fit"
    path, _, _ = dataset
    return dem.GaussianMixture(3, **FIT_KWARGS).fit(path)


def fitted(gm) -> dict[str, np.ndarray]:
    return {name: np.asarray(getattr(gm, name)) for name in
            ("weights_", "means_", "covariances_", "precisions_cholesky_", "lower_bound_", "n_iter_")}


def assert_recovers_mixture(gm, X: np.ndarray, labels: np.ndarray) -> None:
    """Fitted means against the ground truth: the true means and each component's sample mean."""
    assert gm.converged_
    order = [int(np.argmin(np.linalg.norm(gm.means_ - m, axis=1))) for m in MEANS]
    assert sorted(order) == [0, 1, 2], f"components do not pair up with the true ones: {gm.means_}"
    means = gm.means_[order]
    sample_means = np.stack([X[labels == k].mean(axis=0) for k in range(len(MEANS))])
    # Well separated components: EM's means are the per-component sample means up to
    # the few points EM assigns differently from the labels.
    np.testing.assert_allclose(means, sample_means, atol=0.02)
    np.testing.assert_allclose(means, MEANS, atol=0.1)  # sampling error ≈ 1.3/√2000 ≈ 0.03 per coordinate
    np.testing.assert_allclose(gm.weights_[order], 1 / 3, atol=0.005)


def assert_bitwise_equal(a: dict, b: dict) -> None:
    for name in a:
        assert np.array_equal(a[name], b[name]), f"{name} differs:\n{a[name]}\n{b[name]}"


@pytest.fixture(scope="module")
def tcp_cluster(tmp_path_factory):
    with cluster_procs.real_cluster(tmp_path_factory.mktemp("cluster"), n_workers=2) as cluster:
        yield cluster


def test_fit_on_real_cluster_matches_local_fit(tcp_cluster, dataset, local_fit):
    path, X, labels = dataset
    assert tcp_cluster.address.startswith("tcp://127.0.0.1:")
    from distributed import get_task_stream

    with tcp_cluster.client() as client:
        info = client.scheduler_info()
        assert len(info["workers"]) == 2
        with get_task_stream(client) as stream:
            gm = dem.GaussianMixture(3, client=client, **FIT_KWARGS).fit(path)
    # The E-steps really ran in both worker processes, not in this one.
    assert {t["worker"] for t in stream.data} == set(info["workers"]), "both workers computed"
    assert_recovers_mixture(gm, X, labels)
    assert_bitwise_equal(fitted(gm), fitted(local_fit))
    assert all(p.poll() is None for p in [tcp_cluster.scheduler, *tcp_cluster.workers])


def test_cluster_runs_the_deploy_commands(tcp_cluster):
    commands = cluster_procs.load_commands()
    sched = cluster_procs.scheduler_argv()
    assert list(tcp_cluster.scheduler.args) == cluster_procs.executable_argv(sched)
    assert sched[:2] == commands["scheduler"]["argv"][:2] == ["dask", "scheduler"]
    for i, proc in enumerate(tcp_cluster.workers):
        assert list(proc.args) == cluster_procs.executable_argv(
            cluster_procs.worker_argv(tcp_cluster.address, f"worker-{i}"))


def _running(pids=(), pgids=()) -> list[str]:
    """Processes (not zombies waiting for init to reap them) with these pids or process groups."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        pid = int(stat.parent.name)
        state, _ppid, pgrp = text.rsplit(")", 1)[1].split()[:3]
        if state != "Z" and (pid in pids or int(pgrp) in pgids):
            found.append(f"{pid} ({state}): {text[:80]}")
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_real_cluster_kills_every_process_on_error(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with cluster_procs.real_cluster(tmp_path, n_workers=1) as cluster:
            groups = [p.pid for p in (cluster.scheduler, *cluster.workers)]
            with cluster.client() as client:
                worker_pids = list(client.run(os.getpid).values())  # the nanny's child process
            assert _running(worker_pids, groups)
            raise RuntimeError("boom")
    assert not _running(worker_pids, groups)


# -- TLS ---------------------------------------------------------------------------

needs_openssl = pytest.mark.skipif(not cluster_procs.tls_available(), reason="needs the openssl command line tool")


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    with cluster_procs.real_cluster(tmp_path_factory.mktemp("tls-cluster"), n_workers=2, tls=True) as cluster:
        yield cluster


def _default_client():
    from distributed import default_client

    for _ in range(3):
        try:
            return default_client()
        except ValueError:
            return None
        except KeyError:  # a client garbage-collected mid-lookup in distributed's weak registry
            continue
    return None


@contextlib.contextmanager
def no_leaked_client():
    # A Client whose construction fails can stay registered as the default client
    # and leave scheduler="dask.distributed" in the global dask config (seen with
    # distributed 2026.8 for tls:// without a TLS context): later dask computations
    # in this process (dem.load, the local fits) would then wait on it forever.
    before = _default_client()
    saved = copy.deepcopy(dask.config.config)
    try:
        yield
    finally:
        leaked = _default_client()
        if leaked is not None and leaked is not before:
            leaked.close(timeout=10)
        dask.config.config.clear()
        dask.config.config.update(saved)


def assert_refused(address: str, security=None) -> None:
    from distributed import Client

    start = time.monotonic()
    with warnings.catch_warnings(), no_leaked_client():
        warnings.simplefilter("ignore")
        with pytest.raises((OSError, TimeoutError, TypeError, ValueError)):
            with Client(address, security=security, timeout=REFUSAL_TIMEOUT):
                pass
    assert time.monotonic() - start < 10 * REFUSAL_TIMEOUT
    assert _default_client() is None


@needs_openssl
def test_fit_over_tls_matches_local_fit(tls_cluster, dataset, local_fit):
    path, X, labels = dataset
    assert tls_cluster.address.startswith("tls://127.0.0.1:")
    with tls_cluster.client() as client:
        assert all(addr.startswith("tls://") for addr in client.scheduler_info()["workers"])
        gm = dem.GaussianMixture(3, client=client, **FIT_KWARGS).fit(path)
    assert_recovers_mixture(gm, X, labels)
    assert_bitwise_equal(fitted(gm), fitted(local_fit))


@needs_openssl
def test_tls_cluster_refuses_clients_without_certificates(tls_cluster, tmp_path):
    port = tls_cluster.address.rsplit(":", 1)[1]
    # Plain TCP to the TLS port.
    assert_refused(f"tcp://127.0.0.1:{port}")
    # TLS without any certificate.
    assert_refused(tls_cluster.address)
    # A certificate from another CA: the client trusts the scheduler, the scheduler does not trust it.
    rogue = cluster_procs.make_tls_files(tmp_path / "rogue", name="rogue")
    from distributed.security import Security

    assert_refused(tls_cluster.address, Security(
        tls_ca_file=tls_cluster.tls.ca_file, tls_client_cert=rogue.cert, tls_client_key=rogue.key,
        require_encryption=True))
    # Still serving the legitimate client.
    with tls_cluster.client() as client:
        assert client.submit(sum, [1, 2, 3]).result(timeout=30) == 6


# -- dem fit through cluster.address -------------------------------------------------

def _dem_cli_with_fit() -> str | None:
    """Why the CLI test cannot run yet, or None."""
    if importlib.util.find_spec("dem.cli") is None:
        return "dem.cli does not exist yet"
    proc = subprocess.run([sys.executable, "-m", "dem.cli", "fit", "--help"],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or "--set" not in proc.stdout:
        return f"`dem fit --set` is not available yet: {(proc.stderr or proc.stdout).strip()[-300:]}"
    return None


def test_dem_fit_cli_through_cluster_address(tcp_cluster, dataset, local_fit, tmp_path):
    reason = _dem_cli_with_fit()
    if reason:
        pytest.skip(reason)
    path, X, labels = dataset
    run_dir = tmp_path / "run"
    config = {
        "data": {"path": path, "variable": "X"},
        "model": {"kind": "gmm", "n_components": 3, "covariance_type": "full", "reg_covar": 1e-6},
        "fit": {"max_iter": FIT_KWARGS["max_iter"], "tol": 1e-3, "n_init": 1, "init_params": "kmeans",
                "random_state": FIT_KWARGS["random_state"], "partition_rows": PARTITION_ROWS},
        "cluster": {"address": None},
        "output": {"run_dir": str(run_dir)},
    }
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [sys.executable, "-m", "dem.cli", "fit", str(cfg), "--set", f"cluster.address={tcp_cluster.address}"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert (run_dir / "model.zarr").is_dir()
    gm = dem.load(str(run_dir))
    assert_recovers_mixture(gm, X, labels)
    # Same data, model and fit settings as the in-process reference fit: the same numbers.
    assert_bitwise_equal(fitted(gm), fitted(local_fit))
