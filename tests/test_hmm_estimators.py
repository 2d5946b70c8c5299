"""dem's HMM estimators against hmmlearn 0.3.3, and the invariants of a distributed fit.

Reference numbers are hmmlearn's, fitted from the same starting parameters
(``init_params=""`` with the attributes set, on both sides): the
log-likelihood of every iteration (``monitor_.history``), the final
parameters, decoding and sampling. dem is compared with itself only for the
invariants (bitwise equality across schedulers and worker counts, exact
resume from a checkpoint).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import zarr

import dem

from dem.engine.monitor import ObjectiveDecreasedWarning
from dem.data.generate_sequences import generate_hmm_dataset
from dem.data.sequences import write_sequences
from dem.errors import ConfigError, DataError
from dem import CategoricalHMM, GaussianHMM, GMMHMM

hmmlearn_hmm = pytest.importorskip("hmmlearn.hmm")
logging.getLogger("hmmlearn").setLevel(logging.ERROR)

COVARIANCE_TYPES = ("spherical", "diag", "full", "tied")
LENGTHS = np.array([80, 45, 1, 2, 80, 33, 150, 7, 80, 64, 3, 120])
K, D, M, S = 3, 2, 2, 5
STARTPROB = np.array([0.5, 0.3, 0.2])
TRANSMAT = np.array([[0.8, 0.1, 0.1], [0.15, 0.7, 0.15], [0.1, 0.2, 0.7]])
GAUSS_MEANS = np.array([[0.0, 0.0], [3.0, 1.0], [0.0, 3.0]])
GMM_MEANS = np.array([[[0.0, 0.0], [2.5, 0.0]], [[0.0, 5.0], [2.5, 5.0]], [[6.0, 0.0], [6.0, 5.0]]])


def _gaussian_start(ct: str) -> dict:
    rng = np.random.default_rng(1)
    covars = {"spherical": np.array([1.0, 1.5, 0.8]), "diag": rng.uniform(0.5, 1.5, (K, D)),
              "full": np.array([[[1.0, 0.3], [0.3, 1.0]], [[1.5, -0.2], [-0.2, 0.7]], [[0.8, 0.0], [0.0, 0.8]]]),
              "tied": np.array([[1.0, 0.2], [0.2, 0.9]])}[ct]
    return dict(startprob_=STARTPROB, transmat_=np.full((K, K), 1.0 / K),
                means_=GAUSS_MEANS + rng.normal(size=(K, D)) * 0.5, covars_=covars)


def _gmm_start(ct: str) -> dict:
    rng = np.random.default_rng(2)
    covars = {"spherical": np.ones((K, M)), "diag": np.ones((K, M, D)),
              "full": np.tile(np.eye(D), (K, M, 1, 1)), "tied": np.tile(np.eye(D), (K, 1, 1))}[ct]
    return dict(startprob_=STARTPROB, transmat_=np.full((K, K), 1.0 / K), weights_=np.full((K, M), 1.0 / M),
                means_=GMM_MEANS + rng.normal(size=(K, M, D)) * 0.5, covars_=covars)


def _categorical_start() -> dict:
    rng = np.random.default_rng(3)
    return dict(startprob_=STARTPROB, transmat_=np.full((K, K), 1.0 / K),
                emissionprob_=rng.dirichlet(np.ones(S), size=K))


def _set(model, attrs: dict):
    for name, value in attrs.items():
        setattr(model, name, np.array(value, copy=True))
    return model


def _sample(h, lengths, seed: int) -> np.ndarray:
    return np.concatenate([h.sample(int(n), random_state=seed + i)[0] for i, n in enumerate(lengths)])


@pytest.fixture(scope="module")
def gaussian_X() -> np.ndarray:
    h = _set(hmmlearn_hmm.GaussianHMM(K, covariance_type="full", init_params=""),
             dict(startprob_=STARTPROB, transmat_=TRANSMAT, means_=GAUSS_MEANS,
                  covars_=np.tile(np.eye(D) * 0.5, (K, 1, 1))))
    return _sample(h, LENGTHS, 10)


@pytest.fixture(scope="module")
def gmm_X() -> np.ndarray:
    h = _set(hmmlearn_hmm.GMMHMM(K, M, covariance_type="full", init_params=""),
             dict(startprob_=STARTPROB, transmat_=TRANSMAT, weights_=np.full((K, M), 0.5), means_=GMM_MEANS,
                  covars_=np.tile(np.eye(D) * 0.4, (K, M, 1, 1))))
    return _sample(h, LENGTHS, 20)


@pytest.fixture(scope="module")
def categorical_X() -> np.ndarray:
    h = _set(hmmlearn_hmm.CategoricalHMM(K, init_params=""),
             dict(startprob_=STARTPROB, transmat_=TRANSMAT,
                  emissionprob_=np.random.default_rng(5).dirichlet(np.full(S, 0.5), size=K)))
    return _sample(h, LENGTHS, 30).astype(np.int64)


def _fit_both(ours_cls, ref_cls, start: dict, X, lengths=LENGTHS, dem_X=None, **kw):
    ref = _set(ref_cls(**kw, init_params=""), start).fit(X, lengths)
    ours = _set(ours_cls(**kw, init_params="", partition_rows=150), start)
    ours.fit(X if dem_X is None else dem_X, None if dem_X is not None else lengths)
    return ours, ref


def _assert_same_fit(ours, ref, names, rtol=1e-6):
    assert ours.monitor_.iter == ref.monitor_.iter
    np.testing.assert_allclose(np.array(ours.monitor_.history), np.array(ref.monitor_.history), rtol=rtol)
    for name in names:
        np.testing.assert_allclose(getattr(ours, name), getattr(ref, name), rtol=rtol, atol=1e-10, err_msg=name)


# -- every iteration and the final parameters equal hmmlearn's ------------------


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_gaussian_hmm_equals_hmmlearn(gaussian_X, ct):
    ours, ref = _fit_both(GaussianHMM, hmmlearn_hmm.GaussianHMM, _gaussian_start(ct), gaussian_X,
                          n_components=K, covariance_type=ct, n_iter=8, tol=0.0)
    # (hmmlearn stops at the first fall of the log-likelihood, which its MAP
    # covariance update can make near convergence; 8 iterations stay clear of it.)
    assert len(ours.monitor_.history) == 8
    _assert_same_fit(ours, ref, ["startprob_", "transmat_", "means_"])
    stored = ref._covars_[:, 0] if ct == "spherical" else ref._covars_  # hmmlearn tiles spherical to (K, D)
    np.testing.assert_allclose(ours._covars_, stored, rtol=1e-6)
    assert ours.covars_.shape == (K, D, D)
    if ct != "spherical":  # hmmlearn's property returns (K·D, D, D) for fitted spherical covariances
        np.testing.assert_allclose(ours.covars_, ref.covars_, rtol=1e-6)


def test_gaussian_hmm_with_priors_and_a_subset_of_params_equals_hmmlearn(gaussian_X):
    kw = dict(n_components=K, covariance_type="full", n_iter=8, tol=0.0, startprob_prior=2.0,
              transmat_prior=np.full((K, K), 1.5), means_prior=0.5, means_weight=2.0, covars_prior=0.3,
              covars_weight=4.0, params="tmc")
    ours, ref = _fit_both(GaussianHMM, hmmlearn_hmm.GaussianHMM, _gaussian_start("full"), gaussian_X, **kw)
    _assert_same_fit(ours, ref, ["startprob_", "transmat_", "means_", "covars_"])
    np.testing.assert_array_equal(ours.startprob_, STARTPROB)  # 's' not in params


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_gmm_hmm_equals_hmmlearn(gmm_X, ct):
    ours, ref = _fit_both(GMMHMM, hmmlearn_hmm.GMMHMM, _gmm_start(ct), gmm_X, n_components=K, n_mix=M,
                          covariance_type=ct, n_iter=8, tol=0.0, random_state=0)
    _assert_same_fit(ours, ref, ["startprob_", "transmat_", "weights_", "means_", "covars_"])


def test_categorical_hmm_equals_hmmlearn(categorical_X):
    ours, ref = _fit_both(CategoricalHMM, hmmlearn_hmm.CategoricalHMM, _categorical_start(), categorical_X,
                          n_components=K, n_iter=15, tol=0.0, emissionprob_prior=1.2)
    _assert_same_fit(ours, ref, ["startprob_", "transmat_", "emissionprob_"])
    assert ours.n_features == ref.n_features == S


def test_stops_at_the_same_iteration_as_hmmlearn(gaussian_X):
    """hmmlearn's test on the total log-likelihood gain, through dem's per-step mean."""
    for tol in (1.0, 1e-3):
        ours, ref = _fit_both(GaussianHMM, hmmlearn_hmm.GaussianHMM, _gaussian_start("diag"), gaussian_X,
                              n_components=K, n_iter=200, tol=tol)
        assert ref.monitor_.iter < 200
        assert ours.monitor_.iter == ref.monitor_.iter and ours.monitor_.converged
        assert abs(ours.monitor_.history[-1] - ours.monitor_.history[-2]) < tol
        np.testing.assert_allclose(ours.means_, ref.means_, rtol=1e-6)


def test_default_initialisation_equals_hmmlearn(gaussian_X, categorical_X):
    """random_state=int gives hmmlearn's start: Dirichlet draws, k-means means, data covariance."""
    for ct in ("diag", "full"):
        ours = GaussianHMM(K, covariance_type=ct, n_iter=0, random_state=7).fit(gaussian_X, LENGTHS)
        ref = hmmlearn_hmm.GaussianHMM(K, covariance_type=ct, n_iter=0, random_state=7).fit(gaussian_X, LENGTHS)
        np.testing.assert_array_equal(ours.startprob_, ref.startprob_)
        np.testing.assert_array_equal(ours.transmat_, ref.transmat_)
        np.testing.assert_allclose(ours.means_, ref.means_, rtol=1e-10)
        np.testing.assert_allclose(ours._covars_, ref._covars_, rtol=1e-10)
    ours = CategoricalHMM(K, n_iter=0, random_state=3).fit(categorical_X, LENGTHS)
    ref = hmmlearn_hmm.CategoricalHMM(K, n_iter=0, random_state=3).fit(categorical_X, LENGTHS)
    for name in ("startprob_", "transmat_", "emissionprob_"):
        np.testing.assert_array_equal(getattr(ours, name), getattr(ref, name))


