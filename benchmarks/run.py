"""Run the dem benchmarks: ``python -m benchmarks.run [options]`` (see README.md).

Every measurement is one child process (``benchmarks._child``) with a hard
timeout; its whole process group (cluster workers, a Spark JVM) is killed
if it overruns. Results are printed as a table and written as JSON.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import hashlib
import platform
import re
import signal
import subprocess
import sys
import time
from typing import Any

from benchmarks import report, workloads

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("w1", "restarts", "memory", "zarr", "both", "overhead", "big", "all")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmark dem's EM against scikit-learn and Spark (issue #4).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    w = p.add_argument_group("workload W1")
    w.add_argument("--n", type=int, default=1_000_000, help="rows")
    w.add_argument("--d", type=int, default=16, help="features")
    w.add_argument("--k", type=int, default=16, help="components")
    w.add_argument("--covariance-type", default="full", choices=("full", "tied", "diag", "spherical"))
    w.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    w.add_argument("--iters", type=int, default=5, help="EM iterations per fit (tol=0)")
    w.add_argument("--seed", type=int, default=0, help="dataset and initialisation seed")
    w.add_argument("--chunk-rows", type=int, default=workloads.DEFAULT_CHUNK_ROWS, help="rows per Zarr chunk")
    w.add_argument("--partition-rows", type=int, default=125_000,
                   help="dem partition_rows (0: dem's own default)")
    p.add_argument("--mode", default="w1",
                   help="comma-separated: w1 (dem float64/float32 vs the dgemm limit and scikit-learn, "
                        "alternating rounds), restarts (n_init=R vs 1), memory, zarr, both (=memory,zarr), "
                        "overhead, big, all")
    p.add_argument("--rounds", type=int, default=3,
                   help="w1/restarts: alternating rounds; ratios are reported as median and spread over them")
    p.add_argument("--w1-sklearn-threads", type=int, default=2,
                   help="w1: BLAS threads of scikit-learn (2 = the cores dem's two workers use)")
    p.add_argument("--no-w1-sklearn", action="store_true", help="w1: skip scikit-learn")
    p.add_argument("--restarts", type=int, default=8, help="restarts: n_init compared with n_init=1")
    p.add_argument("--unfused", action="store_true",
                   help="w1/restarts: one task per partition (Executor fuse=False), so both workers share "
                        "W1's 8 partitions where the executor would fuse them into one task")
    p.add_argument("--restarts-iters", type=int, default=4, help="restarts: EM iterations per fit (tol=0)")
    p.add_argument("--workers", type=int, default=2, help="LocalCluster workers (1 thread each); also Spark local[N]")
    p.add_argument("--peers", default="sklearn,spark", help="comma-separated peers: sklearn, spark, or none")
    p.add_argument("--sklearn-threads", default="1,2", help="BLAS thread limits to run scikit-learn with")
    p.add_argument("--spark-apis", default="mllib,ml",
                   help="mllib (RDD API, same initial model) and/or ml (DataFrame API, its own init)")
    p.add_argument("--spark-driver-memory", default="6g")
    p.add_argument("--no-float32", action="store_true", help="skip the float32 rows")
    p.add_argument("--paired-rounds", type=int, default=3,
                   help="alternate the dem variants this many rounds for drift-resistant ratios (0: skip)")
    p.add_argument("--no-malloc-variant", action="store_true",
                   help="skip the diagnostic dem row whose workers run without Dask's MALLOC_TRIM_THRESHOLD_")
    o = p.add_argument_group("engine overhead")
    o.add_argument("--overhead-partitions", default="1000",
                   help="comma-separated partition counts, e.g. 1000,10000 (rows = partitions x --overhead-rows)")
    o.add_argument("--overhead-rows", type=int, default=100, help="rows per partition")
    o.add_argument("--overhead-iters", type=int, default=10)
    o.add_argument("--no-overhead-threads", action="store_true",
                   help="skip the overhead workload on dem's local threaded scheduler (no client)")
    o.add_argument("--profile", action="store_true", help="cProfile the driver during overhead runs")
    b = p.add_argument_group("larger than memory (--mode big)")
    b.add_argument("--big-worker-memory", default="1GiB", help="memory_limit of each worker")
    b.add_argument("--big-factor", type=float, default=3.0,
                   help="data size as a multiple of the workers' total memory limit")
    b.add_argument("--big-gb", type=float, default=None, help="data size in GB (overrides --big-factor)")
    b.add_argument("--big-iters", type=int, default=3)
    b.add_argument("--big-cache", default="auto", choices=("auto", "false"),
                   help="cache setting of the big fit (auto must choose streaming)")
    p.add_argument("--data-dir", default=workloads.default_data_dir(), help="dataset cache directory")
    p.add_argument("--out", default="results.json", help="JSON results file")
    p.add_argument("--log-dir", default=None, help="child logs [<data-dir>/logs/<timestamp>]")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per measurement")
    p.add_argument("--only", default=None, metavar="REGEX",
                   help="run only the rows whose name matches REGEX (the BLAS rates always run)")
    return p.parse_args(argv)


def _modes(text: str) -> set[str]:
    modes = {m.strip() for m in text.split(",") if m.strip()}
    bad = modes - set(MODES)
    if bad:
        raise SystemExit(f"error: unknown --mode {sorted(bad)}; choose from {', '.join(MODES)}")
    if "both" in modes:
        modes |= {"memory", "zarr"}
    if "all" in modes:
        modes |= {"w1", "restarts", "memory", "zarr", "overhead", "big"}
    return modes - {"both", "all"}


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip() and t.strip() != "none"]


def _bytes(text: str) -> int:
    from dask.utils import parse_bytes

    return int(parse_bytes(text))


# -- running children ---------------------------------------------------------------

class Runner:
    def __init__(self, log_dir: str, timeout: float, only: str | None = None) -> None:
        self.only = re.compile(only) if only else None
        self.log_dir = log_dir
        self.timeout = timeout
        self.count = 0
        os.makedirs(log_dir, exist_ok=True)

    def __call__(self, name: str, spec: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        if self.only is not None and spec.get("kind") != "blas" and not self.only.search(name):
            return {"status": "not selected", "name": name}
        self.count += 1
        stem = os.path.join(self.log_dir, f"{self.count:02d}-{_slug(name)}")
        spec_path, result_path, log_path = stem + ".spec.json", stem + ".result.json", stem + ".log"
        with open(spec_path, "w") as f:
            json.dump(spec, f, indent=1)
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        limit = timeout or self.timeout
        tty = sys.stdout.isatty()
        if tty:
            print(f"  … {name}", end="", flush=True)
        t0 = time.perf_counter()
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "benchmarks._child", spec_path, result_path],
                                    cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                proc.wait(timeout=limit)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _end_group(proc)
        wall = time.perf_counter() - t0
        if timed_out:
            result = {"status": "timeout", "reason": f"no result within {limit:.0f} s (process group killed)"}
        elif os.path.exists(result_path):
            with open(result_path) as f:
                result = json.load(f)
        else:
            result = {"status": "failed", "reason": f"child exited with status {proc.returncode} and no result"}
        result["name"], result["log"], result["wall_seconds_total"] = name, log_path, wall
        print(("\r" if tty else "") + f"  {'ok ' if result.get('status') == 'ok' else result.get('status', '?')[:7]:7s} {name}"
              f"  ({wall:.0f} s)" + (f": {result.get('reason')}" if result.get("status") != "ok" else ""),
              flush=True)
        return result


def _end_group(proc: subprocess.Popen) -> None:
    """Stop what is left of the child's process group (the child is its leader)."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        deadline = time.time() + grace
        while time.time() < deadline:
            if proc.poll() is not None and not _group_alive(proc.pid):
                return
            time.sleep(0.2)
    proc.poll()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:60]


