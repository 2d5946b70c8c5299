"""The Gaussian E-step kernel: the expanded form, its rounding bound, stacked members.

References are computed here, independently of the kernel: scipy's
``multivariate_normal.logpdf``, plain numpy sums over rows in float64 (or
``np.longdouble`` where float64 itself is the question), and the bound's
formula written out with ``np.linalg.inv`` and ``eigvalsh``.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from dem.data.record import Partition
from dem.families import gaussian_kernel as gk
from dem.families import gaussian_packed as gp
from dem.families.gaussian_mixture import GaussianMixtureFamily


@pytest.fixture(params=["jit", "numpy"])
def packing(request, monkeypatch):
    """Run a test with numba's packing loop and with the numpy fallback."""
    if request.param == "numpy":
        monkeypatch.setitem(gp._JIT, "pack", [])
    return request.param


def _random_full(rng, K, D, scale=3.0, spread=0.3):
    A = rng.normal(size=(K, D, D)) * spread
    cov = A @ A.transpose(0, 2, 1) + np.eye(D)
    return rng.dirichlet(np.full(K, 3.0)), rng.normal(scale=scale, size=(K, D)), cov


def _direct(X, w, weights, means, cov, beta=1.0):
    """Log-likelihood, responsibilities and moments about the means, one component at a time."""
    lp = np.stack([np.log(weights[k]) + multivariate_normal(means[k], cov[k]).logpdf(X)
                   for k in range(len(weights))], axis=1)
    lse = logsumexp(beta * lp, axis=1) / beta
    resp = np.exp(beta * lp - logsumexp(beta * lp, axis=1, keepdims=True)) * w[:, None]
    nk = resp.sum(axis=0)
    diff = X[:, None, :] - means[None]
    first = np.einsum("nk,nkd->kd", resp, diff)
    second = np.einsum("nk,nki,nkj->kij", resp, diff, diff)
    return w @ lse, nk, first, second


# -- the pieces of the expanded form ----------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_packed_block_holds_products_centred_rows_and_ones(packing, dtype):
    rng = np.random.default_rng(0)
    D, B = 5, 37
    block = (rng.normal(size=(B, D)) * 4 + 10).astype(dtype)
    centre = block.mean(axis=0).astype(dtype)
    P = gp.packed_size(D)
    G = np.empty((P + D + 1, B), dtype)
    gp.pack_block(block, centre, G)
    x = block - centre  # one rounding per entry, as the kernel
    iu = np.triu_indices(D)
    np.testing.assert_array_equal(G[:P], (x[:, iu[0]] * x[:, iu[1]]).T)
    np.testing.assert_array_equal(G[P:P + D], x.T)
    np.testing.assert_array_equal(G[P + D], np.ones(B, dtype))


def test_a_jit_that_fails_falls_back_to_numpy(monkeypatch):
    def broken(*args):
        raise RuntimeError("cannot cache function: no locator available")

    monkeypatch.setitem(gp._JIT, "pack", [broken])
    block = np.arange(12.0).reshape(4, 3)
    G = np.empty((gp.packed_size(3) + 4, 4))
    gp.pack_block(block, np.zeros(3), G)
    np.testing.assert_array_equal(G[6:9], block.T)
    assert gp._JIT["pack"] == []


def test_expanded_coefficients_give_log_densities():
    rng = np.random.default_rng(1)
    K, D = 4, 6
    weights, means, cov = _random_full(rng, K, D)
    U = np.linalg.inv(np.linalg.cholesky(cov)).transpose(0, 2, 1)  # sklearn's precisions_cholesky
    centre = rng.normal(size=D)
    comps = gk.mixture_components(weights, means, U, "full")
    C = gp.expanded_coefficients(means - centre, U, comps.const)
    X = rng.normal(scale=3.0, size=(50, D))
    x = X - centre
    iu = np.triu_indices(D)
    g = np.concatenate([(x[:, iu[0]] * x[:, iu[1]]).T, x.T, np.ones((1, len(X)))])
    ref = np.stack([np.log(weights[k]) + multivariate_normal(means[k], cov[k]).logpdf(X) for k in range(K)])
    np.testing.assert_allclose(C @ g, ref, rtol=1e-11)


