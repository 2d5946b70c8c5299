"""SQUAREM against plain EM, scikit-learn and hmmlearn: data passes and wall time to convergence.

Run it under the shared lock, from the repository root::

    flock /work/.heavy.lock python -m benchmarks.squarem_bench [--rounds 3] [--tol 1e-7]
        [--overlap-n 20000] [--overlap-seeds 0,1,2] [--hmm-sequences 200] [--w1-n 1000000]
        [--skip-w1] [--out squarem.json]

Workloads (every peer starts from the same parameters, with the same ``tol``):

* ``overlap``: 3 heavily overlapping full-covariance Gaussians in 3-D (one
  dataset per ``--overlap-seeds`` seed); plain EM needs hundreds of passes.
  Target: SQUAREM's mean log-likelihood at least plain EM's minus 1e-7, in
  at most 1/5 of plain EM's passes.
* ``hmm``: a 3-state diagonal Gaussian HMM with close means. Target: at most
  1/2 of plain EM's passes. ``tol`` is hmmlearn's (on the total), scaled to
  the same per-step threshold as the mixtures'.
* ``separated``: 3 well-separated Gaussians. Target: no more passes than plain EM.
* ``w1``: the W1 dataset of :mod:`benchmarks.run` (D=16, K=16, full
  covariance, k-means++ start from :mod:`benchmarks.workloads`), ``tol=1e-3``
  (scikit-learn's default), at most ``--w1-max-iter`` passes. Target: no
  more passes than plain EM.

For each workload the peers run in alternation, ``--rounds`` times; passes
are deterministic, wall times are reported as the median and range over the
rounds, and so are the ratios (each round's ratio is taken within the round).
"Passes to target" is the first pass at which SQUAREM's recorded objective
reached plain EM's last recorded one minus 1e-7 (iterates and accepted
extrapolations; both are objectives at E-steps, before the last M-step).
"objective" is the mean log-likelihood of the returned parameters
(``score``), per row or per HMM step.
dem runs on local threads (``client=None``), data in memory.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
import warnings
from typing import Any, Callable

import numpy as np

MARGIN = 1e-7


# -- workloads -----------------------------------------------------------------------------


def overlap_data(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 15])
    means = np.array([[0.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.3, 1.0, 0.6]])
    labels = rng.choice(3, n, p=[0.4, 0.35, 0.25])
    return means[labels] + rng.normal(size=(n, 3)) * np.array([1.0, 0.8, 0.9])


def separated_data(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 16])
    means = np.array([[0.0, 0.0, 0.0], [8.0, 8.0, 0.0], [-8.0, 6.0, 5.0]])
    labels = rng.choice(3, n, p=[0.5, 0.3, 0.2])
    return means[labels] + rng.normal(size=(n, 3))


def mixture_start(X: np.ndarray, k: int, seed: int) -> dict[str, np.ndarray]:
    """k-means++ means of the data, uniform weights, the data's precision for every component."""
    from benchmarks.workloads import initial_parameters_from_sample

    p = initial_parameters_from_sample(X[:: max(1, len(X) // 10_000)], k, seed)
    return {"weights_init": p["weights"], "means_init": p["means"], "precisions_init": p["precisions"]}


def hmm_data(n_sequences: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    from hmmlearn.hmm import GaussianHMM

    truth = GaussianHMM(3, covariance_type="diag", init_params="")
    truth.startprob_ = np.array([0.5, 0.3, 0.2])
    truth.transmat_ = np.array([[0.90, 0.05, 0.05], [0.10, 0.80, 0.10], [0.05, 0.15, 0.80]])
    truth.means_ = np.array([[0.0, 0.0], [1.0, 0.3], [0.2, 1.1]])
    truth.covars_ = np.array([[1.0, 0.8], [0.7, 1.0], [0.9, 0.9]])
    lengths = np.full(n_sequences, length)
    X = np.concatenate([truth.sample(length, random_state=seed * 100_003 + i)[0] for i in range(n_sequences)])
    start = {"startprob_": np.full(3, 1 / 3), "transmat_": np.full((3, 3), 1 / 3),
             "means_": truth.means_ + np.array([[0.3, -0.2], [-0.2, 0.3], [0.2, 0.2]]),
             "covars_": np.ones((3, 2))}
    return X, lengths, start


# -- peers ---------------------------------------------------------------------------------


def _timed(fit: Callable[[], Any]) -> tuple[Any, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        est = fit()
        return est, time.perf_counter() - t0


def _passes_to(history: list[dict], target: float) -> float | None:
    for r in history:
        accepted = any(n["kind"] == "accepted" for n in r["notes"])
        if (r["event"] != "extrapolated" or accepted) and r["objective"] >= target:
            return r["n_passes"]
    return None


def mixture_peers(X: np.ndarray, k: int, start: dict, tol: float, max_iter: int) -> dict[str, Callable]:
    import dem
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    def ours(accelerate):
        def fit():
            est = dem.GaussianMixture(k, tol=tol, max_iter=max_iter, accelerate=accelerate, cache=True,
                                      **start).fit(X)
            return {"passes": est.n_passes_, "objective": float(est.score(X)), "converged": est.converged_,
                    "history": est.history_}
        return fit

    def sklearn():
        est = SkGaussianMixture(k, tol=tol, max_iter=max_iter, **start).fit(X)
        return {"passes": float(est.n_iter_), "objective": float(est.score(X)), "converged": est.converged_}

    return {"dem EM": ours(None), "dem SQUAREM": ours("squarem"), "sklearn": sklearn}


def hmm_peers(X: np.ndarray, lengths: np.ndarray, start: dict, tol_per_step: float, max_iter: int
              ) -> dict[str, Callable]:
    import dem
    from hmmlearn.hmm import GaussianHMM as HmmlearnGaussianHMM

    logging.getLogger("hmmlearn").setLevel(logging.ERROR)
    n = len(X)
    tol = tol_per_step * n  # hmmlearn's tol is on the total log-likelihood

    def with_start(model):
        for name, value in start.items():
            setattr(model, name, value.copy())
        return model

    def ours(accelerate):
        def fit():
            est = with_start(dem.GaussianHMM(3, "diag", n_iter=max_iter, tol=tol, init_params="",
                                             accelerate=accelerate, cache=True)).fit(X, lengths)
            return {"passes": est.n_passes_, "objective": float(est.score(X, lengths)) / n,
                    "converged": est.converged_, "history": est.history_}
        return fit

    def hmmlearn():
        est = with_start(HmmlearnGaussianHMM(3, "diag", n_iter=max_iter, tol=tol, init_params="")).fit(X, lengths)
        return {"passes": float(est.monitor_.iter), "objective": float(est.score(X, lengths)) / n,
                "converged": bool(est.monitor_.converged)}

    return {"dem EM": ours(None), "dem SQUAREM": ours("squarem"), "hmmlearn": hmmlearn}


# -- running and reporting -----------------------------------------------------------------


def run_workload(name: str, peers: dict[str, Callable], rounds: int, target_ratio: float | None) -> dict:
    """Every peer ``rounds`` times in alternation; passes, objectives, seconds and ratios."""
    seconds: dict[str, list[float]] = {p: [] for p in peers}
    results: dict[str, dict] = {}
    for _ in range(rounds):
        for peer, fit in peers.items():
            out, s = _timed(fit)
            seconds[peer].append(s)
            results[peer] = out  # deterministic: the same every round
    plain, sq = results["dem EM"], results["dem SQUAREM"]
    reference = [p for p in peers if not p.startswith("dem")][0]
    summary = {
        "workload": name,
        "peers": {p: {"passes": r["passes"], "objective": r["objective"], "converged": bool(r["converged"]),
                      "seconds": seconds[p]} for p, r in results.items()},
        "pass_ratio": sq["passes"] / plain["passes"],
        "objective_gain": sq["objective"] - plain["objective"],
        "same_optimum": sq["objective"] >= plain["objective"] - MARGIN,
        "passes_to_plain_objective": _passes_to(sq["history"], plain["history"][-1]["objective"] - MARGIN),
        "time_ratio_vs_plain": [a / b for a, b in zip(seconds["dem SQUAREM"], seconds["dem EM"])],
        f"time_ratio_vs_{reference}": [a / b for a, b in zip(seconds["dem SQUAREM"], seconds[reference])],
        "extrapolations": sum(r["event"] == "extrapolated" for r in sq["history"]),
        "rejected": sum(any(n["kind"] == "rejected" for n in r["notes"]) for r in sq["history"]),
        "target_pass_ratio": target_ratio,
    }
    if target_ratio is not None:
        summary["target_met"] = summary["same_optimum"] and summary["pass_ratio"] <= target_ratio
    _print(summary)
    return summary


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3g} [{min(values):.3g}–{max(values):.3g}]"


def _print(s: dict) -> None:
    print(f"\n== {s['workload']}")
    for peer, r in s["peers"].items():
        print(f"  {peer:<12} passes {r['passes']:>7.0f}  objective {r['objective']:.10f}  "
              f"converged {str(r['converged']):<5}  seconds {_spread(r['seconds'])}")
    reference = [k for k in s if k.startswith("time_ratio_vs_") and k != "time_ratio_vs_plain"][0]
    print(f"  SQUAREM/EM passes {s['pass_ratio']:.3f} (target {s['target_pass_ratio']}), "
          f"objective − EM's {s['objective_gain']:+.3g} (same optimum: {s['same_optimum']}), "
          f"passes to EM's last recorded objective − 1e-7: {s['passes_to_plain_objective']}")
    print(f"  time SQUAREM/EM {_spread(s['time_ratio_vs_plain'])}, SQUAREM/{reference[14:]} "
          f"{_spread(s[reference])}; {s['extrapolations']} extrapolations, {s['rejected']} rejected")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tol", type=float, default=1e-7, help="per-sample tol of the mixture and HMM workloads")
    p.add_argument("--max-iter", type=int, default=20_000)
    p.add_argument("--overlap-n", type=int, default=20_000)
    p.add_argument("--overlap-seeds", default="0,1,2")
    p.add_argument("--separated-n", type=int, default=20_000)
    p.add_argument("--hmm-sequences", type=int, default=100)
    p.add_argument("--hmm-length", type=int, default=500)
    p.add_argument("--w1-n", type=int, default=1_000_000)
    p.add_argument("--w1-tol", type=float, default=1e-3)
    p.add_argument("--w1-max-iter", type=int, default=500)
    p.add_argument("--skip-w1", action="store_true")
    p.add_argument("--only", default="", help="comma-separated workloads: overlap,hmm,separated,w1")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    only = set(filter(None, a.only.split(",")))
    results = []
    if not only or "overlap" in only:
        for seed in (int(s) for s in a.overlap_seeds.split(",")):
            X = overlap_data(a.overlap_n, seed)
            results.append(run_workload(f"overlap seed {seed} (N={a.overlap_n}, D=3, K=3, tol={a.tol:g})",
                                        mixture_peers(X, 3, mixture_start(X, 3, seed), a.tol, a.max_iter),
                                        a.rounds, 0.2))
    if not only or "hmm" in only:
        X, lengths, start = hmm_data(a.hmm_sequences, a.hmm_length, 0)
        results.append(run_workload(f"hmm (3 states, close means, {len(X)} steps, tol={a.tol:g}/step)",
                                    hmm_peers(X, lengths, start, a.tol, a.max_iter), a.rounds, 0.5))
    if not only or "separated" in only:
        X = separated_data(a.separated_n, 0)
        results.append(run_workload(f"separated (N={a.separated_n}, D=3, K=3, tol={a.tol:g})",
                                    mixture_peers(X, 3, mixture_start(X, 3, 0), a.tol, a.max_iter),
                                    a.rounds, 1.0))
    if (not only and not a.skip_w1) or "w1" in only:
        from benchmarks import workloads

        data_dir = workloads.default_data_dir()
        path = workloads.ensure_dataset(data_dir, a.w1_n, 16, 16, "float64", 0)["path"]
        init = workloads.load_initial_parameters(workloads.ensure_initial_parameters(data_dir, path, 16, 0))
        X = workloads.load_matrix(path)
        start = {"weights_init": init["weights"], "means_init": init["means"], "precisions_init": init["precisions"]}
        results.append(run_workload(f"W1 (N={a.w1_n}, D=16, K=16, tol={a.w1_tol:g})",
                                    mixture_peers(X, 16, start, a.w1_tol, a.w1_max_iter), a.rounds, 1.0))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
