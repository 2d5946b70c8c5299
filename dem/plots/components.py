"""The components picture: a sample of the data coloured by component, with 1σ/2σ ellipses and weights."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Sequence

import numpy as np

from dem.families.gaussian_params import full_covariances
from dem.plots.common import (
    _SAMPLE_READ_BYTES,
    SAMPLE_ROWS,
    _new_figure,
)


@dataclasses.dataclass
class Projection:
    """A map from feature space to the picture's two axes: ``y = (x - centre) @ matrix``."""

    matrix: np.ndarray  # (D, 2)
    centre: np.ndarray  # (D,)
    labels: tuple[str, str]

    def points(self, X: np.ndarray) -> np.ndarray:
        return (np.asarray(X, dtype=np.float64) - self.centre) @ self.matrix

    def covariances(self, cov: np.ndarray) -> np.ndarray:
        return np.einsum("di,kde,ej->kij", self.matrix, cov, self.matrix)


def _feature_label(names: Any, j: int) -> str:
    if names is not None and len(names) > j:
        return f"{names[j]}"
    return f"feature {j}"


def projection_for(estimator: Any, X: np.ndarray | None, dims: Sequence[int] = (0, 1),
                   projection: str | None = None) -> Projection:
    """The 2-D projection :func:`plot_components` uses.

    ``projection="pca"``: the two leading principal axes of the sample ``X``
    (of the fitted mixture's own covariance when there is no sample), about
    its mean. Otherwise the features ``dims``.
    """
    D = int(estimator.n_features_in_)
    names = getattr(estimator, "feature_names_", None)
    if projection not in (None, "dims", "pca"):
        raise ValueError(f"projection must be None, 'dims' or 'pca'; got {projection!r}")
    if projection == "pca":
        if X is not None and len(X) > 1:
            centre = X.mean(axis=0)
            cov = np.cov(X, rowvar=False).reshape(D, D)
        else:
            w, mu = np.asarray(estimator.weights_), np.asarray(estimator.means_)
            full = full_covariances(estimator.covariances_, estimator.covariance_type, len(w), D)
            centre = w @ mu
            dev = mu - centre
            cov = np.einsum("k,kij->ij", w, full) + np.einsum("k,ki,kj->ij", w, dev, dev)
        vals, vecs = np.linalg.eigh(cov)
        order = np.argsort(vals)[::-1][:2]
        matrix = vecs[:, order]
        # A fixed sign (largest loading positive) so pictures do not flip between runs.
        matrix = matrix * np.sign(matrix[np.abs(matrix).argmax(axis=0), [0, 1]])
        share = vals[order] / max(vals.sum(), 1e-300)
        return Projection(matrix, centre, (f"PC1 ({share[0]:.0%} of variance)", f"PC2 ({share[1]:.0%} of variance)"))
    i, j = (int(d) for d in dims)
    if not (0 <= i < D and 0 <= j < D) or i == j:
        raise ValueError(f"dims must be two different features in [0, {D}); got {tuple(dims)}")
    matrix = np.zeros((D, 2))
    matrix[i, 0] = matrix[j, 1] = 1.0
    return Projection(matrix, np.zeros(D), (_feature_label(names, i), _feature_label(names, j)))


def ellipse_geometry(cov2: np.ndarray, n_sigma: float) -> tuple[float, float, float]:
    """(width, height, angle in degrees) of the ``n_sigma`` contour of a 2-D Gaussian."""
    vals, vecs = np.linalg.eigh(np.asarray(cov2, dtype=np.float64))
    vals = np.maximum(vals, 0.0)
    major = vecs[:, 1]
    angle = math.degrees(math.atan2(major[1], major[0]))
    return 2 * n_sigma * math.sqrt(vals[1]), 2 * n_sigma * math.sqrt(vals[0]), angle


def _as_numpy_rows(X: Any) -> tuple[np.ndarray | None, Any]:
    """``X`` as a float64 matrix, and its feature names when xarray carries them."""
    if X is None:
        return None, None
    names = None
    if hasattr(X, "dims") and hasattr(X, "coords"):
        X = X.transpose("sample", "feature")
        if "feature" in X.coords:
            names = np.asarray(X["feature"].values)
        X = X.data
    if hasattr(X, "compute"):
        X = X.compute()
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    return arr, names


