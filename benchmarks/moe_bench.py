"""Mixture of experts: dem's generalised EM out of core, and in memory against a plain numpy EM.

Standalone, from the repository root (run it under ``flock /work/.heavy.lock`` on a shared machine)::

    python -m benchmarks.moe_bench [--n 10000000] [--p 16] [--k 8] [--reps 3]
                                   [--converge-n 1000000] [--big-max-iter 10]
                                   [--data-dir /tmp/moe-bench] [--out results.json]

1. **Out of core.** Writes (once) Zarr groups of rows drawn from a known
   mixture of ``--k`` Gaussian experts on ``--p`` inputs
   (:func:`dem.families.moe.generate_dataset`), starts a 2-worker
   ``LocalCluster`` (one thread each) and fits ``dem.MixtureOfExperts`` from
   the Zarr path: to convergence on ``--converge-n`` rows with each gate
   step (Böhning's bound, safeguarded Newton) from each of ``--seeds``, and ``--big-max-iter``
   iterations of the default step on ``--n`` rows (0: to convergence too).
   Reported: seconds per iteration (median and range over the iterations),
   passes (``n_passes_`` plus ``n_init_passes_``), the workers' and the
   driver's peak memory.
2. **In memory, 1/20 of the data.** The first ``n/20`` rows in a numpy
   array and 100 000 held-out rows from the same model. From the same start
   (dem's initialisation): dem with either gate step (local threads), and a
   plain numpy EM written here, flexmix-style: exact weighted least squares
   for the experts and the gate fitted by Newton–Raphson (IRLS) to
   convergence inside every M-step, each Newton iteration one more pass over
   the data. Reported: passes and seconds until the held-out mean
   log-likelihood first comes within 1e-4 of the value every method ends at,
   over ``--reps`` repetitions (median, min–max).

The CPU and the BLAS (threadpoolctl) are printed with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
import warnings
from typing import Any

import numpy as np
from scipy.special import logsumexp

#: Held-out log-likelihood within this many nats per row of the common final value counts as reached.
REACHED = 1e-4


# -- environment ---------------------------------------------------------------------


def machine() -> dict[str, Any]:
    from benchmarks.machine import blas_libraries, cpu_model

    blas = blas_libraries(("internal_api", "version", "num_threads", "threading_layer"))
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "blas": blas, "load_average": os.getloadavg()}


def _peak_rss_mb(dask_worker: Any = None) -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# -- data ----------------------------------------------------------------------------


def dataset(data_dir: str, n: int, p: int, k: int, seed: int = 0) -> str:
    from dem.families.moe import generate_dataset

    path = os.path.join(data_dir, f"moe-n{n}-p{p}-k{k}-s{seed}.zarr")
    if not os.path.exists(path):
        t0 = time.perf_counter()
        generate_dataset(path, n, p, k, chunk_rows=100_000, seed=seed)
        print(f"wrote {path} in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def held_out(p: int, k: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from dem.families.moe_init import sample_rows, true_parameters

    X, y, _ = sample_rows(true_parameters(seed, p, k), np.random.default_rng([seed, 10**9]), n, "gaussian")
    return X, y[:, 0]


# -- 1. out of core ------------------------------------------------------------------


def out_of_core(path: str, k: int, gate_step: str, tol: float, max_iter: int, memory_limit: str, seed: int = 0
                ) -> dict:
    import dem
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit=memory_limit) as cluster, Client(cluster) as client:
        est = dem.MixtureOfExperts(k, gate_step=gate_step, tol=tol, max_iter=max_iter, random_state=seed,
                                   gate_reg=1.0, client=client)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(path)
        wall = time.perf_counter() - t0
        workers = client.run(_peak_rss_mb)
    seconds = [h["seconds"] for h in est.history_]
    return {"gate_step": gate_step, "random_state": seed, "n_iter": est.n_iter_, "converged": est.converged_,
            "em_passes": est.n_passes_, "init_passes": est.n_init_passes_,
            "seconds_per_iteration": {"median": statistics.median(seconds), "min": min(seconds),
                                      "max": max(seconds)},
            "wall_seconds": wall, "lower_bound": est.lower_bound_,
            "worker_peak_rss_mb": sorted(workers.values()), "driver_peak_rss_mb": _peak_rss_mb()}


# -- 2. in memory: the plain numpy EM --------------------------------------------------


def _softmax_rows(Z: np.ndarray) -> np.ndarray:
    Z = Z - Z.max(axis=1, keepdims=True)
    E = np.exp(Z)
    return E / E.sum(axis=1, keepdims=True)


def _log_likelihood(Xt: np.ndarray, y: np.ndarray, V: np.ndarray, B: np.ndarray, var: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per-row log p(y | x) and the posteriors (one pass)."""
    Z = Xt @ V.T
    log_gate = Z - logsumexp(Z, axis=1, keepdims=True)
    resid = y[:, None] - Xt @ B.T
    L = log_gate - 0.5 * np.log(2 * np.pi * var) - 0.5 * resid**2 / var
    ll = logsumexp(L, axis=1)
    return ll, np.exp(L - ll[:, None])


