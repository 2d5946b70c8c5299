"""Starting points of a mixture of experts, as passes the engine runs, and a demo dataset.

1. One moments pass: the weighted means and spreads of x and y (the shift
   every later statistic is taken about), checking X, y and the weights on
   the way (naming the first bad row).
2. ``init_params="k-means||"``: k-means‖ (:mod:`dem.engine.kmeans_parallel`)
   on the joint, standardised rows ``[x, y]`` (Gaussian experts) or ``[x,
   e_y]`` (categorical experts, one-hot labels): two oversampling passes and
   a weighting pass. ``"random"``: no pass here.
3. One assignment pass: each row goes wholly to its nearest centre (or gets
   row-keyed random responsibilities), and the M-step of those statistics
   from a zero gate gives every member its start: experts by weighted least
   squares on their rows, the gate by one Böhning step towards the
   assignment.

All members (restarts) share every pass; restart r of seed s is the fit of
seed s + r. Pure numpy: the passes go through :class:`~dem.families.base.Passes`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from dem.data.record import Partition
from dem.data.row_random import row_uniforms
from dem.errors import ConfigError
from dem.families.base import Passes, Stats, StatsTuple
from dem.families.moe_experts import MoEParams
from dem.families.moe_kernel import checked_weights, encode_labels, gaussian_targets, shifted_block, Prepared

INIT_METHODS: tuple[str, ...] = ("k-means||", "random")


@dataclasses.dataclass(frozen=True)
class DataMoments(Stats):
    """Weighted first and second moments of x and y about a provisional shift (one row)."""

    x_sum: np.ndarray
    x_sq: np.ndarray
    y_sum: np.ndarray
    y_sq: np.ndarray

    def mean_and_scale(self, x0: np.ndarray, y0: np.ndarray) -> tuple[np.ndarray, ...]:
        W = max(self.weight_sum, np.finfo(float).tiny)
        mx, my = self.x_sum / W, self.y_sum / W
        sx = np.sqrt(np.maximum(self.x_sq / W - mx * mx, 0.0))
        sy = np.sqrt(np.maximum(self.y_sq / W - my * my, 0.0))
        return x0 + mx, np.where(sx > 0, sx, 1.0), y0 + my, np.where(sy > 0, sy, 1.0)


def _check_prep(x0: np.ndarray, y0: np.ndarray, classes: np.ndarray | None) -> Prepared:
    # A kernel view holding only the shifts: what the row checks need.
    return Prepared("gaussian" if classes is None else "categorical", "diag", x0, y0, np.zeros((x0.size + 1, 1)),
                    np.zeros((x0.size + 1, 1)), np.zeros((1, 0)), np.zeros(1), classes)


def moments_partition(shared: tuple, part: Partition) -> DataMoments:
    """Moments of one partition, validating every row."""
    x0, y0, classes = shared
    prep = _check_prep(x0, y0, classes)
    n = part.n_rows
    if part.y is None:
        from dem.errors import DataError
        raise DataError("the mixture of experts needs targets y; none came with the data")
    Xt = shifted_block(prep, part.X, 0, n, part.start)[:, :-1]
    w = checked_weights(part.weights, 0, n, part.start)
    if classes is None:
        Yc = gaussian_targets(prep, part.y, 0, n, part.start)
    else:
        encode_labels(classes, part.y, part.start)
        Yc = np.zeros((n, 0))
    return DataMoments(float(n), float(w.sum()), 0.0, w @ Xt, w @ (Xt * Xt), w @ Yc, w @ (Yc * Yc))


@dataclasses.dataclass(frozen=True, eq=False)
class JointRows:
    """What k-means‖ clusters: standardised ``[x, y]``, or ``[x, one-hot label]``."""

    x_shift: np.ndarray
    x_scale: np.ndarray
    y_shift: np.ndarray
    y_scale: np.ndarray
    classes: np.ndarray | None = None

    def __call__(self, part: Partition) -> np.ndarray:
        Xs = (np.asarray(part.X, dtype=np.float64) - self.x_shift) / self.x_scale
        if self.classes is None:
            y = np.asarray(part.y, dtype=np.float64)
            Ys = (y.reshape(y.shape[0], -1) - self.y_shift) / self.y_scale
        else:
            idx = encode_labels(self.classes, part.y, part.start)
            Ys = np.zeros((Xs.shape[0], len(self.classes)))
            Ys[np.arange(Xs.shape[0]), idx] = 1.0
        return np.hstack([Xs, Ys])


@dataclasses.dataclass(frozen=True, eq=False)
class Assignment:
    """Initial responsibilities of one member: nearest of ``centres`` in ``joint`` rows, or random."""

    how: str
    seed: int
    n_experts: int
    centres: np.ndarray | None = None
    joint: JointRows | None = None

    def __call__(self, rows: Partition, log_joint: np.ndarray) -> np.ndarray:
        m, K = log_joint.shape
        if self.how == "random":
            R = row_uniforms((self.seed, 17), rows.start, m, per_row=K)
            if K == 1:
                R = R.reshape(m, 1)
            return R / R.sum(axis=1, keepdims=True)
        Z = self.joint(rows)
        C = self.centres
        d = (Z * Z).sum(axis=1)[:, None] - 2.0 * Z @ C.T + (C * C).sum(axis=1)[None, :]
        h = np.zeros((m, K))
        h[np.arange(m), d.argmin(axis=1)] = 1.0
        return h


def _assign_members(shared: tuple, part: Partition) -> StatsTuple:
    # One read of the partition turns every member's assignment into statistics.
    return StatsTuple(tuple(family.assignment_stats(params, part, assign) for family, params, assign in shared))


def zero_params(n_experts: int, x_shift: np.ndarray, y_shift: np.ndarray, y_scale: np.ndarray,
                expert: str, covariance_type: str, n_classes: int) -> MoEParams:
    """A flat gate and experts predicting the mean: where the assignment pass is taken."""
    K, p = n_experts, x_shift.size
    if expert == "gaussian":
        T = y_shift.size
        cov = np.repeat(np.diag(y_scale**2)[None], K, axis=0) if covariance_type == "full" \
            else np.repeat((y_scale**2)[None], K, axis=0)
        return MoEParams(np.zeros((K, p)), np.zeros(K), np.zeros((K, T, p)), np.repeat(y_shift[None], K, axis=0),
                         cov, x_shift, y_shift)
    C = n_classes
    return MoEParams(np.zeros((K, p)), np.zeros(K), np.zeros((K, C, p)), np.zeros((K, C)), np.zeros((K, 0)),
                     x_shift, np.zeros(0))


def initial_params(members: list[tuple[Any, int]], passes: Passes, method: str) -> list[MoEParams]:
    """Starting parameters of every member ``(family, seed)``, sharing the data passes.

    Each family provides ``n_experts``, ``expert``, ``covariance_type``,
    ``classes``, ``assignment_stats`` and ``m_step``.
    """
    if method not in INIT_METHODS:
        raise ConfigError(f"init_params must be one of {', '.join(INIT_METHODS)}; got {method!r}")
    family = members[0][0]
    classes = np.asarray(family.classes) if family.expert == "categorical" else None
    first = passes.read_partition_rows(0, 1)
    x0 = np.asarray(first.X, dtype=np.float64)[0]
    y0 = np.zeros(0) if classes is not None else np.asarray(first.y, dtype=np.float64).reshape(-1)
    moments = passes.reduce(moments_partition, (x0, y0, classes))
    x_shift, x_scale, y_shift, y_scale = moments.mean_and_scale(x0, y0)
    joint = JointRows(x_shift, x_scale, y_shift, y_scale, classes)
    seeds = [seed for _, seed in members]
    ks = [f.n_experts for f, _ in members]
    if method == "k-means||":
        centres = passes.kmeans_parallel(ks, seeds, rows=joint)
        assigns = [Assignment("nearest", s, k, c, joint) for s, k, c in zip(seeds, ks, centres)]
    else:
        assigns = [Assignment("random", s, k) for s, k in zip(seeds, ks)]
    n_classes = 0 if classes is None else len(classes)
    starts = [zero_params(f.n_experts, x_shift, y_shift, y_scale, f.expert, f.covariance_type, n_classes)
              for f, _ in members]
    summed = passes.reduce(_assign_members, tuple((f, p0, a) for (f, _), p0, a in zip(members, starts, assigns)))
    return [f.m_step(stats, p0) for (f, _), p0, stats in zip(members, starts, summed.members)]


# -- a demo dataset -----------------------------------------------------------------

#: Third word of the true-parameter stream's seed (chunk streams use [seed, chunk]).
_PARAMS_STREAM = 0x6D6F65


def true_parameters(seed: int, n_features: int, n_experts: int, n_targets: int = 1, expert: str = "gaussian",
                    n_classes: int = 3) -> dict[str, np.ndarray]:
    """A mixture of experts with overlapping gate regions, as a function of the seed alone.

    Inputs are standard normal; gate rows have norm about 2.5 (neighbouring
    regions blend over about one standard deviation of x); Gaussian experts
    have intercepts 3 apart on average and noise variances in [0.05, 0.3];
    categorical experts have coefficient rows of norm about 3.
    """
    K, p = n_experts, n_features
    rng = np.random.default_rng([seed, 0, _PARAMS_STREAM])
    V = rng.standard_normal((K, p)) * 2.5 / np.sqrt(p)
    c = rng.normal(0.0, 0.5, K)
    V[-1], c[-1] = 0.0, 0.0
    out = {"gate_coef": V, "gate_intercept": c}
    if expert == "gaussian":
        T = n_targets
        out["expert_coef"] = rng.standard_normal((K, T, p)) * 1.5 / np.sqrt(p)
        out["expert_intercept"] = rng.normal(0.0, 3.0, (K, T))
        cov = np.empty((K, T, T))
        for k in range(K):
            q, r = np.linalg.qr(rng.standard_normal((T, T)))
            q *= np.sign(np.diag(r))
            cov[k] = (q * rng.uniform(0.05, 0.3, T)) @ q.T
        out["expert_covariances"] = 0.5 * (cov + cov.transpose(0, 2, 1))
    else:
        A = rng.standard_normal((K, n_classes, p)) * 3.0 / np.sqrt(p)
        a = rng.normal(0.0, 1.0, (K, n_classes))
        out["expert_coef"] = A - A.mean(axis=1, keepdims=True)
        out["expert_intercept"] = a - a.mean(axis=1, keepdims=True)
    return out


def sample_rows(truth: dict[str, np.ndarray], rng: np.random.Generator, n: int, expert: str
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X, y, labels)``: n rows drawn from the mixture ``truth``."""
    V, c = truth["gate_coef"], truth["gate_intercept"]
    K, p = V.shape
    X = rng.standard_normal((n, p))
    Z = X @ V.T + c
    G = np.exp(Z - Z.max(axis=1, keepdims=True))
    G /= G.sum(axis=1, keepdims=True)
    labels = (rng.random(n)[:, None] > np.cumsum(G, axis=1)).sum(axis=1).clip(0, K - 1)
    W, b = truth["expert_coef"], truth["expert_intercept"]
    mean = np.einsum("np,ntp->nt", X, W[labels]) + b[labels]
    if expert == "gaussian":
        L = np.linalg.cholesky(truth["expert_covariances"])
        y = mean + np.einsum("nts,ns->nt", L[labels], rng.standard_normal(mean.shape))
    else:
        P = np.exp(mean - mean.max(axis=1, keepdims=True))
        P /= P.sum(axis=1, keepdims=True)
        y = (rng.random(n)[:, None] > np.cumsum(P, axis=1)).sum(axis=1).clip(0, P.shape[1] - 1)
    return X, y, labels.astype(np.int32)


