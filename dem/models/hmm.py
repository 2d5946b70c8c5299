"""Hidden Markov models: parameters, sufficient statistics, E-step, M-step, decoding.

Pure numpy; no Dask. Three emission families, with hmmlearn's parameter
conventions and M-step (hmmlearn 0.3.3, ``hmmlearn/hmm.py``):

* :class:`GaussianHMMModel` — one Gaussian per state, covariance ``full``,
  ``diag``, ``spherical`` or ``tied``; ``covars`` are stored as hmmlearn stores
  ``_covars_`` (``(K, D, D)``, ``(K, D)``, ``(K,)``, ``(D, D)``).
* :class:`CategoricalHMMModel` — one categorical distribution over
  ``n_features`` symbols per state.
* :class:`GMMHMMModel` — a mixture of ``n_mix`` Gaussians per state
  (``tied`` means one covariance per state, shared by its mixture components).

A partition's rows are whole sequences; the E-step receives their lengths as
the block's side data (``PartitionedData.w_refs``), so the engine needs no
notion of sequences. Forward–backward runs on many sequences at once
(:mod:`dem.models.hmm_lattice`).

Statistics
----------
``n_rows`` and ``weight_sum`` both count time steps, so the engine's "mean
log-likelihood" is the log-likelihood per step; the estimators scale ``tol``
by the number of steps so that convergence is hmmlearn's test on the total.
All accumulation is float64. Gaussian moments are taken about a shift every
worker knows — the mean of the current state (or mixture-component) means —
never as raw ``Σ γ x xᵀ``, so large offsets in the data do not cancel away;
the M-step re-expresses them about whatever centre hmmlearn's formula uses.

Differences from hmmlearn, all deliberate
-----------------------------------------
* All statistics are accumulated whatever ``params`` says. hmmlearn 0.3.3
  skips ``post``/``obs`` when ``'m'`` is not in ``params``, which makes its
  covariance update divide by ``1e-5`` instead of the state occupancy when
  ``'c'`` is; dem's update is the intended one. With ``'m'`` in ``params``
  (the default) the two agree.
* A covariance that is not positive definite raises
  :class:`~dem.errors.CollapsedComponentError` naming the state, instead of
  hmmlearn's retry with ``1e-7`` on the diagonal.
* A sequence or observation that has probability zero under the current
  parameters raises :class:`~dem.errors.DataError` naming its rows, instead of
  producing NaN.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from scipy import linalg
from scipy.special import logsumexp

from dem.errors import CollapsedComponentError, DataError
from dem.models import hmm_lattice as lattice
from dem.models.base import SufficientStats

COVARIANCE_TYPES: tuple[str, ...] = ("spherical", "diag", "full", "tied")
DECODER_ALGORITHMS: tuple[str, ...] = ("viterbi", "map")

_LOG_2PI = math.log(2.0 * math.pi)

#: Rows per block for emission densities and moments: (block × D) and
#: (block × K) temporaries stay in cache.
ROW_BLOCK = 4096


# -- parameters --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GaussianHMMParams:
    """Parameters of a Gaussian HMM (float64 arrays).

    Attributes
    ----------
    startprob : (K,)
    transmat : (K, K)
    means : (K, D)
    covars : (K, D, D) full, (D, D) tied, (K, D) diag, (K,) spherical
    """

    startprob: np.ndarray
    transmat: np.ndarray
    means: np.ndarray
    covars: np.ndarray


@dataclasses.dataclass(frozen=True)
class CategoricalHMMParams:
    """Parameters of a categorical HMM: ``emissionprob`` is (K, n_symbols)."""

    startprob: np.ndarray
    transmat: np.ndarray
    emissionprob: np.ndarray


@dataclasses.dataclass(frozen=True)
class GMMHMMParams:
    """Parameters of an HMM with Gaussian-mixture emissions.

    Attributes
    ----------
    weights : (K, M) mixture weights per state
    means : (K, M, D)
    covars : (K, M, D, D) full, (K, D, D) tied, (K, M, D) diag, (K, M) spherical
    """

    startprob: np.ndarray
    transmat: np.ndarray
    weights: np.ndarray
    means: np.ndarray
    covars: np.ndarray


# -- statistics --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HMMStats(SufficientStats):
    """Statistics every HMM shares.

    ``n_rows`` and ``weight_sum`` count time steps; ``n_sequences`` counts
    sequences; ``start`` sums the first-step posteriors; ``trans`` the
    expected transition counts.
    """

    n_sequences: float
    start: np.ndarray
    trans: np.ndarray


@dataclasses.dataclass(frozen=True)
class GaussianHMMStats(HMMStats):
    """Gaussian emission moments about the shift ``c`` (mean of the state means).

    ``post[k] = Σ γ_k``; ``first_moment[k] = Σ γ_k (x − c)``;
    ``second_moment[k]`` is ``Σ γ_k (x − c)²`` per feature (diag, spherical)
    or ``Σ γ_k (x − c)(x − c)ᵀ`` packed as the upper triangle (full, tied).
    """

    post: np.ndarray
    first_moment: np.ndarray
    second_moment: np.ndarray


@dataclasses.dataclass(frozen=True)
class CategoricalHMMStats(HMMStats):
    """``obs[k, s] = Σ_t γ_k(t) [x_t = s]``."""

    obs: np.ndarray


@dataclasses.dataclass(frozen=True)
class GMMHMMStats(HMMStats):
    """Mixture-emission moments about the shift ``c`` (mean of all component means).

    ``post[k] = Σ γ_k``; ``post_mix[k, m] = Σ γ_km``;
    ``first_moment[k, m] = Σ γ_km (x − c)``; ``second_moment`` is
    ``Σ γ_km (x − c)(x − c)ᵀ`` packed (full, (K, M, P)), its diagonal (diag,
    (K, M, D)), its trace (spherical, (K, M)) or ``Σ γ_k (x − c)(x − c)ᵀ``
    packed per state (tied, (K, P)).
    """

    post: np.ndarray
    post_mix: np.ndarray
    first_moment: np.ndarray
    second_moment: np.ndarray


# -- Gaussian densities ------------------------------------------------------


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

        Raises
        ------
        CollapsedComponentError
            A covariance is not positive definite (or a variance not positive).
        """
        C, D = means.shape
        advice = "increase covars_prior or min_covar, decrease n_components, or scale the data"
        if kind == "full":
            factor = np.empty((C, D, D))
            log_det = np.empty(C)
            for c in range(C):
                try:
                    chol = linalg.cholesky(covars[c], lower=True)
                except (linalg.LinAlgError, ValueError):
                    raise CollapsedComponentError(
                        f"{names[c]}'s covariance is not positive definite; {advice}") from None
                factor[c] = linalg.solve_triangular(chol, np.eye(D), lower=True).T
                log_det[c] = -np.log(np.diagonal(chol)).sum()
        else:
            bad = np.flatnonzero(~(covars > 0).reshape(C, -1).all(axis=1))
            if bad.size:
                raise CollapsedComponentError(
                    f"{names[int(bad[0])]} has a zero or negative variance; {advice}")
            factor = 1.0 / covars
            log_det = (0.5 * np.log(factor).sum(axis=1) if kind == "diag"
                       else 0.5 * D * np.log(factor))
        return cls(kind, means - shift, factor, log_det - 0.5 * D * _LOG_2PI)

    def log_density(self, Xc: np.ndarray) -> np.ndarray:
        """``log N(x | μ_c, Σ_c)`` of centred rows ``Xc`` (n, D) → (n, C)."""
        C = self.means.shape[0]
        out = np.empty((Xc.shape[0], C))
        for c in range(C):
            d = Xc - self.means[c]
            if self.kind == "full":
                y = d @ self.factor[c]
                maha = np.einsum("ij,ij->i", y, y)
            elif self.kind == "diag":
                maha = (d * d) @ self.factor[c]
            else:
                maha = np.einsum("ij,ij->i", d, d) * self.factor[c]
            out[:, c] = self.log_norm[c] - 0.5 * maha
        return out


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


