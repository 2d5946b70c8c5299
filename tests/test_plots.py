"""Pictures: the plotted numbers (not pixels) against the history, the fitted parameters and an
independent projection (scikit-learn's PCA, covariance eigenvalues computed here)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import zarr
from matplotlib.image import imread
from matplotlib.patches import Ellipse
from sklearn.decomposition import PCA

import dem
from dem.plots import plot_components, plot_convergence, sample_rows, write_run_pictures


def _fit(X, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dem.GaussianMixture(**{"n_components": 3, "random_state": 0, **kw}).fit(X)


def _line(fig, gid):
    found = [line for ax in fig.axes for line in ax.get_lines() if line.get_gid() == gid]
    assert found, f"no line {gid!r}: {[line.get_gid() for ax in fig.axes for line in ax.get_lines()]}"
    return found[0]


def _ellipses(fig):
    return {p.get_gid(): p for ax in fig.axes for p in ax.patches if isinstance(p, Ellipse)}


def _check_png(path, min_size=(300, 400)):
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] >= min_size[0] and img.shape[1] >= min_size[1], img.shape
    assert img.shape[0] <= 3000 and img.shape[1] <= 3000
    # Not blank: a picture has many distinct colours.
    assert len(np.unique(img.reshape(-1, img.shape[2])[::37], axis=0)) > 20


def _full(est):
    """The fitted covariances as (K, D, D), built here from the definitions of each type."""
    K, D = est.means_.shape
    c = np.asarray(est.covariances_)
    if est.covariance_type == "full":
        return c
    if est.covariance_type == "tied":
        return np.stack([c] * K)
    if est.covariance_type == "diag":
        return np.stack([np.diag(row) for row in c])
    return np.stack([v * np.eye(D) for v in c])


def test_convergence_lines_are_the_history(blobs, tmp_path):
    X, _ = blobs
    est = _fit(X, max_iter=12, tol=1e-8)
    fig = plot_convergence(est)
    hist = est.history_
    ll = _line(fig, "ll-restart-0")
    np.testing.assert_array_equal(ll.get_xdata(), [h["iteration"] for h in hist])
    np.testing.assert_array_equal(ll.get_ydata(), [h["objective"] for h in hist])
    delta = _line(fig, "delta-restart-0")
    with_delta = [h for h in hist if h["delta"] is not None]
    np.testing.assert_array_equal(delta.get_xdata(), [h["iteration"] for h in with_delta])
    np.testing.assert_array_equal(delta.get_ydata(), [abs(h["delta"]) for h in with_delta])
    assert fig.axes[1].get_yscale() == "log"
    np.testing.assert_array_equal(_line(fig, "tol").get_ydata(), [1e-8, 1e-8])
    # A plain history list draws the same line.
    fig2 = plot_convergence(hist)
    np.testing.assert_array_equal(_line(fig2, "ll-restart-0").get_ydata(), ll.get_ydata())
    path = tmp_path / "c.png"
    fig.savefig(path)
    _check_png(path)


def test_restarts_are_overlaid(blobs):
    X, _ = blobs
    est = _fit(X, n_init=3, max_iter=15, tol=1e-6, init_params="random_from_data")
    fig = plot_convergence(est)
    best = _line(fig, f"ll-restart-{est.best_restart_}")
    np.testing.assert_array_equal(best.get_ydata(), est.lower_bounds_)
    assert best.get_linewidth() > 2
    drawn = 0
    for r in est.restarts_:
        k = r["restart"]
        if k == est.best_restart_:
            continue
        if r.get("history"):
            line = _line(fig, f"ll-restart-{k}")
            np.testing.assert_array_equal(line.get_ydata(), [h["objective"] for h in r["history"]])
        else:  # only the summary is known: a marker at its final value
            mark = _line(fig, f"endpoint-restart-{k}")
            assert list(mark.get_xdata()) == [r["n_iter"]] and list(mark.get_ydata()) == [r["lower_bound"]]
        drawn += 1
    assert drawn == 2
    # Histories gathered by a callback (restart -> records) draw full curves for every restart.
    seen: dict[int, list] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dem.GaussianMixture(3, random_state=1, n_init=2, max_iter=6, tol=0.0).fit(
            X, callback=lambda e, i: seen.setdefault(i["restart"], []).append(i) if e == "iteration" else None)
    assert sorted(seen) == [0, 1]
    fig = plot_convergence(seen)
    for k, recs in seen.items():
        np.testing.assert_array_equal(_line(fig, f"ll-restart-{k}").get_ydata(),
                                      [h["objective"] for h in recs])


def test_run_directory_marks_the_resumed_iterations(blobs, tmp_path):
    X, _ = blobs
    run = tmp_path / "run"
    _fit(X, max_iter=3, tol=0.0, checkpoint_dir=str(run))
    est = _fit(X, max_iter=7, tol=0.0, checkpoint_dir=str(run))  # continues the run
    history = json.loads((run / "history.json").read_text())
    assert [h["resumed"] for h in history] == [False, False, False, True, False, False, False]
    fig = plot_convergence(str(run))
    np.testing.assert_array_equal(_line(fig, "ll-restart-0").get_ydata(),
                                  [h["objective"] for h in history])
    marks = [line for line in fig.axes[0].get_lines() if line.get_gid() == "resumed"]
    assert len(marks) == 1 and list(marks[0].get_xdata()) == [3.5, 3.5]
    assert est.n_iter_ == 7
    # The run directory's config holds no tol here (Python fit): no tol line.
    assert not [line for line in fig.axes[1].get_lines() if line.get_gid() == "tol"]


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_component_ellipses_are_the_fitted_gaussians(blobs, covariance_type):
    X, _ = blobs
    est = _fit(X, covariance_type=covariance_type, max_iter=30)
    dims = (2, 0)
    fig = plot_components(est, X, dims=dims)
    ellipses = _ellipses(fig)
    cov = _full(est)
    for k in range(3):
        block = cov[k][np.ix_(dims, dims)]
        small, large = np.sqrt(np.linalg.eigvalsh(block))
        for n in (1, 2):
            e = ellipses[f"ellipse-{k}-{n}sigma"]
            np.testing.assert_allclose(e.center, est.means_[k, list(dims)], rtol=1e-12)
            np.testing.assert_allclose([e.width, e.height], [2 * n * large, 2 * n * small], rtol=1e-9)
        np.testing.assert_allclose(_line(fig, f"mean-{k}").get_xydata()[0], est.means_[k, list(dims)])
    scatter = [c for c in fig.axes[0].collections if c.get_gid() == "sample"][0]
    np.testing.assert_allclose(scatter.get_offsets(), X[:, list(dims)])


def test_pca_projection_matches_scikit_learn(blobs, tmp_path):
    X, _ = blobs
    est = _fit(X, max_iter=30)
    fig = plot_components(est, X, projection="pca")
    pca = PCA(n_components=2).fit(X)
    expected = pca.transform(est.means_)
    ellipses = _ellipses(fig)
    centres = np.array([ellipses[f"ellipse-{k}-1sigma"].center for k in range(3)])
    signs = np.sign(np.sum(centres * expected, axis=0))  # principal axes are defined up to sign
    np.testing.assert_allclose(centres, expected * signs, rtol=1e-6, atol=1e-9)
    for k in range(3):
        projected = pca.components_ @ est.covariances_[k] @ pca.components_.T
        small, large = np.sqrt(np.linalg.eigvalsh(projected))
        e = ellipses[f"ellipse-{k}-2sigma"]
        np.testing.assert_allclose([e.width, e.height], [4 * large, 4 * small], rtol=1e-6)
    assert fig.axes[0].get_xlabel().startswith("PC1")
    path = tmp_path / "components.png"
    fig.savefig(path)
    _check_png(path)


def test_one_feature_draws_weighted_densities(rng):
    X = np.concatenate([rng.normal(-3, 1, 600), rng.normal(4, 0.5, 400)])[:, None]
    est = _fit(X, n_components=2, max_iter=50)
    fig = plot_components(est, X)
    mixture = _line(fig, "mixture")
    grid, dens = mixture.get_xdata(), mixture.get_ydata()
    # The plotted mixture density integrates to ~1 and equals exp(score_samples) on the grid.
    np.testing.assert_allclose(dens, np.exp(est.score_samples(grid[:, None])), rtol=1e-9)
    assert abs(np.trapezoid(dens, grid) - 1) < 1e-3


def test_sample_rows_reads_a_few_chunks_of_zarr(tmp_path, rng):
    X = rng.normal(size=(50_000, 3))
    X[:, 0] = np.arange(len(X))  # row ids
    path = str(tmp_path / "d.zarr")
    zarr.open_group(path, mode="w").create_array("X", data=X, chunks=(2_000, 3))
    got = sample_rows(path, 5_000)
    assert got.shape == (5_000, 3)
    ids = got[:, 0].astype(int)
    assert len(np.unique(ids)) == len(ids)
    np.testing.assert_array_equal(got, X[ids])  # real rows, unchanged
    # Spread over the whole array, not only its head.
    assert ids.min() < 2_000 and ids.max() >= 48_000
    assert len(sample_rows(X[:100], 5_000)) == 100


def test_write_run_pictures(blobs, tmp_path):
    X, _ = blobs
    run = tmp_path / "run"
    est = _fit(X, max_iter=20, checkpoint_dir=str(run))
    written = write_run_pictures(est, str(run), X)
    assert [p.rsplit("/", 1)[-1] for p in written] == ["convergence.png", "components.png"]
    for p in written:
        _check_png(p)


# -- issue 17 item 17: short fits and HMMs ------------------------------------------------

def test_a_one_iteration_fit_has_whole_number_ticks_and_no_warning(blobs, tmp_path):
    X, _ = blobs
    est = _fit(X, max_iter=1)
    assert len(est.history_) == 1 and est.history_[0]["delta"] is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib used to warn about singular y limits
        fig = plot_convergence(est)
        fig.savefig(tmp_path / "one.png")
    for ax in fig.axes:
        assert list(ax.get_xticks()) == [1.0]
    assert fig.axes[0].get_title() == "EM convergence: not converged after 1 iteration"
    _check_png(tmp_path / "one.png")


def test_a_three_iteration_fit_ticks_each_iteration(blobs):
    X, _ = blobs
    fig = plot_convergence(_fit(X, max_iter=3, tol=0.0))
    assert list(fig.axes[0].get_xticks()) == [1.0, 2.0, 3.0]


def test_an_hmm_draws_its_tol_as_the_per_step_threshold(tmp_path):
    from dem import GaussianHMM

    X = np.random.default_rng(3).normal(size=(300, 2))
    est = GaussianHMM(2, n_iter=4, tol=0.5, random_state=0).fit(X, [100, 200])
    fig = plot_convergence(est)
    # hmmlearn's rule: the total log-likelihood gains less than tol, i.e. Δ per step < tol / 300.
    np.testing.assert_allclose(_line(fig, "tol").get_ydata(), [0.5 / 300, 0.5 / 300])
    assert _line(fig, "tol").get_label() == "tol = 0.5 on the total log-likelihood = 0.0017 per step"
    assert fig.axes[1].get_ylabel() == "|Δ mean log-likelihood per step|"
    written = write_run_pictures(est, str(tmp_path))
    assert [p.rsplit("/", 1)[-1] for p in written] == ["convergence.png"]  # components: mixtures only
    _check_png(written[0])
