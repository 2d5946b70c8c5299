"""Variational EM: dem's BayesianGaussianMixture against scikit-learn's, and a larger-than-memory fit.

Run from the repository root, only under the shared lock::

    flock /work/.heavy.lock python -m benchmarks.bgmm_bench [--reps 3] [--iters 5] [--out bgmm.json]
    flock /work/.heavy.lock python -m benchmarks.bgmm_bench --n 200000 --big-gb 1 --big-iters 2   # quick

W1 (N = 1,000,000, D = 16, K = 16, full covariance, float64; the GMM
benchmark's dataset and initial parameters, :mod:`benchmarks.workloads`):
every repetition times, in this order,

* ``dem cluster zarr``: ``LocalCluster(2 workers × 1 thread)``, fit from the
  Zarr path, partitions cached on the workers (the reference);
* ``dem threads numpy``: Dask's threaded scheduler in the driver;
* ``sklearn BLAS 2T``: ``sklearn.mixture.BayesianGaussianMixture`` started
  from the same responsibilities (the Gaussian mixture posterior under the
  initial parameters, what dem starts from), under ``threadpool_limits(2)``.

dem's seconds per iteration are the median of its history's iterations
2..n (E-step pass, reduction, M-step and bound); scikit-learn's are
``(T(iters) − T(1)) / (iters − 1)`` of two fits, which removes its
initialisation and final E-step. Ratios are taken within a repetition
(the machine is shared and its load drifts) and reported as the median with
the min–max spread over the repetitions.

Larger than memory (``--big-gb``, default 3 × the workers' total memory
limit of 2 × ``--big-worker-mib``, 1 GiB): the same model streamed from Zarr (``cache="auto"``
must choose streaming), against ``dem.GaussianMixture`` streaming the same
data in the same repetition — the floor a variational iteration can reach,
since both read the data once per iteration through the same kernel.
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

from benchmarks import workloads
from benchmarks.measure import local_cluster, peak_rss_mb


class _FromResponsibilities:
    """scikit-learn's BayesianGaussianMixture started from given responsibilities (made lazily)."""

    @staticmethod
    def make(resp0: np.ndarray, **kw: Any) -> Any:
        from sklearn.mixture import BayesianGaussianMixture

        class FromResp(BayesianGaussianMixture):
            def _initialize_parameters(self, X, random_state, xp=None):  # noqa: ANN001
                self._initialize(X, resp0)

        return FromResp(**kw)


def _steady(seconds: list[float]) -> float:
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def _gmm_posterior(X: np.ndarray, init: dict[str, np.ndarray]) -> np.ndarray:
    from sklearn.mixture import GaussianMixture

    g = GaussianMixture(len(init["weights"]), covariance_type="full")
    g.weights_, g.means_ = init["weights"], init["means"]
    g.precisions_cholesky_ = np.linalg.cholesky(init["precisions"])
    return g.predict_proba(X)


def _dem(X: Any, init: dict[str, np.ndarray], iters: int, client: Any, cache: Any = True,
         family: str = "bgmm") -> dict[str, Any]:
    import dem

    cls = dem.BayesianGaussianMixture if family == "bgmm" else dem.GaussianMixture
    est = cls(len(init["weights"]), covariance_type="full", tol=0.0, max_iter=iters,
              weights_init=init["weights"], means_init=init["means"], precisions_init=init["precisions"],
              client=client, cache=cache)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        est.fit(X)
        wall = time.perf_counter() - t0
    seconds = [h["seconds"] for h in est.history_]
    return {"s_per_iter": _steady(seconds), "iter_seconds": seconds, "fit_wall_s": wall,
            "lower_bound": float(est.lower_bound_), "n_init_passes": est.n_init_passes_}


