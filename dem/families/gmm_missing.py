"""Gaussian mixture fitted on data with missing entries (NaN), missing at random.

Pure numpy; no Dask. The parameters are :class:`~dem.families.gaussian_params.GMMParams`
and the statistics extend :class:`~dem.families.gmm.GMMStats`, so the M-step,
the estimator's attributes, saved models and checkpoints are those of the
complete-data mixture.

The model
---------
Each row ``x`` splits into observed coordinates ``o`` and missing ones ``m``.
Under component ``k`` (mean ``μ``, covariance ``Σ``, precision ``Λ = Σ⁻¹``):

* the row's density is the marginal ``N(x_o | μ_o, Σ_oo)``; the objective is
  the observed-data log-likelihood ``Σ_n w_n log Σ_k π_k N(x_n,o | μ_k,o, Σ_k,oo)``,
  which EM never decreases;
* the missing coordinates get their conditional mean
  ``x̂_m = μ_m + Σ_mo Σ_oo⁻¹ (x_o − μ_o)`` and the second moments get the
  conditional covariance ``Σ_mm − Σ_mo Σ_oo⁻¹ Σ_om`` added.

Rows with nothing observed carry no information: they are counted
(``n_empty_rows``) and left out of every other statistic, the log-likelihood
and ``weight_sum`` included, so ``mean_log_likelihood`` is per row used.

How it is computed (and why not by factorising ``Σ_oo``)
--------------------------------------------------------
Rows with nothing missing go through the complete-data
:meth:`GaussianMixtureModel.e_step` unchanged, so on data without NaN every
statistic is bitwise that of the plain mixture.

For the other rows the E-step works with the *missing* block of the
precision (Schur complement identities), not the observed block of the
covariance. With ``d = x − μ`` set to 0 at the missing coordinates,
``b = (Λ d)_m`` and ``A = Λ_mm``:

* ``(x_o−μ_o)ᵀ Σ_oo⁻¹ (x_o−μ_o) = dᵀΛd − bᵀ A⁻¹ b``;
* ``log det Σ_oo = log det Σ + log det A``;
* ``x̂_m = μ_m − A⁻¹ b``, and the conditional covariance is ``A⁻¹``.

``dᵀΛd`` for every row and component is one GEMM per component over the
block, exactly the complete-data cost; what depends on the missingness
pattern is only an ``s × s`` system, ``s`` the number of missing
coordinates. At 20 % missing of 16 features that is typically 3 × 3
instead of the 13 × 13 ``Σ_oo`` (measured per matrix: ≈0.3 µs for a 3 × 3
inverse and log-determinant with the vectorised sweep of
:func:`_spd_inverse`, against 5–11 µs for Cholesky + inverse of a 13 × 13
in numpy's batched LAPACK routines). The factorisations happen once per
pattern: rows are grouped by pattern (``np.unique`` on the packed boolean
mask) and sorted by (number missing, pattern), then cut into cache-sized
blocks, so a pattern is factorised once per partition (twice when a block
boundary splits it), for all components at once, and all patterns with the
same ``s`` in a block are factorised together.

The price is one subtraction, ``dᵀΛd − bᵀA⁻¹b``, which loses about
``log10(1/(1−ρ²))`` digits when a missing coordinate is predicted with
correlation ``ρ`` by the observed ones (3 digits at ρ = 0.999, leaving
about 13); ``reg_covar`` bounds it.

``diag`` and ``spherical`` need no patterns at all: with a diagonal
covariance the conditional mean is ``μ_m`` and the conditional variance
``σ²_m``, so a block needs only masked elementwise work.

Where the pieces are: the per-block linear algebra (preparation, pattern
grouping, the ``s × s`` systems) is :mod:`dem.families.missing_patterns`;
filling missing coordinates (the initialisation's centre fill, imputation
and multiple-imputation draws) :mod:`dem.families.missing_imputation`; the
parameter count and the abilities annealing, SQUAREM and online EM use are
shared with the complete-data family
(:class:`~dem.families.gaussian_mixture.GaussianMixtureAbilities`).

Cost: at N = 200 000, D = 16, K = 8, full, 20 % of entries missing (3 % of
rows complete, ~10 000 distinct patterns per 100 000 rows) an iteration
takes 3–5× the complete-data one (2× for diag); see
``benchmarks/missing_bench.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import numpy as np

from dem.data.record import Partition
from dem.errors import DataError
from dem.families import missing_imputation
from dem.families.base import Family, Note
from dem.families.gaussian_mixture import (
    CovarianceType,
    GaussianMixtureAbilities,
    GaussianMixtureFamily,
    GMMStats,
    empty_notes,
    random_responsibilities,
)
from dem.families.gaussian_params import GMMParams
from dem.families.missing_imputation import centre_filled
from dem.families.missing_patterns import (
    _BlockResult,
    _checked_weights,
    _log_sum_exp,
    _Prepared,
    _raise_inf,
    _sum_by_pattern,
    incomplete_block,
    incomplete_blocks,
    prepare,
)


@dataclasses.dataclass(frozen=True)
class MissingGMMStats(GMMStats):
    """:class:`GMMStats` of the rows with something observed, plus missingness counts.

    The moments are *expected* moments: missing coordinates enter through
    their conditional means, and ``second_moment`` includes the conditional
    covariances; like :class:`GMMStats`, they are taken about the E-step's
    component means.

    Attributes
    ----------
    n_empty_rows : float
        Rows with no observed coordinate (left out of everything else).
    observed_count : ndarray of shape (n_features,)
        Rows in which each feature is observed (empty rows included, as 0).
    n_missing : float
        Missing entries in the rows used.
    """

    n_empty_rows: float
    observed_count: np.ndarray
    n_missing: float

    def complete_stats(self) -> GMMStats:
        """The :class:`GMMStats` part, for the complete-data M-step."""
        return GMMStats(**{f.name: getattr(self, f.name) for f in dataclasses.fields(GMMStats)})


@dataclasses.dataclass(frozen=True)
class _SplitPart:
    """A partition holding NaN: its rows by what they miss, and the complete rows' statistics."""

    X: np.ndarray
    missing: np.ndarray                  # (n, D) bool
    incomplete: np.ndarray               # rows missing some, not all, coordinates
    n_empty: int                         # rows missing every coordinate
    weights: np.ndarray | None           # checked sample weights of all rows
    complete_stats: GMMStats | None      # the complete-data family's, of the rows missing nothing


