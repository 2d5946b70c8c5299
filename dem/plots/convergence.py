"""The convergence picture: objective and |Δ| per iteration, every restart, resumed iterations marked."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from dem.engine.monitor import objective_of
from dem.plots.common import _BEST_COLOUR, _OTHER_COLOURS, _RESUMED_COLOUR, _new_figure


@dataclasses.dataclass
class Curve:
    """One restart's history (a list of :attr:`GaussianMixture.history_`-style records)."""

    restart: int
    history: list[dict]
    best: bool = False
    name: str | None = None  # e.g. "n_components=3" for members that are not plain restarts

    @property
    def label(self) -> str:
        return self.name or f"restart {self.restart + 1}"


@dataclasses.dataclass
class ConvergenceData:
    """What :func:`plot_convergence` draws, gathered from any of its sources."""

    curves: list[Curve]
    #: Restarts known only by their summary: (restart, n_iter, lower_bound, converged).
    endpoints: list[tuple[int, int, float, bool]] = dataclasses.field(default_factory=list)
    tol: float | None = None
    converged: bool | None = None
    #: Legend of the tol line, when ``tol`` is not what the user set (HMMs: tol on the total per step).
    tol_label: str | None = None
    #: y label of the |Δ| panel (default ``|Δ mean log-likelihood|``).
    delta_label: str | None = None


def _records(history: Any) -> list[dict]:
    out = []
    for h in history or []:
        rec = h.to_json() if hasattr(h, "to_json") else dict(h)
        out.append(rec)
    return out


_SUMMARY_KEYS = {"restart", "lower_bound", "n_iter", "converged", "history"}


def _same_history(a: Sequence[Mapping], b: Sequence[Mapping]) -> bool:
    return len(a) == len(b) and all(objective_of(x) == objective_of(y)
                                    for x, y in zip(a, b))


def _member_name(label: Mapping | None) -> str | None:
    """``n_components=3 #1`` for members labelled by more than their restart; None for plain restarts."""
    extra = {k: v for k, v in (label or {}).items() if k not in _SUMMARY_KEYS}
    if not extra:
        return None
    return " ".join(f"{k}={v}" for k, v in extra.items()) + f" #{int((label or {}).get('restart', 0)) + 1}"


def _summary_is(curve: Curve, r: Mapping) -> bool:
    """Whether restart summary ``r`` describes ``curve``."""
    if not curve.history:
        return False
    if r.get("history"):
        return _same_history(_records(r["history"]), curve.history)
    last = curve.history[-1]
    return (r.get("lower_bound") == objective_of(last)
            and int(r.get("n_iter", -1)) == int(last.get("iteration", -2)))


def _from_restart_summaries(data: ConvergenceData, restarts: Sequence[Mapping],
                            extra: Mapping[int, Sequence] | None) -> None:
    """Add the restarts known by summary (``restarts_``, checkpoint ``restarts``) not drawn yet.

    A summary with a history becomes a curve; one without gets the history
    from ``extra`` (by restart index) when there is one, else a marker at its
    final value.
    """
    extra = dict(extra or {})
    named = any(_member_name(r) for r in restarts or [])
    for i, r in enumerate(restarts or []):
        match = next((c for c in data.curves if _summary_is(c, r)), None)
        if match is not None:
            match.name = match.name or _member_name(r)
            continue
        k = i if named else int(r.get("restart", i))
        if not named and any(c.restart == k for c in data.curves):
            continue
        hist = r.get("history") or (None if named else extra.get(k))
        if hist:
            data.curves.append(Curve(k, _records(hist), name=_member_name(r)))
        elif r.get("n_iter") is not None and r.get("lower_bound") is not None:
            data.endpoints.append((k, int(r["n_iter"]), float(r["lower_bound"]), bool(r.get("converged"))))