def test_log_likelihood_never_decreases(gmm_X):
    """EM (and hmmlearn's generalised M-step for mixtures) from k-means starts."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ObjectiveDecreasedWarning)
        for est in (GaussianHMM(K, covariance_type="full", covars_prior=0.0, n_iter=25, tol=0.0, random_state=1),
                    GMMHMM(K, n_mix=M, covariance_type="diag", n_iter=25, tol=0.0, random_state=1)):
            hist = np.array(est.fit(gmm_X, LENGTHS).monitor_.history)
            assert np.all(np.diff(hist) >= -1e-9 * np.abs(hist[1:]))
            assert hist[-1] > hist[0]


# -- inference ------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted(gaussian_X):
    ours, ref = _fit_both(GaussianHMM, hmmlearn_hmm.GaussianHMM, _gaussian_start("full"), gaussian_X,
                          n_components=K, covariance_type="full", n_iter=5, tol=0.0)
    return ours, ref


def test_decode_predict_score_equal_hmmlearn(fitted, gaussian_X):
    ours, ref = fitted
    for algorithm in ("viterbi", "map"):
        lp, states = ours.decode(gaussian_X, LENGTHS, algorithm=algorithm)
        ref_lp, ref_states = ref.decode(gaussian_X, LENGTHS, algorithm=algorithm)
        np.testing.assert_array_equal(states, ref_states)
        np.testing.assert_allclose(lp, ref_lp, rtol=1e-10)
    np.testing.assert_array_equal(ours.predict(gaussian_X, LENGTHS), ref.predict(gaussian_X, LENGTHS))
    np.testing.assert_allclose(ours.predict_proba(gaussian_X, LENGTHS), ref.predict_proba(gaussian_X, LENGTHS),
                               rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(ours.score(gaussian_X, LENGTHS), ref.score(gaussian_X, LENGTHS), rtol=1e-12)
    np.testing.assert_allclose(ours.score(gaussian_X), ref.score(gaussian_X), rtol=1e-12)
    np.testing.assert_allclose(ours.bic(gaussian_X, LENGTHS), ref.bic(gaussian_X, LENGTHS), rtol=1e-12)
    np.testing.assert_allclose(ours.aic(gaussian_X, LENGTHS), ref.aic(gaussian_X, LENGTHS), rtol=1e-12)


def test_sample_draws_as_hmmlearn(fitted, gmm_X, categorical_X):
    ours, ref = fitted
    X1, s1 = ours.sample(50, random_state=4)
    X2, s2 = ref.sample(50, random_state=4)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_allclose(X1, X2, rtol=1e-12)
    for ct in ("tied", "spherical"):
        g_ours, g_ref = (_set(cls(K, n_mix=M, covariance_type=ct, init_params=""), _gmm_start(ct))
                         for cls in (GMMHMM, hmmlearn_hmm.GMMHMM))
        np.testing.assert_allclose(g_ours.sample(30, random_state=1)[0], g_ref.sample(30, random_state=1)[0])
    c_ours, c_ref = (_set(cls(K, init_params=""), _categorical_start())
                     for cls in (CategoricalHMM, hmmlearn_hmm.CategoricalHMM))
    np.testing.assert_array_equal(c_ours.sample(40, random_state=2)[0], c_ref.sample(40, random_state=2)[0])


# -- Zarr, clusters, checkpoints ------------------------------------------------


@pytest.fixture(scope="module")
def zarr_gaussian(tmp_path_factory, gaussian_X) -> str:
    return write_sequences(tmp_path_factory.mktemp("hmm") / "g.zarr", gaussian_X, LENGTHS, chunk_rows=100)


def _bitwise(a, b, names):
    for name in names:
        assert np.asarray(getattr(a, name)).tobytes() == np.asarray(getattr(b, name)).tobytes(), name
    assert list(a.monitor_.history) == list(b.monitor_.history)


GAUSS_FITTED = ("startprob_", "transmat_", "means_", "_covars_")


def test_zarr_input_equals_numpy_input_and_hmmlearn(zarr_gaussian, gaussian_X):
    start = _gaussian_start("tied")
    kw = dict(n_components=K, covariance_type="tied", n_iter=6, tol=0.0)
    from_zarr, ref = _fit_both(GaussianHMM, hmmlearn_hmm.GaussianHMM, start, gaussian_X, dem_X=zarr_gaussian, **kw)
    _assert_same_fit(from_zarr, ref, ["startprob_", "transmat_", "means_", "covars_"])
    from_numpy = _set(GaussianHMM(**kw, init_params="", partition_rows=150), start).fit(gaussian_X, LENGTHS)
    _bitwise(from_zarr, from_numpy, GAUSS_FITTED)


@pytest.mark.slow
def test_bitwise_identical_on_local_threads_and_a_process_cluster(zarr_gaussian, categorical_X, tmp_path,
                                                                  local_cluster_client):
    kw = dict(n_components=K, covariance_type="full", n_iter=6, tol=0.0, random_state=3, partition_rows=150)
    local = GaussianHMM(**kw).fit(zarr_gaussian)
    remote = GaussianHMM(**kw, client=local_cluster_client).fit(zarr_gaussian)
    local_streamed = GaussianHMM(**kw, cache=False).fit(zarr_gaussian)
    _bitwise(local, remote, GAUSS_FITTED)
    _bitwise(local, local_streamed, GAUSS_FITTED)
    # In-memory data scattered to the workers, categorical emissions.
    ckw = dict(n_components=K, n_iter=5, tol=0.0, random_state=2, partition_rows=120)
    c_local = CategoricalHMM(**ckw).fit(categorical_X, LENGTHS)
    c_remote = CategoricalHMM(**ckw, client=local_cluster_client).fit(categorical_X, LENGTHS)
    _bitwise(c_local, c_remote, ("startprob_", "transmat_", "emissionprob_"))
    # Predictions written by the workers equal in-memory decoding.
    out = local.predict_to_zarr(zarr_gaussian, str(tmp_path / "pred.zarr"), chunk_rows=70)
    g = zarr.open_group(out, mode="r")
    X = zarr.open_group(zarr_gaussian, mode="r")["X"][:]
    lp, states = local.decode(X, LENGTHS)
    np.testing.assert_array_equal(g["states"][:], states)
    np.testing.assert_allclose(g["posteriors"][:], local.predict_proba(X, LENGTHS), rtol=1e-12)
    np.testing.assert_allclose(g["log_prob"][:].sum(), lp, rtol=1e-12)
    np.testing.assert_array_equal(g["offsets"][:], np.concatenate([[0], np.cumsum(LENGTHS)]))
    remote_out = GaussianHMM(**kw, client=local_cluster_client).fit(zarr_gaussian).predict_to_zarr(
        zarr_gaussian, str(tmp_path / "pred_remote.zarr"), algorithm="map", posteriors=False)
    assert zarr.open_group(remote_out, mode="r")["states"][:].tobytes() == \
        local.decode(X, LENGTHS, algorithm="map")[1].astype(np.int32).tobytes()


def test_predict_to_zarr_matches_hmmlearn(fitted, gaussian_X, tmp_path):
    ours, ref = fitted
    path = write_sequences(tmp_path / "x.zarr", gaussian_X, LENGTHS, chunk_rows=64)
    ours.predict_to_zarr(path, tmp_path / "out.zarr", chunk_rows=100)
    g = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    np.testing.assert_array_equal(g["states"][:], ref.predict(gaussian_X, LENGTHS))
    np.testing.assert_allclose(g["posteriors"][:], ref.predict_proba(gaussian_X, LENGTHS), rtol=1e-8, atol=1e-12)
    assert g["posteriors"].chunks == (100, K)
    np.testing.assert_array_equal(ours.predict(path), ref.predict(gaussian_X, LENGTHS))


def test_resume_from_a_checkpoint_is_bitwise_equal(zarr_gaussian, tmp_path):
    kw = dict(n_components=K, covariance_type="diag", tol=0.0, random_state=5, partition_rows=150)
    straight = GaussianHMM(**kw, n_iter=7).fit(zarr_gaussian)
    run = tmp_path / "run"
    first = GaussianHMM(**kw, n_iter=3, checkpoint_dir=str(run)).fit(zarr_gaussian)
    assert first.monitor_.iter == 3 and (run / "model.zarr").is_dir()
    resumed = GaussianHMM(**kw, n_iter=7, checkpoint_dir=str(run)).fit(zarr_gaussian)
    _bitwise(straight, resumed, GAUSS_FITTED)
    assert [h["resumed"] for h in resumed.history_] == [False] * 3 + [True] + [False] * 3
    loaded = dem.load(str(run))
    _bitwise(resumed, loaded, GAUSS_FITTED)
    np.testing.assert_array_equal(loaded.predict(zarr_gaussian), resumed.predict(zarr_gaussian))
    with pytest.raises(Exception, match="different fit"):
        GaussianHMM(**dict(kw, covariance_type="full"), n_iter=7, checkpoint_dir=str(run)).fit(zarr_gaussian)


def test_save_and_load_round_trip(tmp_path, categorical_X):
    est = _set(GMMHMM(K, n_mix=M, covariance_type="tied", init_params="", n_iter=2), _gmm_start("tied"))
    est.fit(np.random.default_rng(0).normal(size=(300, D)) * 3, [100, 200])
    est.save(str(tmp_path / "m.zarr"))
    back = dem.load(str(tmp_path / "m.zarr"))
    _bitwise(est, back, ("startprob_", "transmat_", "weights_", "means_", "covars_"))
    assert back.get_params()["n_mix"] == M and back.covariance_type == "tied"


# -- bad input: one clear error each ------------------------------------------------


def _fitted_gaussian(**attrs):
    est = _set(GaussianHMM(K, init_params="", n_iter=1), _gaussian_start("diag"))
    return _set(est, attrs)


@pytest.mark.parametrize("lengths, match", [
    ([5, 0, 5], "sequence 1 has length 0; empty sequences are not allowed"),
    ([5, 4], "lengths sum to 9 but X has 10 samples"),
    ([5, 6], "lengths sum to 11 but X has 10 samples"),
])
def test_bad_lengths(lengths, match):
    with pytest.raises(DataError, match=match):
        _fitted_gaussian().fit(np.zeros((10, D)), lengths)


def test_bad_offsets_in_zarr(tmp_path):
    group = zarr.open_group(str(tmp_path / "bad.zarr"), mode="w")
    group.create_array("X", data=np.zeros((10, D)))
    group.create_array("offsets", data=np.array([0, 6, 4, 10]))
    with pytest.raises(DataError, match="must rise strictly"):
        _fitted_gaussian().fit(str(tmp_path / "bad.zarr"))


@pytest.mark.parametrize("X, kw, match", [
    (np.array([[0], [1], [7]]), dict(n_features=5), "largest symbol is 7 but the model only emits symbols 0…4"),
    (np.array([[0], [-2], [1]]), {}, "symbol at row 1 is negative"),
    (np.array([[0.0], [1.5], [1.0]]), {}, "must hold integer symbols"),
])
def test_bad_symbols(X, kw, match):
    with pytest.raises(DataError, match=match):
        CategoricalHMM(K, **kw).fit(X, [3])


@pytest.mark.parametrize("attrs, match", [
    (dict(transmat_=np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.2, 0.3, 0.5]])), "row 1 of transmat_ is all zeros"),
    (dict(transmat_=np.array([[0.5, 0.4, 0.0], [0.3, 0.3, 0.4], [0.2, 0.3, 0.5]])), "row 0 of transmat_ sums to 0.9"),
    (dict(startprob_=np.array([0.5, 0.4, 0.3])), "startprob_ must sum to 1; it sums to 1.2"),
    (dict(startprob_=np.array([0.5, 0.5])), r"startprob_ must have shape \(3,\)"),
    (dict(covars_=np.array([[1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])), "covars_ must be positive"),
])
def test_bad_user_parameters(attrs, match):
    with pytest.raises(ConfigError, match=match):
        _fitted_gaussian(**attrs).fit(np.zeros((10, D)), [10])


def test_bad_hyperparameters_and_too_long_sequences():
    # scikit-learn's wording and exception type (InvalidParameterError, a ValueError), also a ConfigError.
    from sklearn.utils._param_validation import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="The 'covariance_type' parameter of GaussianHMM must be"):
        GaussianHMM(K, covariance_type="banana").fit(np.zeros((10, D)))
    with pytest.raises(ConfigError, match="The 'algorithm' parameter of GaussianHMM must be"):
        GaussianHMM(K, algorithm="beam").fit(np.zeros((10, D)))
    with pytest.raises(ConfigError, match="The 'n_iter' parameter of GaussianHMM must be an int in the range"):
        GaussianHMM(K, n_iter=-1).fit(np.zeros((10, D)))
    with pytest.raises(DataError, match="sequence 1 has 9000 steps"):
        _fitted_gaussian().set_params(max_sequence_bytes=10**5).fit(np.zeros((9010, D)), [10, 9000])
    with pytest.raises(DataError, match="X contains NaN at row 3, feature 1"):
        X = np.zeros((10, D))
        X[3, 1] = np.nan
        _fitted_gaussian().fit(X, [10])


def test_generated_dataset_is_recovered(tmp_path):
    """A fit on the generator's data from the true parameters stays near them."""
    path = str(tmp_path / "gen.zarr")
    generate_hmm_dataset(path, 60, 100, 2, n_features=2, seed=4, chunk_rows=1000, dtype="float64")
    g = zarr.open_group(path, mode="r")
    est = _set(GaussianHMM(2, covariance_type="full", init_params="", n_iter=5, tol=0.0),
               dict(startprob_=g["true_startprob"][:], transmat_=g["true_transmat"][:],
                    means_=g["true_means"][:], covars_=g["true_covars"][:])).fit(path)
    np.testing.assert_allclose(est.transmat_, g["true_transmat"][:], atol=0.05)
    np.testing.assert_allclose(est.means_, g["true_means"][:], atol=0.15)
    assert (est.predict(path) == g["states"][:]).mean() > 0.95


