"""``dem info``: what a run directory holds, read back without refitting."""

from __future__ import annotations

import json
import math
import os
import statistics
from typing import Any

import click
from rich.table import Table

from dem.cli.common import (
    CONFIG_NAME,
    GENERATED_NAME,
    HISTORY_NAME,
    _exists,
    _fs,
    _join,
    _list,
    _read_json,
    out,
)
from dem.config import read_yaml
from dem.engine.checkpoint import CHECKPOINTS as CHECKPOINTS_NAME
from dem.engine.checkpoint import POINTER as POINTER_NAME
from dem.engine.monitor import note_texts, objective_of
from dem.errors import CheckpointError, DemError, plain_repr
from dem.io import MODEL_DIRNAME as MODEL_NAME
from dem.plots import COMPONENTS_PNG, CONVERGENCE_PNG
from dem.progress import format_delta as _fmt_delta
from dem.progress import plural


def _newest_checkpoint_meta(run_dir: str) -> dict | None:
    """``meta.json`` of the checkpoint ``LATEST`` points to, else of the one with the longest history."""
    root = _join(run_dir, CHECKPOINTS_NAME)
    try:
        pointer = _read_json(_join(root, POINTER_NAME))
        meta = _read_json(_join(root, str(pointer["name"]), "meta.json"))
        if isinstance(meta, dict):
            return meta
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no pointer, or it names a pruned checkpoint: look at what is there
    metas = []
    for path in _list(root, "*/meta.json"):
        try:
            data = _read_json(path)
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            # Checkpoint names sort in write order (ckpt-<step>-...).
            metas.append((len(data.get("history") or []), path, data))
    if not metas:
        return None
    return max(metas, key=lambda m: (m[0], m[1]))[2]


def _load_history(run_dir: str) -> tuple[list[dict], str | None]:
    path = _join(run_dir, HISTORY_NAME)
    if _exists(path):
        try:
            data = _read_json(path)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read {path!r}: {exc}") from None
        hist = data.get("history", []) if isinstance(data, dict) else data
        return list(hist or []), HISTORY_NAME
    meta = _newest_checkpoint_meta(run_dir)
    if meta is not None:
        return list(meta.get("history") or []), "newest checkpoint"
    return [], None


def _fitted_summary(path: str) -> list[str]:
    """What the fitted model's estimator says about itself (components, gate, states…); [] if unreadable."""
    import dem

    try:
        return dem.load(path).summary_lines()
    except DemError as exc:
        return [f"model: cannot be read ({exc})"]


def _algorithm(fit: dict) -> str:
    """The fit line's words for an algorithm other than plain batch EM (empty for plain EM)."""
    words = []
    method = fit.get("learning_method") or "batch"
    if method == "online":
        size = fit.get("batch_size")
        words.append(f"online EM (learning_decay {fit.get('learning_decay')}, learning_offset "
                     f"{fit.get('learning_offset')}, batch_size {size if size is not None else 'auto'}; "
                     "max_iter counts passes)")
    elif method != "batch":
        words.append(f"learning_method {method}")
    if fit.get("accelerate"):
        words.append(f"accelerate {fit['accelerate']} (max_iter counts passes)")
    if fit.get("beta_init") is not None:
        words.append(f"annealing from beta {fit['beta_init']}")
    return "".join(f", {w}" for w in words)


def _tol_rule(kind: Any) -> str:
    """What fit.tol of ``kind`` is compared with, in words, when it is not the mean change."""
    from dem import registry
    try:
        return str(registry.estimator_class(kind)._tol_rule)
    except DemError:
        return ""


def _tol_is_total(kind: Any) -> bool:
    """Whether fit.tol of ``kind`` is on the total objective (hmmlearn's rule), not the mean."""
    from dem import registry
    try:
        return bool(registry.estimator_class(kind)._tol_is_total)
    except DemError:
        return False


def _model_summary(run_dir: str) -> dict | None:
    path = _join(run_dir, MODEL_NAME)
    if not _exists(path):
        return None
    try:
        import zarr

        group = zarr.open_group(store=path, mode="r")
        attrs = dict(group.attrs)
        shape = tuple(group["means"].shape) if "means" in group else None
    except Exception:
        return {"path": path}
    def parse(v: Any) -> Any:
        return json.loads(v) if isinstance(v, str) else v

    history = parse(attrs.get("history", "[]")) or []
    if "fitted" in attrs:  # models of every kind since format 2: the fit's summary as JSON
        fitted = parse(attrs["fitted"]) or {}
        lb = fitted.get("lower_bound_")
        return {"path": path, "converged": fitted.get("converged_"), "n_iter": fitted.get("n_iter_"),
                "lower_bound": None if lb in (None, "-inf") else float(lb), "means_shape": shape}
    if "monitor" in attrs:  # an HMM of format 1: hmmlearn-style monitor, dem's per-step history
        monitor = parse(attrs["monitor"]) or {}
        return {"path": path, "converged": monitor.get("converged"), "n_iter": len(history) or None,
                "lower_bound": objective_of(history[-1]) if history else None, "means_shape": shape}
    return {"path": path, "converged": attrs.get("converged"), "n_iter": attrs.get("n_iter"),
            "lower_bound": attrs.get("lower_bound"), "means_shape": shape}