def _per_state(value: Any, extra_dims: int) -> Any:
    """A (K,) prior as (K, 1, …) so it broadcasts against per-state arrays."""
    v = np.asarray(value, dtype=np.float64)
    return v.reshape(v.shape + (1,) * extra_dims) if v.ndim == 1 else v


# -- the shared HMM machinery -----------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class HMMModel:
    """What every emission family shares: transitions, E-step sweep, decoding.

    Parameters
    ----------
    n_components : number of hidden states
    params : which parameters the M-step updates (hmmlearn letters)
    startprob_prior, transmat_prior : Dirichlet priors (scalars or arrays)
    """

    n_components: int = 1
    params: str = "st"
    startprob_prior: Any = 1.0
    transmat_prior: Any = 1.0

    stats_cls = HMMStats

    # -- to be provided by an emission family -------------------------------

    def check_block(self, params: Any, X: np.ndarray, row_offset: int) -> np.ndarray:
        """The block as the working array, or a DataError naming the bad row."""
        raise NotImplementedError

    def prepare(self, params: Any) -> Any:
        """Per-parameter quantities every batch reuses."""
        raise NotImplementedError

    def log_emission(self, prep: Any, Xb: np.ndarray) -> np.ndarray:
        """``log p(x | state)`` of rows ``Xb``, (n, K)."""
        raise NotImplementedError

    def _new_emission_acc(self, params: Any) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _accumulate(self, prep: Any, Xb: np.ndarray, gamma: np.ndarray, acc: dict) -> None:
        raise NotImplementedError

    def _m_step_emission(self, stats: Any, params: Any) -> dict[str, np.ndarray]:
        raise NotImplementedError

    # -- E-step -------------------------------------------------------------

    def _sweep(self, params: Any, X: np.ndarray, lengths: Any, row_offset: int):
        """Yield ``(batch, working rows, log-emissions)`` for each batch of the block."""
        Xw = self.check_block(params, X, row_offset)
        lengths = block_lengths(lengths, Xw.shape[0], row_offset)
        prep = self.prepare(params)
        for batch in lattice.batches(lengths, self.n_components):
            Xb = Xw[batch.rows]
            logB = self.log_emission(prep, Xb)
            _check_possible(logB, batch, row_offset)
            yield batch, prep, Xb, logB

    def e_step(self, params: Any, X: np.ndarray, lengths: np.ndarray | None = None,
               row_offset: int = 0) -> HMMStats:
        """Statistics of one partition of whole sequences under ``params``.

        Parameters
        ----------
        X : (n_rows, ...) the partition's observations, sequence after sequence
        lengths : (n_sequences,) lengths of its sequences (None: one sequence)
        row_offset : global index of the first row (for error messages)

        Raises
        ------
        DataError
            Bad values (NaN, out-of-range symbols), lengths that do not match
            the block, or a sequence with probability zero.
        """
        K = self.n_components
        acc: dict[str, Any] = {"n_rows": 0.0, "weight_sum": 0.0, "log_likelihood": 0.0,
                               "n_sequences": 0.0, "start": np.zeros(K), "trans": np.zeros((K, K))}
        acc.update(self._new_emission_acc(params))
        for batch, prep, Xb, logB in self._sweep(params, X, lengths, row_offset):
            fb = lattice.forward_backward(params.startprob, params.transmat, logB, batch)
            _check_finite(fb.log_likelihood, batch, row_offset)
            acc["n_rows"] += Xb.shape[0]
            acc["weight_sum"] += Xb.shape[0]
            acc["n_sequences"] += batch.n
            acc["log_likelihood"] += fb.log_likelihood.sum()
            acc["start"] += fb.start
            acc["trans"] += fb.trans
            self._accumulate(prep, Xb, fb.posteriors, acc)
        return self.stats_cls(**{k: (float(v) if np.ndim(v) == 0 else v) for k, v in acc.items()})

    # -- M-step -------------------------------------------------------------

    def m_step(self, stats: HMMStats, params: Any) -> Any:
        """New parameters from summed statistics, as hmmlearn's ``_do_mstep``."""
        startprob, transmat = params.startprob, params.transmat
        if "s" in self.params:
            # A prior below 1 can make counts negative: the constrained maximum
            # sets those to zero. States that start with probability zero stay so.
            s = np.maximum(self.startprob_prior - 1.0 + stats.start, 0.0)
            s = np.where(startprob == 0, 0.0, s)
            startprob = s / s.sum()
        if "t" in self.params:
            t = np.maximum(self.transmat_prior - 1.0 + stats.trans, 0.0)
            t = np.where(transmat == 0, 0.0, t)
            rows = t.sum(axis=1)
            rows[rows == 0] = 1.0  # a state never left keeps a zero row, as in hmmlearn
            transmat = t / rows[:, None]
        return dataclasses.replace(params, startprob=startprob, transmat=transmat,
                                   **self._m_step_emission(stats, params))

    def diagnose(self, stats: HMMStats) -> list[str]:
        """Notes for the fit's history: states that were never left."""
        if "t" not in self.params:
            return []
        zero = np.flatnonzero(np.asarray(stats.trans).sum(axis=1) <= 0)
        return [f"state {int(k)} was never left: its row of transmat_ becomes zero" for k in zero]

    # -- inference ----------------------------------------------------------

    def score_and_posteriors(self, params: Any, X: np.ndarray, lengths: Any = None,
                             row_offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Log-likelihood of each sequence (n_sequences,) and state posteriors (n_rows, K)."""
        n = _n_rows(X)
        lengths = block_lengths(lengths, n, row_offset)
        ll = np.empty(len(lengths))
        post = np.empty((n, self.n_components))
        for batch, _, _, logB in self._sweep(params, X, lengths, row_offset):
            fb = lattice.forward_backward(params.startprob, params.transmat, logB, batch)
            _check_finite(fb.log_likelihood, batch, row_offset)
            ll[batch.sequences] = fb.log_likelihood
            post[batch.rows] = fb.posteriors
        return ll, post

    def score(self, params: Any, X: np.ndarray, lengths: Any = None, row_offset: int = 0) -> np.ndarray:
        """Log-likelihood of each sequence, (n_sequences,)."""
        n = _n_rows(X)
        lengths = block_lengths(lengths, n, row_offset)
        ll = np.empty(len(lengths))
        for batch, _, _, logB in self._sweep(params, X, lengths, row_offset):
            fb = lattice.forward_backward(params.startprob, params.transmat, logB, batch)
            ll[batch.sequences] = fb.log_likelihood
        return ll

    def decode(self, params: Any, X: np.ndarray, lengths: Any = None, algorithm: str = "viterbi",
               row_offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Per-sequence log-probability (n_sequences,) and state of every row (n_rows,).

        ``viterbi``: the most probable path and its log-probability.
        ``map``: the most probable state of each step, and — as hmmlearn 0.3.3
        computes it — the sum over steps of the largest posterior (not a log).
        """
        n = _n_rows(X)
        lengths = block_lengths(lengths, n, row_offset)
        if algorithm == "map":
            _, post = self.score_and_posteriors(params, X, lengths, row_offset)
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            return np.add.reduceat(post.max(axis=1), starts), post.argmax(axis=1)
        if algorithm != "viterbi":
            raise ValueError(f"unknown decoder algorithm {algorithm!r}")
        with np.errstate(divide="ignore"):
            log_start, log_trans = np.log(params.startprob), np.log(params.transmat)
        log_prob = np.empty(len(lengths))
        states = np.empty(n, dtype=np.int64)
        for batch, _, _, logB in self._sweep(params, X, lengths, row_offset):
            lp, path = lattice.viterbi(log_start, log_trans, logB, batch)
            log_prob[batch.sequences] = lp
            states[batch.rows] = path
        return log_prob, states

    def predict_block(self, shared: tuple[Any, str, bool], X: np.ndarray, lengths: Any,
                      row_offset: int) -> tuple[np.ndarray, ...]:
        """States (and posteriors) of one partition, for writing predictions to Zarr.

        ``shared`` is ``(params, algorithm, with_posteriors)``. Returns
        ``(states int32 (n_rows,), log_prob (n_sequences,)[, posteriors (n_rows, K)])``.
        """
        params, algorithm, with_posteriors = shared
        log_prob, states = self.decode(params, X, lengths, algorithm, row_offset)
        out: tuple[np.ndarray, ...] = (states.astype(np.int32), log_prob)
        if with_posteriors:
            _, post = self.score_and_posteriors(params, X, lengths, row_offset)
            out += (post,)
        return out

    def score_block(self, params: Any, X: np.ndarray, lengths: Any, row_offset: int) -> np.ndarray:
        """Log-likelihood of each sequence of one partition (a block function)."""
        return self.score(params, X, lengths, row_offset)


def block_lengths(lengths: Any, n_rows: int, row_offset: int = 0) -> np.ndarray:
    """Validated int64 lengths of a block's sequences (None: the block is one sequence)."""
    if lengths is None:
        return np.array([n_rows], dtype=np.int64)
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer):
        raise DataError(f"sequence lengths must be a 1-D integer array; got shape "
                        f"{lengths.shape} dtype {lengths.dtype}")
    if lengths.size and lengths.min() <= 0:
        i = int(np.flatnonzero(lengths <= 0)[0])
        raise DataError(f"sequence {i} of the block at row {row_offset} has length "
                        f"{int(lengths[i])}; sequences must have at least one step")
    if int(lengths.sum()) != n_rows:
        raise DataError(f"sequence lengths sum to {int(lengths.sum())} but the block at row "
                        f"{row_offset} has {n_rows} rows")
    return lengths.astype(np.int64, copy=False)


