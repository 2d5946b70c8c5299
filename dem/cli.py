"""The ``dem`` command: ``fit``, ``resume``, ``generate`` and ``info``.

The CLI parses, validates and calls the Python API; it holds no EM logic.
Problems a user can fix (:class:`dem.errors.DemError`, bad usage, a missing
config file) print one line ``error: <message>`` on stderr and exit with
status 1 (2 for usage errors), without a traceback. Everything is validated
before anything is written, so a rejected command leaves no run directory
behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import importlib.util
import json
import math
import os
import statistics
import sys
import time
import warnings
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from dem.config import Config, config_from_dict, load_config, parse_override, read_yaml
from dem.engine.checkpoint import CHECKPOINTS as CHECKPOINTS_NAME
from dem.engine.checkpoint import POINTER as POINTER_NAME
from dem.engine.checkpoint import RUN_FILE as RUN_NAME
from dem.data.partitions import normalise_location
from dem.errors import CheckpointError, ConfigError, DataError, DemError, plain_repr
from dem.io import MODEL_DIRNAME as MODEL_NAME
from dem.io import collect_stale_temporaries
from dem.plots import COMPONENTS_PNG, CONVERGENCE_PNG
from dem.progress import ProgressDisplay
from dem.progress import format_delta as _fmt_delta
from dem.engine.monitor import note_texts, objective_of
from dem.progress import plural

CONFIG_NAME = "config.yaml"
HISTORY_NAME = "history.json"
#: Set by ``dem --debug``: full tracebacks and worker logs.
_DEBUG = False
#: The run directory being fitted, for the message after Ctrl-C.
_CURRENT_RUN: str | None = None
#: The scheduler address of the fit (None: embedded), for the message when it is lost.
_CURRENT_ADDRESS: str | None = None
#: Keys ``dem resume`` may change: they extend a run without changing its path.
RESUMABLE_KEYS = ("fit.max_iter", "fit.tol", "data.storage_options")
#: Keys of data/model/fit that may differ between a run directory's config and
#: a new one without making it another run: how long to iterate, and whether
#: partitions are cached (results do not depend on it, nor on the cluster).
_IGNORED_FOR_IDENTITY = {"fit.max_iter", "fit.tol", "fit.cache", "data.storage_options", "data.generate.path"}
#: Written into the run directory when `dem fit` generated the data it fitted.
GENERATED_NAME = "data_generated.json"

# markup off: paths, keys and notes may hold [brackets] that rich would eat.
out = Console(soft_wrap=True, highlight=False, markup=False)
err = Console(stderr=True, soft_wrap=True, highlight=False, markup=False)


# -- run directory I/O (local path or fsspec URL) -------------------------------

def _fs(path: str, storage_options: dict | None = None) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(path, **(storage_options if "://" in path and storage_options else {}))


def _join(base: str, *names: str) -> str:
    return "/".join([base.rstrip("/"), *names]) if "://" in base else os.path.join(base, *names)


def _write_text(path: str, text: str, storage_options: dict | None = None) -> None:
    """Write ``text`` so readers never see half of it (temp file + rename locally)."""
    if "://" in path:
        fs, p = _fs(path, storage_options)
        with fs.open(p, "w") as fh:
            fh.write(text)
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)  # a full disk must not leave half a file behind
        raise


def _exists(path: str, storage_options: dict | None = None) -> bool:
    if "://" not in path:
        return os.path.exists(path)
    fs, p = _fs(path, storage_options)
    return bool(fs.exists(p))


def _read_json(path: str, storage_options: dict | None = None) -> Any:
    fs, p = _fs(path, storage_options)
    with fs.open(p, "r") as fh:
        return json.load(fh)


# -- the fit path --------------------------------------------------------------

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


@dataclasses.dataclass
class Cluster:
    """A connected client and, for an embedded cluster, the cluster itself."""

    client: Any
    local: Any = None

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.local is not None:
                self.local.close()


def _start_cluster(cfg: Config) -> Cluster:
    import logging

    from distributed import Client, LocalCluster

    if not _DEBUG and _SAVED_LEVELS:  # running under main(): importing distributed reset its levels
        _quiet_logs()
    c = cfg.cluster
    if c.address is not None:
        security = None
        if c.security is not None:
            from distributed.security import Security

            security = Security(tls_ca_file=c.security.tls_ca_file, tls_client_cert=c.security.tls_client_cert,
                                tls_client_key=c.security.tls_client_key, require_encryption=True)
        try:
            client = Client(c.address, security=security, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cannot connect to the Dask scheduler at cluster.address={c.address!r}: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        return Cluster(client)
    # The scheduler always serves HTTP (health, metrics). Port 0 takes a free
    # port, where None would mean 8787 and a warning when that is taken; the
    # host is explicit because distributed binds ":0" to every interface.
    with _workers_ignore_sigint():
        local = LocalCluster(
            n_workers=c.n_workers, threads_per_worker=c.threads_per_worker, memory_limit=c.memory_limit,
            processes=True, host=c.host, dashboard_address=c.dashboard_address or f"{_bracketed(c.host)}:0",
            scheduler_kwargs={"dashboard": c.dashboard},
            # Task errors come back to this process and are reported once, as one
            # line; workers' own logs only add noise (`dem --debug` shows them).
            silence_logs=logging.WARNING if _DEBUG else logging.CRITICAL,
        )
    try:
        client = Client(local)
        # Workers the nanny restarts later are spawned with this process's
        # own SIGINT handler in place; the plugin makes them ignore it too.
        client.register_plugin(_ignore_sigint_plugin(), name="dem-ignore-sigint")
        return Cluster(client, local)
    except BaseException:
        local.close()
        raise


@contextlib.contextmanager
def _workers_ignore_sigint() -> Any:
    """Start worker processes with SIGINT ignored (an ignored signal survives exec; a handler does not).

    Ctrl-C in a terminal goes to the whole process group: without this, each
    embedded worker prints a KeyboardInterrupt traceback (60+ lines for two)
    before dem's one line, although this process stops them anyway. A Ctrl-C
    during the few seconds of start-up is ignored.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _ignore_sigint_plugin() -> Any:
    """A distributed worker plugin: the worker process ignores SIGINT (its nanny's process stops it).

    Defined here, not at module level, so that the CLI imports distributed
    only when it starts a cluster (the class then travels by value).
    """
    from distributed.diagnostics.plugin import WorkerPlugin

    class IgnoreSigint(WorkerPlugin):
        idempotent = True

        def setup(self, worker: Any) -> None:
            import signal
            import threading

            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)

    return IgnoreSigint()


