"""Online EM (learning_method="online") and partial_fit.

References: the recursion written out as a plain loop here (pass order,
batches, mean-form blend, step sizes, burn-in, scaling, rebasing), the
parameters the data were drawn from, batch EM's optimum, scikit-learn's EM
step, and a fit never interrupted.
"""

from __future__ import annotations

import functools
import json
import operator
import os
import signal
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import dem
from dem.data.partitions import as_partitioned
from dem.data.record import Partition
from dem.engine.executor import Executor
from dem.engine.passes import DataPasses
from dem.engine.strategies import by_name
from dem.engine.strategies.online import OnlineStrategy, default_batch_size, pass_batches, step_size
from dem.errors import ConfigError, DataError, DemError
from dem.families.base import Family, Stats
from dem.families.gaussian_mixture import GaussianMixtureFamily, GMMStats
from dem.families.gaussian_params import GMMParams
from tests.conftest import BLOB_MEANS, BLOB_WEIGHTS, make_blobs

FITTED = ("weights_", "means_", "covariances_", "precisions_cholesky_")


def _quiet_fit(est, X, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(X, **kw)


def _params_of(est) -> GMMParams:
    return GMMParams(est.weights_, est.means_, est.covariances_, est.precisions_cholesky_)


# -- the recursion, written out ------------------------------------------------------


def _plain_batches(bounds, batch_size, seed, pass_index):
    """The documented pass order: seeded permutation, groups of >= batch_size rows, small tail merged."""
    order = np.random.default_rng([seed, 19, pass_index]).permutation(len(bounds))
    groups, current, rows = [], [], 0
    for p in order:
        current.append(int(p))
        rows += bounds[p][1] - bounds[p][0]
        if rows >= batch_size:
            groups.append(current)
            current, rows = [], 0
    if current:
        if groups and rows < batch_size / 2:
            groups[-1] += current
        else:
            groups.append(current)
    return [sorted(g) for g in groups]


def _plain_online(family, params, X, bounds, batch_size, seed, decay, offset, burn_in, n_passes):
    """Online EM as the issue states it; returns the parameters and the objective after each batch."""
    n = len(X)
    s, t, objectives = None, 0, []
    for p in range(n_passes):
        for batch in _plain_batches(bounds, batch_size, seed, p):
            stats = functools.reduce(operator.add, [family.e_step(params, Partition(X[bounds[i][0]:bounds[i][1]],
                                                                                    start=bounds[i][0]))
                                                    for i in batch])
            w = stats.weight_sum
            hat = {k: v * (1.0 / w) for k, v in stats.arrays().items()}
            if t == 0:
                rho = 1.0
            elif t < burn_in:
                rho = 1.0 / (t + 1)
            else:
                rho = (t + offset) ** (-decay)
            s = hat if s is None else {k: s[k] * (1.0 - rho) + hat[k] * rho for k in s}
            scaled = GMMStats.from_arrays({k: v * (n / float(s["n_rows"])) for k, v in s.items()})
            objectives.append(float(scaled.log_likelihood / scaled.weight_sum))
            if t >= burn_in:
                new = family.m_step(scaled, params)
                s = family.rebase(GMMStats.from_arrays(s), params, new).arrays()
                params = new
            t += 1
    return params, objectives


def test_step_sizes_follow_the_schedule():
    assert step_size(0, 0.7, 10.0, burn_in=0) == 1.0
    assert step_size(0, 0.7, 10.0, burn_in=5) == 1.0
    assert step_size(3, 0.7, 10.0, burn_in=5) == 1.0 / 4
    assert step_size(5, 0.7, 10.0, burn_in=5) == 15.0 ** -0.7
    assert step_size(7, 1.0, 0.0) == 1.0 / 7


def test_pass_order_is_seeded_and_covers_every_partition_once():
    bounds = [(a, min(a + 200, 3100)) for a in range(0, 3100, 200)]
    for p in range(3):
        got = pass_batches(bounds, 450, 5, p)
        assert [list(b) for b in got] == _plain_batches(bounds, 450, 5, p)
        assert sorted(i for b in got for i in b) == list(range(len(bounds)))
        assert all(sum(bounds[i][1] - bounds[i][0] for i in b) >= 450 for b in got[:-1])
    assert pass_batches(bounds, 450, 5, 0) != pass_batches(bounds, 450, 5, 1)
    assert pass_batches(bounds, 450, 5, 0) != pass_batches(bounds, 450, 6, 0)


@pytest.mark.parametrize("ct", ["full", "diag"])
def test_online_fit_is_the_recursion_of_a_plain_loop_exactly(overlapping, ct):
    X = np.vstack([overlapping] * 5)  # 3000 rows
    X = X + np.random.default_rng(1).normal(scale=0.01, size=X.shape)
    X = np.vstack([X, X[:100]])       # 3100 rows: a short last partition
    kw = dict(covariance_type=ct, random_state=3, partition_rows=200, batch_size=450, learning_method="online",
              tol=0.0, learning_decay=0.6, learning_offset=4.0)
    start = _params_of(_quiet_fit(dem.GaussianMixture(3, max_iter=0, **kw), X))
    est = _quiet_fit(dem.GaussianMixture(3, max_iter=3, **kw), X)
    bounds = [(a, min(a + 200, len(X))) for a in range(0, len(X), 200)]
    steps = len(_plain_batches(bounds, 450, 3, 0))
    burn_in = 1  # ceil(1% of the 5 batches of a pass), at least one
    assert steps == 5
    family = GaussianMixtureFamily(3, ct, 1e-6)
    params, objectives = _plain_online(family, start, X, bounds, 450, 3, 0.6, 4.0, burn_in, 3)
    for name, value in zip(FITTED, (params.weights, params.means, params.covariances, params.precisions_cholesky)):
        assert np.array_equal(getattr(est, name), value), name
    assert [h["objective"] for h in est.history_] == objectives
    assert [h["event"] for h in est.history_] == ["batch"] * 15
    assert est.n_iter_ == 3 and est.n_passes_ == pytest.approx(3.0)
    assert est.history_[4]["n_passes"] == pytest.approx(1.0)


def test_partial_fit_is_the_recursion_of_a_plain_loop_exactly():
    X, _ = make_blobs(6000, seed=4)
    batches = np.array_split(X, 12)
    init = dict(weights_init=BLOB_WEIGHTS, means_init=BLOB_MEANS + 0.5, precisions_init=np.stack([np.eye(3)] * 3))
    est = dem.GaussianMixture(3, random_state=0, learning_decay=0.8, learning_offset=2.0, **init)
    for b in batches:
        est.partial_fit(b)
    family = GaussianMixtureFamily(3, "full", 1e-6)
    params = _params_of(_quiet_fit(dem.GaussianMixture(3, max_iter=0, **init), batches[0]))
    s, seen = None, 0
    for t, b in enumerate(batches):
        stats = family.e_step(params, Partition(b))
        hat = {k: v * (1.0 / stats.weight_sum) for k, v in stats.arrays().items()}
        rho = 1.0 if t == 0 else (t + 2.0) ** -0.8
        s = hat if s is None else {k: s[k] * (1.0 - rho) + hat[k] * rho for k in s}
        seen += len(b)
        scaled = GMMStats.from_arrays({k: v * (seen / float(s["n_rows"])) for k, v in s.items()})
        new = family.m_step(scaled, params)  # no burn-in: every call takes its M-step
        s = family.rebase(GMMStats.from_arrays(s), params, new).arrays()
        params = new
    assert np.array_equal(est.means_, params.means)
    assert np.array_equal(est.covariances_, params.covariances)
    assert np.array_equal(est.weights_, params.weights)
    assert est.n_iter_ == 12 and len(est.history_) == 12


def test_polyak_ruppert_average_is_the_mean_of_the_iterates(overlapping):
    X = np.vstack([overlapping] * 4)
    data = as_partitioned(X, None, 100)
    passes = DataPasses(Executor(), Executor().place(data, cache=False))
    family = GaussianMixtureFamily(3, "full", 1e-6)
    start = family.params_from(np.full(3, 1 / 3), X[[0, 1, 2]], covariances=np.stack([np.eye(2)] * 3))
    strategy = OnlineStrategy(3, 0.0, batch_size=200, bounds=tuple(data.bounds), n_samples=len(X), burn_in=1,
                              average=True)
    run = strategy.start(family, start, seed=0)
    iterates = []
    while not run.done:
        ev = run.next_evaluation()
        run.receive(passes.evaluate([ev])[0], 0.0, 0, 0.0)
        iterates.append(family.to_vector(run.params))
    first_pass = len(pass_batches(data.bounds, 200, 0, 0))  # averaging starts with the second pass
    expected = family.from_vector(np.mean(iterates[first_pass:], axis=0), run.params)
    np.testing.assert_allclose(run.result().means, expected.means, rtol=1e-12)
    np.testing.assert_allclose(run.result().covariances, expected.covariances, rtol=1e-10)
    assert not np.array_equal(run.result().means, run.params.means)


# -- statistical behaviour -------------------------------------------------------------


def test_online_em_recovers_the_parameters_and_approaches_batch_em():
    X, _ = make_blobs(40_000, seed=21)
    online = _quiet_fit(dem.GaussianMixture(3, random_state=0, learning_method="online", max_iter=4, tol=0.0), X)
    batch = _quiet_fit(dem.GaussianMixture(3, random_state=0, tol=1e-8, max_iter=500), X)
    order = np.argsort(online.means_[:, 0])
    truth = np.argsort(BLOB_MEANS[:, 0])
    np.testing.assert_allclose(online.means_[order], BLOB_MEANS[truth], atol=0.05)
    np.testing.assert_allclose(online.weights_[order], BLOB_WEIGHTS[truth], atol=0.01)
    assert online.score(X) > batch.score(X) - 2e-4
    assert online.n_passes_ == pytest.approx(4.0)
    assert len(online.history_) == 4 * 40  # default batch: 1000 rows


def test_online_em_on_a_gaussian_hmm_recovers_the_parameters():
    hmmlearn = pytest.importorskip("hmmlearn.hmm")
    gen = hmmlearn.GaussianHMM(3, covariance_type="diag")
    gen.startprob_ = np.array([0.5, 0.3, 0.2])
    gen.transmat_ = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.05, 0.15, 0.8]])
    gen.means_ = np.array([[0.0, 0.0], [4.0, 1.0], [-3.0, 5.0]])
    gen.covars_ = np.full((3, 2), 0.5)
    X = np.vstack([gen.sample(100, random_state=i)[0] for i in range(300)])
    lengths = [100] * 300
    # Initial covariances of the data's size (hmmlearn's) let the first EM steps merge the states,
    # which EM and online EM alike then take dozens of steps to undo: start from unit variances.
    est = dem.GaussianHMM(3, n_iter=5, tol=0.0, random_state=1, learning_method="online", batch_size=1000,
                          init_params="stm")
    est.covars_ = np.ones((3, 2))
    _quiet_fit(est, X, lengths=lengths)
    order = np.argsort(est.means_[:, 0])
    truth = np.argsort(gen.means_[:, 0])
    np.testing.assert_allclose(est.means_[order], gen.means_[truth], atol=0.05)
    np.testing.assert_allclose(est.transmat_[np.ix_(order, order)], gen.transmat_[np.ix_(truth, truth)], atol=0.02)
    np.testing.assert_allclose(est._covars_[order], gen._covars_[truth], rtol=0.06)
    batch = _quiet_fit(dem.GaussianHMM(3, n_iter=100, tol=1e-3, random_state=1), X, lengths=lengths)
    assert est.score(X, lengths) > batch.score(X, lengths) - 1e-4 * len(X)


