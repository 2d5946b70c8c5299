"""Plain EM (and GEM): one pass, one M-step.

Each step evaluates the E-step at the current parameters, records the
objective there (scikit-learn's ``lower_bound_`` convention: the objective
of the last E-step) and moves to the M-step's parameters. A family whose
M-step only improves the objective (generalised EM, as a mixture of
experts' gate) runs unchanged. A member whose M-step collapses stops
with the parameters the last E-step measured (:meth:`MemberRun.m_step_or_stop`).
"""

from __future__ import annotations

from typing import Any

from dem.engine.executor import Evaluation
from dem.engine.strategies.base import MemberRun, Strategy
from dem.families.base import Stats


class EMRun(MemberRun):
    """One member iterating plain EM."""

    strategy = "em"

    def next_evaluation(self) -> Evaluation:
        return Evaluation(self.family, self.params)

    def step(self, family: Any, stats: Stats, seconds: float, n_rows: int, passes: float,
             stage: str | None = None) -> None:
        """Record the objective of ``stats`` and take the M-step (``family`` may be tempered)."""
        objective = family.objective(stats, self.params)
        notes = family.notes(stats, self.params)
        new = self.m_step_or_stop(family, stats, notes)
        self.n_passes += passes
        self.monitor.record(objective, seconds=seconds, n_rows=n_rows, n_passes=self.n_passes, notes=notes,
                            stage=stage, event="em", resumed=self.take_resumed())
        self.lower_bound = objective
        if new is None:
            self.stop()  # the objective just recorded is that of self.params: they are the result
        else:
            self.params = new

    def receive(self, stats: Stats, seconds: float, n_rows: int, passes: float) -> None:
        self.step(self.family, stats, seconds, n_rows, passes)


class EMStrategy(Strategy):
    """``max_iter`` EM iterations at most, until ``|Δ objective| < tol``."""

    run_class = EMRun
    name = "em"