def _n_rows(X: Any) -> int:
    return int(np.shape(X)[0])


def _check_possible(logB: np.ndarray, batch: lattice.Batch, row_offset: int) -> None:
    top = logB.max(axis=1)
    if np.isfinite(top).all():
        return
    bad = int(np.flatnonzero(~np.isfinite(top))[0])
    row = row_offset + int(batch.rows[bad])
    if np.isnan(top[bad]):
        raise DataError(f"the emission log-probability of row {row} is NaN")
    raise DataError(f"the observation at row {row} has probability zero under every state "
                    "(check emissionprob_ / the symbols, or scale the data)")


def _check_finite(ll: np.ndarray, batch: lattice.Batch, row_offset: int) -> None:
    if np.isfinite(ll).all():
        return
    i = int(np.flatnonzero(~np.isfinite(ll))[0])
    first = int(batch.rows[int(np.concatenate([[0], np.cumsum(batch.lengths)])[i])])
    raise DataError(
        f"the sequence at rows {row_offset + first}–{row_offset + first + int(batch.lengths[i]) - 1} "
        "has probability zero under the current parameters (a zero in startprob_/transmat_ "
        "forbids every path that explains it)")


# -- Gaussian emissions ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _GaussianPrep:
    shift: np.ndarray
    gaussians: Gaussians


