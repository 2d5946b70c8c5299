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

The Gaussian emission densities (hmmlearn's retry of a covariance that is
not positive definite included) are :mod:`dem.families.hmm_gaussians`;
SQUAREM's unconstrained coordinates for the transition parameters
:mod:`dem.families.hmm_coordinates`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from dem.data.record import Partition
from dem.errors import DataError
from dem.families import hmm_lattice as lattice
from dem.families.base import Family, Note, Stats

DECODER_ALGORITHMS: tuple[str, ...] = ("viterbi", "map")

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


# -- what the emission M-steps share -----------------------------------------


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


def _finite_block(X: Any, row_offset: int, params: Any = None) -> np.ndarray:
    """Real, finite 2-D rows, as wide as ``params.means`` when parameters are given (Gaussian emissions)."""
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
    if params is not None and X.shape[1] != params.means.shape[-1]:
        raise DataError(f"X has {X.shape[1]} features but the model has {params.means.shape[-1]}")
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
