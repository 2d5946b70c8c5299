"""W1 against the machine's limit and against scikit-learn; restarts against one fit.

Two measurement kinds for :mod:`benchmarks._child` (``python -m
benchmarks.run --mode w1`` / ``--mode restarts``):

* ``w1``: per round, on a fresh ``LocalCluster`` of two single-threaded
  workers, the dgemm rate of each worker measured at once (both cores busy,
  as during an E-step), dem's float64 and float32 fits with the data cached
  on the workers, and scikit-learn from the same initial parameters. The
  limit of an iteration is ``4·N·K·D²`` flops at the summed rate of the
  two workers; ``fraction of limit = limit / dem's seconds per iteration``.
  dem cuts partitions by bytes, so its own float32 partitions of the same
  data hold twice the rows: the float32 fit runs with the partition bytes of
  the float64 fit (``partition_rows`` doubled; what a user who leaves
  ``partition_rows`` to dem gets on W1), and again with the same rows
  (twice the tasks per pass, each half as long). The float32 speed-up is
  also taken on the E-step tasks' busy time, and on the kernel alone: one
  16 MiB partition per dtype, timed in a fresh process started as a worker is.
* ``restarts``: per round, on a fresh cluster, ``n_init=1`` and
  ``n_init=R`` with the same initialisation method, seconds per iteration.

Rounds alternate everything, so the load drift of a shared machine hits
every figure alike; ratios are taken within a round and reported as median
and spread over the rounds.
"""

from __future__ import annotations

import statistics
import time
import warnings
from typing import Any

import numpy as np

from benchmarks import measure, workloads

GEMM_N = 2000


def _gemm_rate(dtype: str = "float64", n: int = GEMM_N, reps: int = 3, dask_worker: Any = None) -> float:
    """Best single-threaded GEMM rate (GFLOP/s) of ``n × n`` products in this process."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    c = np.empty((n, n), dtype=dtype)
    best = np.inf
    with threadpool_limits(limits=1, user_api="blas"):
        np.matmul(a, b, out=c)
        for _ in range(reps):
            t0 = time.perf_counter()
            np.matmul(a, b, out=c)
            best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def _blas_info(dask_worker: Any = None) -> list[dict[str, Any]]:
    from threadpoolctl import threadpool_info

    return [{k: i.get(k) for k in ("user_api", "internal_api", "version", "architecture", "num_threads")}
            for i in threadpool_info()]


def workers_gemm(client: Any, dtype: str = "float64") -> float:
    """Summed GEMM rate of all workers, measured on all of them at once."""
    return float(sum(client.run(_gemm_rate, dtype).values()))


def _unfused_executor() -> None:
    """Make every estimator's executor run one task per partition (``fuse=False``).

    dem's executor fuses each group of ``fan_in`` leaves into one task; with
    W1's 8 partitions and fan_in 8 that is a single task, so one of the two
    workers would idle. The engine's sizing of fused groups to the cluster
    (issue 16, item 3) gives W1 one task per partition; ``--unfused`` asks
    for that explicitly, without changing the tree or its bits.
    """
    from dem.engine import executor as ex

    if getattr(ex.Executor.resolve, "_unfused", False):
        return
    original = ex.Executor.resolve.__func__

    def resolve(cls: Any, client: Any = None, **kw: Any) -> Any:
        executor = original(cls, client, **kw)
        executor.fuse = False
        return executor

    resolve._unfused = True  # type: ignore[attr-defined]
    ex.Executor.resolve = classmethod(resolve)  # type: ignore[method-assign]


def _dem_fit(spec: dict[str, Any], path: str, init: dict[str, np.ndarray], n_init: int = 1) -> dict[str, Any]:
    """One dem fit on a fresh cluster: seconds per iteration and the workers' GEMM rate around it."""
    import dem

    if spec.get("unfused"):
        _unfused_executor()

    with measure.local_cluster(spec["workers"]) as client:
        rates = [workers_gemm(client)]
        kw: dict[str, Any] = dict(tol=0.0, max_iter=spec["iters"], client=client,
                                  partition_rows=spec.get("partition_rows"), cache=spec.get("cache", True),
                                  covariance_type=spec.get("covariance_type", "full"))
        if n_init == 1 and not spec.get("init_params"):
            kw.update(weights_init=init["weights"], means_init=init["means"], precisions_init=init["precisions"])
        else:
            kw.update(n_init=n_init, init_params=spec.get("init_params") or "random_from_data", random_state=0)
        est = dem.GaussianMixture(spec["k"], **kw)
        from distributed import get_task_stream

        with warnings.catch_warnings(), get_task_stream(client) as stream:
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            est.fit(path)
            wall = time.perf_counter() - t0
        rates.append(workers_gemm(client))
        blas = client.run(_blas_info)
    seconds = [h["seconds"] for h in est.history_]
    busy = _estep_busy(stream.data, len(seconds), spec["workers"])
    return {"seconds_per_iter": measure._steady(seconds), "iter_seconds": seconds, "fit_wall_seconds": wall,
            "estep_busy_seconds_per_worker_iter": busy,
            "workers_dgemm_gflops": max(rates), "lower_bound": float(est.lower_bound_),
            "worker_blas": sorted({f"{i['internal_api']} {i['version']} ({i['architecture']}), "
                                   f"{i['num_threads']} thread(s)" for w in blas.values() for i in w
                                   if i["user_api"] == "blas"})}


