"""SQUAREM (Varadhan and Roland, 2008): EM accelerated by squared extrapolation.

One cycle, in the family's unconstrained coordinates
(:class:`~dem.families.base.FlatParameters`), from ``θ0``::

    θ1 = F(θ0),  θ2 = F(θ1)                      two EM maps
    r = θ1 − θ0,  v = θ2 − 2θ1 + θ0
    α = −‖r‖ / ‖v‖                               SqS3, clipped to [−step_max, −step_min]
    θ' = θ0 − 2αr + α²v                          the extrapolated point
    θ'' = F(θ')                                  the stabilising EM step

Every pass evaluates the E-step at one point and gives both the objective
there and its EM map, so a cycle costs three passes and wastes none: the
pass at ``θ0`` gives ``L(θ0)`` and ``θ1``, the pass at ``θ1`` gives ``L(θ1)``
and ``θ2``, the pass at ``θ'`` gives ``L(θ')`` and ``θ''``, whose own
objective comes from the next pass (the next cycle's first).

The safeguard keeps the objective of the iterates from ever decreasing.
Every iterate must reach ``L(θ1)`` (up to the monitor's round-off ``rtol``):

* ``L(θ') ≥ L(θ1)``: θ' is accepted, and the next cycle starts from θ''
  (EM guarantees ``L(θ'') ≥ L(θ')``);
* ``L(θ') < L(θ1)``: θ' is not an iterate, but θ'' may still be one; the
  next pass evaluates θ'' as the first pass of the next cycle, and keeps it
  if ``L(θ'') ≥ L(θ1)`` — on a nearly flat ridge this saves most of what a
  stricter test would throw away (at no cost when it succeeds, one more
  pass when it fails);
* otherwise the extrapolation is rejected and the next cycle starts from θ2
  (``L(θ2) ≥ L(θ1)``). A non-finite objective, an invalid point (a
  covariance that is not positive definite once mapped back, non-finite
  coordinates) or an M-step that fails there are rejections too.

Step bounds as the R package SQUAREM's ``squarem1`` manages them: ``|α|``
starts bounded by ``step_max0 = 1``; when an accepted step sits on the bound
the bound grows by ``mstep = 4``; when a rejected step sat on it, it shrinks
by ``mstep`` (never below ``step_max0``). An ``α`` of −1 makes ``θ' = θ2``:
when ``|α + 1| ≤ 0.1`` the third pass is a plain EM step at θ2 (an iterate
the convergence test sees, where θ' would not be), which is also what
a cycle does when the family's coordinates of ``θ0, θ1, θ2`` are not
comparable (an HMM probability that became exactly zero changes which
coordinates are free).

History: passes at θ0, θ1, θ2 and an accepted θ'' have ``event="em"``; a
pass at θ' (and at a rejected θ'') has ``event="extrapolated"``, with a note
of kind ``"accepted"``, ``"deferred"`` (θ'' is judged next) or
``"rejected"``; an accepted θ'' carries an ``"accepted"`` note too.
Extrapolated records are not iterates: the monitor leaves them out of Δ,
the convergence test and the monotonicity check, so convergence is judged,
as for plain EM, on the change between consecutive iterates.

``max_iter`` counts passes (records), extrapolated ones included: a fit of
``max_iter=n`` reads the data at most ``n`` times, as plain EM does. The
returned parameters are the EM map of the last accepted point, and
``lower_bound_`` that point's objective, as for plain EM. The whole cycle
state — the phase, the stored point, the step bounds — is in the
checkpoint, so a fit resumed mid-cycle ends bitwise equal to an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np

from dem.engine.executor import Evaluation
from dem.engine.strategies.base import MemberRun, Strategy, params_arrays, params_from_arrays
from dem.errors import CheckpointError, CollapsedComponentError, ConfigError
from dem.families.base import Family, FlatParameters, Note, Stats

#: squarem1's defaults: |α| ≥ step_min0, |α| ≤ step_max (starting at step_max0),
#: the bound multiplied or divided by mstep.
STEP_MIN0 = 1.0
STEP_MAX0 = 1.0
MSTEP = 4.0
#: Within this of −1 the pass evaluates θ2 itself, a plain EM iterate that the convergence
#: test sees (θ' is no iterate). SqS3's |α| is about 1/(1 − λ) for EM's slowest rate λ, so
#: |α| ≤ 1.1 means λ ≲ 0.1: EM is fast there, and on a well-separated mixture θ' would gain
#: less than the pass by which it delays the convergence test. squarem1 skips its
#: stabilising step within 0.01.
NEAR_EM_STEP = 0.1

# Phases of a cycle: which point the next pass evaluates (θ0, θ1, θ' or θ2, θ'').
FIRST, SECOND, THIRD, STABILISED = 0, 1, 2, 3

#: What a point that cannot be mapped back or evaluated raises on the driver.
_INVALID_POINT = (CollapsedComponentError, FloatingPointError, ValueError, np.linalg.LinAlgError)


def _zero_pattern(params: Any) -> list[np.ndarray]:
    return [np.asarray(getattr(params, f.name)) == 0 for f in dataclasses.fields(params)]


def comparable(family: FlatParameters, points: list[Any]) -> list[np.ndarray] | None:
    """The coordinates of ``points``, or None where they do not name the same free parameters.

    HMM families leave exact zeros out of their coordinates (they are
    structural), so a probability that became zero between two EM steps
    changes what the coordinates mean: such points are not extrapolated.
    """
    patterns = [_zero_pattern(p) for p in points]
    for other in patterns[1:]:
        if any(a.shape != b.shape or not np.array_equal(a, b) for a, b in zip(patterns[0], other)):
            return None
    vectors = [np.asarray(family.to_vector(p), dtype=np.float64) for p in points]
    if any(v.shape != vectors[0].shape for v in vectors) or not all(np.isfinite(v).all() for v in vectors):
        return None
    return vectors


def step_length(r: np.ndarray, v: np.ndarray, step_min: float, step_max: float) -> float:
    """SqS3's ``α = −‖r‖/‖v‖``, clipped to ``[−step_max, −step_min]``."""
    nr, nv = float(np.linalg.norm(r)), float(np.linalg.norm(v))
    if nv > 0:
        alpha = -nr / nv
    else:  # r moves in a straight line: as far as the bound allows (or nowhere if r is 0)
        alpha = -math.inf if nr > 0 else -step_min
    return float(min(-step_min, max(-step_max, alpha)))


