"""Synthetic datasets: layout, chunking, determinism, statistics, atomic publication."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import zarr

from dem.data.generate import EIGENVALUE_RANGE, generate_dataset, true_parameters
from dem.errors import ConfigError, DataError


def chunk_digests(path: Path) -> dict[str, str]:
    """sha256 of every stored chunk file of X, labels and weights (the bytes on disk)."""
    out = {}
    for name in ("X", "labels", "weights"):
        root = path / name
        if not root.exists():
            continue
        for file in sorted((root / "c").rglob("*")):
            if file.is_file():
                out[str(file.relative_to(path))] = hashlib.sha256(file.read_bytes()).hexdigest()
    return out


def test_layout_chunking_and_codec(tmp_path: Path) -> None:
    path = tmp_path / "d.zarr"
    summary = generate_dataset(path, 10_500, 3, 4, chunk_rows=1_000, dtype="float64", seed=7, weighted=True)
    assert summary["n_chunks"] == 11 and sum(summary["component_counts"]) == 10_500
    g = zarr.open_group(str(path), mode="r")
    assert g.metadata.zarr_format == 3
    X = g["X"]
    assert X.shape == (10_500, 3) and X.chunks == (1_000, 3) and X.dtype == np.float64
    (codec,) = X.compressors
    assert type(codec).__name__ == "BloscCodec"
    assert codec.cname.value == "lz4" and codec.clevel == 5 and codec.shuffle.value == "shuffle"
    labels = g["labels"][:]
    assert g["labels"].dtype == np.int32 and g["labels"].chunks == (1_000,)
    assert labels.min() >= 0 and labels.max() < 4
    assert np.bincount(labels, minlength=4).tolist() == summary["component_counts"]
    w = g["weights"][:]
    assert g["weights"].dtype == np.float64 and (w > 0).all()
    assert g["true_weights"].shape == (4,) and g["true_means"].shape == (4, 3)
    assert g["true_covariances"].shape == (4, 3, 3)
    assert np.isfinite(X[:]).all()
    attrs = dict(g.attrs)
    assert attrs["complete"] is True
    assert {k: attrs[k] for k in ("seed", "n_samples", "n_features", "n_components", "chunk_rows", "dtype")} == {
        "seed": 7, "n_samples": 10_500, "n_features": 3, "n_components": 4, "chunk_rows": 1_000, "dtype": "float64"}
    # Nothing left beside it: the temporary directory was renamed into place.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.zarr"]


def test_float32_storage_and_no_weights_by_default(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "d.zarr", 2_000, 2, 2, chunk_rows=500)
    g = zarr.open_group(str(tmp_path / "d.zarr"), mode="r")
    assert g["X"].dtype == np.float32 and "weights" not in g


def test_true_parameters_follow_the_seed(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "d.zarr", 1_000, 5, 3, chunk_rows=400, seed=11)
    g = zarr.open_group(str(tmp_path / "d.zarr"), mode="r")
    w, m, c = true_parameters(11, 5, 3)
    np.testing.assert_array_equal(g["true_weights"][:], w)
    np.testing.assert_array_equal(g["true_means"][:], m)
    np.testing.assert_array_equal(g["true_covariances"][:], c)
    w2, m2, _ = true_parameters(12, 5, 3)
    assert not np.allclose(m, m2)


@pytest.mark.parametrize("K, D", [(6, 8), (10, 2), (3, 1)])
def test_true_parameters_are_separated_and_well_conditioned(K: int, D: int) -> None:
    w, m, c = true_parameters(0, D, K, separation=6.0)
    assert w.sum() == pytest.approx(1.0) and (w >= 0.5 / K - 1e-12).all()
    eig = np.linalg.eigvalsh(c)
    assert (eig > 0).all()
    assert (eig.max(axis=1) / eig.min(axis=1) <= EIGENVALUE_RANGE[1] / EIGENVALUE_RANGE[0] + 1e-9).all()
    dist = np.linalg.norm(m[:, None] - m[None], axis=-1)[np.triu_indices(K, 1)]
    # The closest pair is exactly `separation` largest standard deviations apart.
    assert dist.min() == pytest.approx(6.0 * np.sqrt(eig.max()))


def test_same_seed_same_bytes_whatever_the_scheduler(tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    args = dict(n_samples=9_000, n_features=3, n_components=3, chunk_rows=1_000, seed=5, weighted=True)
    generate_dataset(tmp_path / "one.zarr", **args, n_threads=1)
    generate_dataset(tmp_path / "four.zarr", **args, n_threads=4)
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        generate_dataset(tmp_path / "dist.zarr", **args, client=client)
    one = chunk_digests(tmp_path / "one.zarr")
    assert len(one) == 27
    assert chunk_digests(tmp_path / "four.zarr") == one
    assert chunk_digests(tmp_path / "dist.zarr") == one
    generate_dataset(tmp_path / "other.zarr", **{**args, "seed": 6})
    assert chunk_digests(tmp_path / "other.zarr") != one


def test_statistics_match_the_true_parameters(tmp_path: Path) -> None:
    """Sample moments per true component agree with the true parameters within 5 standard errors."""
    generate_dataset(tmp_path / "d.zarr", 60_000, 4, 3, chunk_rows=7_000, dtype="float64", seed=3)
    g = zarr.open_group(str(tmp_path / "d.zarr"), mode="r")
    X, labels = g["X"][:], g["labels"][:]
    w, m, c = g["true_weights"][:], g["true_means"][:], g["true_covariances"][:]
    n = len(labels)
    for k in range(3):
        Xk = X[labels == k]
        nk = len(Xk)
        assert abs(nk / n - w[k]) < 5 * np.sqrt(w[k] * (1 - w[k]) / n)
        se_mean = np.sqrt(np.diag(c[k]) / nk)
        assert (np.abs(Xk.mean(axis=0) - m[k]) < 5 * se_mean).all()
        # Var of a sample covariance entry of a Gaussian: (Σii Σjj + Σij²) / n.
        se_cov = np.sqrt((np.outer(np.diag(c[k]), np.diag(c[k])) + c[k] ** 2) / nk)
        assert (np.abs(np.cov(Xk, rowvar=False) - c[k]) < 5 * se_cov).all()


def test_existing_path_is_refused_unless_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "d.zarr"
    generate_dataset(path, 100, 2, 2, chunk_rows=50, seed=1)
    with pytest.raises(DataError, match="already exists"):
        generate_dataset(path, 100, 2, 2, chunk_rows=50, seed=2)
    generate_dataset(path, 100, 2, 2, chunk_rows=50, seed=2, overwrite=True)
    assert zarr.open_group(str(path), mode="r").attrs["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.zarr"]


def test_failure_leaves_nothing_behind(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(Exception):
        generate_dataset(blocker / "d.zarr", 100, 2, 2, chunk_rows=50)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("kwargs, message", [
    ({"n_samples": 0}, "n_samples must be an integer >= 1; got 0"),
    ({"n_features": -2}, "n_features must be an integer >= 1; got -2"),
    ({"n_components": 2.5}, "n_components must be an integer >= 1; got 2.5"),
    ({"chunk_rows": True}, "chunk_rows must be an integer >= 1; got True"),
    ({"seed": -1}, "seed must be an integer >= 0; got -1"),
    ({"dtype": "int8"}, "dtype must be one of float32, float64; got 'int8'"),
    ({"separation": 0}, "separation must be a finite number > 0; got 0"),
    ({"n_samples": 3, "n_components": 4}, "n_components (4) must not exceed n_samples (3)"),
])
def test_invalid_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = dict(n_samples=100, n_features=2, n_components=2) | kwargs
    with pytest.raises(ConfigError) as info:
        generate_dataset(tmp_path / "d.zarr", **args)
    assert str(info.value) == message
    assert not os.listdir(tmp_path)


def test_memory_stays_at_a_few_chunks(tmp_path: Path) -> None:
    """Python-heap peak (numpy buffers are traced) is a few chunks, not the dataset."""
    chunk_rows, D = 20_000, 4
    chunk_bytes = chunk_rows * D * 8
    tracemalloc.start()
    try:
        generate_dataset(tmp_path / "d.zarr", 60 * chunk_rows, D, 3, chunk_rows=chunk_rows, dtype="float64",
                         n_threads=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * chunk_bytes, (peak, 60 * chunk_bytes)