def _read_run_dir(url: str, storage_options: dict | None,
                  extra: Mapping[int, Sequence] | None = None) -> ConvergenceData:
    import yaml

    from dem.engine.checkpoint import Checkpointer, RunStore

    store = RunStore(url, storage_options if "://" in url else None)
    meta: dict = {}
    found = Checkpointer(store).load_latest()
    if found is not None:
        meta = found[0] or {}
    tol = None
    kind = "gmm"
    if store.exists("config.yaml"):
        try:
            cfg = yaml.safe_load(store.read_bytes("config.yaml").decode("utf-8")) or {}
            tol = (cfg.get("fit") or {}).get("tol")
            kind = str((cfg.get("model") or {}).get("kind") or "gmm")
        except Exception:
            tol = None
    data = ConvergenceData([], tol=None if tol is None else float(tol))
    final = None
    if store.exists("history.json"):
        final = store.read_json("history.json")
        if isinstance(final, dict):
            final = final.get("history", [])
        final = _records(final)
    if kind.endswith("_hmm"):
        records = final if final is not None else _records((meta.get("best") or meta.get("current") or {})
                                                           .get("history"))
        _per_step_tol(data, records)
        tol = data.tol
    members = meta.get("members")
    if members:
        # Restarts that share data passes: every member's full state is in the checkpoint.
        labels = meta.get("labels") or [{"restart": i} for i in range(len(members))]
        labels = [labels[i] if i < len(labels) else {"restart": i} for i in range(len(members))]
        named = any(_member_name(lab) for lab in labels)
        # Curves are numbered by member when members are more than restarts (candidate K).
        states = [(i if named else int(labels[i].get("restart", i)), m) for i, m in enumerate(members)]
        best_i = None
        if final is not None:
            best_i = next((i for i, (_, m) in enumerate(states) if _same_history(m.get("history") or [], final)),
                          None)
        if best_i is None:
            lbs = [float(m.get("lower_bound", -math.inf)) for _, m in states]
            best_i = int(np.argmax(lbs)) if lbs else None
        for i, (restart, m) in enumerate(states):
            data.curves.append(Curve(restart, _records(m.get("history")), best=i == best_i,
                                     name=_member_name(labels[i])))
        if best_i is not None:
            data.converged = bool(states[best_i][1].get("converged"))
        if final is not None and best_i is not None and not _same_history(states[best_i][1].get("history") or [],
                                                                          final):
            data.curves[best_i].history = final
        return data
    best_restart = meta.get("best_restart")
    best_restart = None if best_restart is None or int(best_restart) < 0 else int(best_restart)
    if final is not None:
        data.curves.append(Curve(best_restart or 0, final, best=True))
    else:
        # An unfinished run: the best finished restart and the one in progress.
        if meta.get("best"):
            data.curves.append(Curve(best_restart or 0, _records(meta["best"].get("history")), best=True))
        if meta.get("current") and int(meta.get("restart", 0)) != best_restart:
            data.curves.append(Curve(int(meta.get("restart", 0)), _records(meta["current"].get("history")),
                                     best=not data.curves))
    if meta.get("best") and data.curves and data.curves[0].best:
        data.converged = bool(meta["best"].get("converged"))
    elif final and tol is not None and final[-1].get("delta") is not None:
        data.converged = abs(final[-1]["delta"]) < float(tol)  # per step for HMMs (_per_step_tol)
    _from_restart_summaries(data, meta.get("restarts") or [], extra)
    if not data.curves and not data.endpoints:
        raise FileNotFoundError(f"no history in {url!r}: neither history.json nor a checkpoint")
    return data


def _per_step_tol(data: ConvergenceData, history: Sequence[Mapping]) -> None:
    """An HMM's ``tol`` (hmmlearn's rule, on the total log-likelihood) as the per-step Δ it means.

    The curves show the mean log-likelihood per time step; the fit stopped
    when the total gained less than ``tol``, i.e. Δ per step < tol / steps.
    """
    n_rows = next((int(h["n_rows"]) for h in reversed(list(history)) if h.get("n_rows")), None)
    if not data.tol or not n_rows:
        return
    total = data.tol
    data.tol = total / n_rows
    data.tol_label = f"tol = {total:g} on the total log-likelihood = {data.tol:.2g} per step"
    data.delta_label = "|Δ mean log-likelihood per step|"