def _bracketed(host: str) -> str:
    """An IPv6 address in brackets, so ``host:port`` stays parseable."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def dashboard_line(cluster: Cluster) -> str | None:
    """``dashboard: <link>`` for the address the dashboard really listens on.

    distributed's ``dashboard_link`` names the scheduler's host even when the
    HTTP server is bound to every interface; then the line says so, since
    anyone who can reach this machine can open it.
    """
    link = getattr(cluster.client, "dashboard_link", None)
    server = getattr(getattr(cluster.local, "scheduler", None), "http_server", None)
    if server is None:
        return f"dashboard: {link}" if link else None
    bound = sorted({sock.getsockname()[:2] for sock in getattr(server, "_sockets", {}).values()})
    if not bound:
        return f"dashboard: {link}" if link else None
    everywhere = [port for host, port in bound if host in ("0.0.0.0", "::", "")]
    if everywhere:
        return (f"dashboard: http://127.0.0.1:{everywhere[0]}/status (listening on every interface, "
                f"port {everywhere[0]}: reachable from the network; set cluster.dashboard_address to restrict it)")
    host, port = bound[0]
    return f"dashboard: http://{_bracketed(host)}:{port}/status"


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

    import dem

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
        global _CURRENT_RUN, _CURRENT_ADDRESS
        _CURRENT_RUN, _CURRENT_ADDRESS = run_dir, cfg.cluster.address
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
        if _DEBUG:
            raise
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        err.print(f"warning: could not draw the pictures: {first}")
        return []


def _first_missing(path: str, storage_options: dict | None) -> str | None:
    """The outermost directory of ``path`` that does not exist yet (what a makedirs would create)."""
    if _exists(path, storage_options):
        return None
    if "://" in path:
        return path
    missing = path
    parent = os.path.dirname(missing)
    while parent != missing and not os.path.exists(parent):
        missing, parent = parent, os.path.dirname(parent)
    return missing


def _makedirs(path: str, storage_options: dict | None) -> None:
    if "://" in path:
        fs, p = _fs(path, storage_options)
        fs.makedirs(p, exist_ok=True)
    else:
        os.makedirs(path, exist_ok=True)


def _remove_tree(path: str, storage_options: dict | None) -> None:
    try:
        fs, p = _fs(path, storage_options)
        fs.rm(p, recursive=True)
    except Exception:
        pass


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


# -- commands ------------------------------------------------------------------

_set_option = click.option(
    "--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
    help="Override a config key (value read as YAML); repeatable.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dem", prog_name="dem")
@click.option("--debug", is_flag=True, help="Show full tracebacks and Dask worker logs.")
def cli(debug: bool) -> None:
    """Fit latent-variable models by EM on data larger than memory (Zarr + Dask)."""
    global _DEBUG
    _DEBUG = debug


@cli.command()
@click.argument("config", default=CONFIG_NAME, required=False)
@_set_option
def fit(config: str, overrides: tuple[str, ...]) -> None:
    """Fit the model that CONFIG (default ./config.yaml) describes.

    A run directory that already holds this run resumes it.
    """
    cfg = load_config(config, list(overrides))
    run_fit(cfg)


@cli.command()
@click.argument("run_dir")
@_set_option
def resume(run_dir: str, overrides: tuple[str, ...]) -> None:
    """Continue the run in RUN_DIR from its last checkpoint.

    Only fit.max_iter, fit.tol, data.storage_options (credentials rotate, and
    secrets are not kept in the run directory) and cluster.* (a restarted
    Kubernetes or SLURM job has a new scheduler address) may change.
    """
    for item in overrides:
        key = ".".join(parse_override(item)[0])
        if key not in RESUMABLE_KEYS and not key.startswith("cluster."):
            raise ConfigError(f"dem resume can only change {', '.join(RESUMABLE_KEYS)} and cluster.*; "
                              f"got --set {item!r} (start a new run with `dem fit` to change anything else)")
    path = _join(run_dir, CONFIG_NAME)
    if not os.path.exists(path):
        raise CheckpointError(f"no dem run at {run_dir!r}: {CONFIG_NAME} not found there")
    cfg = config_from_dict(read_yaml(path), list(overrides), source=path)
    cfg.output.run_dir = os.path.abspath(run_dir)
    cfg.output.overwrite = False
    run_fit(cfg)


def _kinds() -> list[str]:
    from dem import registry
    return registry.kinds()


@cli.command()
@click.argument("path")
@click.option("--kind", default="gmm", show_default=True,
              help="Model kind whose demo data to write (dem info lists them: gmm, gaussian_hmm, ...).")
@click.option("--samples", "n_samples", type=int, default=None, help="Rows (mixtures, mixtures of experts).")
@click.option("--sequences", "n_sequences", type=int, default=None, help="Sequences (HMM kinds).")
@click.option("--length", type=int, default=None, help="Steps per sequence (HMM kinds).")
@click.option("--features", "n_features", type=int, default=None,
              help="Columns of X (symbols for categorical_hmm).")
@click.option("--components", "n_components", type=int, required=True,
              help="True mixture components, hidden states or experts.")
@click.option("--targets", "n_targets", type=int, default=None, help="Columns of y (mixture_of_experts).")
@click.option("--chunk-rows", type=int, default=100_000, show_default=True, help="Rows per Zarr chunk.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--separation", type=float, default=6.0, show_default=True,
              help="Closest means, in component standard deviations (gmm).")
@click.option("--weighted", is_flag=True, help="Also write positive sample weights (gmm).")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset at PATH.")
@click.option("--address", default=None, help="Dask scheduler to generate on (default: threads here).")
def generate(path: str, kind: str, address: str | None, **options: Any) -> None:
    """Write a synthetic dataset (with its true parameters) to the Zarr group PATH."""
    if kind not in _kinds():
        raise ConfigError(f"--kind must be one of {', '.join(_kinds())}; got {kind!r}")
    from dem import registry

    client = None
    if address is not None:
        from distributed import Client

        try:
            client = Client(address, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cannot connect to the Dask scheduler at {address!r}: {exc}") from None
    t0 = time.perf_counter()
    try:
        summary = registry.estimator_class(kind)._generate_demo(path, options, client=client)
    finally:
        if client is not None:
            client.close()
    out.print(f"wrote {path}: {summary} in {time.perf_counter() - t0:.1f} s")


@cli.command()
@click.argument("run_dir")
@click.argument("data")
@click.argument("out_path", metavar="OUT")
@click.option("--draws", type=int, default=0, show_default=True, help="Multiple-imputation draws to write too.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the draws.")
@click.option("--variable", default=None, help="Array of the DATA group (default X).")
@click.option("--partition-rows", type=int, default=None, help="Rows per task (default: automatic).")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT.")
def impute(run_dir: str, data: str, out_path: str, draws: int, seed: int, variable: str | None,
           partition_rows: int | None, overwrite: bool) -> None:
    """Write DATA with every NaN filled from the model in RUN_DIR to the Zarr group OUT.

    Missing entries get their conditional expectation E[x_missing | x_observed]
    under the fitted mixture; observed entries are copied exactly.
    """
    import zarr

    import dem
    from dem.impute import impute as fill

    if draws < 0:
        raise ConfigError(f"--draws must be >= 0; got {draws}")
    model = dem.load(run_dir)
    t0 = time.perf_counter()
    fill(model, data, out_path, n_draws=draws, random_state=seed, variable=variable,
         partition_rows=partition_rows, overwrite=overwrite)
    info = dict(zarr.open_group(store=out_path, mode="r").attrs).get("dem_impute", {})
    filled = info.get("n_imputed")
    out.print(f"wrote {out_path}: {filled if filled is not None else '?'} missing entries filled"
              + (f", {draws} draws" if draws else "") + f" in {time.perf_counter() - t0:.1f} s")


def _list(path: str, pattern: str) -> list[str]:
    fs, p = _fs(path)
    base = p.rstrip("/")
    try:
        found = fs.glob(f"{base}/{pattern}")
    except (OSError, ValueError):
        return []
    if "://" in path:
        proto = path.split("://", 1)[0]
        return [f"{proto}://{f}" for f in found]
    return list(found)


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


@cli.command()
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
                  f"init {f.get('init_params')}, random_state {f.get('random_state')}")
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
    from dem.plots import COMPONENTS_PNG, CONVERGENCE_PNG

    pictures = [_join(run_dir, n) for n in (CONVERGENCE_PNG, COMPONENTS_PNG) if _exists(_join(run_dir, n))]
    if pictures:
        out.print("pictures: " + ", ".join(p if remote else os.path.abspath(p) for p in pictures))
    else:
        out.print("pictures: none yet (`dem fit` draws them at the end; or "
                  f"dem.plots.plot_convergence({run_dir!r}))")


# -- entry point -----------------------------------------------------------------

def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                  line: Any = None) -> None:
    err.print(f"warning: {message}", markup=False)


def main(argv: list[str] | None = None) -> None:
    """Run the ``dem`` command; errors a user can fix print one line and exit non-zero."""
    import logging

    previous = warnings.showwarning
    warnings.showwarning = _show_warning  # one line per warning, no source line
    if "--debug" not in (argv if argv is not None else sys.argv[1:]):
        _quiet_logs()
    try:
        code = _run(argv)
    finally:
        warnings.showwarning = previous
        for name, level in _SAVED_LEVELS.items():
            logging.getLogger(name).setLevel(level)
        _SAVED_LEVELS.clear()
    sys.exit(code)


#: Logger levels `dem` changed, restored when :func:`main` returns (it also runs in-process in tests).
_SAVED_LEVELS: dict[str, int] = {}


def _quiet_logs() -> None:
    """Only CRITICAL from distributed and asyncio: their errors reach dem as exceptions, reported once.

    Client-side chatter (and asyncio's "exception never retrieved" after
    Ctrl-C) would bury the one line that matters. distributed.client has a
    level of its own, which importing distributed sets, so this runs again
    once distributed is imported.
    """
    import logging

    for name in ("distributed", "distributed.client", "asyncio"):
        logger = logging.getLogger(name)
        _SAVED_LEVELS.setdefault(name, logger.level)
        logger.setLevel(logging.CRITICAL)


def _run(argv: list[str] | None) -> int:
    try:
        rc = cli.main(args=argv, prog_name="dem", standalone_mode=False)
    except click.exceptions.UsageError as exc:
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        return _fail(exc.format_message().rstrip(".") + where, 2)
    except (click.exceptions.Abort, KeyboardInterrupt):
        # click turns Ctrl-C into Abort.
        run = _CURRENT_RUN
        if run is not None and _exists(_join(run, CHECKPOINTS_NAME)):
            return _fail(f"interrupted; continue with `dem resume {run}`", 130)
        return _fail("interrupted", 130)
    except (DemError, FileNotFoundError) as exc:
        if _DEBUG:
            raise
        # Some errors name a Python argument (overwrite=True); the CLI's flag differs.
        return _fail(getattr(exc, "cli_message", None) or str(exc), 1)
    except click.exceptions.ClickException as exc:
        return _fail(exc.format_message(), exc.exit_code or 1)
    except Exception as exc:
        line = _failure_line(exc)
        if line is None or _DEBUG:
            raise
        return _fail(line, 1)
    return rc if isinstance(rc, int) else 0


def _failure_line(exc: Exception) -> str | None:
    """One line for failures of the environment rather than of the input; None: not one of them.

    The scheduler going away and a full or read-only disk mid-fit otherwise
    end in 30-100 lines of distributed's, zarr's and fsspec's frames; the
    checkpoints written before either are intact (each is renamed into
    place whole), so the line says how to continue.
    """
    if _scheduler_lost(exc):
        return _scheduler_lost_line()
    if isinstance(exc, OSError):
        return _os_error_line(exc)
    return None


def _scheduler_lost(exc: BaseException) -> bool:
    try:
        from distributed.client import FutureCancelledError
        from distributed.comm.core import CommClosedError
    except ImportError:
        return False
    # dem never cancels its own futures: a cancelled one means the scheduler
    # went away (distributed gives the reason as "scheduler-connection-lost"
    # or, depending on timing, "unknown").
    return isinstance(exc, (FutureCancelledError, CommClosedError))


def _scheduler_lost_line() -> str:
    address = _CURRENT_ADDRESS
    run = _CURRENT_RUN
    where = f"the Dask scheduler at {address}" if address else "the embedded Dask scheduler"
    if run is None or not _exists(_join(run, CHECKPOINTS_NAME)):
        return f"lost the connection to {where} before the first checkpoint; run the same command again"
    if address:
        return (f"lost the connection to {where}; once a scheduler is up, continue with "
                f"`dem resume {run} --set cluster.address={address}` (or the new scheduler's address)")
    return f"lost the connection to {where}; continue with `dem resume {run}`"


def _os_error_line(exc: OSError) -> str:
    """One line for a filesystem error: what, where, and how to go on."""
    what = exc.strerror or str(exc) or type(exc).__name__
    run = _CURRENT_RUN
    # zarr's and fsspec's writes often raise without a filename: then name the run directory.
    where = exc.filename or run
    then = "run the same command again"
    if run is not None and _exists(_join(run, CHECKPOINTS_NAME)):
        then = f"continue with `dem resume {run}`"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        full = "no space left on the device" if exc.errno == errno.ENOSPC else "disk quota exceeded"
        return f"{full} writing {where}: free some space, then {then}"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {where}: {what}; make it writable, then {then}"
    return f"{what}" + (f": {exc.filename}" if exc.filename else "")


def _fail(message: str, code: int) -> int:
    first = " ".join(str(message).split("\n")[0].split()) or "failed"
    err.print(f"error: {first}")
    return code


if __name__ == "__main__":
    main()