# -- metadata -------------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    import importlib.metadata as md

    import psutil

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    from benchmarks.machine import cpu_model

    cpu = cpu_model()
    return {
        "python": platform.python_version(), "platform": platform.platform(), "cpu": cpu,
        "logical_cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "load_average": list(os.getloadavg()),
        "versions": {p: version(p) for p in ("dem", "numpy", "scipy", "dask", "distributed", "zarr",
                                               "numcodecs", "scikit-learn", "threadpoolctl", "pyspark")},
        "env": {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS", "OMP_", "MKL_", "JAVA_HOME"))},
        "dem_code": code_fingerprint(),
        "blas": _threadpools(),
    }


def _threadpools() -> list[dict[str, Any]]:
    """The driver's BLAS and OpenMP libraries, as threadpoolctl sees them."""
    from threadpoolctl import threadpool_info

    return [{k: i.get(k) for k in ("user_api", "internal_api", "version", "architecture", "num_threads",
                                   "filepath")} for i in threadpool_info()]


def code_fingerprint() -> dict[str, Any]:
    """Which dem code was measured: git HEAD, whether the tree is dirty, hashes of the hot files."""
    def git(*cmd: str) -> str | None:
        try:
            return subprocess.run(["git", *cmd], cwd=REPO_ROOT, capture_output=True, text=True,
                                  timeout=30).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None

    files = {}
    for rel in ("dem/families/gaussian_kernel.py", "dem/families/gaussian_packed.py",
                "dem/families/gaussian_stack.py", "dem/families/gaussian_mixture.py", "dem/engine/executor.py",
                "dem/engine/fitting.py", "dem/data/partitions.py"):
        try:
            with open(os.path.join(REPO_ROOT, rel), "rb") as f:
                files[rel] = hashlib.sha256(f.read()).hexdigest()[:12]
        except OSError:
            files[rel] = None
    status = git("status", "--porcelain", "--", "dem")
    return {"head": git("rev-parse", "--short", "HEAD"), "dem_dirty": bool(status), "sha256_12": files}


# -- the plan --------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    modes = _modes(args.mode)
    peers = _csv(args.peers)
    started = _dt.datetime.now().astimezone()
    log_dir = args.log_dir or os.path.join(args.data_dir, "logs", started.strftime("%Y%m%d-%H%M%S"))
    run = Runner(log_dir, args.timeout, args.only)
    prows = None if args.partition_rows == 0 else args.partition_rows
    out: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])]),
        "started": started.isoformat(timespec="seconds"), "machine": machine_info(),
        "config": {k: v for k, v in vars(args).items()}, "modes": sorted(modes), "rows": [],
    }
    print(f"dem benchmarks — {out['machine']['cpu']}, {out['machine']['logical_cpus']} CPUs, "
          f"load {out['machine']['load_average'][0]:.1f}; logs in {log_dir}")

    w1 = {"n": args.n, "d": args.d, "k": args.k, "iters": args.iters, "covariance_type": args.covariance_type,
          "seed": args.seed, "partition_rows": prows, "workers": args.workers}
    blas_runs = [run("BLAS reference rates (before)", {"kind": "blas"}, timeout=600)]
    out["blas"] = blas_runs

    if modes & {"w1", "restarts"}:
        _kernel_rows(run, out, w1, modes, args)

    if modes & {"memory", "zarr"}:
        print(f"W1: N={args.n:,} D={args.d} K={args.k} {args.covariance_type} {args.dtype}, {args.iters} iterations")
        ds = workloads.ensure_dataset(args.data_dir, args.n, args.d, args.k, args.dtype, args.seed, args.chunk_rows)
        init = workloads.ensure_initial_parameters(args.data_dir, ds["path"], args.k, args.seed)
        out["datasets"] = {"W1": ds}
        base = {**w1, "path": ds["path"], "init": init, "dtype": args.dtype}
        _w1_rows(run, out, base, modes, peers, args, group="W1")
        if not args.no_float32 and "memory" in modes and args.dtype == "float64":
            ds32 = workloads.ensure_dataset(args.data_dir, args.n, args.d, args.k, "float32", args.seed,
                                            args.chunk_rows)
            out["datasets"]["W1-float32"] = ds32
            base32 = {**base, "path": ds32["path"], "dtype": "float32"}
            print("W1 float32")
            out["rows"].append({**run("dem cluster memory f32", {**base32, "kind": "dem", "client": "cluster",
                                                                 "source": "zarr", "cache": True}),
                                "group": "float32", "engine": "dem", "dtype": "float32", "reference": True})
            if not args.no_malloc_variant:
                out["rows"].append({**run("dem cluster memory f32, workers w/o MALLOC_TRIM_THRESHOLD_",
                                          {**base32, "kind": "dem", "client": "cluster", "source": "zarr",
                                           "cache": True, "malloc_trim": False}),
                                    "group": "float32", "engine": "dem", "dtype": "float32", "diagnostic": True})
            if "sklearn" in peers:
                for t in _csv(args.sklearn_threads):
                    out["rows"].append({**run(f"sklearn f32 BLAS {t}T", {**base32, "kind": "sklearn", "threads": int(t)}),
                                        "group": "float32", "engine": "sklearn", "dtype": "float32"})

        if args.paired_rounds > 0:
            variants = [{"label": "in-memory (zarr, cache=True)", "client": "cluster", "source": "zarr", "cache": True}]
            if "zarr" in modes:
                variants.append({"label": "streaming (cache=False)", "client": "cluster", "source": "zarr", "cache": False})
            if "memory" in modes:
                if not args.no_malloc_variant:
                    variants.append({"label": "in-memory, workers w/o MALLOC_TRIM_THRESHOLD_", "client": "cluster",
                                     "source": "zarr", "cache": True, "malloc_trim": False})
                variants.append({"label": "threads (no client)", "client": "none", "source": "numpy", "cache": True})
                if "W1-float32" in out.get("datasets", {}):
                    variants.append({"label": "in-memory float32", "client": "cluster", "source": "zarr", "cache": True,
                                     "path": out["datasets"]["W1-float32"]["path"], "dtype": "float32"})
            if len(variants) > 1:
                print(f"paired dem variants, {args.paired_rounds} alternating rounds")
                out["rows"].append({**run("dem paired variants", {**base, "kind": "paired", "rounds": args.paired_rounds,
                                                                  "variants": variants}),
                                    "group": "paired", "engine": "dem"})

    if "overhead" in modes or modes & {"memory", "zarr"}:
        parts = [int(p) for p in _csv(args.overhead_partitions) if int(p) > 0]
        if parts:
            print(f"engine overhead: {args.overhead_rows} rows/partition, D=2, K=2, {args.overhead_iters} iterations")
        for n_parts in parts:
            clients = ["cluster"] + ([] if args.no_overhead_threads else ["none"])
            for client in clients:
                spec = {"kind": "overhead", "partitions": n_parts, "rows_per_partition": args.overhead_rows,
                        "iters": args.overhead_iters, "k": 2, "workers": args.workers, "client": client,
                        "seed": args.seed, "profile": args.profile}
                label = "cluster" if client == "cluster" else "threads"
                out["rows"].append({**run(f"overhead {n_parts} partitions {label}", spec),
                                    "group": "overhead", "engine": "dem"})

    if "big" in modes:
        _big(run, out, args)

    blas_runs.append(run("BLAS reference rates (after)", {"kind": "blas"}, timeout=600))
    out["machine"]["load_average_end"] = list(os.getloadavg())
    out["finished"] = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    out["rows"] = [r for r in out["rows"] if r.get("status") != "not selected"]
    report.derive(out)
    print()
    print(report.render(out))
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1, default=str)
    print(f"\nresults: {os.path.abspath(args.out)}")
    return 0


