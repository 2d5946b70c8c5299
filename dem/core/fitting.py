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
from dem.core.engine import EMState, IterationRecord, run_em
from dem.core.executor import Executor
from dem.data.partitions import PartitionedData
from dem.errors import CheckpointError
from dem.models.base import EMModel

Callback = Callable[[str, dict[str, Any]], None]


class ResumeWarning(UserWarning):
    """Something in a run directory was damaged or foreign and was passed over."""


@dataclasses.dataclass
class FitResult:
    best: EMState
    best_restart: int
    restarts: list[dict[str, Any]]  # summary of every finished restart
    resumed_from: int | None  # total step the fit resumed at, if it did


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


def fit_with_restarts(
    model: EMModel,
    data: PartitionedData,
    placed: list[Any],
    executor: Executor,
    *,
    n_init: int,
    initial_params: Callable[[int], Any],
    initial_lower_bound: float = -math.inf,
    params_cls: type,
    max_iter: int,
    tol: float,
    run_dir: RunDirectory | None = None,
    checkpoint_every: int = 1,
    callback: Callback | None = None,
) -> FitResult:
    """Fit ``n_init`` restarts and keep the one with the best lower bound.

    With ``run_dir`` a checkpoint is written after initialisation, after
    every ``checkpoint_every`` iterations, and at the end of each restart;
    an existing matching checkpoint is resumed.
    """
    restart, step = 0, 0
    current: EMState | None = None
    best: EMState | None = None
    best_restart = -1
    restarts: list[dict[str, Any]] = []
    resumed_from = None
    if run_dir is not None and (loaded := run_dir.load()) is not None:
        meta, arrays = loaded
        restart, step = int(meta["restart"]), int(meta["step"])
        restarts = list(meta.get("restarts", []))
        if meta.get("current") is not None:
            current = _state_from(meta["current"], arrays, "current", params_cls)
        if meta.get("best") is not None:
            best = _state_from(meta["best"], arrays, "best", params_cls)
            best_restart = int(meta["best_restart"])
        resumed_from = step
        # A finished, unconverged fit continues when max_iter was raised.
        if (restart >= n_init and current is None and best is not None and not best.converged
                and best.iteration < max_iter):
            current, restart = best, best_restart
            restarts = [r for r in restarts if r["restart"] != best_restart]

    def emit(event: str, info: dict[str, Any]) -> None:
        if callback is not None:
            callback(event, info)

    def save(cur: EMState | None, r: int) -> None:
        nonlocal step
        if run_dir is None:
            return
        step += 1  # checkpoint sequence number: names sort in write order
        meta = {"restart": r, "n_init": n_init, "seed": run_dir.seed,
                "current": None if cur is None else _state_json(cur),
                "iteration": None if cur is None else cur.iteration,
                "best": None if best is None else _state_json(best),
                "best_restart": best_restart, "restarts": restarts,
                "history": [] if cur is None else [h.to_json() for h in cur.history]}
        run_dir.checkpointer.save(step, meta, {**_arrays(cur, "current"), **_arrays(best, "best")})

    emit("start", {"n_samples": data.n_samples, "n_features": data.n_features,
                   "n_partitions": data.n_partitions, "n_init": n_init, "max_iter": max_iter,
                   "resumed_from": resumed_from, "dashboard_link": executor.dashboard_link})
    while restart < n_init:
        resumed_at = None
        if current is None:
            current = EMState(initial_params(restart), lower_bound=initial_lower_bound)
            save(current, restart)
        elif resumed_from is not None:
            resumed_at = current.iteration

        def on_iteration(state: EMState, r: int = restart) -> None:
            rec = state.history[-1]
            emit("iteration", {"restart": r, **rec.to_json()})
            if state.iteration % checkpoint_every == 0 or state.converged or state.iteration >= max_iter:
                save(state, r)

        current = run_em(model, data, placed, executor, current, max_iter=max_iter, tol=tol,
                         on_iteration=on_iteration, resumed_at=resumed_at)
        restarts.append({"restart": restart, "lower_bound": current.lower_bound,
                         "n_iter": current.iteration, "converged": current.converged})
        if best is None or current.lower_bound > best.lower_bound or math.isnan(best.lower_bound):
            best, best_restart = current, restart
        current = None
        restart += 1
        save(None, restart)
    assert best is not None
    emit("end", {"converged": best.converged, "n_iter": best.iteration,
                 "lower_bound": best.lower_bound, "best_restart": best_restart})
    return FitResult(best, best_restart, restarts, resumed_from)
