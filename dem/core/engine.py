"""The EM iteration loop: model-agnostic, and with the executor the only Dask code.

One iteration:

1. ship the parameters once (one graph value every task shares);
2. map the model's ``e_step`` over row partitions (tasks read their own rows);
3. add the statistics through a fixed-shape tree in partition order;
4. ``m_step`` on the driver;
5. hand the new state to ``on_iteration`` (checkpointing, progress), then test
   convergence as scikit-learn does: ``|Δ mean log-likelihood| < tol``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import warnings
from typing import Any, Callable

from dem.core.executor import Executor
from dem.core.faults import maybe_crash
from dem.data.partitions import PartitionedData
from dem.models.base import EMModel, SufficientStats

#: Relative tolerance below which a fall of the objective is round-off, not a bug.
MONOTONE_RTOL = 1e-9
#: float32 data is evaluated in float32 within blocks (see dem.models.gmm), so
#: the objective itself carries ~1e-7 relative noise per row.
MONOTONE_RTOL_FLOAT32 = 1e-6


class ObjectiveDecreasedWarning(RuntimeWarning):
    """The log-likelihood fell between two EM iterations by more than round-off."""


@dataclasses.dataclass
class IterationRecord:
    """One line of a fit's history."""

    iteration: int
    mean_log_likelihood: float
    delta: float
    seconds: float
    n_rows: int
    resumed: bool = False
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if math.isinf(d["delta"]):
            d["delta"] = None
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "IterationRecord":
        d = dict(d)
        if d.get("delta") is None:
            d["delta"] = math.inf
        return cls(**d)


@dataclasses.dataclass
class EMState:
    """Where a fit stands after ``iteration`` completed iterations.

    ``params`` are the parameters after the last M-step; ``lower_bound`` is
    the mean log-likelihood of the last E-step (scikit-learn's convention).
    """

    params: Any
    iteration: int = 0
    history: list[IterationRecord] = dataclasses.field(default_factory=list)
    converged: bool = False
    lower_bound: float = -math.inf


def _e_step_task(model: EMModel, params: Any, X: Any, w: Any, start: int) -> SufficientStats:
    return model.e_step(params, X, w, start)


def run_em(
    model: EMModel,
    data: PartitionedData,
    placed: list[Any],
    executor: Executor,
    state: EMState,
    *,
    max_iter: int,
    tol: float,
    on_iteration: Callable[[EMState], None] | None = None,
    resumed_at: int | None = None,
) -> EMState:
    """Iterate E and M steps from ``state`` until convergence or ``max_iter``.

    Parameters
    ----------
    model : the model family (pure numpy functions)
    data : the partitioned input; ``placed`` its blocks as placed by ``executor``
    state : the starting point; a resumed fit passes the checkpointed state
    max_iter : total iterations (counting those already in ``state``)
    tol : convergence threshold on the change in mean log-likelihood
    on_iteration : called after every iteration with the new state
    resumed_at : iteration number at which this call resumed an earlier fit
    """
    params = state.params
    history = list(state.history)
    # A warm start carries the previous fit's lower bound into the first Δ, as scikit-learn does.
    prev = history[-1].mean_log_likelihood if history else state.lower_bound
    converged = state.converged
    lower_bound = state.lower_bound
    it = state.iteration
    task = functools.partial(_e_step_task, model)
    diagnose = getattr(model, "diagnose", None)
    rtol = MONOTONE_RTOL_FLOAT32 if data.dtype == "float32" else MONOTONE_RTOL
    while not converged and it < max_iter:
        t0 = time.perf_counter()
        stats = executor.map_reduce(task, params, placed, data.bounds)
        ll = stats.mean_log_likelihood
        maybe_crash("m-step")
        new_params = model.m_step(stats, params)
        it += 1
        delta = ll - prev
        notes = list(diagnose(stats)) if diagnose is not None else []
        if delta < -rtol * max(1.0, abs(ll)):
            msg = f"mean log-likelihood decreased by {-delta:.3g} at iteration {it}"
            notes.append(msg)
            warnings.warn(msg, ObjectiveDecreasedWarning, stacklevel=2)
        history.append(
            IterationRecord(
                iteration=it,
                mean_log_likelihood=ll,
                delta=delta,
                seconds=time.perf_counter() - t0,
                n_rows=int(stats.n_rows),
                resumed=(resumed_at is not None and it == resumed_at + 1),
                notes=notes,
            )
        )
        lower_bound = ll
        converged = abs(delta) < tol
        params = new_params
        prev = ll
        state = EMState(params, it, history, converged, lower_bound)
        if on_iteration is not None:
            on_iteration(state)
    return EMState(params, it, history, converged, lower_bound)