def convergence_data(source: Any, *, storage_options: dict | None = None,
                     restart_histories: Mapping[int, Sequence] | None = None) -> ConvergenceData:
    """Gather the curves :func:`plot_convergence` draws (see there for ``source``)."""
    if isinstance(source, ConvergenceData):
        return source
    if isinstance(source, (str, os.PathLike)):
        return _read_run_dir(os.fspath(source), storage_options, restart_histories)
    if hasattr(source, "history_"):
        best = int(getattr(source, "best_restart_", 0) or 0)
        monitor = getattr(source, "monitor_", None)  # an HMM: hmmlearn's names
        converged = getattr(source, "converged_", None)
        if converged is None and monitor is not None:
            converged = getattr(monitor, "converged", False)
        data = ConvergenceData([Curve(best, _records(source.history_), best=True)],
                               tol=float(getattr(source, "tol", 0.0) or 0.0) or None,
                               converged=bool(converged))
        if monitor is not None:
            _per_step_tol(data, data.curves[0].history)
        _from_restart_summaries(data, getattr(source, "restarts_", None) or [], restart_histories)
        return data
    if isinstance(source, Mapping):
        curves = [Curve(int(k), _records(v)) for k, v in sorted(source.items())]
        if curves:
            best = max(curves, key=lambda c: objective_of(c.history[-1]) if c.history else -math.inf)
            best.best = True
        return ConvergenceData(curves)
    records = _records(source)
    if any("restart" in r for r in records):
        groups: dict[int, list[dict]] = {}
        for r in records:
            groups.setdefault(int(r.get("restart", 0)), []).append(r)
        return convergence_data(groups)
    return ConvergenceData([Curve(0, records, best=True)])


