"""Online EM, SEM and partial_fit against batch EM, in passes and in wall time (issue #14).

    python -m benchmarks.online_bench                      # the issue's workload, then W1
    python -m benchmarks.online_bench --n 200000 --no-w1   # a quick look

The issue's workload: N = 2,000,000 rows, D = 8, K = 8 heavily overlapping
components (``dem.data.generate`` with ``--separation`` 0.7: the closest
means 0.7 standard deviations apart), in Zarr with chunks of one default
mini-batch, on a ``LocalCluster`` of two single-threaded workers. Every
method starts from the same parameters (a k-means++ seeding of a 10,000-row
sample, uniform weights, the sample covariance; ``benchmarks.workloads``).

Rows (quality = mean log-likelihood per sample of the fitted parameters over
all the data; gap = batch EM's converged optimum minus it):

* ``batch EM @ P`` — batch EM's iterate after P passes: the objective of the
  (P+1)-th E-step of one fit, which is exactly that iterate's log-likelihood;
  its time is the first P passes' seconds;
* ``batch EM @ P streamed`` — the same with ``cache=False``: every pass
  read from the Zarr store, as on data larger than the workers' memory;
* ``batch EM converged`` — until |Δ| < ``--converge-tol`` (once);
* ``online EM @ 2`` — ``learning_method="online"``, ``max_iter=2``, defaults
  otherwise (and the settings of ``--online-variants``); on a cluster
  ``cache="auto"`` streams it from Zarr, a quarter pass of steps per task;
* ``SEM @ 30`` — ``learning_method="sem"``, ``max_iter=30``, best iterate;
* ``SEM+EM converged`` — ``"sem+em"`` until |Δ| < ``--converge-tol`` (once);
* ``partial_fit 20 batches`` — one pass of ``partial_fit`` over the data read
  as 20 numpy batches, in the driver (``client=None``), against ``batch EM @ 3``.

Timed fits run ``--repeats`` times (median and range); qualities are
deterministic. Initialisation (from the given parameters: one assignment
pass) is outside every time. W1 (N = 1,000,000, D = 16, K = 16, default
separation) repeats the comparisons in wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from typing import Any

import numpy as np


def _dataset(data_dir: str, n: int, d: int, k: int, separation: float | None, chunk_rows: int) -> str:
    import zarr

    from dem.data.generate import DEFAULT_SEPARATION, generate_dataset

    sep = DEFAULT_SEPARATION if separation is None else separation
    path = os.path.join(data_dir, f"online-n{n}-d{d}-k{k}-sep{sep:g}-c{chunk_rows}.zarr")
    if os.path.exists(path):
        try:
            if zarr.open_group(path, mode="r").attrs.get("complete"):
                return path
        except Exception:
            pass
    generate_dataset(path, n, d, k, chunk_rows=chunk_rows, dtype="float64", seed=0, overwrite=True,
                     separation=sep)
    return path


def _score(path: str, fitted: list[Any], client: Any) -> list[float]:
    """Mean log-likelihood per sample of each fitted estimator, in one pass."""
    from dem.data.partitions import as_partitioned
    from dem.engine.executor import Evaluation, Executor

    data = as_partitioned(path, partition_rows=250_000)
    executor = Executor(client)
    stats = executor.evaluate([Evaluation(e._fitted_family(), e._fitted_params()) for e in fitted],
                              executor.place(data, cache=False))
    return [float(s.log_likelihood / s.weight_sum) for s in stats]


def _fit(make: Any, path: str) -> tuple[Any, float]:
    """The fitted estimator and the wall seconds of its iterations (initialisation excluded)."""
    marks: dict[str, float] = {}

    def clock(event: str, info: dict) -> None:
        marks[event] = time.perf_counter()

    est = make()
    est.fit(path, callback=clock)
    return est, marks["end"] - marks["start"]


def _iteration_seconds(est: Any, passes: int) -> float:
    """Seconds of batch EM's first ``passes`` iterations (E-step pass, reduction, M-step)."""
    return float(sum(h["seconds"] for h in est.history_[:passes]))


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run_workload(name: str, path: str, k: int, client: Any, args: Any) -> dict[str, Any]:
    import zarr

    import dem
    from benchmarks.workloads import ensure_initial_parameters, load_initial_parameters

    init = load_initial_parameters(ensure_initial_parameters(os.path.dirname(path), path, k, 0))
    start = dict(weights_init=init["weights"], means_init=init["means"], precisions_init=init["precisions"])
    common = dict(covariance_type="full", random_state=0, client=client, **start)

    def gmm(**kw: Any) -> Any:
        return dem.GaussianMixture(k, **{**common, **kw})

    print(f"[{name}] {path}", flush=True)
    converged, t_conv = _fit(lambda: gmm(max_iter=args.converge_max, tol=args.converge_tol), path)
    print(f"[{name}] batch EM converged: {converged.n_iter_} passes, {t_conv:.1f} s", flush=True)
    chain, t_chain = _fit(lambda: gmm(learning_method="sem+em", max_iter=args.converge_max,
                                      tol=args.converge_tol), path)
    print(f"[{name}] SEM+EM converged: {chain.n_iter_} passes, {t_chain:.1f} s", flush=True)

    variants = [("online EM @ 2 (defaults)", {})] + [
        (f"online EM @ 2 (decay {d:g}, offset {o:g})", {"learning_decay": d, "learning_offset": o})
        for d, o in args.online_variants]
    X_rows = zarr.open_group(path, mode="r")["X"]
    n = X_rows.shape[0]
    cuts = np.linspace(0, n, 21).astype(int)

    times: dict[str, list[float]] = {}
    fitted: dict[str, Any] = {}
    for rep in range(args.repeats):
        batch, _ = _fit(lambda: gmm(max_iter=21, tol=0.0), path)
        for p in (2, 3, 20):
            times.setdefault(f"batch EM @ {p}", []).append(_iteration_seconds(batch, p))
        fitted["batch"] = batch
        streamed, _ = _fit(lambda: gmm(max_iter=21, tol=0.0, cache=False), path)
        for p in (2, 20):
            times.setdefault(f"batch EM @ {p} streamed", []).append(_iteration_seconds(streamed, p))
        for label, kw in variants:
            est, seconds = _fit(lambda: gmm(learning_method="online", max_iter=2, tol=0.0, **kw), path)
            times.setdefault(label, []).append(seconds)
            fitted[label] = est
        sem, seconds = _fit(lambda: gmm(learning_method="sem", max_iter=30), path)
        times.setdefault("SEM @ 30", []).append(seconds)
        fitted["SEM @ 30"] = sem
        stream = dem.GaussianMixture(k, covariance_type="full", random_state=0, **start)
        seconds = 0.0
        for a, b in zip(cuts[:-1], cuts[1:]):
            batch_X = X_rows[int(a):int(b)]
            t0 = time.perf_counter()
            stream.partial_fit(batch_X)
            seconds += time.perf_counter() - t0
        times.setdefault("partial_fit 20 batches", []).append(seconds)
        fitted["partial_fit 20 batches"] = stream
        print(f"[{name}] repeat {rep + 1}/{args.repeats}: " + ", ".join(
            f"{key} {vals[-1]:.1f}s" for key, vals in times.items()), flush=True)

    optimum = converged.lower_bound_
    scored = [fitted[label] for label, _ in variants] + [fitted["partial_fit 20 batches"]]
    scores = dict(zip([label for label, _ in variants] + ["partial_fit 20 batches"],
                      _score(path, scored, client)))
    ll = {f"batch EM @ {p}": fitted["batch"].history_[p]["objective"] for p in (2, 3, 20)}
    ll.update({f"batch EM @ {p} streamed": ll[f"batch EM @ {p}"] for p in (2, 20)})  # the same bits
    ll.update(scores)
    ll["SEM @ 30"] = fitted["SEM @ 30"].lower_bound_
    rows = []
    for label in [f"batch EM @ {p}" for p in (2, 3, 20)] + [f"batch EM @ {p} streamed" for p in (2, 20)] + \
            [v for v, _ in variants] + ["SEM @ 30", "partial_fit 20 batches"]:
        passes = {"SEM @ 30": 30.0, "partial_fit 20 batches": 1.0}.get(label)
        if passes is None:
            passes = float(label.split("@ ")[1].split()[0])
        rows.append({"method": label, "passes": passes, "seconds": _spread(times[label]),
                     "mean_log_likelihood": ll[label], "gap_to_optimum": optimum - ll[label]})
    rows.append({"method": "batch EM converged", "passes": float(converged.n_iter_),
                 "seconds": _spread([t_conv]), "mean_log_likelihood": optimum, "gap_to_optimum": 0.0})
    rows.append({"method": "SEM+EM converged", "passes": float(chain.n_iter_), "seconds": _spread([t_chain]),
                 "mean_log_likelihood": chain.lower_bound_, "gap_to_optimum": optimum - chain.lower_bound_})
    b20 = next(r for r in rows if r["method"] == "batch EM @ 20")
    b20s = next(r for r in rows if r["method"] == "batch EM @ 20 streamed")
    online = next(r for r in rows if r["method"].startswith("online") and "defaults" in r["method"])
    b3 = next(r for r in rows if r["method"] == "batch EM @ 3")
    checks = {
        "online@2 at least as good as batch@20": all(
            r["mean_log_likelihood"] >= b20["mean_log_likelihood"] for r in rows if r["method"].startswith("online")
            and "defaults" in r["method"]),
        "SEM@30 within 2e-2 of the optimum": next(r for r in rows if r["method"] == "SEM @ 30")["gap_to_optimum"]
        <= 2e-2,
        "online@2 (streamed) faster than batch@20 streamed": online["seconds"]["median"] < b20s["seconds"]["median"],
        "online@2 (streamed) faster than batch@20 cached": online["seconds"]["median"] < b20["seconds"]["median"],
        "partial_fit 1 pass at least as good as batch@3":
            next(r for r in rows if r["method"].startswith("partial_fit"))["mean_log_likelihood"]
            >= b3["mean_log_likelihood"],
    }
    return {"workload": name, "path": path, "n_samples": n, "optimum": optimum, "rows": rows, "checks": checks,
            "batch_converged_passes": converged.n_iter_, "online_batch_size_default": None}


