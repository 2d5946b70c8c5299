"""Forward–backward and Viterbi over many sequences at once (pure numpy).

The recursions loop over time steps only; every step works on all the
sequences of a *batch* at once, so the per-step cost is a few numpy calls on
an ``(n_sequences, n_components)`` array rather than a Python loop per
sequence.

Batches
-------
A partition's sequences are sorted by length (stably, so the order is a
function of the data alone) and cut into batches of similar length (the
longest at most 25 % longer than the shortest, or 8 steps) whose lattices
hold at most :data:`BATCH_CELLS` numbers. Inside a batch the lattices are
*time-major*, ``(T, n, K)``: because the batch is sorted by length, the
sequences still running at step ``t`` are a suffix ``[first[t]:]`` of the
batch, so no masking is needed — a sequence that has ended is simply no
longer touched. Equal lengths (the common case) make one rectangle.

Numerics
--------
Emission log-probabilities are shifted per time step by their maximum over
states (``B = exp(log b − max_k log b)``, so the largest entry of every row
is 1) and the forward variables are normalised at every step (Rabiner's
scaling). Both shifts are carried into the log-likelihood, which is
``Σ_t log c_t + Σ_t shift_t``. This is exact in log space except when the
predicted state distribution puts (almost) all its mass on states that
cannot emit the observation, so ``c_t`` underflows; such sequences are
detected (``c_t < 1e-250``) and recomputed with the log-space recursions
(:func:`forward_backward_log`), which are exact but slower.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.special import logsumexp

#: Numbers per ``(T, n, K)`` lattice of one batch (8 MiB of float64): large
#: enough that per-step numpy overhead is amortised over many sequences,
#: small enough that the five lattices of a batch stay in memory comfortably.
BATCH_CELLS = 1 << 20

#: Forward scaling factors below this are treated as underflow, and the
#: sequence is recomputed in log space (subnormals start near 2.2e-308).
UNDERFLOW = 1e-250

#: Number of ``(T, n, K)``-sized float64 arrays alive at the peak of a batch's
#: E-step (emission log-probabilities and probabilities, forward, backward,
#: posteriors and their temporaries): a single sequence of length ``T``
#: needs about ``LATTICE_ARRAYS · T · K · 8`` bytes.
LATTICE_ARRAYS = 8


@dataclasses.dataclass(frozen=True)
class Batch:
    """Sequences of one batch and where their rows go.

    Attributes
    ----------
    sequences : (n,) indices of the sequences (into the partition), by length
    lengths : (n,) their lengths, non-decreasing
    rows : (R,) partition row of every real step, sequence after sequence
    pos : (R,) flat index of each of those steps in the ``(T, n)`` layout
    first : (T,) ``first[t]`` is the first sequence still running at step t
    """

    sequences: np.ndarray
    lengths: np.ndarray
    rows: np.ndarray
    pos: np.ndarray
    first: np.ndarray

    @property
    def n(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def T(self) -> int:
        return int(self.lengths[-1])

    def padded(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """``(R, K)`` row values → ``(T, n, K)`` time-major lattice, padding with ``fill``."""
        out = np.full((self.T * self.n,) + values.shape[1:], fill, dtype=values.dtype)
        out[self.pos] = values
        return out.reshape((self.T, self.n) + values.shape[1:])


def batches(lengths: np.ndarray, width: int, cells: int | None = None) -> list[Batch]:
    """Cut sequences of the given lengths into batches of similar length.

    Parameters
    ----------
    lengths : (n_sequences,) positive integers
    width : numbers per time step of the widest lattice (``n_components``)
    cells : upper bound on ``T · n · width`` for a batch (default
        :data:`BATCH_CELLS`; a single sequence longer than that forms a
        batch alone)
    """
    cells = BATCH_CELLS if cells is None else cells
    lengths = np.asarray(lengths, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    order = np.argsort(lengths, kind="stable")
    out: list[Batch] = []
    i, n = 0, len(order)
    width = max(1, int(width))
    while i < n:
        shortest = int(lengths[order[i]])
        limit = max(shortest + 8, (shortest * 5) // 4)
        j = i + 1
        while j < n:
            longest = int(lengths[order[j]])
            if longest > limit or (j - i + 1) * longest * width > cells:
                break
            j += 1
        seq = order[i:j]
        out.append(_make_batch(seq, lengths[seq], starts[seq]))
        i = j
    return out


def _make_batch(seq: np.ndarray, lens: np.ndarray, starts: np.ndarray) -> Batch:
    n = len(seq)
    R = int(lens.sum())
    before = np.cumsum(lens) - lens  # where each sequence begins in the R rows
    step = np.arange(R) - np.repeat(before, lens)  # time step of each row
    rows = step + np.repeat(starts, lens)
    pos = step * n + np.repeat(np.arange(n), lens)
    T = int(lens[-1])
    first = np.searchsorted(lens, np.arange(T), side="right")
    return Batch(seq, lens, rows, pos, first)


@dataclasses.dataclass
class ForwardBackward:
    """What the E-step takes from one batch.

    Attributes
    ----------
    log_likelihood : (n,) per sequence of the batch
    posteriors : (R, K) state posteriors of the batch's rows (``Batch.rows`` order)
    start : (K,) sum of the posteriors of the first step of every sequence
    trans : (K, K) expected transition counts summed over the batch
    """

    log_likelihood: np.ndarray
    posteriors: np.ndarray
    start: np.ndarray
    trans: np.ndarray


def forward_backward(
    startprob: np.ndarray, transmat: np.ndarray, log_emission: np.ndarray, batch: Batch,
) -> ForwardBackward:
    """Posteriors, expected counts and log-likelihoods of one batch.

    Parameters
    ----------
    startprob : (K,)
    transmat : (K, K)
    log_emission : (R, K) ``log p(x_r | state)`` of the batch's rows, in
        ``batch.rows`` order; rows where every entry is ``-inf`` must have
        been rejected by the caller.
    batch : the batch layout
    """
    K = startprob.shape[0]
    n, T = batch.n, batch.T
    shift = log_emission.max(axis=1)
    B = batch.padded(np.exp(log_emission - shift[:, None]))
    first = batch.first
    alpha = np.zeros_like(B)
    c = np.ones((T, n))
    # Row sums as a matrix-vector product: numpy's reduction along a short
    # last axis costs far more per call than a GEMV.
    ones = np.ones(K)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        a = startprob * B[0]
        s = a @ ones
        c[0] = s
        alpha[0] = a / s[:, None]
        a = np.empty((n, K))
        for t in range(1, T):
            j = first[t]
            at = a[j:]
            np.matmul(alpha[t - 1, j:], transmat, out=at)
            at *= B[t, j:]
            s = at @ ones
            c[t, j:] = s
            np.divide(at, s[:, None], out=alpha[t, j:])
        # Sequences whose scaling underflowed are redone in log space below.
        c_rows = c.reshape(-1)[batch.pos]
        bad_row = ~(c_rows >= UNDERFLOW) | ~np.isfinite(c_rows)
        bad = np.zeros(n, dtype=bool)
        if bad_row.any():
            seq_of_row = batch.pos % n
            bad[np.unique(seq_of_row[bad_row])] = True
            alpha[:, bad] = 0.0
            c[:, bad] = 1.0
            B[:, bad] = 0.0
        beta = np.ones_like(B)
        transmat_T = np.ascontiguousarray(transmat.T)
        for t in range(T - 2, -1, -1):
            j = first[t + 1]
            if j >= n:
                continue
            w = a[j:]
            np.multiply(B[t + 1, j:], beta[t + 1, j:], out=w)
            w /= c[t + 1, j:, None]
            np.matmul(w, transmat_T, out=beta[t, j:])

    flat = (T * n, K)
    gamma = alpha.reshape(flat)[batch.pos] * beta.reshape(flat)[batch.pos]
    norm = gamma.sum(axis=1, keepdims=True)
    norm[norm == 0] = 1.0  # rows of sequences redone in log space
    gamma /= norm
    start = gamma[batch.pos < n].sum(axis=0)
    trans = np.zeros((K, K))
    if T > 1:
        # Σ_t α̂_t(i) A_ij B_{t+1}(j) β̂_{t+1}(j) / c_{t+1}: one GEMM over all
        # steps and sequences (padding has B = 0, hence contributes nothing).
        # B is not needed any more, so it holds the weights in place.
        W = B[1:]
        W *= beta[1:]
        W /= c[1:, :, None]
        trans = (alpha[:-1].reshape(-1, K).T @ W.reshape(-1, K)) * transmat
    log_c = np.log(c)
    seq_of_row = batch.pos % n
    ll = np.bincount(seq_of_row, weights=log_c.reshape(-1)[batch.pos] + shift, minlength=n)

    if bad.any():
        row_start = np.concatenate([[0], np.cumsum(batch.lengths)[:-1]])
        with np.errstate(divide="ignore"):
            log_start, log_trans = np.log(startprob), np.log(transmat)
        for i in np.flatnonzero(bad):
            a, b = row_start[i], row_start[i] + batch.lengths[i]
            res = forward_backward_log(log_start, log_trans, log_emission[a:b])
            ll[i] = res.log_likelihood[0]
            gamma[a:b] = res.posteriors
            start += res.start
            trans += res.trans
    return ForwardBackward(ll, gamma, start, trans)


def forward_backward_log(
    log_startprob: np.ndarray, log_transmat: np.ndarray, log_emission: np.ndarray,
    chunk: int = 4096,
) -> ForwardBackward:
    """Exact log-space forward–backward of one sequence (the underflow fallback).

    Slower than the scaled recursions (``K²`` exponentials per step) but free
    of underflow whatever the parameters. ``log_likelihood`` is ``-inf`` when
    the sequence is impossible under the parameters.
    """
    L, K = log_emission.shape
    fwd = np.empty((L, K))
    bwd = np.zeros((L, K))
    with np.errstate(divide="ignore", invalid="ignore", under="ignore"):
        fwd[0] = log_startprob + log_emission[0]
        for t in range(1, L):
            fwd[t] = logsumexp(fwd[t - 1][:, None] + log_transmat, axis=0) + log_emission[t]
        ll = float(logsumexp(fwd[-1]))
        for t in range(L - 2, -1, -1):
            bwd[t] = logsumexp(log_transmat + (log_emission[t + 1] + bwd[t + 1])[None, :], axis=1)
        log_gamma = fwd + bwd
        log_gamma -= logsumexp(log_gamma, axis=1, keepdims=True)
        gamma = np.exp(log_gamma)
        trans = np.zeros((K, K))
        # Σ_t exp(α_t(i) + log A_ij + log b_{t+1}(j) + β_{t+1}(j) − ll), by time chunks
        # so the (steps, K, K) temporary stays small for long sequences.
        for a in range(0, L - 1, chunk):
            b = min(a + chunk, L - 1)
            log_xi = (fwd[a:b, :, None] + log_transmat[None]
                      + (log_emission[a + 1 : b + 1] + bwd[a + 1 : b + 1])[:, None, :] - ll)
            trans += np.exp(log_xi).sum(axis=0)
    return ForwardBackward(np.array([ll]), gamma, gamma[0].copy(), trans)


def viterbi(
    log_startprob: np.ndarray, log_transmat: np.ndarray, log_emission: np.ndarray, batch: Batch,
) -> tuple[np.ndarray, np.ndarray]:
    """Most probable state paths of a batch.

    Follows hmmlearn's recursion and traceback exactly (the traceback
    recomputes ``δ_t(i) + log A_i,next`` and takes the first maximum), so ties
    break the same way.

    Returns
    -------
    log_prob : (n,) log-probability of each sequence's best path
    states : (R,) the path, in ``batch.rows`` order
    """
    n, T = batch.n, batch.T
    first = batch.first
    with np.errstate(invalid="ignore"):
        logB = batch.padded(log_emission, fill=0.0)
        delta = np.empty_like(logB)
        delta[0] = log_startprob + logB[0]
        for t in range(1, T):
            j = first[t]
            delta[t, j:] = (log_transmat[None] + delta[t - 1, j:, :, None]).max(axis=1) + logB[t, j:]
        states = np.zeros((T, n), dtype=np.int64)
        last = delta[batch.lengths - 1, np.arange(n)]
        states[batch.lengths - 1, np.arange(n)] = last.argmax(axis=1)
        log_prob = last.max(axis=1)
        for t in range(T - 2, -1, -1):
            j = first[t + 1]
            if j >= n:
                continue
            buf = delta[t, j:] + log_transmat[:, states[t + 1, j:]].T
            states[t, j:] = buf.argmax(axis=1)
    return log_prob, states.reshape(-1)[batch.pos]