def test_moments_about_means_from_moments_about_centre():
    rng = np.random.default_rng(2)
    K, D, n = 3, 4, 200
    X = rng.normal(size=(n, D)) * 2 + 5
    resp = rng.random((n, K))
    means = rng.normal(size=(K, D)) + 5
    centre = X.mean(axis=0)
    x = X - centre
    iu = np.triu_indices(D)
    packed = (x[:, iu[0]] * x[:, iu[1]]).T @ resp
    first, second = gp.second_moments_about_means(packed, x.T @ resp, resp.sum(axis=0), means - centre)
    diff = X[:, None, :] - means[None]
    np.testing.assert_allclose(first, np.einsum("nk,nkd->kd", resp, diff), rtol=1e-10)
    np.testing.assert_allclose(second, np.einsum("nk,nki,nkj->kij", resp, diff, diff), rtol=1e-10)


# -- the rounding bound --------------------------------------------------------


def test_rounding_bound_is_the_formula():
    rng = np.random.default_rng(3)
    K, D = 5, 4
    _, means, cov = _random_full(rng, K, D, spread=1.0)
    U = np.linalg.inv(np.linalg.cholesky(cov)).transpose(0, 2, 1)
    centre = rng.normal(size=D)
    for dtype in (np.float64, np.float32):
        got = gp.rounding_bound(means - centre, U, dtype)
        ref = [np.finfo(dtype).eps * (np.linalg.norm(means[k] - centre) + np.sqrt(np.trace(cov[k]))) ** 2
               * np.linalg.eigvalsh(np.linalg.inv(cov[k])).max() for k in range(K)]
        np.testing.assert_allclose(got, ref, rtol=1e-10)


def _far_tight(dtype, sep, sigma, n=400, D=2):
    """Two clusters ``sep`` apart along every axis with spread ``sigma``, and their true parameters."""
    rng = np.random.default_rng(4)
    X = np.concatenate([rng.normal(size=(n, D)) * sigma, sep + rng.normal(size=(n, D)) * sigma])
    means = np.array([np.zeros(D), np.full(D, sep)])
    cov = np.stack([np.eye(D) * sigma**2] * 2)
    return X.astype(dtype), np.array([0.5, 0.5]), means, cov


@pytest.mark.parametrize("dtype, sep, expanded", [
    (np.float64, 100.0, True),     # eps·(71 + 1.4)² ≈ 1e-12: well inside
    (np.float64, 1e5, False),      # eps·(7e4)² ≈ 1e-6 > √eps: whitened
    (np.float32, 10.0, True),      # 1.2e-7·(7 + 1.4)² ≈ 8e-6
    (np.float32, 100.0, False),    # 1.2e-7·(72)² ≈ 6e-4 > 3.5e-4: whitened
])
def test_bound_chooses_the_path(dtype, sep, expanded):
    X, weights, means, cov = _far_tight(dtype, sep, 1.0)
    fam = GaussianMixtureFamily(2, "full")
    params = fam.params_from(weights, means, covariances=cov)
    centre = gk.data_centre(X, np.dtype(dtype))
    split = gp.split_components(means - centre, params.precisions_cholesky, np.zeros(2), np.dtype(dtype))
    assert split.all_expanded is expanded
    assert (split.whitened.size == 0) is expanded


@pytest.mark.parametrize("sep", [3.0, 10.0, 30.0, 60.0])
def test_float32_moments_stay_within_the_bound(sep):
    # Where the bound admits the expanded form, the float32 kernel's second
    # moments (relative to n_k σ_min²) and log-likelihood are within the bound
    # of the float64 computation on the same values; past it they are whitened.
    X32, weights, means, cov = _far_tight(np.float32, sep, 1.0, n=2000, D=3)
    X = X32.astype(np.float64)
    fam = GaussianMixtureFamily(2, "full")
    params = fam.params_from(weights, means, covariances=cov * 1.3)
    stats = fam.e_step(params, Partition(X32))
    ll, nk, first, second = _direct(X, np.ones(len(X)), weights, means, cov * 1.3)
    centre = gk.data_centre(X32, np.dtype(np.float32))
    bound = gp.rounding_bound(means - centre, params.precisions_cholesky, np.float32)
    used = np.minimum(bound, gp.tolerance(np.float32))
    sigma_min2 = np.linalg.eigvalsh(cov * 1.3)[:, 0]
    err = np.abs(stats.second_moment - second).max(axis=(1, 2)) / (nk * sigma_min2)
    assert np.all(err <= used + 1e-6), (err, bound)
    np.testing.assert_allclose(stats.resp_sum, nk, rtol=1e-5)
    # Each row's log-density is within the bound of its component (in units of the
    # log-density, as the Mahalanobis term is halved).
    assert abs(stats.log_likelihood - ll) / len(X) <= used.max()


