"""The engine's invariants: partition invariance, bitwise determinism across
schedulers and clusters, a monotone objective, and scikit-learn's convergence rule.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import dem
from dem.data.partitions import as_partitioned
from dem.data.record import Partition
from dem.engine.executor import Evaluation, Executor
from dem.engine.fitting import fit_members
from dem.engine.monitor import ObjectiveDecreasedWarning
from dem.engine.passes import DataPasses
from dem.engine.strategies.em import EMStrategy
from dem.errors import CollapsedComponentError
from dem.families.base import Family, Stats
from dem.families.gaussian_mixture import GaussianMixtureFamily as GaussianMixtureModel

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
FITTED = ("weights_", "means_", "covariances_", "precisions_cholesky_")
STAT_FIELDS = ("n_rows", "weight_sum", "log_likelihood", "resp_sum", "first_moment", "second_moment")


@pytest.fixture(scope="module")
def zarr_blobs(tmp_path_factory, blobs):
    """The blobs in a Zarr group on disk: array "X" in 100-row chunks, plus weights."""
    zarr = pytest.importorskip("zarr")
    X, _ = blobs
    path = tmp_path_factory.mktemp("engine") / "blobs.zarr"
    group = zarr.open_group(str(path), mode="w")
    group.create_array("X", data=X, chunks=(100, X.shape[1]))
    w = np.random.default_rng(0).uniform(0.5, 2.0, size=len(X))
    group.create_array("weights", data=w, chunks=(100,))
    return str(path), X, w


def _params(model: GaussianMixtureModel, rng: np.random.Generator, D: int):
    K = model.n_components
    means = rng.normal(scale=3.0, size=(K, D))
    cov = {"full": np.stack([np.eye(D) * (1 + k) for k in range(K)]), "tied": np.eye(D) * 2.0,
           "diag": rng.uniform(0.5, 2.0, size=(K, D)), "spherical": rng.uniform(0.5, 2.0, size=K)}
    return model.params_from(rng.dirichlet(np.ones(K) * 2), means, covariances=cov[model.covariance_type])


def _assert_stats_close(a, b, rtol=1e-10):
    for name in STAT_FIELDS:
        x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        atol = rtol * max(1.0, float(np.abs(y).max()))
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=name)


# -- partition invariance -------------------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ct=st.sampled_from(COVARIANCE_TYPES),
    cuts=st.lists(st.integers(1, 499), max_size=12, unique=True),
    weighted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_stats_of_any_split_add_up_to_the_stats_of_the_whole(ct, cuts, weighted, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(scale=3.0, size=(500, 3)) + 100.0
    w = rng.uniform(0, 2, size=500) if weighted else None
    model = GaussianMixtureModel(3, ct)
    params = _params(model, rng, 3)
    params = dataclasses.replace(params, means=params.means + 100.0)
    whole = model.e_step(params, Partition(X, w))
    bounds = [0, *sorted(cuts), 500]
    parts = [model.e_step(params, Partition(X[a:b], None if w is None else w[a:b], start=a))
             for a, b in zip(bounds, bounds[1:])]
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    _assert_stats_close(total, whole)
    # The monoid's zero is a neutral element.
    _assert_stats_close(model.zero_stats(3) + whole, whole, rtol=0)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(partition_rows=st.integers(1, 700), fan_in=st.integers(2, 9), ct=st.sampled_from(COVARIANCE_TYPES))
def test_executor_map_reduce_equals_one_pass_over_the_whole(partition_rows, fan_in, ct):
    rng = np.random.default_rng(partition_rows)
    X = rng.normal(size=(700, 2))
    model = GaussianMixtureModel(2, ct)
    params = _params(model, rng, 2)
    data = as_partitioned(X, partition_rows=partition_rows)
    assert data.n_partitions == -(-700 // partition_rows)
    ex = Executor(fan_in=fan_in)
    got = ex.evaluate([Evaluation(model, params)], ex.place(data, cache=True))[0]
    _assert_stats_close(got, model.e_step(params, Partition(X)))


def test_fit_does_not_depend_on_partitioning(overlapping):
    kw = dict(covariance_type="full", tol=0.0, max_iter=20, random_state=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fits = [dem.GaussianMixture(3, partition_rows=r, **kw).fit(overlapping) for r in (None, 7, 64, 333)]
    for other in fits[1:]:
        for name in FITTED:
            np.testing.assert_allclose(getattr(other, name), getattr(fits[0], name), rtol=1e-9, atol=1e-12)


# -- bitwise determinism --------------------------------------------------


def _fit(X, client=None, **kw):
    args = dict(n_components=3, tol=0.0, max_iter=12, partition_rows=100, random_state=5, client=client)
    args.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return dem.GaussianMixture(**args).fit(X)


def _assert_bitwise_equal(a, b):
    for name in FITTED:
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.lower_bounds_ == b.lower_bounds_
    assert a.n_iter_ == b.n_iter_


@pytest.mark.slow
@pytest.mark.parametrize("ct", ["full", "spherical"])
def test_bitwise_identical_on_threads_and_on_process_clusters(blobs, ct, local_cluster_client, one_worker_client):
    X, _ = blobs
    local = _fit(X, covariance_type=ct)
    assert as_partitioned(X, partition_rows=100).n_partitions == 16
    _assert_bitwise_equal(local, _fit(X, local_cluster_client, covariance_type=ct))
    _assert_bitwise_equal(local, _fit(X, one_worker_client, covariance_type=ct))
    # Same again with another fan-in: still the same on every executor.
    local3 = _fit(X, covariance_type=ct, fan_in=3)
    _assert_bitwise_equal(local3, _fit(X, local_cluster_client, covariance_type=ct, fan_in=3))
    # Automatic partitioning depends on the data, not on the cluster.
    auto = _fit(X, covariance_type=ct, partition_rows=None)
    _assert_bitwise_equal(auto, _fit(X, one_worker_client, covariance_type=ct, partition_rows=None))


@pytest.mark.slow
@pytest.mark.parametrize("cache", [True, False])
def test_bitwise_identical_from_zarr_read_by_workers(zarr_blobs, cache, local_cluster_client, one_worker_client):
    path, X, w = zarr_blobs
    local = _fit(path, covariance_type="tied", cache=cache)
    _assert_bitwise_equal(local, _fit(path, local_cluster_client, covariance_type="tied", cache=cache))
    _assert_bitwise_equal(local, _fit(path, one_worker_client, covariance_type="tied", cache=cache))
    # The Zarr partitions are the numpy partitions: same numbers as in-memory input.
    _assert_bitwise_equal(local, _fit(X, covariance_type="tied"))


@pytest.mark.slow
def test_bitwise_identical_weighted_zarr_on_cluster(zarr_blobs, local_cluster_client):
    path, X, w = zarr_blobs
    kw = dict(n_components=3, covariance_type="diag", tol=0.0, max_iter=8, partition_rows=200, random_state=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        local = dem.GaussianMixture(**kw).fit(path, sample_weight="weights")
        remote = dem.GaussianMixture(client=local_cluster_client, **kw).fit(path, sample_weight="weights")
    _assert_bitwise_equal(local, remote)


@pytest.mark.slow
def test_cluster_reduction_is_in_partition_order(local_cluster_client):
    # A non-commutative "sum" (string concatenation) over 40 partitions whose
    # tasks finish in any order on two processes: the tree keeps leaf order.
    X = np.arange(400.0).reshape(200, 2)
    data = as_partitioned(X, partition_rows=5)

    def label(shared, part):  # a closure: cloudpickle ships it by value
        return f"{shared}{part.start}:{int(part.X[0, 0])};"

    ex = Executor(local_cluster_client, fan_in=3)
    got = ex.reduce(label, "p", ex.place(data, cache=False))
    assert got == "".join(f"p{a}:{2 * a};" for a, _ in data.bounds)


# -- a monotone objective ---------------------------------------------------


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_likelihood_never_decreases(overlapping, ct, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("error", ObjectiveDecreasedWarning)
        est = dem.GaussianMixture(4, covariance_type=ct, tol=0.0, max_iter=60, random_state=seed,
                                  init_params="random_from_data", partition_rows=97).fit(overlapping)
    ll = np.array([h["objective"] for h in est.history_])
    assert len(ll) == 60
    assert np.all(np.diff(ll) >= -1e-9 * np.maximum(1.0, np.abs(ll[1:])))
    assert ll[-1] > ll[0]


@pytest.mark.parametrize("ct", [
    "spherical",
    "full",
    "diag",
])
def test_log_likelihood_never_decreases_with_a_near_collapsed_component(ct):
    rng = np.random.default_rng(4)
    X = np.concatenate([rng.normal(size=(300, 2)), np.full((50, 2), 100.0)])
    prec = {"full": np.stack([np.eye(2)] * 2), "diag": np.ones((2, 2)), "spherical": np.ones(2)}[ct]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("error", ObjectiveDecreasedWarning)
        est = dem.GaussianMixture(2, covariance_type=ct, tol=0.0, max_iter=6, precisions_init=prec,
                                  weights_init=[0.5, 0.5], means_init=[[0.0, 0.0], [100.0, 100.0]]).fit(X)
    ll = np.array(est.lower_bounds_)
    assert np.all(np.diff(ll) >= -1e-9 * np.maximum(1.0, np.abs(ll[1:])))


# -- convergence rule ------------------------------------------------------


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
@pytest.mark.parametrize("tol,max_iter", [(1e-2, 100), (1e-4, 100), (1e-7, 100), (1e-7, 5)])
def test_convergence_like_sklearn(overlapping, ct, tol, max_iter):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk1 = SkGaussianMixture(3, covariance_type=ct, init_params="random_from_data", max_iter=1,
                                random_state=3).fit(overlapping)
        start = dict(weights_init=sk1.weights_, means_init=sk1.means_, precisions_init=sk1.precisions_)
        sk = SkGaussianMixture(3, covariance_type=ct, tol=tol, max_iter=max_iter, **start).fit(overlapping)
        ours = dem.GaussianMixture(3, covariance_type=ct, tol=tol, max_iter=max_iter, **start).fit(overlapping)
    assert ours.n_iter_ == sk.n_iter_
    assert ours.converged_ == sk.converged_
    np.testing.assert_allclose(ours.lower_bounds_, sk.lower_bounds_, rtol=1e-8)
    np.testing.assert_allclose(ours.lower_bound_, sk.lower_bound_, rtol=1e-8)


# -- the engine with a toy family whose objective is scripted -------------------------
#
# The engine knows no model: these tests drive it with a family written here,
# whose "parameters" are an iteration counter t and whose objective is f(t).


@dataclasses.dataclass(frozen=True)
class _CountStats(Stats):
    pass


@dataclasses.dataclass(frozen=True)
class _Counter:
    t: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class _ScriptedFamily(Family):
    """Mean log-likelihood f(t) at parameter t; the M-step just counts."""

    f: object
    kind = "scripted"
    params_type = _Counter

    def e_step(self, params, part):
        n = float(part.X.shape[0])
        return _CountStats(n_rows=n, weight_sum=n, log_likelihood=n * self.f(int(params.t)))

    def m_step(self, stats, params):
        return _Counter(np.asarray(int(params.t) + 1))

    def n_parameters(self, n_features):
        return 1

    def log_density(self, params, part):
        return np.full(part.n_rows, self.f(int(params.t)))


def _run_scripted(f, tol, max_iter=100):
    data = as_partitioned(np.zeros((64, 1)), partition_rows=8)
    ex = Executor()
    passes = DataPasses(ex, ex.place(data, cache=True))
    strategy = EMStrategy(max_iter, tol)
    family = _ScriptedFamily(f)
    outcome = fit_members(passes, start=lambda: [strategy.start(family, _Counter(np.asarray(0)), 0)],
                          restore=None, labels=[{"restart": 0}])
    return outcome.runs[0]


def test_engine_stops_at_the_first_change_below_tol():
    # f(t) = -1/(t+1): the change at iteration i is 1/(i(i-1)) < 1e-2 first at i = 11.
    run = _run_scripted(lambda t: -1.0 / (t + 1), tol=1e-2)
    assert run.iterations == 11 and run.converged
    assert int(run.params.t) == 11
    np.testing.assert_allclose(run.lower_bound, -1.0 / 11, rtol=1e-14)
    np.testing.assert_allclose([h.objective for h in run.monitor.history],
                               [-1.0 / (t + 1) for t in range(11)], rtol=1e-14)
    assert run.monitor.history[0].delta == np.inf
    assert [h.n_rows for h in run.monitor.history] == [64] * 11
    assert [h.n_passes for h in run.monitor.history] == list(range(1, 12))
    capped = _run_scripted(lambda t: -1.0 / (t + 1), tol=1e-2, max_iter=4)
    assert capped.iterations == 4 and not capped.converged


def test_engine_reports_a_decrease_of_the_objective():
    # The objective falls by 1e-3 at iteration 3: reported as a warning and as a note.
    f = {0: -3.0, 1: -2.0, 2: -2.001, 3: -1.5}
    with pytest.warns(ObjectiveDecreasedWarning, match="iteration 3"):
        run = _run_scripted(lambda t: f.get(t, -1.5), tol=1e-12, max_iter=4)
    history = run.monitor.history
    assert [n["kind"] for n in history[2].notes] == ["decreased"]
    assert not any(history[i].notes for i in (0, 1, 3))


@dataclasses.dataclass(frozen=True, eq=False)
class _CollapsingFamily(_ScriptedFamily):
    """The M-step from parameter 3 collapses a component."""

    def m_step(self, stats, params):
        if int(params.t) == 3:
            raise CollapsedComponentError("the mixture collapsed", component=1,
                                          detail="component 1's covariance is not positive definite")
        return super().m_step(stats, params)


def test_a_member_whose_m_step_collapses_stops_with_the_parameters_before_it():
    f = lambda t: -1.0 / (t + 1)  # noqa: E731
    data = as_partitioned(np.zeros((64, 1)), partition_rows=8)
    ex = Executor()
    passes = DataPasses(ex, ex.place(data, cache=True))
    strategy, family = EMStrategy(10, 0.0), _CollapsingFamily(f)
    healthy = strategy.start(_ScriptedFamily(f), _Counter(np.asarray(0)), 1)
    outcome = fit_members(passes, start=lambda: [strategy.start(family, _Counter(np.asarray(0)), 0), healthy],
                          restore=None, labels=[{"restart": 0}, {"restart": 1}])
    run = outcome.runs[0]
    # E-steps at 0, 1, 2, 3; the M-step from 3 failed: 3 is the result, measured by the last E-step.
    assert run.iterations == 4 and run.done and run.stopped and not run.converged
    assert int(run.params.t) == 3 and run.lower_bound == f(3)
    assert [(n["kind"], n["component"]) for n in run.monitor.history[-1].notes] == [("collapsed", 1)]
    assert "component 1's covariance is not positive definite in the M-step of iteration 4" \
        in run.monitor.history[-1].notes[0]["message"]
    assert outcome.runs[1].iterations == 10  # the other member went on
    # A checkpoint restores the stop, whatever the new tolerance says about the last change.
    js, arrays = run.state()
    again = EMStrategy(20, 1.0).restore(family, js, arrays)
    assert again.done and again.stopped and not again.converged and int(again.params.t) == 3