# -- behaving like hmmlearn on degenerate data, warnings and accepted shapes ----------------

#: hmmlearn's issue #2 data (its test_fit_zero_variance): the first feature is constant.
ZERO_VARIANCE_X = np.array([
    [715.0, 585.0, 0.0, 0.0], [715.0, 520.0, 1.04705811, -60.3696289], [715.0, 455.0, 0.72088623, -52.7055664],
    [715.0, 390.0, -0.457946777, -78.0605469], [715.0, 325.0, -6.43127441, -55.9954834],
    [715.0, 260.0, -2.90063477, -78.0220947], [715.0, 195.0, 8.45532227, -70.3294373],
    [715.0, 130.0, 4.09387207, -58.3621216], [715.0, 65.0, -1.2166748, -44.8131409]])


def test_a_constant_feature_keeps_fitting_as_in_hmmlearn():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed in range(20):
            hmmlearn_hmm.GaussianHMM(3, "full", random_state=seed).fit(ZERO_VARIANCE_X)  # the peer fits
            ours = GaussianHMM(3, "full", random_state=seed).fit(ZERO_VARIANCE_X)
            assert np.isfinite(ours.means_).all() and np.isfinite(ours.covars_).all()
            assert np.isfinite(ours.score(ZERO_VARIANCE_X))
        # From the same start, the iteration through the singular covariances lands on hmmlearn's numbers.
        ref = hmmlearn_hmm.GaussianHMM(3, "full", random_state=0, n_iter=0).fit(ZERO_VARIANCE_X)
        start = {name: getattr(ref, name) for name in ("startprob_", "transmat_", "means_", "covars_")}
        ours, ref = _fit_both(GaussianHMM, hmmlearn_hmm.GaussianHMM, start, ZERO_VARIANCE_X, lengths=[9],
                              n_components=3, covariance_type="full", n_iter=1, tol=0.0)
    _assert_same_fit(ours, ref, ["startprob_", "transmat_", "means_", "covars_"], rtol=1e-7)


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_gmm_hmm_with_more_mixture_components_than_a_cluster_has_points(ct):
    """hmmlearn's TestGMMHMM_KmeansInit, for every covariance type and ten seeds. The default
    spherical prior (covars_prior = −(n_mix + 2)/2) makes a sparsely used component's variance
    negative; hmmlearn floors it and goes on (where a state then explains no observation,
    hmmlearn's parameters become NaN; dem's state keeps its previous ones)."""
    rng = np.random.RandomState(0)
    data = np.r_[rng.uniform(0, 1, size=(100, 2)), rng.uniform(5, 6, size=(5, 2))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed in range(10):
            hmmlearn_hmm.GMMHMM(2, n_mix=10, n_iter=5, covariance_type=ct, random_state=seed).fit(data)
            ours = GMMHMM(2, n_mix=10, n_iter=5, covariance_type=ct, random_state=seed).fit(data)
            # hmmlearn's own assertion, but ≥ 0: like hmmlearn's, an unused component's mean is 0.
            assert (ours.means_ >= 0).all() and (ours.means_ < 6).all()
            assert np.isfinite(ours.weights_).all() and np.isfinite(ours.covars_).all()


def test_a_state_no_path_reaches_keeps_its_parameters():
    """hmmlearn divides 0 by 0 for a state without occupancy (every parameter becomes NaN).
    The reachable states fit exactly as a model without that state does."""
    X = np.random.default_rng(0).normal(size=(60, 2)) + np.repeat([[0.0, 0.0], [3.0, 3.0]], 30, axis=0)
    means = np.array([[0.5, 0.5], [2.5, 2.5], [9.0, 9.0]])
    covars = np.array([[1.0, 1.0], [1.0, 1.0], [2.0, 2.0]])
    three = _set(GaussianHMM(3, "diag", init_params="", n_iter=4, tol=0.0),
                 dict(startprob_=[0.5, 0.5, 0.0], transmat_=[[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.0, 0.0, 1.0]],
                      means_=means, covars_=covars))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # state 2 is never left: its row of transmat_ becomes zero
        three.fit(X)
    two = _set(hmmlearn_hmm.GaussianHMM(2, "diag", init_params="", n_iter=4, tol=0.0),
               dict(startprob_=[0.5, 0.5], transmat_=[[0.9, 0.1], [0.1, 0.9]], means_=means[:2], covars_=covars[:2]))
    two.fit(X)
    np.testing.assert_allclose(three.means_[:2], two.means_, rtol=1e-9)
    np.testing.assert_allclose(three._covars_[:2], two._covars_, rtol=1e-9)
    np.testing.assert_array_equal(three.means_[2], means[2])


def _warning_texts(caplog, model, X, lengths=None) -> list[str]:
    caplog.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, lengths)
    return sorted(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                  and ("overwritten" in r.getMessage() or "degenerate" in r.getMessage()))


