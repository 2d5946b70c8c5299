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
    stage: str | None = None  # e.g. the annealing temperature; Δ is taken within a stage

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


@dataclasses.dataclass(frozen=True)
class MemberStats:
    """Statistics of several fits that share a data pass, added member by member."""

    members: tuple

    def __add__(self, other: "MemberStats") -> "MemberStats":
        return MemberStats(tuple(a + b for a, b in zip(self.members, other.members)))


def _members_e_step_task(models: tuple, live: tuple, X: Any, w: Any, start: int) -> MemberStats:
    # One read of the partition serves every live member: ``live`` holds
    # (member index, params) pairs, so converged members cost nothing.
    return MemberStats(tuple(models[i].e_step(params, X, w, start) for i, params in live))


def _stage(model: EMModel) -> str | None:
    return getattr(model, "stage", None)


def run_em_members(
    models: list[EMModel],
    data: PartitionedData,
    placed: list[Any],
    executor: Executor,
    states: list[EMState],
    *,
    max_iter: int,
    tol: float,
    on_iteration: Callable[[list[EMState], list[int]], None] | None = None,
    resumed_at: list[int | None] | None = None,
) -> list[EMState]:
    """Iterate several EM fits over the same data, one shared pass per iteration.

    Each iteration reads every partition once and evaluates the E-step of
    every member that has neither converged nor reached ``max_iter``; the
    statistics are added member by member through the executor's fixed
    tree, so each member ends bitwise equal to a fit run on its own.

    Parameters
    ----------
    models : one model per member (they may differ, e.g. in n_components)
    data : the partitioned input; ``placed`` its blocks as placed by ``executor``
    states : each member's starting point (a resumed fit passes checkpointed states)
    max_iter : total iterations per member (counting those already in its state)
    tol : convergence threshold on the change in mean log-likelihood
    on_iteration : called after every pass with all states and the indices that advanced
    resumed_at : per member, the iteration at which this call resumed it, if it did
    """
    states = [dataclasses.replace(s, history=list(s.history)) for s in states]
    resumed_at = resumed_at or [None] * len(states)
    models_t = tuple(models)
    task = functools.partial(_members_e_step_task, models_t)
    rtol = MONOTONE_RTOL_FLOAT32 if data.dtype == "float32" else MONOTONE_RTOL
    while True:
        live = [i for i, s in enumerate(states) if not s.converged and s.iteration < max_iter]
        if not live:
            return states
        t0 = time.perf_counter()
        summed = executor.map_reduce(task, tuple((i, states[i].params) for i in live),
                                     placed, data.bounds)
        maybe_crash("m-step")
        seconds = time.perf_counter() - t0
        for i, stats in zip(live, summed.members):
            states[i] = _advance(models[i], states[i], stats, tol, rtol, seconds, resumed_at[i])
        if on_iteration is not None:
            on_iteration(states, live)


def _advance(model: EMModel, state: EMState, stats: SufficientStats, tol: float, rtol: float,
             seconds: float, resumed_at: int | None) -> EMState:
    """One M-step and the bookkeeping of one member's iteration."""
    ll = stats.mean_log_likelihood
    history = state.history
    stage = _stage(model)
    if history:
        # A new annealing stage optimises a different objective: no Δ across it.
        prev = history[-1].mean_log_likelihood if history[-1].stage == stage else -math.inf
    else:
        # A warm start carries the previous fit's lower bound into the first Δ, as scikit-learn does.
        prev = state.lower_bound
    new_params = model.m_step(stats, state.params)
    it = state.iteration + 1
    delta = ll - prev
    diagnose = getattr(model, "diagnose", None)
    notes = list(diagnose(stats)) if diagnose is not None else []
    if delta < -rtol * max(1.0, abs(ll)):
        msg = f"mean log-likelihood decreased by {-delta:.3g} at iteration {it}"
        notes.append(msg)
        warnings.warn(msg, ObjectiveDecreasedWarning, stacklevel=3)
    history.append(IterationRecord(
        iteration=it, mean_log_likelihood=ll, delta=delta, seconds=seconds,
        n_rows=int(stats.n_rows), resumed=(resumed_at is not None and it == resumed_at + 1),
        notes=notes, stage=stage,
    ))
    return EMState(new_params, it, history, abs(delta) < tol, ll)


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
    """Iterate E and M steps of one fit from ``state`` until convergence or ``max_iter``.

    The one-member case of :func:`run_em_members`; ``on_iteration`` receives
    the new state after every iteration.
    """
    callback = None if on_iteration is None else (lambda states, live: on_iteration(states[0]))
    return run_em_members([model], data, placed, executor, [state], max_iter=max_iter, tol=tol,
                          on_iteration=callback, resumed_at=[resumed_at])[0]