def _gate_irls(Xt: np.ndarray, H: np.ndarray, V: np.ndarray, ridge: float, max_inner: int = 50
               ) -> tuple[np.ndarray, int]:
    """The gate's exact M-step: maximise Σ_i Σ_k h_ik log g_k(x_i) − ½λ‖V‖² by Newton–Raphson.

    Every Newton iteration (gradient and Hessian) and every step-halving
    trial reads the data once; returns the new gate and the passes spent.
    """
    n, q = Xt.shape
    K = V.shape[0]
    pen = np.ones(q)
    pen[-1] = 0.0
    passes = 0

    def q_value(W: np.ndarray) -> float:
        Z = Xt @ W.T
        return float((H * (Z - logsumexp(Z, axis=1, keepdims=True))).sum() - 0.5 * ridge * (W[:, :-1] ** 2).sum())

    current = None
    for _ in range(max_inner):
        G = _softmax_rows(Xt @ V.T)
        passes += 1
        grad = (Xt.T @ (H - G)[:, :K - 1]).T - ridge * V[:K - 1] * pen
        M = np.zeros(((K - 1) * q, (K - 1) * q))
        for a in range(K - 1):
            for b in range(a, K - 1):
                c = G[:, a] * ((a == b) - G[:, b])
                block = (Xt * c[:, None]).T @ Xt
                M[a * q:(a + 1) * q, b * q:(b + 1) * q] = block
                M[b * q:(b + 1) * q, a * q:(a + 1) * q] = block.T
        M += ridge * np.kron(np.eye(K - 1), np.diag(pen))
        step = np.linalg.solve(M, grad.ravel()).reshape(K - 1, q)
        if current is None:
            current = q_value(V)
            passes += 1
        t = 1.0
        while True:
            trial = V.copy()
            trial[:K - 1] += t * step
            value = q_value(trial)
            passes += 1
            if value >= current or t < 1e-4:
                break
            t *= 0.5
        gain = value - current
        V, current = trial, value
        if gain <= 1e-10 * max(1.0, abs(current)):
            break
    return V, passes


def numpy_em(X: np.ndarray, y: np.ndarray, start: Any, tol: float, max_iter: int, ridge: float,
             reg_covar: float) -> list[dict]:
    """Plain EM with an exact (IRLS) gate M-step; a trajectory of (seconds, passes, params)."""
    n = X.shape[0]
    Xt = np.hstack([X, np.ones((n, 1))])
    V = np.hstack([start.gate_coef_, start.gate_intercept_[:, None]])
    B = np.hstack([start.expert_coef_[:, 0, :], start.expert_intercept_])
    var = start.expert_covariances_[:, 0, 0].copy()
    K = V.shape[0]
    t0 = time.perf_counter()
    passes, previous, out = 0, -np.inf, []
    for _ in range(max_iter):
        ll, H = _log_likelihood(Xt, y, V, B, var)
        passes += 1
        objective = (ll.sum() - 0.5 * ridge * (V[:, :-1] ** 2).sum()) / n
        if abs(objective - previous) < tol:
            break
        previous = objective
        for k in range(K):
            A = (Xt * H[:, k:k + 1]).T
            B[k] = np.linalg.solve(A @ Xt, A @ y)
            var[k] = H[:, k] @ (y - Xt @ B[k]) ** 2 / H[:, k].sum() + reg_covar
        V, inner = _gate_irls(Xt, H, V, ridge)
        passes += inner
        out.append({"seconds": time.perf_counter() - t0, "passes": passes, "params": (V.copy(), B.copy(),
                                                                                     var.copy())})
    return out


def numpy_held_out(Xh: np.ndarray, yh: np.ndarray, params: tuple) -> float:
    V, B, var = params
    ll, _ = _log_likelihood(np.hstack([Xh, np.ones((len(Xh), 1))]), yh, V, B, var)
    return float(ll.mean())


# -- 2. in memory: dem, recording every iterate -----------------------------------------


def dem_trajectory(X: np.ndarray, y: np.ndarray, k: int, gate_step: str, tol: float, max_iter: int
                   ) -> tuple[Any, list[dict]]:
    import dem
    from dem.families import moe as moe_module

    record: list[dict] = []
    original = moe_module.MixtureOfExpertsFamily.m_step
    t0 = time.perf_counter()

    def recording(self: Any, stats: Any, params: Any) -> Any:
        new = original(self, stats, params)
        record.append({"seconds": time.perf_counter() - t0, "params": new})
        return new

    moe_module.MixtureOfExpertsFamily.m_step = recording
    try:
        est = dem.MixtureOfExperts(k, gate_step=gate_step, tol=tol, max_iter=max_iter, random_state=0)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(X, y)
    finally:
        moe_module.MixtureOfExpertsFamily.m_step = original
    # The first recorded M-step is the initialisation's; each later one follows one EM pass.
    init_passes = est.n_init_passes_
    traj = [{"seconds": r["seconds"], "passes": init_passes + i, "params": r["params"]}
            for i, r in enumerate(record)]
    return est, traj