def test_online_em_with_missing_values_approaches_batch_em():
    X, _ = make_blobs(20_000, seed=8)
    X[np.random.default_rng(0).random(X.shape) < 0.1] = np.nan
    kw = dict(random_state=0, missing="em")
    online = _quiet_fit(dem.GaussianMixture(3, learning_method="online", max_iter=4, tol=0.0, **kw), X)
    batch = _quiet_fit(dem.GaussianMixture(3, tol=1e-8, max_iter=500, **kw), X)
    assert online.score(X) > batch.score(X) - 5e-4


# -- determinism and resume ----------------------------------------------------------------


def test_state_restored_mid_pass_continues_bitwise(overlapping):
    data = as_partitioned(overlapping, None, 50)
    passes = DataPasses(Executor(), Executor().place(data, cache=False))
    family = GaussianMixtureFamily(3, "tied", 1e-6)
    start = family.params_from(np.full(3, 1 / 3), overlapping[[0, 5, 9]], covariances=np.eye(2))
    strategy = OnlineStrategy(2, 0.0, batch_size=100, bounds=tuple(data.bounds), n_samples=len(overlapping))

    def step(run):
        run.receive(passes.evaluate([run.next_evaluation()])[0], 0.0, 0, 0.1)

    ref = strategy.start(family, start, seed=4)
    while not ref.done:
        step(ref)
    run = strategy.start(family, start, seed=4)
    for _ in range(4):  # the pass has 6 batches: stop inside it
        step(run)
    js, arrays = run.state()
    back = strategy.restore(family, json.loads(json.dumps(js)), {k: np.array(v) for k, v in arrays.items()})
    assert back.batch_index == 4 and back.pass_index == 0
    while not back.done:
        step(back)
    for name in ("weights", "means", "covariances"):
        assert np.array_equal(getattr(back.params, name), getattr(ref.params, name)), name
    assert [r.objective for r in back.monitor.history] == [r.objective for r in ref.monitor.history]


