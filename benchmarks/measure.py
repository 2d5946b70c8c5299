"""The measurements. Each function takes a spec dict and returns a result dict.

They run inside a child process (:mod:`benchmarks._child`), so
``ru_maxrss`` is the peak of that measurement alone and a hang is ended by
the parent's timeout. Clusters are always closed by context managers.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
import resource
import statistics
import threading
import time
import warnings
from typing import Any, Iterator

import numpy as np

from benchmarks import workloads

MB = 2**20


# -- process and cluster helpers ---------------------------------------------------

def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _worker_probe(dask_worker: Any = None) -> dict[str, Any]:
    """Runs on each worker through ``client.run``: memory, spill and BLAS facts."""
    import psutil
    from threadpoolctl import threadpool_info

    ru = resource.getrusage(resource.RUSAGE_SELF)
    out: dict[str, Any] = {
        "peak_rss_mb": ru.ru_maxrss / 1024.0,
        "rss_now_mb": psutil.Process().memory_info().rss / MB,
        "minor_faults": ru.ru_minflt, "system_seconds": ru.ru_stime, "user_seconds": ru.ru_utime,
        "malloc_trim_threshold": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
        "blas_threads": sorted({i.get("num_threads") for i in threadpool_info() if i.get("user_api") == "blas"}),
    }
    data = getattr(dask_worker, "data", None)
    if data is not None:
        spilled = getattr(data, "spilled_total", None)
        metrics = dict(getattr(data, "cumulative_metrics", {}) or {})
        out["spill"] = {
            "keys_on_disk_now": len(getattr(data, "slow", {}) or {}),
            "bytes_on_disk_now": int(getattr(spilled, "disk", 0) or 0),
            "disk_write_count_total": int(metrics.get(("disk-write", "count"), 0)),
            "disk_write_bytes_total": int(metrics.get(("disk-write", "bytes"), 0)),
            "disk_read_count_total": int(metrics.get(("disk-read", "count"), 0)),
        }
    mm = getattr(dask_worker, "memory_manager", None)
    if mm is not None:
        out["memory_limit_mb"] = (getattr(mm, "memory_limit", None) or 0) / MB
    return out


def workers_info(client: Any) -> dict[str, Any]:
    return client.run(_worker_probe)


def worker_ids(client: Any) -> dict[str, str]:
    info = client.scheduler_info(n_workers=-1)["workers"]
    return {addr: w.get("id") for addr, w in info.items()}


@contextlib.contextmanager
def local_cluster(n_workers: int, memory_limit: Any = "auto", malloc_trim: bool = True) -> Iterator[Any]:
    """``LocalCluster(n_workers, threads_per_worker=1)`` and a non-default client.

    ``malloc_trim=False`` starts the workers without the
    ``MALLOC_TRIM_THRESHOLD_=65536`` that Dask's nanny sets by default
    (``distributed.nanny.pre-spawn-environ``). Setting that variable switches
    off glibc's dynamic mmap threshold, so every temporary above 128 KiB is a
    fresh mmap whose pages fault in (zero-filled) on first touch.
    """
    import dask
    import distributed  # noqa: F401  (registers the distributed.* config defaults read below)

    settings: dict[str, Any] = {}
    saved = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    if not malloc_trim:
        environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
        environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        settings["distributed.nanny.pre-spawn-environ"] = environ
        # An earlier nanny in this process leaked its pre-spawn variables into os.environ.
        os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    try:
        with _cluster(n_workers, memory_limit, settings) as client:
            yield client
    finally:
        if saved is not None:
            os.environ["MALLOC_TRIM_THRESHOLD_"] = saved


@contextlib.contextmanager
def _cluster(n_workers: int, memory_limit: Any, settings: dict[str, Any]) -> Iterator[Any]:
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set(settings), \
            LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                         memory_limit=memory_limit, dashboard_address=":0",
                         silence_logs=logging.ERROR) as cluster:
        with Client(cluster, set_as_default=False) as client:
            client.wait_for_workers(n_workers, timeout=120)
            yield client


class ChildPeakSampler:
    """Polls the summed RSS of this process's descendants (the Spark JVM and
    its Python workers are not covered by ``ru_maxrss``)."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            self.peak_mb = max(self.peak_mb, total / MB)
            self._stop.wait(self.interval)

    def __enter__(self) -> "ChildPeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def final_mean_log_likelihood(X: np.ndarray, weights: Any, means: Any, covariances: Any,
                              covariance_type: str = "full") -> float:
    """Mean log-likelihood of ``X`` under the given parameters (the same code for every peer)."""
    from threadpoolctl import threadpool_limits

    from dem.data.record import Partition
    from dem.families.gaussian_mixture import GaussianMixtureFamily

    family = GaussianMixtureFamily(len(weights), covariance_type)
    params = family.params_from(np.asarray(weights), np.asarray(means), covariances=np.asarray(covariances))
    with threadpool_limits(limits=1, user_api="blas"):
        stats = family.e_step(params, Partition(np.asarray(X, dtype=np.float64)))
    return float(family.objective(stats, params))


