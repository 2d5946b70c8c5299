"""SQUAREM (:mod:`dem.engine.strategies.squarem`) against independent references.

* the fixed point of plain EM, as scikit-learn and hmmlearn compute it from
  the same start, on problems with one optimum;
* a toy problem solved by hand (a linear EM map whose optimum is known), on
  which the raw extrapolation overshoots and the safeguard must reject it;
* the unconstrained coordinates of every family round-trip;
* bitwise equal fits on threads and on 1- and 2-worker clusters, and after a
  SIGKILL in the middle of a cycle.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import dem
from dem.data.partitions import as_partitioned
from dem.engine.checkpoint import Checkpointer, RunStore
from dem.engine.executor import Executor
from dem.engine.fitting import fit_members
from dem.engine.monitor import ObjectiveDecreasedWarning
from dem.engine.passes import DataPasses
from dem.engine.strategies import by_name
from dem.engine.strategies.squarem import SquaremStrategy, comparable, step_length
from dem.errors import ConfigError
from dem.families.base import Family, FlatParameters, Stats
from dem.families.categorical_hmm import CategoricalHMMFamily, CategoricalHMMParams
from dem.families.gaussian_hmm import GaussianHMMFamily, GaussianHMMParams
from dem.families.gaussian_mixture import GaussianMixtureFamily
from dem.families.gaussian_params import params_from
from dem.families.gmm_hmm import GMMHMMFamily, GMMHMMParams
from dem.families.gmm_missing import MissingDataGaussianMixtureFamily

hmmlearn_hmm = pytest.importorskip("hmmlearn.hmm")
logging.getLogger("hmmlearn").setLevel(logging.ERROR)


def _kinds(record: dict) -> list[str]:
    return [n["kind"] for n in record["notes"]]


def _gmm_start(X: np.ndarray, K: int) -> dict:
    """A fixed, unfitted start: K spread rows as means, uniform weights, identity precisions."""
    idx = np.linspace(0, len(X) - 1, K).astype(int)
    D = X.shape[1]
    return {"weights_init": np.full(K, 1.0 / K), "means_init": X[idx].copy(),
            "precisions_init": np.stack([np.eye(D)] * K)}


# -- the fixed point of plain EM ---------------------------------------------------------


def test_gaussian_mixture_reaches_the_fixed_point_scikit_learn_reaches(overlapping):
    X = overlapping
    start = _gmm_start(X, 3)
    sk = SkGaussianMixture(3, tol=1e-13, max_iter=100_000, **start).fit(X)
    assert sk.converged_ and sk.n_iter_ > 300  # plain EM crawls here
    with warnings.catch_warnings():
        warnings.simplefilter("error", ObjectiveDecreasedWarning)
        sq = dem.GaussianMixture(3, tol=1e-13, max_iter=100_000, accelerate="squarem", **start).fit(X)
    assert sq.converged_
    assert sq.n_passes_ < sk.n_iter_ / 3
    np.testing.assert_allclose(sq.lower_bound_, sk.lower_bound_, rtol=0, atol=1e-11)
    # The likelihood is nearly flat along one direction here: both stop within ~1e-4 of the
    # optimum along it, and SQUAREM's point is a fixed point of scikit-learn's EM map.
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(sq, name), getattr(sk, name), rtol=0, atol=1e-4, err_msg=name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        step = SkGaussianMixture(3, max_iter=1, weights_init=sq.weights_, means_init=sq.means_,
                                 precisions_init=sq.precisions_).fit(X)
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(step, name), getattr(sq, name), rtol=0, atol=1e-6, err_msg=name)


def _close_means_hmm() -> tuple[np.ndarray, np.ndarray, dict]:
    """Sequences from a 3-state Gaussian HMM with close means, and a start near the truth."""
    truth = hmmlearn_hmm.GaussianHMM(3, covariance_type="diag", init_params="")
    truth.startprob_ = np.array([0.5, 0.3, 0.2])
    truth.transmat_ = np.array([[0.90, 0.05, 0.05], [0.10, 0.80, 0.10], [0.05, 0.15, 0.80]])
    truth.means_ = np.array([[0.0, 0.0], [1.0, 0.3], [0.2, 1.1]])
    truth.covars_ = np.array([[1.0, 0.8], [0.7, 1.0], [0.9, 0.9]])
    lengths = np.array([150, 120, 200, 90, 140])
    X = np.concatenate([truth.sample(int(n), random_state=10 + i)[0] for i, n in enumerate(lengths)])
    start = {"startprob_": np.full(3, 1 / 3), "transmat_": np.full((3, 3), 1 / 3),
             "means_": truth.means_ + np.array([[0.3, -0.2], [-0.2, 0.3], [0.2, 0.2]]),
             "covars_": np.ones((3, 2))}
    return X, lengths, start


def _with_start(model, start: dict):
    for name, value in start.items():
        setattr(model, name, value.copy())
    return model


def test_gaussian_hmm_reaches_the_fixed_point_hmmlearn_reaches():
    # Maximum likelihood (covars_prior=0): with a prior the M-step maximises the posterior, and
    # at this tol (1e-12 per step) the safeguard's log-likelihood test would feel the prior's pull.
    X, lengths, start = _close_means_hmm()
    ref = _with_start(hmmlearn_hmm.GaussianHMM(3, "diag", n_iter=100_000, tol=1e-9, init_params="",
                                               covars_prior=0.0), start)
    ref.fit(X, lengths)
    assert ref.monitor_.converged and ref.monitor_.iter > 100
    with warnings.catch_warnings():
        warnings.simplefilter("error", ObjectiveDecreasedWarning)
        sq = _with_start(dem.GaussianHMM(3, "diag", n_iter=100_000, tol=1e-9, init_params="", covars_prior=0.0,
                                         accelerate="squarem", partition_rows=300), start).fit(X, lengths)
    assert sq.converged_
    assert sq.n_passes_ < ref.monitor_.iter / 2
    np.testing.assert_allclose(sq.score(X, lengths), ref.score(X, lengths), rtol=1e-11)
    for name in ("startprob_", "transmat_", "means_", "covars_"):
        np.testing.assert_allclose(getattr(sq, name), getattr(ref, name), rtol=0, atol=2e-4, err_msg=name)


def test_missing_data_mixture_reaches_the_fixed_point_of_plain_em(blobs):
    complete, labels = blobs[0][:400], blobs[1][:400]
    X = complete.copy()
    X[np.random.default_rng(5).random(X.shape) < 0.15] = np.nan
    X[np.isnan(X).all(axis=1), 0] = 0.0
    start = {"weights_init": np.full(3, 1 / 3), "precisions_init": np.stack([np.eye(3)] * 3),
             "means_init": np.stack([complete[labels == k][:5].mean(axis=0) for k in range(3)])}
    kw = dict(n_components=3, tol=1e-11, max_iter=10_000, missing="em", **start)
    plain = dem.GaussianMixture(**kw).fit(X)
    sq = dem.GaussianMixture(accelerate="squarem", **kw).fit(X)
    assert plain.converged_ and sq.converged_
    assert sq.n_passes_ < plain.n_passes_
    np.testing.assert_allclose(sq.lower_bound_, plain.lower_bound_, rtol=0, atol=1e-10)
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(sq, name), getattr(plain, name), rtol=0, atol=1e-5, err_msg=name)


# -- the history, the passes, and the monotone safeguard ------------------------------------


def test_accepted_objective_never_decreases_and_the_history_says_what_happened(overlapping):
    X = overlapping
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", ObjectiveDecreasedWarning)
        est = dem.GaussianMixture(3, tol=0.0, max_iter=200, accelerate="squarem", **_gmm_start(X, 3)).fit(X)
    h = est.history_
    # max_iter counts passes; every pass leaves one record.
    assert len(h) == est.n_iter_ == est.n_passes_ == 200
    assert [r["n_passes"] for r in h] == list(range(1, 201))
    iterates = [r["objective"] for r in h if r["event"] != "extrapolated"]
    assert iterates == est.lower_bounds_
    assert np.all(np.diff(iterates) >= -1e-9 * np.abs(iterates[1:]))
    last_iterate, counts = -np.inf, {"accepted": 0, "deferred": 0, "rejected": 0}
    for r in h:
        kinds = [k for k in _kinds(r) if k in counts]
        if r["event"] == "extrapolated":
            assert len(kinds) == 1
            counts[kinds[0]] += 1
            if kinds[0] == "accepted":  # θ' itself reached the last iterate
                assert r["objective"] >= last_iterate - 1e-9 * abs(last_iterate)
            else:  # θ' (deferred: its EM step is judged next) or a θ'' that fell short
                assert r["objective"] < last_iterate
        else:
            assert r["event"] == "em" and kinds in ([], ["accepted"])  # an accepted θ'' is an iterate
            last_iterate = r["objective"]
    assert counts["accepted"] > 0 and counts["deferred"] > 0
    # The reported lower bound is the last accepted point's objective, below the final parameters'.
    assert est.lower_bound_ >= max(iterates) - 1e-12
    assert est.score(X) >= est.lower_bound_ - 1e-12


@dataclasses.dataclass(frozen=True)
class _LineStats(Stats):
    mapped: np.ndarray  # Σ_rows F(θ)


@dataclasses.dataclass(frozen=True)
class _Point:
    theta: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class _LinearMap(Family, FlatParameters):
    """EM map ``F(θ) = θ* + Λ(θ − θ*)`` with objective ``−Σ w_i (θ_i − θ*_i)²``.

    Each |λ_i| < 1, so ``F`` increases the objective and ``θ*`` is the only
    fixed point. With one slow and one fast coordinate, SqS3's step length
    (set by the slow one) overshoots the fast one; a heavy weight on the fast
    coordinate makes the overshoot lower the objective.
    """

    optimum: tuple = (1.0, -2.0)
    rates: tuple = (0.97, 0.5)
    weights: tuple = (1.0, 400.0)

    kind = "toy"
    params_type = _Point

    def objective_at(self, theta: np.ndarray) -> float:
        return -float(np.sum(np.array(self.weights) * (theta - np.array(self.optimum)) ** 2))

    def e_step(self, params, part):
        n = float(part.X.shape[0])
        opt = np.array(self.optimum)
        mapped = opt + np.array(self.rates) * (params.theta - opt)
        return _LineStats(n_rows=n, weight_sum=n, log_likelihood=n * self.objective_at(params.theta),
                          mapped=n * mapped)

    def m_step(self, stats, params):
        return _Point(stats.mapped / stats.weight_sum)

    def n_parameters(self, n_features):
        return 2

    def log_density(self, params, part):
        return np.full(part.X.shape[0], self.objective_at(params.theta))

    def to_vector(self, params):
        return params.theta.copy()

    def from_vector(self, vector, like):
        return _Point(np.array(vector, dtype=np.float64))


def _run_toy(family: Family, theta0, tol: float, max_iter: int = 2000):
    data = as_partitioned(np.zeros((4, 1)), partition_rows=4)  # one row-less-ish partition: the map is exact
    ex = Executor()
    passes = DataPasses(ex, ex.place(data, cache=True))
    strategy = SquaremStrategy(max_iter, tol)
    outcome = fit_members(passes, start=lambda: [strategy.start(family, _Point(np.array(theta0)), 0)],
                          restore=None, labels=[{"restart": 0}])
    return outcome.runs[0]


def test_safeguard_rejects_an_extrapolation_that_lowers_the_objective_and_still_ends_at_the_optimum():
    family = _LinearMap()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ObjectiveDecreasedWarning)
        run = _run_toy(family, [11.0, -1.0], tol=1e-20)
    h = run.monitor.history
    rejected = [r for r in h if any(n["kind"] == "rejected" for n in r.notes)]
    accepted = [r for r in h if any(n["kind"] == "accepted" for n in r.notes)]
    assert rejected and accepted
    for r in rejected:
        assert r.event == "extrapolated"
        # The raw extrapolation was worse than the iterate before it (the second EM step's start).
        before = [q for q in h[: r.iteration - 1] if q.iterate][-1]
        assert r.objective < before.objective
    iterates = np.array([r.objective for r in h if r.iterate])
    assert np.all(np.diff(iterates) >= 0)
    assert run.converged
    np.testing.assert_allclose(run.params.theta, family.optimum, rtol=0, atol=1e-9)
    # Plain EM from the same start needs log(1e-10)/log(0.97) ≈ 750 maps; SQUAREM far fewer.
    assert run.n_passes < 150


def test_step_length_is_sqs3_within_the_bounds():
    r, v = np.array([3.0, 4.0]), np.array([0.0, -0.5])
    assert step_length(r, v, 1.0, 100.0) == -10.0
    assert step_length(r, v, 1.0, 4.0) == -4.0
    assert step_length(r, 100 * v, 1.0, 4.0) == -1.0
    assert step_length(r, 0 * v, 1.0, 16.0) == -16.0
    assert step_length(0 * r, 0 * v, 1.0, 16.0) == -1.0


def test_points_whose_zero_pattern_differs_are_not_extrapolated():
    family = CategoricalHMMFamily(n_components=2)
    a = CategoricalHMMParams(np.array([0.5, 0.5]), np.array([[0.9, 0.1], [0.2, 0.8]]),
                             np.array([[0.7, 0.3], [0.4, 0.6]]))
    b = dataclasses.replace(a, transmat=np.array([[1.0, 0.0], [0.2, 0.8]]))
    assert comparable(family, [a, a, a]) is not None
    assert comparable(family, [a, a, b]) is None


def test_squarem_needs_flat_parameters():
    @dataclasses.dataclass(frozen=True, eq=False)
    class NoFlat(Family):
        kind = "noflat"
        params_type = _Point

        def e_step(self, params, part):
            raise NotImplementedError

        def m_step(self, stats, params):
            raise NotImplementedError

        def n_parameters(self, n_features):
            return 0

        def log_density(self, params, part):
            raise NotImplementedError

    strategy = by_name("squarem").from_estimator({}, max_iter=10, tol=1e-3, rtol=1e-9, data=None)
    assert isinstance(strategy, SquaremStrategy)
    with pytest.raises(ConfigError, match="accelerate='squarem' is not available for 'noflat'"):
        strategy.start(NoFlat(), _Point(np.zeros(1)), 0)


def test_restarts_share_passes_and_each_equals_its_own_fit(overlapping):
    X = overlapping
    kw = dict(n_components=3, tol=1e-6, max_iter=60, accelerate="squarem")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        both = dem.GaussianMixture(n_init=2, random_state=3, **kw).fit(X)
        singles = [dem.GaussianMixture(random_state=s, **kw).fit(X) for s in (3, 4)]
    # Restarts of a Gaussian mixture share stacked products: equal to separate fits to rounding.
    for member, single in zip(both.restarts_, singles):
        np.testing.assert_allclose([r["objective"] for r in member["history"]],
                                   [r["objective"] for r in single.history_], rtol=1e-12, atol=0)
        assert member["n_passes"] == single.n_passes_


# -- the coordinates round-trip -------------------------------------------------------------

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


def _spd(rng, lead, D):
    A = rng.normal(size=lead + (D, D)) * 0.5
    return A @ np.swapaxes(A, -1, -2) + np.eye(D) * rng.uniform(0.1, 2.0)


def _simplex(rng, shape, zeros: bool):
    p = rng.dirichlet(np.full(shape[-1], 0.7), size=shape[:-1])
    if zeros:  # structural zeros, at least one positive entry per row
        mask = rng.random(p.shape) < 0.3
        mask[..., 0] &= False
        p = np.where(mask, 0.0, p)
        p = p / p.sum(axis=-1, keepdims=True)
    return p


def _family_case(name: str, ct: str, letters: str, zeros: bool, seed: int):
    rng = np.random.default_rng(seed)
    K, D, M = 3, 3, 2
    lead = () if ct == "tied" else (K,)
    cov = {"full": lambda: _spd(rng, lead, D), "tied": lambda: _spd(rng, lead, D),
           "diag": lambda: rng.uniform(0.05, 3.0, (K, D)), "spherical": lambda: rng.uniform(0.05, 3.0, K)}[ct]()
    if name in ("gmm", "gmm_missing"):
        cls = GaussianMixtureFamily if name == "gmm" else MissingDataGaussianMixtureFamily
        return cls(K, ct), params_from(ct, rng.dirichlet(np.ones(K)), rng.normal(size=(K, D)) * 3, cov), "wmc"
    start, trans = _simplex(rng, (1, K), zeros)[0], _simplex(rng, (K, K), zeros)
    if name == "gaussian_hmm":
        return (GaussianHMMFamily(n_components=K, params=letters, covariance_type=ct),
                GaussianHMMParams(start, trans, rng.normal(size=(K, D)), cov), letters)
    if name == "categorical_hmm":
        return (CategoricalHMMFamily(n_components=K, params=letters.replace("m", "e").replace("c", "")),
                CategoricalHMMParams(start, trans, _simplex(rng, (K, 5), zeros)), letters.replace("m", "e"))
    mlead = (K,) if ct == "tied" else (K, M)
    gcov = {"full": lambda: _spd(rng, mlead, D), "tied": lambda: _spd(rng, mlead, D),
            "diag": lambda: rng.uniform(0.05, 3.0, (K, M, D)), "spherical": lambda: rng.uniform(0.05, 3.0, (K, M))}[ct]()
    return (GMMHMMFamily(n_components=K, n_mix=M, params=letters + "w", covariance_type=ct),
            GMMHMMParams(start, trans, _simplex(rng, (K, M), zeros), rng.normal(size=(K, M, D)), gcov),
            letters + "w")


_FIELD_LETTER = {"startprob": "s", "transmat": "t", "means": "m", "covars": "c", "emissionprob": "e",
                 "weights": "w", "covariances": "c", "precisions_cholesky": "c"}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(["gmm", "gmm_missing", "gaussian_hmm", "categorical_hmm", "gmm_hmm"]),
       ct=st.sampled_from(COVARIANCE_TYPES), letters=st.sampled_from(["stmc", "st", "mc", "sm", "tc"]),
       zeros=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_coordinates_round_trip(name, ct, letters, zeros, seed):
    family, p, free = _family_case(name, ct, letters, zeros, seed)
    v = family.to_vector(p)
    assert v.dtype == np.float64 and np.isfinite(v).all()
    assert np.array_equal(family.to_vector(p), v)  # deterministic: a resumed cycle sees the same bits
    q = family.from_vector(v, p)
    for f in dataclasses.fields(p):
        a, b = np.asarray(getattr(p, f.name)), np.asarray(getattr(q, f.name))
        assert a.shape == b.shape, f.name
        if _FIELD_LETTER[f.name] not in free:
            assert np.array_equal(a, b), f"{f.name} is fixed and must come back unchanged"
            continue
        assert np.array_equal(a == 0, b == 0), f"{f.name}: zeros are structural"
        np.testing.assert_allclose(b, a, rtol=1e-11, atol=1e-14 * max(1.0, np.abs(a).max()), err_msg=f.name)
    np.testing.assert_allclose(family.to_vector(q), v, rtol=1e-9, atol=1e-11)
    # Any vector is a valid model: probabilities sum to one, covariances are positive definite.
    far = family.from_vector(v + np.random.default_rng(seed).normal(size=v.shape) * 3.0, p)
    for f in dataclasses.fields(far):
        value = np.asarray(getattr(far, f.name))
        assert np.isfinite(value).all(), f.name
        if f.name in ("startprob", "transmat", "emissionprob", "weights"):
            assert (value >= 0).all()
            rows = value.sum(axis=-1)
            np.testing.assert_allclose(rows[rows > 0], 1.0, rtol=1e-12, err_msg=f.name)


def test_an_extrapolated_probability_below_exp_range_stays_positive():
    family = CategoricalHMMFamily(n_components=2, params="ste")
    p = CategoricalHMMParams(np.array([0.5, 0.5]), np.array([[0.9, 0.1], [0.2, 0.8]]),
                             np.array([[0.7, 0.3], [0.4, 0.6]]))
    v = family.to_vector(p)
    q = family.from_vector(v - 1e4, p)
    assert (q.emissionprob > 0).all() and (q.transmat > 0).all()


# -- bitwise: clusters and resume -----------------------------------------------------------


def _squarem_fit(X, client=None, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dem.GaussianMixture(3, tol=0.0, max_iter=24, accelerate="squarem", partition_rows=100,
                                   random_state=0, client=client, **kw).fit(X)


@pytest.mark.slow
def test_bitwise_equal_on_threads_and_on_one_and_two_workers(overlapping, local_cluster_client,
                                                            one_worker_client):
    local = _squarem_fit(overlapping)
    assert any(r["event"] == "extrapolated" for r in local.history_)
    for client in (one_worker_client, local_cluster_client):
        remote = _squarem_fit(overlapping, client)
        for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
            assert np.array_equal(getattr(remote, name), getattr(local, name)), name
        assert [r["objective"] for r in remote.history_] == [r["objective"] for r in local.history_]
        assert [r["notes"] for r in remote.history_] == [r["notes"] for r in local.history_]


_CHILD = textwrap.dedent(
    """
    import sys, warnings
    import numpy as np
    import dem
    kind, run_dir, out = sys.argv[1:4]
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(11)
    if kind == "gmm":
        means = np.array([[0.0, 0.0], [1.5, 0.5], [0.2, 2.0]])
        X = means[rng.choice(3, 600, p=[0.4, 0.35, 0.25])] + rng.normal(size=(600, 2))
        est = dem.GaussianMixture(3, tol=0.0, max_iter=18, accelerate="squarem", partition_rows=150,
                                  random_state=0, checkpoint_dir=run_dir).fit(X)
        arrays = {k: getattr(est, k) for k in ("weights_", "means_", "covariances_")}
    else:
        states = rng.choice(3, 900, p=[0.4, 0.35, 0.25])
        X = np.array([[0.0, 0.0], [1.0, 0.3], [0.2, 1.1]])[states] + rng.normal(size=(900, 2))
        est = dem.GaussianHMM(3, "diag", n_iter=18, tol=0.0, accelerate="squarem", random_state=0,
                              partition_rows=300, checkpoint_dir=run_dir).fit(X, [300, 300, 300])
        arrays = {k: getattr(est, k) for k in ("startprob_", "transmat_", "means_", "_covars_")}
    arrays["objectives"] = np.array([r["objective"] for r in est.history_])
    arrays["n_passes"] = np.array(est.n_passes_)
    np.savez(out, **arrays)
    """
)


@pytest.mark.slow
# Each phase of a cycle once (5: between the EM maps, 6: an extrapolated point pending, 9: a
# cycle's start), the two families spread over them; the contract suite kills every family too.
@pytest.mark.parametrize("kind, kill_at", [("hmm", 5), ("gmm", 6), ("hmm", 9)])
def test_sigkill_mid_cycle_then_resume_is_bitwise_equal(tmp_path, kind, kill_at):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)

    def run(run_dir, out, fault=None):
        env = {k: v for k, v in os.environ.items() if k != "DEM_FAULT_INJECT"}
        if fault:
            env["DEM_FAULT_INJECT"] = fault
        proc = subprocess.run([sys.executable, str(script), kind, str(run_dir), str(out)], env=env,
                              timeout=300, capture_output=True, text=True)
        if proc.returncode not in (0, -signal.SIGKILL):
            raise AssertionError(f"fit failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return proc.returncode

    run(tmp_path / "ref", tmp_path / "ref.npz")
    killed = tmp_path / "killed"
    # The kill comes after pass kill_at's E-step: the last checkpoint holds pass kill_at − 1.
    assert run(killed, tmp_path / "out.npz", fault=f"m-step:{kill_at}") == -signal.SIGKILL
    meta, _, _ = Checkpointer(RunStore(str(killed)), 3).load_latest()
    state = meta["members"][0]
    assert state["strategy"] == "squarem"
    # The first cycle (passes 1-3) is plain EM (|α| ≤ 1); the second starts at pass 4.
    if kill_at == 5:
        assert state["phase"] == 1 and state["stored"] == ["theta0"]  # between its two EM maps
    if kill_at == 6:
        assert state["phase"] == 2 and state["stored"] == ["point"]  # an extrapolated point awaits its pass
    assert run(killed, tmp_path / "out.npz") == 0
    ref, got = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "out.npz")
    assert set(ref.files) == set(got.files)
    for name in ref.files:
        assert np.array_equal(got[name], ref[name]), name
