"""A whole fit: members sharing passes, checkpoints after passes, and exact resume.

Model-agnostic: the caller supplies how to start the member runs (which may
make initialisation passes) and how to restore them from a checkpoint. A
checkpoint holds every member's whole state (:meth:`MemberRun.state`), the
labels and the seed; it is written after initialisation (checkpoint 0) and
after every ``checkpoint_every`` rounds (checkpoint ``n`` follows round
``n``). A round is one shared pass, or, for members whose steps read a few
partitions each (online EM), one task per member running a segment of its
steps (:meth:`MemberRun.next_segment`). Since every round is a deterministic
function of that state, a resumed fit ends bitwise equal to an uninterrupted
one.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from typing import Any, Callable

import numpy as np

from dem.engine.checkpoint import FORMAT_VERSION, RUN_FILE, Checkpointer, RunStore, compare_fingerprints
from dem.engine.executor import single_blas_thread
from dem.engine.faults import maybe_crash
from dem.engine.passes import DataPasses
from dem.engine.strategies.base import MemberRun
from dem.errors import CheckpointError

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


class ResumeWarning(UserWarning):
    """Something in a run directory was damaged or foreign and was passed over."""


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
            version = run.get("format_version", 2)
            if version != FORMAT_VERSION:
                raise CheckpointError(
                    f"run directory {url} was written by another version of dem (checkpoint format {version}; "
                    f"this dem reads format {FORMAT_VERSION}), so it cannot be resumed: start a new run directory")
            diffs = compare_fingerprints(run.get("fingerprint", {}), fingerprint)
            if not seed_is_fixed:
                seed = int(run["seed"])  # random_state=None: the run's own seed
            elif int(run["seed"]) != seed:
                diffs.append(f"settings.seed: run has {run['seed']}, now {seed}")
            if diffs:
                raise CheckpointError(
                    f"run directory {url} holds a different fit; it differs in "
                    + "; ".join(diffs) + " (use a new run directory, or only change max_iter/tol)")
        else:
            partitions = fingerprint.get("settings", {}).get("partitions", [None, None])
            self.store.write_json({"fingerprint": fingerprint, "seed": seed, "format_version": FORMAT_VERSION,
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


@dataclasses.dataclass
class FitOutcome:
    """Every member's final run; the caller chooses the winner."""

    runs: list[MemberRun]
    resumed_from: int | None   # the checkpoint (passes done) the fit resumed after, if it did
    init_passes: float          # initialisation passes (0 when resumed)

    def best_index(self, among: list[int] | None = None) -> int:
        """The member with the highest final lower bound (first on ties), as scikit-learn picks."""
        among = list(range(len(self.runs))) if among is None else among
        best = among[0]
        for i in among[1:]:
            if self.runs[i].lower_bound > self.runs[best].lower_bound:
                best = i
        return best


def _summary(i: int, run: MemberRun, labels: list[dict]) -> dict[str, Any]:
    return {**labels[i], "lower_bound": None if math.isinf(run.lower_bound) else run.lower_bound,
            "n_iter": run.iterations, "converged": run.converged, "n_passes": run.n_passes}


