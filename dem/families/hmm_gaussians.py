"""Gaussian emission densities of the HMM families, as hmmlearn evaluates them.

Pure numpy; no Dask. What :mod:`dem.families.gaussian_hmm` and
:mod:`dem.families.gmm_hmm` share: densities prepared once per parameter set
(:class:`Gaussians`), packed second moments and their re-expression about a
new centre (:func:`shift_moments`), and hmmlearn's covariance shapes
(:func:`full_covariances`, :func:`check_covariances`).

Like hmmlearn's, the densities retry a full covariance that is not
positive definite with :data:`RETRY_COVAR` on its diagonal and floor diagonal
and spherical variances at the smallest positive float, so data with a
constant feature, or a sparsely used mixture component, do not stop a fit.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import linalg

from dem.errors import CollapsedComponentError, ConfigError

COVARIANCE_TYPES: tuple[str, ...] = ("spherical", "diag", "full", "tied")

_LOG_2PI = math.log(2.0 * math.pi)
_TINY = np.finfo(np.float64).tiny

#: Added to the diagonal of a full covariance whose Cholesky factorisation
#: fails, before giving up (hmmlearn's ``min_covar`` of ``stats.py``).
RETRY_COVAR = 1e-7

#: Rows per block for emission densities and moments: (block × D) and
#: (block × K) temporaries stay in cache.
ROW_BLOCK = 4096


def packed_outer(Xc: np.ndarray) -> np.ndarray:
    """Upper-triangle products ``x_i x_j`` (i <= j, ``np.triu_indices`` order) of each row, (n, D(D+1)/2)."""
    n, D = Xc.shape
    XT = np.ascontiguousarray(Xc.T)
    out = np.empty((D * (D + 1) // 2, n))
    o = 0
    for i in range(D):  # row by row, so every write is contiguous
        np.multiply(XT[i], XT[i:], out=out[o : o + D - i])
        o += D - i
    return out.T


def unpack_symmetric(packed: np.ndarray, n_features: int) -> np.ndarray:
    """(…, D(D+1)/2) upper triangles → (…, D, D) symmetric matrices."""
    iu = np.triu_indices(n_features)
    out = np.zeros(packed.shape[:-1] + (n_features, n_features))
    out[..., iu[0], iu[1]] = packed
    out[..., iu[1], iu[0]] = packed
    return out



@dataclasses.dataclass(frozen=True)
class Gaussians:
    """``C`` Gaussian densities prepared for evaluation on centred rows.

    ``kind`` is ``full`` (``factor`` (C, D, D) upper ``U`` with ``Σ⁻¹ = U Uᵀ``),
    ``diag`` (``factor`` (C, D) precisions) or ``spherical`` (``factor`` (C,)
    precisions); ``means`` are centred on the shift.
    """

    kind: str
    means: np.ndarray
    factor: np.ndarray
    log_norm: np.ndarray

    @classmethod
    def from_covariances(cls, means: np.ndarray, covars: np.ndarray, kind: str, shift: np.ndarray,
                         names: list[str]) -> "Gaussians":
        """Prepare densities; ``names[c]`` names component ``c`` in errors.

        As hmmlearn's densities (``hmmlearn.stats``): a full covariance that
        is not positive definite is retried with :data:`RETRY_COVAR` on its
        diagonal (a component stuck on too few observations, or data with a
        constant column), and diagonal or spherical variances are floored at
        the smallest positive float, so EM keeps going where hmmlearn does.

        Raises
        ------
        CollapsedComponentError
            A full covariance is not positive definite even with
            :data:`RETRY_COVAR` added (hmmlearn raises a ValueError there too),
            or a variance is NaN.
        """
        C, D = means.shape
        advice = "increase covars_prior or min_covar, decrease n_components, or scale the data"
        if kind == "full":
            factor = np.empty((C, D, D))
            log_det = np.empty(C)
            for c in range(C):
                chol = _cholesky_or_retry(covars[c])
                if chol is None:
                    raise CollapsedComponentError(
                        f"{names[c]}'s covariance is not positive definite, even with {RETRY_COVAR:g} "
                        f"added to its diagonal ('covars' must be symmetric, positive-definite); {advice}",
                        component=c) from None
                factor[c] = linalg.solve_triangular(chol, np.eye(D), lower=True).T
                log_det[c] = -np.log(np.diagonal(chol)).sum()
        else:
            covars = np.asarray(covars, dtype=np.float64)
            nan = np.flatnonzero(np.isnan(covars).reshape(C, -1).any(axis=1))
            if nan.size:
                raise CollapsedComponentError(f"{names[int(nan[0])]} has a NaN variance; {advice}",
                                              component=int(nan[0]))
            # hmmlearn floors variances at the smallest positive float (a zero
            # or, from a negative prior, negative variance): such a component
            # explains only the points at its mean.
            factor = 1.0 / np.maximum(covars, _TINY)
            log_det = (0.5 * np.log(factor).sum(axis=1) if kind == "diag"
                       else 0.5 * D * np.log(factor))
        return cls(kind, means - shift, factor, log_det - 0.5 * D * _LOG_2PI)

    def log_density(self, Xc: np.ndarray) -> np.ndarray:
        """``log N(x | μ_c, Σ_c)`` of centred rows ``Xc`` (n, D) → (n, C)."""
        C = self.means.shape[0]
        out = np.empty((Xc.shape[0], C))
        for c in range(C):
            d = Xc - self.means[c]
            # A floored variance makes distances overflow to inf: a log-density of −inf, as in hmmlearn.
            with np.errstate(over="ignore"):
                if self.kind == "full":
                    y = d @ self.factor[c]
                    maha = np.einsum("ij,ij->i", y, y)
                elif self.kind == "diag":
                    maha = (d * d) @ self.factor[c]
                else:
                    maha = np.einsum("ij,ij->i", d, d) * self.factor[c]
            out[:, c] = self.log_norm[c] - 0.5 * maha
        return out


def _cholesky_or_retry(cov: np.ndarray) -> np.ndarray | None:
    """Lower Cholesky factor of ``cov``, else of ``cov + RETRY_COVAR·I`` (hmmlearn's retry), else None."""
    for jitter in (0.0, RETRY_COVAR):
        try:
            return linalg.cholesky(cov + jitter * np.eye(cov.shape[0]) if jitter else cov, lower=True)
        except (linalg.LinAlgError, ValueError):
            continue
    return None


def shift_moments(first: np.ndarray, second: np.ndarray, count: np.ndarray, delta: np.ndarray,
                  form: str) -> tuple[np.ndarray, np.ndarray]:
    """Moments about a centre ``c`` re-expressed about ``c − delta`` (exact algebra).

    ``Σγ(x − c + δ) = F + n δ`` and ``Σγ(x − c + δ)(x − c + δ)ᵀ = S + F δᵀ + δ Fᵀ + n δ δᵀ``;
    ``form`` is how ``second`` stores that matrix: ``"packed"`` (upper
    triangles, ``np.triu_indices`` order), ``"diag"`` (its diagonal) or
    ``"trace"``. ``first`` is (…, D), ``count`` (…) and ``second`` (…, P), (…, D) or (…).
    """
    F = np.asarray(first, dtype=np.float64)
    n = np.asarray(count, dtype=np.float64)
    d = np.asarray(delta, dtype=np.float64)
    S = np.asarray(second, dtype=np.float64)
    if form == "packed":
        iu = np.triu_indices(d.shape[-1])
        S = S + F[..., iu[0]] * d[iu[1]] + d[iu[0]] * F[..., iu[1]] + n[..., None] * (d[iu[0]] * d[iu[1]])
    elif form == "diag":
        S = S + 2.0 * F * d + n[..., None] * d * d
    else:
        S = S + 2.0 * (F @ d) + n * (d @ d)
    return F + n[..., None] * d, S


def full_covariances(covars: np.ndarray, covariance_type: str, n_components: int,
                     n_features: int) -> np.ndarray:
    """``(K, D, D)`` covariances from hmmlearn's stored shape (its ``covars_`` property).

    Unlike hmmlearn 0.3.3, ``spherical`` covariances fitted by EM come back as
    ``(K, D, D)`` too (hmmlearn returns ``(K·D, D, D)`` after a fit).
    """
    covars = np.asarray(covars, dtype=np.float64)
    if covariance_type == "full":
        return covars
    if covariance_type == "diag":
        return np.stack([np.diag(c) for c in covars])
    if covariance_type == "tied":
        return np.repeat(covars[None], n_components, axis=0)
    return np.eye(n_features)[None] * np.ravel(covars)[:n_components, None, None]


def check_covariances(covars: np.ndarray, K: int, D: int, where: str, ct: str, fitted: bool = False) -> None:
    """A ConfigError unless ``covars`` has hmmlearn's stored shape and is positive definite.

    ``fitted``: covariances EM produced need only be finite and, when full,
    symmetric and positive definite once :data:`RETRY_COVAR` is added (what
    :meth:`Gaussians.from_covariances` evaluates, as hmmlearn's densities do);
    hmmlearn checks ``covars_`` strictly only when a user sets them.
    """
    shape = {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}[ct]
    if covars.shape != shape:
        raise ConfigError(f"{where} must have shape {shape} for covariance_type={ct!r}; got {covars.shape}")
    if not np.isfinite(covars).all():
        raise ConfigError(f"{where} must be finite")
    if ct in ("diag", "spherical"):
        if not fitted and not (covars > 0).all():
            raise ConfigError(f"{where} must be positive for covariance_type={ct!r}")
        return
    for i, c in enumerate(covars.reshape(-1, D, D)):
        if not np.allclose(c, c.T) or (_cholesky_or_retry(c) is None if fitted
                                       else np.linalg.eigvalsh(c).min() <= 0):
            raise ConfigError(f"{where}[{i}] must be symmetric, positive-definite")