def plot_convergence(source: Any, ax: Any = None, *, storage_options: dict | None = None,
                     restart_histories: Mapping[int, Sequence] | None = None) -> Any:
    """Mean log-likelihood and |Δ| per iteration.

    Parameters
    ----------
    source : fitted estimator, history, or run directory
        A fitted :class:`dem.GaussianMixture` (its ``history_``, and its
        other restarts from ``restarts_``); a history (list of per-iteration
        dicts, records with a ``restart`` key are split by restart); a
        mapping ``{restart: history}``; or a run directory (local path or
        URL), read from ``history.json``, the newest checkpoint and
        ``config.yaml``.
    ax : matplotlib Axes, or a pair of Axes, optional
        Where to draw: a pair gets the log-likelihood and |Δ| panels, a single
        Axes only the log-likelihood. Default: a new figure with both panels.
    storage_options : dict, optional
        fsspec options for a run directory URL.
    restart_histories : mapping, optional
        ``{restart: history}`` for restarts the source holds only as a
        summary (e.g. collected from ``fit(callback=...)``).

    Returns
    -------
    matplotlib.figure.Figure
        The upper panel shows the best restart's curve (thick), the other
        restarts (thin, or a cross at their final value when only their
        summary is known) and dashed lines before iterations that followed a
        resume. The lower panel shows |Δ| on a log scale with ``tol``;
        iterations whose objective decreased are marked with red triangles.
    """
    from matplotlib.ticker import MaxNLocator

    data = convergence_data(source, storage_options=storage_options, restart_histories=restart_histories)
    if ax is None:
        fig, (ax_ll, ax_d) = _new_figure(2, figsize=(7.5, 6.0), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    elif isinstance(ax, (list, tuple, np.ndarray)):
        ax_ll, ax_d = ax[0], ax[1]
        fig = ax_ll.figure
    else:
        ax_ll, ax_d = ax, None
        fig = ax.figure
    several = len(data.curves) + len(data.endpoints) > 1
    curves = sorted(data.curves, key=lambda c: (c.best, c.restart))  # best drawn last, on top
    others = iter(_OTHER_COLOURS * 4)
    resumed_at: set[int] = set()
    iterations: set[int] = {int(n) for _, n, _, _ in data.endpoints}
    deltas: list[float] = []
    for c in curves:
        if not c.history:
            continue
        it = np.array([h["iteration"] for h in c.history], dtype=float)
        iterations.update(int(h["iteration"]) for h in c.history)
        ll = np.array([objective_of(h) for h in c.history], dtype=float)
        colour = _BEST_COLOUR if c.best else next(others)
        label = (c.label + (" (best)" if c.best else "")) if several else "mean log-likelihood"
        style = dict(lw=2.2, ms=4, zorder=3, ls="-") if c.best else dict(lw=1.2, ms=3, alpha=0.8, zorder=2, ls="--")
        ax_ll.plot(it, ll, "o", color=colour, label=label, gid=f"ll-restart-{c.restart}", **style)
        if ax_d is not None:
            d_rec = [(h["iteration"], h["delta"]) for h in c.history if h.get("delta") is not None]
            if d_rec:
                dx = np.array([r[0] for r in d_rec], dtype=float)
                dy = np.array([r[1] for r in d_rec], dtype=float)
                deltas.extend(float(v) for v in np.abs(dy) if np.isfinite(v) and v > 0)
                ax_d.plot(dx, np.abs(dy), "o", color=colour, gid=f"delta-restart-{c.restart}", **style)
                down = dy < 0
                if down.any():
                    ax_d.plot(dx[down], np.abs(dy[down]), "v", color="#d62728", ms=8, ls="none",
                              gid=f"decrease-restart-{c.restart}", zorder=4,
                              label="objective decreased")
        resumed_at.update(int(h["iteration"]) for h in c.history if h.get("resumed"))
    for k, (restart, n_iter, lb, conv) in enumerate(data.endpoints):
        ax_ll.plot([n_iter], [lb], "X", ms=9, color=_OTHER_COLOURS[k % len(_OTHER_COLOURS)], ls="none",
                   gid=f"endpoint-restart-{restart}", zorder=4,
                   label=f"restart {restart + 1}: final ({'converged' if conv else 'not converged'})")
    for i, x in enumerate(sorted(resumed_at)):
        for a in (ax_ll, ax_d):
            if a is None:
                continue
            a.axvline(x - 0.5, color=_RESUMED_COLOUR, ls="--", lw=1.2, gid="resumed", zorder=1,
                      label="resumed here" if (a is ax_ll and i == 0) else None)
        ax_ll.annotate("resumed", xy=(x - 0.5, 0.0), xycoords=("data", "axes fraction"), xytext=(3, 4),
                       textcoords="offset points", fontsize=8, color=_RESUMED_COLOUR, rotation=90,
                       va="bottom")
    ax_ll.set_ylabel("mean log-likelihood")
    ax_ll.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax_ll.grid(True, alpha=0.3)
    _integer_iterations(ax_ll, iterations, MaxNLocator)
    n_best = next((len(c.history) for c in data.curves if c.best), 0)
    title = "EM convergence"
    if data.converged is not None and n_best:
        title += (f": {'converged' if data.converged else 'not converged'} after {n_best} "
                  f"iteration{'' if n_best == 1 else 's'}")
    ax_ll.set_title(title)
    if several or resumed_at:
        ax_ll.legend(loc="lower right", fontsize=8, framealpha=0.9)
    if ax_d is not None:
        ax_d.set_yscale("log")
        if not deltas:
            # One iteration has no Δ yet: without points (and with only the tol
            # line) matplotlib would warn about identical, singular limits, so
            # the limits are fixed before anything is drawn.
            centre = data.tol or 1e-3
            ax_d.set_ylim(centre / 100, centre * 100)
            ax_d.text(0.5, 0.5, "Δ needs two iterations", transform=ax_d.transAxes, ha="center", va="center",
                      color="#6c6c6c", gid="no-delta")
        if data.tol:
            ax_d.axhline(data.tol, color="#2ca02c", ls=":", lw=1.5, gid="tol",
                         label=data.tol_label or f"tol = {data.tol:g}")
        ax_d.set_ylabel("|Δ mean log-likelihood|" if data.delta_label is None else data.delta_label)
        ax_d.set_xlabel("iteration")
        ax_d.grid(True, which="major", alpha=0.3)
        _integer_iterations(ax_d, iterations, MaxNLocator)
        handles, labels = ax_d.get_legend_handles_labels()
        if handles:
            unique = dict(zip(labels, handles))
            ax_d.legend(unique.values(), unique.keys(), loc="upper right", fontsize=8, framealpha=0.9)
    else:
        ax_ll.set_xlabel("iteration")
    return fig


def _integer_iterations(ax: Any, iterations: set[int], locator: Any) -> None:
    """Whole-number iteration ticks, also for one or two iterations.

    ``MaxNLocator(integer=True)`` still picks fractional ticks when the axis
    spans less than one (a single iteration), so short fits get their
    iterations as explicit ticks and half an iteration of room either side.
    """
    if iterations and max(iterations) - min(iterations) < 10:
        lo, hi = min(iterations), max(iterations)
        ax.set_xlim(lo - 0.5, hi + 0.5)
        ax.set_xticks(range(lo, hi + 1))
    else:
        ax.xaxis.set_major_locator(locator(integer=True))


# -- components -----------------------------------------------------------------