def fit_members(
    passes: DataPasses,
    *,
    start: Callable[[], list[MemberRun]],
    restore: Callable[[list[dict[str, Any]], dict[str, np.ndarray]], list[MemberRun]],
    labels: list[dict[str, Any]],
    run_dir: RunDirectory | None = None,
    checkpoint_every: int = 1,
    callback: Callback | None = None,
) -> FitOutcome:
    """Run every member until it is done, sharing each pass; checkpoint and resume.

    Parameters
    ----------
    passes : the placed data
    start : makes the member runs from scratch (initialisation passes included)
    restore : rebuilds them from checkpointed states and arrays
        (``arrays`` keyed ``member.{i}.{name}``, passed whole)
    labels : one dict per member for summaries (``restart``, ``n_components``)
    run_dir : where checkpoints go; a matching checkpoint there is resumed
    checkpoint_every : rounds between checkpoints (the last is always saved)
    callback : ``callback(event, info)`` with events ``start``, ``iteration``, ``end``
    """
    emit = callback or (lambda event, info: None)
    runs: list[MemberRun] | None = None
    resumed_from = None
    step = 0
    if run_dir is not None and (loaded := run_dir.load()) is not None:
        meta, arrays = loaded
        if "members" in meta:
            step = resumed_from = int(meta["step"])
            runs = restore(meta["members"], arrays)

    def save(current: list[MemberRun]) -> None:
        if run_dir is None:
            return
        states, arrays = [], {}
        for i, run in enumerate(current):
            js, arr = run.state()
            states.append(js)
            arrays.update({f"member.{i}.{k}": v for k, v in arr.items()})
        best = max(range(len(current)), key=lambda i: (current[i].lower_bound, -i))
        meta = {"members": states, "labels": labels, "seed": run_dir.seed, "step": step,
                "iteration": max(r.iterations for r in current),
                "restarts": [_summary(i, r, labels) for i, r in enumerate(current)],
                "history": [h.to_json() for h in current[best].monitor.history]}
        run_dir.checkpointer.save(step, meta, arrays)

    init_passes = 0.0
    if runs is None:
        before = passes.n_passes
        runs = start()
        init_passes = passes.n_passes - before
        save(runs)
    data = passes.data
    emit("start", {"n_samples": data.n_samples, "n_features": data.n_features,
                   "n_partitions": data.n_partitions, "n_init": len(runs),
                   "max_iter": max(r.max_iter for r in runs), "resumed_from": resumed_from,
                   "dashboard_link": passes.executor.dashboard_link})
    while True:
        live = [i for i, r in enumerate(runs) if not r.done]
        if not live:
            break
        segments = [runs[i].next_segment() for i in live] if passes.runs_steps else [None]
        if all(seg is not None for seg in segments):
            advanced = passes.run_steps([(runs[i].detached(), seg) for i, seg in zip(live, segments)])
            maybe_crash("m-step")
            records = {i: runs[i].absorb(a) for i, a in zip(live, advanced)}
        else:
            records = _one_step(passes, runs, live)
        step += 1
        for i in live:
            for rec in records[i]:
                emit("iteration", {"restart": i, **labels[i], **rec.to_json()})
        if step % checkpoint_every == 0 or all(r.done for r in runs):
            save(runs)
    best = FitOutcome(runs, resumed_from, init_passes).best_index()
    emit("end", {"converged": runs[best].converged, "n_iter": runs[best].iterations,
                 "lower_bound": runs[best].lower_bound})
    return FitOutcome(runs, resumed_from, init_passes)


def _one_step(passes: DataPasses, runs: list[MemberRun], live: list[int]) -> dict[int, list]:
    """One evaluation for each live run, in one shared pass; each run's new records."""
    evaluations = [runs[i].next_evaluation() for i in live]
    t0 = time.perf_counter()
    stats = passes.evaluate(evaluations)
    maybe_crash("m-step")
    seconds = time.perf_counter() - t0
    records = {}
    # The driver's steps are small; multithreaded BLAS would leave its helper
    # threads spinning for a while after each call, taking a core from the
    # workers that share this machine (a LocalCluster, or local threads).
    with single_blas_thread():
        for i, ev, s in zip(live, evaluations, stats):
            before = len(runs[i].monitor.history)
            runs[i].receive(s, seconds, int(s.n_rows), _share(passes, ev))
            records[i] = runs[i].monitor.history[before:][-1:]
    return records


def _share(passes: DataPasses, ev: Any) -> float:
    """The fraction of a pass an evaluation read."""
    if ev.partitions is None:
        return 1.0
    return passes.data.rows_in(ev.partitions) / max(1, passes.n_samples)