@pytest.mark.slow
def test_online_bitwise_equal_on_threads_and_on_one_and_two_workers(overlapping, zarr_overlapping,
                                                                   local_cluster_client, one_worker_client):
    # Three engine paths give the same bits: local threads (a segment of steps per
    # task), data cached on the workers (a scheduler round trip per step), and
    # Zarr streamed by the workers (a segment of steps per worker task).
    kw = dict(random_state=2, learning_method="online", max_iter=2, tol=0.0, batch_size=100, partition_rows=50)
    local = _quiet_fit(dem.GaussianMixture(3, **kw), overlapping)
    assert len(local.history_) == 2 * 6  # 600 rows in batches of 2 partitions: 6 steps a pass
    for client in (one_worker_client, local_cluster_client):
        remote = _quiet_fit(dem.GaussianMixture(3, client=client, **kw), overlapping)
        for name in FITTED:
            assert np.array_equal(getattr(remote, name), getattr(local, name)), name
        assert [h["objective"] for h in remote.history_] == [h["objective"] for h in local.history_]
    streamed_local = _quiet_fit(dem.GaussianMixture(3, cache=False, **kw), zarr_overlapping)
    # cache="auto" streams online EM's Zarr on a cluster rather than caching it.
    streamed = _quiet_fit(dem.GaussianMixture(3, client=local_cluster_client, **kw), zarr_overlapping)
    for name in FITTED:
        assert np.array_equal(getattr(streamed, name), getattr(streamed_local, name)), name
    assert [h["objective"] for h in streamed.history_] == [h["objective"] for h in streamed_local.history_]
    assert [h["iteration"] for h in streamed.history_] == list(range(1, len(streamed_local.history_) + 1))