def _estep_busy(tasks: list[dict[str, Any]], iterations: int, workers: int) -> float | None:
    """Median over iterations 2..n of the E-step tasks' compute seconds per worker.

    E-step tasks are the executor's leaf tasks, keyed ``("dem-leaf-<pass token>", j)``:
    a pass's tasks share its token (passes run one after the other, so the
    token order is the start order).
    """
    passes: dict[str, float] = {}
    first: dict[str, float] = {}
    for t in tasks:
        key = t.get("key")
        name = key[0] if isinstance(key, tuple) else str(key)
        if not str(name).startswith("dem-leaf-"):
            continue
        for s in t.get("startstops", ()):
            if s.get("action") == "compute":
                passes[name] = passes.get(name, 0.0) + s["stop"] - s["start"]
                first[name] = min(first.get(name, s["start"]), s["start"])
    if len(passes) < 2 or iterations < 2:
        return None
    ordered = [passes[k] for k in sorted(passes, key=first.get)]
    steady = ordered[-(iterations - 1):] if len(ordered) >= iterations else ordered[1:]
    return statistics.median(steady) / workers if steady else None


#: Bytes of the partition the in-process kernel times (W1's: dem cuts partitions by bytes).
KERNEL_PARTITION_BYTES = 16 * 2**20


def _kernel_seconds_per_row(path: str, init_path: str, k: int, seconds: float) -> float:
    """Median seconds per row of one E-step over a partition of ``path``'s first rows, in this
    process on one BLAS thread: the kernel alone, without a cluster."""
    import zarr
    from threadpoolctl import threadpool_limits

    import dem
    from dem.data.record import Partition

    arr = zarr.open_group(path, mode="r")["X"]
    rows = KERNEL_PARTITION_BYTES // (arr.shape[1] * arr.dtype.itemsize)
    X = np.ascontiguousarray(arr[:rows])
    init = workloads.load_initial_parameters(init_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = dem.GaussianMixture(k, max_iter=1, tol=0.0, weights_init=init["weights"], means_init=init["means"],
                                  precisions_init=init["precisions"]).fit(X[:20_000])
    family, params = est._fitted_family(), est._fitted_params()
    part = Partition(X, None, None, None, 0)
    times = []
    with threadpool_limits(1):
        family.e_step(params, part)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 5:
            t0 = time.perf_counter()
            family.e_step(params, part)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) / rows


