"""Fit with dem on SLURM through dask-jobqueue.

Run it where jobs can be submitted (a login node, or a small allocation):

    pip install dask-jobqueue
    python deploy/slurm/fit_slurm.py path/to/config.yaml --jobs 8 --account myproj

dask-jobqueue starts the scheduler in this process and submits one SLURM job
per worker; once the first workers have joined, ``dem fit`` runs against the
scheduler (``--set cluster.address=...``), so the fit gets dem's checkpoints
and resume: if anything is interrupted, run the same command again and the fit
continues from the last checkpoint in ``output.run_dir``, which must be on a
filesystem every node sees (or ``s3://``).

The worker settings come from ``deploy/commands.yaml`` (threads, memory
limit, worker dashboard), the same as every other deployment. dask-jobqueue
writes the worker command itself (``python -m distributed.cli.dask_worker
SCHEDULER --nthreads ... --memory-limit ... --name ... --nanny``); the address
a worker listens on is chosen by ``--interface`` here, else by distributed
(the interface that routes to the scheduler), instead of ``--host``.

The same in Python, with the estimator instead of the CLI::

    from dask_jobqueue import SLURMCluster
    from distributed import Client
    import dem

    with SLURMCluster(**slurm_cluster_kwargs()) as cluster, Client(cluster) as client:
        cluster.scale(jobs=8)
        client.wait_for_workers(1, timeout=600)
        gm = dem.GaussianMixture(6, random_state=0, client=client,
                                 checkpoint_dir="/shared/runs/demo")  # resumes if interrupted
        gm.fit("/shared/data/demo.zarr")
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

COMMANDS_FILE = Path(__file__).resolve().parents[1] / "commands.yaml"


def load_commands(path: Path = COMMANDS_FILE) -> dict[str, Any]:
    with open(path) as f:
        return yaml.safe_load(f)


def slurm_cluster_kwargs(*, queue: str | None = None, account: str | None = None,
                         walltime: str = "04:00:00", interface: str | None = None,
                         log_directory: str | None = "dem-slurm-logs",
                         commands: dict[str, Any] | None = None) -> dict[str, Any]:
    """``SLURMCluster`` keyword arguments for workers as in ``deploy/commands.yaml``.

    One job = one worker process (``--nworkers 1``) with ``nthreads`` threads
    and ``memory_limit`` memory; the job asks SLURM for ~15% more memory than
    the worker's limit, for the nanny and Python itself.
    """
    commands = commands or load_commands()
    worker = commands["worker"]["defaults"]
    scheduler = commands["scheduler"]["defaults"]
    from dask.utils import parse_bytes

    memory = worker["memory_limit"]
    job_mem = int(parse_bytes(memory) * 1.15) // 2**20
    kwargs: dict[str, Any] = {
        "cores": int(worker["nthreads"]),     # --nthreads (cores / processes)
        "processes": 1,                       # --nworkers 1
        "memory": memory,                     # --memory-limit
        "job_mem": f"{job_mem}M",             # #SBATCH --mem
        "walltime": walltime,
        "worker_extra_args": ["--dashboard-address", worker["dashboard_address"]],
        # The scheduler runs in this process: any free port (a login node is
        # shared), dashboard as in commands.yaml.
        "scheduler_options": {"port": 0, "dashboard_address": scheduler["dashboard_address"]},
        "job_extra_directives": ["--requeue"],
    }
    if queue:
        kwargs["queue"] = queue
    if account:
        kwargs["account"] = account
    if interface:
        kwargs["interface"] = interface
    if log_directory:
        kwargs["log_directory"] = log_directory
    return kwargs


def dem_fit_argv(config: str, scheduler_address: str, overrides: list[str] = ()) -> list[str]:
    """The job command of ``deploy/commands.yaml``: ``dem fit CONFIG --set cluster.address=...``."""
    script = Path(sys.executable).with_name("dem")  # the console script of this environment
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "dem.cli"]
    argv = [*launcher, "fit", config, "--set", f"cluster.address={scheduler_address}"]
    for item in overrides:
        argv += ["--set", item]
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="dem config.yaml")
    parser.add_argument("--jobs", type=int, default=4, help="SLURM jobs, one worker each")
    parser.add_argument("--queue", help="SLURM partition")
    parser.add_argument("--account", help="SLURM account")
    parser.add_argument("--walltime", default="04:00:00", help="per worker job")
    parser.add_argument("--interface", help="network interface for workers and scheduler, e.g. ib0")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="passed on to `dem fit --set`")
    args = parser.parse_args(argv)

    from dask_jobqueue import SLURMCluster
    from distributed import Client

    kwargs = slurm_cluster_kwargs(queue=args.queue, account=args.account,
                                  walltime=args.walltime, interface=args.interface)
    with SLURMCluster(**kwargs) as cluster, Client(cluster) as client:
        cluster.scale(jobs=args.jobs)
        print(f"scheduler {cluster.scheduler_address}, dashboard {cluster.dashboard_link}", flush=True)
        client.wait_for_workers(1, timeout=3600)  # the queue decides when jobs start
        return subprocess.call(dem_fit_argv(args.config, cluster.scheduler_address, args.overrides))


if __name__ == "__main__":
    sys.exit(main())
