"""``dem fit`` and ``dem resume``: validate, start the cluster, (generate,) fit, write the run directory."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import time
from typing import Any

from dem.cli.cluster import Cluster, _start_cluster, dashboard_line
from dem.cli.common import (
    _IGNORED_FOR_IDENTITY,
    CONFIG_NAME,
    GENERATED_NAME,
    HISTORY_NAME,
    _exists,
    _first_missing,
    _fs,
    _join,
    _makedirs,
    _remove_tree,
    _write_text,
    err,
    out,
    session,
)
from dem.config import Config
from dem.data.row_sources import normalise_location
from dem.engine.checkpoint import CHECKPOINTS as CHECKPOINTS_NAME
from dem.engine.checkpoint import RUN_FILE as RUN_NAME
from dem.engine.monitor import objective_of
from dem.errors import CheckpointError, DataError
from dem.io import MODEL_DIRNAME as MODEL_NAME
from dem.io import collect_stale_temporaries
from dem.plots import COMPONENTS_PNG, CONVERGENCE_PNG
from dem.progress import ProgressDisplay, plural


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    items: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and k != "storage_options":
            items.update(_flat(v, key + "."))
        else:
            items[key] = v
    return items


def _identity(cfg_dict: dict) -> dict[str, Any]:
    """The keys that define a run: data, model and fit (less how long it iterates)."""
    flat = _flat({k: cfg_dict.get(k, {}) for k in ("data", "model", "fit")})
    return {k: v for k, v in flat.items() if k not in _IGNORED_FOR_IDENTITY}


@dataclasses.dataclass
class RunDirState:
    """What a run directory already holds."""

    config: dict | None
    finished: bool
    has_checkpoints: bool
    started: bool = False

    @property
    def is_run(self) -> bool:
        return self.finished or self.has_checkpoints or self.started


def _run_dir_state(run_dir: str, storage_options: dict | None) -> RunDirState:
    config = None
    cfg_path = _join(run_dir, CONFIG_NAME)
    if _exists(cfg_path, storage_options):
        try:
            fs, p = _fs(cfg_path, storage_options)
            import yaml

            with fs.open(p, "r") as fh:
                config = yaml.safe_load(fh)
        except Exception:
            config = None
    finished = _exists(_join(run_dir, MODEL_NAME), storage_options) or _exists(
        _join(run_dir, HISTORY_NAME), storage_options)
    ckpt = _join(run_dir, CHECKPOINTS_NAME)
    has_ckpt = False
    if _exists(ckpt, storage_options):
        fs, p = _fs(ckpt, storage_options)
        try:
            has_ckpt = bool(fs.ls(p))
        except (FileNotFoundError, NotADirectoryError):
            has_ckpt = False
    started = _exists(_join(run_dir, RUN_NAME), storage_options)
    return RunDirState(config if isinstance(config, dict) else None, finished, has_ckpt, started)


def _difference(old: dict, new: dict) -> str:
    a, b = _identity(old), _identity(new)
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            return f"{key}: {a.get(key)!r} in the run, {b.get(key)!r} now"
    return ""


def _check_run_dir(cfg: Config, state: RunDirState) -> None:
    """Refuse to mix two different runs in one directory (unless output.overwrite)."""
    if cfg.output.overwrite or not state.is_run:
        return
    if state.config is None:
        raise CheckpointError(
            f"{cfg.output.run_dir!r} holds run files but no readable {CONFIG_NAME}; "
            "choose another output.run_dir or set output.overwrite=true")
    diff = _difference(state.config, cfg.to_dict())
    if diff:
        what = "a finished run" if state.finished else "an unfinished run"
        raise CheckpointError(
            f"{cfg.output.run_dir!r} holds {what} with a different config ({diff}); "
            "choose another output.run_dir or set output.overwrite=true")


def _clear_run_dir(run_dir: str, storage_options: dict | None) -> None:
    """Remove what dem wrote in ``run_dir`` (and nothing else)."""
    for name in (MODEL_NAME, HISTORY_NAME, CHECKPOINTS_NAME, RUN_NAME, CONFIG_NAME, GENERATED_NAME):
        path = _join(run_dir, name)
        if _exists(path, storage_options):
            fs, p = _fs(path, storage_options)
            fs.rm(p, recursive=True)


def _check_run_dir_writable(run_dir: str) -> None:
    """Refuse a run directory that is a file or cannot be written, before anything starts.

    The directory (or, when it does not exist yet, the nearest existing
    directory above it, where it would be created) gets a probe file that is
    removed at once. Object stores are left to the first write.
    """
    if "://" in run_dir:
        return
    where = run_dir
    while not os.path.exists(where) and os.path.dirname(where) != where:
        where = os.path.dirname(where)
    if not os.path.isdir(where):
        if where == run_dir:
            raise CheckpointError(f"output.run_dir {run_dir!r} is a file, not a directory: "
                                  "choose another output.run_dir")
        raise CheckpointError(f"cannot create output.run_dir {run_dir!r}: {where!r} is a file, not a directory")
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(prefix=".dem-write-test-", dir=where)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        created = "" if where == run_dir else f" (it would be created in {where!r})"
        raise CheckpointError(f"cannot write to output.run_dir {run_dir!r}{created}: "
                              f"{exc.strerror or exc}; make it writable or choose another output.run_dir") from None


def _preflight_data(cfg: Config) -> bool:
    """Check the data before anything is written; returns whether it must be generated."""
    path = cfg.data.path
    assert path is not None
    opts = cfg.data.storage_options or None
    try:
        exists = _exists(path, opts)
    except Exception as exc:  # fsspec raises many types for bad URLs/credentials
        raise DataError(f"cannot reach data.path {path!r}: {exc}") from None
    if not exists:
        gen = cfg.data.generate
        if gen is None:
            raise DataError(f"data.path {path!r} does not exist (set data.generate to create a synthetic dataset "
                            "there)")
        if gen.path is not None and normalise_location(gen.path) != normalise_location(path):
            # A typo in data.path must not quietly become a new synthetic dataset.
            raise DataError(f"data.path {path!r} does not exist, and data.generate only creates data at "
                            f"data.generate.path {gen.path!r}: check data.path for a typo")
        return True
    # The estimator opens the data as it will for the fit (metadata only: shapes, dtypes, the
    # variable, weights and target arrays, sequence offsets), before anything is written.
    fit = cfg.fit_kwargs()
    cfg.make_estimator()._open_data(path, y=fit.get("y"), sample_weight=fit.get("sample_weight"), lengths=None,
                                    variable=fit.get("variable"), partition_rows=cfg.fit.partition_rows,
                                    memory_per_thread=None)
    return False


def _model_is_current(path: str, est: Any, storage_options: dict | None) -> bool:
    """Whether ``path`` already holds this fit's final model (the estimator may have saved it)."""
    if not _exists(path, storage_options):
        return False
    try:
        import zarr

        attrs = dict(zarr.open_group(store=path, mode="r", storage_options=storage_options).attrs)
        fitted = json.loads(attrs.get("fitted", "{}"))  # format 2: the fit's summary as JSON
        return (int(fitted.get("n_iter_", attrs.get("n_iter", -1))) == est.n_iter_
                and float(fitted.get("lower_bound_", attrs.get("lower_bound", math.nan))) == est.lower_bound_)
    except Exception:
        return False


