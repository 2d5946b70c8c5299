"""One convergence rule and one history for every strategy.

A member's :class:`Monitor` records each step's objective (per unit weight),
its change Δ against the previous step of the same stage, the seconds, rows
and data passes it took, and the family's notes. The fit has converged when
``|Δ| < tol`` (scikit-learn's rule on the mean log-likelihood; hmmlearn's
rule on the total log-likelihood is the same with ``tol / n_steps``).

Records of points that are not iterates — an extrapolated SQUAREM point,
say — are kept in the history but do not take part in Δ, the convergence
test or the monotonicity check.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

from dem.families.base import Note

#: Relative tolerance below which a fall of the objective is round-off, not a bug.
MONOTONE_RTOL = 1e-9
#: float32 data is evaluated in float32 within blocks, so the objective carries
#: about 1e-7 relative noise per row.
MONOTONE_RTOL_FLOAT32 = 1e-6


class ObjectiveDecreasedWarning(RuntimeWarning):
    """The objective fell between two iterations by more than round-off."""


@dataclasses.dataclass
class Record:
    """One line of a fit's history.

    Attributes
    ----------
    iteration : int
        Steps of this member so far (1-based).
    objective : float
        The objective per unit weight at this step's E-step (the mean
        log-likelihood, or the ELBO of a variational family).
    delta : float
        Change against the previous iterate of the same stage (inf for the first).
    seconds, n_rows : the pass's wall time and the rows it read
    n_passes : float
        Data passes of this member so far, initialisation excluded.
    resumed : bool
        The first step after a resume.
    notes : list of dict
        :class:`~dem.families.base.Note` records.
    stage : str or None
        The annealing temperature (Δ is taken within a stage).
    event : str or None
        What kind of step: ``"em"``, ``"extrapolated"`` (SQUAREM),
        ``"batch"`` (online EM), ``"sem"``.
    """

    iteration: int
    objective: float
    delta: float
    seconds: float
    n_rows: int
    n_passes: float = 0.0
    resumed: bool = False
    notes: list[dict] = dataclasses.field(default_factory=list)
    stage: str | None = None
    event: str | None = None

    @property
    def iterate(self) -> bool:
        """Whether this point is an iterate (it counts for Δ and convergence)."""
        return self.event != "extrapolated"

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if math.isinf(d["delta"]) or math.isnan(d["delta"]):
            d["delta"] = None
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Record":
        d = dict(d)
        if "objective" not in d:  # histories written by dem 0.1
            d["objective"] = d.pop("mean_log_likelihood")
        d.pop("mean_log_likelihood", None)
        if d.get("delta") is None:
            d["delta"] = math.inf
        d["notes"] = [Note.from_json(n).to_json() for n in d.get("notes") or []]
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def objective_of(record: dict[str, Any]) -> float:
    """The objective of a history record as JSON (old histories call it mean_log_likelihood)."""
    value = record.get("objective", record.get("mean_log_likelihood"))
    return float("nan") if value is None else float(value)


def note_texts(record: dict[str, Any]) -> list[str]:
    """The notes of a history record as one line each (plain strings in old histories)."""
    return [str(Note.from_json(n)) for n in record.get("notes") or []]


@dataclasses.dataclass
class Monitor:
    """One member's history and convergence test.

    Parameters
    ----------
    tol : float
        Convergence threshold on ``|Δ objective|`` per unit weight.
    rtol : float
        Relative fall of the objective tolerated as round-off.
    """

    tol: float
    rtol: float = MONOTONE_RTOL
    history: list[Record] = dataclasses.field(default_factory=list)
    converged: bool = False
    start_objective: float = -math.inf  # a warm start's previous lower bound

    def previous(self, stage: str | None) -> float:
        """The objective of the last iterate of ``stage`` (−inf if none)."""
        for rec in reversed(self.history):
            if not rec.iterate:
                continue
            return rec.objective if rec.stage == stage else -math.inf
        return self.start_objective

    def record(self, objective: float, *, seconds: float, n_rows: int, n_passes: float,
               notes: list[Note] | None = None, stage: str | None = None, event: str | None = None,
               resumed: bool = False, check: bool = True) -> Record:
        """Add one step; for iterates, test convergence and monotonicity.

        ``check=False`` records an iterate whose objective may legitimately
        fall (stochastic EM, online EM) without warning about it.
        """
        notes = list(notes or [])
        iterate = event != "extrapolated"
        delta = objective - self.previous(stage) if iterate else math.nan
        if iterate and check and delta < -self.rtol * max(1.0, abs(objective)):
            msg = f"the objective decreased by {-delta:.3g} at iteration {len(self.history) + 1}"
            notes.append(Note("decreased", None, msg))
            warnings.warn(msg, ObjectiveDecreasedWarning, stacklevel=4)
        rec = Record(len(self.history) + 1, float(objective), float(delta), float(seconds), int(n_rows),
                     float(n_passes), resumed, [n.to_json() for n in notes], stage, event)
        self.history.append(rec)
        if iterate:
            self.converged = bool(abs(delta) < self.tol)
        return rec

    def retest(self, tol: float) -> None:
        """Apply a new tolerance to the history (a resumed fit may lower or raise tol)."""
        self.tol = tol
        last = next((r for r in reversed(self.history) if r.iterate), None)
        self.converged = last is not None and abs(last.delta) < tol

    @property
    def iterations(self) -> int:
        return len(self.history)

    def to_json(self) -> dict[str, Any]:
        return {"tol": self.tol, "rtol": self.rtol, "converged": self.converged,
                "start_objective": None if math.isinf(self.start_objective) else self.start_objective,
                "history": [r.to_json() for r in self.history]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Monitor":
        start = d.get("start_objective")
        return cls(float(d["tol"]), float(d.get("rtol", MONOTONE_RTOL)),
                   [Record.from_json(r) for r in d.get("history", [])], bool(d.get("converged", False)),
                   -math.inf if start is None else float(start))