def test_float32_past_the_bound_the_expanded_form_would_lose_digits(monkeypatch):
    # Why the bound exists: 100σ apart in float32, the expanded form (forced) loses
    # more than the 1e-4 dem holds float32 fits to; the kernel whitens instead.
    X32, weights, means, cov = _far_tight(np.float32, 100.0, 1.0, n=2000, D=2)
    X = X32.astype(np.float64)
    fam = GaussianMixtureFamily(2, "full")
    params = fam.params_from(weights, means, covariances=cov)
    _, nk, _, second = _direct(X, np.ones(len(X)), weights, means, cov)

    def rel_err(stats):
        return (np.abs(stats.second_moment - second).max(axis=(1, 2)) / nk).max()

    assert rel_err(fam.e_step(params, Partition(X32))) < 1e-5
    monkeypatch.setattr(gp, "tolerance", lambda dtype: np.inf)
    assert rel_err(fam.e_step(params, Partition(X32))) > 1e-4


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("weighted", [False, True])
def test_e_step_with_mixed_paths_matches_direct_computation(packing, dtype, weighted):
    # One member whose components take both paths: a far, tight component is whitened
    # (tight enough in float64 that the bound refuses it, not so tight that float32
    # data cannot resolve it).
    rng = np.random.default_rng(5)
    K, D, n = 4, 3, 3000
    sigma = 1e-2 if dtype == np.float64 else 1.0
    weights, means, cov = _random_full(rng, K, D)
    means[3] = 1e3
    cov[3] = np.eye(D) * sigma**2
    X = np.concatenate([rng.normal(scale=3.0, size=(n - 50, D)), 1e3 + sigma * rng.normal(size=(50, D))])
    X = X.astype(dtype)
    w = rng.uniform(0.0, 2.0, size=n) if weighted else np.ones(n)
    fam = GaussianMixtureFamily(K, "full")
    params = fam.params_from(weights, means, covariances=cov)
    centre = gk.data_centre(X, np.dtype(dtype))
    split = gp.split_components(means - centre, params.precisions_cholesky, np.zeros(K), np.dtype(dtype))
    assert list(split.whitened) == [3] and list(split.expanded) == [0, 1, 2]
    stats = fam.e_step(params, Partition(X, w if weighted else None))
    ll, nk, first, second = _direct(X.astype(np.float64), w, weights, means, cov)
    rtol = 1e-9 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(stats.log_likelihood, ll, rtol=rtol)
    np.testing.assert_allclose(stats.resp_sum, nk, rtol=rtol)
    scale = np.abs(second).max(axis=(1, 2))[:, None, None]
    np.testing.assert_allclose(stats.second_moment / scale, second / scale, rtol=0, atol=rtol)
    np.testing.assert_allclose(stats.first_moment / np.sqrt(scale[:, 0]), first / np.sqrt(scale[:, 0]),
                               rtol=0, atol=rtol)


# -- members sharing a pass ------------------------------------------------------

#: How far a member's sums in a stacked product may be from its sums alone,
#: relative to each field's largest entry: the wider GEMM may round each dot
#: product differently (BLAS picks kernels by shape), one rounding of the
#: working precision per term at most, summed over a block's rows.
STACK_TOLERANCE = {np.float64: 1e-12, np.float32: 1e-5}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("D, K", [(2, 9), (16, 16), (5, 3)])
def test_stacked_members_equal_each_member_alone(dtype, weighted, D, K):
    rng = np.random.default_rng(D * 100 + K)
    n = 5000
    X = (rng.normal(size=(n, D)) * 3).astype(dtype)
    w = rng.uniform(0.0, 2.0, size=n) if weighted else None
    fam = GaussianMixtureFamily(K, "full")
    members = []
    for r in range(6):
        weights, means, cov = _random_full(rng, K, D)
        if r == 3:  # a far, tight component: the whitened path inside the stack
            means[0], cov[0] = 1e3, np.eye(D) * 1e-6
        members.append(fam.params_from(weights, means, covariances=cov))
    part = Partition(X, w)
    together = fam.e_step_members(members, part)
    tol = STACK_TOLERANCE[dtype]
    for params, stats in zip(members, together):
        alone = fam.e_step(params, part)
        assert stats.n_rows == alone.n_rows and stats.weight_sum == alone.weight_sum
        for name in ("log_likelihood", "resp_sum", "first_moment", "second_moment"):
            a, b = np.asarray(getattr(alone, name)), np.asarray(getattr(stats, name))
            scale = max(np.abs(a).max(), 1e-300)
            assert np.abs(a - b).max() <= tol * scale, (name, np.abs(a - b).max() / scale)