def run_fit(cfg: Config) -> Any:
    """Validate, start the cluster, (generate,) fit, and write the run directory."""
    run_dir = cfg.output.run_dir
    opts = cfg.data.storage_options or None
    # 1. Validate everything before writing anything.
    _check_run_dir_writable(run_dir)
    state = _run_dir_state(run_dir, opts)
    _check_run_dir(cfg, state)
    must_generate = _preflight_data(cfg)


    created = _first_missing(run_dir, opts)
    cluster = _start_cluster(cfg)
    # HMMs stop on hmmlearn's rule, the gain of the total log-likelihood; the display says so.
    display = ProgressDisplay(out, tol=cfg.fit.tol, tol_on_total=cfg.estimator_class()._tol_is_total)
    try:
        line = dashboard_line(cluster) if cfg.cluster.dashboard else None
        if cfg.cluster.dashboard and cfg.cluster.address is None and importlib.util.find_spec("bokeh") is None:
            out.print("dashboard: not served (install bokeh to get one)")
        elif line:
            out.print(line)
        display.dashboard_printed = True
        generated = _generate_for_fit(cfg, cluster) if must_generate else None
        if cfg.output.overwrite and state.is_run:
            out.print(f"output.overwrite: clearing the previous run in {run_dir}")
            _clear_run_dir(run_dir, opts)
        _makedirs(run_dir, opts)
        # Left by a killed or failed earlier run: the names dem writes here, nothing else.
        collect_stale_temporaries(run_dir, [CONFIG_NAME, HISTORY_NAME, GENERATED_NAME, MODEL_NAME,
                                            CONVERGENCE_PNG, COMPONENTS_PNG])
        _write_text(_join(run_dir, CONFIG_NAME), cfg.to_yaml(redact_secrets=True), opts)
        if generated is not None:
            _write_text(_join(run_dir, GENERATED_NAME), json.dumps(generated, indent=1), opts)
        session.current_run, session.current_address = run_dir, cfg.cluster.address
        est = cfg.make_estimator(client=cluster.client)  # model.kind's estimator, from the registry
        t0 = time.perf_counter()
        try:
            est.fit(cfg.data.path, **cfg.fit_kwargs(), callback=display)
        except BaseException:
            display.close()
            if created is not None and not _exists(_join(run_dir, CHECKPOINTS_NAME), opts):
                # Nothing to resume: do not leave a run directory that looks like a run.
                _remove_tree(created, opts)
            raise
        display.close()
        seconds = time.perf_counter() - t0
        if not display.saw_iterations:
            for rec in est.history_:
                out.print(display.line(rec))
        model_path = _join(run_dir, MODEL_NAME)
        if not _model_is_current(model_path, est, opts):
            est.save(model_path, storage_options=opts)
        _write_text(_join(run_dir, HISTORY_NAME), json.dumps(est.history_, indent=1), opts)
    finally:
        display.close()
        cluster.close()
    # Mixtures follow scikit-learn's names, HMMs hmmlearn's (monitor_); history_ is dem's, on both.
    converged = est.converged_ if hasattr(est, "converged_") else est.monitor_.converged
    last = objective_of(est.history_[-1]) if est.history_ else float("nan")
    status = "converged" if converged else "did not converge"
    out.print(f"{status} after {plural(int(est.n_iter_), 'iteration')} in {seconds:.1f} s; "
              f"mean log-likelihood {getattr(est, 'lower_bound_', last):.6f}")
    pictures = _write_pictures(cfg, est, display)  # HMMs: convergence.png only
    if pictures:
        out.print(f"pictures: {', '.join(pictures)}")
    out.print(f"run: {run_dir}  (model: {model_path}; `dem info {run_dir}` for details)")
    return est