def test_warns_with_hmmlearns_words_when_init_params_overwrite_set_attributes_and_data_are_too_few(caplog):
    caplog.set_level(logging.WARNING)  # hmmlearn's logger is quietened at the top of this module
    caplog.set_level(logging.WARNING, logger="hmmlearn")
    X = np.random.default_rng(1).normal(size=(100, 3))
    texts = []
    for cls in (hmmlearn_hmm.GaussianHMM, GaussianHMM):
        h = cls(3, "full", random_state=0)
        h.startprob_, h.means_ = STARTPROB, np.zeros((3, 3))
        texts.append(_warning_texts(caplog, h, X))
    assert texts[1] == texts[0] and len(texts[0]) == 2  # startprob_ and means_ will be overwritten
    texts = [_warning_texts(caplog, cls(3, "full", random_state=0), X[:5])
             for cls in (hmmlearn_hmm.GaussianHMM, GaussianHMM)]
    assert texts[1] == texts[0] and "degenerate solution" in texts[0][0]


def test_spherical_covars_of_any_length_k_shape_are_accepted_as_in_hmmlearn():
    """hmmlearn's test_underflow_from_scaling sets spherical covars_ as [[1], [1]]; test_issue_385
    as an array of shape (2, 1, 1, 1)."""
    rng = np.random.RandomState(10)
    data = np.concatenate([rng.normal(0, 1, 100), rng.normal(5, 1, 100), rng.normal(0, 1, 100),
                           rng.normal(5, 1, 100)])
    data[40] = 10000.0
    start = dict(startprob_=[0.0, 1.0], transmat_=[[0.4, 0.6], [0.6, 0.4]], means_=[[0.0], [5.0]],
                 covars_=[[1.0], [1.0]])
    ours, ref = _fit_both(GaussianHMM, hmmlearn_hmm.GaussianHMM, start, data[:, None], lengths=[400],
                          n_components=2, covariance_type="spherical", n_iter=100)
    _assert_same_fit(ours, ref, ["startprob_", "transmat_", "means_", "covars_"])
    model = _set(GaussianHMM(2, covariance_type="spherical"),
                 dict(startprob_=[0.6, 0.4], transmat_=[[0.4, 0.6], [0.9, 0.1]], means_=[[3.0], [5.0]],
                      covars_=np.array([[[[4.0]]], [[[3.0]]]])))
    model.n_features = 1
    X, states = model.sample(1000, random_state=0)
    assert X.shape == (1000, 1) and states.shape == (1000,)
    np.testing.assert_allclose(model.covars_, [[[4.0]], [[3.0]]])


