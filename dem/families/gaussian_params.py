"""Parameters of Gaussian mixtures and the linear algebra around them.

Conventions follow scikit-learn: ``precisions_cholesky`` is the upper
triangular ``U`` with ``precision = U Uᵀ`` (full, tied), or ``1/σ`` (diag,
spherical). Pure numpy/scipy.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from scipy import linalg

from dem.errors import CollapsedComponentError

#: scikit-learn's words (``sklearn/mixture/_gaussian_mixture.py``) when a covariance is not positive
#: definite; dem's own detail follows them.
ILL_DEFINED = ("Fitting the mixture model failed because some components have ill-defined empirical "
               "covariance (for instance caused by singleton or collapsed samples). Try to decrease the "
               "number of components, increase reg_covar, or scale the input data.")


def collapsed(detail: str, component: int | None = None) -> CollapsedComponentError:
    """scikit-learn's ValueError for an ill-defined covariance, with dem's detail after its sentence."""
    return CollapsedComponentError(f"{ILL_DEFINED} ({detail})", component=component, detail=detail)


@dataclasses.dataclass(frozen=True)
class GMMParams:
    """Parameters of a Gaussian mixture (all float64).

    Attributes
    ----------
    weights : ndarray of shape (n_components,)
    means : ndarray of shape (n_components, n_features)
    covariances : ndarray
        (K, D, D) full, (D, D) tied, (K, D) diag, (K,) spherical.
    precisions_cholesky : ndarray
        Same shapes as ``covariances``.
    """

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    precisions_cholesky: np.ndarray

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def n_features(self) -> int:
        return self.means.shape[1]

    @property
    def shift(self) -> np.ndarray:
        """Centre every worker subtracts from the data: the mixture's mean."""
        return self.weights @ self.means


def upper_precision_factors(covariances: np.ndarray, failed: Callable[[int], Exception]) -> np.ndarray:
    """Upper ``U_k`` with ``Σ_k⁻¹ = U_k U_kᵀ`` for a stack of (D, D) covariances, (K, D, D).

    ``failed(k)`` is the exception raised when ``Σ_k`` is not positive definite.
    """
    n_components, n_features, _ = covariances.shape
    out = np.empty_like(covariances)
    for k in range(n_components):
        try:
            chol = linalg.cholesky(covariances[k], lower=True)
        except (linalg.LinAlgError, ValueError):
            raise failed(k) from None
        out[k] = linalg.solve_triangular(chol, np.eye(n_features), lower=True).T
    return out


def compute_precision_cholesky(covariances: np.ndarray, covariance_type: str) -> np.ndarray:
    """Cholesky factors of the precision matrices, as scikit-learn defines them.

    Raises
    ------
    CollapsedComponentError
        If a covariance is not positive definite.
    """
    if covariance_type == "full":
        return upper_precision_factors(covariances, lambda k: collapsed(
            f"component {k}'s covariance is not positive definite: it collapsed onto a lower-dimensional set", k))
    if covariance_type == "tied":
        try:
            chol = linalg.cholesky(covariances, lower=True)
        except (linalg.LinAlgError, ValueError):
            raise collapsed("the tied covariance is not positive definite") from None
        return linalg.solve_triangular(chol, np.eye(covariances.shape[0]), lower=True).T
    bad = np.flatnonzero(~(covariances > 0).reshape(covariances.shape[0], -1).all(axis=1))
    if bad.size:
        raise collapsed(f"component {int(bad[0])} has a zero or negative variance", int(bad[0]))
    return 1.0 / np.sqrt(covariances)


def precisions_from_cholesky(precisions_cholesky: np.ndarray, covariance_type: str) -> np.ndarray:
    """Precision matrices from their Cholesky factors."""
    if covariance_type == "full":
        return np.einsum("kij,klj->kil", precisions_cholesky, precisions_cholesky)
    if covariance_type == "tied":
        return precisions_cholesky @ precisions_cholesky.T
    return precisions_cholesky**2


def covariances_from_precisions(precisions: np.ndarray, covariance_type: str) -> np.ndarray:
    """Covariances from user-supplied precisions (their inverses)."""
    if covariance_type == "full":
        return np.stack([linalg.pinvh(p) for p in precisions])
    if covariance_type == "tied":
        return linalg.pinvh(precisions)
    return 1.0 / precisions


