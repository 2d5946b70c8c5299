"""Deterministic annealing (Ueda and Nakano, 1998): EM over a schedule of temperatures.

EM first maximises the tempered objective at inverse temperature
``β_0 = beta_init``, where the landscape is smooth and components merge;
each stage runs until the tempered objective changes by less than ``tol``
(or for ``max_iter`` iterations), then β is multiplied by ``beta_rate``
(capped at 1) and the parameters are nudged apart
(:meth:`~dem.families.base.Tempering.perturb`, seeded by the member's seed
and the stage) so merged components can split where the data supports it.
The last stage is plain EM at β = 1 with its own ``max_iter``.

The family must declare :class:`~dem.families.base.Tempering`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from dem.engine.executor import Evaluation
from dem.engine.strategies.base import Strategy
from dem.engine.strategies.em import EMRun
from dem.errors import ConfigError
from dem.families.base import Family, Stats, Tempering


def schedule(beta_init: float, beta_rate: float) -> list[float]:
    """The inverse temperatures below 1 that precede plain EM."""
    betas, b = [], float(beta_init)
    while b < 1.0:
        betas.append(b)
        b *= float(beta_rate)
    return betas


def stage_label(beta: float) -> str | None:
    return None if beta >= 1.0 else f"beta={beta:.6g}"


class AnnealingRun(EMRun):
    """EM through a β schedule; ``stage`` indexes ``betas + [1.0]``."""

    strategy = "annealing"

    def __init__(self, family: Family, params: Any, monitor: Any, *, max_iter: int, seed: int,
                 betas: tuple[float, ...] = ()) -> None:
        super().__init__(family, params, monitor, max_iter=max_iter, seed=seed)
        self.betas = tuple(betas) + (1.0,)
        self.stage = 0
        self.stage_start = 0  # iterations before the current stage

    @property
    def beta(self) -> float:
        return self.betas[self.stage]

    def _family(self) -> Any:
        return self.family if self.beta >= 1.0 else self.family.tempered(self.beta)

    @property
    def done(self) -> bool:
        last = self.stage == len(self.betas) - 1
        finished = self.monitor.converged or self.monitor.iterations - self.stage_start >= self.max_iter
        return self.stopped or (last and finished)

    def next_evaluation(self) -> Evaluation:
        return Evaluation(self._family(), self.params)

    def receive(self, stats: Stats, seconds: float, n_rows: int, passes: float) -> None:
        self.step(self._family(), stats, seconds, n_rows, passes, stage=stage_label(self.beta))
        if self.stopped:
            return
        stage_over = self.monitor.converged or self.monitor.iterations - self.stage_start >= self.max_iter
        if stage_over and self.stage < len(self.betas) - 1:
            self.stage += 1
            self.stage_start = self.monitor.iterations
            # The next temperature starts afresh: nothing has converged at it yet.
            self.monitor.converged = False
            rng = np.random.default_rng([self.seed, self.stage, 13])
            self.params = self.family.perturb(self.params, rng)

    def retest(self, tol: float) -> None:
        self.monitor.retest(tol)
        last = self.monitor.history[-1] if self.monitor.history else None
        if last is None or last.stage != stage_label(self.beta):
            self.monitor.converged = False

    def extra_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"stage": self.stage, "stage_start": self.stage_start, "betas": list(self.betas)}, {}

    def restore_extra(self, js: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        if tuple(js.get("betas", ())) != self.betas:
            from dem.errors import CheckpointError
            raise CheckpointError(f"the checkpoint anneals through {js.get('betas')}, this fit through "
                                  f"{list(self.betas)}")
        self.stage = int(js["stage"])
        self.stage_start = int(js["stage_start"])


@dataclasses.dataclass
class AnnealingStrategy(Strategy):
    """EM through the schedule ``beta_init · beta_rateⁱ`` (below 1), then plain EM."""

    beta_init: float = 0.05
    beta_rate: float = 2.0

    run_class: ClassVar[type] = AnnealingRun
    name: ClassVar[str] = "annealing"

    def check(self, family: Family) -> None:
        if not isinstance(family, Tempering):
            raise ConfigError(f"deterministic annealing (beta_init) is not available for {family.kind!r} "
                              "models: the family has no tempered E-step")

    def run_options(self) -> dict[str, Any]:
        return {"betas": tuple(schedule(self.beta_init, self.beta_rate))}
