"""A whole fit: restarts, checkpoints after iterations, and exact resume.

Model-agnostic: parameters are any frozen dataclass of numpy arrays (they are
checkpointed field by field into ``.npz``), and the caller supplies how to
compute a restart's starting parameters.

A resumed fit reloads the parameters bit for bit, the history, the restart
index, the best restart so far and the seed, and continues with the
iteration after the checkpoint; since every iteration is a deterministic
function of the parameters, it ends bitwise equal to an uninterrupted fit.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Callable

import numpy as np

from dem.core.checkpoint import RUN_FILE, Checkpointer, RunStore, compare_fingerprints
from dem.core.engine import EMState, IterationRecord, run_em_members
from dem.core.executor import Executor
from dem.data.partitions import PartitionedData
from dem.errors import CheckpointError
from dem.models.base import EMModel

Callback = Callable[[str, dict[str, Any]], None]


def chain_callbacks(*callbacks: Any) -> Callback | None:
    """One ``callback(event, info)`` calling each non-None callback in turn."""
    live = [c for c in callbacks if c is not None]
    if not live:
        return None

    def call(event: str, info: dict[str, Any]) -> None:
        for c in live:
            c(event, info)
    return call


def digest(value: Any) -> str | None:
    """Short sha256 of an array-like setting (user-supplied initial parameters) for fingerprints."""
    if value is None:
        return None
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(np.asarray(value, dtype=np.float64)).tobytes()).hexdigest()[:16]


class ResumeWarning(UserWarning):
    """Something in a run directory was damaged or foreign and was passed over."""


@dataclasses.dataclass
class FitResult:
    """Every member's final state; the caller chooses the winner."""

    states: list[EMState]
    resumed_from: int | None  # checkpoint step the fit resumed at, if it did

    @property
    def best(self) -> EMState:
        return self.states[self.best_index()]

    def best_index(self, among: list[int] | None = None) -> int:
        """The member with the highest final lower bound (first on ties), as scikit-learn picks."""
        among = list(range(len(self.states))) if among is None else among
        best = among[0]
        for i in among[1:]:
            if self.states[i].lower_bound > self.states[best].lower_bound:
                best = i
        return best


def _state_json(state: EMState) -> dict[str, Any]:
    return {"iteration": state.iteration, "converged": state.converged,
            "lower_bound": state.lower_bound, "history": [r.to_json() for r in state.history]}


def _state_from(js: dict[str, Any], arrays: dict[str, np.ndarray], prefix: str, params_cls: type) -> EMState:
    fields = {f.name: arrays[f"{prefix}.{f.name}"] for f in dataclasses.fields(params_cls)}
    return EMState(params_cls(**fields), int(js["iteration"]),
                   [IterationRecord.from_json(h) for h in js["history"]],
                   bool(js["converged"]), float(js["lower_bound"]))


def _arrays(state: EMState | None, prefix: str) -> dict[str, np.ndarray]:
    if state is None:
        return {}
    return {f"{prefix}.{f.name}": np.asarray(getattr(state.params, f.name))
            for f in dataclasses.fields(state.params)}


class RunDirectory:
    """Checkpoints of one fit in ``url``, refusing runs that do not match."""

    def __init__(self, url: str, fingerprint: dict[str, Any], seed: int, *,
                 keep: int = 3, storage_options: dict | None = None, seed_is_fixed: bool = True) -> None:
        self.store = RunStore(url, storage_options)
        self.checkpointer = Checkpointer(self.store, keep)
        self.url = url
        if self.store.exists(RUN_FILE):
            try:
                run = self.store.read_json(RUN_FILE)
            except Exception as exc:
                raise CheckpointError(f"{url}/{RUN_FILE} cannot be read ({exc}); use another run directory") from None
            diffs = compare_fingerprints(run.get("fingerprint", {}), fingerprint)
            if not seed_is_fixed:
                seed = int(run["seed"])  # random_state=None: the run's own seed
            elif int(run["seed"]) != seed:
                diffs.append(f"settings.seed: run has {run['seed']}, now {seed}")
            if diffs:
                raise CheckpointError(
                    f"run directory {url} holds a different fit; it differs in "
                    + "; ".join(diffs) + " (use a new run directory, or only change max_iter/tol)"
                )
        else:
            partitions = fingerprint.get("settings", {}).get("partitions", [None, None])
            self.store.write_json({"fingerprint": fingerprint, "seed": seed,
                                   "partition_rows": partitions[1]}, RUN_FILE)
        self.seed = seed

    @staticmethod
    def saved_partition_rows(url: str, storage_options: dict | None = None) -> int | None:
        """Rows per partition of the run already in ``url``, if there is one."""
        store = RunStore(url, storage_options)
        try:
            return store.read_json(RUN_FILE).get("partition_rows")
        except Exception:
            return None

    def load(self) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        found = self.checkpointer.load_latest()
        if found is None:
            return None
        meta, arrays, notes = found
        for note in notes:
            warnings.warn(f"{self.url}: {note}", ResumeWarning, stacklevel=3)
        return (meta, arrays) if meta else None