def plot_components(estimator: Any, X_sample: Any = None, ax: Any = None, *, dims: Sequence[int] = (0, 1),
                    projection: str | None = None, max_points: int = SAMPLE_ROWS, seed: int = 0) -> Any:
    """A sample of the data with the fitted components' 1σ and 2σ ellipses.

    Parameters
    ----------
    estimator : fitted dem.GaussianMixture
    X_sample : array-like (numpy, dask, xarray), optional
        Rows to scatter, coloured by their most probable component; at most
        ``max_points`` are drawn (a seeded random subset). See
        :func:`sample_rows` to read a sample from Zarr.
    ax : matplotlib Axes, optional
    dims : pair of int, default (0, 1)
        Features on the two axes (when ``projection`` is not ``"pca"``).
    projection : {None, "pca"}
        ``"pca"``: the two leading principal axes of the sample.

    Returns
    -------
    matplotlib.figure.Figure
        Each component is drawn as its projected mean (a cross), its 1σ
        ellipse (filled, opacity growing with the weight) and 2σ ellipse
        (dashed), labelled with its index and weight. With one feature, a
        histogram of the sample with each weighted component density.
    """
    from matplotlib.patches import Ellipse

    X, names = _as_numpy_rows(X_sample)
    if X is not None:
        X = X[np.isfinite(X).all(axis=1)]
        if len(X) > max_points:
            idx = np.sort(np.random.default_rng(seed).choice(len(X), max_points, replace=False))
            X = X[idx]
    if ax is None:
        fig, (ax,) = _new_figure(1, figsize=(7.0, 6.0))
    else:
        fig = ax.figure
    # The fitted number of components (n_components may list candidates when K was selected by BIC).
    K, D = len(np.asarray(estimator.weights_)), int(estimator.n_features_in_)
    weights = np.asarray(estimator.weights_, dtype=np.float64)
    means = np.asarray(estimator.means_, dtype=np.float64)
    cov = full_covariances(estimator.covariances_, estimator.covariance_type, K, D)
    from matplotlib import colormaps

    cmap = colormaps["tab10" if K <= 10 else "tab20"]
    colours = [cmap(k % cmap.N) for k in range(K)]
    if D == 1:
        return _plot_components_1d(fig, ax, estimator, X, weights, means, cov, colours)
    proj = projection_for(estimator, X, dims, projection)
    centres = proj.points(means)
    cov2 = proj.covariances(cov)
    if X is not None and len(X):
        labels = np.asarray(estimator.predict(X))
        pts = proj.points(X)
        ax.scatter(pts[:, 0], pts[:, 1], s=3, c=[colours[k] for k in labels], alpha=0.3, linewidths=0,
                   rasterized=True, gid="sample", zorder=1)
    wmax = max(weights.max(), 1e-300)
    for k in range(K):
        strength = 0.25 + 0.75 * weights[k] / wmax
        for n_sigma, style in ((1, dict(fill=True, facecolor=(*colours[k][:3], 0.18 * strength), lw=2.0, ls="-")),
                               (2, dict(fill=False, lw=1.4, ls="--"))):
            w, h, angle = ellipse_geometry(cov2[k], n_sigma)
            # A white halo under the outline keeps it visible over dense points of its own colour.
            ax.add_patch(Ellipse(tuple(centres[k]), w, h, angle=angle, fill=False, edgecolor="white",
                                 lw=style["lw"] + 2.0, alpha=0.8, zorder=2.9, gid=f"halo-{k}-{n_sigma}sigma"))
            ax.add_patch(Ellipse(tuple(centres[k]), w, h, angle=angle, edgecolor=(*colours[k][:3], strength),
                                 gid=f"ellipse-{k}-{n_sigma}sigma", zorder=3, **style))
        ax.plot([centres[k, 0]], [centres[k, 1]], marker="X", ms=10, color=colours[k], mec="black", mew=0.8,
                ls="none", gid=f"mean-{k}", zorder=5)
        ax.annotate(f"{k}: {weights[k]:.0%}", xy=tuple(centres[k]), xytext=(7, 7), textcoords="offset points",
                    fontsize=9, fontweight="bold", color="black", zorder=6,
                    bbox=dict(boxstyle="round,pad=0.2", fc="white", ec=colours[k], alpha=0.85))
    ax.autoscale_view()
    if projection == "pca":
        ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel(proj.labels[0])
    ax.set_ylabel(proj.labels[1])
    ax.grid(True, alpha=0.25)
    n_pts = 0 if X is None else len(X)
    ax.set_title(f"{K} components ({estimator.covariance_type} covariance): 1σ and 2σ ellipses"
                 + (f"\n{n_pts:,} sample rows, coloured by most probable component" if n_pts else ""),
                 fontsize=10)
    return fig