_CHILD = textwrap.dedent(
    """
    import sys, warnings
    import numpy as np
    import dem
    data, run_dir, out, method = sys.argv[1:5]
    warnings.simplefilter("ignore")
    est = dem.GaussianMixture(3, random_state=5, learning_method=method, max_iter=int(sys.argv[5]), tol=0.0,
                              batch_size=300, partition_rows=150, checkpoint_dir=run_dir, cache=False)
    est.fit(data)
    np.savez(out, weights=est.weights_, means=est.means_, covariances=est.covariances_,
             lower_bound=est.lower_bound_, n_iter=est.n_iter_,
             objectives=[h["objective"] for h in est.history_])
    """
)


def run_child(tmp_path, data, run_dir, out, method, max_iter, fault=None):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {k: v for k, v in os.environ.items() if k != "DEM_FAULT_INJECT"}
    if fault:
        env["DEM_FAULT_INJECT"] = fault
    proc = subprocess.run([sys.executable, str(script), str(data), str(run_dir), str(out), method, str(max_iter)],
                          env=env, timeout=300, capture_output=True, text=True)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"fit failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.returncode


@pytest.fixture(scope="module")
def zarr_overlapping(tmp_path_factory, overlapping):
    zarr = pytest.importorskip("zarr")
    path = tmp_path_factory.mktemp("online") / "data.zarr"
    X = np.vstack([overlapping] * 3)
    zarr.open_group(str(path), mode="w").create_array("X", data=X, chunks=(150, 2))
    return str(path)