@dataclasses.dataclass(frozen=True)
class MissingDataGaussianMixtureFamily(GaussianMixtureAbilities, Family):
    """Gaussian mixture over rows with missing coordinates (NaN), as pure functions.

    Parameters
    ----------
    n_components : int
    covariance_type : {"full", "tied", "diag", "spherical"}
    reg_covar : float
        Added to the diagonal of every covariance in the M-step.
    beta : float
        Inverse temperature of deterministic annealing, as in
        :class:`~dem.families.gaussian_mixture.GaussianMixtureFamily`: responsibilities are
        ``softmax(β·log(π_k N_k(x_o)))`` and the objective per row is
        ``(1/β)·log Σ_k (π_k N_k(x_o))^β``; β = 1 is plain EM.

    Notes
    -----
    Same interface as :class:`~dem.families.gaussian_mixture.GaussianMixtureFamily` (the
    engine, the estimator and the init pass use it unchanged); ``inf`` is
    never a missing value and raises :class:`~dem.errors.DataError`.
    Statistics have the complete-data model's layout: moments about the
    E-step's component means ``μ_k`` (``Σ r (x̂ − μ_k)``, and
    ``Σ r [(x̂ − μ_k)(x̂ − μ_k)ᵀ + conditional covariance]`` as (K, D, D)
    full, summed over components for tied, diagonal for diag, trace for
    spherical).
    """

    n_components: int
    covariance_type: CovarianceType = "full"
    reg_covar: float = 1e-6
    beta: float = 1.0

    kind = "gmm"
    params_type = GMMParams

    @property
    def complete_model(self) -> GaussianMixtureFamily:
        """The complete-data family: rows without NaN, the M-step, parameter helpers."""
        return GaussianMixtureFamily(self.n_components, self.covariance_type, self.reg_covar, self.beta)

    @property
    def _diagonal(self) -> bool:
        return self.covariance_type in ("diag", "spherical")

    # -- statistics --------------------------------------------------------

    def _new_acc(self, D: int) -> dict:
        K = self.n_components
        second = (K, D) if self._diagonal else (K, D, D)
        return {"n_rows": 0.0, "weight_sum": 0.0, "log_likelihood": 0.0,
                "resp_sum": np.zeros(K), "first_moment": np.zeros((K, D)),
                "second_moment": np.zeros(second), "n_missing": 0.0}

    def _accumulate(self, acc: dict, prep: _Prepared, blk: _BlockResult, R: np.ndarray,
                    w: np.ndarray | None) -> None:
        """Add one block's expected moments about μ_k; ``R`` (K, n) are weighted responsibilities."""
        n = R.shape[1]
        acc["n_rows"] += n
        acc["weight_sum"] += n if w is None else float(w.sum())
        acc["n_missing"] += float(blk.missing.sum())
        acc["resp_sum"] += R.sum(axis=1)
        dev = blk.dev
        acc["first_moment"] += np.matmul(R[:, None, :], dev)[:, 0, :]
        if prep.diagonal:
            # Conditional variance σ²_k at each missing coordinate.
            acc["second_moment"] += (np.einsum("knd,knd,kn->kd", dev, dev, R)
                                     + (R @ blk.missing.astype(np.float64)) * prep.variances)
            return
        Z = dev * np.sqrt(R)[:, :, None]
        acc["second_moment"] += np.matmul(Z.transpose(0, 2, 1), Z)
        K, D = R.shape[0], dev.shape[2]
        flat = acc["second_moment"].reshape(K, D * D)
        for g in blk.groups:
            # Σ_n r_nk A⁻¹, summed per pattern first, then added at the pattern's missing block.
            u, s = g.missing_idx.shape
            Rp = _sum_by_pattern(R[:, g.rows], g.pattern, u)
            contrib = g.cond_cov.transpose(1, 0, 2, 3) * Rp[:, :, None, None]
            where = (g.missing_idx[:, :, None] * D + g.missing_idx[:, None, :]).ravel()
            for k in range(K):
                flat[k] += np.bincount(where, weights=contrib[k].ravel(), minlength=D * D)

    def _finish(self, acc: dict, split: _SplitPart) -> MissingGMMStats:
        """Convert the accumulator to the covariance type's layout and add the complete rows."""
        base = split.complete_stats
        ct = self.covariance_type
        S2 = acc["second_moment"]
        if ct == "tied":
            S2 = S2.sum(axis=0)
        elif ct == "spherical":
            S2 = S2.sum(axis=1)
        fields = {"n_rows": acc["n_rows"], "weight_sum": acc["weight_sum"],
                  "log_likelihood": acc["log_likelihood"], "resp_sum": acc["resp_sum"],
                  "first_moment": acc["first_moment"], "second_moment": S2}
        if base is not None:
            fields = {k: getattr(base, k) + v for k, v in fields.items()}
        return MissingGMMStats(
            **{k: (float(v) if np.ndim(v) == 0 else v) for k, v in fields.items()},
            n_empty_rows=float(split.n_empty),
            observed_count=np.asarray(split.X.shape[0] - split.missing.sum(axis=0), dtype=np.float64),
            n_missing=float(acc["n_missing"]),
        )

    def _wrap(self, stats: GMMStats, n_features: int) -> MissingGMMStats:
        return MissingGMMStats(
            **{f.name: getattr(stats, f.name) for f in dataclasses.fields(GMMStats)},
            n_empty_rows=0.0, observed_count=np.full(n_features, float(stats.n_rows)), n_missing=0.0,
        )

    def zero_stats(self, n_features: int) -> MissingGMMStats:
        """The monoid's zero."""
        return self._wrap(self.complete_model.zero_stats(n_features), n_features).zero()

    def _incomplete_blocks(self, X: np.ndarray, missing: np.ndarray,
                           rows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        return incomplete_blocks(X, missing, rows, self.n_components, self._diagonal)

    def _split(self, part: Partition, complete_stats: Callable[[Partition], GMMStats]
               ) -> MissingGMMStats | _SplitPart:
        """``part``'s rows by what they miss, with the complete rows' statistics from ``complete_stats``.

        Without NaN, the statistics of the whole partition: exactly the
        complete-data family's (which also report inf).
        """
        X = np.asarray(part.X)
        M = np.isnan(X)
        if not M.any():
            return self._wrap(complete_stats(part), X.shape[1])
        _raise_inf(X, part.start)
        count = M.sum(axis=1)
        D = X.shape[1]
        complete = np.flatnonzero(count == 0)
        w_all = _checked_weights(part.weights, part.start)
        base_stats = None
        if complete.size:
            base_stats = complete_stats(Partition(X[complete], None if w_all is None else w_all[complete],
                                                  start=part.start))
        return _SplitPart(X, M, np.flatnonzero((count > 0) & (count < D)), int((count == D).sum()), w_all,
                          base_stats)

    def e_step(self, params: GMMParams, part: Partition) -> MissingGMMStats:
        """Expected statistics of one partition under ``params``.

        Raises
        ------
        DataError
            If the block holds inf (naming the global row and feature), or a
            sample weight is negative or not finite.
        """
        split = self._split(part, lambda p: self.complete_model.e_step(params, p))
        if isinstance(split, MissingGMMStats):
            return split
        prep = prepare(params, self.covariance_type)
        acc = self._new_acc(split.X.shape[1])
        for idx, Xb, Mb in self._incomplete_blocks(split.X, split.missing, split.incomplete):
            blk = incomplete_block(prep, Xb, Mb)
            lp = blk.log_prob if self.beta == 1.0 else self.beta * blk.log_prob
            lse = _log_sum_exp(lp)
            if not np.isfinite(lse).all():
                row = int(idx[np.flatnonzero(~np.isfinite(lse))[0]])
                raise DataError(f"the log-density of row {part.start + row} is not finite "
                                "(values too large for float64?); scale the input data")
            R = np.exp(lp - lse)
            if self.beta != 1.0:
                lse = lse / self.beta  # the tempered free energy per row
            w = None if split.weights is None else split.weights[idx]
            acc["log_likelihood"] += float(lse.sum() if w is None else lse @ w)
            if w is not None:
                R *= w
            self._accumulate(acc, prep, blk, R, w)
        return self._finish(acc, split)

    def assignment_stats(self, params: GMMParams, part: Partition, responsibilities: str = "nearest",
                         seed: int = 0) -> MissingGMMStats:
        """Statistics from initial responsibilities (the init pass), NaN-tolerant.

        Complete rows are handled by the complete-data model. An incomplete
        row goes to the centre nearest on its observed coordinates (or gets
        random responsibilities keyed by (seed, global row)); its missing coordinates are filled with that
        centre's coordinates (:func:`~dem.families.missing_imputation.centre_filled`) and the diagonal
        of ``params``' covariances is added as their conditional variance, which is exact for the
        diagonal starting covariances the estimator uses.
        """
        split = self._split(part, lambda p: self.complete_model.assignment_stats(params, p, responsibilities, seed))
        if isinstance(split, MissingGMMStats):
            return split
        X = split.X
        D = X.shape[1]
        prep = prepare(params, self.covariance_type)
        acc = self._new_acc(D)
        R_random = random_responsibilities(seed, X, self.n_components) if responsibilities == "random" else None
        for idx, Xb, Mb in self._incomplete_blocks(X, split.missing, split.incomplete):
            R, dev = centre_filled(prep, Xb, Mb, None if responsibilities == "nearest" else R_random[:, idx])
            w = None if split.weights is None else split.weights[idx]
            if w is not None:
                R *= w
            self._accumulate(acc, prep, _BlockResult(R, dev, [], Mb), R, w)
            if not prep.diagonal:
                j = np.arange(D)
                acc["second_moment"][:, j, j] += (R @ Mb.astype(np.float64)) * prep.variances
        return self._finish(acc, split)

    # -- per-row functions (prediction, imputation) -----------------------

    def weighted_log_prob(self, params: GMMParams, X: np.ndarray) -> np.ndarray:
        """``log π_k + log N(x_o | μ_k,o, Σ_k,oo)`` per row and component, (n, K).

        A row with nothing observed gets ``log π_k``.
        """
        X = np.asarray(X)
        base = self.complete_model
        M = np.isnan(X)
        if not M.any():
            return base.weighted_log_prob(params, X)
        _raise_inf(X, 0)
        complete = ~M.any(axis=1)
        out = np.empty((X.shape[0], self.n_components))
        if complete.any():
            out[complete] = base.weighted_log_prob(params, X[complete])
        prep = prepare(params, self.covariance_type)
        for idx, Xb, Mb in self._incomplete_blocks(X, M, np.flatnonzero(~complete)):
            out[idx] = incomplete_block(prep, Xb, Mb).log_prob.T
        return out

    def impute(self, params: GMMParams, X: np.ndarray, n_draws: int = 0, rng: np.random.Generator | None = None
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """Conditional expectation of the missing entries, and optional draws.

        See :func:`dem.families.missing_imputation.impute` (numpydoc there).
        """
        return missing_imputation.impute(params, self.covariance_type, X, n_draws, rng,
                                         n_components=self.n_components)

    # -- M-step, notes, densities ------------------------------------------

    def m_step(self, stats: MissingGMMStats, params: GMMParams) -> GMMParams:
        """New parameters from the expected statistics (the complete-data M-step).

        Raises
        ------
        DataError
            If a feature is missing in every row, or no row has an observed value.
        CollapsedComponentError
            If a covariance is not positive definite after ``reg_covar``.
        """
        if stats.n_rows == 0 or not stats.weight_sum > 0:
            if stats.n_rows == 0:
                raise DataError(f"every row of X is entirely missing (NaN in all {params.n_features} "
                                "features): there is nothing to fit")
            raise DataError("every row of X with a positive sample_weight is entirely missing (NaN)")
        gone = np.flatnonzero(np.asarray(stats.observed_count) == 0)
        if gone.size:
            more = f" (and {gone.size - 1} more)" if gone.size > 1 else ""
            raise DataError(f"feature {int(gone[0])} of X is entirely missing (NaN in every row){more}; "
                            "drop it before fitting")
        return self.complete_model.m_step(stats.complete_stats(), params)

    def notes(self, stats: MissingGMMStats, params: GMMParams) -> list[Note]:
        """Empty components, and rows with nothing observed."""
        notes = empty_notes(stats)
        n_empty = int(stats.n_empty_rows)
        if n_empty:
            notes.append(Note("empty_rows", None,
                              f"{n_empty} row{'s have' if n_empty != 1 else ' has'} no observed value "
                              "and {} left out".format("were" if n_empty != 1 else "was")))
        return notes

    def log_density(self, params: GMMParams, part: Partition) -> np.ndarray:
        return _log_sum_exp(self.weighted_log_prob(params, part.X).T)
