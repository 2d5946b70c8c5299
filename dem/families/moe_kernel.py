"""The E-step kernel of a mixture of experts: posteriors and statistics over row blocks.

One pass gives everything the M-step needs (:mod:`dem.families.moe`):

* posteriors ``h_ik ∝ g_k(x_i) p_k(y_i | x_i)``, in log space;
* ``Σ w h_k x̃x̃ᵀ`` per expert (x̃ = [x − μ, 1]): the experts' normal
  equations, and summed over experts the gate's curvature bound;
* Gaussian experts: ``Σ w h_k x̃ r_kᵀ`` and ``Σ w h_k r_k r_kᵀ`` with
  r_k = y − (W_k x + b_k) the residuals under the current parameters (near
  convergence ``Σ h x̃rᵀ`` is close to zero, so the M-step's correction
  ``(Σ h x̃x̃ᵀ)⁻¹ Σ h x̃rᵀ`` and the covariance ``Σ h rrᵀ − …`` cancel
  nothing); categorical experts: the gradient ``Σ w h_k x̃ (e_y − p_k(x))ᵀ``;
* the gate's gradient ``Σ w (h − g(x)) x̃`` and, for Newton steps, its
  Hessian blocks ``Σ w (g_k δ_kl − g_k g_l) x̃x̃ᵀ``.

Numerical choices: inputs are taken about ``μ`` (targets about ``ν``), a
shift derived from the data once (:mod:`dem.families.moe_init`) and carried
in the parameters, so every worker knows it; everything is float64 whatever the data's dtype; blocks are
cache-sized (temporaries of about 2 MB) and each block's moments are one
GEMM of the responsibilities with the rows' packed products x̃x̃ᵀ. Pure numpy.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

from dem.data.record import Partition
from dem.errors import DataError
from dem.families.moe_gate import hessian_pairs, log_softmax

LOG_2PI = math.log(2.0 * math.pi)
#: Elements of the largest per-block temporary (the rows' packed products, ≈ 2 MB).
BLOCK_ELEMENTS = 1 << 18


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Per-parameter matrices every block reuses, in shifted coordinates.

    ``gate`` (p+1, K): logits are ``x̃ @ gate``. ``experts`` (p+1, K·T) or
    (p+1, K·C): expert k's predictions (Gaussian) or logits (categorical)
    are columns ``k·T … (k+1)·T − 1`` of ``x̃ @ experts``. ``whiten`` is the
    upper Cholesky factor ``U_k`` of each precision (full, (K, T, T)) or
    ``1/σ`` (diag, (K, T)); ``const`` is ``log det U_k − T/2 log 2π``.
    """

    expert: str
    covariance_type: str
    x_shift: np.ndarray
    y_shift: np.ndarray
    gate: np.ndarray
    experts: np.ndarray
    whiten: np.ndarray
    const: np.ndarray
    classes: np.ndarray | None
    newton: bool = False

    @property
    def n_experts(self) -> int:
        return int(self.gate.shape[1])

    @property
    def n_out(self) -> int:
        return int(self.experts.shape[1] // self.n_experts)

    def rows(self) -> int:
        q, T = self.gate.shape[0], self.n_out
        width = max(q * (q + 1) // 2, self.n_experts * T * max(T, 2))
        return int(max(64, min(8192, BLOCK_ELEMENTS // max(1, width))))


def shifted_block(prep: Prepared, X: Any, a: int, b: int, start: int) -> np.ndarray:
    """Rows ``a:b`` as x̃ = [x − μ, 1] in float64, checked finite."""
    Xb = np.asarray(X[a:b])
    if Xb.ndim != 2 or Xb.shape[1] != prep.x_shift.shape[0]:
        raise DataError(f"X must have {prep.x_shift.shape[0]} features; got shape {Xb.shape}")
    Xt = np.empty((Xb.shape[0], Xb.shape[1] + 1))
    np.subtract(Xb, prep.x_shift, out=Xt[:, :-1], casting="unsafe")
    Xt[:, -1] = 1.0
    if not np.isfinite(Xt[:, :-1]).all():
        row, col = (int(v[0]) for v in np.nonzero(~np.isfinite(Xt[:, :-1])))
        kind = "NaN" if np.isnan(Xt[row, col]) else "inf"
        raise DataError(f"X contains {kind} at row {start + a + row}, feature {col}")
    return Xt


def gaussian_targets(prep: Prepared, y: Any, a: int, b: int, start: int) -> np.ndarray:
    """Targets ``a:b`` as ỹ = y − ν (rows × T), float64, checked finite."""
    T = prep.y_shift.shape[0]
    yb = np.asarray(y[a:b])
    if yb.dtype.kind not in "biuf":
        raise DataError(f"y must hold real numbers for gaussian experts; got dtype {yb.dtype}")
    yb = yb.reshape(-1, 1) if yb.ndim == 1 else yb
    if yb.ndim != 2 or yb.shape[1] != T:
        raise DataError(f"y must have {T} target{'s' if T != 1 else ''}; got {yb.shape[1:]} per row")
    Yc = yb.astype(np.float64) - prep.y_shift
    bad = ~np.isfinite(Yc)
    if bad.any():
        row, col = (int(v[0]) for v in np.nonzero(bad))
        kind = "NaN" if np.isnan(Yc[row, col]) else "inf"
        raise DataError(f"y contains {kind} at row {start + a + row}" + (f", target {col}" if T > 1 else ""))
    return Yc


def encode_labels(classes: np.ndarray, y: Any, first_row: int) -> np.ndarray:
    """Class indices of labels ``y`` (rows,), or one line naming an unknown label and its row."""
    yb = np.asarray(y)
    if yb.ndim == 2 and yb.shape[1] == 1:
        yb = yb[:, 0]
    if yb.ndim != 1:
        raise DataError(f"y must be 1-D class labels for categorical experts; got shape {yb.shape}")
    if yb.dtype.kind == "f" and not np.isfinite(yb).all():
        row = int(np.flatnonzero(~np.isfinite(yb))[0])
        raise DataError(f"y contains {'NaN' if np.isnan(yb[row]) else 'inf'} at row {first_row + row}")
    try:
        idx = np.searchsorted(classes, yb)
    except TypeError:
        raise DataError(f"y's labels ({yb.dtype}) cannot be compared with the classes {list(classes)}") from None
    ok = idx < len(classes)
    ok[ok] = classes[idx[ok]] == yb[ok]
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        raise DataError(f"y has label {yb[row]!r} at row {first_row + row}, which is not one of the classes "
                        f"{list(classes)}")
    return idx


def checked_weights(weights: np.ndarray | None, a: int, b: int, start: int) -> np.ndarray:
    if weights is None:
        return np.ones(b - a)
    w = np.asarray(weights[a:b], dtype=np.float64)
    bad = ~(np.isfinite(w) & (w >= 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"sample_weight is {'negative' if w[i] < 0 else 'not finite'} at row {start + a + i} "
                        f"({float(w[i])})")
    return w


def gate_log_proba(prep: Prepared, Xt: np.ndarray) -> np.ndarray:
    """``log g_k(x)`` (rows, K)."""
    return log_softmax(Xt @ prep.gate)


def residuals(prep: Prepared, Xt: np.ndarray, Yc: np.ndarray) -> np.ndarray:
    """``y − (W_k x + b_k)`` of every row and expert (rows, K, T)."""
    m, K, T = Xt.shape[0], prep.n_experts, prep.n_out
    return Yc[:, None, :] - (Xt @ prep.experts).reshape(m, K, T)


def gaussian_log_density(prep: Prepared, R: np.ndarray) -> np.ndarray:
    """``log N(y | W_k x + b_k, Σ_k)`` (rows, K) from the residuals ``R``."""
    if prep.covariance_type == "full":
        Z = np.einsum("mkt,kts->mks", R, prep.whiten, optimize=True)
    else:
        Z = R * prep.whiten[None]
    return prep.const[None, :] - 0.5 * np.einsum("mks,mks->mk", Z, Z)


def categorical_log_proba(prep: Prepared, Xt: np.ndarray) -> np.ndarray:
    """``log p_k(c | x)`` of every class (rows, K, C)."""
    m, K, C = Xt.shape[0], prep.n_experts, prep.n_out
    L = (Xt @ prep.experts).reshape(m, K, C)
    L -= L.max(axis=2, keepdims=True)
    L -= np.log(np.exp(L).sum(axis=2, keepdims=True))
    return L


def _packed(q: int) -> tuple[np.ndarray, np.ndarray]:
    """Upper-triangle index pairs of a q × q symmetric matrix (row-major)."""
    return np.triu_indices(q)


def _unpack(packed: np.ndarray, q: int) -> np.ndarray:
    """(…, q(q+1)/2) upper triangles → (…, q, q) symmetric matrices."""
    i, j = _packed(q)
    out = np.zeros(packed.shape[:-1] + (q, q))
    out[..., i, j] = packed
    out[..., j, i] = packed
    return out


def new_accumulator(prep: Prepared) -> dict[str, Any]:
    K, q, T = prep.n_experts, prep.gate.shape[0], prep.n_out
    acc: dict[str, Any] = {"n_rows": 0.0, "weight_sum": 0.0, "log_likelihood": 0.0,
                           "resp_sum": np.zeros(K), "xx": np.zeros((K, q, q)), "gate_grad": np.zeros((q, K))}
    pairs = len(hessian_pairs(K)[0]) if prep.newton else 0
    acc["gate_hessian"] = np.zeros((pairs, q, q))
    if prep.expert == "gaussian":
        acc["xr"] = np.zeros((K, q, T))
        acc["rr"] = np.zeros((K, T, T) if prep.covariance_type == "full" else (K, T))
    else:
        acc["expert_grad"] = np.zeros((K, q, T))
    return acc


def _products(Xt: np.ndarray) -> np.ndarray:
    """The upper triangle of x̃x̃ᵀ (row-major) of every row: one product per row, one row per column.

    Weighting them by responsibilities is then one (F × rows) · (rows × K)
    GEMM: half the flops of forming ``Σ h_k x̃x̃ᵀ`` in full and no
    (rows × K × (p+1)) temporary; building them row by row of the
    transposed block keeps every multiply contiguous.
    """
    XtT = np.ascontiguousarray(Xt.T)
    q, m = XtT.shape
    FT = np.empty((q * (q + 1) // 2, m))
    off = 0
    for i in range(q):
        np.multiply(XtT[i:], XtT[i], out=FT[off:off + q - i])
        off += q - i
    return FT


def e_step_sums(prep: Prepared, part: Partition,
                responsibilities: Callable[[Partition, np.ndarray], np.ndarray] | None = None) -> dict[str, Any]:
    """Statistics of one partition (see the module docstring).

    ``responsibilities(rows, log_joint)``, when given, replaces the posterior
    (initialisation's hard or random assignments); the log-likelihood is
    still the model's.
    """
    if part.y is None:
        raise DataError("the mixture of experts needs targets y; none came with the data")
    X, y = part.X, part.y
    n = int(np.shape(X)[0])
    if int(np.shape(y)[0]) != n:
        raise DataError(f"y has {np.shape(y)[0]} rows in the partition starting at row {part.start}, "
                        f"X has {n}")
    acc = new_accumulator(prep)
    K, q = prep.n_experts, prep.gate.shape[0]
    step = prep.rows()
    newton = prep.newton and K > 1
    pk, pl = hessian_pairs(K)
    packed = np.zeros((K, q * (q + 1) // 2))
    hessian = np.zeros((len(pk), q * (q + 1) // 2)) if newton else None
    for a in range(0, n, step):
        b = min(n, a + step)
        m = b - a
        Xt = shifted_block(prep, X, a, b, part.start)
        w = checked_weights(part.weights, a, b, part.start)
        log_gate = gate_log_proba(prep, Xt)
        if prep.expert == "gaussian":
            R = residuals(prep, Xt, gaussian_targets(prep, y, a, b, part.start))
            log_expert = gaussian_log_density(prep, R)
        else:
            idx = encode_labels(prep.classes, y[a:b], part.start + a)
            log_p = categorical_log_proba(prep, Xt)
            log_expert = log_p[np.arange(m), :, idx]
        L = log_gate + log_expert
        mx = L.max(axis=1, keepdims=True)
        ll = np.log(np.exp(L - mx).sum(axis=1)) + mx[:, 0]
        if responsibilities is None:
            h = np.exp(L - ll[:, None])
        else:
            h = responsibilities(part.rows(a, b), L)
        hw = h * w[:, None]
        acc["n_rows"] += m
        acc["weight_sum"] += float(w.sum())
        acc["log_likelihood"] += float(w @ ll)
        acc["resp_sum"] += hw.sum(axis=0)
        FT = _products(Xt)
        packed += (FT @ hw).T
        g = np.exp(log_gate)
        acc["gate_grad"] += Xt.T @ (hw - w[:, None] * g)
        if newton:
            gw = g[:, :K - 1] * w[:, None]
            coef = np.where(pk == pl, gw[:, pk], 0.0) - gw[:, pk] * g[:, pl]
            hessian += (FT @ coef).T
        if prep.expert == "gaussian":
            T = prep.n_out
            HR = hw[:, :, None] * R
            acc["xr"] += (Xt.T @ HR.reshape(m, K * T)).reshape(q, K, T).transpose(1, 0, 2)
            if prep.covariance_type == "full":
                acc["rr"] += np.einsum("mkt,mks->kts", HR, R)
            else:
                acc["rr"] += (HR * R).sum(axis=0)
        else:
            C = prep.n_out
            D = -np.exp(log_p)
            D[np.arange(m), :, idx] += 1.0
            D *= hw[:, :, None]
            acc["expert_grad"] += (Xt.T @ D.reshape(m, K * C)).reshape(q, K, C).transpose(1, 0, 2)
    acc["xx"] = _unpack(packed, q)
    if hessian is not None:
        acc["gate_hessian"] = _unpack(hessian, q)
    return acc


def log_likelihood_rows(prep: Prepared, X: np.ndarray, y: Any, start: int = 0) -> np.ndarray:
    """``log p(y_i | x_i)`` of every row."""
    n = int(np.shape(X)[0])
    out = np.empty(n)
    step = prep.rows()
    for a in range(0, n, step):
        b = min(n, a + step)
        Xt = shifted_block(prep, X, a, b, start)
        log_gate = gate_log_proba(prep, Xt)
        if prep.expert == "gaussian":
            L = log_gate + gaussian_log_density(prep, residuals(prep, Xt, gaussian_targets(prep, y, a, b, start)))
        else:
            idx = encode_labels(prep.classes, np.asarray(y)[a:b], start + a)
            L = log_gate + categorical_log_proba(prep, Xt)[np.arange(b - a), :, idx]
        mx = L.max(axis=1, keepdims=True)
        out[a:b] = np.log(np.exp(L - mx).sum(axis=1)) + mx[:, 0]
    return out


def predict_rows(prep: Prepared, X: np.ndarray, what: str) -> np.ndarray:
    """Per-row outputs without targets.

    ``"gate"``: g(x) (rows, K); ``"mean"``: E[y | x] (rows, T), Gaussian
    experts; ``"proba"``: p(c | x) (rows, C), categorical experts.
    """
    n = int(np.shape(X)[0])
    width = prep.n_experts if what == "gate" else prep.n_out
    out = np.empty((n, width))
    step = prep.rows()
    for a in range(0, n, step):
        b = min(n, a + step)
        Xt = shifted_block(prep, X, a, b, 0)
        g = np.exp(gate_log_proba(prep, Xt))
        if what == "gate":
            out[a:b] = g
        elif what == "mean":
            pred = (Xt @ prep.experts).reshape(b - a, prep.n_experts, prep.n_out)
            out[a:b] = np.einsum("mk,mkt->mt", g, pred) + prep.y_shift
        else:
            out[a:b] = np.einsum("mk,mkc->mc", g, np.exp(categorical_log_proba(prep, Xt)))
    return out
