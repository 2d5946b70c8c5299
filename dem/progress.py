"""Progress of a fit for people: a live panel on a terminal, one line per iteration elsewhere.

:class:`ProgressDisplay` is a ``fit(callback=...)`` callback (``dem fit``
uses it)::

    from dem.progress import ProgressDisplay
    est.fit("data.zarr", callback=ProgressDisplay(tol=est.tol))

On a terminal it keeps a rich live panel up to date: iteration and
``max_iter`` with a bar, mean log-likelihood, Δ, seconds per iteration, the
time elapsed and an estimate of the time left, and one row per restart when
there are several. Elsewhere (a log file, CI, a pipe) it prints one plain
line per iteration.

The time left comes from :class:`FitProgress`: an upper bound from the
iterations ``max_iter`` still allows times the recent seconds per iteration,
and a likely value from the trend of Δ — EM's Δ shrinks roughly
geometrically near convergence, so ``log(tol/Δ) / log(ratio)`` more
iterations reach ``tol``.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from dem.engine.monitor import note_texts, objective_of

#: Keys of an "iteration" event that are the iteration record itself (others label the member).
_RECORD_KEYS = {"iteration", "objective", "mean_log_likelihood", "n_passes", "event", "delta", "seconds", "n_rows", "resumed", "notes", "stage",
                "restart"}


def format_seconds(seconds: float | None) -> str:
    """``12 s``, ``3 min 05 s``, ``2 h 07 min``; ``-`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = max(0.0, seconds)
    if s < 0.1:
        return "< 0.1 s"
    if s < 10:
        return f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        m, sec = divmod(int(round(s)), 60)
        return f"{m} min {sec:02d} s"
    h, rem = divmod(int(round(s)), 3600)
    return f"{h} h {rem // 60:02d} min"


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``1 partition``, ``2 partitions``: the count and the noun in the right number."""
    return f"{n:,} {noun if n == 1 else (nouns or noun + 's')}"


def format_delta(delta: Any) -> str:
    if delta is None or (isinstance(delta, float) and (math.isinf(delta) or math.isnan(delta))):
        return "-"
    return f"{delta:+.3e}"


def iterations_to_tol(deltas: list[float], tol: float) -> int | None:
    """Iterations until |Δ| < ``tol`` if Δ keeps shrinking at its recent geometric rate.

    ``deltas`` are the most recent Δ values, oldest first. ``None`` when
    there is no trend to extrapolate (fewer than two positive Δ, or Δ not
    shrinking).
    """
    if not tol or tol <= 0:
        return None
    d = [abs(x) for x in deltas if x is not None and math.isfinite(x)]
    if d and d[-1] < tol:
        return 0
    d = d[-4:]
    if len(d) < 2 or any(x <= 0 for x in d):
        return None
    ratios = [b / a for a, b in zip(d, d[1:])]
    if any(r >= 1 for r in ratios):
        return None
    rate = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    if rate <= 0 or rate >= 1:
        return None
    return max(1, math.ceil(math.log(tol / d[-1]) / math.log(rate)))


class FitProgress:
    """What a fit has done so far and how long the rest should take.

    Feed it the ``fit(callback=...)`` events (:meth:`__call__`). Works for
    restarts run one after another and for members that share every data
    pass (then one pass advances all live members at once). A member is a
    restart, told apart by the event's ``restart`` and any other label the
    engine adds (e.g. ``n_components`` when candidates are fitted together).
    """

    def __init__(self, *, n_init: int = 1, max_iter: int | None = None, tol: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.clock = clock
        self.started_at: float | None = None
        self.records: dict[Any, list[dict]] = {}  # member key -> its iteration events
        self.order: list[Any] = []  # member of each iteration event, in arrival order
        self.extras: dict[Any, dict] = {}
        self.resumed_from: Any = None
        self.finished = False

    @staticmethod
    def key(info: dict) -> Any:
        extra = tuple(sorted((k, str(v)) for k, v in info.items() if k not in _RECORD_KEYS))
        return (int(info.get("restart", 0)), extra) if extra else int(info.get("restart", 0))

    def __call__(self, event: str, info: dict) -> None:
        if event == "start":
            self.n_init = int(info.get("n_init") or self.n_init or 1)
            if info.get("max_iter") is not None:
                self.max_iter = int(info["max_iter"])
            self.resumed_from = info.get("resumed_from")
            self.started_at = self.clock()
        elif event == "iteration":
            if self.started_at is None:
                self.started_at = self.clock()
            k = self.key(info)
            self.records.setdefault(k, []).append(info)
            self.order.append(k)
            self.extras.setdefault(k, {n: v for n, v in info.items() if n not in _RECORD_KEYS})
        elif event == "end":
            self.finished = True

    # -- what happened ----------------------------------------------------

    @property
    def last(self) -> dict | None:
        return self.records[self.order[-1]][-1] if self.order else None

    @property
    def members(self) -> list[Any]:
        return list(self.records)

    def name(self, key: Any) -> str:
        """How a member is called: ``restart 2/3``, or its varying labels (``n_components=4 #1``)."""
        restart = key[0] if isinstance(key, tuple) else key
        varying = {n for n in {n for e in self.extras.values() for n in e}
                   if len({str(e.get(n)) for e in self.extras.values()}) > 1}
        extra = self.extras.get(key, {})
        if varying:
            return " ".join(f"{n}={extra.get(n)}" for n in sorted(varying)) + f" #{restart + 1}"
        return f"restart {restart + 1}/{self.n_init}"

    @property
    def concurrent(self) -> bool:
        """Whether members advance together (their events interleave: one shared pass per iteration)."""
        switches = sum(1 for a, b in zip(self.order, self.order[1:]) if a != b)
        return switches >= len(self.records) > 1

    def elapsed(self) -> float | None:
        return None if self.started_at is None else self.clock() - self.started_at

    def seconds_per_iteration(self) -> float | None:
        """Median seconds of the recent iterations (passes)."""
        recent: list[float] = []
        # Each member's own last few records (when members share passes they repeat the pass time).
        for recs in self.records.values():
            recent.extend(float(x.get("seconds") or 0.0) for x in recs[-5:])
        recent = [s for s in recent if s > 0]
        return statistics.median(recent) if recent else None

    def done(self, key: Any) -> bool:
        """Converged, or out of iterations."""
        recs = self.records.get(key)
        if not recs:
            return False
        return self.converged(key) or (self.max_iter is not None and int(recs[-1]["iteration"]) >= self.max_iter)

    def converged(self, key: Any) -> bool:
        recs = self.records.get(key)
        if not recs:
            return False
        d = recs[-1].get("delta")
        return self.tol is not None and d is not None and math.isfinite(d) and abs(d) < self.tol

    def remaining_iterations(self, key: Any = None) -> tuple[float | None, float | None]:
        """(likely, at most) iterations left for member ``key`` (None: a member not seen yet)."""
        if key is not None and self.done(key):
            return 0, 0
        recs = self.records.get(key, []) if key is not None else []
        it = int(recs[-1]["iteration"]) if recs else 0
        upper = None if self.max_iter is None else max(0, self.max_iter - it)
        if not recs:
            finished = [len(v) for k, v in self.records.items() if self.done(k)]
            likely = statistics.median(finished) if finished else upper
            return likely, upper
        likely = iterations_to_tol([x.get("delta") for x in recs[-5:]], self.tol or 0.0)
        if likely is None:
            likely = upper
        elif upper is not None:
            likely = min(likely, upper)
        return likely, upper

    def eta(self) -> tuple[float | None, float | None]:
        """(likely, at most) seconds left for the whole fit; None where unknown."""
        spi = self.seconds_per_iteration()
        if spi is None:
            return None, None
        if self.finished:
            return 0.0, 0.0
        unseen = max(0, self.n_init - len(self.records))
        per = [self.remaining_iterations(k) for k in self.records] + [self.remaining_iterations(None)] * unseen
        likely = [p[0] for p in per]
        upper = [p[1] for p in per]
        combine = max if self.concurrent else sum
        lk = None if any(x is None for x in likely) else combine(likely) * spi
        up = None if any(x is None for x in upper) else combine(upper) * spi
        return lk, up

    def eta_text(self) -> str:
        likely, upper = self.eta()
        if likely is None and upper is None:
            return "-"
        if upper is not None and (likely is None or likely >= upper * 0.999):
            return f"≤ {format_seconds(upper)}"
        about = format_seconds(likely)
        about = about if about.startswith("<") else f"~{about}"
        if upper is None:
            return about
        return f"{about} (≤ {format_seconds(upper)})"


class ProgressDisplay:
    """A ``fit(callback=...)`` that shows progress: live on a terminal, plain lines otherwise.

    Parameters
    ----------
    console : rich.console.Console, optional
        Where to write (default: stdout). Live mode when it is a terminal.
    tol : float, optional
        The fit's ``tol``, for the time-left estimate and the converged marks.
    dashboard_printed : bool
        Whether the caller already printed the Dask dashboard address (the
        display prints the ``start`` event's link once otherwise).
    live : bool, optional
        Force live (True) or plain (False) mode.
    tol_on_total : bool
        ``tol`` is tested on the change of the *total* log-likelihood
        (hmmlearn's rule, dem's HMMs) rather than of the mean per sample
        (scikit-learn's, dem's mixtures). The display shows Δ per sample (per
        time step) either way, and says which test ``tol`` is.
    """

    def __init__(self, console: Console | None = None, *, tol: float | None = None,
                 dashboard_printed: bool = False, live: bool | None = None, recent_rows: int = 8,
                 tol_on_total: bool = False) -> None:
        self.console = console if console is not None else Console(highlight=False, markup=False)
        self.live_mode = self.console.is_terminal if live is None else live
        self.live: Any = None
        self.progress = FitProgress(tol=tol)
        self.tol = tol
        self.tol_on_total = tol_on_total
        #: What tol tests, shown in the live panel (set at the start event).
        self.tol_text = "" if not tol else f"tol {tol:g}"
        self.rows: list[dict] = []
        self.dashboard_printed = dashboard_printed
        self.saw_iterations = False
        self.recent_rows = recent_rows

    @property
    def n_init(self) -> int:
        return self.progress.n_init

    def __call__(self, event: str, info: dict) -> None:
        self.progress(event, info)
        if event == "start":
            self._start(info)
        elif event == "iteration":
            self._iteration(info)
        elif event == "end":
            self.close()

    def restart_histories(self) -> dict[int, list[dict]]:
        """Every iteration seen so far, per restart (e.g. for :func:`dem.plots.plot_convergence`).

        Members told apart by more than ``restart`` (candidate models fitted
        together) are numbered in order of appearance.
        """
        keys = list(self.progress.records)
        plain = all(isinstance(k, int) for k in keys)
        return {(k if plain else i): list(v) for i, (k, v) in enumerate(self.progress.records.items())}

    # -- events -------------------------------------------------------------

    def _start(self, info: dict) -> None:
        link = info.get("dashboard_link")
        if link and not self.dashboard_printed:
            self.console.print(f"dashboard: {link}")
            self.dashboard_printed = True
        n = info.get("n_samples")
        parts = info.get("n_partitions")
        self.console.print(
            f"fitting {'?' if n is None else format(n, ',')} rows × {info.get('n_features', '?')} features in "
            f"{'? partitions' if parts is None else plural(int(parts), 'partition')} "
            f"(n_init={self.n_init}, max_iter={info.get('max_iter')})"
        )
        rule = self._tol_rule(n)
        if rule:
            self.console.print(rule)
        if info.get("resumed_from"):
            self.console.print(f"resuming from checkpoint {info['resumed_from']}")
        if self.live_mode and self.live is None:
            from rich.live import Live

            self.live = Live(self.render(), console=self.console, refresh_per_second=4, transient=False,
                             auto_refresh=False)
            self.live.start()

    def _iteration(self, info: dict) -> None:
        self.saw_iterations = True
        self.rows.append(info)
        if self.live is not None:
            self.live.update(self.render(), refresh=True)
        else:
            self.console.print(self.line(info))

    def _tol_rule(self, n_samples: Any) -> str:
        """The convergence test in words; for an HMM also the per-step Δ it amounts to."""
        tol = self.tol
        if not tol:
            return ""
        if not self.tol_on_total:
            return f"converged when |Δ mean log-likelihood| < tol = {tol:g}"
        if not n_samples:
            return (f"converged when the total log-likelihood gains less than tol = {tol:g} "
                    "(hmmlearn's rule; Δ below is per time step)")
        per_step = tol / int(n_samples)
        self.progress.tol = per_step  # marks and time left compare the Δ shown, per step
        self.tol_text = f"tol {tol:g} on the total = {per_step:.2g} per step"
        return (f"converged when the total log-likelihood gains less than tol = {tol:g} (hmmlearn's rule), "
                f"i.e. Δ per time step < {per_step:.2g} over {int(n_samples):,} steps")

    # -- plain mode -----------------------------------------------------------

    def _who(self, info: dict) -> str:
        p = self.progress
        if p.n_init > 1 or len(p.records) > 1:
            return f"{p.name(p.key(info))}  "
        return ""

    def line(self, info: dict) -> str:
        """One plain line for an iteration record."""
        notes = "; ".join(note_texts(info))
        eta = self.progress.eta_text() if self.progress.records else "-"
        return (f"{self._who(info)}iteration {info['iteration']:>4}  "
                f"mean log-likelihood {objective_of(info):.6f}"
                f"  Δ {format_delta(info.get('delta'))}  {float(info.get('seconds') or math.nan):.2f} s/iter"
                + (f"  ETA {eta}" if eta != "-" and not self.progress.finished and not self._all_done() else "")
                + ("  (resumed)" if info.get("resumed") else "") + (f"  [{notes}]" if notes else ""))

    def _all_done(self) -> bool:
        p = self.progress
        return len(p.records) >= p.n_init and all(p.done(k) for k in p.records)

    # -- live mode ------------------------------------------------------------

    def _status_lines(self) -> list[Any]:
        from rich.progress_bar import ProgressBar

        p = self.progress
        last = p.last
        it = 0 if last is None else max(int(v[-1]["iteration"]) for v in p.records.values())
        head = Text()
        if p.n_init > 1 and last is not None and not p.concurrent:
            head.append(f"{p.name(p.order[-1])}  ", style="bold")
        elif p.n_init > 1:
            running = p.n_init - sum(1 for k in p.records if p.done(k))
            head.append(f"{p.n_init} restarts" + ("" if p.finished else f" ({running} running)") + "  ",
                        style="bold")
        head.append(f"iteration {it}" + (f"/{p.max_iter}" if p.max_iter else ""), style="bold")
        lines: list[Any] = []
        if p.max_iter:
            grid = Table.grid(padding=(0, 2))
            grid.add_row(head, ProgressBar(total=p.max_iter, completed=min(it, p.max_iter), width=28),
                         Text(f"{min(it, p.max_iter) / p.max_iter:.0%}"))
            lines.append(grid)
        else:
            lines.append(head)
        spi = p.seconds_per_iteration()
        timing = Text()
        timing.append(f"{spi:.2f} s/iter" if spi is not None else "- s/iter")
        timing.append(f"   elapsed {format_seconds(p.elapsed())}   ")
        timing.append("done" if p.finished else f"ETA {p.eta_text()}", style="bold cyan")
        lines.append(timing)
        return lines

    def _value_line(self) -> Any:
        last = self.progress.last
        if last is None:
            return Text("waiting for the first iteration…", style="dim")
        tol = self.progress.tol
        text = Text()
        if self.n_init > 1:
            # Several restarts: the best so far is the number that matters.
            finals = {k: v[-1] for k, v in self.progress.records.items() if v}
            k_best = max(finals, key=lambda k: objective_of(finals[k]))
            last = finals[k_best]
            text.append(f"best: {self.progress.name(k_best)}  ", style="dim")
        text.append("mean log-likelihood ", style="dim")
        text.append(f"{objective_of(last):.6f}", style="bold")
        text.append("  Δ ", style="dim")
        text.append(format_delta(last.get("delta")), style="bold")
        if tol:
            text.append(f"  {self.tol_text}", style="dim")
        return text

    def _recent_table(self) -> Table:
        table = Table(title="recent iterations", title_style="dim", expand=False, pad_edge=False)
        for name in ("iteration", "mean log-likelihood", "Δ", "s/iter", "notes"):
            table.add_column(name, justify="left" if name == "notes" else "right")
        for r in self.rows[-self.recent_rows:]:
            table.add_row(str(r["iteration"]), f"{objective_of(r):.6f}", format_delta(r.get("delta")),
                          f"{float(r.get('seconds') or math.nan):.2f}",
                          "; ".join((["resumed"] if r.get("resumed") else []) + note_texts(r)))
        return table

    def _restarts_table(self) -> Table:
        p = self.progress
        table = Table(title="restarts", title_style="dim", title_justify="left", expand=False, pad_edge=False)
        for name in ("restart", "iteration", "mean log-likelihood", "Δ", "status"):
            table.add_column(name, justify="left" if name in ("status", "restart") else "right")
        finals = {k: objective_of(v[-1]) for k, v in p.records.items() if v}
        best = max(finals, key=lambda k: finals[k]) if finals else None
        for k, recs in p.records.items():
            last = recs[-1]
            if p.converged(k):
                status = "converged"
            elif p.done(k):
                status = "max_iter"
            else:
                status = "stopped" if p.finished else "running"
            if any(x.get("resumed") for x in recs):
                status += ", resumed"
            if k == best and len(p.records) > 1:
                status += ", best" if p.finished else ", best so far"
            name = p.name(k).removeprefix("restart ")
            table.add_row(name, str(last["iteration"]), f"{objective_of(last):.6f}",
                          format_delta(last.get("delta")), status)
        for _ in range(max(0, p.n_init - len(p.records))):
            table.add_row("-", "-", "-", "-", "waiting")
        return table

    def render(self) -> Any:
        """The live panel (a rich renderable)."""
        from rich.panel import Panel

        body = [*self._status_lines(), self._value_line()]
        if self.n_init > 1:
            body.append(self._restarts_table())
        if self.rows and (self.n_init == 1 or not self.progress.concurrent):
            body.append(self._recent_table())
        return Panel(Group(*body), title="dem fit", title_align="left", border_style="blue", expand=False)

    def close(self) -> None:
        if self.live is not None:
            self.live.update(self.render(), refresh=True)
            self.live.stop()
            self.live = None