def _kernel_speedup(spec: dict[str, Any], seconds: float = 3.0) -> float:
    """float64 / float32 seconds per row of the E-step kernel, each in a fresh process started
    as Dask's nanny starts a worker (``MALLOC_TRIM_THRESHOLD_=65536``)."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    saved = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    os.environ["MALLOC_TRIM_THRESHOLD_"] = "65536"
    try:
        per_row = {}
        for dtype, path in (("float64", spec["path"]), ("float32", spec["path32"])):
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                per_row[dtype] = pool.submit(_kernel_seconds_per_row, path, spec["init"], spec["k"],
                                             seconds).result()
    finally:
        if saved is None:
            os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        else:
            os.environ["MALLOC_TRIM_THRESHOLD_"] = saved
    return per_row["float64"] / per_row["float32"]


def _sklearn_fit(spec: dict[str, Any], path: str, init_path: str) -> dict[str, Any]:
    return measure.sklearn_fit({**spec, "path": path, "init": init_path, "threads": spec.get("sklearn_threads", 2)})


def _spread(values: list[float]) -> dict[str, Any]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "values": []}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "values": vals}


def w1(spec: dict[str, Any]) -> dict[str, Any]:
    """dem float64 / float32 / scikit-learn / the dgemm limit, in alternating rounds."""
    init = workloads.load_initial_parameters(spec["init"])
    flops = 4.0 * spec["n"] * spec["k"] * spec["d"] ** 2
    rounds: list[dict[str, Any]] = []
    for r in range(int(spec["rounds"])):
        row: dict[str, Any] = {"round": r}
        row["dem_float64"] = _dem_fit(spec, spec["path"], init)
        if spec.get("path32"):
            rows32 = spec.get("partition_rows")
            row["dem_float32"] = _dem_fit({**spec, "partition_rows": rows32 and 2 * rows32}, spec["path32"], init)
            if rows32:
                row["dem_float32_same_rows"] = _dem_fit(spec, spec["path32"], init)
        if spec.get("sklearn", True):
            row["sklearn"] = _sklearn_fit(spec, spec["path"], spec["init"])
        d64 = row["dem_float64"]
        limit = flops / (d64["workers_dgemm_gflops"] * 1e9)
        row["limit_seconds"] = limit
        row["fraction_of_limit"] = limit / d64["seconds_per_iter"]
        if d64.get("estep_busy_seconds_per_worker_iter"):
            row["estep_fraction_of_limit"] = limit / d64["estep_busy_seconds_per_worker_iter"]
        if "dem_float32" in row:
            d32 = row["dem_float32"]
            row["float32_speedup"] = d64["seconds_per_iter"] / d32["seconds_per_iter"]
            if d64.get("estep_busy_seconds_per_worker_iter") and d32.get("estep_busy_seconds_per_worker_iter"):
                row["estep_float32_speedup"] = (d64["estep_busy_seconds_per_worker_iter"]
                                                / d32["estep_busy_seconds_per_worker_iter"])
            if "dem_float32_same_rows" in row:
                row["float32_speedup_same_rows"] = (d64["seconds_per_iter"]
                                                    / row["dem_float32_same_rows"]["seconds_per_iter"])
            row["kernel_float32_speedup"] = _kernel_speedup(spec)
        if row.get("sklearn", {}).get("seconds_per_iter"):
            row["sklearn_over_dem"] = row["sklearn"]["seconds_per_iter"] / d64["seconds_per_iter"]
        rounds.append(row)
    out: dict[str, Any] = {"rounds": rounds, "flops_per_iter": flops,
                           "worker_blas": rounds[0]["dem_float64"]["worker_blas"] if rounds else None}
    for key in ("fraction_of_limit", "estep_fraction_of_limit", "float32_speedup", "estep_float32_speedup",
                "float32_speedup_same_rows", "kernel_float32_speedup", "sklearn_over_dem", "limit_seconds"):
        out[key] = _spread([r.get(key) for r in rounds])
    for key in ("dem_float64", "dem_float32", "dem_float32_same_rows", "sklearn"):
        out[f"{key}_seconds_per_iter"] = _spread([r.get(key, {}).get("seconds_per_iter") for r in rounds])
    out["workers_dgemm_gflops"] = _spread([r["dem_float64"]["workers_dgemm_gflops"] for r in rounds])
    lbs = [r["dem_float64"]["lower_bound"] for r in rounds]
    sk = [r["sklearn"]["last_mean_log_likelihood"] for r in rounds if r.get("sklearn", {}).get("status", "ok") == "ok"
          and r.get("sklearn", {}).get("last_mean_log_likelihood") is not None]
    if lbs and sk:
        out["dem_vs_sklearn_lower_bound_max_abs_difference"] = max(abs(a - b) for a in lbs for b in sk)
    return out


def restarts(spec: dict[str, Any]) -> dict[str, Any]:
    """``n_init=R`` against ``n_init=1`` per iteration, alternating which goes first."""
    init = workloads.load_initial_parameters(spec["init"])
    R = int(spec.get("restarts", 8))
    rounds = []
    for r in range(int(spec["rounds"])):
        order = (1, R) if r % 2 == 0 else (R, 1)
        fits = {n: _dem_fit({**spec, "init_params": spec.get("init_params") or "random_from_data"},
                            spec["path"], init, n_init=n) for n in order}
        rounds.append({"round": r, "one": fits[1], "many": fits[R],
                       "ratio": fits[R]["seconds_per_iter"] / fits[1]["seconds_per_iter"]})
    return {"restarts": R, "rounds": rounds, "ratio": _spread([x["ratio"] for x in rounds]),
            "one_seconds_per_iter": _spread([x["one"]["seconds_per_iter"] for x in rounds]),
            "many_seconds_per_iter": _spread([x["many"]["seconds_per_iter"] for x in rounds])}


KINDS = {"w1": w1, "restarts": restarts}