def generate_dataset(path: str | os.PathLike, n_samples: int, n_features: int, n_experts: int, *,
                     n_targets: int = 1, expert: str = "gaussian", n_classes: int = 3, chunk_rows: int = 100_000,
                     seed: int = 0, storage_options: dict | None = None, overwrite: bool = False,
                     n_threads: int | None = None) -> dict[str, Any]:
    """Write a demo dataset drawn from a known mixture of experts to a Zarr group.

    The group holds ``X`` (n_samples, n_features) float64, ``y`` ((n_samples,)
    float64 when ``n_targets == 1``, else (n_samples, n_targets); int64 class
    labels 0…C−1 for ``expert="categorical"``), ``labels`` (the true expert of
    each row) and the true parameters beside them: ``true_gate_coef``,
    ``true_gate_intercept``, ``true_expert_coef``, ``true_expert_intercept``
    and, for Gaussian experts, ``true_expert_covariances``. Chunk i is drawn
    from ``default_rng([seed, i])`` alone, so the bytes do not depend on the
    threads that write them. Local paths are written beside the target and
    renamed into place when complete.

    Returns
    -------
    dict
        Summary: path, sizes, seed, expert, n_chunks, expert_counts, seconds.
    """
    import zarr
    from zarr.codecs import BloscCodec

    from dem.data.generate import _check_positive_int, _publish, staging_target

    n_samples = _check_positive_int("n_samples", n_samples)
    n_features = _check_positive_int("n_features", n_features)
    n_experts = _check_positive_int("n_experts", n_experts)
    n_targets = _check_positive_int("n_targets", n_targets)
    n_classes = _check_positive_int("n_classes", n_classes, 2)
    chunk_rows = _check_positive_int("chunk_rows", chunk_rows)
    seed = _check_positive_int("seed", seed, 0)
    if expert not in ("gaussian", "categorical"):
        raise ConfigError(f"expert must be 'gaussian' or 'categorical'; got {expert!r}")
    path, target, url, opts = staging_target(path, overwrite, storage_options)
    t0 = time.perf_counter()
    truth = true_parameters(seed, n_features, n_experts, n_targets, expert, n_classes)
    n_chunks = -(-n_samples // chunk_rows)
    blosc = [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]
    y_shape: tuple[int, ...] = (n_samples,) if expert == "categorical" or n_targets == 1 else (n_samples, n_targets)
    attrs = {"generator": "dem.families.moe_init", "kind": "mixture_of_experts", "n_samples": n_samples,
             "n_features": n_features, "n_experts": n_experts, "n_targets": n_targets, "expert": expert,
             "n_classes": n_classes, "chunk_rows": chunk_rows, "seed": seed, "complete": False}
    try:
        group = zarr.open_group(store=target, mode="w", zarr_format=3, storage_options=opts)
        group.create_array("X", shape=(n_samples, n_features), chunks=(chunk_rows, n_features), dtype="float64",
                           compressors=blosc, fill_value=0.0)
        group.create_array("y", shape=y_shape, chunks=(chunk_rows,) + y_shape[1:],
                           dtype="int64" if expert == "categorical" else "float64", compressors=blosc, fill_value=0)
        group.create_array("labels", shape=(n_samples,), chunks=(chunk_rows,), dtype="int32", compressors=blosc,
                           fill_value=-1)
        for name, value in truth.items():
            group.create_array(f"true_{name}", shape=value.shape, dtype="float64")[...] = value
        group.attrs.update(attrs)

        def write(i: int) -> np.ndarray:
            a, b = i * chunk_rows, min(n_samples, (i + 1) * chunk_rows)
            X, y, labels = sample_rows(truth, np.random.default_rng([seed, i]), b - a, expert)
            group["X"][a:b] = X
            group["y"][a:b] = y.reshape((b - a,) + y_shape[1:])
            group["labels"][a:b] = labels
            return np.bincount(labels, minlength=n_experts)

        with ThreadPoolExecutor(max_workers=n_threads or os.cpu_count() or 1) as pool:
            counts = list(pool.map(write, range(n_chunks)))
        group.attrs["complete"] = True
    except BaseException:
        if not url:
            import shutil
            shutil.rmtree(target, ignore_errors=True)
        raise
    if not url:
        _publish(target, path, overwrite)
    return {**{k: v for k, v in attrs.items() if k not in ("generator", "complete")}, "path": path,
            "n_chunks": n_chunks, "expert_counts": np.sum(counts, axis=0).astype(int).tolist(),
            "seconds": time.perf_counter() - t0}
