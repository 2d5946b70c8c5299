"""Every supported input gives the numbers of plain numpy input; bad input
gives one clear DemError line.
"""

from __future__ import annotations

import pathlib
import warnings

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from sklearn.exceptions import ConvergenceWarning

import dem
from dem.data.partitions import as_partitioned
from dem.errors import ConfigError, DataError, DemError

FITTED = ("weights_", "means_", "covariances_", "precisions_cholesky_", "lower_bound_")

# The string "feature" coordinate in the Zarr store has no Zarr-v3 spec yet; zarr warns.
pytestmark = pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3 specification")
KW = dict(n_components=3, tol=0.0, max_iter=10, random_state=11)


def _fit(X, **kw):
    args = dict(KW)
    sample_weight = kw.pop("sample_weight", None)
    variable = kw.pop("variable", None)
    args.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return dem.GaussianMixture(**args).fit(X, sample_weight=sample_weight, variable=variable)


def _assert_same_fit(a, b, rtol=1e-10):
    for name in FITTED:
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=rtol, atol=1e-12, err_msg=name)


@pytest.fixture(scope="module")
def X(blobs):
    return blobs[0]


@pytest.fixture(scope="module")
def w(X):
    return np.random.default_rng(1).uniform(0.2, 3.0, size=len(X))


@pytest.fixture(scope="module")
def reference(X):
    return _fit(X)


@pytest.fixture(scope="module")
def weighted_reference(X, w):
    return _fit(X, sample_weight=w)


@pytest.fixture(scope="module")
def store(tmp_path_factory, X, w):
    """A Zarr group with X (200-row chunks), weights and a feature coordinate; and a bare array."""
    root = tmp_path_factory.mktemp("partitions")
    group = zarr.open_group(str(root / "group.zarr"), mode="w")
    group.create_array("X", data=X, chunks=(200, X.shape[1]))
    group.create_array("weights", data=w, chunks=(200,))
    group.create_array("short_weights", data=w[:-5], chunks=(200,))
    group.create_array("negative_weights", data=np.where(np.arange(len(w)) == 901, -1.0, w), chunks=(200,))
    group.create_array("feature", data=np.array(["x", "y", "z"]))
    zarr.create_array(str(root / "bare.zarr"), data=X, chunks=(300, X.shape[1]))
    other = zarr.open_group(str(root / "other.zarr"), mode="w")
    other.create_array("Y", data=X, chunks=(200, X.shape[1]))
    return root


# -- every input type gives the numpy numbers -----------------------------


@pytest.mark.parametrize("partition_rows", [None, 256])
def test_dask_array(X, reference, partition_rows):
    _assert_same_fit(_fit(da.from_array(X, chunks=(300, 3)), partition_rows=partition_rows), reference)


@pytest.mark.parametrize("chunked", [False, True])
def test_xarray_dataarray_with_feature_coords(X, reference, chunked):
    arr = xr.DataArray(X, dims=("sample", "feature"),
                       coords={"sample": np.arange(len(X)), "feature": ["x", "y", "z"]})
    if chunked:
        arr = arr.chunk({"sample": 500})
    est = _fit(arr)
    _assert_same_fit(est, reference)
    np.testing.assert_array_equal(est.feature_names_, ["x", "y", "z"])
    assert reference.feature_names_ is None


def test_xarray_dataarray_transposed(X, reference):
    arr = xr.DataArray(X.T, dims=("feature", "sample"))
    _assert_same_fit(_fit(arr), reference)


def test_xarray_dataset_with_variable(X, reference):
    ds = xr.Dataset({"X": (("sample", "feature"), X), "other": (("sample",), np.zeros(len(X)))},
                    coords={"feature": ["x", "y", "z"]})
    est = _fit(ds, variable="X")
    _assert_same_fit(est, reference)
    np.testing.assert_array_equal(est.feature_names_, ["x", "y", "z"])
    with pytest.raises(DataError, match="pass variable=<name>"):
        _fit(ds)