def _generated_record(run_dir: str) -> dict | None:
    """What ``data_generated.json`` says, when `dem fit` generated this run's data."""
    path = _join(run_dir, GENERATED_NAME)
    try:
        if not _exists(path):
            return None
        record = _read_json(path)
    except (OSError, ValueError):
        return {"path": "?", "generated_at": "? (data_generated.json is unreadable)"}
    return record if isinstance(record, dict) else None


def _spans(iterations: list[int]) -> str:
    """``1–5, 8, 10–12`` from sorted integers."""
    out, start, prev = [], None, None
    for i in iterations + [None]:  # type: ignore[list-item]
        if start is not None and (i is None or i != prev + 1):
            out.append(f"{start}" if start == prev else f"{start}–{prev}")
            start = None
        if i is not None and start is None:
            start = i
        prev = i
    return ", ".join(out)


def _iterations_line(history: list[dict]) -> str:
    its = [int(h["iteration"]) for h in history if h.get("iteration") is not None]
    if not its:
        return "iterations: none yet"
    resumed = [int(h["iteration"]) for h in history if h.get("resumed")]
    secs = [float(h["seconds"]) for h in history if h.get("seconds") is not None]
    text = f"iterations: {len(its)}"
    if resumed:
        sessions, start = [], its[0]
        for r in resumed + [its[-1] + 1]:
            if r > start:
                sessions.append(_spans(list(range(start, r))))
            start = r
        text += (f" (resumed at iteration {', '.join(map(str, resumed))}; sessions: "
                 + " | ".join(sessions) + ")")
    else:
        text += " (one session, never resumed)"
    if secs:
        text += f"; {sum(secs):.1f} s in iterations, median {statistics.median(secs):.2f} s/iter"
    return text


def _restarts_lines(meta: dict | None) -> list[str]:
    restarts = list((meta or {}).get("restarts") or [])
    if len(restarts) < 2:
        return []
    finite = [r for r in restarts if r.get("lower_bound") is not None and math.isfinite(float(r["lower_bound"]))]
    best = max(finite, key=lambda r: float(r["lower_bound"])) if finite else None
    parts = []
    for r in sorted(restarts, key=lambda r: int(r.get("restart", 0))):
        extra = " ".join(f"{k}={v}" for k, v in r.items()
                         if k not in ("restart", "lower_bound", "n_iter", "converged"))
        lb = r.get("lower_bound")
        parts.append(f"#{int(r.get('restart', 0)) + 1}{(' ' + extra) if extra else ''} "
                     f"{'-' if lb is None else format(float(lb), '.6f')} after {r.get('n_iter')} it"
                     + (", converged" if r.get("converged") else "") + (" (best)" if r is best else ""))
    return [f"restarts: {len(restarts)}: " + "; ".join(parts)]


#: Rows of the history table `dem info` prints in full; longer histories show head and tail.
INFO_TABLE_ROWS = 30


def _history_table(history: list[dict], source: str | None) -> Table:
    table = Table(title=f"history ({source})", title_justify="left")
    for name in ("iteration", "mean log-likelihood", "Δ", "seconds", "rows", "notes"):
        table.add_column(name, justify="left" if name == "notes" else "right")
    rows = history
    if len(history) > INFO_TABLE_ROWS:
        rows = history[:5] + [None] + history[-(INFO_TABLE_ROWS - 6):]  # type: ignore[list-item]
    for h in rows:
        if h is None:
            table.add_row("…", f"({len(history) - INFO_TABLE_ROWS + 1} more)", "", "", "", "")
            continue
        ll = objective_of(h)
        secs = h.get("seconds")
        notes = (["resumed"] if h.get("resumed") else []) + note_texts(h)
        table.add_row(str(h.get("iteration")), "-" if math.isnan(ll) else f"{ll:.6f}", _fmt_delta(h.get("delta")),
                      "-" if secs is None else f"{secs:.2f}", str(h.get("n_rows", "-")), "; ".join(notes))
    return table


