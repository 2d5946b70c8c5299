"""Stochastic EM (Celeux and Diebolt, 1985), alone or handing over to EM.

Each SEM iteration draws every row's latent label from its posterior under
the current parameters and takes the M-step on those hard assignments
(:meth:`~dem.families.base.SampledAssignments.e_step_sampled`). The draws
use counter-based random numbers keyed by ``(seed, SEM_STREAM, iteration)``
and the global row, so a row gets the same label whatever the partitioning
or the cluster. The chain does not converge to a point: it wanders around
the maximum-likelihood estimate, escaping the saddle points and poor local
maxima where EM stalls. The recorded objective of each iteration is the
observed-data log-likelihood of the parameters the labels were drawn under,
and the iterate with the best one is kept.

* ``"sem"`` runs ``max_iter`` SEM iterations and reports the best iterate.
  SEM has no convergence test (Rmixmod stops it by its iteration count
  only), so a fit that has run its iterations reports ``converged_ = True``.
* ``"sem+em"`` runs ``min(SEM_ITERATIONS, max_iter)`` SEM iterations, then
  EM from the best SEM iterate until ``|Δ| < tol`` or ``max_iter``
  iterations in all — Rmixmod's ``algo = c("SEM", "EM")`` chain.

SEM records have ``event="sem"`` and ``stage="sem"`` (Δ is taken between SEM
iterations and EM starts afresh); they may fall, so no monotonicity warning.
The family must declare :class:`~dem.families.base.SampledAssignments`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np

from dem.engine.executor import Evaluation
from dem.engine.monitor import Monitor
from dem.engine.strategies.base import MemberRun, Strategy, params_arrays, params_from_arrays
from dem.errors import ConfigError
from dem.families.base import Family, SampledAssignments, Stats

#: Tag of SEM's label draws, apart from the other streams keyed by the member's seed
#: (k-means‖ uses 7, the init sample 11, random responsibilities 13, online EM's order 19).
SEM_STREAM = 17

#: SEM iterations before ``"sem+em"`` hands over to EM. Each costs a pass; on heavily
#: overlapping mixtures the best of 30 iterates is already close to EM's optimum
#: (benchmarks/online_bench.py), and EM then converges from there.
SEM_ITERATIONS = 30

SEM_STAGE = "sem"


class SEMRun(MemberRun):
    """One member: ``n_sem`` SEM iterations, then (``then_em``) EM from the best of them."""

    strategy = "sem"

    def __init__(self, family: Family, params: Any, monitor: Monitor, *, max_iter: int, seed: int,
                 n_sem: int | None = None, then_em: bool = False) -> None:
        super().__init__(family, params, monitor, max_iter=max_iter, seed=seed)
        self.n_sem = int(max_iter if n_sem is None else min(n_sem, max_iter))
        self.then_em = bool(then_em)
        self.sem_done = 0          # SEM iterations taken
        self.best: Any = None      # the SEM iterate with the best observed objective
        self.best_objective = -math.inf

    @property
    def in_sem(self) -> bool:
        return self.sem_done < self.n_sem

    @property
    def done(self) -> bool:
        if self.in_sem:
            return False
        if not self.then_em:
            return True
        return self.monitor.converged or self.monitor.iterations >= self.max_iter

    @property
    def converged(self) -> bool:
        if self.in_sem:
            return False
        return True if not self.then_em else self._em_converged()

    def _em_converged(self) -> bool:
        last = self.monitor.history[-1] if self.monitor.history else None
        return last is not None and last.stage != SEM_STAGE and self.monitor.converged

    def retest(self, tol: float) -> None:
        self.monitor.retest(tol)
        if self.in_sem or (self.then_em and not self._em_converged()):
            self.monitor.converged = False
        elif not self.then_em:
            self.monitor.converged = True

    def next_evaluation(self) -> Evaluation:
        if self.in_sem:
            return Evaluation(self.family, self.params, sample_key=(self.seed, SEM_STREAM, self.sem_done))
        return Evaluation(self.family, self.params)

    def receive(self, stats: Stats, seconds: float, n_rows: int, passes: float) -> None:
        objective = self.family.objective(stats, self.params)
        notes = self.family.notes(stats, self.params)
        new = self.family.m_step(stats, self.params)
        self.n_passes += passes
        if self.in_sem:
            if objective > self.best_objective:
                self.best, self.best_objective = self.params, objective
            self.monitor.record(objective, seconds=seconds, n_rows=n_rows, n_passes=self.n_passes, notes=notes,
                                stage=SEM_STAGE, event="sem", resumed=self.take_resumed(), check=False)
            self.sem_done += 1
            self.lower_bound = self.best_objective
            self.params = new
            if not self.in_sem:
                self.monitor.converged = not self.then_em
                if self.then_em:
                    self.params = self.best  # EM starts from the best SEM iterate
            else:
                self.monitor.converged = False
            return
        self.monitor.record(objective, seconds=seconds, n_rows=n_rows, n_passes=self.n_passes, notes=notes,
                            event="em", resumed=self.take_resumed())
        self.lower_bound = objective
        self.params = new

    def result(self) -> Any:
        if not self.then_em and self.best is not None:
            return self.best
        return self.params

    def extra_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        js = {"sem_done": self.sem_done, "n_sem": self.n_sem, "then_em": self.then_em,
              "best_objective": None if math.isinf(self.best_objective) else self.best_objective}
        arrays = params_arrays(self.best, "best") if self.best is not None else {}
        return js, arrays

    def restore_extra(self, js: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        from dem.errors import CheckpointError

        if bool(js.get("then_em")) != self.then_em:
            raise CheckpointError("the checkpoint was written by another learning_method (sem / sem+em)")
        self.sem_done = int(js["sem_done"])
        best = js.get("best_objective")
        self.best_objective = -math.inf if best is None else float(best)
        self.best = params_from_arrays(self.family.params_type, arrays, "best") \
            if any(k.startswith("best.") for k in arrays) else None


@dataclasses.dataclass
class SEMStrategy(Strategy):
    """``max_iter`` SEM iterations; the best observed iterate is the result."""

    run_class: ClassVar[type] = SEMRun
    name: ClassVar[str] = "sem"
    then_em: ClassVar[bool] = False

    @classmethod
    def from_estimator(cls, params: dict[str, Any], *, max_iter: int, tol: float, rtol: float,
                       data: Any) -> "SEMStrategy":
        return cls(max_iter, tol, rtol)

    def check(self, family: Family) -> None:
        if not isinstance(family, SampledAssignments):
            raise ConfigError(f"stochastic EM (learning_method={self.name!r}) is not available for "
                              f"{family.kind!r} models ({type(family).__name__}): the family cannot draw "
                              "latent labels (SampledAssignments)")

    def run_options(self) -> dict[str, Any]:
        return {"n_sem": None if not self.then_em else SEM_ITERATIONS, "then_em": self.then_em}


@dataclasses.dataclass
class SEMThenEMStrategy(SEMStrategy):
    """:data:`SEM_ITERATIONS` SEM iterations, then EM from the best of them (``max_iter`` in all)."""

    name: ClassVar[str] = "sem+em"
    then_em: ClassVar[bool] = True


STRATEGIES = {"sem": SEMStrategy, "sem+em": SEMThenEMStrategy}