@pytest.mark.slow
def test_sigkill_mid_pass_then_resume_is_bitwise_equal(tmp_path, zarr_overlapping):
    # 1800 rows in 12 partitions, batches of 2 partitions: 6 batches a pass, run in segments of 2
    # (SEGMENTS_PER_PASS = 4); killed in the 9th segment, resumed from the checkpoint after batch 16.
    run_child(tmp_path, zarr_overlapping, tmp_path / "ref", tmp_path / "ref.npz", "online", 3)
    killed = tmp_path / "killed"
    assert run_child(tmp_path, zarr_overlapping, killed, tmp_path / "out.npz", "online", 3,
                     fault="m-step:9") == -signal.SIGKILL
    assert run_child(tmp_path, zarr_overlapping, killed, tmp_path / "out.npz", "online", 3) == 0
    ref, got = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "out.npz")
    assert len(ref["objectives"]) == 18
    for name in ref.files:
        assert np.array_equal(got[name], ref[name]), name


# -- partial_fit -------------------------------------------------------------------------------


def test_partial_fit_on_a_stream_of_numpy_batches_recovers_the_parameters():
    # make_blobs draws each component's covariance from its seed: one draw, cut into a stream.
    X, _ = make_blobs(40_000, seed=100)
    est = dem.GaussianMixture(3, random_state=0)

    def stream():
        for i in range(80):
            yield X[500 * i:500 * (i + 1)].copy()

    for batch in stream():
        est.partial_fit(batch)
    order = np.argsort(est.means_[:, 0])
    truth = np.argsort(BLOB_MEANS[:, 0])
    np.testing.assert_allclose(est.means_[order], BLOB_MEANS[truth], atol=0.1)
    np.testing.assert_allclose(est.weights_[order], BLOB_WEIGHTS[truth], atol=0.02)
    assert est.n_iter_ == 80 and est.n_passes_ == 80.0


def test_partial_fit_with_weights_and_on_a_hmm():
    X, _ = make_blobs(4000, seed=2)
    w = np.random.default_rng(0).uniform(0.5, 2.0, len(X))
    est = dem.GaussianMixture(3, random_state=0)
    for a in range(0, 4000, 1000):
        est.partial_fit(X[a:a + 1000], sample_weight=w[a:a + 1000])
    assert np.all(np.isfinite(est.means_)) and est.n_iter_ == 4
    hmmlearn = pytest.importorskip("hmmlearn.hmm")
    gen = hmmlearn.GaussianHMM(2, covariance_type="diag")
    gen.startprob_ = np.array([0.6, 0.4])
    gen.transmat_ = np.array([[0.9, 0.1], [0.2, 0.8]])
    gen.means_ = np.array([[0.0], [5.0]])
    gen.covars_ = np.array([[1.0], [1.0]])
    hmm_est = dem.GaussianHMM(2, random_state=0, init_params="stm")
    hmm_est.covars_ = np.ones((2, 1))  # see test_online_em_on_a_gaussian_hmm_recovers_the_parameters
    for i in range(30):
        batch = np.vstack([gen.sample(50, random_state=100 * i + j)[0] for j in range(10)])
        hmm_est.partial_fit(batch, [50] * 10)
    np.testing.assert_allclose(np.sort(hmm_est.means_[:, 0]), [0.0, 5.0], atol=0.1)