def _w1_rows(run: Runner, out: dict, base: dict, modes: set[str], peers: list[str],
             args: argparse.Namespace, group: str) -> None:
    def add(name: str, spec: dict, engine: str, **extra: Any) -> None:
        out["rows"].append({**run(name, spec), "group": group, "engine": engine, "dtype": base["dtype"], **extra})

    if "memory" in modes:
        add("dem threads (no client) numpy", {**base, "kind": "dem", "client": "none", "source": "numpy", "cache": True},
            "dem", mode="memory")
        add("dem cluster memory (zarr, cache=True)", {**base, "kind": "dem", "client": "cluster", "source": "zarr",
                                                      "cache": True}, "dem", mode="memory", reference=True)
        add("dem cluster memory (numpy scattered)", {**base, "kind": "dem", "client": "cluster", "source": "numpy",
                                                     "cache": True}, "dem", mode="memory")
        if not args.no_malloc_variant:
            add("dem cluster memory, workers w/o MALLOC_TRIM_THRESHOLD_",
                {**base, "kind": "dem", "client": "cluster", "source": "zarr", "cache": True, "malloc_trim": False},
                "dem", mode="memory", diagnostic=True)
    if "zarr" in modes:
        add("dem cluster zarr streaming (cache=False)", {**base, "kind": "dem", "client": "cluster", "source": "zarr",
                                                         "cache": False}, "dem", mode="zarr")
    if "memory" in modes:
        if "sklearn" in peers:
            for t in _csv(args.sklearn_threads):
                add(f"sklearn BLAS {t}T", {**base, "kind": "sklearn", "threads": int(t)}, "sklearn")
        if "spark" in peers:
            res = run(f"spark local[{args.workers}]", {**base, "kind": "spark", "cores": args.workers,
                                                      "apis": _csv(args.spark_apis),
                                                      "driver_memory": args.spark_driver_memory})
            for api in ("mllib", "ml"):
                if api in res:
                    out["rows"].append({**res[api], "status": "ok", "name": f"spark {api} local[{args.workers}]",
                                        "group": group, "engine": "spark", "dtype": "float64", "api": api,
                                        "spark_version": res.get("spark_version"),
                                        "peak_rss_driver_mb": res.get("peak_rss_driver_mb"),
                                        "peak_rss_jvm_and_python_workers_mb": res.get("peak_rss_jvm_and_python_workers_mb"),
                                        "log": res.get("log")})
            if res.get("status") not in ("ok", "not selected") or (res.get("status") == "ok" and not any(api in res for api in ("mllib", "ml"))):
                out["rows"].append({**res, "name": f"spark local[{args.workers}]", "group": group, "engine": "spark"})


