"""hmmlearn-style hidden Markov model estimators on dem's engine.

``GaussianHMM``, ``CategoricalHMM`` and ``GMMHMM`` take hmmlearn's parameters
and expose its fitted attributes; given the same starting parameters
(``init_params=""`` and ``startprob_`` … set before ``fit``) they reach
hmmlearn 0.3.3's numbers. They also take dem's settings (``client``,
``partition_rows``, ``checkpoint_dir``, …) and fit in-memory data (``X`` with
``lengths``, as hmmlearn) or a Zarr group holding ``X`` and ``offsets``
(:mod:`dem.data.sequences`) on a Dask cluster, with checkpoints and exact
resume.

Convergence
-----------
hmmlearn stops when the gain of the *total* log-likelihood is below ``tol``.
dem's engine tests ``|Δ mean log-likelihood| < tol`` where the mean is per
time step (the HMM statistics' ``weight_sum`` counts steps). The estimators
pass ``tol / n_steps``, so the test is hmmlearn's — on the absolute change,
so a fall of more than ``tol`` (which EM never makes, up to round-off) keeps
iterating where hmmlearn would stop. ``monitor_.history`` holds the total
log-likelihood of every iteration, like hmmlearn's.

``monitor_.converged`` is True only when the tolerance was met; hmmlearn's is
also True when ``n_iter`` was reached.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import warnings
from collections import deque
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from dem.core.engine import EMState
from dem.core.executor import Executor
from dem.core.fitting import RunDirectory, chain_callbacks, digest, fit_with_restarts
from dem.core.reduction import DEFAULT_FAN_IN
from dem.data import sequences as seqdata
from dem.data.sequences import SequenceData
from dem.errors import ConfigError, DataError
from dem.models import hmm as hmm_models
from dem.models.hmm import (
    COVARIANCE_TYPES,
    DECODER_ALGORITHMS,
    CategoricalHMMParams,
    GaussianHMMParams,
    GMMHMMParams,
)
from dem.models.init import sample_size

IMPLEMENTATIONS = ("log", "scaling")
CACHE_CHOICES = ("auto", True, False)
MODEL_DIRNAME = "model.zarr"
FORMAT_VERSION = 1


class ConvergenceMonitor:
    """What a fit did, shaped like hmmlearn's ``ConvergenceMonitor``.

    Attributes
    ----------
    tol, n_iter, verbose : the estimator's settings
    history : deque of float
        Total log-likelihood of the data at every iteration (under the
        parameters of that iteration's E-step).
    iter : int
        Iterations performed.
    converged : bool
        Whether the change of the total log-likelihood fell below ``tol``.
    """

    _template = "{iter:>10d} {log_prob:>16.8f} {delta:>+16.8f}"
    prefix = ""

    def __init__(self, tol: float, n_iter: int, verbose: bool) -> None:
        self.tol = tol
        self.n_iter = n_iter
        self.verbose = verbose
        self.history: deque = deque()
        self.iter = 0
        self.converged = False

    def __repr__(self) -> str:
        return (f"ConvergenceMonitor(tol={self.tol}, n_iter={self.n_iter}, iter={self.iter}, "
                f"converged={self.converged}, history={list(self.history)})")

    def report(self, log_prob: float) -> None:
        """Record one iteration (and print it, as hmmlearn does, when verbose)."""
        if self.verbose:
            delta = log_prob - self.history[-1] if self.history else np.nan
            print(self.prefix + self._template.format(iter=self.iter + 1, log_prob=log_prob, delta=delta),
                  file=sys.stderr)
        self.history.append(log_prob)
        self.iter += 1


def _seed_from(random_state: Any) -> int:
    """An integer seed from hmmlearn/scikit-learn style ``random_state``."""
    if random_state is None:
        import secrets
        return secrets.randbits(32)
    if isinstance(random_state, (bool, np.bool_)):
        raise ConfigError(f"random_state must be None, an int or a RandomState; got {random_state!r}")
    if isinstance(random_state, (int, np.integer)):
        if random_state < 0:
            raise ConfigError(f"random_state must be non-negative; got {random_state}")
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**31 - 1))
    raise ConfigError(f"random_state must be None, an int, a RandomState or a Generator; "
                      f"got {type(random_state).__name__}")


def _restart_seed(base: int, restart: int) -> int:
    # Restart 0 uses the user's seed itself, so its start equals hmmlearn's.
    if restart == 0:
        return base % 2**32
    return int(np.random.SeedSequence([base, restart]).generate_state(1, np.uint32)[0])




# -- block functions (module level, so they pickle) ---------------------------


def _block_summary(shared: tuple[str, int], X: np.ndarray, lengths: Any, start: int) -> dict:
    """One pass over a partition for initialisation: checks, moments, an even sample.

    ``shared`` is ``(kind, stride, shift)``. Gaussian kinds check that the
    values are finite and return the row count, the first and second moments
    about ``shift`` (the data's first row, so large offsets do not cancel) and
    every ``stride``-th global row; categorical checks the symbols and
    returns the smallest and largest.
    """
    kind, stride, shift = shared
    if kind == "categorical":
        Xs = hmm_models.check_symbols(X, None, start)
        return {"min": int(Xs.min()), "max": int(Xs.max())}
    Xf = hmm_models._finite_block(X, start)
    Xc = np.asarray(Xf, dtype=np.float64) - shift
    first = (-start) % stride
    return {"n": Xf.shape[0], "sum": Xc.sum(axis=0), "outer": Xc.T @ Xc,
            "sample": np.asarray(Xf[first::stride], dtype=np.float64)}


def _block_score(shared: tuple, X: np.ndarray, lengths: Any, start: int) -> np.ndarray:
    model, params = shared
    return model.score(params, X, lengths, start)


def _block_decode(shared: tuple, X: np.ndarray, lengths: Any, start: int) -> tuple:
    model, params, algorithm = shared
    return model.decode(params, X, lengths, algorithm, start)


def _block_posteriors(shared: tuple, X: np.ndarray, lengths: Any, start: int) -> tuple:
    model, params = shared
    return model.score_and_posteriors(params, X, lengths, start)


def _block_predict(shared: tuple, X: np.ndarray, lengths: Any, start: int) -> tuple:
    model, rest = shared
    return model.predict_block(rest, X, lengths, start)


# -- the shared estimator -----------------------------------------------------


class _BaseHMM(BaseEstimator):
    """What the three HMM estimators share (see the module docstring)."""

    _kind = ""
    _params_cls: type = GaussianHMMParams
    #: hmmlearn letter → fitted attribute holding that parameter
    _attributes: dict[str, str] = {"s": "startprob_", "t": "transmat_"}

    # -- hooks ----------------------------------------------------------------

    def _model(self, n_features: int) -> Any:
        raise NotImplementedError

    def _init_emission(self, needs: set[str], user: dict, summary: Any, seed: int,
                       n_features: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _check_emission(self, p: Any, n_features: int) -> None:
        raise NotImplementedError

    def _set_emission(self, p: Any) -> None:
        raise NotImplementedError

    def _emission_params(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _n_fit_scalars(self) -> dict[str, int]:
        raise NotImplementedError

    def _emission_summary_needed(self, needs: set[str]) -> bool:
        return bool(needs - {"s", "t"})

    # -- validation -------------------------------------------------------------

    def _check_hyperparameters(self) -> None:
        def integer(name: str, minimum: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
                raise ConfigError(f"{name} must be an integer >= {minimum}; got {v!r}")

        def non_negative(name: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not (v >= 0) \
                    or not math.isfinite(v):
                raise ConfigError(f"{name} must be a finite number >= 0; got {v!r}")

        integer("n_components", 1)
        integer("n_iter", 0)
        integer("n_init", 1)
        integer("fan_in", 2)
        integer("checkpoint_every", 1)
        integer("keep_checkpoints", 1)
        non_negative("tol")
        if self.algorithm not in DECODER_ALGORITHMS:
            raise ConfigError(f"algorithm must be one of {', '.join(DECODER_ALGORITHMS)}; got {self.algorithm!r}")
        if self.implementation not in IMPLEMENTATIONS:
            raise ConfigError(f"implementation must be 'log' or 'scaling'; got {self.implementation!r}")
        for name in ("params", "init_params"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a string of parameter letters; got {getattr(self, name)!r}")
        if self.cache not in CACHE_CHOICES:
            raise ConfigError(f"cache must be 'auto', True or False; got {self.cache!r}")
        if self.partition_rows is not None:
            integer("partition_rows", 1)
        if self.max_sequence_bytes is not None:
            integer("max_sequence_bytes", 1)
        if hasattr(self, "covariance_type") and self.covariance_type not in COVARIANCE_TYPES:
            raise ConfigError(f"covariance_type must be one of {', '.join(COVARIANCE_TYPES)}; "
                              f"got {self.covariance_type!r}")
        if hasattr(self, "min_covar"):
            non_negative("min_covar")

    def _check_transitions(self, startprob: np.ndarray, transmat: np.ndarray) -> None:
        K = self.n_components
        _check_distribution("startprob_", startprob, (K,))
        _check_distribution("transmat_", transmat, (K, K), rows=True)

    # -- data -------------------------------------------------------------------

    def _row_bytes(self, n_features: int) -> int:
        return seqdata.working_row_bytes(n_features, self.n_components, getattr(self, "n_mix", 1))

    def _sequences(self, X: Any, lengths: Any, partition_rows: int | None = None) -> SequenceData:
        return seqdata.as_sequences(
            X, lengths, symbols=self._kind == "categorical", row_bytes=self._row_bytes,
            partition_rows=partition_rows or self.partition_rows, storage_options=self.storage_options)

    def _use_cache(self, data: SequenceData, executor: Executor) -> bool:
        if self.cache != "auto":
            return bool(self.cache)
        share = 0.5 if executor.client is not None else 0.25
        return data.nbytes <= share * executor.total_memory()

    def _summary(self, data: SequenceData, placed: list, executor: Executor) -> dict:
        """One pass over the data: validation, and what initialisation needs."""
        if self._kind == "categorical":
            parts = executor.map(_block_summary, ("categorical", 1, None), placed, data.bounds)
            return {"min": min(p["min"] for p in parts), "max": max(p["max"] for p in parts)}
        stride = max(1, math.ceil(data.n_samples / sample_size(data.n_samples, self.n_components)))
        shift = np.asarray(data.read_rows(0, 1), dtype=np.float64)[0]
        parts = executor.map(_block_summary, (self._kind, stride, shift), placed, data.bounds)
        n = sum(p["n"] for p in parts)
        F = functools.reduce(np.add, [p["sum"] for p in parts])
        S = functools.reduce(np.add, [p["outer"] for p in parts])
        with np.errstate(invalid="ignore", divide="ignore"):
            cov = (S - np.outer(F, F) / n) / (n - 1)  # np.cov's ddof=1, about the shift
        return {"n": n, "cov": cov, "sample": np.concatenate([p["sample"] for p in parts])}

    # -- fitting ----------------------------------------------------------------

    def _needs_init(self, code: str) -> bool:
        name = self._attributes[code]
        return code in self.init_params or not hasattr(self, name)

    def fit(self, X: Any, lengths: Any = None, *, callback: Any = None) -> "_BaseHMM":
        """Estimate the parameters by EM.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or a Zarr path/URL
            Observations of all sequences, one after another (categorical:
            integer symbols, shape (n_samples, 1) or (n_samples,)); or a Zarr
            group holding ``X`` and ``offsets``.
        lengths : array-like of int, optional
            Lengths of the sequences in ``X`` (numpy input only); they must
            sum to ``n_samples``. None: one sequence.
        callback : callable, optional
            ``callback(event, info)`` with ``"start"``, ``"iteration"``
            (restart, iteration, mean_log_likelihood per step, delta, seconds,
            resumed, notes) and ``"end"`` events.

        Returns
        -------
        self
        """
        self._check_hyperparameters()
        executor = Executor.resolve(self.client, fan_in=self.fan_in)
        saved_rows = None
        if self.checkpoint_dir is not None and self.partition_rows is None:
            saved_rows = RunDirectory.saved_partition_rows(os.fspath(self.checkpoint_dir), self.storage_options)
        data = self._sequences(X, lengths, saved_rows)
        placed = executor.place(data, self._use_cache(data, executor))
        needs = {code for code in self._attributes if self._needs_init(code)}
        user = {code: np.array(getattr(self, name), dtype=np.float64)
                for code, name in self._attributes.items() if code not in needs}

        summary = None
        if self._kind == "categorical" or self._emission_summary_needed(needs):
            summary = self._summary(data, placed, executor)
        n_features = self._resolve_n_features(data, user, summary)
        limit = self.max_sequence_bytes or max(1, executor.memory_per_thread() // 4)
        seqdata.check_sequence_memory(data.offsets, self.n_components, n_features, limit)
        model = self._model(n_features)

        base_seed = _seed_from(self.random_state)
        run_dir = None
        if self.checkpoint_dir is not None:
            run_dir = RunDirectory(os.fspath(self.checkpoint_dir), self._fingerprint(data, user, n_features),
                                   base_seed, keep=self.keep_checkpoints, storage_options=self.storage_options,
                                   seed_is_fixed=self.random_state is not None)
            base_seed = run_dir.seed

        def initial_params(restart: int) -> Any:
            seed = _restart_seed(base_seed, restart)
            rng = np.random.RandomState(seed)
            K = self.n_components
            # hmmlearn's BaseHMM._init: one generator, startprob then transmat.
            startprob = user["s"] if "s" in user else rng.dirichlet(np.full(K, 1.0 / K))
            transmat = user["t"] if "t" in user else rng.dirichlet(np.full(K, 1.0 / K), size=K)
            emission = self._init_emission(needs, user, summary, seed, n_features)
            params = self._params_cls(startprob=np.asarray(startprob, dtype=np.float64),
                                      transmat=np.asarray(transmat, dtype=np.float64), **emission)
            self._check_transitions(params.startprob, params.transmat)
            self._check_emission(params, n_features)
            return params

        result = fit_with_restarts(
            model, data, placed, executor, n_init=self.n_init, initial_params=initial_params,
            params_cls=self._params_cls, max_iter=self.n_iter, tol=self.tol / data.n_samples,
            run_dir=run_dir, checkpoint_every=self.checkpoint_every,
            callback=chain_callbacks(callback, self._verbose_callback(data.n_samples)))
        best = result.best
        self._set_fitted(best, data, n_features)
        self.restarts_ = result.restarts
        self.best_restart_ = result.best_restart
        if (np.asarray(self.transmat_).sum(axis=1) == 0).any():
            warnings.warn("Some rows of transmat_ have zero sum because no transition from the "
                          "state was ever observed.", RuntimeWarning, stacklevel=2)
        if run_dir is not None:
            run_dir.store.write_json(self.history_, "history.json")
            self.save(run_dir.store.url.rstrip("/") + "/" + MODEL_DIRNAME, storage_options=self.storage_options)
        return self

    def _resolve_n_features(self, data: SequenceData, user: dict, summary: Any) -> int:
        return data.n_features

    def _verbose_callback(self, n_steps: int) -> Any:
        if not self.verbose:
            return None
        monitors: dict[int, ConvergenceMonitor] = {}

        def show(event: str, info: dict) -> None:
            if event != "iteration":
                return
            r = int(info.get("restart", 0))
            if r not in monitors:
                monitors[r] = ConvergenceMonitor(self.tol, self.n_iter, True)
                if self.n_init > 1:  # restarts advance together: label their lines
                    monitors[r].prefix = f"restart {r} "
            monitor = monitors[r]
            monitor.iter = info["iteration"] - 1
            monitor.report(info["mean_log_likelihood"] * n_steps)
        return show

    def _fingerprint(self, data: SequenceData, user: dict, n_features: int) -> dict:
        hyper = {k: (v if isinstance(v, (str, int, float, bool, type(None))) else digest(v))
                 for k, v in self.get_params().items()
                 if k not in ("client", "n_iter", "tol", "verbose", "checkpoint_dir", "checkpoint_every",
                              "keep_checkpoints", "storage_options", "cache", "max_sequence_bytes",
                              "random_state", "algorithm")}
        return {
            "data": data.fingerprint(),
            "settings": {"model": self._kind + "_hmm", **hyper, "n_features": int(n_features),
                         "user_params": {code: digest(v) for code, v in sorted(user.items())},
                         "partitions": [data.n_partitions, data.target_rows]},
        }

    def _set_fitted(self, state: EMState, data: SequenceData, n_features: int) -> None:
        p = state.params
        self.startprob_ = p.startprob
        self.transmat_ = p.transmat
        self._set_emission(p)
        self.n_features = n_features
        monitor = ConvergenceMonitor(self.tol, self.n_iter, self.verbose)
        for rec in state.history:
            monitor.history.append(rec.mean_log_likelihood * data.n_samples)
        monitor.iter = int(state.iteration)
        monitor.converged = bool(state.converged)
        self.monitor_ = monitor
        self.history_ = [r.to_json() for r in state.history]
        self.n_iter_ = int(state.iteration)

    def _params(self) -> Any:
        check_is_fitted(self, "startprob_")
        params = self._params_cls(startprob=np.asarray(self.startprob_, dtype=np.float64),
                                  transmat=np.asarray(self.transmat_, dtype=np.float64),
                                  **self._emission_params())
        self._check_transitions(params.startprob, params.transmat)
        return params

    def _fitted_model(self) -> Any:
        params = self._params()
        n_features = getattr(self, "n_features", None)
        if n_features is None:
            n_features = (params.emissionprob.shape[1] if self._kind == "categorical" else params.means.shape[-1])
        self._check_emission(params, n_features)
        return self._model(n_features), params

    # -- inference ----------------------------------------------------------------

    def _run(self, X: Any, lengths: Any, block_fn: Any, shared_rest: tuple) -> tuple[SequenceData, list]:
        """Apply a block function to every partition; in memory, directly on the driver."""
        data = self._sequences(X, lengths)
        model, params = self._fitted_model()
        shared = (model, params) + shared_rest
        if data.in_memory:
            return data, [block_fn(shared, x, w, a) for x, w, (a, _) in zip(data.x_refs, data.w_refs, data.bounds)]
        executor = Executor.resolve(self.client, fan_in=self.fan_in)
        placed = executor.place(data, cache=False)
        return data, executor.map(block_fn, shared, placed, data.bounds)

    def score(self, X: Any, lengths: Any = None) -> float:
        """Total log-likelihood of ``X`` under the model (a sum over sequences)."""
        _, parts = self._run(X, lengths, _block_score, ())
        return float(sum(float(p.sum()) for p in parts))

    def score_samples(self, X: Any, lengths: Any = None) -> tuple[float, np.ndarray]:
        """Total log-likelihood and the state posteriors of every sample, (n_samples, n_components)."""
        _, parts = self._run(X, lengths, _block_posteriors, ())
        return float(sum(float(p[0].sum()) for p in parts)), np.concatenate([p[1] for p in parts])

    def predict_proba(self, X: Any, lengths: Any = None) -> np.ndarray:
        """State posteriors of every sample, (n_samples, n_components)."""
        return self.score_samples(X, lengths)[1]

    def decode(self, X: Any, lengths: Any = None, algorithm: str | None = None) -> tuple[float, np.ndarray]:
        """Most likely state sequence.

        Returns
        -------
        log_prob : float
            Viterbi: log-probability of the best paths (summed over sequences).
            MAP: as hmmlearn 0.3.3, the sum of the largest posteriors.
        state_sequence : ndarray of shape (n_samples,)
        """
        algorithm = algorithm or self.algorithm
        if algorithm not in DECODER_ALGORITHMS:
            raise ConfigError(f"algorithm must be one of {', '.join(DECODER_ALGORITHMS)}; got {algorithm!r}")
        _, parts = self._run(X, lengths, _block_decode, (algorithm,))
        return float(sum(float(p[0].sum()) for p in parts)), np.concatenate([p[1] for p in parts])

    def predict(self, X: Any, lengths: Any = None) -> np.ndarray:
        """Most likely state of every sample (by ``algorithm``), (n_samples,)."""
        return self.decode(X, lengths)[1]

    def predict_to_zarr(self, X: Any, path: str, lengths: Any = None, *, algorithm: str | None = None,
                        posteriors: bool = True, chunk_rows: int | None = None) -> str:
        """Write decoded states (and posteriors) of a whole dataset to a Zarr group.

        Partitions are decoded in parallel by the workers and written as
        ``states`` (n_samples,) int32, ``log_prob`` (n_sequences,) float64 (per
        sequence, what ``decode`` sums: the Viterbi path's log-probability, or
        for "map" hmmlearn's sum of the largest posteriors), optionally ``posteriors``
        (n_samples, n_components) float64, and ``offsets``. Memory stays at a
        few partitions' results per worker; nothing passes through the driver.

        Parameters
        ----------
        X : Zarr path/URL of a sequence dataset (or numpy X with ``lengths``)
        path : where to write the output group (replaced if it exists)
        algorithm : "viterbi" or "map" (default: the estimator's ``algorithm``)
        posteriors : also write the state posteriors
        chunk_rows : rows per output chunk (default: about 128 MiB of posteriors)

        Returns
        -------
        str : ``path``
        """
        algorithm = algorithm or self.algorithm
        if algorithm not in DECODER_ALGORITHMS:
            raise ConfigError(f"algorithm must be one of {', '.join(DECODER_ALGORITHMS)}; got {algorithm!r}")
        data = self._sequences(X, lengths)
        model, params = self._fitted_model()
        K = self.n_components
        outputs = [("states", "row", (), np.int32), ("log_prob", "sequence", (), np.float64)]
        if posteriors:
            outputs.append(("posteriors", "row", (K,), np.float64))
        executor = Executor.resolve(self.client, fan_in=self.fan_in)
        seqdata.write_partition_outputs(
            data, _block_predict, (model, (params, algorithm, bool(posteriors))), os.fspath(path), outputs,
            client=executor.client, chunk_rows=chunk_rows, storage_options=self.storage_options,
            attrs={"algorithm": algorithm, "model_kind": self._kind + "_hmm"})
        return os.fspath(path)

    def sample(self, n_samples: int = 1, random_state: Any = None, currstate: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Draw one sequence of ``n_samples`` steps, as hmmlearn's ``sample`` (same draws).

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        state_sequence : ndarray of shape (n_samples,)
        """
        from sklearn.utils import check_random_state

        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
            raise ConfigError(f"n_samples must be an integer >= 1; got {n_samples!r}")
        _, params = self._fitted_model()
        rs = check_random_state(self.random_state if random_state is None else random_state)
        return hmm_models.sample(params, self._kind, getattr(self, "covariance_type", None), int(n_samples),
                                 rs, currstate)

    def get_stationary_distribution(self) -> np.ndarray:
        """Stationary distribution of the states (left eigenvector of ``transmat_`` for eigenvalue 1)."""
        from scipy import linalg

        check_is_fitted(self, "transmat_")
        eigvals, eigvecs = linalg.eig(np.asarray(self.transmat_).T)
        eigvec = np.real_if_close(eigvecs[:, np.argmax(eigvals)])
        return eigvec / eigvec.sum()

    def _n_parameters(self) -> int:
        return int(sum(self._n_fit_scalars().values()))

    def aic(self, X: Any, lengths: Any = None) -> float:
        """Akaike information criterion, ``−2 log L + 2 · free parameters``."""
        return -2.0 * self.score(X, lengths) + 2.0 * self._n_parameters()

    def bic(self, X: Any, lengths: Any = None) -> float:
        """Bayesian information criterion, ``−2 log L + free parameters · log n_samples``."""
        data = self._sequences(X, lengths)
        return -2.0 * self.score(X, lengths) + self._n_parameters() * math.log(data.n_samples)

    # -- persistence ----------------------------------------------------------

    def save(self, path: str, *, storage_options: dict | None = None) -> None:
        """Write the fitted model as a Zarr group (an xarray Dataset; no pickle)."""

        import xarray as xr

        check_is_fitted(self, "startprob_")
        variables = {"startprob": (("state",), np.asarray(self.startprob_)),
                     "transmat": (("state", "state_to"), np.asarray(self.transmat_))}
        for name, value in self._emission_params().items():
            value = np.asarray(value)
            variables[name] = (tuple(f"{name}_dim_{i}" for i in range(value.ndim)), value)
        hyper = {}
        for k, v in self.get_params().items():
            if k == "client":
                continue
            if isinstance(v, np.ndarray):
                v = v.tolist()
            if isinstance(v, np.random.RandomState):
                v = None
            hyper[k] = v
        ds = xr.Dataset(variables)
        ds.attrs.update(dem_format_version=FORMAT_VERSION, model_kind=self._kind + "_hmm",
                        hyperparameters=json.dumps(hyper), n_features=int(self.n_features),
                        history=json.dumps(getattr(self, "history_", [])),
                        monitor=json.dumps({"history": list(getattr(self, "monitor_", ConvergenceMonitor(0, 0, 0)).history),
                                            "converged": bool(getattr(getattr(self, "monitor_", None), "converged", False))}))
        from dem.io import write_atomically

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            write_atomically(ds, os.fspath(path), storage_options)


def load_hmm(path: str, *, storage_options: dict | None = None) -> _BaseHMM:
    """Read an HMM written by ``save`` (or the ``model.zarr`` of a run directory)."""
    import xarray as xr

    from dem.errors import CheckpointError

    path = os.fspath(path)
    if "://" not in path and os.path.isdir(os.path.join(path, MODEL_DIRNAME)):
        path = os.path.join(path, MODEL_DIRNAME)
    try:
        ds = xr.open_zarr(path, consolidated=False, storage_options=storage_options).load()
    except Exception as exc:
        raise CheckpointError(f"cannot read a dem model at {path!r}: {exc}") from None
    kind = ds.attrs.get("model_kind")
    classes = {"gaussian_hmm": GaussianHMM, "categorical_hmm": CategoricalHMM, "gmm_hmm": GMMHMM}
    if ds.attrs.get("dem_format_version") != FORMAT_VERSION or kind not in classes:
        raise CheckpointError(f"{path!r} is not a dem HMM (model_kind {kind!r})")
    from dem.io import verify_model

    verify_model(ds, path, required=("startprob", "transmat"))  # refuses a damaged model in one line
    hyper = json.loads(ds.attrs["hyperparameters"])
    est = classes[kind](**hyper)
    est.startprob_ = ds["startprob"].values
    est.transmat_ = ds["transmat"].values
    est._set_emission(est._params_cls(startprob=est.startprob_, transmat=est.transmat_,
                                      **{n: ds[n].values for n in est._emission_names()}))
    est.n_features = int(ds.attrs["n_features"])
    est.history_ = json.loads(ds.attrs.get("history", "[]"))
    mon = json.loads(ds.attrs.get("monitor", "{}"))
    est.monitor_ = ConvergenceMonitor(est.tol, est.n_iter, est.verbose)
    est.monitor_.history.extend(mon.get("history", []))
    est.monitor_.iter = len(est.monitor_.history)
    est.monitor_.converged = bool(mon.get("converged", False))
    est.n_iter_ = est.monitor_.iter
    return est


def _check_distribution(name: str, value: Any, shape: tuple[int, ...], rows: bool = False) -> np.ndarray:
    """A probability vector (or matrix of row distributions), or a ConfigError."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != shape:
        raise ConfigError(f"{name} must have shape {shape}; got {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ConfigError(f"{name} must hold finite probabilities >= 0")
    sums = arr.sum(axis=-1)
    # hmmlearn's tolerance (np.allclose(s, 1)).
    bad = ~np.isclose(sums, 1.0)
    if np.any(bad):
        if not rows:
            raise ConfigError(f"{name} must sum to 1; it sums to {float(sums):.6g}")
        i = int(np.flatnonzero(bad)[0])
        if sums[i] == 0:
            raise ConfigError(f"row {i} of {name} is all zeros; every row must be a distribution "
                              "that sums to 1")
        raise ConfigError(f"row {i} of {name} sums to {float(sums[i]):.6g}; every row must sum to 1")
    return arr


def _kmeans_centres(X: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn KMeans as hmmlearn calls it (``n_init=10``), on one thread."""
    from sklearn.cluster import KMeans

    with threadpool_limits(limits=1):
        km = KMeans(n_clusters=k, random_state=seed, n_init=10)
        labels = km.fit_predict(X)
    return km.cluster_centers_, labels


# -- Gaussian -------------------------------------------------------------------


class _GaussianPriorsMixin:
    def _check_covars(self, covars: np.ndarray, K: int, D: int, where: str, ct: str, lead: tuple = ()) -> None:
        shape = lead + {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}[ct]
        if covars.shape != shape:
            raise ConfigError(f"{where} must have shape {shape} for covariance_type={ct!r}; got {covars.shape}")
        if not np.isfinite(covars).all():
            raise ConfigError(f"{where} must be finite")
        if ct in ("diag", "spherical"):
            if not (covars > 0).all():
                raise ConfigError(f"{where} must be positive for covariance_type={ct!r}")
            return
        mats = covars.reshape(-1, D, D)
        for i, c in enumerate(mats):
            if not np.allclose(c, c.T) or np.linalg.eigvalsh(c).min() <= 0:
                raise ConfigError(f"{where}[{i}] must be symmetric, positive-definite")


class GaussianHMM(_GaussianPriorsMixin, _BaseHMM):
    """Hidden Markov model with Gaussian emissions (hmmlearn's ``GaussianHMM``), on Dask.

    Parameters
    ----------
    n_components : int, default=1
        Number of states.
    covariance_type : {"spherical", "diag", "full", "tied"}, default="diag"
    min_covar : float, default=1e-3
        Added to the diagonal of the data covariance that initialises
        ``covars_`` (as in hmmlearn 0.3.3, where it is used only there).
    startprob_prior, transmat_prior : float or array, default=1.0
        Dirichlet priors of ``startprob_`` and the rows of ``transmat_``.
    means_prior, means_weight : float or array, default=0
        Normal prior of ``means_`` (mean, precision).
    covars_prior, covars_weight : float or array, default=1e-2, 1
        Inverse-gamma (diag, spherical) or inverse-Wishart (full, tied) prior
        of the covariances, applied as hmmlearn applies it.
    algorithm : {"viterbi", "map"}, default="viterbi"
        Decoder of ``decode``/``predict``.
    random_state : int, RandomState or None
        Seed of the initialisation; an int gives hmmlearn's starting point.
    n_iter : int, default=10
        Maximum number of EM iterations.
    tol : float, default=1e-2
        Convergence threshold on the gain of the total log-likelihood.
    verbose : bool, default=False
        Print one line per iteration to stderr, as hmmlearn does.
    params, init_params : str, default="stmc"
        Parameters updated by EM / initialised before it: 's' startprob,
        't' transmat, 'm' means, 'c' covars. An attribute set before ``fit``
        whose letter is not in ``init_params`` is used as given.
    implementation : {"log", "scaling"}, default="log"
        Accepted for hmmlearn compatibility; dem always runs the scaled
        recursions with exact log-space fallback (:mod:`dem.models.hmm_lattice`).
    client : distributed.Client, optional
        Cluster to run on (default: the active client, else local threads).
    partition_rows : int, optional
        Target rows per partition (cut at sequence boundaries). Default:
        about 16–128 MiB of E-step working set, from the data alone.
    n_init : int, default=1
        Initialisations; the best final log-likelihood is kept. Restart 0
        uses ``random_state`` itself.
    fan_in : int, default=8
        Children per node of the reduction tree.
    cache : {"auto", True, False}, default="auto"
        Keep partitions in (worker) memory between iterations.
    checkpoint_dir : str, optional
        Run directory for checkpoints, ``history.json`` and ``model.zarr``;
        a matching run there is resumed exactly.
    checkpoint_every : int, default=1
    keep_checkpoints : int, default=3
    storage_options : dict, optional
        fsspec options for Zarr URLs and ``checkpoint_dir``.
    max_sequence_bytes : int, optional
        Memory one sequence's E-step may use (default: a quarter of a worker
        thread's memory); longer sequences are refused with a DataError.

    Attributes
    ----------
    startprob_ : (n_components,)
    transmat_ : (n_components, n_components)
    means_ : (n_components, n_features)
    covars_ : (n_components, n_features, n_features)
        Full covariance matrices whatever ``covariance_type`` (hmmlearn's
        property); ``_covars_`` holds the stored form.
    n_features : int
    monitor_ : ConvergenceMonitor
    history_ : list of dict
        dem's per-iteration records (mean log-likelihood per step, Δ, seconds…).
    """

    _kind = "gaussian"
    _params_cls = GaussianHMMParams
    _attributes = {"s": "startprob_", "t": "transmat_", "m": "means_", "c": "_covars_"}

    def __init__(self, n_components: int = 1, covariance_type: str = "diag", min_covar: float = 1e-3,
                 startprob_prior: Any = 1.0, transmat_prior: Any = 1.0, means_prior: Any = 0,
                 means_weight: Any = 0, covars_prior: Any = 1e-2, covars_weight: Any = 1,
                 algorithm: str = "viterbi", random_state: Any = None, n_iter: int = 10, tol: float = 1e-2,
                 verbose: bool = False, params: str = "stmc", init_params: str = "stmc",
                 implementation: str = "log", *, client: Any = None, partition_rows: int | None = None,
                 n_init: int = 1, fan_in: int = DEFAULT_FAN_IN, cache: Any = "auto",
                 checkpoint_dir: str | None = None, checkpoint_every: int = 1, keep_checkpoints: int = 3,
                 storage_options: dict | None = None, max_sequence_bytes: int | None = None) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.min_covar = min_covar
        self.startprob_prior = startprob_prior
        self.transmat_prior = transmat_prior
        self.means_prior = means_prior
        self.means_weight = means_weight
        self.covars_prior = covars_prior
        self.covars_weight = covars_weight
        self.algorithm = algorithm
        self.random_state = random_state
        self.n_iter = n_iter
        self.tol = tol
        self.verbose = verbose
        self.params = params
        self.init_params = init_params
        self.implementation = implementation
        self.client = client
        self.partition_rows = partition_rows
        self.n_init = n_init
        self.fan_in = fan_in
        self.cache = cache
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.keep_checkpoints = keep_checkpoints
        self.storage_options = storage_options
        self.max_sequence_bytes = max_sequence_bytes

    @property
    def covars_(self) -> np.ndarray:
        """Covariances as full matrices, (n_components, n_features, n_features)."""
        if "_covars_" not in self.__dict__:
            raise AttributeError("covars_")
        covars = self._covars_
        if "means_" in self.__dict__:
            D = np.shape(self.means_)[-1]
        elif self.covariance_type != "spherical":
            D = covars.shape[-1]
        else:
            D = getattr(self, "n_features", None) or 1
        return hmm_models.full_covariances(covars, self.covariance_type, self.n_components, D)

    @covars_.setter
    def covars_(self, covars: Any) -> None:
        self._covars_ = np.array(covars, dtype=np.float64, copy=True)

    def _model(self, n_features: int) -> hmm_models.GaussianHMMModel:
        return hmm_models.GaussianHMMModel(
            n_components=int(self.n_components), params=self.params, startprob_prior=self.startprob_prior,
            transmat_prior=self.transmat_prior, covariance_type=self.covariance_type,
            means_prior=self.means_prior, means_weight=self.means_weight, covars_prior=self.covars_prior,
            covars_weight=self.covars_weight)

    def _init_emission(self, needs: set[str], user: dict, summary: Any, seed: int, n_features: int) -> dict:
        K, D, ct = self.n_components, n_features, self.covariance_type
        if "m" in needs:
            sample = summary["sample"]
            if sample.shape[0] < K:
                raise DataError(f"X has {sample.shape[0]} samples, fewer than n_components={K}")
            means = _kmeans_centres(sample, K, seed)[0]
        else:
            means = user["m"]
        if "c" in needs:
            cv = np.atleast_2d(summary["cov"]) + self.min_covar * np.eye(D)
            covars = {"spherical": np.full(K, cv.mean()), "tied": cv, "diag": np.tile(np.diag(cv), (K, 1)),
                      "full": np.tile(cv, (K, 1, 1))}[ct]
        else:
            covars = user["c"]
        return {"means": np.asarray(means, dtype=np.float64), "covars": np.asarray(covars, dtype=np.float64)}

    def _check_emission(self, p: GaussianHMMParams, n_features: int) -> None:
        K, D = self.n_components, n_features
        if p.means.shape != (K, D):
            raise ConfigError(f"means_ must have shape ({K}, {D}); got {p.means.shape}")
        if not np.isfinite(p.means).all():
            raise ConfigError("means_ must be finite")
        self._check_covars(p.covars, K, D, "covars_", self.covariance_type)

    def _set_emission(self, p: GaussianHMMParams) -> None:
        self.means_ = p.means
        self._covars_ = p.covars

    def _emission_names(self) -> tuple[str, ...]:
        return ("means", "covars")

    def _emission_params(self) -> dict[str, np.ndarray]:
        return {"means": np.asarray(self.means_, dtype=np.float64),
                "covars": np.asarray(self._covars_, dtype=np.float64)}

    def _n_fit_scalars(self) -> dict[str, int]:
        nc, nf = self.n_components, self.n_features
        return {"s": nc - 1, "t": nc * (nc - 1), "m": nc * nf,
                "c": {"spherical": nc, "diag": nc * nf, "full": nc * nf * (nf + 1) // 2,
                      "tied": nf * (nf + 1) // 2}[self.covariance_type]}


# -- categorical ----------------------------------------------------------------


class CategoricalHMM(_BaseHMM):
    """Hidden Markov model with categorical emissions (hmmlearn's ``CategoricalHMM``), on Dask.

    ``X`` holds integer symbols ``0 … n_features − 1``, shape (n_samples, 1)
    or (n_samples,). Parameters are hmmlearn's (``emissionprob_prior``:
    Dirichlet prior of each state's emission row; ``n_features``: number of
    symbols, inferred from the data as ``max + 1`` when None; ``params`` /
    ``init_params`` letters 's', 't', 'e') plus dem's, as for
    :class:`GaussianHMM`.

    Attributes
    ----------
    startprob_, transmat_ : as GaussianHMM
    emissionprob_ : (n_components, n_features)
    n_features : int
    monitor_, history_ : as GaussianHMM
    """

    _kind = "categorical"
    _params_cls = CategoricalHMMParams
    _attributes = {"s": "startprob_", "t": "transmat_", "e": "emissionprob_"}

    def __init__(self, n_components: int = 1, startprob_prior: Any = 1.0, transmat_prior: Any = 1.0, *,
                 emissionprob_prior: Any = 1.0, n_features: int | None = None, algorithm: str = "viterbi",
                 random_state: Any = None, n_iter: int = 10, tol: float = 1e-2, verbose: bool = False,
                 params: str = "ste", init_params: str = "ste", implementation: str = "log",
                 client: Any = None, partition_rows: int | None = None, n_init: int = 1,
                 fan_in: int = DEFAULT_FAN_IN, cache: Any = "auto", checkpoint_dir: str | None = None,
                 checkpoint_every: int = 1, keep_checkpoints: int = 3, storage_options: dict | None = None,
                 max_sequence_bytes: int | None = None) -> None:
        self.n_components = n_components
        self.startprob_prior = startprob_prior
        self.transmat_prior = transmat_prior
        self.emissionprob_prior = emissionprob_prior
        self.n_features = n_features
        self.algorithm = algorithm
        self.random_state = random_state
        self.n_iter = n_iter
        self.tol = tol
        self.verbose = verbose
        self.params = params
        self.init_params = init_params
        self.implementation = implementation
        self.client = client
        self.partition_rows = partition_rows
        self.n_init = n_init
        self.fan_in = fan_in
        self.cache = cache
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.keep_checkpoints = keep_checkpoints
        self.storage_options = storage_options
        self.max_sequence_bytes = max_sequence_bytes

    def _check_hyperparameters(self) -> None:
        super()._check_hyperparameters()
        if self.n_features is not None and (isinstance(self.n_features, bool) or
                                            not isinstance(self.n_features, (int, np.integer)) or self.n_features < 1):
            raise ConfigError(f"n_features must be None or an integer >= 1; got {self.n_features!r}")

    def _resolve_n_features(self, data: SequenceData, user: dict, summary: Any) -> int:
        if self.n_features is not None:
            S = int(self.n_features)
        elif "e" in user:
            S = int(np.atleast_2d(user["e"]).shape[1])
        else:
            S = summary["max"] + 1
        if summary["max"] >= S:
            raise DataError(f"the largest symbol is {summary['max']} but the model only emits "
                            f"symbols 0…{S - 1} (n_features={S})")
        return S

    def _model(self, n_features: int) -> hmm_models.CategoricalHMMModel:
        return hmm_models.CategoricalHMMModel(
            n_components=int(self.n_components), params=self.params, startprob_prior=self.startprob_prior,
            transmat_prior=self.transmat_prior, emissionprob_prior=self.emissionprob_prior)

    def _emission_summary_needed(self, needs: set[str]) -> bool:
        return True

    def _init_emission(self, needs: set[str], user: dict, summary: Any, seed: int, n_features: int) -> dict:
        if "e" in needs:
            # hmmlearn: a fresh RandomState(random_state), then rand(K, S), rows normalised.
            e = np.random.RandomState(seed).rand(self.n_components, n_features)
            e /= e.sum(axis=1, keepdims=True)
        else:
            e = np.atleast_2d(user["e"])
        return {"emissionprob": np.asarray(e, dtype=np.float64)}

    def _check_emission(self, p: CategoricalHMMParams, n_features: int) -> None:
        _check_distribution("emissionprob_", p.emissionprob, (self.n_components, n_features), rows=True)

    def _set_emission(self, p: CategoricalHMMParams) -> None:
        self.emissionprob_ = p.emissionprob

    def _emission_names(self) -> tuple[str, ...]:
        return ("emissionprob",)

    def _emission_params(self) -> dict[str, np.ndarray]:
        return {"emissionprob": np.atleast_2d(np.asarray(self.emissionprob_, dtype=np.float64))}

    def _n_fit_scalars(self) -> dict[str, int]:
        nc, nf = self.n_components, self.n_features
        return {"s": nc - 1, "t": nc * (nc - 1), "e": nc * (nf - 1)}


# -- Gaussian mixture emissions ---------------------------------------------------


class GMMHMM(_GaussianPriorsMixin, _BaseHMM):
    """Hidden Markov model with Gaussian-mixture emissions (hmmlearn's ``GMMHMM``), on Dask.

    Parameters are hmmlearn's (``n_mix`` components per state;
    ``covariance_type`` "tied" shares one covariance among a state's
    components; ``weights_prior``, ``means_prior``, ``means_weight``,
    ``covars_prior``, ``covars_weight`` with hmmlearn's per-type defaults when
    None; ``params``/``init_params`` letters 's', 't', 'm', 'c', 'w') plus
    dem's, as for :class:`GaussianHMM`.

    Attributes
    ----------
    startprob_, transmat_ : as GaussianHMM
    weights_ : (n_components, n_mix)
    means_ : (n_components, n_mix, n_features)
    covars_ : (K, M) spherical, (K, M, D) diag, (K, M, D, D) full, (K, D, D) tied
    n_features : int
    monitor_, history_ : as GaussianHMM
    """

    _kind = "gmm"
    _params_cls = GMMHMMParams
    _attributes = {"s": "startprob_", "t": "transmat_", "w": "weights_", "m": "means_", "c": "covars_"}

    def __init__(self, n_components: int = 1, n_mix: int = 1, min_covar: float = 1e-3,
                 startprob_prior: Any = 1.0, transmat_prior: Any = 1.0, weights_prior: Any = 1.0,
                 means_prior: Any = 0.0, means_weight: Any = 0.0, covars_prior: Any = None,
                 covars_weight: Any = None, algorithm: str = "viterbi", covariance_type: str = "diag",
                 random_state: Any = None, n_iter: int = 10, tol: float = 1e-2, verbose: bool = False,
                 params: str = "stmcw", init_params: str = "stmcw", implementation: str = "log", *,
                 client: Any = None, partition_rows: int | None = None, n_init: int = 1,
                 fan_in: int = DEFAULT_FAN_IN, cache: Any = "auto", checkpoint_dir: str | None = None,
                 checkpoint_every: int = 1, keep_checkpoints: int = 3, storage_options: dict | None = None,
                 max_sequence_bytes: int | None = None) -> None:
        self.n_components = n_components
        self.n_mix = n_mix
        self.min_covar = min_covar
        self.startprob_prior = startprob_prior
        self.transmat_prior = transmat_prior
        self.weights_prior = weights_prior
        self.means_prior = means_prior
        self.means_weight = means_weight
        self.covars_prior = covars_prior
        self.covars_weight = covars_weight
        self.algorithm = algorithm
        self.covariance_type = covariance_type
        self.random_state = random_state
        self.n_iter = n_iter
        self.tol = tol
        self.verbose = verbose
        self.params = params
        self.init_params = init_params
        self.implementation = implementation
        self.client = client
        self.partition_rows = partition_rows
        self.n_init = n_init
        self.fan_in = fan_in
        self.cache = cache
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.keep_checkpoints = keep_checkpoints
        self.storage_options = storage_options
        self.max_sequence_bytes = max_sequence_bytes

    def _check_hyperparameters(self) -> None:
        super()._check_hyperparameters()
        if isinstance(self.n_mix, bool) or not isinstance(self.n_mix, (int, np.integer)) or self.n_mix < 1:
            raise ConfigError(f"n_mix must be an integer >= 1; got {self.n_mix!r}")

    def _priors(self, n_features: int) -> dict[str, np.ndarray]:
        """hmmlearn's ``_init_covar_priors`` and ``_fix_priors_shape``, without mutating self."""
        K, D, M, ct = self.n_components, n_features, self.n_mix, self.covariance_type
        default_prior, default_weight = {
            "full": (0.0, -(1.0 + D + 1.0)), "tied": (0.0, -(M + D + 1.0)),
            "diag": (-1.5, 0.0), "spherical": (-(M + 2.0) / 2.0, 0.0)}[ct]
        cp = default_prior if self.covars_prior is None else self.covars_prior
        cw = default_weight if self.covars_weight is None else self.covars_weight
        cov_shape, weight_shape = {"full": ((K, M, D, D), (K, M)), "tied": ((K, D, D), (K,)),
                                   "diag": ((K, M, D), (K, M, D)), "spherical": ((K, M), (K, M))}[ct]

        def shaped(name: str, v: Any, shape: tuple) -> np.ndarray:
            try:
                return np.broadcast_to(np.asarray(v, dtype=np.float64), shape).copy()
            except ValueError:
                raise ConfigError(f"{name} cannot be broadcast to shape {shape}; got shape "
                                  f"{np.shape(v)}") from None

        return {"weights_prior": shaped("weights_prior", self.weights_prior, (K, M)),
                "means_prior": shaped("means_prior", self.means_prior, (K, M, D)),
                "means_weight": shaped("means_weight", self.means_weight, (K, M)),
                "covars_prior": shaped("covars_prior", cp, cov_shape),
                "covars_weight": shaped("covars_weight", cw, weight_shape)}

    def _model(self, n_features: int) -> hmm_models.GMMHMMModel:
        return hmm_models.GMMHMMModel(
            n_components=int(self.n_components), params=self.params, startprob_prior=self.startprob_prior,
            transmat_prior=self.transmat_prior, n_mix=int(self.n_mix), covariance_type=self.covariance_type,
            **self._priors(n_features))

    def _init_emission(self, needs: set[str], user: dict, summary: Any, seed: int, n_features: int) -> dict:
        K, M, D, ct = self.n_components, self.n_mix, n_features, self.covariance_type
        cv = None
        if summary is not None:
            cv = np.atleast_2d(summary["cov"]) + self.min_covar * np.eye(D)
        means = user.get("m")
        if "m" in needs:
            # hmmlearn's GMMHMM._init: k-means into states, then into mixture components.
            sample = summary["sample"]
            if sample.shape[0] < K:
                raise DataError(f"X has {sample.shape[0]} samples, fewer than n_components={K}")
            centres, labels = _kmeans_centres(sample, K, seed)
            main_centroid = centres.mean(axis=0)
            rng = np.random.RandomState(seed)
            parts = []
            for label in range(K):
                cluster = sample[labels == label]
                if cluster.shape[0] >= M:
                    parts.append(_kmeans_centres(cluster, M, seed)[0])
                else:
                    parts.append(rng.multivariate_normal(main_centroid, cov=cv, size=M))
            means = np.stack(parts)
        weights = np.full((K, M), 1.0 / M) if "w" in needs else user["w"]
        if "c" in needs:
            covars = {"tied": np.tile(cv, (K, 1, 1)), "full": np.tile(cv, (K, M, 1, 1)),
                      "diag": np.tile(np.diag(cv), (K, M, 1)), "spherical": np.full((K, M), cv.mean())}[ct]
        else:
            covars = user["c"]
        return {"weights": np.asarray(weights, dtype=np.float64), "means": np.asarray(means, dtype=np.float64),
                "covars": np.asarray(covars, dtype=np.float64)}

    def _check_emission(self, p: GMMHMMParams, n_features: int) -> None:
        K, M, D, ct = self.n_components, self.n_mix, n_features, self.covariance_type
        _check_distribution("weights_", p.weights, (K, M), rows=True)
        if p.means.shape != (K, M, D):
            raise ConfigError(f"means_ must have shape ({K}, {M}, {D}); got {p.means.shape}")
        if not np.isfinite(p.means).all():
            raise ConfigError("means_ must be finite")
        if ct == "tied":
            self._check_covars(p.covars, K, D, "covars_", "full")
        else:
            self._check_covars(p.covars.reshape((K * M,) + p.covars.shape[2:]) if p.covars.shape[:2] == (K, M)
                               else p.covars, K * M, D, "covars_", ct)

    def _set_emission(self, p: GMMHMMParams) -> None:
        self.weights_ = p.weights
        self.means_ = p.means
        self.covars_ = p.covars

    def _emission_names(self) -> tuple[str, ...]:
        return ("weights", "means", "covars")

    def _emission_params(self) -> dict[str, np.ndarray]:
        return {"weights": np.asarray(self.weights_, dtype=np.float64),
                "means": np.asarray(self.means_, dtype=np.float64),
                "covars": np.asarray(self.covars_, dtype=np.float64)}

    def _n_fit_scalars(self) -> dict[str, int]:
        nc, nf, nm = self.n_components, self.n_features, self.n_mix
        return {"s": nc - 1, "t": nc * (nc - 1), "m": nc * nm * nf,
                "c": {"spherical": nc * nm, "diag": nc * nm * nf, "full": nc * nm * nf * (nf + 1) // 2,
                      "tied": nc * nf * (nf + 1) // 2}[self.covariance_type],
                "w": nm - 1}