def _sklearn(X: np.ndarray, resp0: np.ndarray, iters: int, threads: int) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    def fit(n: int) -> tuple[float, Any]:
        est = _FromResponsibilities.make(resp0, n_components=resp0.shape[1], covariance_type="full", tol=0.0,
                                         max_iter=n)
        with warnings.catch_warnings(), threadpool_limits(limits=threads):
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            est.fit(X)
            return time.perf_counter() - t0, est

    t1, _ = fit(1)
    tn, est = fit(iters)
    return {"s_per_iter": (tn - t1) / (iters - 1), "fit_wall_s": tn, "lower_bound": float(est.lower_bound_)}


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def w1(args: argparse.Namespace, out: dict) -> None:
    ds = workloads.ensure_dataset(args.data_dir, args.n, 16, 16, "float64", 0)
    init = workloads.load_initial_parameters(workloads.ensure_initial_parameters(args.data_dir, ds["path"], 16, 0))
    X = workloads.load_matrix(ds["path"])
    resp0 = _gmm_posterior(X, init)
    print(f"W1: {args.n:,} x 16, K=16 full, {args.iters} iterations, {args.reps} repetitions")
    reps = []
    for r in range(args.reps):
        row: dict[str, Any] = {}
        with local_cluster(2) as client:
            row["dem cluster zarr"] = _dem(ds["path"], init, args.iters, client)
        row["dem threads numpy"] = _dem(X, init, args.iters, None)
        row["sklearn BLAS 2T"] = _sklearn(X, resp0, args.iters, 2)
        reps.append(row)
        out["w1"] = {"reps": reps}
        _save(args, out)
        print(f"  rep {r + 1}: " + ", ".join(f"{k} {v['s_per_iter']:.2f} s/it" for k, v in row.items()), flush=True)
    ref = "dem cluster zarr"
    ratios = {f"W1: {name} / {ref}": _spread([rep[name]["s_per_iter"] / rep[ref]["s_per_iter"] for rep in reps])
              for name in reps[0] if name != ref}
    agreement = max(abs(rep[ref]["lower_bound"] - rep["sklearn BLAS 2T"]["lower_bound"])
                    / abs(rep["sklearn BLAS 2T"]["lower_bound"]) for rep in reps)
    out["w1"] = {"reps": reps, "ratios": ratios, "lower_bound_relative_difference_vs_sklearn": agreement}
    out["ratios"].update(ratios)


def _save(args: argparse.Namespace, out: dict) -> None:
    """Write what is measured so far (a long run stopped by its timeout keeps its repetitions)."""
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1, default=float)


def big(args: argparse.Namespace, out: dict) -> None:
    limit = int(args.big_worker_mib * 2**20)
    target = args.big_gb * 1e9 if args.big_gb else 3.0 * 2 * limit
    chunk = workloads.DEFAULT_CHUNK_ROWS
    n = max(chunk, int(-(-target // (16 * 8) // chunk) * chunk))
    ds = workloads.ensure_dataset(args.data_dir, n, 16, 16, "float64", 0, chunk)
    init = workloads.load_initial_parameters(workloads.ensure_initial_parameters(args.data_dir, ds["path"], 16, 0))
    print(f"larger than memory: {n:,} x 16 float64 = {n * 128 / 1e9:.2f} GB; 2 workers x {args.big_worker_mib} MiB")
    reps = []
    for r in range(args.reps):
        row = {}
        with local_cluster(2, limit) as client:
            row["bgmm streaming"] = _dem(ds["path"], init, args.big_iters, client, cache="auto")
            row["gmm streaming"] = _dem(ds["path"], init, args.big_iters, client, cache="auto", family="gmm")
        for v in row.values():
            v["gb_per_s"] = n * 128 / 1e9 / v["s_per_iter"]
        reps.append(row)
        out["big"] = {"n": n, "bytes": n * 128, "worker_memory_limit": limit, "reps": reps}
        _save(args, out)
        print(f"  rep {r + 1}: " + ", ".join(f"{k} {v['s_per_iter']:.1f} s/it ({v['gb_per_s']:.2f} GB/s)"
                                             for k, v in row.items()), flush=True)
    ratio = _spread([rep["bgmm streaming"]["s_per_iter"] / rep["gmm streaming"]["s_per_iter"] for rep in reps])
    out["ratios"]["big: bgmm streaming / gmm streaming"] = ratio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--big-gb", type=float, default=None)
    p.add_argument("--big-iters", type=int, default=3)
    p.add_argument("--big-worker-mib", type=int, default=1024, help="memory_limit of each of the 2 workers")
    p.add_argument("--skip", default="", help="comma-separated: w1, big")
    p.add_argument("--data-dir", default=workloads.default_data_dir())
    p.add_argument("--out", default="bgmm-results.json")
    args = p.parse_args()
    out: dict[str, Any] = {"command": " ".join(os.sys.argv), "load_average": os.getloadavg(), "ratios": {}}
    skip = set(filter(None, args.skip.split(",")))
    if "w1" not in skip:
        w1(args, out)
    if "big" not in skip:
        big(args, out)
    out["load_average_end"] = os.getloadavg()
    out["peak_rss_driver_mb"] = peak_rss_mb()
    print("\nratio (median, min-max over repetitions):")
    for name, r in out["ratios"].items():
        print(f"  {name}: {r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})")
    _save(args, out)


if __name__ == "__main__":
    main()