def _plot_components_1d(fig: Any, ax: Any, estimator: Any, X: np.ndarray | None, weights: np.ndarray,
                        means: np.ndarray, cov: np.ndarray, colours: list) -> Any:
    sd = np.sqrt(cov[:, 0, 0])
    lo = min((means[:, 0] - 4 * sd).min(), X.min() if X is not None and len(X) else np.inf)
    hi = max((means[:, 0] + 4 * sd).max(), X.max() if X is not None and len(X) else -np.inf)
    grid = np.linspace(lo, hi, 400)
    if X is not None and len(X):
        ax.hist(X[:, 0], bins=80, density=True, color="#bbbbbb", gid="sample")
    dens = weights[:, None] * np.exp(-0.5 * ((grid[None] - means[:, :1]) / sd[:, None]) ** 2) / (
        sd[:, None] * math.sqrt(2 * math.pi))
    for k in range(len(weights)):
        ax.plot(grid, dens[k], color=colours[k], lw=1.5, gid=f"density-{k}", label=f"{k}: {weights[k]:.0%}")
    ax.plot(grid, dens.sum(axis=0), color="black", lw=2, gid="mixture", label="mixture")
    ax.set_xlabel(_feature_label(getattr(estimator, "feature_names_", None), 0))
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title(f"{len(weights)} components: weighted densities")
    return fig


# -- data sample and the run directory's pictures ---------------------------------

def sample_rows(source: Any, n_rows: int = SAMPLE_ROWS, *, variable: str | None = None,
                storage_options: dict | None = None, seed: int = 0) -> np.ndarray:
    """Up to ``n_rows`` rows of ``source``, cheaply, for pictures.

    A Zarr path/URL is read a few whole chunks at a time, spread evenly over
    the array (at most ~256 MiB read whatever the data's size), and rows are
    drawn at random from them; in-memory inputs are subsampled directly.
    """
    rng = np.random.default_rng(seed)
    if isinstance(source, (str, os.PathLike)):
        import zarr

        node = zarr.open(store=os.fspath(source), mode="r", storage_options=storage_options or None)
        arr = node[variable or "X"] if isinstance(node, zarr.Group) else node
        n = int(arr.shape[0])
        chunk = int(arr.chunks[0])
        n_chunks = math.ceil(n / chunk)
        chunk_bytes = chunk * int(np.prod(arr.shape[1:])) * arr.dtype.itemsize
        budget = max(1, _SAMPLE_READ_BYTES // max(chunk_bytes, 1))
        take = int(min(n_chunks, max(math.ceil(n_rows / chunk), min(16, budget))))
        picks = np.unique(np.linspace(0, n_chunks - 1, take).round().astype(int))
        per = math.ceil(n_rows / len(picks))
        parts = []
        for c in picks:
            block = np.asarray(arr[c * chunk: min(n, (c + 1) * chunk)])
            if len(block) > per:
                block = block[np.sort(rng.choice(len(block), per, replace=False))]
            parts.append(block)
        X = np.concatenate(parts)
    else:
        if hasattr(source, "data_vars"):
            source = source[variable or "X"]
        X, _ = _as_numpy_rows(source)
        assert X is not None
    if len(X) > n_rows:
        X = X[np.sort(rng.choice(len(X), n_rows, replace=False))]
    return np.asarray(X)


def is_mixture(estimator: Any) -> bool:
    """Whether :func:`plot_components` can draw ``estimator``: a fitted mixture of Gaussians in feature space."""
    from dem.estimator.mixture import MixtureMixin

    return isinstance(estimator, MixtureMixin) and all(
        hasattr(estimator, a) for a in ("weights_", "means_", "covariances_")) and np.ndim(estimator.means_) == 2
