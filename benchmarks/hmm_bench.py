"""Seconds per EM iteration of dem's HMMs against hmmlearn, from the same start.

Standalone::

    python benchmarks/hmm_bench.py [--sequences 1000] [--length 500] [--k 4] [--d 3]
                                   [--covariance-type diag] [--ragged] [--iters 3]

Draws sequences from a Gaussian HMM (equal lengths, or lengths spread over
±50 % with ``--ragged``), then times ``--iters`` EM iterations of
``dem.hmm.GaussianHMM`` (local scheduler, in-memory data) and of
``hmmlearn.hmm.GaussianHMM`` (compiled forward–backward, one sequence at a
time) from the same parameters. Prints the median seconds per iteration,
rows per second, the ratio, and the largest relative difference between the
two log-likelihood histories.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import numpy as np

from dem import GaussianHMM
from dem.data.generate_sequences import generate_sequences, true_hmm_parameters


def make_data(n_sequences: int, length: int, k: int, d: int, ragged: bool, seed: int = 0):
    """Observations, lengths and the generating parameters."""
    truth = true_hmm_parameters(seed, "gaussian", k, d)
    rng = np.random.default_rng(seed)
    lengths = np.full(n_sequences, length)
    if ragged:
        lengths = rng.integers(max(1, length // 2), length + length // 2 + 1, n_sequences)
    parts = []
    for i, n in enumerate(lengths):
        X, _ = generate_sequences(np.random.default_rng([seed, i]), truth, "gaussian", 1, int(n))
        parts.append(X)
    return np.concatenate(parts), lengths, truth


def start_from(truth: dict, ct: str, k: int, d: int, seed: int = 1) -> dict:
    """A perturbed copy of the truth, in hmmlearn's stored covariance shapes."""
    rng = np.random.default_rng(seed)
    full = truth["covars"]
    covars = {"full": full, "tied": full.mean(axis=0), "diag": np.stack([np.diag(c) for c in full]),
              "spherical": np.array([np.trace(c) / d for c in full])}[ct]
    return dict(startprob_=np.full(k, 1.0 / k), transmat_=np.full((k, k), 1.0 / k),
                means_=truth["means"] + rng.normal(size=truth["means"].shape), covars_=covars)


def run(n_sequences: int = 1000, length: int = 500, k: int = 4, d: int = 3, covariance_type: str = "diag",
        ragged: bool = False, iters: int = 3, seed: int = 0) -> dict:
    """Time both libraries; returns and prints the summary."""
    from hmmlearn.hmm import GaussianHMM as HmmlearnGaussianHMM

    logging.getLogger("hmmlearn").setLevel(logging.ERROR)
    X, lengths, truth = make_data(n_sequences, length, k, d, ragged, seed)
    start = start_from(truth, covariance_type, k, d)

    ours = GaussianHMM(k, covariance_type=covariance_type, n_iter=iters, tol=0.0, init_params="", cache=True)
    for name, value in start.items():
        setattr(ours, name, value.copy())
    t0 = time.perf_counter()
    ours.fit(X, lengths)
    ours_total = time.perf_counter() - t0
    ours_iter = statistics.median(h["seconds"] for h in ours.history_)

    ref = HmmlearnGaussianHMM(k, covariance_type=covariance_type, n_iter=iters, tol=-np.inf, init_params="")
    for name, value in start.items():
        setattr(ref, name, value.copy())
    t0 = time.perf_counter()
    ref.fit(X, lengths)
    ref_iter = (time.perf_counter() - t0) / max(1, ref.monitor_.iter)

    a, b = np.array(ours.monitor_.history), np.array(ref.monitor_.history)
    out = {"rows": int(X.shape[0]), "sequences": int(n_sequences), "k": k, "d": d,
           "covariance_type": covariance_type, "ragged": ragged,
           "dem_s_per_iter": ours_iter, "dem_fit_s": ours_total, "hmmlearn_s_per_iter": ref_iter,
           "speedup": ref_iter / ours_iter, "dem_rows_per_s": X.shape[0] / ours_iter,
           "max_rel_diff_history": float(np.max(np.abs(a - b) / np.abs(b)))}
    for key, value in out.items():
        print(f"{key:>22}: {value:.4g}" if isinstance(value, float) else f"{key:>22}: {value}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sequences", type=int, default=1000)
    p.add_argument("--length", type=int, default=500)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--d", type=int, default=3)
    p.add_argument("--covariance-type", default="diag", choices=("spherical", "diag", "full", "tied"))
    p.add_argument("--ragged", action="store_true")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    run(a.sequences, a.length, a.k, a.d, a.covariance_type, a.ragged, a.iters, a.seed)


if __name__ == "__main__":
    main()