def _steady(seconds: list[float], skip_first: bool = True) -> float | None:
    rest = seconds[1:] if skip_first and len(seconds) > 1 else seconds
    return statistics.median(rest) if rest else None


# -- BLAS reference rates ------------------------------------------------------------

def blas(spec: dict[str, Any]) -> dict[str, Any]:
    """dgemm/sgemm rates of 2000x2000 matmul under threadpoolctl limits of 1 and 2 threads."""
    from threadpoolctl import threadpool_info, threadpool_limits

    n, reps = int(spec.get("n", 2000)), int(spec.get("reps", 5))
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"n": n, "reps": reps, "threadpool_info": threadpool_info(),
                           "env": {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS", "OMP_", "MKL_"))}}
    for dtype in ("float64", "float32"):
        a = rng.standard_normal((n, n)).astype(dtype)
        b = rng.standard_normal((n, n)).astype(dtype)
        c = np.empty((n, n), dtype=dtype)
        for threads in spec.get("threads", [1, 2]):
            with threadpool_limits(limits=threads, user_api="blas"):
                np.matmul(a, b, out=c)  # warm-up
                times = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    np.matmul(a, b, out=c)
                    times.append(time.perf_counter() - t0)
            flops = 2.0 * n**3
            name = ("dgemm" if dtype == "float64" else "sgemm") + f"_{threads}t"
            out[name] = {"best_gflops": flops / min(times) / 1e9,
                         "median_gflops": flops / statistics.median(times) / 1e9}
    return out


# -- dem -----------------------------------------------------------------------------

def _dem_estimator(spec: dict[str, Any], init: dict[str, np.ndarray], client: Any) -> Any:
    import dem

    return dem.GaussianMixture(
        spec["k"], covariance_type=spec.get("covariance_type", "full"), tol=0.0,
        max_iter=spec["iters"], weights_init=init["weights"], means_init=init["means"],
        precisions_init=init["precisions"], client=client,
        partition_rows=spec.get("partition_rows"), cache=spec.get("cache", "auto"),
    )


def dem_fit(spec: dict[str, Any]) -> dict[str, Any]:
    """One dem fit: ``spec['client']`` is ``"cluster"`` or ``"none"``; ``spec['source']``
    is ``"numpy"`` (the matrix loaded in the driver) or ``"zarr"`` (the path)."""
    init = workloads.load_initial_parameters(spec["init"])
    X = workloads.load_matrix(spec["path"]) if spec["source"] == "numpy" else spec["path"]
    result: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        client = None
        if spec["client"] == "cluster":
            client = stack.enter_context(local_cluster(spec["workers"], spec.get("memory_limit", "auto"),
                                                       malloc_trim=spec.get("malloc_trim", True)))
            info0 = workers_info(client)
            result["worker_blas_threads"] = sorted({t for w in info0.values() for t in w["blas_threads"]})
            result["worker_malloc_trim_threshold"] = sorted({str(w.get("malloc_trim_threshold")) for w in info0.values()})
        est = _dem_estimator(spec, init, client)
        started: dict[str, Any] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            est.fit(X, callback=_on_start(started))
            result["fit_wall_seconds"] = time.perf_counter() - t0
        seconds = [h["seconds"] for h in est.history_]
        result.update(
            iterations=len(seconds), iter_seconds=seconds, first_iter_seconds=seconds[0],
            seconds_per_iter=_steady(seconds), last_mean_log_likelihood=float(est.lower_bound_),
            n_partitions=started.get("n_partitions"),
        )
        result["peak_rss_driver_mb"] = peak_rss_mb()
        if client is not None:
            info = workers_info(client)
            result["peak_rss_workers_mb"] = {a: round(w["peak_rss_mb"], 1) for a, w in info.items()}
            # Page faults and kernel time of the workers during the fit (mostly the E-steps).
            result["worker_minor_faults_per_iter"] = sum(
                info[a]["minor_faults"] - info0.get(a, {}).get("minor_faults", 0) for a in info) / len(seconds)
            result["worker_system_seconds_per_iter"] = sum(
                info[a]["system_seconds"] - info0.get(a, {}).get("system_seconds", 0) for a in info) / len(seconds)
            result["worker_user_seconds_per_iter"] = sum(
                info[a]["user_seconds"] - info0.get(a, {}).get("user_seconds", 0) for a in info) / len(seconds)
    Xm = X if isinstance(X, np.ndarray) else workloads.load_matrix(spec["path"])
    result["final_mean_log_likelihood"] = final_mean_log_likelihood(
        Xm, est.weights_, est.means_, est.covariances_, spec.get("covariance_type", "full"))
    return result


def _on_start(store: dict[str, Any]) -> Any:
    """A fit callback that keeps the ``"start"`` event's info (n_partitions, ...)."""
    def callback(event: str, info: dict[str, Any]) -> None:
        if event == "start":
            store.update(info)
    return callback


def paired(spec: dict[str, Any]) -> dict[str, Any]:
    """dem variants fitted in alternation, ``rounds`` times, each on a fresh cluster.

    On a shared machine the load changes over minutes; alternating the
    variants and taking the median of per-round ratios to the first variant
    cancels most of that drift, which separate rows run minutes apart do not.
    """
    rounds, variants = int(spec["rounds"]), spec["variants"]
    per: dict[str, list[float]] = {v["label"]: [] for v in variants}
    faults: dict[str, list[float]] = {v["label"]: [] for v in variants}
    for _ in range(rounds):
        for v in variants:
            vspec = {**spec, **v}
            init = workloads.load_initial_parameters(vspec["init"])
            with contextlib.ExitStack() as stack:
                client = None
                if vspec["client"] == "cluster":
                    client = stack.enter_context(local_cluster(vspec["workers"], malloc_trim=vspec.get("malloc_trim", True)))
                    info0 = workers_info(client)
                X = workloads.load_matrix(vspec["path"]) if vspec["source"] == "numpy" else vspec["path"]
                est = _dem_estimator(vspec, init, client)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    est.fit(X)
                seconds = [h["seconds"] for h in est.history_]
                per[v["label"]].append(_steady(seconds))
                if client is not None:
                    info = workers_info(client)
                    faults[v["label"]].append(sum(info[a]["minor_faults"] - info0[a]["minor_faults"]
                                                  for a in info) / len(seconds))
    ref = variants[0]["label"]
    ratios = {label: statistics.median(s / r for s, r in zip(vals, per[ref])) for label, vals in per.items()}
    return {
        "rounds": rounds, "reference": ref, "seconds_per_iter_by_round": per,
        "seconds_per_iter": {label: statistics.median(vals) for label, vals in per.items()},
        "ratio_to_reference": ratios,
        "worker_minor_faults_per_iter": {label: (statistics.median(v) if v else None) for label, v in faults.items()},
    }


# -- scikit-learn --------------------------------------------------------------------

_LAPSE = re.compile(r"Iteration\s+(\d+)\s+time lapse\s+([0-9.eE+-]+)s")


def sklearn_fit(spec: dict[str, Any]) -> dict[str, Any]:
    """scikit-learn's GaussianMixture from the same initial parameters, ``tol=0``.

    Per-iteration times (E-step + M-step + lower bound) are read from
    scikit-learn's own ``verbose=2`` lines; the fit also runs one extra
    E-step after the last iteration, which ``fit_wall_seconds`` includes and
    ``seconds_per_iter`` does not.
    """
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    init = workloads.load_initial_parameters(spec["init"])
    X = workloads.load_matrix(spec["path"])
    threads = int(spec["threads"])
    est = GaussianMixture(spec["k"], covariance_type=spec.get("covariance_type", "full"), tol=0.0,
                          max_iter=spec["iters"], weights_init=init["weights"], means_init=init["means"],
                          precisions_init=init["precisions"], verbose=2, verbose_interval=1)
    buf = io.StringIO()
    with threadpool_limits(limits=threads, user_api="blas"), warnings.catch_warnings(), \
            contextlib.redirect_stdout(buf):
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        est.fit(X)
        wall = time.perf_counter() - t0
    seconds = [float(s) for _, s in _LAPSE.findall(buf.getvalue())]
    return {
        "blas_threads": threads, "fit_wall_seconds": wall, "iterations": int(est.n_iter_),
        "iter_seconds": seconds, "first_iter_seconds": seconds[0] if seconds else None,
        "seconds_per_iter": _steady(seconds), "wall_per_iter": wall / max(1, est.n_iter_),
        "extra_seconds_outside_iterations": wall - sum(seconds),
        "last_mean_log_likelihood": float(est.lower_bound_),
        "peak_rss_driver_mb": peak_rss_mb(),
        "final_mean_log_likelihood": final_mean_log_likelihood(
            X, est.weights_, est.means_, est.covariances_, spec.get("covariance_type", "full")),
    }


# -- Spark ---------------------------------------------------------------------------

def spark_fit(spec: dict[str, Any]) -> dict[str, Any]:
    """Spark MLlib GMMs on ``local[cores]``: per-iteration time by differencing.

    ``pyspark.mllib.clustering.GaussianMixture.train`` (RDD API) accepts an
    ``initialModel``, so it starts from the same parameters as dem;
    ``pyspark.ml.clustering.GaussianMixture`` (DataFrame API) has no initial
    model parameter and runs its own random initialisation with the same K
    and iteration count. Each is timed with ``maxIter=1`` (after a warm-up
    fit) and ``maxIter=iters``; ``seconds_per_iter = (T_iters - T_1) /
    (iters - 1)`` removes the per-fit costs (Python-to-JVM conversion of the
    rows, caching, initialisation), ``wall_per_iter = T_iters / iters``
    keeps them.
    """
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return {"status": "skipped", "reason": "pyspark is not installed (pip install pyspark; needs Java 17+)"}
    from types import SimpleNamespace

    from pyspark.sql import SparkSession

    X = workloads.load_matrix(spec["path"], "float64")
    init = workloads.load_initial_parameters(spec["init"])
    k, iters, cores = spec["k"], spec["iters"], spec["cores"]
    n, d = X.shape
    n_slices = int(spec.get("slices") or max(cores, math.ceil(n / 125_000)))
    apis = spec.get("apis", ["mllib", "ml"])
    result: dict[str, Any] = {"cores": cores, "slices": n_slices}
    with ChildPeakSampler() as sampler:
        spark = (SparkSession.builder.master(f"local[{cores}]").appName("dem-benchmark")
                 .config("spark.driver.memory", spec.get("driver_memory", "6g"))
                 .config("spark.ui.enabled", "false")
                 .config("spark.ui.showConsoleProgress", "false")
                 .config("spark.sql.shuffle.partitions", str(n_slices))
                 .getOrCreate())
        try:
            sc = spark.sparkContext
            sc.setLogLevel("ERROR")
            result["spark_version"] = spark.version
            bounds = np.linspace(0, n, n_slices + 1).astype(int)
            blocks = sc.parallelize([X[a:b] for a, b in zip(bounds[:-1], bounds[1:])], n_slices)
            rows = blocks.flatMap(lambda blk: list(blk))

            def timed(fn: Any) -> tuple[float, Any]:
                t0 = time.perf_counter()
                out = fn()
                return time.perf_counter() - t0, out

            if "mllib" in apis:
                from pyspark.mllib.clustering import GaussianMixture as MllibGMM
                from pyspark.mllib.linalg import DenseMatrix as MDense, DenseVector as MVec

                # train() only reads .k, .weights and .gaussians[i].mu/.sigma of initialModel.
                initial = SimpleNamespace(
                    k=k, weights=[float(w) for w in init["weights"]],
                    gaussians=[SimpleNamespace(mu=MVec(init["means"][i]),
                                               sigma=MDense(d, d, init["covariances"][i].ravel(order="F").tolist()))
                               for i in range(k)])

                def train(max_iter: int) -> Any:
                    return MllibGMM.train(rows, k, convergenceTol=0.0, maxIterations=max_iter,
                                          seed=spec.get("seed", 0), initialModel=initial)

                warm, _ = timed(lambda: train(1))
                t_n, model = timed(lambda: train(iters))
                t_1, _ = timed(lambda: train(1))
                gs = model.gaussians
                w_, m_ = np.asarray(model.weights), np.stack([g.mu.toArray() for g in gs])
                c_ = np.stack([g.sigma.toArray() for g in gs])
                result["mllib"] = {
                    "same_initial_parameters": True, "warmup_seconds": warm, "wall_1_iter": t_1,
                    "wall_n_iters": t_n, "iterations": iters,
                    "seconds_per_iter": (t_n - t_1) / (iters - 1) if iters > 1 else t_n,
                    "wall_per_iter": t_n / iters,
                    "final_mean_log_likelihood": final_mean_log_likelihood(X, w_, m_, c_),
                }
            if "ml" in apis:
                from pyspark.ml.clustering import GaussianMixture as MlGMM
                from pyspark.ml.linalg import DenseVector

                df = spark.createDataFrame(rows.map(lambda r: (DenseVector(r),)), ["features"]).cache()
                t_cache, _ = timed(df.count)

                def fit(max_iter: int) -> Any:
                    return MlGMM(k=k, maxIter=max_iter, tol=0.0, seed=spec.get("seed", 0)).fit(df)

                warm, _ = timed(lambda: fit(1))
                t_n, model = timed(lambda: fit(iters))
                t_1, _ = timed(lambda: fit(1))
                w_ = np.asarray(model.weights)
                m_ = np.stack([g.mean.toArray() for g in model.gaussians])
                c_ = np.stack([g.cov.toArray() for g in model.gaussians])
                result["ml"] = {
                    "same_initial_parameters": False,
                    "note": "pyspark.ml GaussianMixture takes no initial model: its own random init, same K and maxIter",
                    "cache_seconds": t_cache, "warmup_seconds": warm, "wall_1_iter": t_1,
                    "wall_n_iters": t_n, "iterations": iters,
                    "seconds_per_iter": (t_n - t_1) / (iters - 1) if iters > 1 else t_n,
                    "wall_per_iter": t_n / iters,
                    "final_mean_log_likelihood": final_mean_log_likelihood(X, w_, m_, c_),
                }
        finally:
            spark.stop()
    result["peak_rss_driver_mb"] = peak_rss_mb()
    result["peak_rss_jvm_and_python_workers_mb"] = sampler.peak_mb
    return result


# -- engine overhead -----------------------------------------------------------------

def overhead(spec: dict[str, Any]) -> dict[str, Any]:
    """Many tiny partitions: what an iteration costs beyond the arithmetic.

    Besides dem's own per-iteration seconds, the driver-side time spent
    building each iteration's graph (``Executor._tree``, the fused leaves and
    the reduction tree) and waiting for it (``Executor._compute``) is measured by wrapping
    those methods in this process.
    """
    import dem
    from dem.engine import executor as ex

    n_parts, rows, iters = spec["partitions"], spec["rows_per_partition"], spec["iters"]
    X = workloads.overhead_data(n_parts, rows, spec.get("seed", 0))
    init = workloads.initial_parameters_from_sample(X[:: max(1, len(X) // 10_000)], spec["k"], spec.get("seed", 0))
    timers = {"build": [], "compute": []}
    orig_leaves, orig_compute = ex.Executor._tree, ex.Executor._compute

    def leaves(self: Any, *a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return orig_leaves(self, *a, **kw)
        finally:
            timers["build"].append(time.perf_counter() - t0)

    def compute(self: Any, *a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return orig_compute(self, *a, **kw)
        finally:
            timers["compute"].append(time.perf_counter() - t0)

    # (_tree builds the fused leaves and calls tree_reduce itself: one timer covers both)
    ex.Executor._tree, ex.Executor._compute = leaves, compute
    result: dict[str, Any] = {"partitions": n_parts, "rows_per_partition": rows, "client": spec["client"]}
    profile = None
    try:
        with contextlib.ExitStack() as stack:
            client = None
            if spec["client"] == "cluster":
                client = stack.enter_context(local_cluster(spec["workers"]))
            est = dem.GaussianMixture(spec["k"], tol=0.0, max_iter=iters, weights_init=init["weights"],
                                      means_init=init["means"], precisions_init=init["precisions"],
                                      client=client, partition_rows=rows, cache=True)
            if spec.get("profile"):
                import cProfile
                profile = cProfile.Profile()
                profile.enable()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                est.fit(X)
                result["fit_wall_seconds"] = time.perf_counter() - t0
            if profile is not None:
                profile.disable()
            result["peak_rss_driver_mb"] = peak_rss_mb()
            if client is not None:
                result["peak_rss_workers_mb"] = {a: round(w["peak_rss_mb"], 1)
                                                 for a, w in workers_info(client).items()}
    finally:
        ex.Executor._tree, ex.Executor._compute = orig_leaves, orig_compute
    seconds = [h["seconds"] for h in est.history_]
    # The E-step passes are the last `iters` map-reduces (initialisation made none: all params given).
    build, comp = timers["build"][-len(seconds):], timers["compute"][-len(seconds):]
    med = _steady(seconds)
    first_half = statistics.median(seconds[1: 1 + max(1, (len(seconds) - 1) // 2)]) if len(seconds) > 2 else seconds[0]
    second_half = statistics.median(seconds[len(seconds) - max(1, (len(seconds) - 1) // 2):]) if len(seconds) > 2 else seconds[-1]
    slope = float(np.polyfit(np.arange(1, len(seconds)), seconds[1:], 1)[0]) if len(seconds) > 2 else 0.0
    result.update(
        iterations=len(seconds), iter_seconds=seconds, first_iter_seconds=seconds[0],
        last_iter_seconds=seconds[-1], seconds_per_iter=med,
        seconds_per_partition_per_iter=med / n_parts if med else None,
        early_median_seconds=first_half, late_median_seconds=second_half,
        slope_seconds_per_iter=slope,
        # "Grows" needs both a later median well above the earlier one and a fitted trend that
        # adds more than 30% over the run; with fewer than 6 iterations no verdict is given.
        grows=(None if len(seconds) < 6 else
               bool(second_half > 1.3 * first_half and slope * (len(seconds) - 2) > 0.3 * (med or 0))),
        driver_graph_build_seconds=build, driver_compute_wait_seconds=comp,
        graph_build_share=(statistics.median(build[1:] or build) / med) if med else None,
    )
    if profile is not None:
        import pstats
        buf = io.StringIO()
        pstats.Stats(profile, stream=buf).sort_stats("tottime").print_stats(25)
        result["driver_profile_top"] = buf.getvalue().splitlines()[:60]
    return result


# -- larger than memory --------------------------------------------------------------

def big(spec: dict[str, Any]) -> dict[str, Any]:
    """A streaming fit on data several times the workers' total memory limit."""
    from dem.engine.executor import Executor
    from dem.data.partitions import as_partitioned

    init = workloads.load_initial_parameters(spec["init"])
    result: dict[str, Any] = {"cache": spec.get("cache", "auto"), "completed": False}
    with local_cluster(spec["workers"], spec["memory_limit"]) as client:
        before = worker_ids(client)
        info0 = workers_info(client)
        limits = [w.get("memory_limit") or 0 for w in client.scheduler_info(n_workers=-1)["workers"].values()]
        est = _dem_estimator(spec, init, client)
        data = as_partitioned(spec["path"])
        result.update(data_bytes=int(data.nbytes), workers_total_memory_limit=int(sum(limits)),
                      data_over_memory_limit=data.nbytes / max(1, sum(limits)))
        try:  # private API: what cache="auto" decides on this cluster
            result["cache_chosen"] = bool(est._use_cache(data, Executor(client)))
            result["streaming"] = not result["cache_chosen"]
        except Exception as exc:
            result["cache_chosen"] = f"unknown ({type(exc).__name__}: {exc})"
        started: dict[str, Any] = {}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                est.fit(spec["path"], callback=_on_start(started))
                result["fit_wall_seconds"] = time.perf_counter() - t0
            result["completed"] = True
        except Exception as exc:  # reported, not raised: restarts/spill are still of interest
            result["error"] = f"{type(exc).__name__}: {exc}"
        if started.get("n_partitions"):
            result["n_partitions"] = started["n_partitions"]
            result["partition_bytes"] = int(data.nbytes / started["n_partitions"])
        after = worker_ids(client)
        info = workers_info(client)
        logs = client.get_worker_logs()
    restarted = [a for a in before if after.get(a) != before[a]]
    if not restarted and result["completed"]:
        n_it = max(1, len(est.history_))
        result["worker_minor_faults_per_iter"] = sum(info[a]["minor_faults"] - info0[a]["minor_faults"] for a in info) / n_it
        result["worker_system_seconds_per_iter"] = sum(info[a]["system_seconds"] - info0[a]["system_seconds"] for a in info) / n_it
    lines = [line for entries in logs.values() for _, line in entries]
    pattern = re.compile(r"restart|spill|paus|memory use is high|unmanaged memory|killed", re.I)
    result.update(
        worker_ids_before=before, worker_ids_after=after,
        worker_restarts=len(restarted) + abs(len(after) - len(before)),
        spill={a: w.get("spill") for a, w in info.items()},
        spilled_anything=any((w.get("spill") or {}).get("disk_write_count_total", 0) > 0
                             or (w.get("spill") or {}).get("keys_on_disk_now", 0) > 0 for w in info.values()),
        peak_rss_workers_mb={a: round(w["peak_rss_mb"], 1) for a, w in info.items()},
        worker_memory_limit_mb={a: w.get("memory_limit_mb") for a, w in info.items()},
        memory_log_lines=[line for line in lines if pattern.search(line)][:20],
        peak_rss_driver_mb=peak_rss_mb(),
    )
    if result["completed"]:
        seconds = [h["seconds"] for h in est.history_]
        steady = _steady(seconds)
        result.update(iterations=len(seconds), iter_seconds=seconds, seconds_per_iter=steady,
                      stream_gb_per_s=(data.nbytes / steady / 1e9) if steady else None,
                      rows_per_iter=est.history_[-1]["n_rows"])
    return result


KINDS = {"blas": blas, "dem": dem_fit, "paired": paired, "sklearn": sklearn_fit, "spark": spark_fit,
         "overhead": overhead, "big": big}
