"""HMM models (pure numpy) against hmmlearn 0.3.3 and direct computation.

The references are hmmlearn's own E-step (``_do_estep``), scoring
(``score_samples``), decoding (``decode``) and emission densities, run on
the same parameters; and small direct sums. dem is compared with itself only
for the partition invariance of its statistics.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from dem.errors import CollapsedComponentError, DataError
from dem.data.record import Partition
from dem.families import hmm_lattice
from dem.families.categorical_hmm import CategoricalHMMFamily as CategoricalHMMModel
from dem.families.categorical_hmm import CategoricalHMMParams
from dem.families.gaussian_hmm import GaussianHMMFamily as GaussianHMMModel
from dem.families.gaussian_hmm import GaussianHMMParams
from dem.families.gmm_hmm import GMMHMMFamily as GMMHMMModel
from dem.families.gmm_hmm import GMMHMMParams
from dem.families.hmm_gaussians import Gaussians, unpack_symmetric

hmmlearn_hmm = pytest.importorskip("hmmlearn.hmm")
hmmlearn_stats = pytest.importorskip("hmmlearn.stats")
logging.getLogger("hmmlearn").setLevel(logging.ERROR)

COVARIANCE_TYPES = ("spherical", "diag", "full", "tied")
#: Lengths mixing equal lengths (batched as one rectangle), near-equal ones
#: (padded batches), length-1 and length-2 sequences (no / one transition).
LENGTHS = np.array([60, 45, 1, 2, 60, 33, 120, 7, 60, 58, 3])
K, D, M, S = 3, 3, 2, 5
STARTPROB = np.array([0.5, 0.3, 0.2])
TRANSMAT = np.array([[0.8, 0.1, 0.1], [0.15, 0.7, 0.15], [0.1, 0.2, 0.7]])


def _covars(rng: np.random.Generator, ct: str, lead: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
    if ct == "spherical":
        return rng.uniform(0.5, 1.5, size=lead) * scale
    if ct == "diag":
        return rng.uniform(0.5, 1.5, size=lead + (D,)) * scale
    A = rng.normal(size=lead + (D, D)) * 0.3
    return (A @ np.swapaxes(A, -1, -2) + np.eye(D)) * scale


def _gaussian_params(ct: str, seed: int = 0) -> GaussianHMMParams:
    rng = np.random.default_rng(seed)
    means = np.array([[0.0, 0.0, 0.0], [3.0, 1.0, 0.0], [0.0, 3.0, 2.0]]) + rng.normal(size=(K, D)) * 0.2
    lead = () if ct == "tied" else (K,)
    return GaussianHMMParams(STARTPROB.copy(), TRANSMAT.copy(), means, _covars(rng, ct, lead))


def _gmm_params(ct: str, seed: int = 0) -> GMMHMMParams:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(K, M, D)) * 2.0 + np.arange(K)[:, None, None] * 3.0
    weights = rng.dirichlet(np.full(M, 5.0), size=K)
    lead = (K,) if ct == "tied" else (K, M)
    return GMMHMMParams(STARTPROB.copy(), TRANSMAT.copy(), weights, means, _covars(rng, ct, lead))


def _categorical_params(seed: int = 0) -> CategoricalHMMParams:
    rng = np.random.default_rng(seed)
    return CategoricalHMMParams(STARTPROB.copy(), TRANSMAT.copy(), rng.dirichlet(np.ones(S), size=K))


def _hmmlearn(kind: str, ct: str | None, p) -> object:
    """An hmmlearn model holding the parameters ``p`` (validated by hmmlearn's _check)."""
    if kind == "gaussian":
        h = hmmlearn_hmm.GaussianHMM(K, covariance_type=ct, init_params="")
        h.means_, h.covars_ = p.means, p.covars
    elif kind == "gmm":
        h = hmmlearn_hmm.GMMHMM(K, M, covariance_type=ct, init_params="")
        h.weights_, h.means_, h.covars_ = p.weights, p.means, p.covars
    else:
        h = hmmlearn_hmm.CategoricalHMM(K, init_params="")
        h.emissionprob_ = p.emissionprob
    h.startprob_, h.transmat_ = p.startprob, p.transmat
    h._check()
    return h


def _sample(h, lengths: np.ndarray, seed: int) -> np.ndarray:
    return np.concatenate([h.sample(int(n), random_state=seed + i)[0] for i, n in enumerate(lengths)])


CASES = ([("gaussian", ct) for ct in COVARIANCE_TYPES] + [("gmm", ct) for ct in COVARIANCE_TYPES]
         + [("categorical", None)])


def _case(kind: str, ct: str | None):
    """(dem model, params, hmmlearn model, X) for one emission family."""
    if kind == "gaussian":
        model, p = GaussianHMMModel(K, covariance_type=ct), _gaussian_params(ct)
    elif kind == "gmm":
        model, p = GMMHMMModel(K, n_mix=M, covariance_type=ct), _gmm_params(ct)
    else:
        model, p = CategoricalHMMModel(K), _categorical_params()
    h = _hmmlearn(kind, ct, p)
    X = _sample(h, LENGTHS, 100)
    if kind == "categorical":
        X = X.astype(np.int64)
    return model, p, h, X


@pytest.fixture(params=CASES, ids=[f"{k}-{c}" if c else k for k, c in CASES])
def case(request):
    return _case(*request.param)


# -- emission densities, posteriors, scores, paths ---------------------------


def test_emission_log_likelihood_equals_hmmlearn(case):
    model, p, h, X = case
    ours = model.log_emission(model.prepare(p), model.check_block(p, X, 0))
    np.testing.assert_allclose(ours, h._compute_log_likelihood(X), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("batch_cells", [None, 200])
def test_scores_and_posteriors_equal_hmmlearn(case, batch_cells, monkeypatch):
    if batch_cells is not None:  # many small batches, most padded
        monkeypatch.setattr(hmm_lattice, "BATCH_CELLS", batch_cells)
    model, p, h, X = case
    ll, post = model.score_and_posteriors(p, X, LENGTHS)
    ref_total, ref_post = h.score_samples(X, LENGTHS)
    np.testing.assert_allclose(post, ref_post, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ll.sum(), ref_total, rtol=1e-12)
    starts = np.concatenate([[0], np.cumsum(LENGTHS)])
    for i in (0, 2, 6):
        np.testing.assert_allclose(ll[i], h.score(X[starts[i]:starts[i + 1]]), rtol=1e-12)
    np.testing.assert_allclose(model.score(p, X, LENGTHS), ll, rtol=1e-14)


@pytest.mark.parametrize("algorithm", ["viterbi", "map"])
def test_decoding_equals_hmmlearn(case, algorithm):
    model, p, h, X = case
    log_prob, states = model.decode(p, X, LENGTHS, algorithm)
    ref_log_prob, ref_states = h.decode(X, LENGTHS, algorithm=algorithm)
    np.testing.assert_array_equal(states, ref_states)
    np.testing.assert_allclose(log_prob.sum(), ref_log_prob, rtol=1e-11)


def test_e_step_statistics_equal_hmmlearn(case):
    """Every statistic against hmmlearn's ``_do_estep``, after undoing dem's shift."""
    model, p, h, X = case
    stats = model.e_step(p, Partition(X, lengths=LENGTHS, start=0))
    ref, ref_ll = h._do_estep(X, LENGTHS)
    close = dict(rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stats.log_likelihood, ref_ll, rtol=1e-12)
    assert stats.n_sequences == ref["nobs"] == len(LENGTHS)
    assert stats.n_rows == stats.weight_sum == LENGTHS.sum()
    np.testing.assert_allclose(stats.start, ref["start"], **close)
    np.testing.assert_allclose(stats.trans, ref["trans"], **close)
    if isinstance(model, CategoricalHMMModel):
        np.testing.assert_allclose(stats.obs, ref["obs"], **close)
        return
    if isinstance(model, GaussianHMMModel):
        c = p.means.mean(axis=0)
        post, F = stats.post, stats.first_moment
        np.testing.assert_allclose(post, ref["post"], **close)
        np.testing.assert_allclose(F + post[:, None] * c, ref["obs"], **close)
        if model.covariance_type in ("diag", "spherical"):
            raw = stats.second_moment + 2 * c * F + post[:, None] * c * c
            np.testing.assert_allclose(raw, ref["obs**2"], **close)
        else:
            S2 = unpack_symmetric(stats.second_moment, D)
            raw = (S2 + F[:, :, None] * c[None, None, :] + c[None, :, None] * F[:, None, :]
                   + post[:, None, None] * np.outer(c, c))
            np.testing.assert_allclose(raw, ref["obs*obs.T"], **close)
        return
    # GMM-HMM: hmmlearn keeps Σ γ_km x and Σ γ_km (x − μ_km)(…)ᵀ about the E-step means.
    c = p.means.reshape(K * M, D).mean(axis=0)
    N, F = stats.post_mix, stats.first_moment
    np.testing.assert_allclose(stats.post, ref["post_sum"], **close)
    np.testing.assert_allclose(N, ref["post_mix_sum"], **close)
    np.testing.assert_allclose(F + N[..., None] * c, ref["m_n"], **close)
    d = p.means - c
    ct = model.covariance_type
    if ct == "diag":
        got = stats.second_moment - 2 * d * F + N[..., None] * d * d
    elif ct == "spherical":
        got = stats.second_moment - 2 * (d * F).sum(-1) + N * (d * d).sum(-1)
    else:
        cross = -F[..., :, None] * d[..., None, :] - d[..., :, None] * F[..., None, :] \
            + N[..., None, None] * d[..., :, None] * d[..., None, :]
        if ct == "full":
            got = unpack_symmetric(stats.second_moment, D) + cross
        else:
            got = unpack_symmetric(stats.second_moment, D) + cross.sum(axis=1)
    np.testing.assert_allclose(got, ref["c_n"], **close)


def test_statistics_of_any_split_add_up_to_the_whole(case):
    model, p, h, X = case
    whole = model.e_step(p, Partition(X, lengths=LENGTHS, start=0))
    rng = np.random.default_rng(4)
    for _ in range(3):
        cuts = np.unique(np.concatenate([[0], rng.choice(np.arange(1, len(LENGTHS)), 3), [len(LENGTHS)]]))
        offsets = np.concatenate([[0], np.cumsum(LENGTHS)])
        parts = [model.e_step(p, Partition(X[offsets[a]:offsets[b]], lengths=LENGTHS[a:b], start=int(offsets[a])))
                 for a, b in zip(cuts[:-1], cuts[1:])]
        total = parts[0]
        for s in parts[1:]:
            total = total + s
        for name in whole.__dataclass_fields__:
            np.testing.assert_allclose(getattr(total, name), getattr(whole, name), rtol=1e-11, atol=1e-9,
                                       err_msg=name)


def test_float32_data_accumulate_in_float64():
    model, p = GaussianHMMModel(K, covariance_type="full"), _gaussian_params("full")
    h = _hmmlearn("gaussian", "full", p)
    X32 = _sample(h, LENGTHS, 7).astype(np.float32)
    stats = model.e_step(p, Partition(X32, lengths=LENGTHS, start=0))
    ref, ref_ll = h._do_estep(X32.astype(np.float64), LENGTHS)
    assert stats.second_moment.dtype == np.float64
    np.testing.assert_allclose(stats.log_likelihood, ref_ll, rtol=1e-12)
    np.testing.assert_allclose(stats.trans, ref["trans"], rtol=1e-9)


def test_large_offsets_do_not_cancel():
    """Moments about the shared shift keep full precision with data far from the origin."""
    offset = 1e7
    p = _gaussian_params("full")
    model = GaussianHMMModel(K, covariance_type="full")
    h = _hmmlearn("gaussian", "full", p)
    X = _sample(h, LENGTHS, 3)
    p_far = GaussianHMMParams(p.startprob, p.transmat, p.means + offset, p.covars)
    near = model.m_step(model.e_step(p, Partition(X, lengths=LENGTHS, start=0)), p)
    far = model.m_step(model.e_step(p_far, Partition(X + offset, lengths=LENGTHS, start=0)), p_far)
    np.testing.assert_allclose(far.means - offset, near.means, atol=1e-6)
    np.testing.assert_allclose(far.covars, near.covars, rtol=1e-6, atol=1e-6)


# -- underflow, impossible sequences, bad input --------------------------------


def test_scaling_underflow_falls_back_to_exact_log_space(monkeypatch):
    """A transition of 1e-280 into the only state that explains the data."""
    calls = []
    exact = hmm_lattice.forward_backward_log
    monkeypatch.setattr(hmm_lattice, "forward_backward_log", lambda *a, **k: calls.append(1) or exact(*a, **k))
    startprob = np.array([1.0, 0.0])
    transmat = np.array([[1.0 - 1e-280, 1e-280], [0.0, 1.0]])
    p = GaussianHMMParams(startprob, transmat, np.array([[0.0], [60.0]]), np.array([[1.0], [1.0]]))
    X = np.array([[0.1], [-0.3], [0.2], [60.1], [59.8], [0.0], [0.4]])
    lengths = np.array([5, 2])
    model = GaussianHMMModel(2, covariance_type="diag")
    h = _hmmlearn_2state(p)
    ll, post = model.score_and_posteriors(p, X, lengths)
    ref_total, ref_post = h.score_samples(X, lengths)
    np.testing.assert_allclose(ll.sum(), ref_total, rtol=1e-12)
    np.testing.assert_allclose(post, ref_post, atol=1e-12)
    assert len(calls) == 1  # only the first sequence underflowed
    stats = model.e_step(p, Partition(X, lengths=lengths, start=0))
    ref, _ = h._do_estep(X, lengths)
    np.testing.assert_allclose(stats.trans, ref["trans"], rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(model.decode(p, X, lengths)[1], h.decode(X, lengths)[1])


def _hmmlearn_2state(p):
    h = hmmlearn_hmm.GaussianHMM(2, covariance_type="diag", init_params="")
    h.startprob_, h.transmat_, h.means_, h.covars_ = p.startprob, p.transmat, p.means, p.covars
    return h


def test_forward_backward_log_agrees_with_scaled_recursions():
    model, p, _, X = _case("gaussian", "diag")
    logB = model.log_emission(model.prepare(p), X[:60])
    (batch,) = hmm_lattice.batches(np.array([60]), K)
    scaled = hmm_lattice.forward_backward(p.startprob, p.transmat, logB, batch)
    exact = hmm_lattice.forward_backward_log(np.log(p.startprob), np.log(p.transmat), logB)
    np.testing.assert_allclose(scaled.log_likelihood, exact.log_likelihood, rtol=1e-13)
    np.testing.assert_allclose(scaled.posteriors, exact.posteriors, atol=1e-12)
    np.testing.assert_allclose(scaled.trans, exact.trans, rtol=1e-10)


def test_an_impossible_sequence_is_a_data_error_naming_its_rows():
    p = CategoricalHMMParams(np.array([1.0, 0.0]), np.eye(2), np.array([[1.0, 0.0], [0.0, 1.0]]))
    model = CategoricalHMMModel(2)
    X = np.array([0, 0, 0, 1, 1])
    with pytest.raises(DataError, match=r"rows 10–13 has probability zero"):
        model.e_step(p, Partition(X, lengths=np.array([1, 4]), start=9))


def test_an_impossible_observation_is_a_data_error_naming_its_row():
    p = CategoricalHMMParams(np.array([0.5, 0.5]), np.full((2, 2), 0.5), np.array([[0.5, 0.5, 0.0]] * 2))
    with pytest.raises(DataError, match="observation at row 7 has probability zero under every state"):
        CategoricalHMMModel(2).e_step(p, Partition(np.array([0, 1, 2]), lengths=np.array([3]), start=5))


@pytest.mark.parametrize("X, match", [
    (np.array([0, 1, 5, 2]), "symbol at row 12 is 5, but the model only emits symbols 0…4"),
    (np.array([0, -1, 2, 2]), "symbol at row 11 is negative"),
    (np.array([0.0, 1.0, 2.0, 2.0]), "must be integer symbols"),
    (np.array([[0, 1], [1, 2]]), r"shape \(n_samples, 1\)"),
])
def test_bad_symbols_are_one_clear_error(X, match):
    with pytest.raises(DataError, match=match):
        CategoricalHMMModel(K).e_step(_categorical_params(), Partition(X, lengths=None, start=10))


def test_nan_and_bad_lengths_are_one_clear_error():
    p = _gaussian_params("diag")
    model = GaussianHMMModel(K)
    X = np.zeros((6, D))
    X[4, 1] = np.nan
    with pytest.raises(DataError, match="X contains NaN at row 104, feature 1"):
        model.e_step(p, Partition(X, lengths=np.array([6]), start=100))
    with pytest.raises(DataError, match="sum to 5 but the block at row 0 has 6 rows"):
        model.e_step(p, Partition(np.zeros((6, D)), lengths=np.array([2, 3]), start=0))
    with pytest.raises(DataError, match="has length 0"):
        model.e_step(p, Partition(np.zeros((6, D)), lengths=np.array([6, 0]), start=0))


def test_a_collapsed_covariance_names_the_state():
    # Not positive definite even with hmmlearn's 1e-7 on the diagonal: hmmlearn raises a ValueError too.
    p = _gaussian_params("full")
    covars = p.covars.copy()
    covars[1] = -np.eye(D)
    with pytest.raises(ValueError, match="'covars' must be symmetric, positive-definite"):
        hmmlearn_stats.log_multivariate_normal_density(np.zeros((2, D)), p.means, covars, "full")
    with pytest.raises(CollapsedComponentError, match="state 1's covariance is not positive definite, even with 1e-07"):
        GaussianHMMModel(K, covariance_type="full").prepare(
            GaussianHMMParams(p.startprob, p.transmat, p.means, covars))
    g = _gmm_params("diag")
    bad = g.covars.copy()
    bad[2, 1, 0] = np.nan
    with pytest.raises(CollapsedComponentError, match="state 2, mixture component 1 has a NaN variance"):
        GMMHMMModel(K, n_mix=M).prepare(GMMHMMParams(g.startprob, g.transmat, g.weights, g.means, bad))


@pytest.mark.parametrize("kind", ["full", "diag", "spherical"])
def test_degenerate_covariances_give_hmmlearns_densities(kind):
    """A singular full covariance is retried with 1e-7 on its diagonal, a zero or negative
    variance is floored at the smallest positive float: hmmlearn's densities, not an error."""
    rng = np.random.default_rng(4)
    means = rng.normal(size=(K, D))
    X = np.vstack([rng.normal(size=(20, D)), means])  # rows on the means too
    if kind == "full":
        covars = _covars(rng, "full", (K,))
        covars[0] = np.diag([1.0, 0.0, 2.0])  # a constant feature
        covars[2] = np.ones((D, D))  # rank one
    elif kind == "diag":
        covars = rng.uniform(0.5, 1.5, size=(K, D))
        covars[0, 1], covars[2, 0] = 0.0, -0.3
    else:
        covars = np.array([1.0, 0.0, -2.0])
    shift = X.mean(axis=0)
    with np.errstate(over="ignore"):
        expected = hmmlearn_stats.log_multivariate_normal_density(X, means, covars, kind)
    ours = Gaussians.from_covariances(means, covars, kind, shift, ["a", "b", "c"]).log_density(X - shift)
    np.testing.assert_allclose(ours, expected, rtol=1e-7, atol=1e-9)


def test_transitions_m_step_equals_hmmlearn_with_priors_and_forbidden_transitions():
    """Priors below and above 1, and zeros in startprob/transmat kept at zero."""
    p = _categorical_params()
    p = CategoricalHMMParams(np.array([0.6, 0.4, 0.0]),
                             np.array([[0.9, 0.1, 0.0], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]), p.emissionprob)
    sp_prior, tm_prior, e_prior = np.array([2.0, 0.5, 1.0]), 1.5, 0.8
    model = CategoricalHMMModel(K, params="ste", startprob_prior=sp_prior, transmat_prior=tm_prior,
                                emissionprob_prior=e_prior)
    h = hmmlearn_hmm.CategoricalHMM(K, startprob_prior=sp_prior, transmat_prior=tm_prior,
                                    emissionprob_prior=e_prior, init_params="")
    h.startprob_, h.transmat_, h.emissionprob_ = p.startprob, p.transmat, p.emissionprob
    h._check()
    X = _sample(_hmmlearn("categorical", None, _categorical_params()), LENGTHS, 5).astype(np.int64)
    stats, _ = h._do_estep(X, LENGTHS)
    ours = model.m_step(model.e_step(p, Partition(X, lengths=LENGTHS, start=0)), p)
    h._do_mstep(stats)
    np.testing.assert_allclose(ours.startprob, h.startprob_, rtol=1e-10)
    np.testing.assert_allclose(ours.transmat, h.transmat_, rtol=1e-10)
    np.testing.assert_allclose(ours.emissionprob, h.emissionprob_, rtol=1e-10)
    assert ours.startprob[2] == 0.0 and ours.transmat[0, 2] == 0.0


def test_batches_cover_every_sequence_once_with_bounded_padding():
    lengths = np.array([5, 100, 6, 5, 7, 101, 1, 5, 40])
    batches = hmm_lattice.batches(lengths, width=2, cells=400)
    seen = np.concatenate([b.sequences for b in batches])
    np.testing.assert_array_equal(np.sort(seen), np.arange(len(lengths)))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    for b in batches:
        np.testing.assert_array_equal(b.lengths, lengths[b.sequences])
        assert np.all(np.diff(b.lengths) >= 0)
        assert b.T <= max(b.lengths[0] + 8, b.lengths[0] * 5 // 4)
        assert b.n == 1 or b.n * b.T * 2 <= 400
        expected = np.concatenate([np.arange(starts[s], starts[s] + n) for s, n in zip(b.sequences, b.lengths)])
        np.testing.assert_array_equal(b.rows, expected)


# -- the family contract, for each emission family ----------------------------------

import dem  # noqa: E402
from contract import FamilyContract  # noqa: E402


class _HMMContract(FamilyContract):
    cls = None
    hmm_case = ("gaussian", "diag")

    def estimator(self, **kw):
        return self.cls(**{"n_components": K, "random_state": 0, "n_iter": 6, "partition_rows": 120, **kw})

    def data(self):
        model, p, h, X = _case(*self.hmm_case)
        return {"X": X, "lengths": LENGTHS}

    def fit_arguments(self):
        d = self.data()
        return (d["X"], d["lengths"]), {}

    def family_and_params(self):
        model, p, h, X = _case(*self.hmm_case)
        return model, p

    def partitions(self, cuts):
        # Sequences are never split: cut at the sequence boundaries nearest the given rows.
        X = self.data()["X"]
        offsets = np.concatenate([[0], np.cumsum(LENGTHS)])
        seqs = sorted({int(np.searchsorted(offsets, c)) for c in cuts} - {0, len(LENGTHS)})
        bounds = [0, *seqs, len(LENGTHS)]
        return [Partition(X[offsets[a]:offsets[b]], lengths=LENGTHS[a:b], start=int(offsets[a]))
                for a, b in zip(bounds, bounds[1:])]

    def fitted_arrays(self, est):
        return {"startprob": est.startprob_, "transmat": est.transmat_, **est._emission_params()}

    def predictions(self, est):
        X = self.data()["X"]
        return {"score": np.asarray(est.score(X, LENGTHS)), "predict": est.predict(X, LENGTHS)}

    def bad_inputs(self):
        X = self.data()["X"]
        return [(lambda: self.estimator().fit(X, [len(X) + 1]), dem.DataError, r"lengths sum to"),
                (lambda: self.estimator(n_iter=-1).fit(X), dem.ConfigError, r"The 'n_iter' parameter")]


class TestGaussianHMMContract(_HMMContract):
    kind = "gaussian_hmm"
    cls = dem.GaussianHMM
    hmm_case = ("gaussian", "full")

    def estimator(self, **kw):
        return super().estimator(covariance_type="full", **kw)


class TestCategoricalHMMContract(_HMMContract):
    kind = "categorical_hmm"
    cls = dem.CategoricalHMM
    hmm_case = ("categorical", None)

    def bad_inputs(self):
        X = self.data()["X"]
        return [(lambda: self.estimator().fit(-np.ones_like(X), LENGTHS), dem.DataError, r"is negative")]


class TestGMMHMMContract(_HMMContract):
    kind = "gmm_hmm"
    cls = dem.GMMHMM
    hmm_case = ("gmm", "diag")

    def estimator(self, **kw):
        return super().estimator(n_mix=M, **kw)
