"""Online EM (Cappé and Moulines, 2009; stepwise EM, Liang and Klein, 2009): an M-step per mini-batch.

A mini-batch is a group of whole partitions holding at least ``batch_size``
rows; each pass visits the partitions in an order shuffled by the member's
seed and the pass number, so the batches — and the result — are the same on
any cluster. After each mini-batch the running statistics, kept in *mean
form* (per unit weight), are blended with the batch's::

    ŝ_t = S_batch · (1 / weight_sum(S_batch))
    s_t = (1 − ρ_t) · s_{t−1} + ρ_t · ŝ_t          ρ_t = (t + learning_offset)^(−learning_decay)

and the parameters become the M-step of ``s_t`` scaled back to the data's
total weight (a prior, or a variational family's Dirichlet counts, must see
counts at their true scale). Step ``t = 0`` sets ``s_0 = ŝ_0``; during the
first ``burn_in`` steps there is no M-step and the statistics are a plain
average (``ρ_t = 1/(t + 1)``), since the parameters do not move.

Statistics taken about a parameter-dependent centre (the Gaussian moments
about the mixture's mean) are moved onto the new parameters after every
M-step with :meth:`~dem.families.base.Rebasing.rebase`, so the running sum
always adds to a batch taken under the current parameters. A family must
declare :class:`~dem.families.base.Rebasing`.

``max_iter`` counts passes; a pass whose objective (that of the running
statistics at its last batch) changes by less than ``tol`` from the previous
pass's ends the fit. Each mini-batch is one history record with event
``"batch"``; since a stochastic objective may fall, no monotonicity warning.
Optional Polyak–Ruppert averaging of the iterates (in the family's
unconstrained coordinates, :class:`~dem.families.base.FlatParameters`)
starts with the second pass and is what the fit reports.

The whole state — running statistics, step counter, position in the pass
order, averaged parameters — is in :meth:`OnlineRun.extra_state`, so a fit
resumed after any mini-batch is bitwise equal to an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from typing import Any, ClassVar

import numpy as np

from dem.engine.executor import Evaluation, single_blas_thread
from dem.engine.monitor import Monitor
from dem.engine.strategies.base import MemberRun, Strategy
from dem.errors import ConfigError
from dem.families.base import Family, FlatParameters, Rebasing, Stats

#: Tag of the pass-order draws, ``default_rng([seed, ONLINE_STREAM, pass])``,
#: apart from every other stream keyed by the member's seed.
ONLINE_STREAM = 19

#: The default mini-batch: about this many batches per pass, within the bounds
#: below (see :func:`default_batch_size`).
STEPS_PER_PASS = 500
MIN_BATCH_ROWS = 1_000
MAX_BATCH_ROWS = 100_000
#: Share of the first pass read before the first M-step (at least one batch).
BURN_IN_SHARE = 0.01
#: A pass's mini-batch steps run inside this many tasks (see :meth:`OnlineRun.next_segment`).
SEGMENTS_PER_PASS = 4


def step_size(t: int, decay: float, offset: float, burn_in: int = 0) -> float:
    """ρ_t: 1 at t = 0, ``1/(t+1)`` during burn-in, then ``(t + offset)^(−decay)``."""
    if t == 0:
        return 1.0
    if t < burn_in:
        return 1.0 / (t + 1)
    return float((t + offset) ** (-decay))


def default_batch_size(n_samples: int) -> int:
    """Rows per mini-batch when ``batch_size`` is None.

    About :data:`STEPS_PER_PASS` steps per pass, between
    :data:`MIN_BATCH_ROWS` and :data:`MAX_BATCH_ROWS` rows: online EM
    advances like batch EM per unit of Σρ_t, so a pass needs hundreds of
    steps to beat ten batch iterations, while batches of a thousand rows or
    more keep each step's statistics (and its task overhead) sensible.
    """
    return int(min(max(math.ceil(n_samples / STEPS_PER_PASS), MIN_BATCH_ROWS), MAX_BATCH_ROWS))


def pass_batches(bounds: list[tuple[int, int]] | tuple, batch_size: int, seed: int, pass_index: int
                 ) -> list[tuple[int, ...]]:
    """The mini-batches of one pass: groups of whole partitions, in a seeded shuffled order.

    Partitions are visited in ``default_rng([seed, ONLINE_STREAM, pass_index]).permutation``
    order and grouped until a group holds ``batch_size`` rows; a last group of
    less than half a batch joins the one before. Each batch lists its
    partitions in increasing order (the order of the reduction tree).
    """
    order = np.random.default_rng([int(seed), ONLINE_STREAM, int(pass_index)]).permutation(len(bounds))
    batches: list[list[int]] = []
    current: list[int] = []
    rows = 0
    for p in order:
        current.append(int(p))
        rows += int(bounds[p][1] - bounds[p][0])
        if rows >= batch_size:
            batches.append(current)
            current, rows = [], 0
    if current:
        if batches and rows < batch_size / 2:
            batches[-1].extend(current)
        else:
            batches.append(current)
    return [tuple(sorted(b)) for b in batches]


class OnlineRun(MemberRun):
    """One member running online EM over the mini-batches of :func:`pass_batches`.

    With ``bounds=()`` the run is driven batch by batch from outside
    (``partial_fit``): :meth:`update` takes each batch's statistics and
    ``n_samples`` is the weight the running statistics are scaled to.
    """

    strategy = "online"

    def __init__(self, family: Family, params: Any, monitor: Monitor, *, max_iter: int, seed: int,
                 learning_decay: float = 0.7, learning_offset: float = 10.0, batch_size: int = 1,
                 bounds: tuple = (), n_samples: int = 0, burn_in: int = 0,
                 average_start: int | None = None) -> None:
        super().__init__(family, params, monitor, max_iter=max_iter, seed=seed)
        self.decay = float(learning_decay)
        self.offset = float(learning_offset)
        self.batch_size = int(batch_size)
        self.bounds = tuple(tuple(int(v) for v in b) for b in bounds)
        self.n_samples = int(n_samples)
        self.burn_in = int(burn_in)
        self.average_start = None if average_start is None else int(average_start)
        self.running: Stats | None = None
        self._pending: dict[str, np.ndarray] | None = None  # running statistics read from a checkpoint
        self.t = 0                      # mini-batch steps taken
        self.pass_index = 0             # passes completed
        self.batch_index = 0            # next batch of the current pass
        self.pass_objectives: list[float] = []
        self.average: np.ndarray | None = None
        self.average_count = 0
        self._batches: list[tuple[int, ...]] | None = None

    # -- the pass order ------------------------------------------------------------

    def batches(self) -> list[tuple[int, ...]]:
        """The mini-batches of the current pass."""
        if self._batches is None:
            self._batches = pass_batches(self.bounds, self.batch_size, self.seed, self.pass_index)
        return self._batches

    def next_evaluation(self) -> Evaluation:
        return Evaluation(self.family, self.params, partitions=self.batches()[self.batch_index])

    # -- steps inside a task ----------------------------------------------------------

    def next_segment(self) -> list[tuple[int, ...]] | None:
        """The next ``1/SEGMENTS_PER_PASS`` of the pass (never past its end), to run in one task.

        A step is a few milliseconds of arithmetic; a scheduler round trip
        per step would cost several times that. Where the segments end
        changes nothing but when checkpoints and progress reports come: the
        steps, and their bits, are the same.
        """
        if not self.bounds:
            return None
        batches = self.batches()
        size = max(1, math.ceil(len(batches) / SEGMENTS_PER_PASS))
        return batches[self.batch_index:self.batch_index + size]

    def detached(self) -> "OnlineRun":
        clone = copy.copy(self)
        # Only the last record travels: the next record's Δ is taken against it.
        clone.monitor = dataclasses.replace(self.monitor, history=self.monitor.history[-1:])
        clone.pass_objectives = list(self.pass_objectives)
        return clone

    def absorb(self, advanced: "OnlineRun") -> list:
        carried = 1 if self.monitor.history else 0
        first = len(self.monitor.history) + 1
        arrived = advanced.monitor.history[carried:]
        new = [dataclasses.replace(rec, iteration=first + j) for j, rec in enumerate(arrived)]
        self.monitor.history.extend(new)
        self.monitor.converged = advanced.monitor.converged
        for name in ("params", "running", "_pending", "t", "pass_index", "batch_index", "pass_objectives",
                     "average", "average_count", "_batches", "n_passes", "lower_bound", "stopped", "_resumed"):
            setattr(self, name, getattr(advanced, name))
        return new

    @property
    def done(self) -> bool:
        return self.pass_index >= self.max_iter or self.converged

    @property
    def iterations(self) -> int:
        """Passes completed (``max_iter`` counts passes); steps taken when driven batch by batch."""
        return self.pass_index if self.bounds else self.t

    @property
    def converged(self) -> bool:
        objs = self.pass_objectives
        return len(objs) >= 2 and abs(objs[-1] - objs[-2]) < self.monitor.tol

    def retest(self, tol: float) -> None:
        self.monitor.tol = tol
        self.monitor.converged = self.converged

    # -- one step --------------------------------------------------------------------

    def _running_like(self, stats: Stats) -> Stats | None:
        if self._pending is not None:
            self.running = type(stats).from_arrays(self._pending)
            self._pending = None
        return self.running

    def scaled_running(self) -> Stats:
        """The running statistics at the data's total weight (rows × weight per row)."""
        assert self.running is not None
        return self.running.scaled(self.n_samples / self.running.n_rows)

    def update(self, stats: Stats) -> tuple[float, list]:
        """Blend one batch's statistics (taken under ``self.params``) in and take the M-step.

        Returns the objective of the running statistics before the M-step, and
        the family's notes on them (a component empty in the running statistics).
        """
        running = self._running_like(stats)
        if stats.weight_sum <= 0:  # a batch of zero weight carries no information
            return self.lower_bound, []
        batch = stats.scaled(1.0 / stats.weight_sum)
        rho = step_size(self.t, self.decay, self.offset, self.burn_in)
        running = batch if running is None else running.scaled(1.0 - rho) + batch.scaled(rho)
        self.running = running
        scaled = self.scaled_running()
        objective = self.family.objective(scaled, self.params)
        notes = self.family.notes(scaled, self.params)
        if self.t >= self.burn_in:
            # Thousands of tiny M-steps: multithreaded BLAS on K small matrices costs ~100x more.
            with single_blas_thread():
                new = self.family.m_step(scaled, self.params)
            self.running = self.family.rebase(running, self.params, new)
            self.params = new
            if self.average_start is not None and self.t >= self.average_start:
                self._accumulate_average(new)
        self.t += 1
        return objective, notes

    def _accumulate_average(self, params: Any) -> None:
        v = self.family.to_vector(params)
        self.average_count += 1
        self.average = v.copy() if self.average is None else self.average + (v - self.average) / self.average_count

    def receive_batch(self, stats: Stats, seconds: float, n_rows: int, passes: float) -> float:
        """One step on a batch's statistics and its history record; returns the running objective."""
        objective, notes = self.update(stats)
        self.n_passes += passes
        self.monitor.record(objective, seconds=seconds, n_rows=n_rows, n_passes=self.n_passes, notes=notes,
                            event="batch", resumed=self.take_resumed(), check=False)
        self.lower_bound = objective
        self.monitor.converged = self.converged
        return objective

    def receive(self, stats: Stats, seconds: float, n_rows: int, passes: float) -> None:
        objective = self.receive_batch(stats, seconds, n_rows, passes)
        self.batch_index += 1
        if self.batch_index >= len(self.batches()):
            self.pass_objectives.append(objective)
            self.pass_index += 1
            self.batch_index = 0
            self._batches = None
        # The monitor's own test compares consecutive batches; online EM's compares passes.
        self.monitor.converged = self.converged

    def result(self) -> Any:
        if self.average is None:
            return self.params
        return self.family.from_vector(self.average, self.params)

    # -- checkpoints -------------------------------------------------------------------

    def extra_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        js = {"t": self.t, "pass_index": self.pass_index, "batch_index": self.batch_index,
              "pass_objectives": list(self.pass_objectives), "average_count": self.average_count,
              "batch_size": self.batch_size, "n_samples": self.n_samples}
        arrays: dict[str, np.ndarray] = {}
        running = self.running.arrays() if self.running is not None else self._pending
        if running is not None:
            arrays.update({f"running.{k}": v for k, v in running.items()})
        if self.average is not None:
            arrays["average"] = np.asarray(self.average, dtype=np.float64)
        return js, arrays

    def restore_extra(self, js: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        from dem.errors import CheckpointError

        if int(js.get("batch_size", self.batch_size)) != self.batch_size:
            raise CheckpointError(f"the checkpoint was written with batch_size {js.get('batch_size')}, "
                                  f"this fit uses {self.batch_size}")
        self.t = int(js["t"])
        self.pass_index = int(js["pass_index"])
        self.batch_index = int(js["batch_index"])
        self.pass_objectives = [float(v) for v in js.get("pass_objectives", [])]
        self.average_count = int(js.get("average_count", 0))
        self.n_samples = int(js.get("n_samples", self.n_samples))
        running = {k[len("running."):]: v for k, v in arrays.items() if k.startswith("running.")}
        self._pending = running or None
        self.running = None
        self.average = np.array(arrays["average"], dtype=np.float64) if "average" in arrays else None
        self._batches = None


@dataclasses.dataclass
class OnlineStrategy(Strategy):
    """Online EM over mini-batches of whole partitions (see the module docstring).

    Parameters
    ----------
    max_iter : passes over the data at most
    tol : threshold on the change of the running objective between passes
    learning_decay : κ in ρ_t = (t + t0)^(−κ), in (0.5, 1]
    learning_offset : t0 ≥ 0
    batch_size : rows per mini-batch (whole partitions: a batch may hold more)
    bounds : the data's partition row ranges
    n_samples : rows of the data (the running statistics are scaled to them)
    burn_in : mini-batches before the first M-step
    average : Polyak–Ruppert averaging of the iterates from the second pass on
    """

    learning_decay: float = 0.7
    learning_offset: float = 10.0
    batch_size: int = MIN_BATCH_ROWS
    bounds: tuple = ()
    n_samples: int = 0
    burn_in: int = 1
    average: bool = False

    run_class: ClassVar[type] = OnlineRun
    name: ClassVar[str] = "online"

    @classmethod
    def from_estimator(cls, params: dict[str, Any], *, max_iter: int, tol: float, rtol: float,
                       data: Any) -> "OnlineStrategy":
        """The strategy from an estimator's ``learning_*``/``batch_size`` parameters and its data."""
        batch_size = params.get("batch_size")
        explicit = batch_size is not None
        batch_size = default_batch_size(data.n_samples) if batch_size is None else int(batch_size)
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1; got {batch_size}")
        decay = float(params.get("learning_decay", 0.7))
        if not 0.5 < decay <= 1.0:
            raise ConfigError(f"learning_decay must be in (0.5, 1]; got {decay}")
        offset = float(params.get("learning_offset", 10.0))
        if offset < 0:
            raise ConfigError(f"learning_offset must be >= 0; got {offset}")
        bounds = tuple((int(a), int(b)) for a, b in data.bounds)
        smallest = min(b - a for a, b in bounds)
        if explicit and smallest >= 2 * batch_size:
            warnings.warn(f"mini-batches are whole partitions: each holds at least {smallest} rows, more than "
                          f"batch_size={batch_size}; pass partition_rows (and write Zarr with chunks of at most "
                          "batch_size rows) for smaller batches", UserWarning, stacklevel=4)
        steps = len(pass_batches(bounds, batch_size, 0, 0))
        return cls(max_iter, tol, rtol, learning_decay=decay, learning_offset=offset, batch_size=batch_size,
                   bounds=bounds, n_samples=int(data.n_samples), burn_in=default_burn_in(steps),
                   average=bool(params.get("learning_average", False)))

    def check(self, family: Family) -> None:
        if not isinstance(family, Rebasing):
            raise ConfigError(f"online EM (learning_method='online') is not available for {family.kind!r} "
                              f"models ({type(family).__name__}): the family cannot move its statistics onto "
                              "new parameters (Rebasing)")
        if self.average and not isinstance(family, FlatParameters):
            raise ConfigError(f"parameter averaging is not available for {family.kind!r} models: "
                              "the family has no unconstrained coordinates (FlatParameters)")

    def run_options(self) -> dict[str, Any]:
        average_start = None
        if self.average:
            first = len(pass_batches(self.bounds, self.batch_size, 0, 0))
            average_start = max(self.burn_in, first if self.max_iter > 1 else first // 2)
        return {"learning_decay": self.learning_decay, "learning_offset": self.learning_offset,
                "batch_size": self.batch_size, "bounds": self.bounds, "n_samples": self.n_samples,
                "burn_in": self.burn_in, "average_start": average_start}


def default_burn_in(steps_per_pass: int) -> int:
    """Mini-batches without an M-step: :data:`BURN_IN_SHARE` of a pass, at least one."""
    return max(1, int(math.ceil(BURN_IN_SHARE * steps_per_pass)))


STRATEGIES = {"online": OnlineStrategy}