@pytest.mark.parametrize("partition_rows", [None, 300])
def test_zarr_group_path(store, reference, partition_rows):
    est = _fit(str(store / "group.zarr"), partition_rows=partition_rows)
    _assert_same_fit(est, reference)
    np.testing.assert_array_equal(est.feature_names_, ["x", "y", "z"])


def test_zarr_group_pathlib_and_variable(store, reference):
    _assert_same_fit(_fit(pathlib.Path(store / "group.zarr"), variable="X"), reference)
    _assert_same_fit(_fit(str(store / "other.zarr"), variable="Y"), reference)


def test_zarr_bare_array_path(store, reference):
    data = as_partitioned(str(store / "bare.zarr"), partition_rows=500)
    assert data.bounds[:2] == [(0, 600), (600, 1200)]  # whole 300-row chunks
    _assert_same_fit(_fit(str(store / "bare.zarr")), reference)


def test_zarr_with_weights_array(store, w, weighted_reference, reference):
    est = _fit(str(store / "group.zarr"), sample_weight="weights", partition_rows=400)
    _assert_same_fit(est, weighted_reference)
    assert not np.allclose(weighted_reference.means_, reference.means_, rtol=1e-6)


def test_dask_and_xarray_weights(X, w, weighted_reference):
    _assert_same_fit(_fit(da.from_array(X, chunks=400), sample_weight=da.from_array(w, chunks=400)),
                     weighted_reference)
    arr = xr.DataArray(X, dims=("sample", "feature"))
    _assert_same_fit(_fit(arr, sample_weight=xr.DataArray(w, dims="sample")), weighted_reference)


def test_integer_and_float32_inputs_are_read_as_their_values():
    rng = np.random.default_rng(0)
    Xi = np.concatenate([rng.integers(0, 5, size=(200, 2)), rng.integers(20, 25, size=(200, 2))])
    _assert_same_fit(_fit(Xi, n_components=2), _fit(Xi.astype(np.float64), n_components=2))
    _assert_same_fit(_fit(Xi.tolist(), n_components=2), _fit(Xi.astype(np.float64), n_components=2))


# -- bad input: one clear error line --------------------------------------


def _raises(exc, match, fn):
    with pytest.raises(exc, match=match) as info:
        fn()
    assert isinstance(info.value, DemError)
    assert "\n" not in str(info.value)
    return info.value


def _user_start(D=3, K=3):
    return dict(weights_init=np.full(K, 1 / K), means_init=np.arange(K * D, dtype=float).reshape(K, D),
                precisions_init=np.stack([np.eye(D)] * K))