def test_partial_fit_after_fit_takes_one_em_step_from_the_fitted_model():
    X, _ = make_blobs(3000, seed=5)
    est = _quiet_fit(dem.GaussianMixture(3, random_state=0, max_iter=3), X)
    batch = make_blobs(800, seed=6)[0]
    sk = _quiet_fit(SkGaussianMixture(3, max_iter=1, weights_init=est.weights_, means_init=est.means_,
                                      precisions_init=est.precisions_), batch)
    est.partial_fit(batch)
    np.testing.assert_allclose(est.means_, sk.means_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(est.covariances_, sk.covariances_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(est.weights_, sk.weights_, rtol=1e-10)
    assert est.n_iter_ == 1
    _quiet_fit(est, X)  # fit starts again: partial_fit then continues from that fit
    est.partial_fit(batch)
    assert est.n_iter_ == 1


# -- bad input ----------------------------------------------------------------------------------


class _NoRebasing(Family):
    kind = "plain"

    def e_step(self, params, part):
        return Stats(float(len(part.X)), float(len(part.X)), 0.0)

    def m_step(self, stats, params):
        return params

    def n_parameters(self, n_features):
        return 0

    def log_density(self, params, part):
        return np.zeros(len(part.X))


def _one_line(call, exc, match):
    with pytest.raises(exc, match=match) as info:
        call()
    assert isinstance(info.value, DemError), type(info.value)
    assert "\n" not in str(info.value)


def test_bad_input_gives_one_clear_line(blobs):
    # Each _one_line asserts the exception type, its message and that the message is one line.
    X, _ = blobs
    _one_line(lambda: dem.GaussianMixture(3, learning_method="online", batch_size=0).fit(X), ValueError,
              "batch_size")
    for decay in (0.5, 0.2, 1.5):
        _one_line(lambda: dem.GaussianMixture(3, learning_method="online", learning_decay=decay).fit(X),
                  ValueError, "learning_decay")
        _one_line(lambda: dem.GaussianMixture(3, learning_decay=decay).partial_fit(X), ValueError,
                  "learning_decay")
    _one_line(lambda: dem.GaussianMixture(3, learning_offset=-1.0).partial_fit(X), ValueError, "learning_offset")
    _one_line(lambda: dem.GaussianMixture(3, batch_size=0).partial_fit(X), ValueError, "batch_size")
    est = dem.GaussianMixture(3, random_state=0).partial_fit(X)
    _one_line(lambda: est.partial_fit(X[:, :2]), DataError, "X has 2 features, but GaussianMixture is expecting 3")
    _one_line(lambda: dem.GaussianMixture([2, 3]).partial_fit(X), ConfigError, "single n_components")
    strategy = by_name("online")(3, 0.0, bounds=((0, 10),), n_samples=10)
    _one_line(lambda: strategy.start(_NoRebasing(), None, 0), ConfigError, "online EM .* not available")
    _one_line(lambda: by_name("online").from_estimator({"batch_size": 0}, max_iter=1, tol=0.0, rtol=0.0,
                                                       data=as_partitioned(X)), ConfigError, "batch_size")


def test_default_batch_size_and_partitions_follow_the_data():
    assert default_batch_size(10_000) == 1_000
    assert default_batch_size(2_000_000) == 4_000
    assert default_batch_size(10**10) == 100_000
    X, _ = make_blobs(20_000, seed=1)
    est = _quiet_fit(dem.GaussianMixture(3, random_state=0, learning_method="online", max_iter=1), X)
    assert len(est.history_) == 20 and {h["n_rows"] for h in est.history_} == {1000}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dem.GaussianMixture(3, random_state=0, learning_method="online", max_iter=1, batch_size=100,
                            partition_rows=5000).fit(X)
    assert any("whole partitions" in str(w.message) for w in caught)
