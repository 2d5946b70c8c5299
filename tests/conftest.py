"""Shared fixtures: seeded generators, tiny datasets, one real process cluster."""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest

#: Ground truth of the ``blobs`` dataset: three well-separated 3-D Gaussians.
BLOB_MEANS = np.array([[0.0, 0.0, 0.0], [8.0, 8.0, 0.0], [-8.0, 6.0, 5.0]])
BLOB_WEIGHTS = np.array([0.5, 0.3, 0.2])


def make_blobs(n: int, seed: int, means: np.ndarray = BLOB_MEANS,
               weights: np.ndarray = BLOB_WEIGHTS) -> tuple[np.ndarray, np.ndarray]:
    """Rows from a mixture with correlated covariances, and their true labels."""
    rng = np.random.default_rng(seed)
    K, D = means.shape
    labels = rng.choice(K, size=n, p=weights)
    X = np.empty((n, D))
    for k in range(K):
        A = rng.normal(size=(D, D)) * 0.4 + np.eye(D) * (0.6 + 0.3 * k)
        idx = labels == k
        X[idx] = means[k] + rng.normal(size=(idx.sum(), D)) @ A.T
    return X, labels


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


@pytest.fixture(scope="session")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    """1600 rows, 3 features, 3 components (labels are the ground truth)."""
    return make_blobs(1600, seed=7)


@pytest.fixture(scope="session")
def overlapping() -> np.ndarray:
    """600 rows, 2 features, from overlapping components: EM needs many iterations."""
    X, _ = make_blobs(600, seed=11, means=np.array([[0.0, 0.0], [1.5, 0.5], [0.2, 2.0]]),
                      weights=np.array([0.4, 0.35, 0.25]))
    return X


@pytest.fixture(scope="session")
def correlated_blobs() -> np.ndarray:
    """650 rows, 3 features, three components with increasingly correlated covariances, shuffled."""
    rng = np.random.default_rng(3)
    means = np.array([[0.0, 0.0, 0.0], [4.0, 3.0, 0.0], [-3.0, 4.0, 3.0]])
    X = np.concatenate([
        rng.multivariate_normal(means[k], np.eye(3) + 0.4 * k * np.ones((3, 3)), size=n)
        for k, n in enumerate((300, 200, 150))
    ])
    return rng.permutation(X)


@pytest.fixture(scope="session")
def local_cluster_client():
    """A real 2-process ``LocalCluster`` and a client that is *not* the default.

    Tests pass it explicitly (``client=``) or activate it with
    ``client.as_current()``, so other tests keep dem's local scheduler.
    """
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = distributed.Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture(scope="session")
def one_worker_client():
    """A real 1-process ``LocalCluster`` (not the default client)."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    client = distributed.Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture(scope="session", autouse=True)
def private_system_temp(tmp_path_factory: pytest.TempPathFactory):
    """The system temporary directory of this session: a fresh one, removed at the end.

    Things the tests start write there without a path of their own: the
    notebooks' ``tempfile.mkdtemp()`` work folders, Dask's
    ``dask-scratch-space`` (LocalCluster workers in this process and in every
    `dem` subprocess), worker log folders. TMPDIR reaches subprocesses and
    notebook kernels; ``tempfile.tempdir`` and Dask's ``temporary-directory``
    this process. pytest's own ``tmp_path`` folders keep their usual place
    (resolved first), where pytest prunes them.
    """
    import dask

    tmp_path_factory.getbasetemp()
    system = tempfile.gettempdir()
    _remove_private_temps_of_dead_sessions(system)
    private = tempfile.mkdtemp(prefix=f"dem-tests-{os.getpid()}-", dir=system)
    saved_env, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = private
    tempfile.tempdir = private
    try:
        with dask.config.set({"temporary-directory": private}):
            yield private
    finally:
        tempfile.tempdir = saved_tempdir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        shutil.rmtree(private, ignore_errors=True)


def _remove_private_temps_of_dead_sessions(system: str) -> None:
    """A session killed before its teardown (SIGKILL, a CI timeout) leaves its directory: collect it."""
    import glob
    import re

    for path in glob.glob(os.path.join(system, "dem-tests-*-*")):
        m = re.fullmatch(r"dem-tests-(\d+)-.*", os.path.basename(path))
        if m is None:
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass  # another user's live session
