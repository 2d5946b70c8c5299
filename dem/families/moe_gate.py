"""The softmax gate of a mixture of experts: a guaranteed-ascent M-step from one pass.

The gate ``g(x) = softmax(V x + c)`` has no closed-form M-step: its part of
the expected complete-data log-likelihood,

    Q(Θ) = Σ_i w_i Σ_k h_ik log g_k(x_i; Θ) − ½ λ ‖V‖²,

is maximised by iteration, and each evaluation of Q at a new Θ would cost a
pass over the data. Generalised EM only needs Q to rise, so the M-step
takes one step from the statistics of the current pass:

* **Böhning's bound** (Böhning 1992): the Hessian of the multinomial
  log-likelihood in the K − 1 free rows is bounded below by
  ``−½ (I − 11ᵀ/K) ⊗ Σ w x̃x̃ᵀ`` (x̃ = [x, 1]). The quadratic with that
  curvature minorises Q and touches it at Θ, so its maximiser raises Q
  (an MM step). The curvature needs only ``Σ w x̃x̃ᵀ``, which the experts'
  statistics already hold: the step is free.
* **Safeguarded Newton**: the exact Hessian (accumulated in the same pass,
  ``(K−1)K/2`` extra products of size (p+1)² per row) gives the direction;
  along it Böhning's minoriser gains ``t·a − ½t²·b`` for a step of length t,
  so the Newton step is the full one when ``b ≤ 1.9a`` and otherwise
  ``t = 0.95 · 2a/b``, where the minoriser still proves a rise. Of that
  step and Böhning's (both provably safe) the one with the larger gain in
  the exact quadratic model ``gᵀs − ½ sᵀHs`` is taken. (Maximising the
  minoriser instead just gives Böhning's step back; interpolating between
  the two steps Levenberg–Marquardt style measured worse.)

Coordinates: the last expert is the softmax's reference (its row and
intercept stay 0); the others are ``Θ_k = [V_k, c'_k]`` in the data's
shifted coordinates (``c' = c + V μ``), a linear change of variables under
which the MM step is the same step. The ridge ``λ`` applies to V, never to
the intercepts. Pure numpy/scipy.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

GATE_STEPS: tuple[str, ...] = ("bohning", "newton")
#: How far along the Newton direction to go, as a share of the length at which Böhning's
#: guarantee ends (its gain there is 0): at 95 % the guaranteed gain is still 9.5 % of the
#: most it can be on that line, so every step provably raises Q.
SAFE_FRACTION = 0.95


def log_softmax(Z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of logits (n, K)."""
    m = Z.max(axis=1, keepdims=True)
    out = Z - m
    out -= np.log(np.exp(out).sum(axis=1, keepdims=True))
    return out


def ridge_mask(n_inputs: int) -> np.ndarray:
    """Diagonal of the penalty over [x, 1]: 1 for every input, 0 for the intercept."""
    d = np.ones(n_inputs + 1)
    d[-1] = 0.0
    return d


def solve_psd(M: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``M⁻¹ b`` for a symmetric positive semi-definite ``M``.

    Cholesky when ``M`` is positive definite; otherwise the minimum-norm
    least-squares solution (a constant input, an expert without data and no
    ridge), which still maximises the quadratic on ``M``'s range.
    """
    try:
        return linalg.cho_solve(linalg.cho_factor(M, lower=True, check_finite=False), b, check_finite=False)
    except (linalg.LinAlgError, ValueError):
        return linalg.lstsq(M, b, check_finite=False)[0]


def bohning_curvature(n_experts: int, scatter: np.ndarray, ridge: float) -> np.ndarray:
    """``½ (I − 11ᵀ/K) ⊗ S + λ I ⊗ diag(1,…,1,0)`` over the K − 1 free rows (row-major)."""
    K = n_experts
    A = 0.5 * (np.eye(K - 1) - np.full((K - 1, K - 1), 1.0 / K))
    return np.kron(A, scatter) + ridge * np.kron(np.eye(K - 1), np.diag(ridge_mask(scatter.shape[0] - 1)))


def hessian_pairs(n_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (k ≤ l) of the free rows whose Hessian blocks the E-step accumulates."""
    k, l = np.triu_indices(n_experts - 1)
    return k, l


def assemble_hessian(blocks: np.ndarray, n_experts: int) -> np.ndarray:
    """The full negative Hessian from its upper blocks ``(pairs, p+1, p+1)``."""
    K = n_experts
    q = blocks.shape[-1]
    H = np.zeros(((K - 1) * q, (K - 1) * q))
    for (k, l), block in zip(zip(*hessian_pairs(K)), blocks):
        H[k * q:(k + 1) * q, l * q:(l + 1) * q] = block
        if k != l:
            H[l * q:(l + 1) * q, k * q:(k + 1) * q] = block.T
    return H


def gate_step(theta: np.ndarray, gradient: np.ndarray, scatter: np.ndarray, ridge: float,
              hessian_blocks: np.ndarray | None = None) -> np.ndarray:
    """The gate's new free rows, guaranteed not to lower Q.

    Parameters
    ----------
    theta : ndarray of shape (K − 1, p + 1)
        Current free rows ``[V_k, c'_k]`` (shifted coordinates).
    gradient : ndarray of shape (K − 1, p + 1)
        ``Σ w (h_k − g_k) x̃`` of the free rows (the likelihood part; the
        ridge is added here).
    scatter : ndarray of shape (p + 1, p + 1)
        ``Σ w x̃x̃ᵀ``.
    ridge : float
        λ of the penalty ``½ λ ‖V‖²``.
    hessian_blocks : ndarray of shape (pairs, p + 1, p + 1), optional
        The negative Hessian's upper blocks (Newton); None takes Böhning's step.
    """
    Km1, q = theta.shape
    K = Km1 + 1
    if Km1 == 0:
        return theta
    d = ridge_mask(q - 1)
    g = (gradient - ridge * theta * d).ravel()
    B = bohning_curvature(K, scatter, ridge)
    step_b = solve_psd(B, g)
    if hessian_blocks is None:
        return theta + step_b.reshape(Km1, q)
    H = assemble_hessian(hessian_blocks, K) + ridge * np.kron(np.eye(Km1), np.diag(d))
    step_n = solve_psd(H, g)

    # Along the Newton direction the minoriser's gain is t·a − ½t²·b, positive for t < 2a/b:
    # the full step when that allows it, else 95% of the way to where the guarantee ends.
    a, b = float(g @ step_n), float(step_n @ (B @ step_n))
    if not (np.all(np.isfinite(step_n)) and a > 0.0 and b > 0.0):
        return theta + step_b.reshape(Km1, q)
    t = min(1.0, SAFE_FRACTION * 2.0 * a / b)
    # Both steps are safe; take the one the exact local model prefers. A Newton step cut
    # short by a loose bound (a confident gate: true curvature ≪ ½) can gain less than
    # Böhning's, and a run of such steps looks converged when it is not.
    model_n = a * (t - 0.5 * t * t)
    model_b = float(g @ step_b - 0.5 * step_b @ (H @ step_b))
    if model_b > model_n:
        return theta + step_b.reshape(Km1, q)
    return theta + t * step_n.reshape(Km1, q)
