"""What every EM model in dem provides, and the statistics monoid they share.

A model is a small, picklable object holding hyperparameters, with pure numpy
methods. The engine only ever calls :meth:`EMModel.e_step` on workers, adds the
returned statistics with ``+`` in a fixed order, and calls
:meth:`EMModel.m_step` on the driver.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

S = TypeVar("S", bound="SufficientStats")


@dataclasses.dataclass(frozen=True)
class SufficientStats:
    """Additive statistics of one partition (or of a sum of partitions).

    Subclasses are frozen dataclasses whose fields are all float64 scalars or
    arrays. ``a + b`` adds field by field, so statistics form a commutative
    monoid whose zero is all zeros. Every subclass carries ``n_rows`` (rows
    seen), ``weight_sum`` (sum of sample weights) and ``log_likelihood``
    (weighted sum of per-row log-likelihoods), so the engine can judge
    convergence from the same reduction that feeds the M-step.
    """

    n_rows: float
    weight_sum: float
    log_likelihood: float

    def __add__(self: S, other: S) -> S:
        if type(other) is not type(self):
            return NotImplemented
        return type(self)(
            **{
                f.name: getattr(self, f.name) + getattr(other, f.name)
                for f in dataclasses.fields(self)
            }
        )

    @property
    def mean_log_likelihood(self) -> float:
        """Weighted mean log-likelihood per sample (scikit-learn's ``lower_bound_``)."""
        return float(self.log_likelihood / self.weight_sum)


@runtime_checkable
class EMModel(Protocol):
    """The contract between a model family and the engine."""

    def e_step(
        self, params: Any, X: np.ndarray, sample_weight: np.ndarray | None, row_offset: int
    ) -> SufficientStats:
        """Statistics of one block of rows under ``params``.

        ``row_offset`` is the global index of the block's first row, used only
        to name offending rows in error messages.
        """

    def m_step(self, stats: SufficientStats, params: Any) -> Any:
        """New parameters from the summed statistics (``params`` are those of the E-step)."""
