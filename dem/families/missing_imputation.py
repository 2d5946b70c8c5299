"""Filling in the missing coordinates of incomplete rows under a Gaussian mixture.

Pure numpy; no Dask. Three fills, for
:class:`~dem.families.gmm_missing.MissingDataGaussianMixtureFamily`:

* :func:`centre_filled`: the initialisation pass gives an incomplete row to
  the centre nearest on its observed coordinates (or to random
  responsibilities) and fills its missing coordinates with that centre's;
* :func:`impute`: the conditional expectation ``E[x_m | x_o]`` under the
  fitted mixture, what :meth:`dem.GaussianMixture.impute` writes;
* multiple-imputation draws from the conditional Gaussians, through
  :func:`conditional_noise`.

The per-block linear algebra (marginal densities, conditional means and
covariances by missingness pattern) is :mod:`dem.families.missing_patterns`.
"""

from __future__ import annotations

import numpy as np

from dem.families.gaussian_params import GMMParams
from dem.families.missing_patterns import (
    _BlockResult,
    _log_sum_exp,
    _Prepared,
    _raise_inf,
    incomplete_block,
    incomplete_blocks,
    prepare,
)


def centre_filled(prep: _Prepared, Xb: np.ndarray, Mb: np.ndarray, R: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Starting responsibilities (K, n) of incomplete rows, and their deviations ``x̂ − μ_k`` (K, n, D).

    ``R`` None: each row goes wholly to the centre nearest on its observed
    coordinates. A missing coordinate is filled with each centre's own, so
    its deviation is 0.
    """
    m = Xb.shape[0]
    cm = prep.centred_means
    X0c = np.where(Mb, 0.0, Xb - prep.shift)
    if R is None:
        # Squared distance on the observed coordinates, less Σ_o x² (the same for every k).
        dist = (1.0 - Mb.astype(np.float64)) @ (cm * cm).T - 2.0 * (X0c @ cm.T)
        R = np.zeros((cm.shape[0], m))
        R[dist.argmin(axis=1), np.arange(m)] = 1.0
    dev = X0c[None, :, :] - cm[:, None, :]
    dev *= ~Mb
    return R, dev


def impute(
    params: GMMParams,
    covariance_type: str,
    X: np.ndarray,
    n_draws: int = 0,
    rng: np.random.Generator | None = None,
    *,
    n_components: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Conditional expectation of the missing entries, and optional draws.

    Parameters
    ----------
    params : GMMParams
    covariance_type : {"full", "tied", "diag", "spherical"}
    X : ndarray of shape (n, D)
        Rows with NaN at the missing entries.
    n_draws : int
        Multiple-imputation draws: for each draw and row, a component is
        drawn from the row's responsibilities ``r_k(x_o)``, then ``x_m``
        from that component's conditional Gaussian.
    rng : numpy Generator, needed when ``n_draws > 0``
    n_components : int, optional
        The family's number of components, which sizes the row blocks
        (default: that of ``params``).

    Returns
    -------
    expectation : ndarray of shape (n, D), dtype of ``X`` (float64 for integer input)
        ``X`` with every NaN replaced by ``E[x_m | x_o] = Σ_k r_k(x_o) x̂_k,m``;
        observed entries are copied bit for bit.
    draws : ndarray of shape (n_draws, n, D), or None when ``n_draws == 0``
    """
    X = np.asarray(X)
    dtype = X.dtype if np.issubdtype(X.dtype, np.floating) else np.dtype(np.float64)
    expectation = np.array(X, dtype=dtype, copy=True)
    draws = None
    if n_draws > 0:
        if rng is None:
            raise ValueError("n_draws > 0 needs a random generator")
        draws = np.repeat(expectation[None], n_draws, axis=0)
    M = np.isnan(X) if np.issubdtype(X.dtype, np.floating) else np.zeros(X.shape, bool)
    if not M.any():
        return expectation, draws
    _raise_inf(X, 0)
    rows = np.flatnonzero(M.any(axis=1))
    prep = prepare(params, covariance_type)
    K, D = params.means.shape
    blocks = incomplete_blocks(X, M, rows, K if n_components is None else n_components, prep.diagonal)
    for idx, Xb, Mb in blocks:
        blk = incomplete_block(prep, Xb, Mb)
        R = np.exp(blk.log_prob - _log_sum_exp(blk.log_prob))        # (K, n)
        mean = R.T @ params.means + np.einsum("kn,knd->nd", R, blk.dev)
        rr, cc = np.nonzero(Mb)
        expectation[idx[rr], cc] = mean[rr, cc]
        for t in range(n_draws):
            # Component from the responsibilities, then the conditional Gaussian.
            u = rng.random(len(idx))
            comp = np.minimum((np.cumsum(R, axis=0) < u[None, :]).sum(axis=0), K - 1)
            z = rng.standard_normal((len(idx), D))
            x = params.means[comp] + blk.dev[comp, np.arange(len(idx))]
            x += conditional_noise(prep, blk, comp, z)
            draws[t, idx[rr], cc] = x[rr, cc]
    return expectation, draws


def conditional_noise(prep: _Prepared, blk: _BlockResult, comp: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``x_m − x̂_m`` ~ N(0, conditional covariance of ``comp``), 0 at observed coordinates."""
    noise = np.zeros_like(z)
    if prep.diagonal:
        return np.where(blk.missing, np.sqrt(prep.variances[comp]) * z, 0.0)
    for g in blk.groups:
        # L Lᵀ = conditional covariance ⇒ L z has that covariance.
        L = np.linalg.cholesky(g.cond_cov[g.pattern, comp[g.rows]])   # (n_s, s, s)
        zs = z[g.rows][:, : g.missing_idx.shape[1]]
        noise[g.rows[:, None], g.missing_idx[g.pattern]] = np.einsum("nij,nj->ni", L, zs)
    return noise