@pytest.mark.parametrize("cls, kw", [(GaussianHMM, {}), (GMMHMM, {"n_mix": 2})])
def test_score_after_setting_an_invalid_covariance_type_raises_value_error(gaussian_X, cls, kw):
    ref = getattr(hmmlearn_hmm, cls.__name__)(2, random_state=0, n_iter=2, **kw).fit(gaussian_X)
    ref.covariance_type = "badcovariance_type"
    with pytest.raises(ValueError):
        ref.score(gaussian_X)  # hmmlearn's _check
    ours = cls(2, random_state=0, n_iter=2, **kw).fit(gaussian_X)
    ours.covariance_type = "badcovariance_type"
    for method in (ours.score, ours.predict, ours.predict_proba):
        with pytest.raises(ValueError, match="The 'covariance_type' parameter of"):
            method(gaussian_X)


def test_a_monitor_placed_before_fit_sees_every_iteration(gaussian_X):
    # hmmlearn's own tests replace monitor_ before fit with a ConvergenceMonitor subclass.
    from hmmlearn.base import ConvergenceMonitor as HmmlearnMonitor

    class Recording(HmmlearnMonitor):
        def report(self, log_prob):
            self.seen = [*getattr(self, "seen", []), log_prob]
            super().report(log_prob)

    model = GaussianHMM(K, "diag", n_iter=40, tol=0.01, random_state=0)
    assert (model.monitor_.tol, model.monitor_.n_iter, model.monitor_.iter) == (0.01, 40, 0)
    model.monitor_ = Recording(model.monitor_.tol, model.monitor_.n_iter, model.monitor_.verbose)
    placed = model.monitor_
    model.fit(gaussian_X, LENGTHS)
    assert model.monitor_ is placed
    totals = [h["objective"] * len(gaussian_X) for h in model.history_]
    np.testing.assert_allclose(placed.seen, totals, rtol=1e-12)
    # hmmlearn's rule on the reported totals agrees with dem's.
    assert placed.converged == model.converged_ and placed.iter == model.n_iter_
