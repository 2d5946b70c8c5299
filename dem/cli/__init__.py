"""The ``dem`` command: ``fit``, ``resume``, ``generate``, ``impute`` and ``info``.

The CLI parses, validates and calls the Python API; it holds no EM logic.
Problems a user can fix (:class:`dem.errors.DemError`, bad usage, a missing
config file) print one line ``error: <message>`` on stderr and exit with
status 1 (2 for usage errors), without a traceback. Everything is validated
before anything is written, so a rejected command leaves no run directory
behind.
"""

from __future__ import annotations

import errno
import os
import sys
import time
import warnings
from typing import Any

import click

from dem.cli.cluster import Cluster, _start_cluster, dashboard_line  # noqa: F401  (the tests drive them)
from dem.cli.common import _SAVED_LEVELS, CONFIG_NAME, RESUMABLE_KEYS, _exists, _join, _quiet_logs, err, out, session
from dem.cli.info import info
from dem.cli.run import _preflight_data, run_fit  # noqa: F401  (the tests drive _preflight_data)
from dem.config import config_from_dict, load_config, parse_override, read_yaml
from dem.engine.checkpoint import CHECKPOINTS as CHECKPOINTS_NAME
from dem.errors import CheckpointError, ConfigError, DemError

_set_option = click.option(
    "--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
    help="Override a config key (value read as YAML); repeatable.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dem", prog_name="dem")
@click.option("--debug", is_flag=True, help="Show full tracebacks and Dask worker logs.")
def cli(debug: bool) -> None:
    """Fit latent-variable models by EM on data larger than memory (Zarr + Dask)."""
    session.debug = debug


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


cli.add_command(info)


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


def _run(argv: list[str] | None) -> int:
    try:
        rc = cli.main(args=argv, prog_name="dem", standalone_mode=False)
    except click.exceptions.UsageError as exc:
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        return _fail(exc.format_message().rstrip(".") + where, 2)
    except (click.exceptions.Abort, KeyboardInterrupt):
        # click turns Ctrl-C into Abort.
        run = session.current_run
        if run is not None and _exists(_join(run, CHECKPOINTS_NAME)):
            return _fail(f"interrupted; continue with `dem resume {run}`", 130)
        return _fail("interrupted", 130)
    except (DemError, FileNotFoundError) as exc:
        if session.debug:
            raise
        # Some errors name a Python argument (overwrite=True); the CLI's flag differs.
        return _fail(getattr(exc, "cli_message", None) or str(exc), 1)
    except click.exceptions.ClickException as exc:
        return _fail(exc.format_message(), exc.exit_code or 1)
    except Exception as exc:
        line = _failure_line(exc)
        if line is None or session.debug:
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
    address = session.current_address
    run = session.current_run
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
    run = session.current_run
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