@click.command()
@click.argument("run_dir")
def info(run_dir: str) -> None:
    """Summarise the run in RUN_DIR: config, result, iterations, restarts, pictures.

    RUN_DIR may be a URL (s3://, gs://, ...): credentials come from the usual
    places (e.g. AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL).
    """
    remote = "://" in run_dir
    try:
        is_dir = _exists(run_dir) and (remote or os.path.isdir(run_dir))
    except Exception as exc:  # fsspec raises many types for bad URLs/credentials
        raise CheckpointError(f"cannot reach {run_dir!r}: {exc}") from None
    if not is_dir:
        raise CheckpointError(f"no dem run at {run_dir!r}: not a directory")
    cfg_path = _join(run_dir, CONFIG_NAME)
    cfg: dict | None = None
    if _exists(cfg_path):
        try:
            if remote:
                import yaml

                fs, p = _fs(cfg_path)
                with fs.open(p, "r") as fh:
                    cfg = yaml.safe_load(fh)
            else:
                cfg = read_yaml(cfg_path)
        except Exception:
            cfg = None
        cfg = cfg if isinstance(cfg, dict) else None
    history, source = _load_history(run_dir)
    model = _model_summary(run_dir)
    meta = _newest_checkpoint_meta(run_dir)
    if cfg is None and not history and model is None:
        raise CheckpointError(f"no dem run at {run_dir!r}: no {CONFIG_NAME}, {HISTORY_NAME}, "
                              f"checkpoint or {MODEL_NAME} there")
    out.print(f"run: {run_dir if remote else os.path.abspath(run_dir)}")
    n_rows = next((h.get("n_rows") for h in reversed(history) if h.get("n_rows") is not None), None)
    shape = (model or {}).get("means_shape")
    size = ""
    if n_rows is not None or shape:
        size = (f", {n_rows:,} rows" if isinstance(n_rows, int) else "") + (
            f" × {shape[1]} features" if shape and len(shape) == 2 else "")
    if cfg is not None:
        d, m, f, c = (cfg.get(k) or {} for k in ("data", "model", "fit", "cluster"))
        out.print(f"data: {d.get('path')}" + (f" [{d.get('variable')}]" if d.get("variable") not in (None, "X") else "")
                  + (f", weights {d.get('weights')!r}" if d.get("weights") else "") + size)
        out.print(f"model: {m.get('kind', 'gmm')} (" + ", ".join(f"{k} {plain_repr(v)}" for k, v in m.items()
                                                                if k != "kind") + ")")
        rule = _tol_rule(m.get("kind", "gmm"))
        on_total = f" ({rule})" if rule else ""
        out.print(f"fit: max_iter {f.get('max_iter')}, tol {f.get('tol')}{on_total}, n_init {f.get('n_init')}, "
                  f"init {f.get('init_params')}, random_state {f.get('random_state')}" + _algorithm(f))
        where = c.get("address") or f"local cluster {c.get('n_workers')}×{c.get('threads_per_worker')} threads"
        out.print(f"cluster: {where}")
    generated = _generated_record(run_dir)
    if generated is not None:
        gs = generated.get("settings") or {}
        out.print(f"data generated by this run: SYNTHETIC data written to {generated.get('path')} at "
                  f"{generated.get('generated_at')} (data.generate: {gs.get('n_samples')} rows, "
                  f"{gs.get('n_components')} components, seed {gs.get('seed')})")
    if model is not None and model.get("n_iter") is not None:
        status = "converged" if model.get("converged") else "did not converge"
        out.print(f"result: {status} after {plural(int(model['n_iter']), 'iteration')}; final mean log-likelihood "
                  f"(lower bound) {model['lower_bound']:.6f}")
    elif history:
        tol = ((cfg or {}).get("fit") or {}).get("tol")
        last = history[-1]
        delta = last.get("delta")
        if tol is not None and _tol_is_total(((cfg or {}).get("model") or {}).get("kind", "gmm")):
            tol = float(tol) / max(1, int(last.get("n_rows") or 1))  # hmmlearn's rule: tol on the total
        done = tol is not None and delta is not None and abs(delta) < float(tol)
        ll = objective_of(last)
        out.print(f"result: {'converged' if done else 'in progress or interrupted'} at iteration "
                  f"{last.get('iteration')}" + ("" if math.isnan(ll) else f" (mean log-likelihood {ll:.6f})")
                  + "; no final model yet"
                  + ("" if done else f" (continue with `dem resume {run_dir}`)"))
    else:
        out.print("result: no final model yet")
    out.print(_iterations_line(history))
    for line in _restarts_lines(meta):
        out.print(line)
    if history:
        out.print(_history_table(history, source))
    else:
        out.print("history: none yet")
    if model is not None:
        out.print(f"fitted model: {model['path'] if remote else os.path.abspath(model['path'])}")
        for line in _fitted_summary(model["path"]):
            out.print(line)

    pictures = [_join(run_dir, n) for n in (CONVERGENCE_PNG, COMPONENTS_PNG) if _exists(_join(run_dir, n))]
    if pictures:
        out.print("pictures: " + ", ".join(p if remote else os.path.abspath(p) for p in pictures))
    else:
        out.print("pictures: none yet (`dem fit` draws them at the end; or "
                  f"dem.plots.plot_convergence({run_dir!r}))")