def test_stacked_members_keep_tempering_and_entropy():
    rng = np.random.default_rng(7)
    K, D, n = 3, 4, 2000
    X = rng.normal(size=(n, D)) * 2
    comps, refs = [], []
    for _ in range(3):
        weights, means, cov = _random_full(rng, K, D)
        U = np.linalg.inv(np.linalg.cholesky(cov)).transpose(0, 2, 1)
        comps.append(gk.mixture_components(weights, means, U, "full"))
        refs.append((weights, means, cov))
    sums = gk.e_step_sums_members(comps, Partition(X), beta=0.5, entropy=True)
    for acc, (weights, means, cov) in zip(sums, refs):
        ll, nk, first, second = _direct(X, np.ones(n), weights, means, cov, beta=0.5)
        np.testing.assert_allclose(acc["log_likelihood"], ll, rtol=1e-10)
        np.testing.assert_allclose(acc["resp_sum"], nk, rtol=1e-10)
        np.testing.assert_allclose(acc["second_moment"], second, rtol=1e-9)
        lp = np.stack([np.log(weights[k]) + multivariate_normal(means[k], cov[k]).logpdf(X) for k in range(K)], 1)
        r = np.exp(0.5 * lp - logsumexp(0.5 * lp, axis=1, keepdims=True))
        np.testing.assert_allclose(acc["resp_entropy"], (r * np.log(r)).sum(), rtol=1e-10)


def test_sampled_assignments_are_labels_drawn_from_the_posterior():
    # Stochastic EM: each row's label is drawn with its own uniform (key, global row);
    # the moments are those of the rows each label collects, whatever the partitioning.
    from dem.data.row_random import row_uniforms

    rng = np.random.default_rng(8)
    K, D, n = 3, 2, 1500
    weights, means, cov = _random_full(rng, K, D, scale=1.0)
    X = rng.normal(scale=2.0, size=(n, D))
    fam = GaussianMixtureFamily(K, "full")
    params = fam.params_from(weights, means, covariances=cov)
    key = (3, 1, 4)
    lp = np.stack([np.log(weights[k]) + multivariate_normal(means[k], cov[k]).logpdf(X) for k in range(K)], 1)
    resp = np.exp(lp - logsumexp(lp, axis=1, keepdims=True))
    cdf = np.cumsum(resp, axis=1)
    labels = np.minimum((cdf < row_uniforms(key, 0, n)[:, None] * cdf[:, -1:]).sum(axis=1), K - 1)
    whole = fam.e_step_sampled(params, Partition(X), key)
    halves = [fam.e_step_sampled(params, Partition(X[a:b], start=a), key) for a, b in ((0, 700), (700, n))]
    for stats in (whole, halves[0] + halves[1]):
        np.testing.assert_array_equal(stats.resp_sum, np.bincount(labels, minlength=K))
        for k in range(K):
            d = X[labels == k] - means[k]
            np.testing.assert_allclose(stats.second_moment[k], d.T @ d, rtol=1e-10)
        np.testing.assert_allclose(stats.log_likelihood, logsumexp(lp, axis=1).sum(), rtol=1e-12)


