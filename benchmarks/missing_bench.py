"""Cost of an EM iteration with missing entries against the complete-data fit.

Standalone::

    python benchmarks/missing_bench.py [--n 200000] [--d 16] [--k 8] [--missing 0.2]

Draws a K-component mixture, removes ``--missing`` of the entries completely
at random, and times ``--iters`` EM iterations of ``dem.GaussianMixture``
on the complete data (``missing="error"``) and on the incomplete data
(``missing="em"``), both from the same starting parameters, on dem's local
scheduler. Prints seconds per iteration (median) and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning

import dem


def make_data(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    """Rows from a K-component mixture with random correlated covariances."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=4.0, size=(k, d))
    labels = rng.choice(k, size=n)
    X = np.empty((n, d))
    for j in range(k):
        A = rng.normal(size=(d, d)) * 0.3 + np.eye(d)
        idx = labels == j
        X[idx] = means[j] + rng.normal(size=(idx.sum(), d)) @ A.T
    return X


def seconds_per_iteration(X: np.ndarray, missing: str, start: dict, iters: int,
                          covariance_type: str) -> float:
    """Median wall time of one EM iteration (E-step pass + reduction + M-step)."""
    gm = dem.GaussianMixture(len(start["weights_init"]), covariance_type=covariance_type,
                             tol=0.0, max_iter=iters, missing=missing, cache=True, **start)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(X)
    return statistics.median(h["seconds"] for h in gm.history_)


def run(n: int = 200_000, d: int = 16, k: int = 8, missing: float = 0.2, iters: int = 5,
        covariance_type: str = "full", seed: int = 0) -> dict:
    """Time both fits; returns and prints seconds per iteration and the ratio."""
    X = make_data(n, d, k, seed)
    Xm = X.copy()
    Xm[np.random.default_rng(seed + 1).random(X.shape) < missing] = np.nan
    # Common start: a short complete-data fit, so both runs do the same work per iteration.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = dem.GaussianMixture(k, covariance_type=covariance_type, max_iter=2, random_state=seed).fit(X)
    start = dict(weights_init=ref.weights_, means_init=ref.means_, precisions_init=ref.precisions_)
    t0 = time.perf_counter()
    complete = seconds_per_iteration(X, "error", start, iters, covariance_type)
    incomplete = seconds_per_iteration(Xm, "em", start, iters, covariance_type)
    frac_complete_rows = float((~np.isnan(Xm).any(axis=1)).mean())
    out = {"n": n, "d": d, "k": k, "missing": missing, "covariance_type": covariance_type,
           "complete_rows": frac_complete_rows, "complete_s": complete, "missing_s": incomplete,
           "ratio": incomplete / complete, "wall_s": time.perf_counter() - t0}
    print(f"N={n} D={d} K={k} {covariance_type}, {missing:.0%} entries missing "
          f"({frac_complete_rows:.1%} of rows complete)")
    print(f"  complete data : {complete:.3f} s/iteration")
    print(f"  missing='em'  : {incomplete:.3f} s/iteration")
    print(f"  ratio         : {incomplete / complete:.2f}x")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--missing", type=float, default=0.2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--covariance-type", default="full")
    a = p.parse_args()
    run(a.n, a.d, a.k, a.missing, a.iters, a.covariance_type)


if __name__ == "__main__":
    main()