def _kernel_rows(run: Runner, out: dict, w1: dict, modes: set[str], args: argparse.Namespace) -> None:
    """W1 against the dgemm limit, float32 and scikit-learn; restarts against one fit (kernel_bench)."""
    ds = workloads.ensure_dataset(args.data_dir, args.n, args.d, args.k, "float64", args.seed, args.chunk_rows)
    ds32 = workloads.ensure_dataset(args.data_dir, args.n, args.d, args.k, "float32", args.seed, args.chunk_rows)
    init = workloads.ensure_initial_parameters(args.data_dir, ds["path"], args.k, args.seed)
    out.setdefault("datasets", {}).update({"W1": ds, "W1-float32": ds32})
    base = {**w1, "path": ds["path"], "path32": ds32["path"], "init": init, "rounds": args.rounds, "cache": True,
            "unfused": args.unfused}
    if "w1" in modes:
        print(f"W1 kernel: N={args.n:,} D={args.d} K={args.k} {args.covariance_type}, {args.iters} iterations, "
              f"{args.rounds} alternating rounds of dem float64 / float32 / scikit-learn "
              f"{args.w1_sklearn_threads}T / workers' dgemm")
        out["rows"].append({**run("W1 kernel (dem f64, f32, sklearn, dgemm limit)",
                                  {**base, "kind": "w1", "sklearn": not args.no_w1_sklearn,
                                   "sklearn_threads": args.w1_sklearn_threads},
                                  timeout=args.timeout * max(1, args.rounds)),
                            "group": "kernel", "engine": "dem"})
    if "restarts" in modes:
        print(f"restarts: n_init={args.restarts} vs 1 on W1 float64 in memory, {args.restarts_iters} iterations, "
              f"{args.rounds} rounds")
        out["rows"].append({**run(f"W1 restarts ({args.restarts} vs 1)",
                                  {**base, "kind": "restarts", "restarts": args.restarts,
                                   "iters": args.restarts_iters, "init_params": "random_from_data"},
                                  timeout=args.timeout * max(1, args.rounds)),
                            "group": "restarts", "engine": "dem"})