def dem_held_out(est: Any, Xh: np.ndarray, yh: np.ndarray, params: Any) -> float:
    family = est._fitted_family()
    from dem.families import moe_kernel

    return float(moe_kernel.log_likelihood_rows(family.prepared(params), Xh, yh).mean())


def in_memory(path: str, n_small: int, k: int, tol: float, max_iter: int, Xh: np.ndarray, yh: np.ndarray,
              reps: int) -> dict:
    import zarr

    import dem

    group = zarr.open_group(path, mode="r")
    X, y = group["X"][:n_small], group["y"][:n_small]
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = dem.MixtureOfExperts(k, max_iter=0, random_state=0).fit(X, y)  # dem's initialisation
    init_seconds = time.perf_counter() - t0
    runs: dict[str, list[dict]] = {}
    for rep in range(reps):
        for name in ("dem-newton", "dem-bohning", "numpy-irls"):
            if name.startswith("dem"):
                est, traj = dem_trajectory(X, y, k, name.split("-")[1], tol, max_iter)
                curve = [(r["seconds"], r["passes"], dem_held_out(est, Xh, yh, r["params"])) for r in traj]
            else:
                traj = numpy_em(X, y, start, tol, max_iter, ridge=1.0, reg_covar=1e-6)
                # It starts where dem's initialisation ends: charge it those passes and seconds.
                curve = [(init_seconds + r["seconds"], r["passes"] + start.n_init_passes_,
                          numpy_held_out(Xh, yh, r["params"])) for r in traj]
            runs.setdefault(name, []).append({"curve": curve})
            print(f"  rep {rep} {name}: {len(curve)} iterations, final held-out {curve[-1][2]:.6f}, "
                  f"{curve[-1][0]:.1f} s", flush=True)
    target = min(r["curve"][-1][2] for rs in runs.values() for r in rs) - REACHED
    out = {"rows": n_small, "held_out_rows": len(Xh), "target_held_out": target, "methods": {}}
    for name, rs in runs.items():
        reached = []
        for r in rs:
            first = next(c for c in r["curve"] if c[2] >= target)
            reached.append({"seconds": first[0], "passes": first[1], "final_held_out": r["curve"][-1][2],
                            "iterations": len(r["curve"])})
        secs = [r["seconds"] for r in reached]
        out["methods"][name] = {"passes_to_target": reached[0]["passes"],
                                "seconds_to_target": {"median": statistics.median(secs), "min": min(secs),
                                                      "max": max(secs)},
                                "final_held_out": reached[0]["final_held_out"],
                                "iterations": reached[0]["iterations"]}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--p", type=int, default=16)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--max-iter", type=int, default=500)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--fraction", type=int, default=20, help="the in-memory comparison uses n / fraction rows")
    ap.add_argument("--gate-steps", default="newton,bohning")
    ap.add_argument("--seeds", default="0,1,2", help="random_state of the fits run to convergence")
    ap.add_argument("--converge-n", type=int, default=1_000_000,
                    help="rows of the out-of-core fits run to convergence with each gate step")
    ap.add_argument("--big-max-iter", type=int, default=10,
                    help="iterations of the out-of-core fit on --n rows (0: to convergence)")
    ap.add_argument("--memory-limit", default="6GiB", help="per worker")
    ap.add_argument("--skip", default="", help="comma-separated: out-of-core, in-memory")
    ap.add_argument("--data-dir", default="/tmp/moe-bench")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    os.makedirs(args.data_dir, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    result: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    print(json.dumps(result["machine"]), flush=True)
    path = dataset(args.data_dir, args.n, args.p, args.k)
    if "out-of-core" not in skip:
        result["out_of_core"] = []
        small = dataset(args.data_dir, args.converge_n, args.p, args.k)
        for seed in map(int, args.seeds.split(",")):
            for step in args.gate_steps.split(","):
                r = {"rows": args.converge_n, **out_of_core(small, args.k, step, args.tol, args.max_iter,
                                                             args.memory_limit, seed)}
                print(json.dumps(r), flush=True)
                result["out_of_core"].append(r)
        if args.n != args.converge_n:
            r = {"rows": args.n, **out_of_core(path, args.k, args.gate_steps.split(",")[0], args.tol,
                                               args.big_max_iter or args.max_iter, args.memory_limit)}
            print(json.dumps(r), flush=True)
            result["out_of_core"].append(r)
    if "in-memory" not in skip:
        Xh, yh = held_out(args.p, args.k, 100_000)
        result["in_memory"] = in_memory(path, args.n // args.fraction, args.k, args.tol, args.max_iter, Xh, yh,
                                        args.reps)
        print(json.dumps(result["in_memory"], indent=1), flush=True)
    result["machine"]["load_average_end"] = os.getloadavg()
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)
    return result


if __name__ == "__main__":
    main()
