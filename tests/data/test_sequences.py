"""Sequence datasets: offsets, partitions of whole sequences, the Zarr layout, the generator.

References are direct computations on the arrays (cumulative sums, counts
of the drawn states), never dem's own output.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from dem.engine.executor import Executor
from dem.data import generate_sequences as gen
from dem.data import sequences as seq
from dem.errors import ConfigError, DataError


# -- offsets and lengths ----------------------------------------------------


def test_offsets_from_lengths_is_the_cumulative_sum():
    np.testing.assert_array_equal(seq.offsets_from_lengths([3, 1, 4], 8), [0, 3, 4, 8])
    np.testing.assert_array_equal(seq.offsets_from_lengths(None, 5), [0, 5])
    np.testing.assert_array_equal(seq.offsets_from_lengths(np.array([2.0, 3.0]), 5), [0, 2, 5])


@pytest.mark.parametrize("lengths, n, match", [
    ([3, 0, 5], 8, "sequence 1 has length 0; empty sequences"),
    ([3, -1, 6], 8, "sequence 1 has length -1"),
    ([3, 4], 8, "lengths sum to 7 but X has 8 samples"),
    ([], 8, "at least one sequence"),
    ([[4, 4]], 8, "1-D"),
    ([2.5, 5.5], 8, "must be integers"),
])
def test_bad_lengths_are_one_clear_error(lengths, n, match):
    with pytest.raises(DataError, match=match):
        seq.offsets_from_lengths(lengths, n)


@pytest.mark.parametrize("offsets, n, match", [
    ([1, 4, 8], 8, r"offsets\[0\] is 1; the first sequence must start at row 0"),
    ([0, 4, 4, 8], 8, r"does not rise at sequence 1 .* empty sequences"),
    ([0, 5, 3, 8], 8, r"must rise strictly; offsets\[2\] = 3 < offsets\[1\] = 5"),
    ([0, 4, 7], 8, r"offsets\[-1\] is 7 but X has 8 rows"),
    ([0, 4, 9], 8, r"offsets\[-1\] is 9 but X has 8 rows"),
    ([0.0, 8.0], 8, "integer"),
    ([0], 8, "n_sequences \\+ 1 >= 2"),
])
def test_bad_offsets_are_one_clear_error(offsets, n, match):
    with pytest.raises(DataError, match=match):
        seq.check_offsets(np.array(offsets), n)


# -- partitions hold whole sequences -----------------------------------------


def test_cuts_fall_on_sequence_boundaries_near_the_target():
    lengths = np.array([5, 7, 3, 9, 4, 6, 8, 2, 5, 1])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    cuts = seq.sequence_cuts(offsets, 12)
    assert cuts[0] == 0 and cuts[-1] == len(lengths)
    assert np.all(np.diff(cuts) > 0)
    # Each cut is the boundary nearest to a multiple of 12 rows.
    for k, c in enumerate(cuts[1:-1], start=1):
        assert abs(offsets[c] - 12 * k) <= max(lengths)
    rows = np.diff(offsets[cuts])
    assert rows.sum() == lengths.sum()


def test_a_sequence_longer_than_the_target_is_not_split():
    lengths = np.array([3, 100, 4, 2])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    cuts = seq.sequence_cuts(offsets, 10)
    bounds = list(zip(offsets[cuts[:-1]], offsets[cuts[1:]]))
    assert any(a <= 3 and b >= 103 for a, b in bounds)
    assert set(cuts) <= set(range(len(lengths) + 1))


def test_one_partition_when_the_target_covers_everything():
    offsets = np.array([0, 4, 9])
    np.testing.assert_array_equal(seq.sequence_cuts(offsets, 100), [0, 2])


def test_numpy_partitions_are_views_with_their_lengths_as_side_data(rng):
    lengths = rng.integers(1, 30, size=40)
    X = rng.normal(size=(lengths.sum(), 2))
    data = seq.from_numpy(X, lengths, partition_rows=100)
    assert data.n_partitions > 3 and data.in_memory
    assert data.n_sequences == 40
    rebuilt = np.concatenate(data.x_refs)
    np.testing.assert_array_equal(rebuilt, X)
    np.testing.assert_array_equal(np.concatenate(data.length_refs), lengths)
    for (a, b), x, w in zip(data.bounds, data.x_refs, data.length_refs):
        assert x.shape[0] == b - a == w.sum()
        assert np.shares_memory(x, X)
        assert w.dtype == np.int64
    # The same data and target always cut the same way.
    again = seq.from_numpy(X.copy(), list(lengths), partition_rows=100)
    assert again.bounds == data.bounds


def test_zarr_partitions_read_their_own_rows_through_the_executor(tmp_path, rng):
    lengths = rng.integers(1, 25, size=30)
    X = rng.normal(size=(lengths.sum(), 3))
    path = seq.write_sequences(tmp_path / "s.zarr", X, lengths, chunk_rows=64)
    data = seq.from_zarr(path, partition_rows=90)
    assert not data.in_memory and data.n_partitions > 2
    ex = Executor(n_threads=2)
    placed = ex.place(data, cache=False)
    got = ex.map(lambda shared, part: (part.start, np.asarray(part.X), part.lengths), None, placed)
    for (a, b), (start, Xb, lens) in zip(data.bounds, got):
        assert start == a
        np.testing.assert_array_equal(Xb, X[a:b])
        assert lens.sum() == b - a
    np.testing.assert_array_equal(np.concatenate([g[2] for g in got]), lengths)
    assert data.fingerprint()["n_sequences"] == 30


def test_symbols_read_as_one_feature(tmp_path):
    X = np.array([0, 2, 1, 1, 0, 2], dtype=np.int32)
    data = seq.from_numpy(X[:, None], [2, 4], symbols=True)
    assert data.n_features == 1 and data.x_refs[0].ndim == 1
    path = seq.write_sequences(tmp_path / "c.zarr", X, [2, 4])
    assert seq.from_zarr(path, symbols=True).n_features == 1
    with pytest.raises(DataError, match="integer symbols"):
        seq.from_numpy(X.astype(float), [2, 4], symbols=True)


@pytest.mark.parametrize("build, match", [
    (lambda g: g.create_array("offsets", data=np.array([0, 3, 3, 6])), "empty sequences"),
    (lambda g: g.create_array("offsets", data=np.array([0, 4, 2, 6])), "must rise strictly"),
    (lambda g: g.create_array("offsets", data=np.array([0, 3, 5])), r"offsets\[-1\] is 5"),
    (lambda g: g.create_array("offsets", data=np.array([2, 4, 6])), "must start at row 0"),
    (lambda g: None, "has no array 'offsets'"),
])
def test_bad_zarr_offsets_are_one_clear_error(tmp_path, build, match):
    group = zarr.open_group(str(tmp_path / "bad.zarr"), mode="w")
    group.create_array("X", data=np.zeros((6, 2)))
    build(group)
    with pytest.raises(DataError, match=match):
        seq.from_zarr(str(tmp_path / "bad.zarr"))


def test_missing_path_and_lengths_with_zarr_are_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        seq.as_sequences(str(tmp_path / "nope.zarr"))
    path = seq.write_sequences(tmp_path / "s.zarr", np.zeros((4, 1)), [4])
    with pytest.raises(DataError, match="do not pass lengths"):
        seq.as_sequences(path, [4])


def test_a_sequence_too_long_for_one_task_is_refused_naming_it():
    offsets = np.array([0, 10, 1_000_010, 1_000_020])
    with pytest.raises(DataError, match=r"sequence 1 has 1000000 steps.*8 x length x n_components x 8"):
        seq.check_sequence_memory(offsets, n_components=8, n_features=4, limit_bytes=64 * 2**20)
    seq.check_sequence_memory(offsets, n_components=8, n_features=4, limit_bytes=2**30)


# -- the generator ------------------------------------------------------------


@pytest.mark.parametrize("kind, kw", [("gaussian", dict(n_features=2)), ("categorical", dict(n_symbols=4)),
                                      ("gmm", dict(n_features=2, n_mix=2))])
def test_generated_layout_and_chunks_of_whole_sequences(tmp_path, kind, kw):
    info = gen.generate_hmm_dataset(tmp_path / "d.zarr", 30, 40, 3, kind=kind, seed=5, chunk_rows=100, **kw)
    g = zarr.open_group(str(tmp_path / "d.zarr"), mode="r")
    assert info["chunk_rows"] == 80 == g["X"].chunks[0]  # round(100 / 40) = 2 sequences per chunk
    np.testing.assert_array_equal(g["offsets"][:], np.arange(31) * 40)
    assert g["X"].shape[0] == g["states"].shape[0] == 1200
    assert g.attrs["complete"] and g.attrs["kind"] == kind
    np.testing.assert_allclose(g["true_transmat"][:].sum(axis=1), 1.0)
    if kind == "categorical":
        assert g["X"].ndim == 1 and g["X"][:].max() < 4
    else:
        assert g["X"].shape[1] == 2


def test_generated_data_follow_the_true_parameters(tmp_path):
    gen.generate_hmm_dataset(tmp_path / "d.zarr", 400, 50, 3, n_features=2, seed=3, chunk_rows=5000,
                             dtype="float64")
    g = zarr.open_group(str(tmp_path / "d.zarr"), mode="r")
    X, s = g["X"][:], g["states"][:].reshape(400, 50)
    # Empirical transition frequencies against the true matrix.
    counts = np.zeros((3, 3))
    np.add.at(counts, (s[:, :-1].ravel(), s[:, 1:].ravel()), 1)
    np.testing.assert_allclose(counts / counts.sum(axis=1, keepdims=True), g["true_transmat"][:], atol=0.02)
    np.testing.assert_allclose(np.bincount(s[:, 0], minlength=3) / 400, g["true_startprob"][:], atol=0.08)
    flat = s.ravel()
    for k in range(3):
        np.testing.assert_allclose(X[flat == k].mean(axis=0), g["true_means"][k], atol=0.1)
        np.testing.assert_allclose(np.cov(X[flat == k].T), g["true_covars"][k], atol=0.2)


def test_generation_is_a_function_of_the_seed_alone(tmp_path):
    kw = dict(n_features=3, seed=9, chunk_rows=300)
    gen.generate_hmm_dataset(tmp_path / "a.zarr", 20, 60, 2, n_threads=1, **kw)
    gen.generate_hmm_dataset(tmp_path / "b.zarr", 20, 60, 2, n_threads=2, **kw)
    gen.generate_hmm_dataset(tmp_path / "c.zarr", 20, 60, 2, n_threads=2, **dict(kw, seed=10))
    a, b, c = (zarr.open_group(str(tmp_path / f"{n}.zarr"), mode="r") for n in "abc")
    assert a["X"][:].tobytes() == b["X"][:].tobytes()
    assert a["states"][:].tobytes() == b["states"][:].tobytes()
    assert a["X"][:].tobytes() != c["X"][:].tobytes()


def test_generator_argument_errors(tmp_path):
    with pytest.raises(ConfigError, match="kind must be one of"):
        gen.generate_hmm_dataset(tmp_path / "x.zarr", 2, 5, 2, n_features=1, kind="poisson")
    with pytest.raises(ConfigError, match="n_symbols"):
        gen.generate_hmm_dataset(tmp_path / "x.zarr", 2, 5, 2, kind="categorical")
    with pytest.raises(ConfigError, match="length must be an integer >= 1"):
        gen.generate_hmm_dataset(tmp_path / "x.zarr", 2, 0, 2, n_features=1)
    gen.generate_hmm_dataset(tmp_path / "x.zarr", 2, 5, 2, n_features=1)
    with pytest.raises(DataError, match="already exists"):
        gen.generate_hmm_dataset(tmp_path / "x.zarr", 2, 5, 2, n_features=1)
    gen.generate_hmm_dataset(tmp_path / "x.zarr", 3, 5, 2, n_features=1, overwrite=True)
    assert zarr.open_group(str(tmp_path / "x.zarr"), mode="r")["offsets"].shape == (4,)


def test_the_same_sequence_data_named_differently_has_one_fingerprint(tmp_path, monkeypatch):
    # issue 17 item 3: a resumed HMM fit must not be refused over "./s.zarr" vs "s.zarr".
    seq.write_sequences(tmp_path / "s.zarr", np.arange(12.0).reshape(6, 2), [2, 4], chunk_rows=4)
    monkeypatch.chdir(tmp_path)
    prints = [seq.from_zarr(p).fingerprint() for p in ("s.zarr", "./s.zarr", str(tmp_path / "s.zarr") + "/")]
    assert prints[0]["source"] == f"zarr {tmp_path}/s.zarr/X"
    assert prints[1] == prints[0] and prints[2] == prints[0]