class SquaremRun(MemberRun):
    """One member iterating SQUAREM cycles (three passes each; four when a stabilised point fails)."""

    strategy = "squarem"

    def __init__(self, family: Family, params: Any, monitor: Any, *, max_iter: int, seed: int,
                 step_min0: float = STEP_MIN0, step_max0: float = STEP_MAX0, mstep: float = MSTEP) -> None:
        super().__init__(family, params, monitor, max_iter=max_iter, seed=seed)
        self.step_min = float(step_min0)
        self.step_max0 = float(step_max0)
        self.step_max = float(step_max0)
        self.mstep = float(mstep)
        self.phase = FIRST
        self.theta0: Any = None        # the cycle's start (phase SECOND)
        self.point: Any = None         # θ' (phase THIRD) or θ'' (phase STABILISED); None: evaluate params
        self.alpha = math.nan          # the cycle's step length
        self.objective1 = math.nan     # L(θ1): what θ' or θ'' must reach
        self.pending: list[Note] = []  # notes for the record of a THIRD pass at θ2

    # -- the engine's interface ----------------------------------------------------

    def next_evaluation(self) -> Evaluation:
        return Evaluation(self.family, self.params if self.point is None else self.point)

    def receive(self, stats: Stats, seconds: float, n_rows: int, passes: float) -> None:
        self.n_passes += passes
        at = dict(seconds=seconds, n_rows=n_rows, n_passes=self.n_passes, resumed=self.take_resumed())
        if self.phase == THIRD and self.point is not None:
            self._judge_extrapolated(stats, at)
        elif self.phase == STABILISED:
            self._judge_stabilised(stats, at)
        else:
            self._em_step(stats, at)

    # -- the cycle -----------------------------------------------------------------

    def _em_step(self, stats: Stats, at: dict[str, Any]) -> None:
        """A pass at θ0, θ1, or at θ2 when the cycle does not extrapolate."""
        here = self.params
        objective = self.family.objective(stats, here)
        notes = self.family.notes(stats, here) + (self.pending if self.phase == THIRD else [])
        new = self.family.m_step(stats, here)
        self.monitor.record(objective, notes=notes, event="em", **at)
        self.lower_bound, self.params = objective, new
        if self.phase == FIRST:
            self.theta0, self.phase = here, SECOND
        elif self.phase == SECOND:
            self.objective1 = objective
            self._extrapolate(here, new)
            self.theta0, self.phase = None, THIRD
        else:
            if not self.pending and self.alpha == -self.step_max:
                self.step_max *= self.mstep  # α = −1 on a bound of 1: squarem1 grows it too
            self.pending, self.phase = [], FIRST

    def _extrapolate(self, theta1: Any, theta2: Any) -> None:
        """θ' from θ0, θ1, θ2 (``self.params`` is θ2), or None to evaluate θ2 itself."""
        self.point, self.alpha, self.pending = None, math.nan, []
        vectors = comparable(self.family, [self.theta0, theta1, theta2])
        if vectors is None:
            return
        u0, u1, u2 = vectors
        r = u1 - u0
        v = (u2 - u1) - r
        self.alpha = alpha = step_length(r, v, self.step_min, self.step_max)
        if alpha >= -1.0 - NEAR_EM_STEP:
            return  # θ' is θ2, or so close that θ2 itself (an iterate) is the better pass
        vector = u0 - 2.0 * alpha * r + alpha * alpha * v
        try:
            if not np.isfinite(vector).all():
                raise FloatingPointError("non-finite coordinates")
            with np.errstate(over="raise", invalid="raise"):
                self.point = self.family.from_vector(vector, theta2)
        except _INVALID_POINT as exc:
            self.pending = [Note("rejected", None, f"extrapolation with step length {-alpha:.4g} gave an "
                                 f"invalid model ({exc}); took the EM step instead")]
            self._shrink()

    def _floor(self) -> float:
        return self.objective1 - self.monitor.rtol * max(1.0, abs(self.objective1))

    def _stabilise(self, stats: Stats, point: Any) -> tuple[float, Any, str]:
        """The objective at ``point``, its EM map (None if unusable) and why not."""
        objective = float(self.family.objective(stats, point))
        if not math.isfinite(objective):
            return objective, None, "a non-finite objective"
        try:
            new = self.family.m_step(stats, point)
        except CollapsedComponentError as exc:
            return objective, None, f"an M-step that failed ({exc})"
        # An extrapolation can starve a component: its EM step may then hold a zero variance
        # that only the next E-step would notice, on a worker, failing the whole fit.
        try:
            with np.errstate(all="ignore"):
                valid = bool(np.isfinite(self.family.to_vector(new)).all())
        except _INVALID_POINT:
            valid = False
        return (objective, new, "") if valid else (objective, None, "an EM step to an invalid model")

    def _judge_extrapolated(self, stats: Stats, at: dict[str, Any]) -> None:
        """θ' is accepted if ``L(θ') ≥ L(θ1)``; below that, its EM step θ'' is judged by the next pass."""
        objective, new, reason = self._stabilise(stats, self.point)
        step = f"extrapolation with step length {-self.alpha:.4g}"
        if new is None:
            self._reject(objective, f"{step} rejected: {reason}", at)
        elif objective >= self._floor():
            notes = self.family.notes(stats, self.point) + [Note("accepted", None, f"{step} accepted")]
            self.monitor.record(objective, notes=notes, event="extrapolated", **at)
            self.lower_bound, self.params = objective, new
            self._grow()
            self.point, self.phase = None, FIRST
        else:
            note = Note("deferred", None, f"{step}: objective {objective:.10g} below {self.objective1:.10g}; "
                                          "its EM step is judged by the next pass")
            self.monitor.record(objective, notes=[note], event="extrapolated", **at)
            self.point, self.phase = new, STABILISED  # params stay θ2 until θ'' is judged

    def _judge_stabilised(self, stats: Stats, at: dict[str, Any]) -> None:
        """θ'' = F(θ') is the next iterate if ``L(θ'') ≥ L(θ1)``; this pass is then its cycle's first."""
        here = self.point
        objective, new, reason = self._stabilise(stats, here)
        step = f"extrapolation with step length {-self.alpha:.4g}"
        if new is None or objective < self._floor():
            reason = reason or f"objective {objective:.10g} below {self.objective1:.10g}"
            self._reject(objective, f"{step} rejected after its EM step: {reason}", at)
            return
        notes = self.family.notes(stats, here) + [Note("accepted", None, f"{step} accepted after its EM step")]
        self.monitor.record(objective, notes=notes, event="em", **at)
        self.lower_bound, self.params = objective, new
        self._grow()
        self.theta0, self.point, self.phase = here, None, SECOND

    def _reject(self, objective: float, message: str, at: dict[str, Any]) -> None:
        note = Note("rejected", None, f"{message}; continuing from the second EM step")
        self.monitor.record(objective, notes=[note], event="extrapolated", **at)
        self._shrink()
        self.point, self.phase = None, FIRST  # params are θ2, lower_bound L(θ1)

    def _grow(self) -> None:
        if self.alpha == -self.step_max:
            self.step_max *= self.mstep

    def _shrink(self) -> None:
        if self.alpha == -self.step_max:
            self.step_max = max(self.step_max0, self.step_max / self.mstep)

    # -- checkpoints ----------------------------------------------------------------

    def extra_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        js = {"phase": self.phase, "pending": [n.to_json() for n in self.pending],
              "stored": [n for n in ("theta0", "point") if getattr(self, n) is not None]}
        # Floats go in arrays, so NaN and the exact bits survive.
        arrays = {"squarem.steps": np.array([self.step_min, self.step_max0, self.step_max, self.mstep,
                                             self.alpha, self.objective1])}
        for name in js["stored"]:
            arrays.update(params_arrays(getattr(self, name), f"squarem.{name}"))
        return js, arrays

    def restore_extra(self, js: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        steps = arrays.get("squarem.steps")
        if steps is None or "phase" not in js:
            raise CheckpointError("the checkpoint has no SQUAREM cycle state")
        self.step_min, self.step_max0, self.step_max, self.mstep, self.alpha, self.objective1 = (
            float(x) for x in steps)
        self.phase = int(js["phase"])
        self.pending = [Note.from_json(n) for n in js.get("pending", [])]
        for name in ("theta0", "point"):
            value = None
            if name in js["stored"]:
                value = params_from_arrays(self.family.params_type, arrays, f"squarem.{name}")
            setattr(self, name, value)


@dataclasses.dataclass
class SquaremStrategy(Strategy):
    """SQUAREM cycles until ``|Δ objective| < tol`` between EM iterates, or ``max_iter`` passes.

    The family must declare :class:`~dem.families.base.FlatParameters`.
    """

    step_min0: float = STEP_MIN0
    step_max0: float = STEP_MAX0
    mstep: float = MSTEP

    run_class: ClassVar[type] = SquaremRun
    name: ClassVar[str] = "squarem"

    def check(self, family: Family) -> None:
        if not isinstance(family, FlatParameters):
            raise ConfigError(f"accelerate='squarem' is not available for {family.kind!r} models: the family "
                              "declares no unconstrained coordinates (FlatParameters)")

    def run_options(self) -> dict[str, Any]:
        return {"step_min0": self.step_min0, "step_max0": self.step_max0, "mstep": self.mstep}

    @classmethod
    def from_estimator(cls, params: dict[str, Any], *, max_iter: int, tol: float, rtol: float,
                       data: Any = None) -> "SquaremStrategy":
        """The strategy for an estimator with ``accelerate="squarem"`` (``max_iter`` counts passes)."""
        return cls(max_iter, tol, rtol)


STRATEGIES = {"squarem": SquaremStrategy}
