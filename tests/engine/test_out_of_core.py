"""A fit on data three times the workers' total memory limit: it streams from Zarr,
finishes with no worker restarted and nothing spilled, and recovers the truth."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import zarr

import dem
from dem.data.generate import generate_dataset

WORKER_LIMIT = 400 * 2**20  # per worker; two workers
N_FEATURES = 16


@pytest.mark.slow
def test_fit_three_times_cluster_memory_streams_without_restart_or_spill(tmp_path):
    from distributed import Client, LocalCluster

    total_limit = 2 * WORKER_LIMIT
    n_samples = int(3.05 * total_limit / (N_FEATURES * 4)) // 250_000 * 250_000 + 250_000
    path = str(tmp_path / "big.zarr")
    generate_dataset(path, n_samples, N_FEATURES, 2, chunk_rows=250_000, dtype="float32", seed=4)
    g = zarr.open_group(path, mode="r")
    assert g["X"].nbytes >= 3 * total_limit
    true_w, true_m = g["true_weights"][:], g["true_means"][:]
    true_cov = g["true_covariances"][:]
    diag_var = np.stack([np.diag(c) for c in true_cov])

    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=WORKER_LIMIT,
                      processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        before = {a: w["id"] for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
        gm = dem.GaussianMixture(
            2, covariance_type="diag", max_iter=2, tol=0.0, client=client,
            # Start near the truth so two iterations (two passes) are enough to check it.
            weights_init=true_w, means_init=true_m + 0.5, precisions_init=1.0 / diag_var,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm.fit(path)
        after = {a: w["id"] for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}

        def spilled(dask_worker) -> int:
            # SpillBuffer: keys now on disk, and bytes ever written to disk.
            data = dask_worker.data
            written = getattr(getattr(data, "spilled_total", None), "disk", 0)
            return len(getattr(data, "slow", {})) + int(written)

        spills = client.run(spilled)

    assert after == before, "a worker was restarted"
    assert all(v == 0 for v in spills.values()), spills
    assert gm.history_[-1]["n_rows"] == n_samples
    order = np.argsort(true_m[:, 0])
    np.testing.assert_allclose(gm.means_[np.argsort(gm.means_[:, 0])], true_m[order], atol=0.02)