def _write_pictures(cfg: Config, est: Any, display: ProgressDisplay) -> list[str]:
    """convergence.png and components.png in the run directory; a failure only warns."""
    try:
        from dem.plots import write_run_pictures

        return write_run_pictures(
            est, cfg.output.run_dir, cfg.data.path, variable=cfg.data.variable,
            storage_options=cfg.data.storage_options or None, convergence_source=cfg.output.run_dir,
            restart_histories=display.restart_histories())
    except Exception as exc:  # pictures are a bonus: never fail a finished fit over them
        if session.debug:
            raise
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        err.print(f"warning: could not draw the pictures: {first}")
        return []


def _generate_for_fit(cfg: Config, cluster: Cluster) -> dict:
    """Write ``data.generate``'s dataset at ``data.path``; returns what to record in the run directory."""
    from dem.data.generate import generate_dataset

    g = cfg.data.generate
    assert g is not None and cfg.data.path is not None
    if g.path is None:
        # Said on stderr too: with no data.generate.path, any missing data.path gets synthetic data.
        err.print(f"warning: data.path {cfg.data.path} does not exist: generating SYNTHETIC data there "
                  "(data.generate; set data.generate.path to refuse a mistyped data.path instead)")
    out.print(f"generating {cfg.data.path}: {g.n_samples:,} rows × {g.n_features} features, "
              f"{g.n_components} components, {g.dtype}, seed {g.seed} (data.generate; data.path did not exist)")
    # Embedded workers share this filesystem; a remote cluster may not, so
    # local paths are then written from this process.
    client = cluster.client if (cfg.cluster.address is None or "://" in cfg.data.path) else None
    summary = generate_dataset(
        cfg.data.path, g.n_samples, g.n_features, g.n_components, chunk_rows=g.chunk_rows, dtype=g.dtype,
        seed=g.seed, separation=g.separation, weighted=g.weighted,
        storage_options=cfg.data.storage_options or None, client=client,
    )
    out.print(f"wrote {summary['nbytes'] / 2**20:,.0f} MiB in {summary['n_chunks']} chunks "
              f"in {summary['seconds']:.1f} s")
    return {"path": cfg.data.path, "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "settings": dataclasses.asdict(g), "nbytes": int(summary["nbytes"])}