def test_a_component_collapsing_onto_a_point_gets_exact_moments():
    # The bound reads the spread from the current parameters (σ = 1); the rows of the
    # second component sit exactly on its mean, so its new covariance is reg_covar
    # alone, and moments rounded to eps·‖x − c‖² (~1e-10 here) would be read against
    # 1e-6. The kernel notices and whitens that component.
    rng = np.random.default_rng(4)
    X = np.concatenate([rng.normal(size=(300, 2)), np.full((50, 2), 100.0)])
    fam = GaussianMixtureFamily(2, "full")
    params = fam.params_from(np.array([0.5, 0.5]), np.array([[0.0, 0.0], [100.0, 100.0]]),
                             covariances=np.stack([np.eye(2)] * 2))
    stats = fam.e_step(params, Partition(X))
    _, nk, first, second = _direct(X, np.ones(len(X)), params.weights, params.means, params.covariances)
    assert np.abs(stats.second_moment[1]).max() <= 1e-12 * nk[1]
    np.testing.assert_allclose(stats.second_moment[0], second[0], rtol=1e-10)
    np.testing.assert_allclose(stats.resp_sum, nk, rtol=1e-12)


def test_float32_sums_over_many_full_blocks_keep_float32_accuracy():
    # Within a block the float32 products are summed in float32, so larger blocks
    # (fewer numpy calls per row) must not cost the accuracy dem holds float32 to.
    from dem.families import gaussian_stack as gs

    rng = np.random.default_rng(11)
    D, K = 16, 4
    rows = gs.stack_block_rows(D, 4, K)
    n = 5 * rows + 17  # five full blocks and a short one
    means = rng.normal(scale=4.0, size=(K, D)) + 50.0
    X32 = (means[rng.integers(0, K, n)] + rng.normal(size=(n, D))).astype(np.float32)
    X = X32.astype(np.float64)
    weights = np.full(K, 1.0 / K)
    cov = np.stack([np.eye(D) * (1.0 + 0.5 * k) for k in range(K)])
    fam = GaussianMixtureFamily(K, "full")
    stats = fam.e_step(fam.params_from(weights, means, covariances=cov), Partition(X32))
    ll, nk, first, second = _direct(X, np.ones(n), weights, means, cov)
    np.testing.assert_allclose(stats.resp_sum, nk, rtol=1e-5)
    scale = nk[:, None, None] * np.diagonal(cov, axis1=1, axis2=2).min(axis=1)[:, None, None]
    assert np.abs(stats.second_moment - second).max() / scale.max() < 1e-5
    assert np.abs(stats.first_moment - first).max() / np.sqrt(scale.max() * nk.max()) < 1e-5
    assert abs(stats.log_likelihood - ll) / n < 1e-5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("members", [None, 3])
def test_far_terms_become_exact_zeros_and_nothing_subnormal(dtype, members):
    # Log-ratios spread from 0 to far past where exp underflows in either
    # precision: a subnormal responsibility costs a microcode assist per
    # element on Intel CPUs (in exp and in the moments' GEMM).
    rng = np.random.default_rng(0)
    K, rows = 8, 3_000
    shape = (K, rows) if members is None else (members, K, rows)  # the whitened and the stacked layouts
    axis = len(shape) - 2
    lp64 = -rng.uniform(0.0, 900.0, size=shape) + rng.normal(size=rows) * 50
    top = np.expand_dims(rng.integers(0, K, shape[:axis] + (rows,)), axis)
    np.put_along_axis(lp64, top, np.take_along_axis(lp64, top, axis) + 900.0, axis)
    lp = lp64.astype(dtype)
    ref = lp.astype(np.float64)
    shifted = (lp - lp.max(axis=axis, keepdims=True)).astype(np.float64)  # as rounded in the working precision
    lse, total = gk.exp_normalised(lp, 1.0, axis=axis)

    tiny, eps = np.finfo(dtype).tiny, np.finfo(dtype).eps
    floor = np.log(tiny) + np.log(K) + 24 * np.log(2.0)
    assert (shifted < floor - 1e-3).sum() > 1000 and (shifted > floor + 1e-3).sum() > 1000
    # Below the floor, exact zeros; above it, exp to within the floor's value and exp's rounding.
    assert np.all(lp[shifted < floor - 1e-3] == 0.0)
    kept = shifted > floor + 1e-3
    np.testing.assert_allclose(lp[kept], np.exp(shifted[kept]), rtol=4 * eps, atol=2 * np.exp(floor))
    resp = lp / np.expand_dims(total, axis)
    for what in (lp, resp):
        assert not np.any((what != 0) & (np.abs(what) < tiny)), "a subnormal number survived"
    np.testing.assert_allclose(lse, logsumexp(ref, axis=axis), rtol=0, atol=K * eps)