def _finite_block(X: Any, row_offset: int) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise DataError(f"X must be 2-D (step, feature); got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise DataError(f"X must hold real numbers; got dtype {X.dtype}")
    ok = np.isfinite(X)
    if not ok.all():
        row, col = (int(v[0]) for v in np.nonzero(~ok))
        what = "NaN" if np.isnan(X[row, col]) else "inf"
        raise DataError(f"X contains {what} at row {row_offset + row}, feature {col}")
    return X


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianHMMModel(HMMModel):
    """HMM with one Gaussian per state (hmmlearn's ``GaussianHMM``).

    Parameters (beyond :class:`HMMModel`)
    -------------------------------------
    covariance_type : {"spherical", "diag", "full", "tied"}
    means_prior, means_weight : Normal prior on the means (scalars, or
        ``means_prior`` (K, D) and ``means_weight`` (K,))
    covars_prior, covars_weight : inverse-gamma (diag, spherical) or
        inverse-Wishart (full, tied) prior, broadcast as hmmlearn does
    """

    params: str = "stmc"
    covariance_type: str = "diag"
    means_prior: Any = 0.0
    means_weight: Any = 0.0
    covars_prior: Any = 1e-2
    covars_weight: Any = 1.0

    stats_cls = GaussianHMMStats

    def check_block(self, params: GaussianHMMParams, X: np.ndarray, row_offset: int) -> np.ndarray:
        X = _finite_block(X, row_offset)
        if X.shape[1] != params.means.shape[1]:
            raise DataError(f"X has {X.shape[1]} features but the model has {params.means.shape[1]}")
        return X

    def prepare(self, params: GaussianHMMParams) -> _GaussianPrep:
        K, D = params.means.shape
        shift = params.means.mean(axis=0)
        ct = self.covariance_type
        names = [f"state {k}" for k in range(K)]
        if ct == "tied":
            covs, kind = np.repeat(np.asarray(params.covars)[None], K, axis=0), "full"
        else:
            covs, kind = np.asarray(params.covars), ct
        return _GaussianPrep(shift, Gaussians.from_covariances(params.means, covs, kind, shift, names))

    def log_emission(self, prep: _GaussianPrep, Xb: np.ndarray) -> np.ndarray:
        out = np.empty((Xb.shape[0], self.n_components))
        for a in range(0, Xb.shape[0], ROW_BLOCK):
            Xc = np.asarray(Xb[a : a + ROW_BLOCK], dtype=np.float64) - prep.shift
            out[a : a + ROW_BLOCK] = prep.gaussians.log_density(Xc)
        return out

    def _second_width(self, D: int) -> int:
        return D * (D + 1) // 2 if self.covariance_type in ("full", "tied") else D

    def _new_emission_acc(self, params: GaussianHMMParams) -> dict[str, np.ndarray]:
        K, D = params.means.shape
        return {"post": np.zeros(K), "first_moment": np.zeros((K, D)),
                "second_moment": np.zeros((K, self._second_width(D)))}

    def _accumulate(self, prep: _GaussianPrep, Xb: np.ndarray, gamma: np.ndarray, acc: dict) -> None:
        packed = self.covariance_type in ("full", "tied")
        for a in range(0, Xb.shape[0], ROW_BLOCK):
            Xc = np.asarray(Xb[a : a + ROW_BLOCK], dtype=np.float64) - prep.shift
            g = gamma[a : a + ROW_BLOCK]
            acc["post"] += g.sum(axis=0)
            acc["first_moment"] += g.T @ Xc
            if packed:
                acc["second_moment"] += g.T @ packed_outer(Xc)
            else:
                acc["second_moment"] += g.T @ (Xc * Xc)

    def _m_step_emission(self, stats: GaussianHMMStats, params: GaussianHMMParams) -> dict[str, np.ndarray]:
        # hmmlearn's GaussianHMM._do_mstep (Huang, Acero & Hon, pp. 443-445),
        # with Σγx and Σγxxᵀ rebuilt from the moments about the shift c.
        K, D = params.means.shape
        c = params.means.mean(axis=0)
        post = np.asarray(stats.post)
        F = np.asarray(stats.first_moment)
        denom = post[:, None]
        mw = _per_state(self.means_weight, 1)
        mp = np.asarray(self.means_prior, dtype=np.float64)
        means = params.means
        if "m" in self.params:
            obs = F + denom * c
            means = (mw * mp + obs) / (mw + denom)
        covars = params.covars
        if "c" in self.params:
            meandiff = means - mp
            d = means - c  # the new means about the shift
            cp = np.asarray(self.covars_prior, dtype=np.float64)
            if self.covariance_type in ("spherical", "diag"):
                # Σγ(x−μ)² = Σγ(x−c)² − 2(μ−c)Σγ(x−c) + (μ−c)²Σγ
                sq = np.asarray(stats.second_moment) - 2.0 * d * F + denom * d * d
                c_n = mw * meandiff**2 + sq
                c_d = np.maximum(_per_state(self.covars_weight, 1) - 1.0, 0.0) + denom
                covars = (cp + c_n) / np.maximum(c_d, 1e-5)
                if self.covariance_type == "spherical":
                    covars = covars.mean(axis=1)
            else:
                S = unpack_symmetric(np.asarray(stats.second_moment), D)
                scatter = (S - F[:, :, None] * d[:, None, :] - d[:, :, None] * F[:, None, :]
                           + post[:, None, None] * d[:, :, None] * d[:, None, :])
                c_n = _per_state(self.means_weight, 2) * (meandiff[:, :, None] * meandiff[:, None, :]) + scatter
                cvweight = np.maximum(np.asarray(self.covars_weight, dtype=np.float64) - D, 0.0)
                if self.covariance_type == "tied":
                    covars = (cp + c_n.sum(axis=0)) / (cvweight + post.sum())
                else:
                    covars = (cp + c_n) / (_per_state(cvweight, 2) + post[:, None, None])
        return {"means": means, "covars": covars}


# -- categorical emissions ---------------------------------------------------


def check_symbols(X: Any, n_symbols: int | None, row_offset: int = 0) -> np.ndarray:
    """Symbols as a 1-D integer array, or a DataError naming the first bad row.

    Accepts shape (n,) or hmmlearn's (n, 1).
    """
    X = np.asarray(X)
    if X.ndim == 2 and X.shape[1] == 1:
        X = X[:, 0]
    if X.ndim != 1:
        raise DataError(f"categorical observations must have shape (n_samples, 1) or (n_samples,); "
                        f"got {X.shape}")
    if not np.issubdtype(X.dtype, np.integer):
        raise DataError(f"categorical observations must be integer symbols; got dtype {X.dtype}")
    if X.size:
        if X.min() < 0:
            row = int(np.flatnonzero(X < 0)[0])
            raise DataError(f"symbol at row {row_offset + row} is negative ({int(X[row])}); "
                            "symbols are 0, 1, …, n_features − 1")
        if n_symbols is not None and X.max() >= n_symbols:
            row = int(np.flatnonzero(X >= n_symbols)[0])
            raise DataError(f"symbol at row {row_offset + row} is {int(X[row])}, but the model "
                            f"only emits symbols 0…{n_symbols - 1} (n_features={n_symbols})")
    return X


@dataclasses.dataclass(frozen=True, eq=False)
class CategoricalHMMModel(HMMModel):
    """HMM with categorical emissions (hmmlearn's ``CategoricalHMM``).

    ``emissionprob_prior`` is the Dirichlet prior of each state's emission row.
    """

    params: str = "ste"
    emissionprob_prior: Any = 1.0

    stats_cls = CategoricalHMMStats

    def check_block(self, params: CategoricalHMMParams, X: np.ndarray, row_offset: int) -> np.ndarray:
        return check_symbols(X, params.emissionprob.shape[1], row_offset)

    def prepare(self, params: CategoricalHMMParams) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.ascontiguousarray(np.log(params.emissionprob).T)  # (S, K)

    def log_emission(self, prep: np.ndarray, Xb: np.ndarray) -> np.ndarray:
        return prep[Xb]

    def _new_emission_acc(self, params: CategoricalHMMParams) -> dict[str, np.ndarray]:
        return {"obs": np.zeros(params.emissionprob.shape)}

    def _accumulate(self, prep: np.ndarray, Xb: np.ndarray, gamma: np.ndarray, acc: dict) -> None:
        S = prep.shape[0]
        for k in range(self.n_components):
            acc["obs"][k] += np.bincount(Xb, weights=gamma[:, k], minlength=S)

    def _m_step_emission(self, stats: CategoricalHMMStats, params: CategoricalHMMParams) -> dict[str, np.ndarray]:
        if "e" not in self.params:
            return {}
        e = np.maximum(self.emissionprob_prior - 1.0 + np.asarray(stats.obs), 0.0)
        rows = e.sum(axis=1)
        rows[rows == 0] = 1.0
        return {"emissionprob": e / rows[:, None]}


# -- Gaussian-mixture emissions ----------------------------------------------


@dataclasses.dataclass(frozen=True)
class _GMMPrep:
    shift: np.ndarray
    gaussians: Gaussians       # K·M components, state-major
    log_weights: np.ndarray    # (K·M,)


@dataclasses.dataclass(frozen=True, eq=False)
class GMMHMMModel(HMMModel):
    """HMM with a mixture of ``n_mix`` Gaussians per state (hmmlearn's ``GMMHMM``).

    The priors are given at full shape, as hmmlearn's ``_fix_priors_shape``
    makes them: ``weights_prior`` (K, M), ``means_prior`` (K, M, D),
    ``means_weight`` (K, M), ``covars_prior`` (K, M, D, D) full / (K, D, D)
    tied / (K, M, D) diag / (K, M) spherical, ``covars_weight`` (K, M) full /
    (K,) tied / (K, M, D) diag / (K, M) spherical.

    Notes
    -----
    As in hmmlearn, the covariance statistics are taken about the means of
    the E-step (``Σ γ_km (x − μ_km^old)(x − μ_km^old)ᵀ``), while the prior term
    uses the new means. That is a generalised M-step (the means step is exact
    for any covariance, and the covariance step is exact for the old means),
    so the objective still cannot decrease.
    """

    params: str = "stmcw"
    n_mix: int = 1
    covariance_type: str = "diag"
    weights_prior: Any = 1.0
    means_prior: Any = 0.0
    means_weight: Any = 0.0
    covars_prior: Any = 0.0
    covars_weight: Any = 0.0

    stats_cls = GMMHMMStats

    def check_block(self, params: GMMHMMParams, X: np.ndarray, row_offset: int) -> np.ndarray:
        X = _finite_block(X, row_offset)
        if X.shape[1] != params.means.shape[2]:
            raise DataError(f"X has {X.shape[1]} features but the model has {params.means.shape[2]}")
        return X

    def prepare(self, params: GMMHMMParams) -> _GMMPrep:
        K, M, D = params.means.shape
        means = params.means.reshape(K * M, D)
        shift = means.mean(axis=0)
        ct = self.covariance_type
        names = [f"state {k}, mixture component {m}" for k in range(K) for m in range(M)]
        covars = np.asarray(params.covars)
        if ct == "tied":
            covs, kind = np.repeat(covars, M, axis=0), "full"
        elif ct == "full":
            covs, kind = covars.reshape(K * M, D, D), "full"
        elif ct == "diag":
            covs, kind = covars.reshape(K * M, D), "diag"
        else:
            covs, kind = covars.reshape(K * M), "spherical"
        with np.errstate(divide="ignore"):
            log_w = np.log(params.weights).reshape(K * M)
        return _GMMPrep(shift, Gaussians.from_covariances(means, covs, kind, shift, names), log_w)

    def _component_log(self, prep: _GMMPrep, Xc: np.ndarray) -> np.ndarray:
        """``log w_km + log N(x | μ_km, Σ_km)``, (n, K, M)."""
        lp = prep.gaussians.log_density(Xc) + prep.log_weights
        return lp.reshape(Xc.shape[0], self.n_components, self.n_mix)

    def log_emission(self, prep: _GMMPrep, Xb: np.ndarray) -> np.ndarray:
        out = np.empty((Xb.shape[0], self.n_components))
        with np.errstate(under="ignore", divide="ignore"):
            for a in range(0, Xb.shape[0], ROW_BLOCK):
                Xc = np.asarray(Xb[a : a + ROW_BLOCK], dtype=np.float64) - prep.shift
                out[a : a + ROW_BLOCK] = logsumexp(self._component_log(prep, Xc), axis=2)
        return out

    def _new_emission_acc(self, params: GMMHMMParams) -> dict[str, np.ndarray]:
        K, M, D = params.means.shape
        P = D * (D + 1) // 2
        second = {"full": (K, M, P), "tied": (K, P), "diag": (K, M, D), "spherical": (K, M)}
        return {"post": np.zeros(K), "post_mix": np.zeros((K, M)), "first_moment": np.zeros((K, M, D)),
                "second_moment": np.zeros(second[self.covariance_type])}

    def _accumulate(self, prep: _GMMPrep, Xb: np.ndarray, gamma: np.ndarray, acc: dict) -> None:
        K, M = self.n_components, self.n_mix
        ct = self.covariance_type
        for a in range(0, Xb.shape[0], ROW_BLOCK):
            Xc = np.asarray(Xb[a : a + ROW_BLOCK], dtype=np.float64) - prep.shift
            g = gamma[a : a + ROW_BLOCK]
            lp = self._component_log(prep, Xc)
            with np.errstate(under="ignore", invalid="ignore"):
                lp -= logsumexp(lp, axis=2, keepdims=True)
                g_mix = (g[:, :, None] * np.exp(lp)).reshape(-1, K * M)  # γ_km
            g_mix = np.nan_to_num(g_mix, copy=False)
            D = Xc.shape[1]
            acc["post"] += g.sum(axis=0)
            acc["post_mix"] += g_mix.sum(axis=0).reshape(K, M)
            acc["first_moment"] += (g_mix.T @ Xc).reshape(K, M, D)
            if ct == "full":
                acc["second_moment"] += (g_mix.T @ packed_outer(Xc)).reshape(K, M, -1)
            elif ct == "tied":
                acc["second_moment"] += g.T @ packed_outer(Xc)
            elif ct == "diag":
                acc["second_moment"] += (g_mix.T @ (Xc * Xc)).reshape(K, M, D)
            else:
                acc["second_moment"] += (g_mix.T @ np.einsum("ij,ij->i", Xc, Xc)).reshape(K, M)

    def _m_step_emission(self, stats: GMMHMMStats, params: GMMHMMParams) -> dict[str, np.ndarray]:
        # hmmlearn's GMMHMM._do_mstep; priors at full shape (see class notes).
        K, M, D = params.means.shape
        ct = self.covariance_type
        c = params.means.reshape(K * M, D).mean(axis=0)
        post = np.asarray(stats.post)
        post_mix = np.asarray(stats.post_mix)
        F = np.asarray(stats.first_moment)
        out: dict[str, np.ndarray] = {}
        weights = params.weights
        if "w" in self.params:
            alphas_minus_one = np.asarray(self.weights_prior, dtype=np.float64) - 1.0
            w_n = post_mix + alphas_minus_one
            w_d = (post + alphas_minus_one.sum(axis=1))[:, None]
            weights = out["weights"] = w_n / w_d
        lambdas = np.asarray(self.means_weight, dtype=np.float64)
        mus = np.asarray(self.means_prior, dtype=np.float64)
        means = params.means
        if "m" in self.params:
            m_n = lambdas[:, :, None] * mus + (F + post_mix[:, :, None] * c)
            m_d = post_mix + lambdas
            # An unused component (zero weight, no data) would get 0/0: its
            # mean is irrelevant, so hmmlearn divides by 1 (before the
            # covariances, where NaN would spread through tied covariances).
            m_d[(weights == 0) & (m_n == 0).all(axis=-1)] = 1.0
            means = out["means"] = m_n / m_d[:, :, None]
        if "c" in self.params:
            centered_means = means - mus
            d = params.means - c  # E-step means about the shift
            nus = np.asarray(self.covars_weight, dtype=np.float64)
            psis = np.asarray(self.covars_prior, dtype=np.float64)
            if ct in ("full", "tied"):
                # Σγ_km (x−μ_old)(x−μ_old)ᵀ = S − F dᵀ − d Fᵀ + N d dᵀ, all about c
                cross = (-F[..., :, None] * d[..., None, :] - d[..., :, None] * F[..., None, :]
                         + post_mix[..., None, None] * d[..., :, None] * d[..., None, :])
                dots = centered_means[..., :, None] * centered_means[..., None, :]
                if ct == "full":
                    c_n_stat = unpack_symmetric(np.asarray(stats.second_moment), D) + cross
                    c_n = np.transpose(psis, (0, 1, 3, 2)) + lambdas[:, :, None, None] * dots + c_n_stat
                    c_d = (post_mix + 1 + nus + D + 1)[:, :, None, None]
                else:
                    c_n_stat = unpack_symmetric(np.asarray(stats.second_moment), D) + cross.sum(axis=1)
                    c_n = np.einsum("ij,ijkl->ikl", lambdas, dots) + np.transpose(psis, (0, 2, 1)) + c_n_stat
                    c_d = (post + M + nus + D + 1)[:, None, None]
            elif ct == "diag":
                c_n_stat = np.asarray(stats.second_moment) - 2.0 * d * F + post_mix[:, :, None] * d * d
                c_n = lambdas[:, :, None] * centered_means**2 + 2 * nus + c_n_stat
                c_d = post_mix[:, :, None] + 1 + 2 * (psis + 1)
            else:
                c_n_stat = (np.asarray(stats.second_moment) - 2.0 * np.einsum("kmd,kmd->km", d, F)
                            + post_mix * np.einsum("kmd,kmd->km", d, d))
                c_n = lambdas * np.einsum("...i,...i", centered_means, centered_means) + 2 * nus + c_n_stat
                c_d = D * (post_mix + 1) + 2 * (psis + 1)
            out["covars"] = c_n / c_d
        return out


# -- sampling (hmmlearn's algorithm and random draws) -------------------------


def sample(params: Any, kind: str, covariance_type: str | None, n_samples: int,
           random_state: np.random.RandomState, currstate: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One sequence of ``n_samples`` steps, drawing exactly as hmmlearn's ``sample``.

    ``kind`` is ``gaussian``, ``categorical`` or ``gmm``; with the same
    ``RandomState`` the draws equal hmmlearn's.
    """
    K = params.startprob.shape[0]
    transmat_cdf = np.cumsum(params.transmat, axis=1)
    if currstate is None:
        currstate = int((np.cumsum(params.startprob) > random_state.rand()).argmax())
    if kind == "gaussian":
        D = params.means.shape[1]
        full = full_covariances(params.covars, covariance_type, K, D)

        def emit(s: int) -> Any:
            return random_state.multivariate_normal(params.means[s], full[s])
    elif kind == "categorical":
        cdf_e = np.cumsum(params.emissionprob, axis=1)

        def emit(s: int) -> Any:
            return [(cdf_e[s] > random_state.rand()).argmax()]
    else:
        _, M, D = params.means.shape

        def emit(s: int) -> Any:
            m = random_state.choice(M, p=params.weights[s])
            if covariance_type == "tied":
                cov = params.covars[s]
            elif covariance_type == "full":
                cov = params.covars[s, m]
            elif covariance_type == "diag":
                cov = np.diag(params.covars[s, m])
            else:
                cov = np.eye(D) * params.covars[s, m]
            return random_state.multivariate_normal(params.means[s, m], cov)

    states = [currstate]
    X = [emit(currstate)]
    for _ in range(n_samples - 1):
        currstate = int((transmat_cdf[currstate] > random_state.rand()).argmax())
        states.append(currstate)
        X.append(emit(currstate))
    return np.atleast_2d(X), np.array(states, dtype=int)
