"""Hidden Markov models: what every emission family shares.

Pure numpy; no Dask. hmmlearn's parameter conventions and M-step (hmmlearn
0.3.3, ``hmmlearn/hmm.py``). The emission families are modules of their own:
:mod:`dem.families.gaussian_hmm`, :mod:`dem.families.categorical_hmm` and
:mod:`dem.families.gmm_hmm`; each declares its estimator, which builds on
:class:`dem.estimator.sequence.HMMEstimator` (hmmlearn's API).

A partition's rows are whole sequences; the E-step reads their lengths from
:attr:`~dem.data.record.Partition.lengths`, so the engine needs no notion of
sequences. Forward–backward runs on many sequences at once
(:mod:`dem.families.hmm_lattice`).

Statistics
----------
``n_rows`` and ``weight_sum`` both count time steps, so the objective is
the log-likelihood per step; the estimators scale ``tol`` by the number of
steps so that convergence is hmmlearn's test on the total.
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
* A sequence or observation that has probability zero under the current
  parameters raises :class:`~dem.errors.DataError` naming its rows, instead of
  producing NaN.
* A state (or GMMHMM mixture component) that explains no observation keeps
  its previous parameters where hmmlearn's formulas divide 0 by 0 and turn
  every parameter into NaN (:func:`_ratio_or_previous`).
* GMMHMM counts ``K·(M − 1)`` free mixture weights (for BIC, AIC and the
  "degenerate solution" warning); hmmlearn 0.3.3 counts ``M − 1``.

Like hmmlearn's, the emission densities retry a full covariance that is not
positive definite with :data:`RETRY_COVAR` on its diagonal and floor diagonal
and spherical variances at the smallest positive float, so data with a
constant feature, or a sparsely used mixture component, do not stop a fit.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from scipy import linalg

from dem.data.record import Partition
from dem.errors import CollapsedComponentError, ConfigError, DataError
from dem.families import hmm_lattice as lattice
from dem.families.base import Family, Note, Stats

COVARIANCE_TYPES: tuple[str, ...] = ("spherical", "diag", "full", "tied")
DECODER_ALGORITHMS: tuple[str, ...] = ("viterbi", "map")

_LOG_2PI = math.log(2.0 * math.pi)
_TINY = np.finfo(np.float64).tiny

#: Added to the diagonal of a full covariance whose Cholesky factorisation
#: fails, before giving up (hmmlearn's ``min_covar`` of ``stats.py``).
RETRY_COVAR = 1e-7

#: Rows per block for emission densities and moments: (block × D) and
#: (block × K) temporaries stay in cache.
ROW_BLOCK = 4096

# -- statistics --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HMMStats(Stats):
    """Statistics every HMM shares.

    ``n_rows`` and ``weight_sum`` count time steps; ``n_sequences`` counts
    sequences; ``start`` sums the first-step posteriors; ``trans`` the
    expected transition counts.
    """

    n_sequences: float
    start: np.ndarray
    trans: np.ndarray


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


def _ratio_or_previous(numerator: np.ndarray, denominator: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """``numerator / denominator``, keeping ``previous`` where the denominator is zero.

    hmmlearn's M-step formulas give 0/0 = NaN (or x/0 = inf) for a state, or
    mixture component, that explains no observation (a state no path
    reaches, a GMMHMM state whose components all have floored variances, a
    component of zero occupancy under the default priors). Such a state keeps
    its previous parameters, as an empty component of a Gaussian mixture
    does, instead of spreading NaN into the next E-step.
    """
    zero = np.broadcast_to(denominator == 0, np.broadcast_shapes(np.shape(numerator), np.shape(denominator)))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = numerator / np.where(denominator == 0, 1.0, denominator)
    return np.where(zero, np.broadcast_to(previous, ratio.shape), ratio)


def _per_state(value: Any, extra_dims: int) -> Any:
    """A (K,) prior as (K, 1, …) so it broadcasts against per-state arrays."""
    v = np.asarray(value, dtype=np.float64)
    return v.reshape(v.shape + (1,) * extra_dims) if v.ndim == 1 else v


# -- the shared HMM machinery -----------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class HMMFamily(Family):
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

    def e_step(self, params: Any, part: Partition) -> HMMStats:
        """Statistics of one partition of whole sequences under ``params``.

        ``part.X`` holds the observations, sequence after sequence;
        ``part.lengths`` their lengths (None: one sequence); ``part.start`` the
        global index of the first row (for error messages).

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
        for batch, prep, Xb, logB in self._sweep(params, part.X, part.lengths, part.start):
            fb = lattice.forward_backward(params.startprob, params.transmat, logB, batch)
            _check_finite(fb.log_likelihood, batch, part.start)
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

    def notes(self, stats: HMMStats, params: Any) -> list[Note]:
        """States that were never left."""
        if "t" not in self.params:
            return []
        zero = np.flatnonzero(np.asarray(stats.trans).sum(axis=1) <= 0)
        return [Note("never_left", int(k), f"state {int(k)} was never left: its row of transmat_ becomes zero")
                for k in zero]

    def log_density(self, params: Any, part: Partition) -> np.ndarray:
        """Log-likelihood of each sequence of the partition."""
        return self.score(params, part.X, part.lengths, part.start)

    def n_parameters(self, n_features: int) -> int:
        """Free parameters that EM fits (hmmlearn's count over the letters in ``params``)."""
        scalars = self.free_scalars(n_features)
        return int(sum(v for code, v in scalars.items() if code in self.params))

    def free_scalars(self, n_features: int) -> dict[str, int]:
        """Free scalars per parameter letter; an emission family adds its own."""
        K = self.n_components
        return {"s": K - 1, "t": K * (K - 1)}

    def emit(self, params: Any, state: int, random_state: np.random.RandomState) -> Any:
        """One observation from ``state`` (hmmlearn's draws)."""
        raise NotImplementedError

    def sample(self, params: Any, n_samples: int, random_state: np.random.RandomState,
               currstate: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One sequence of ``n_samples`` steps; with the same ``RandomState`` the draws equal hmmlearn's."""
        return sample(self, params, n_samples, random_state, currstate)

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

    def predict_block(self, params: Any, part: Partition, algorithm: str, with_posteriors: bool
                      ) -> tuple[np.ndarray, ...]:
        """States (and posteriors) of one partition, for writing predictions to Zarr.

        Returns ``(states int32 (n_rows,), log_prob (n_sequences,)[, posteriors (n_rows, K)])``.
        """
        log_prob, states = self.decode(params, part.X, part.lengths, algorithm, part.start)
        out: tuple[np.ndarray, ...] = (states.astype(np.int32), log_prob)
        if with_posteriors:
            _, post = self.score_and_posteriors(params, part.X, part.lengths, part.start)
            out += (post,)
        return out


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



# -- sampling (hmmlearn's algorithm and random draws) -------------------------


def sample(family: HMMFamily, params: Any, n_samples: int, random_state: np.random.RandomState,
           currstate: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One sequence of ``n_samples`` steps, drawing exactly as hmmlearn's ``sample`` (see ``HMMFamily.sample``)."""
    transmat_cdf = np.cumsum(params.transmat, axis=1)
    if currstate is None:
        currstate = int((np.cumsum(params.startprob) > random_state.rand()).argmax())
    states = [currstate]
    X = [family.emit(params, currstate, random_state)]
    for _ in range(n_samples - 1):
        currstate = int((transmat_cdf[currstate] > random_state.rand()).argmax())
        states.append(currstate)
        X.append(family.emit(params, currstate, random_state))
    return np.atleast_2d(X), np.array(states, dtype=int)


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


# -- SQUAREM's unconstrained coordinates ------------------------------------------
#
# Probability vectors become log-ratios over their nonzero entries: an exact
# zero is structural in hmmlearn (the M-step keeps it zero), so it is left
# out and stays zero. Parameters whose letter is not in the family's
# ``params`` are fixed: they are left out too and ``from_vector`` takes them
# from ``like`` unchanged.

#: The smallest probability ``from_vector`` returns where ``like`` is positive: an
#: extrapolation may push a log-ratio below exp's range, and an exact zero there
#: would forbid paths (a DataError in the E-step) instead of merely scoring low.
_FLOOR = np.finfo(np.float64).tiny


def _simplex_to_vector(p: np.ndarray) -> np.ndarray:
    pos = np.flatnonzero(p > 0)
    if len(pos) <= 1:
        return np.empty(0)
    lp = np.log(p[pos])
    return lp[:-1] - lp[-1]


def _simplex_from_vector(z: np.ndarray, like: np.ndarray) -> tuple[np.ndarray, int]:
    pos = np.flatnonzero(like > 0)
    out = np.zeros_like(like, dtype=np.float64)
    if len(pos) == 0:
        return out, 0
    k = len(pos) - 1
    full = np.concatenate([z[:k], [0.0]])
    e = np.exp(full - full.max())
    out[pos] = np.maximum(e / e.sum(), _FLOOR)
    return out, k


def simplex_rows_to_vector(rows: np.ndarray) -> np.ndarray:
    """Each row of a (…, K) array of probabilities as log-ratios over its nonzero entries."""
    rows = np.asarray(rows, dtype=np.float64)
    return np.concatenate([np.empty(0), *[_simplex_to_vector(r) for r in rows.reshape(-1, rows.shape[-1])]])


def simplex_rows_from_vector(vector: np.ndarray, like: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`simplex_rows_to_vector`: ``(rows, rest of the vector)``; zeros of ``like`` stay."""
    like = np.asarray(like, dtype=np.float64)
    v = np.asarray(vector, dtype=np.float64)
    rows, used = [], 0
    for row in like.reshape(-1, like.shape[-1]):
        r, k = _simplex_from_vector(v[used:], row)
        rows.append(r)
        used += k
    return np.stack(rows).reshape(like.shape), v[used:]


def transitions_to_vector(params: Any, letters: str = "st") -> np.ndarray:
    """``startprob`` (if ``'s'`` in ``letters``) and ``transmat``'s rows (if ``'t'``) as log-ratios."""
    return np.concatenate([simplex_rows_to_vector(params.startprob[None]) if "s" in letters else np.empty(0),
                           simplex_rows_to_vector(params.transmat) if "t" in letters else np.empty(0)])


def transitions_from_vector(vector: np.ndarray, like: Any, letters: str = "st"
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(startprob, transmat, rest of the vector)``; zeros and fixed parts of ``like`` stay."""
    rest = np.asarray(vector, dtype=np.float64)
    startprob, transmat = like.startprob, like.transmat
    if "s" in letters:
        start, rest = simplex_rows_from_vector(rest, like.startprob[None])
        startprob = start[0]
    if "t" in letters:
        transmat, rest = simplex_rows_from_vector(rest, like.transmat)
    return startprob, transmat, rest
