"""dem.GaussianMixture as a scikit-learn citizen: check_estimator, clone, pickle, Pipeline, GridSearchCV."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

import dem


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    return np.vstack([rng.normal(size=(200, 2)) + c for c in centres])[rng.permutation(600)]


def test_check_estimator_passes_every_check():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(dem.GaussianMixture(), on_fail=None)
    failed = {r["check_name"]: str(r["exception"])[:200] for r in results if r["status"] == "failed"}
    assert len(results) > 40
    assert failed == {}


def test_clone_and_params_round_trip():
    est = dem.GaussianMixture(4, covariance_type="diag", reg_covar=1e-3, partition_rows=100)
    twin = clone(est)
    assert twin.get_params() == est.get_params()
    twin.set_params(n_components=2)
    assert twin.n_components == 2 and est.n_components == 4


def test_pickled_fitted_estimator_predicts_the_same(blobs):
    est = dem.GaussianMixture(3, random_state=0).fit(blobs)
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.predict(blobs), est.predict(blobs))
    assert again.score(blobs) == est.score(blobs)


def test_pipeline_and_grid_search_pick_the_true_number_of_components(blobs):
    # GridSearchCV scores with score(): the held-out mean log-likelihood.
    pipe = make_pipeline(StandardScaler(), dem.GaussianMixture(random_state=0))
    search = GridSearchCV(pipe, {"gaussianmixture__n_components": [1, 2, 3]}, cv=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search.fit(blobs)
    assert search.best_params_ == {"gaussianmixture__n_components": 3}
    labels = search.best_estimator_.predict(blobs)
    # Same partition of the points as scikit-learn's own mixture (up to label names).
    sk = make_pipeline(StandardScaler(), SkGaussianMixture(3, random_state=0)).fit(blobs).predict(blobs)
    assert len({(a, b) for a, b in zip(labels, sk)}) == 3


@pytest.mark.parametrize("kw", [
    dict(), dict(covariance_type="diag"), dict(covariance_type="tied"), dict(covariance_type="spherical"),
    dict(n_components=3, n_init=2), dict(init_params="kmeans"), dict(init_params="k-means++"),
    dict(init_params="random_from_data"), dict(init_params="random"),
])
def test_a_sample_weight_of_w_is_w_copies_of_the_row(kw):
    """scikit-learn's own check (which its KMeans is marked to fail): integer weights, zeros
    included, against the rows repeated (and in another order), with every initialisation."""
    from sklearn.utils.estimator_checks import check_sample_weight_equivalence_on_dense_data

    # The check raises AssertionError when the weighted fit differs from the repeated rows.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_sample_weight_equivalence_on_dense_data("GaussianMixture",
                                                      dem.GaussianMixture(**{"n_components": 2, **kw}))
