"""Parameters of a mixture of experts, their shifted coordinates, and the experts' M-steps.

Parameters are stored in the data's own coordinates (what users read:
``gate_coef_``, ``expert_coef_``, …) together with the shift ``(μ, ν)``
the statistics are taken about. The kernel and the M-steps work in shifted
coordinates, x̃ = [x − μ, 1] and ỹ = y − ν:

* gate logits ``V x + c = V (x − μ) + (c + V μ)``;
* Gaussian expert ``y − ν = W (x − μ) + (b + W μ − ν)``;
* categorical expert logits ``A x + a = A (x − μ) + (a + A μ)``.

M-steps:

* Gaussian experts: weighted least squares in closed form, from moments of
  the residuals r under the current coefficients: ``β_k ← β_k + (Σ h
  x̃x̃ᵀ)⁺ Σ h x̃rᵀ`` (minimum-norm when an input is constant, as
  ``LinearRegression``), ``Σ_k = (Σ h rrᵀ − …) / n_k + reg_covar``;
* categorical experts: one Böhning step of each expert's weighted
  multinomial logistic regression with ridge ``λ_e`` on the coefficients
  (scikit-learn's penalty ``½ λ ‖A‖²`` over all C rows, which keeps the rows
  summing to zero); on that subspace ``−∇² ≤ ½ I ⊗ Σ h x̃x̃ᵀ``, so the step
  raises the expert's part of Q.

An expert whose responsibility falls below ``10·eps·Σw`` is empty: it keeps
its previous parameters. Pure numpy/scipy.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import linalg

from dem.errors import CollapsedComponentError
from dem.families.gaussian_params import upper_precision_factors
from dem.families.moe_gate import ridge_mask, solve_psd
from dem.families.moe_kernel import LOG_2PI, Prepared

EXPERTS: tuple[str, ...] = ("gaussian", "categorical")
COVARIANCE_TYPES: tuple[str, ...] = ("full", "diag")
_EPS = np.finfo(np.float64).eps


@dataclasses.dataclass(frozen=True)
class MoEParams:
    """Parameters of a mixture of experts (all float64, in the data's coordinates).

    Attributes
    ----------
    gate_coef : ndarray of shape (K, p)
        The last row is the softmax's reference and stays 0.
    gate_intercept : ndarray of shape (K,)
        The last entry stays 0.
    expert_coef : ndarray of shape (K, T, p) Gaussian, (K, C, p) categorical
    expert_intercept : ndarray of shape (K, T) or (K, C)
    expert_covariances : ndarray
        (K, T, T) full, (K, T) diag; (K, 0) for categorical experts.
    x_shift : ndarray of shape (p,)
        μ, the data's mean: statistics are taken about it.
    y_shift : ndarray of shape (T,), or (0,) for categorical experts
        ν, the targets' mean.
    """

    gate_coef: np.ndarray
    gate_intercept: np.ndarray
    expert_coef: np.ndarray
    expert_intercept: np.ndarray
    expert_covariances: np.ndarray
    x_shift: np.ndarray
    y_shift: np.ndarray

    @property
    def n_experts(self) -> int:
        return int(self.gate_coef.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.gate_coef.shape[1])


def empty_experts(resp_sum: np.ndarray, weight_sum: float) -> np.ndarray:
    """Boolean mask of experts the M-step treats as empty."""
    return np.asarray(resp_sum) < 10.0 * _EPS * float(weight_sum)


# -- shifted coordinates ------------------------------------------------------------


def gate_theta(params: MoEParams) -> np.ndarray:
    """Free gate rows ``[V_k, c_k + V_k μ]`` (K − 1, p + 1)."""
    V = params.gate_coef[:-1]
    return np.hstack([V, (params.gate_intercept[:-1] + V @ params.x_shift)[:, None]])


def gate_from_theta(theta: np.ndarray, x_shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(gate_coef, gate_intercept)`` from free rows, the reference row appended as 0."""
    V, c_shifted = theta[:, :-1], theta[:, -1]
    coef = np.vstack([V, np.zeros((1, V.shape[1]))])
    intercept = np.append(c_shifted - V @ x_shift, 0.0)
    return coef, intercept


def expert_beta(params: MoEParams) -> np.ndarray:
    """Experts in shifted coordinates: (K, p + 1, T) or (K, p + 1, C)."""
    W, b = params.expert_coef, params.expert_intercept
    b_shifted = b + np.einsum("ktp,p->kt", W, params.x_shift)
    if params.y_shift.size:
        b_shifted = b_shifted - params.y_shift
    return np.concatenate([W.transpose(0, 2, 1), b_shifted[:, None, :]], axis=1)


def expert_from_beta(beta: np.ndarray, x_shift: np.ndarray, y_shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    W = beta[:, :-1, :].transpose(0, 2, 1)
    b = beta[:, -1, :] - np.einsum("ktp,p->kt", W, x_shift)
    if y_shift.size:
        b = b + y_shift
    return np.ascontiguousarray(W), b


def precision_whitening(covariances: np.ndarray, covariance_type: str) -> tuple[np.ndarray, np.ndarray]:
    """(U, log det U): upper ``U_k`` with ``Σ_k⁻¹ = U_k U_kᵀ`` (full) or ``1/σ`` (diag).

    Raises
    ------
    CollapsedComponentError
        If a covariance is not positive definite.
    """
    if covariance_type == "diag":
        if not (covariances > 0).all():
            k = int(np.flatnonzero(~(covariances > 0).all(axis=1))[0])
            raise CollapsedComponentError(f"expert {k}'s noise variance is not positive; increase reg_covar")
        U = 1.0 / np.sqrt(covariances)
        return U, np.log(U).sum(axis=1)
    U = upper_precision_factors(covariances, lambda k: CollapsedComponentError(
        f"expert {k}'s noise covariance is not positive definite; increase reg_covar or decrease n_experts"))
    return U, np.log(np.diagonal(U, axis1=1, axis2=2)).sum(axis=1)


def prepare(params: MoEParams, expert: str, covariance_type: str, classes: np.ndarray | None,
            newton: bool = False) -> Prepared:
    """The kernel's view of ``params``."""
    K = params.n_experts
    gate = np.vstack([params.gate_coef.T, (params.gate_intercept + params.gate_coef @ params.x_shift)[None]])
    beta = expert_beta(params)
    experts = np.ascontiguousarray(beta.transpose(1, 0, 2).reshape(beta.shape[1], -1))
    if expert == "gaussian":
        T = params.expert_coef.shape[1]
        whiten, logdet = precision_whitening(params.expert_covariances, covariance_type)
        const = logdet - 0.5 * T * LOG_2PI
    else:
        whiten, const = np.zeros((K, 0)), np.zeros(K)
    return Prepared(expert, covariance_type, params.x_shift, params.y_shift, np.ascontiguousarray(gate),
                    experts, whiten, const, classes, newton)


# -- M-steps ------------------------------------------------------------------------


def gaussian_experts_m_step(xx: np.ndarray, xr: np.ndarray, rr: np.ndarray, resp_sum: np.ndarray,
                            empty: np.ndarray, old_beta: np.ndarray, old_cov: np.ndarray,
                            covariance_type: str, reg_covar: float) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares per expert from residual moments: (β (K, p+1, T), covariances).

    With r the residuals under ``old_beta``, the new coefficients are
    ``β + δ``, ``δ = (Σ h x̃x̃ᵀ)⁺ Σ h x̃rᵀ``, and the new residuals' scatter is
    ``Σ h rrᵀ − (Σ h x̃rᵀ)ᵀ δ``: rounding scales with the correction, not
    with the coefficients.
    """
    beta = old_beta.copy()
    cov = old_cov.copy()
    T = xr.shape[2]
    for k in np.flatnonzero(~empty):
        delta = linalg.lstsq(xx[k], xr[k], check_finite=False, lapack_driver="gelsd")[0]
        explained = xr[k].T @ delta
        if covariance_type == "full":
            S = (rr[k] - 0.5 * (explained + explained.T)) / resp_sum[k]
            S = 0.5 * (S + S.T)
            S[np.arange(T), np.arange(T)] += reg_covar
        else:
            S = np.maximum((rr[k] - np.diagonal(explained)) / resp_sum[k], 0.0) + reg_covar
        beta[k], cov[k] = old_beta[k] + delta, S
    return beta, cov


def rebase_residual_moments(xx: np.ndarray, xr: np.ndarray, rr: np.ndarray, old_beta: np.ndarray,
                            new_beta: np.ndarray, covariance_type: str) -> tuple[np.ndarray, np.ndarray]:
    """Residual moments under ``old_beta`` re-expressed under ``new_beta`` (exact algebra).

    With Δ = β' − β, r' = r − Δᵀx̃: Σ h x̃r'ᵀ = Σ h x̃rᵀ − Σ h x̃x̃ᵀ Δ and
    Σ h r'r'ᵀ = Σ h rrᵀ − Δᵀ Σ h x̃rᵀ − (Σ h x̃rᵀ)ᵀ Δ + Δᵀ Σ h x̃x̃ᵀ Δ.
    """
    D = new_beta - old_beta
    xr_new = xr - np.einsum("kij,kjt->kit", xx, D)
    cross = np.einsum("kit,kis->kts", D, xr)
    change = np.einsum("kit,kij,kjs->kts", D, xx, D) - cross - cross.transpose(0, 2, 1)
    if covariance_type == "full":
        return xr_new, rr + change
    return xr_new, rr + np.diagonal(change, axis1=1, axis2=2)


def categorical_experts_m_step(xx: np.ndarray, gradient: np.ndarray, empty: np.ndarray,
                               old_beta: np.ndarray, ridge: float) -> np.ndarray:
    """One Böhning step per expert: β (K, p+1, C), columns summing to zero."""
    beta = old_beta.copy()
    d = ridge_mask(xx.shape[1] - 1)
    for k in np.flatnonzero(~empty):
        M = 0.5 * xx[k] + ridge * np.diag(d)
        g = gradient[k] - ridge * d[:, None] * old_beta[k]
        beta[k] = old_beta[k] + solve_psd(M, g)
    return beta


def expert_penalty(params: MoEParams, ridge: float) -> float:
    """``½ λ ‖A‖²`` of categorical experts' coefficients."""
    return 0.5 * ridge * float(np.sum(params.expert_coef**2))


def n_expert_parameters(expert: str, covariance_type: str, n_experts: int, n_features: int, n_out: int) -> int:
    """Free parameters of the experts (K experts, p inputs, T targets or C classes)."""
    K, q = n_experts, n_features + 1
    if expert == "categorical":
        return K * (n_out - 1) * q
    cov = n_out * (n_out + 1) // 2 if covariance_type == "full" else n_out
    return K * (n_out * q + cov)