@pytest.mark.parametrize("bad,what", [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")])
def test_non_finite_value_names_its_row_in_a_middle_partition(X, bad, what):
    Xb = X.copy()
    Xb[937, 2] = bad
    data = as_partitioned(Xb, partition_rows=100)
    assert data.n_partitions == 16
    _raises(DataError, rf"{what} at row 937, feature 2",
            lambda: _fit(Xb, partition_rows=100, **_user_start()))


def test_nan_in_zarr_names_its_row(tmp_path, X):
    Xb = X.copy()
    Xb[1111, 0] = np.nan
    g = zarr.open_group(str(tmp_path / "nan.zarr"), mode="w")
    g.create_array("X", data=Xb, chunks=(100, 3))
    _raises(DataError, r"NaN at row 1111, feature 0",
            lambda: _fit(str(tmp_path / "nan.zarr"), partition_rows=100, **_user_start()))


@pytest.mark.parametrize("init_params", ["kmeans", "random"])
def test_nan_with_default_init_names_its_row(X, init_params):
    Xb = X.copy()
    Xb[937, 2] = np.nan
    _raises(DataError, r"NaN at row 937", lambda: _fit(Xb, partition_rows=100, init_params=init_params))


def test_one_dimensional_input():
    _raises(DataError, r"must be 2-D.*1-D", lambda: _fit(np.arange(10.0)))


def test_three_dimensional_input():
    _raises(DataError, r"must be 2-D.*3-D", lambda: _fit(np.zeros((4, 5, 3))))


def test_fewer_samples_than_components(X):
    _raises(DataError, r"2 samples, fewer than n_components=3", lambda: _fit(X[:2]))


@pytest.mark.parametrize("strings", [np.array([["a", "b"]] * 5), [["a", "b"]] * 5])
def test_strings(strings):
    _raises(DataError, r"must hold real numbers", lambda: _fit(strings, n_components=2))


def test_missing_zarr_path(tmp_path):
    _raises(DataError, r"does not exist", lambda: _fit(str(tmp_path / "nowhere.zarr")))


def test_zarr_group_without_X(store):
    _raises(DataError, r"has no array 'X'; it has \['Y'\]", lambda: _fit(str(store / "other.zarr")))


def test_weights_of_wrong_shape(X):
    _raises(DataError, r"sample_weight must have shape \(1600,\).*\(1599,\)",
            lambda: _fit(X, sample_weight=np.ones(1599)))


def test_negative_weights(X):
    w = np.ones(len(X))
    w[3] = -1.0
    _raises(DataError, r"sample_weight is negative at row 3", lambda: _fit(X, sample_weight=w))


def test_weights_summing_to_zero(X):
    _raises(DataError, r"sample_weight sums to zero", lambda: _fit(X, sample_weight=np.zeros(len(X))))


def test_zarr_weights_of_wrong_shape(store):
    _raises(DataError, r"weights array 'short_weights' must have shape \(1600,\)",
            lambda: _fit(str(store / "group.zarr"), sample_weight="short_weights"))


def test_zarr_weights_missing(store):
    _raises(DataError, r"no weights array 'nope'", lambda: _fit(str(store / "group.zarr"), sample_weight="nope"))


def test_negative_zarr_weights(store):
    _raises(DataError, r"negative at row 901",
            lambda: _fit(str(store / "group.zarr"), sample_weight="negative_weights"))


def test_negative_dask_weights(X):
    w = np.ones(len(X))
    w[901] = -1.0
    _raises(DataError, r"negative at row 901",
            lambda: _fit(da.from_array(X, chunks=400), sample_weight=da.from_array(w, chunks=400)))


def test_invalid_covariance_type(X):
    # scikit-learn's wording (and its InvalidParameterError, which dem's ConfigError subclasses).
    _raises(ConfigError, r"The 'covariance_type' parameter of GaussianMixture must be a str among .* Got 'banana'",
            lambda: _fit(X, covariance_type="banana"))


@pytest.mark.parametrize("n", [0, -1, 1.5])
def test_invalid_n_components(X, n):
    _raises(ConfigError, rf"The 'n_components' parameter of GaussianMixture must be an int in the range "
                         rf"\[1, inf\).* Got {n} instead", lambda: _fit(X, n_components=n))


def test_negative_tol(X):
    _raises(ConfigError, r"The 'tol' parameter of GaussianMixture must be a float in the range \[0.0, inf\). "
                         r"Got -0.1 instead", lambda: _fit(X, tol=-0.1))


# -- issue 17 item 3: one location, one fingerprint ------------------------------

@pytest.mark.parametrize("spelling, expected", [
    ("good.zarr", "{cwd}/good.zarr"),
    ("./good.zarr", "{cwd}/good.zarr"),
    ("./sub/../good.zarr/", "{cwd}/good.zarr"),
    ("{cwd}/good.zarr", "{cwd}/good.zarr"),
    ("file://{cwd}/good.zarr", "{cwd}/good.zarr"),
    ("s3://bucket/data/good.zarr", "s3://bucket/data/good.zarr"),
    ("S3://bucket//data/./good.zarr/", "s3://bucket/data/good.zarr"),
    ("gs://bucket/Data/../good.zarr", "gs://bucket/Data/../good.zarr"),  # '..' is part of an object key
])
def test_normalise_location(tmp_path, monkeypatch, spelling, expected):
    from dem.data.row_sources import normalise_location

    monkeypatch.chdir(tmp_path)
    cwd = str(tmp_path)
    assert normalise_location(spelling.format(cwd=cwd)) == expected.format(cwd=cwd)


def test_the_same_zarr_data_named_differently_has_one_fingerprint(store, monkeypatch):
    monkeypatch.chdir(store)
    spellings = ["group.zarr", "./group.zarr", str(store / "group.zarr"), f"{store}/./group.zarr/",
                 f"file://{store}/group.zarr"]
    prints = [as_partitioned(s).fingerprint() for s in spellings]
    assert prints[0]["source"] == f"zarr {store}/group.zarr/X"
    assert all(p == prints[0] for p in prints), prints


def test_resuming_with_another_spelling_of_the_data_path(store, monkeypatch, tmp_path):
    # The reproduction: fit("good.zarr") then fit("./good.zarr") raised CheckpointError.
    monkeypatch.chdir(store)
    straight = _fit(str(store / "group.zarr"), max_iter=6)
    run = str(tmp_path / "run")
    first = _fit("group.zarr", max_iter=3, checkpoint_dir=run)
    assert first.n_iter_ == 3
    resumed = _fit("./group.zarr", max_iter=5, checkpoint_dir=run)
    resumed = _fit(str(store / "group.zarr"), max_iter=6, checkpoint_dir=run)
    # Resumed twice: at iteration 4 ("./group.zarr") and 6 (the absolute path).
    assert [h["resumed"] for h in resumed.history_] == [False, False, False, True, False, True]
    for name in FITTED:
        np.testing.assert_array_equal(getattr(resumed, name), getattr(straight, name), err_msg=name)


# -- issue 17 item 6: a damaged chunk is named with its rows ----------------------

def test_a_truncated_chunk_is_one_line_naming_the_array_chunk_and_rows(tmp_path):
    X = np.arange(3000.0).reshape(1000, 3)
    group = zarr.open_group(str(tmp_path / "d.zarr"), mode="w")
    group.create_array("X", data=X, chunks=(200, 3))
    chunk = tmp_path / "d.zarr" / "X" / "c" / "2" / "0"
    chunk.write_bytes(chunk.read_bytes()[:7])
    data = as_partitioned(str(tmp_path / "d.zarr"), partition_rows=600)
    np.testing.assert_array_equal(data.x_refs[0].read(0, 400), X[:400])  # the chunks before it still read
    with pytest.raises(DataError) as info:
        data.x_refs[0].read(0, 600)
    message = str(info.value)
    assert message.startswith(f"cannot read {chunk} (rows 400–599 of Zarr array {tmp_path}/d.zarr/X): ")
    assert message.endswith("; the chunk is damaged or truncated: restore or rewrite the data")
    assert "\n" not in message


def test_scattered_partitions_are_read_in_one_call_bit_for_bit(tmp_path):
    from dem.data.row_sources import ZarrRows, read_partition, read_scattered

    rng = np.random.default_rng(3)
    X, w, y = rng.standard_normal((1000, 3)), rng.random(1000), rng.integers(0, 4, 1000)
    group = zarr.open_group(str(tmp_path / "d.zarr"), mode="w")
    for name, value in (("X", X), ("w", w), ("y", y)):
        group.create_array(name, data=value, chunks=(100,) + value.shape[1:])
    refs = [ZarrRows(str(tmp_path / "d.zarr"), name) for name in ("X", "w", "y")]
    sources = [(*refs, None, a, a + 100) for a in (700, 100, 300, 900)]  # a shuffled pass order
    got = read_scattered(sources)
    for src, part in zip(sources, got):
        one = read_partition(*src)
        assert part.start == src[4]
        assert np.array_equal(part.X, X[src[4]:src[5]]) and np.array_equal(part.X, one.X)
        assert np.array_equal(part.weights, w[src[4]:src[5]]) and np.array_equal(part.y, y[src[4]:src[5]])
    # Sources that are not all one Zarr array are left to one-by-one reads.
    assert read_scattered([sources[0], (X, None, None, None, 0, 100)]) is None
    assert read_scattered([(refs[0], None, None, None, 0, 100), (refs[0], refs[1], None, None, 100, 200)]) is None
