"""What every strategy provides: member runs that ask for E-steps and take their statistics.

A :class:`MemberRun` is one member's state machine. The engine loop is::

    while some run is not done:
        evaluations = [run.next_evaluation() for each live run]
        statistics = one pass over the data evaluating all of them
        run.receive(statistics, ...) for each live run

so members of any strategy — and members at different phases of one
strategy — share every read of the data. A run's whole state is JSON plus
float64 arrays (:meth:`MemberRun.state`), so a checkpoint restores it bit for
bit and a resumed fit ends bitwise equal to an uninterrupted one.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, ClassVar

import numpy as np

from dem.engine.executor import Evaluation
from dem.engine.monitor import Monitor
from dem.errors import CollapsedComponentError
from dem.families.base import Family, Note, Stats


def params_arrays(params: Any, prefix: str) -> dict[str, np.ndarray]:
    """A parameters dataclass as named float arrays (``prefix.field``)."""
    return {f"{prefix}.{f.name}": np.asarray(getattr(params, f.name)) for f in dataclasses.fields(params)}


def params_from_arrays(cls: type, arrays: dict[str, np.ndarray], prefix: str) -> Any:
    """Inverse of :func:`params_arrays`."""
    return cls(**{f.name: arrays[f"{prefix}.{f.name}"] for f in dataclasses.fields(cls)})


class MemberRun(abc.ABC):
    """One member's progress.

    Attributes
    ----------
    family : the member's family
    params : the current iterate (what the fit returns if it stops now)
    monitor : history and convergence test
    max_iter : the step budget
    seed : the member's seed (for draws the strategy makes)
    n_passes : data passes this member has read, initialisation excluded
    lower_bound : the objective at the last iterate's E-step
    stopped : the member stopped early: its M-step collapsed (a covariance
        stopped being positive definite), so it keeps its last good
        parameters and is neither converged nor iterated further
    """

    strategy: ClassVar[str] = ""

    def __init__(self, family: Family, params: Any, monitor: Monitor, *, max_iter: int, seed: int) -> None:
        self.family = family
        self.params = params
        self.monitor = monitor
        self.max_iter = int(max_iter)
        self.seed = int(seed)
        self.n_passes = 0.0
        self.lower_bound = monitor.start_objective
        self.stopped = False
        self._resumed = False

    # -- the engine's interface ----------------------------------------------------

    @property
    def done(self) -> bool:
        return self.stopped or self.monitor.converged or self.monitor.iterations >= self.max_iter

    @abc.abstractmethod
    def next_evaluation(self) -> Evaluation:
        """The E-step this run needs next."""

    @abc.abstractmethod
    def receive(self, stats: Stats, seconds: float, n_rows: int, passes: float) -> None:
        """Advance with the statistics of the evaluation asked for."""

    @property
    def converged(self) -> bool:
        return self.monitor.converged

    @property
    def iterations(self) -> int:
        return self.monitor.iterations

    def retest(self, tol: float) -> None:
        """Apply a (possibly new) tolerance to the history after a resume."""
        self.monitor.retest(tol)

    def result(self) -> Any:
        """The parameters the fit reports for this member."""
        return self.params

    def stop(self) -> None:
        """End this member where it is: its current parameters are its result, and it did not converge."""
        self.stopped = True
        self.monitor.converged = False

    # -- steps inside a task (optional) ----------------------------------------------

    def next_segment(self) -> list[tuple[int, ...]] | None:
        """The partitions of each of the next steps, when they may run inside one task.

        A strategy whose steps read a few partitions each (online EM) returns
        them here; the engine then runs them in one task on a detached copy
        (:meth:`detached`) and takes the result back (:meth:`absorb`),
        instead of a scheduler round trip per step. None: one evaluation at
        a time (the default).
        """
        return None

    def detached(self) -> "MemberRun":
        """A copy to advance inside a task, carrying only the history its steps need."""
        raise NotImplementedError

    def absorb(self, advanced: "MemberRun") -> list:
        """Take the state of ``advanced`` (a :meth:`detached` copy, advanced); returns the new records."""
        raise NotImplementedError

    # -- helpers for subclasses -----------------------------------------------------

    def m_step_or_stop(self, family: Family, stats: Stats, notes: list[Note]) -> Any | None:
        """``family.m_step(stats, self.params)``, or None after a collapse (a Note is added to ``notes``).

        A collapsed M-step (a covariance that is no longer positive definite)
        leaves no parameters to continue from: the caller records the step
        and calls :meth:`stop`, so the member keeps its last good parameters,
        whose objective the step measured, instead of failing the whole fit.
        """
        try:
            return family.m_step(stats, self.params)
        except CollapsedComponentError as exc:
            detail = getattr(exc, "detail", None) or str(exc)
            notes.append(Note("collapsed", getattr(exc, "component", None),
                              f"{detail} in the M-step of iteration {self.monitor.iterations + 1}; "
                              "this restart stopped with the parameters from before that M-step"))
            return None

    def take_resumed(self) -> bool:
        """True once: for the first record after a resume."""
        value, self._resumed = self._resumed, False
        return value

    # -- checkpoints ----------------------------------------------------------------

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Everything needed to continue: JSON and float64 arrays."""
        js = {"strategy": self.strategy, "monitor": self.monitor.to_json(), "seed": self.seed,
              "n_passes": self.n_passes, "stopped": self.stopped,
              "lower_bound": None if math.isinf(self.lower_bound) else self.lower_bound}
        extra_js, extra_arrays = self.extra_state()
        js.update(extra_js)
        return js, {**params_arrays(self.params, "params"), **extra_arrays}

    def extra_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """A strategy's own state (phase, stored points, running statistics)."""
        return {}, {}

    def restore_extra(self, js: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Inverse of :meth:`extra_state`."""


@dataclasses.dataclass
class Strategy(abc.ABC):
    """Makes and restores member runs.

    Parameters
    ----------
    max_iter : int
        Step budget per member (EM iterations; see each strategy).
    tol : float
        Convergence threshold on ``|Δ objective|`` per unit weight.
    rtol : float
        Relative fall of the objective tolerated as round-off.
    """

    max_iter: int
    tol: float
    rtol: float = 1e-9

    run_class: ClassVar[type[MemberRun]]
    name: ClassVar[str] = ""

    def check(self, family: Family) -> None:
        """Raise a ConfigError when ``family`` lacks an ability this strategy needs."""

    def start(self, family: Family, params: Any, seed: int, start_objective: float = -math.inf) -> MemberRun:
        """A run from starting parameters."""
        self.check(family)
        return self.run_class(family, params, Monitor(self.tol, self.rtol, start_objective=start_objective),
                              max_iter=self.max_iter, seed=seed, **self.run_options())

    def run_options(self) -> dict[str, Any]:
        return {}

    def restore(self, family: Family, js: dict[str, Any], arrays: dict[str, np.ndarray]) -> MemberRun:
        """A run from its checkpointed state, under this strategy's (possibly new) max_iter and tol."""
        self.check(family)
        if js.get("strategy") != self.run_class.strategy:
            from dem.errors import CheckpointError
            raise CheckpointError(f"the checkpoint was written by strategy {js.get('strategy')!r}, "
                                  f"this fit uses {self.run_class.strategy!r}")
        params = params_from_arrays(family.params_type, arrays, "params")
        monitor = Monitor.from_json(js["monitor"])
        monitor.rtol = self.rtol
        run = self.run_class(family, params, monitor, max_iter=self.max_iter, seed=int(js["seed"]),
                             **self.run_options())
        run.n_passes = float(js.get("n_passes", 0.0))
        lb = js.get("lower_bound")
        run.lower_bound = -math.inf if lb is None else float(lb)
        run.restore_extra(js, arrays)
        run.retest(self.tol)
        if js.get("stopped", False):
            run.stop()
        run._resumed = True
        return run