def precision_cholesky_from_precisions(precisions: np.ndarray, covariance_type: str) -> np.ndarray:
    """scikit-learn's convention: U upper with precision = U Uᵀ.

    Obtained by flipping the lower Cholesky factor of the reversed matrix.
    """
    if covariance_type in ("diag", "spherical"):
        return np.sqrt(precisions)

    def one(p: np.ndarray) -> np.ndarray:
        flipped = np.flipud(np.fliplr(p))
        try:
            chol = linalg.cholesky(flipped, lower=True)
        except (linalg.LinAlgError, ValueError):
            raise CollapsedComponentError("precisions_init is not positive definite") from None
        return np.flipud(np.fliplr(chol))

    if covariance_type == "full":
        return np.stack([one(p) for p in precisions])
    return one(precisions)


def params_from(covariance_type: str, weights: np.ndarray, means: np.ndarray,
                covariances: np.ndarray | None = None, precisions: np.ndarray | None = None) -> GMMParams:
    """Validated parameters from weights, means and covariances or precisions."""
    weights = np.asarray(weights, dtype=np.float64)
    means = np.asarray(means, dtype=np.float64)
    if covariances is None:
        if precisions is None:
            raise ValueError("need covariances or precisions")
        precisions = np.asarray(precisions, dtype=np.float64)
        covariances = covariances_from_precisions(precisions, covariance_type)
        pc = precision_cholesky_from_precisions(precisions, covariance_type)
    else:
        covariances = np.asarray(covariances, dtype=np.float64)
        pc = compute_precision_cholesky(covariances, covariance_type)
    return GMMParams(weights, means, covariances, pc)


def full_covariances(covariances: np.ndarray, covariance_type: str, n_components: int,
                     n_features: int) -> np.ndarray:
    """(K, D, D) covariance matrices whatever the covariance type."""
    c = np.asarray(covariances, dtype=np.float64)
    if covariance_type == "full":
        return c
    if covariance_type == "tied":
        return np.repeat(c[None], n_components, axis=0)
    if covariance_type == "diag":
        return np.stack([np.diag(v) for v in c])
    return np.eye(n_features)[None] * c.reshape(-1)[:, None, None]


# -- unconstrained coordinates (SQUAREM) -------------------------------------------


def covariance_to_vector(covariances: np.ndarray, covariance_type: str) -> np.ndarray:
    """Covariances as free coordinates: Cholesky factors with log diagonals, or log variances."""
    c = np.asarray(covariances, dtype=np.float64)
    if covariance_type in ("diag", "spherical"):
        return np.log(c).ravel()
    mats = c.reshape(-1, c.shape[-1], c.shape[-1])
    D = mats.shape[-1]
    il = np.tril_indices(D)
    out = []
    for m in mats:
        L = np.linalg.cholesky(m)
        L[np.arange(D), np.arange(D)] = np.log(np.diag(L))
        out.append(L[il])
    return np.concatenate(out)


def covariance_from_vector(vector: np.ndarray, covariance_type: str, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`covariance_to_vector`: every vector gives positive definite matrices."""
    if covariance_type in ("diag", "spherical"):
        return np.exp(vector).reshape(shape)
    D = shape[-1]
    il = np.tril_indices(D)
    n = len(il[0])
    mats = []
    for i in range(int(np.prod(shape[:-2], dtype=int)) if len(shape) > 2 else 1):
        L = np.zeros((D, D))
        L[il] = vector[i * n:(i + 1) * n]
        L[np.arange(D), np.arange(D)] = np.exp(np.diag(L))
        mats.append(L @ L.T)
    return np.stack(mats).reshape(shape)


def log_ratio(p: np.ndarray) -> np.ndarray:
    """Probabilities (…, K) as K−1 log-ratios against the last entry (−inf-safe for positive p)."""
    with np.errstate(divide="ignore"):
        logp = np.log(p)
    return (logp[..., :-1] - logp[..., -1:]).reshape(-1)


def from_log_ratio(z: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`log_ratio`: a softmax with the last entry as reference."""
    lead, K = shape[:-1], shape[-1]
    z = np.asarray(z, dtype=np.float64).reshape(lead + (K - 1,))
    full = np.concatenate([z, np.zeros(lead + (1,))], axis=-1)
    full -= full.max(axis=-1, keepdims=True)
    e = np.exp(full)
    # An extrapolated log-ratio can fall below exp's range; a weight of exactly
    # zero would make log(weight) −inf in the E-step, the smallest normal one does not.
    return np.maximum(e / e.sum(axis=-1, keepdims=True), np.finfo(np.float64).tiny)