def _big(run: Runner, out: dict, args: argparse.Namespace) -> None:
    limit = _bytes(args.big_worker_memory)
    total = limit * args.workers
    target = args.big_gb * 1e9 if args.big_gb else args.big_factor * total
    itemsize = 8 if args.dtype == "float64" else 4
    chunk = args.chunk_rows
    n = max(chunk, int(-(-target // (args.d * itemsize) // chunk) * chunk))
    print(f"larger than memory: {n:,} rows x {args.d} {args.dtype} = {n * args.d * itemsize / 1e9:.2f} GB, "
          f"{args.workers} workers x {limit / 2**30:.2f} GiB")
    t0 = time.perf_counter()
    ds = workloads.ensure_dataset(args.data_dir, n, args.d, args.k, args.dtype, args.seed, chunk)
    init = workloads.ensure_initial_parameters(args.data_dir, ds["path"], args.k, args.seed)
    print(f"  dataset ready ({time.perf_counter() - t0:.0f} s{', generated' if ds['generated'] else ', cached'}): {ds['path']}")
    out.setdefault("datasets", {})["big"] = ds
    spec = {"kind": "big", "path": ds["path"], "init": init, "n": n, "d": args.d, "k": args.k,
            "iters": args.big_iters, "covariance_type": args.covariance_type, "workers": args.workers,
            "memory_limit": limit, "cache": "auto" if args.big_cache == "auto" else False,
            "partition_rows": None, "dtype": args.dtype}
    out["rows"].append({**run("dem big streaming", spec), "group": "big", "engine": "dem", "dtype": args.dtype})


if __name__ == "__main__":
    sys.exit(main())