def fit_members(
    models: list[EMModel],
    data: PartitionedData,
    placed: list[Any],
    executor: Executor,
    *,
    initial_params: Callable[[list[int]], list[Any]],
    params_cls: type,
    max_iter: int,
    tol: float,
    labels: list[dict[str, Any]] | None = None,
    run_dir: RunDirectory | None = None,
    checkpoint_every: int = 1,
    callback: Callback | None = None,
    initial_lower_bound: float = -math.inf,
    schedule: list[list[EMModel]] | None = None,
    between_stages: Callable[[int, list[EMState]], list[EMState]] | None = None,
) -> FitResult:
    """Fit several members (restarts, candidate K) over shared data passes.

    ``initial_params(indices)`` returns starting parameters for those
    members (so initialisation passes can be shared too). With ``run_dir``
    a checkpoint holding every member's state is written after
    initialisation, after every ``checkpoint_every`` passes and at the end;
    an existing matching checkpoint is resumed. ``schedule`` optionally
    lists per-stage models run before ``models`` (deterministic annealing:
    each stage runs to convergence or ``max_iter`` iterations of its own);
    ``between_stages(stage, states)`` may adjust the states before each new
    stage (annealing perturbs the means so merged components can split).
    """
    n = len(models)
    labels = labels or [{"restart": i} for i in range(n)]
    stages = [*(schedule or []), models]
    stage, step = 0, 0
    states: list[EMState] | None = None
    resumed_from = None
    if run_dir is not None and (loaded := run_dir.load()) is not None:
        meta, arrays = loaded
        if "members" in meta:
            step, stage = int(meta["step"]), int(meta.get("stage", len(stages) - 1))
            states = [_state_from(js, arrays, f"member.{i}", params_cls)
                      for i, js in enumerate(meta["members"])]
            resumed_from = step

    def emit(event: str, info: dict[str, Any]) -> None:
        if callback is not None:
            callback(event, info)

    def save(current: list[EMState], stage_index: int) -> None:
        nonlocal step
        if run_dir is None:
            return
        step += 1  # checkpoint sequence number: names sort in write order
        meta = {"members": [_state_json(s) for s in current], "labels": labels, "stage": stage_index,
                "seed": run_dir.seed, "iteration": max(s.iteration for s in current),
                "restarts": [{**labels[i], "lower_bound": s.lower_bound, "n_iter": s.iteration,
                              "converged": s.converged} for i, s in enumerate(current)],
                "history": [h.to_json() for h in max(current, key=lambda s: s.iteration).history]}
        arrays: dict[str, np.ndarray] = {}
        for i, s in enumerate(current):
            arrays.update(_arrays(s, f"member.{i}"))
        run_dir.checkpointer.save(step, meta, arrays)

    emit("start", {"n_samples": data.n_samples, "n_features": data.n_features,
                   "n_partitions": data.n_partitions, "n_init": n, "max_iter": max_iter,
                   "resumed_from": resumed_from, "dashboard_link": executor.dashboard_link})
    if states is None:
        states = [EMState(p, lower_bound=initial_lower_bound) for p in initial_params(list(range(n)))]
        save(states, stage)
    resumed_at = [s.iteration if resumed_from is not None else None for s in states]
    passes = 0

    def on_iteration(current: list[EMState], live: list[int]) -> None:
        nonlocal passes
        passes += 1
        for i in live:
            emit("iteration", {"restart": i, **labels[i], **current[i].history[-1].to_json()})
        finished = all(s.converged or s.iteration >= max_iter for s in current)
        if passes % checkpoint_every == 0 or finished:
            save(current, stage)

    while True:
        if len(stages) == 1:
            states = run_em_members(stages[stage], data, placed, executor, states,
                                    max_iter=max_iter, tol=tol, on_iteration=on_iteration,
                                    resumed_at=resumed_at)
        else:
            # Every stage, the final one included, gets up to max_iter iterations of its own:
            # count the member's iterations at earlier stages (other stage labels).
            labels_now = [_stage_label(m) for m in stages[stage]]
            limit_each = [sum(1 for h in s.history if h.stage != lab) + max_iter
                          for s, lab in zip(states, labels_now)]
            states = _run_stage(stages[stage], data, placed, executor, states, limit_each, tol,
                                on_iteration, resumed_at)
        resumed_at = [None] * n
        if stage == len(stages) - 1:
            break
        stage += 1
        # The next temperature starts afresh: nothing has converged at it yet.
        states = [dataclasses.replace(s, converged=False) for s in states]
        if between_stages is not None:
            states = between_stages(stage, states)
        save(states, stage)
    best = FitResult(states, resumed_from).best
    emit("end", {"converged": best.converged, "n_iter": best.iteration, "lower_bound": best.lower_bound})
    return FitResult(states, resumed_from)