def print_table(result: dict[str, Any]) -> None:
    print(f"\n### {result['workload']}: N={result['n_samples']:,}, batch EM optimum "
          f"{result['optimum']:.6f} nats/sample\n")
    print("| method | passes | wall s (median, range) | mean log-lik | gap to optimum |")
    print("|---|---:|---:|---:|---:|")
    for r in result["rows"]:
        s = r["seconds"]
        print(f"| {r['method']} | {r['passes']:g} | {s['median']:.1f} ({s['min']:.1f}–{s['max']:.1f}) | "
              f"{r['mean_log_likelihood']:.5f} | {r['gap_to_optimum']:.5f} |")
    for check, ok in result["checks"].items():
        print(f"- {check}: {'yes' if ok else 'NO'}")


def main() -> None:
    from benchmarks.workloads import default_data_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2_000_000)
    ap.add_argument("--d", type=int, default=8)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--separation", type=float, default=0.7)
    ap.add_argument("--chunk-rows", type=int, default=0, help="0: one default mini-batch per chunk")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--converge-tol", type=float, default=1e-7)
    ap.add_argument("--converge-max", type=int, default=2000)
    ap.add_argument("--online-variants", default="0.6:10,0.51:1",
                    help="extra (learning_decay:learning_offset) settings of online EM, comma-separated")
    ap.add_argument("--w1", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--w1-n", type=int, default=1_000_000)
    ap.add_argument("--w1-repeats", type=int, default=0, help="0: --repeats")
    ap.add_argument("--data-dir", default=default_data_dir())
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    args.online_variants = [tuple(float(v) for v in item.split(":")) for item in args.online_variants.split(",")
                            if item]

    from distributed import Client, LocalCluster

    from dem.engine.strategies.online import default_batch_size

    warnings.simplefilter("ignore")
    os.makedirs(args.data_dir, exist_ok=True)
    results = []
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        chunk = args.chunk_rows or default_batch_size(args.n)
        path = _dataset(args.data_dir, args.n, args.d, args.k, args.separation, chunk)
        results.append(run_workload(f"overlapping D={args.d} K={args.k} separation {args.separation:g}",
                                    path, args.k, client, args))
        print_table(results[-1])
        if args.w1:
            chunk = args.chunk_rows or default_batch_size(args.w1_n)
            path = _dataset(args.data_dir, args.w1_n, 16, 16, None, chunk)
            repeats = args.repeats
            args.repeats = args.w1_repeats or repeats
            results.append(run_workload("W1 D=16 K=16", path, 16, client, args))
            args.repeats = repeats
            print_table(results[-1])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
