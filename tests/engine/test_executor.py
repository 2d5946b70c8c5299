"""The executor at scale: fused subtrees give the unfused tree's bits, dask inputs
(persisted, xarray-wrapped, irregular chunks) on a real cluster, placement that
spreads tasks over workers, and Zarr read a slab at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import time
import warnings

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from sklearn.exceptions import ConvergenceWarning

import dem
from dem.data import row_sources as P
from dem.data.partitions import as_partitioned
from dem.engine import tasks
from dem.engine.executor import Evaluation, Executor
from dem.engine.fusion import fold, fused_depth, subtrees
from dem.engine.reduction import tree_reduce
from dem.errors import DataError
from dem.families.gaussian_mixture import GaussianMixtureFamily

FITTED = ("weights_", "means_", "covariances_", "precisions_cholesky_")
STATS = ("n_rows", "weight_sum", "log_likelihood", "resp_sum", "first_moment", "second_moment")


def _fit(X, client=None, **kw):
    args = dict(n_components=3, tol=0.0, max_iter=6, random_state=3, partition_rows=50)
    args.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return dem.GaussianMixture(client=client, **args).fit(X)


def _assert_bitwise(a, b):
    for name in FITTED:
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.lower_bounds_ == b.lower_bounds_


def _assert_stats_bitwise(a, b):
    for name in STATS:
        assert np.array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name))), name


@pytest.fixture(scope="module")
def many(blobs):
    """3,000 rows (the blobs and a shifted copy), 600 partitions of 5 rows: deep enough to fuse two levels."""
    X = np.concatenate([blobs[0], blobs[0][:1400] + 0.25])
    family = GaussianMixtureFamily(3, "full")
    rng = np.random.default_rng(5)
    params = family.params_from(np.array([0.5, 0.3, 0.2]), X[rng.choice(len(X), 3, replace=False)],
                                covariances=np.stack([np.eye(3) * (1 + k) for k in range(3)]))
    return X, family, params


# -- the fused tree is the tree ------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 63, 64, 65, 511, 513, 600])
@pytest.mark.parametrize("fan_in", [2, 3, 8])
def test_fold_and_fused_subtrees_add_exactly_as_the_tree(n, fan_in):
    # Parenthesised concatenation records the tree's shape: equal strings, equal additions.
    def combine(*g):
        return "(" + "".join(g) + ")"

    leaves = [f"{i};" for i in range(n)]
    tree = tree_reduce(leaves, combine, fan_in)
    assert fold(leaves, fan_in, combine) == tree
    for depth in range(4):
        parts = [fold(leaves[r.start:r.stop], fan_in, combine) for r in subtrees(n, fan_in, depth)]
        assert tree_reduce(parts, combine, fan_in) == tree


def test_fused_depth_keeps_every_thread_busy_and_tasks_small():
    assert fused_depth(10_000, 8, 2, 1_600) == 3          # 20 tasks for 2 threads
    assert fused_depth(8, 8, 2, 16 << 20) == 0            # W1: 8 partitions stay 8 tasks
    assert fused_depth(10_000, 8, 4_000, 1_600) == 0      # a big cluster needs every partition as a task
    assert fused_depth(1_000, 8, 1, 32 << 20) == 0        # large partitions are never fused
    for n, threads in [(600, 1), (600, 2), (5_000, 16)]:
        d = fused_depth(n, 8, threads, 100)
        assert len(subtrees(n, 8, d)) >= 4 * threads


def test_fused_and_unfused_graphs_give_the_same_bits_locally(many):
    X, family, params = many
    data = as_partitioned(X, partition_rows=5)
    fused, unfused = Executor(n_threads=1), Executor(n_threads=1, fuse=False)
    placed = fused.place(data, cache=True)
    assert placed.depth == 2  # 600 partitions: 10 tasks of 64 partitions for one thread
    a = fused.evaluate([Evaluation(family, params)], placed)[0]
    b = unfused.evaluate([Evaluation(family, params)], unfused.place(data, cache=True))[0]
    _assert_stats_bitwise(a, b)
    # The fixed tree written out: per-partition E-steps added by tree_reduce (the engine
    # adds the root on the driver and the rest in tasks; the additions are the same).
    parts = [family.e_step(params, P.read_partition(X[i:i + 5], None, None, None, i, i + 5))
             for i in range(0, len(X), 5)]
    _assert_stats_bitwise(a, tree_reduce(parts, lambda *g: functools.reduce(operator.add, g), 8))
    # The reference: one E-step over all rows at once (a different order of additions).
    whole = family.e_step(params, P.read_partition(X, None, None, None, 0, len(X)))
    for name in STATS:
        np.testing.assert_allclose(np.asarray(getattr(a, name)), np.asarray(getattr(whole, name)), rtol=1e-10)
    # Subsets of the partitions (mini-batches) take the same path.
    subset = tuple(range(3, 600, 2))
    c = fused.evaluate([Evaluation(family, params, subset)], placed)[0]
    d = unfused.evaluate([Evaluation(family, params, subset)], unfused.place(data, cache=False))[0]
    _assert_stats_bitwise(c, d)


@pytest.mark.slow
@pytest.mark.parametrize("cache", [True, False])
def test_fused_and_unfused_graphs_give_the_same_bits_on_a_cluster(many, cache, tmp_path, local_cluster_client,
                                                                  one_worker_client):
    X, family, params = many
    path = str(tmp_path / "many.zarr")
    zarr.create_array(path, data=X, chunks=(5, 3))  # zarr's default codec (zstd)
    got = {}
    for name, client in [("two", local_cluster_client), ("one", one_worker_client)]:
        for fuse in (True, False):
            ex = Executor(client, fuse=fuse)
            placed = ex.place(as_partitioned(path, partition_rows=5), cache=cache)
            assert (placed.depth >= 1) == fuse
            got[name, fuse] = ex.evaluate([Evaluation(family, params)], placed)[0]
    local = Executor(n_threads=2).evaluate([Evaluation(family, params)],
                                           Executor(n_threads=2).place(as_partitioned(X, partition_rows=5), True))[0]
    for stats in got.values():
        _assert_stats_bitwise(stats, local)


@pytest.mark.slow
def test_parameters_inside_each_task_or_as_one_value_give_the_same_bits(many, local_cluster_client, monkeypatch):
    from dem.engine import executor as executor_module

    X, family, params = many
    ex = Executor(local_cluster_client)
    placed = ex.place(as_partitioned(X, partition_rows=5), cache=True)
    inline = ex.evaluate([Evaluation(family, params)], placed)[0]
    monkeypatch.setattr(executor_module, "INLINE_BYTES", 0)  # every batch of parameters is "large"
    _assert_stats_bitwise(ex.evaluate([Evaluation(family, params)], placed)[0], inline)


@pytest.mark.slow
def test_fits_are_bitwise_equal_on_one_and_two_workers_with_fused_graphs(many, local_cluster_client,
                                                                         one_worker_client):
    X = many[0]
    local = _fit(X, partition_rows=5)
    _assert_bitwise(local, _fit(X, local_cluster_client, partition_rows=5))
    _assert_bitwise(local, _fit(X, one_worker_client, partition_rows=5))
    _assert_bitwise(local, _fit(X, local_cluster_client, partition_rows=5, cache=False))


def test_members_stacked_on_the_driver_stay_stacked_after_a_trip_between_workers(many):
    # A worker fetching a pass's evaluations from another gets them through
    # distributed's message serialization, which unpickles a tuple's items one
    # by one: the family objects the members shared arrive as copies.
    protocol = pytest.importorskip("distributed.protocol")
    X, family, params = many
    other = dataclasses.replace(params, means=params.means + 0.5)
    evaluations = [Evaluation(family, params), Evaluation(family, other)]
    moved = protocol.loads(protocol.dumps({"data": protocol.to_serialize(tuple(evaluations))}))["data"]
    assert moved[0].family is not moved[1].family
    batch = tasks.Batch.of(evaluations)
    assert batch.stacks == ((0, 1),)
    travelled = protocol.loads(protocol.dumps({"data": protocol.to_serialize(batch)}))["data"]
    assert travelled.stacks == ((0, 1),)
    part = P.read_partition(X, None, None, None, 0, 500)
    for a, b in zip(tasks.evaluate_partition(batch, part).members, tasks.evaluate_partition(travelled, part).members):
        _assert_stats_bitwise(a, b)


@pytest.mark.slow
def test_streamed_restarts_are_bitwise_equal_on_threads_and_a_cluster(tmp_path, local_cluster_client):
    # Restarts sharing a pass are stacked into one family call, which equals
    # lone calls only to rounding. Which members stack was decided inside the
    # task by the identity of their family objects; a worker that fetched the
    # pass's evaluations from the other worker got each item unpickled apart
    # (distributed serializes a tuple's items one by one), so its partitions
    # were evaluated member by member: the bits depended on where each task ran.
    from dem.data.generate import generate_dataset

    path = str(tmp_path / "x.zarr")
    generate_dataset(path, 6000, 3, 3, chunk_rows=500, dtype="float64", seed=3)
    kw = dict(n_components=3, covariance_type="full", init_params="kmeans", random_state=11, n_init=2,
              max_iter=6, tol=0.0, partition_rows=500, cache=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        local = dem.GaussianMixture(**kw).fit(path)
        got = dem.GaussianMixture(client=local_cluster_client, **kw).fit(path)
    assert [h["objective"] for h in got.history_] == [h["objective"] for h in local.history_]
    for a, b in zip(got.restarts_, local.restarts_):
        assert [h["objective"] for h in a["history"]] == [h["objective"] for h in b["history"]]
    _assert_bitwise(local, got)


# -- dask inputs -----------------------------------------------------------------


@pytest.mark.slow
def test_persisted_dask_array_on_a_cluster(blobs, local_cluster_client):
    # The case: persist, then fit with the cluster's client.
    X = np.concatenate([blobs[0]] * 8)
    A = local_cluster_client.persist(da.from_array(X, chunks=(1_250, 3)))
    rows = as_partitioned(A).bounds[0][1]
    got = _fit(A, local_cluster_client, partition_rows=None, max_iter=4)
    _assert_bitwise(got, _fit(X, partition_rows=rows, max_iter=4))
    # Partitions that cut across the persisted blocks, and an xarray object backed by them.
    _assert_bitwise(_fit(A, local_cluster_client), _fit(X))
    wrapped = xr.DataArray(A, dims=("sample", "feature"))
    _assert_bitwise(_fit(wrapped, local_cluster_client, cache=True), _fit(X))


@pytest.mark.slow
def test_persisted_array_without_its_client_is_one_clear_line(blobs, local_cluster_client):
    A = local_cluster_client.persist(da.from_array(blobs[0], chunks=(400, 3)))
    with pytest.raises(DataError, match="persisted on a distributed cluster"):
        _fit(A)


@pytest.mark.parametrize("chunks", [((700, 3, 500, 397), (3,)), ((1, 49, 50, 1500), (2, 1))])
def test_irregular_dask_chunks_give_the_numpy_numbers(blobs, chunks):
    X = blobs[0]
    A = da.from_array(X, chunks=chunks)
    _assert_bitwise(_fit(A), _fit(X))
    _assert_bitwise(_fit(A, cache=False), _fit(X))


@pytest.mark.slow
def test_irregular_dask_chunks_on_a_cluster(blobs, local_cluster_client):
    X = blobs[0]
    A = da.from_array(X, chunks=((700, 3, 500, 397), (3,)))
    _assert_bitwise(_fit(A, local_cluster_client, cache=False), _fit(X))
    _assert_bitwise(_fit(local_cluster_client.persist(A), local_cluster_client), _fit(X))


def test_dask_targets_and_weights_follow_the_rows(blobs):
    X = blobs[0]
    w = np.random.default_rng(2).uniform(0.5, 2.0, len(X))
    data = as_partitioned(da.from_array(X, chunks=((900, 700), (3,))), da.from_array(w, chunks=(333,)),
                          partition_rows=250, y=da.from_array(np.arange(len(X)), chunks=(1000,)))
    for (a, b), src in zip(data.bounds, data.sources()):
        part = P.read_partition(*src)
        assert np.array_equal(part.X, X[a:b]) and np.array_equal(part.weights, w[a:b])
        assert np.array_equal(part.y, np.arange(a, b))


# -- placement -------------------------------------------------------------------


def _where_function():
    def where(shared, part):  # a closure: cloudpickle ships it by value to the workers
        from distributed import get_worker

        time.sleep(shared)
        return get_worker().address
    return where


@pytest.mark.slow
def test_streaming_tasks_spread_over_the_workers(tmp_path, local_cluster_client):
    # 8 partitions on 2 workers: before, they were one fused task on one worker.
    X = np.random.default_rng(0).normal(size=(800, 2))
    path = str(tmp_path / "few.zarr")
    zarr.create_array(path, data=X, chunks=(100, 2))
    ex = Executor(local_cluster_client)
    placed = ex.place(as_partitioned(path, partition_rows=100), cache=False)
    assert placed.n_partitions == 8 and placed.depth == 0
    used = ex.map(_where_function(), 0.2, placed)
    assert set(used) == set(local_cluster_client.nthreads())  # asked now, not a cached copy


@pytest.mark.slow
def test_cached_groups_are_dealt_over_the_workers_and_tasks_run_where_they_are(local_cluster_client):
    X = np.random.default_rng(0).normal(size=(6_400, 2))
    ex = Executor(local_cluster_client)
    placed = ex.place(as_partitioned(X, partition_rows=100), cache=True)
    assert placed.depth == 1 and len(placed.workers) == 8 and len(set(placed.workers)) == 2
    used = ex.map(_where_function(), 0.0, placed)
    assert used == [placed.workers[i // 8] for i in range(placed.n_partitions)]


# -- reading Zarr a slab at a time ---------------------------------------------


@pytest.mark.parametrize("reuse", [False, True])
def test_consecutive_zarr_partitions_are_read_in_slabs(tmp_path, monkeypatch, reuse):
    X = np.random.default_rng(1).normal(size=(1_000, 4)).astype(np.float32)
    w = np.random.default_rng(2).uniform(size=1_000)
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("X", data=X, chunks=(64, 4))
    group.create_array("w", data=w, chunks=(100,))
    monkeypatch.setattr(P, "SLAB_BYTES", 16 * 250)  # 250 rows: several slabs, cut inside chunks
    data = as_partitioned(str(tmp_path / "g.zarr"), sample_weight="w", partition_rows=64)
    seen = 0
    for (a, b), part in zip(data.bounds, P.read_partitions(data.sources(), reuse=reuse)):
        assert part.start == a and np.array_equal(part.X, X[a:b]) and np.array_equal(part.weights, w[a:b])
        seen += 1
    assert seen == data.n_partitions == 16


@pytest.mark.parametrize("cache", [True, False])
def test_numpy_rows_with_dask_targets_reach_the_tasks(blobs, cache):
    X = blobs[0]
    data = as_partitioned(X, partition_rows=100, y=da.from_array(np.arange(len(X)) * 2, chunks=(250,)))
    ex = Executor(n_threads=2)
    got = ex.map(lambda shared, part: (part.start, part.y.copy()), None, ex.place(data, cache=cache))
    for (a, b), (start, y) in zip(data.bounds, got):
        assert start == a and np.array_equal(y, np.arange(a, b) * 2)


# -- a pass's results are released after the next pass is submitted --------------

def _scheduler_keys(client) -> set:
    """Every key the scheduler knows, as text."""
    return set(client.run_on_scheduler(lambda dask_scheduler: [str(k) for k in dask_scheduler.tasks]))


def _dem_passes(client, cached: set) -> set:
    """The dem passes (key names without the index) whose results the scheduler holds, beyond ``cached``."""
    return {k.rsplit(",", 1)[0] for k in _scheduler_keys(client) - cached if "dem-" in k}


def _settled(client, cached: set, expected) -> set:
    """The held passes once ``expected(passes)`` holds (releases are asynchronous), or after 10 s."""
    deadline = time.monotonic() + 10
    while not expected(now := _dem_passes(client, cached)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return now


def test_a_pass_keeps_its_statistics_until_the_next_is_submitted(many, local_cluster_client):
    # Releasing them before the next pass's graph made that graph wait on the
    # client's batched stream; releasing them after must not leave them behind.
    X, family, params = many
    client = local_cluster_client
    ex = Executor(client)
    placed = ex.place(as_partitioned(X, partition_rows=500), cache=True)
    cached = _scheduler_keys(client)
    ex.evaluate([Evaluation(family, params)], placed)
    time.sleep(0.5)  # a release goes out within the client stream's 10 ms interval
    first = _dem_passes(client, cached)
    assert len(first) == 1 and "dem-leaf-" in next(iter(first))
    ex.evaluate([Evaluation(family, params)], placed)
    second = _settled(client, cached, lambda now: not now & first)
    assert len(second) == 1 and not second & first, (first, second)
    # A map pass's results (as large as the data, for some) are not kept, and it releases the last pass's.
    ex.map(lambda shared, part: np.asarray(part.X).sum(), None, placed)
    assert _settled(client, cached, lambda now: not now) == set()


def test_a_fit_on_a_cluster_leaves_none_of_its_keys_behind(blobs, local_cluster_client):
    import gc

    client = local_cluster_client
    cached = _scheduler_keys(client)
    _fit(blobs[0], client, cache=True)
    gc.collect()
    assert _settled(client, cached, lambda now: not now) == set()