def _stage_label(model: EMModel) -> str | None:
    return getattr(model, "stage", None)


def _run_stage(models: list[EMModel], data: PartitionedData, placed: list[Any], executor: Executor,
               states: list[EMState], limits: list[int], tol: float, on_iteration: Callable,
               resumed_at: list[int | None]) -> list[EMState]:
    """run_em_members with a per-member iteration limit (annealing stages)."""
    # Members at the same iteration count share a limit; run them in groups.
    out = list(states)
    for limit in sorted(set(limits)):
        idx = [i for i, lim in enumerate(limits) if lim == limit]

        def relay(current: list[EMState], live: list[int], idx: list[int] = idx) -> None:
            for j, i in enumerate(idx):
                out[i] = current[j]
            on_iteration(out, [idx[j] for j in live])

        sub = run_em_members([models[i] for i in idx], data, placed, executor, [out[i] for i in idx],
                             max_iter=limit, tol=tol, on_iteration=relay,
                             resumed_at=[resumed_at[i] for i in idx])
        for j, i in enumerate(idx):
            out[i] = sub[j]
    return out


@dataclasses.dataclass
class RestartsResult:
    """The winner of ``n_init`` restarts of one model, and a summary of every restart."""

    best: EMState
    best_restart: int
    restarts: list[dict[str, Any]]
    resumed_from: int | None
    states: list[EMState]


def fit_with_restarts(
    model: EMModel,
    data: PartitionedData,
    placed: list[Any],
    executor: Executor,
    *,
    n_init: int,
    initial_params: Callable[[int], Any],
    params_cls: type,
    max_iter: int,
    tol: float,
    initial_lower_bound: float = -math.inf,
    run_dir: RunDirectory | None = None,
    checkpoint_every: int = 1,
    callback: Callback | None = None,
) -> RestartsResult:
    """``n_init`` restarts of one model sharing every data pass; the best lower bound wins.

    ``initial_params(restart)`` gives each restart's start. Each restart ends
    bitwise equal to a fit of that restart alone.
    """
    result = fit_members(
        [model] * n_init, data, placed, executor,
        initial_params=lambda idx: [initial_params(i) for i in idx], params_cls=params_cls,
        max_iter=max_iter, tol=tol, run_dir=run_dir, checkpoint_every=checkpoint_every,
        callback=callback, initial_lower_bound=initial_lower_bound,
    )
    b = result.best_index()
    restarts = [{"restart": i, "lower_bound": s.lower_bound, "n_iter": s.iteration, "converged": s.converged}
                for i, s in enumerate(result.states)]
    return RestartsResult(result.states[b], b, restarts, result.resumed_from, result.states)
