"""Block buffers kept per thread between E-steps (:mod:`dem.families.block_buffers`).

The E-step's results must not depend on what the kept buffers held before:
every buffer is filled with NaN between calls here, so a value read before it
is written would show. References are plain float64 computations written in
the test (scipy's ``multivariate_normal`` for the densities).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from dem.data.record import Partition
from dem.families import block_buffers
from dem.families.gaussian_mixture import GaussianMixtureFamily


class _Set:
    def __init__(self, n: int) -> None:
        self.a = np.empty(n)
        self.view = self.a.reshape(1, n)  # a view: not counted again


def test_the_same_key_gives_the_same_buffers_in_a_thread_and_others_in_another():
    block_buffers.clear()
    first = block_buffers.reused(("t", 8), lambda: _Set(8))
    assert block_buffers.reused(("t", 8), lambda: _Set(8)) is first
    assert block_buffers.reused(("t", 9), lambda: _Set(9)) is not first
    other = []
    t = threading.Thread(target=lambda: other.append(block_buffers.reused(("t", 8), lambda: _Set(8))))
    t.start()
    t.join()
    assert other[0] is not first


def test_a_thread_keeps_the_most_recent_sets_within_its_limits(monkeypatch):
    block_buffers.clear()
    monkeypatch.setattr(block_buffers, "KEEP_COUNT", 2)
    monkeypatch.setattr(block_buffers, "KEEP_BYTES", 8 * 100)
    assert block_buffers.nbytes_of(_Set(10)) == 80
    a = block_buffers.reused("a", lambda: _Set(10))
    b = block_buffers.reused("b", lambda: _Set(10))
    assert block_buffers.reused("a", lambda: _Set(10)) is a  # a is now the most recent
    block_buffers.reused("c", lambda: _Set(10))  # a third set: b, the least recent, goes
    assert block_buffers.reused("a", lambda: _Set(10)) is a
    assert block_buffers.reused("b", lambda: _Set(10)) is not b
    big = block_buffers.reused("big", lambda: _Set(101))  # over KEEP_BYTES: never kept
    assert block_buffers.reused("big", lambda: _Set(101)) is not big


def _poison_kept_buffers() -> None:
    for obj, _ in block_buffers._local.kept.values():
        for held in [obj, *[v for v in vars(obj).values() if not isinstance(v, np.ndarray)]]:
            for v in vars(held).values() if hasattr(held, "__dict__") else ():
                if isinstance(v, np.ndarray) and v.dtype.kind == "f":
                    v.fill(np.nan)


def _direct(X, weights, means, cov):
    lp = np.stack([np.log(weights[k]) + multivariate_normal(means[k], cov[k]).logpdf(X)
                   for k in range(len(weights))], axis=1)
    resp = np.exp(lp - logsumexp(lp, axis=1, keepdims=True))
    return logsumexp(lp, axis=1).sum(), resp.sum(axis=0), resp.T @ X


@pytest.mark.parametrize("covariance_type, far", [("full", False), ("full", True), ("diag", False)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_e_steps_after_other_partitions_read_nothing_left_in_the_buffers(covariance_type, far, dtype):
    rng = np.random.default_rng(3)
    K, D = 4, 5
    weights = rng.dirichlet(np.full(K, 3.0))
    means = rng.normal(scale=3.0, size=(K, D))
    if covariance_type == "full":
        A = rng.normal(size=(K, D, D)) * 0.3
        cov = A @ A.transpose(0, 2, 1) + np.eye(D)
        if far:  # far and tight: the whitened path too
            means[3], cov[3] = 1e3, np.eye(D) * 1e-4
    else:
        cov = np.stack([np.diag(rng.uniform(0.5, 2.0, D)) for _ in range(K)])
    fam = GaussianMixtureFamily(K, covariance_type)
    params = fam.params_from(weights, means,
                             covariances=cov if covariance_type == "full" else np.diagonal(cov, axis1=1, axis2=2))
    # Rows spanning several blocks and a short last one, and another partition of other sizes.
    X = np.concatenate([rng.normal(scale=3.0, size=(20_000, D)), 1e3 + 1e-2 * rng.normal(size=(300, D))]).astype(dtype)
    other = (rng.normal(size=(7_001, D)) * 50).astype(dtype)

    block_buffers.clear()
    fresh = fam.e_step(params, Partition(X))
    assert block_buffers._local.kept  # the kernel kept its buffers
    fam.e_step(params, Partition(other))
    _poison_kept_buffers()
    again = fam.e_step(params, Partition(X))
    for name in ("log_likelihood", "resp_sum", "first_moment", "second_moment"):
        np.testing.assert_array_equal(np.asarray(getattr(again, name)), np.asarray(getattr(fresh, name)), name)

    ll, nk, sx = _direct(X.astype(np.float64), weights, means, cov)
    rtol = 1e-9 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(again.log_likelihood, ll, rtol=rtol)
    np.testing.assert_allclose(again.resp_sum, nk, rtol=rtol, atol=rtol * len(X))
    first_about_zero = again.first_moment + again.resp_sum[:, None] * means
    np.testing.assert_allclose(first_about_zero, sx, rtol=rtol, atol=rtol * np.abs(sx).max())
