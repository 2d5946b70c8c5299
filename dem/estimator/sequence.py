"""hmmlearn's API on the fit template: what the three HMM estimators share.

``GaussianHMM``, ``CategoricalHMM`` and ``GMMHMM`` (in their family modules)
take hmmlearn's parameters and expose its fitted attributes; given the same
starting parameters (``init_params=""`` and ``startprob_`` … set before
``fit``) they reach hmmlearn 0.3.3's numbers. They also take dem's engine
parameters and fit in-memory data (``X`` with ``lengths``, as hmmlearn) or a
Zarr group holding ``X`` and ``offsets`` (:mod:`dem.data.sequences`).

Convergence
-----------
hmmlearn stops when the gain of the *total* log-likelihood is below ``tol``.
dem's monitor tests ``|Δ objective| < tol`` with the objective per time
step; the estimators pass ``tol / n_steps``, so the test is hmmlearn's on
the absolute change (a fall of more than ``tol``, which EM never makes up
to round-off, keeps iterating where hmmlearn would stop). ``monitor_.history``
holds the total log-likelihood of every iteration, like hmmlearn's.
``monitor_.converged`` is True only when the tolerance was met; hmmlearn's
is also True when ``n_iter`` was reached.
"""

from __future__ import annotations

import logging
import math
import sys
import warnings
from collections import deque
from typing import Any, ClassVar

import numpy as np
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from dem.errors import ConfigError
from dem.estimator.base import EMEstimator
from dem.estimator.params import Integral, Interval, Real, StrOptions
from dem.estimator.sequence_outputs import HMMOutputs

#: hmmlearn reports these through :mod:`logging` (its ``_log.warning``), with these words.
_log = logging.getLogger(__name__)
OVERWRITTEN = ("Even though the %r attribute is set, it will be overwritten during initialization because "
               "'init_params' contains %r")
DEGENERATE = ("Fitting a model with %d free scalar parameters with only %d data points will result in a "
              "degenerate solution.")


class ConvergenceMonitor:
    """What a fit did, shaped like hmmlearn's ``ConvergenceMonitor``.

    Attributes
    ----------
    tol, n_iter, verbose : the estimator's settings
    history : deque of float
        Total log-likelihood of the data at every iteration.
    iter : int
    converged : bool
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


def check_distribution(name: str, value: Any, shape: tuple[int, ...], rows: bool = False) -> np.ndarray:
    """A probability vector (or matrix of row distributions), or a ConfigError."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != shape:
        raise ConfigError(f"{name} must have shape {shape}; got {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ConfigError(f"{name} must hold finite probabilities >= 0")
    sums = arr.sum(axis=-1)
    bad = ~np.isclose(sums, 1.0)  # hmmlearn's tolerance (np.allclose(s, 1))
    if np.any(bad):
        if not rows:
            raise ConfigError(f"{name} must sum to 1; it sums to {float(sums):.6g}")
        i = int(np.flatnonzero(bad)[0])
        if sums[i] == 0:
            raise ConfigError(f"row {i} of {name} is all zeros; every row must be a distribution that sums to 1")
        raise ConfigError(f"row {i} of {name} sums to {float(sums[i]):.6g}; every row must sum to 1")
    return arr


def kmeans_centres(X: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn KMeans as hmmlearn calls it (``n_init=10``), on one thread."""
    from sklearn.cluster import KMeans

    with threadpool_limits(limits=1):
        km = KMeans(n_clusters=k, random_state=seed, n_init=10)
        labels = km.fit_predict(X)
    return km.cluster_centers_, labels


# -- block functions (module level, so they pickle) ---------------------------


def _block_summary(shared: tuple, part: Any) -> dict:
    """One pass over a partition for initialisation: checks, moments, an even sample.

    ``shared`` is ``(family, stride, shift)``: the family checks the block;
    Gaussian kinds return the row count, first and second moments about
    ``shift`` and every ``stride``-th global row; categorical the smallest
    and largest symbol.
    """
    family, stride, shift = shared
    X = family.check_block(None, part.X, part.start)
    if shift is None:
        return {"min": int(X.min()), "max": int(X.max())}
    Xc = np.asarray(X, dtype=np.float64) - shift
    first = (-part.start) % stride
    return {"n": X.shape[0], "sum": Xc.sum(axis=0), "outer": Xc.T @ Xc,
            "sample": np.asarray(X[first::stride], dtype=np.float64)}


class HMMEstimator(HMMOutputs, EMEstimator):
    """What the HMM estimators share (see the module docstring).

    Fitting lives here; what a fitted model gives back (scores, decoding,
    sampling, its saved form) in :class:`~dem.estimator.sequence_outputs.HMMOutputs`.
    """

    _max_iter_param = "n_iter"
    _tol_is_total = True
    _tol_rule = "on the total log-likelihood, hmmlearn's rule"
    _warn_not_converged = False
    # init_params are parameter letters here, not a centre-placing method; no annealing.
    _config_excluded = frozenset({"fit.init_params", "fit.beta_init", "fit.beta_rate"})
    _symbols: ClassVar[bool] = False
    #: (steps × states) arrays one sequence's forward–backward holds (hmm_lattice.LATTICE_ARRAYS)
    _lattice_arrays: ClassVar[int] = 8
    #: hmmlearn letter → fitted attribute holding that parameter
    _attributes: ClassVar[dict[str, str]] = {"s": "startprob_", "t": "transmat_"}
    _parameter_constraints = {
        **{k: v for k, v in EMEstimator._parameter_constraints.items()
           if k not in ("max_iter", "verbose_interval")},
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "n_iter": [Interval(Integral, 0, None, closed="left")],
        "algorithm": [StrOptions({"viterbi", "map"})],
        "implementation": [StrOptions({"log", "scaling"})],
        "params": [str],
        "init_params": [str],
        "max_sequence_bytes": [Interval(Integral, 1, None, closed="left"), None],
        "startprob_prior": ["array-like", Real],
        "transmat_prior": ["array-like", Real],
        "verbose": ["boolean", Integral],
    }

    # -- hooks of an emission family's estimator ----------------------------------------

    def _family(self, n_features: int) -> Any:
        raise NotImplementedError

    def _init_emission(self, needs: set[str], user: dict, summary: Any, seed: int, n_features: int) -> dict:
        raise NotImplementedError

    def _check_emission(self, p: Any, n_features: int, fitted: bool = False) -> None:
        """A ConfigError for emission parameters of the wrong shape or value.

        ``fitted``: parameters EM produced (or that inference is about to use)
        are held only to what the densities can evaluate; a degenerate fit
        (a singular covariance, a variance a negative prior drove below zero)
        is scored as hmmlearn scores it.
        """
        raise NotImplementedError

    def _set_emission(self, p: Any) -> None:
        raise NotImplementedError

    def _emission_params(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _emission_params_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _emission_summary_needed(self, needs: set[str]) -> bool:
        return bool(needs - {"s", "t"})

    def _resolve_n_features(self, data: Any, user: dict, summary: Any) -> int:
        return int(data.n_features)

    # -- data -------------------------------------------------------------------------

    def _row_bytes(self, n_features: int) -> int:
        from dem.data import sequences as seqdata
        return seqdata.working_row_bytes(n_features, self.n_components, self.get_params().get("n_mix", 1),
                                         self._lattice_arrays)

    def _open_data(self, X: Any, *, y: Any, sample_weight: Any, lengths: Any, variable: str | None,
                   partition_rows: int | None, memory_per_thread: int | None) -> Any:
        from dem.data import sequences as seqdata
        return seqdata.as_sequences(X, lengths, symbols=self._symbols, row_bytes=self._row_bytes,
                                    partition_rows=partition_rows, storage_options=self.storage_options)

    def _check_data(self, data: Any) -> None:
        from dem.data import sequences as seqdata
        from dem.engine.executor import Executor

        limit = self.max_sequence_bytes or max(1, Executor.resolve(self.client).memory_per_thread() // 4)
        seqdata.check_sequence_memory(data.offsets, self.n_components, data.n_features, limit,
                                      self._lattice_arrays)

    def _needs(self) -> set[str]:
        return {code for code, name in self._attributes.items()
                if code in self.init_params or not hasattr(self, name)}

    def _user(self) -> dict[str, np.ndarray]:
        needs = self._needs()
        return {code: np.array(getattr(self, name), dtype=np.float64)
                for code, name in self._attributes.items() if code not in needs}

    def _fingerprint_extra(self) -> dict[str, Any]:
        from dem.estimator.base import digest
        return {"user_params": {code: digest(v) for code, v in sorted(self._user().items())}}

    def _summary(self, family: Any, passes: Any, data: Any) -> dict:
        """One pass over the data: validation, and what initialisation needs."""
        from dem.data.row_random import sample_size

        if self._symbols:
            parts = passes.map(_block_summary, (family, 1, None))
            return {"min": min(p["min"] for p in parts), "max": max(p["max"] for p in parts)}
        stride = max(1, math.ceil(data.n_samples / sample_size(data.n_samples, self.n_components)))
        shift = np.asarray(data.read_rows(0, 1), dtype=np.float64)[0]
        parts = passes.map(_block_summary, (family, stride, shift))
        n = sum(p["n"] for p in parts)
        F = sum(p["sum"] for p in parts)
        S = sum(p["outer"] for p in parts)
        with np.errstate(invalid="ignore", divide="ignore"):
            cov = (S - np.outer(F, F) / n) / (n - 1)  # np.cov's ddof=1, about the shift
        return {"n": n, "cov": cov, "sample": np.concatenate([p["sample"] for p in parts])}

    # -- the template's hooks -------------------------------------------------------------

    def _members(self, data: Any) -> list[tuple[Any, dict[str, Any]]]:
        family = self._family(int(data.n_features))
        return [(family, {"restart": r}) for r in range(self.n_init)]

    def _initialize(self, members: list[tuple[Any, int]], passes: Any, data: Any) -> list[Any]:
        needs, user = self._needs(), self._user()
        for code, name in self._attributes.items():
            if code in self.init_params and hasattr(self, name):
                _log.warning(OVERWRITTEN, name.lstrip("_"), code)
        summary = None
        if self._symbols or self._emission_summary_needed(needs):
            summary = self._summary(members[0][0], passes, data)
        n_features = self._resolve_n_features(data, user, summary)
        n_fit_scalars = members[0][0].n_parameters(n_features)
        if data.n_samples * data.n_features < n_fit_scalars:
            _log.warning(DEGENERATE, n_fit_scalars, data.n_samples * data.n_features)
        K = self.n_components
        out = []
        for _, seed in members:
            rng = np.random.RandomState(seed % 2**32)
            # hmmlearn's BaseHMM._init: one generator, startprob then transmat.
            startprob = user["s"] if "s" in user else rng.dirichlet(np.full(K, 1.0 / K))
            transmat = user["t"] if "t" in user else rng.dirichlet(np.full(K, 1.0 / K), size=K)
            emission = self._init_emission(needs, user, summary, seed % 2**32, n_features)
            params = self._params_type()(startprob=np.asarray(startprob, dtype=np.float64),
                                         transmat=np.asarray(transmat, dtype=np.float64), **emission)
            self._check_transitions(params.startprob, params.transmat)
            self._check_emission(params, n_features)
            out.append(params)
        return out

    def _params_type(self) -> type:
        return self._family(1).params_type

    def _check_transitions(self, startprob: np.ndarray, transmat: np.ndarray) -> None:
        K = self.n_components
        check_distribution("startprob_", startprob, (K,))
        check_distribution("transmat_", transmat, (K, K), rows=True)

    def _set_fitted(self, family: Any, params: Any, data: Any) -> None:
        self.startprob_ = params.startprob
        self.transmat_ = params.transmat
        self._set_emission(params)
        self.n_features = int(self._n_features_of(params))
        if (np.asarray(self.transmat_).sum(axis=1) == 0).any():
            warnings.warn("Some rows of transmat_ have zero sum because no transition from the "
                          "state was ever observed.", RuntimeWarning, stacklevel=4)

    def _n_features_of(self, params: Any) -> int:
        return int(params.means.shape[-1])

    def _set_run_attributes(self, outcome: Any, labels: list[dict], chosen: int, data: Any) -> None:
        super()._set_run_attributes(outcome, labels, chosen, data)
        n_features = self.n_features
        self.n_features_in_ = n_features  # set by the template from the data; hmmlearn's is n_features
        totals = [r["objective"] * data.n_samples for r in self.history_]
        placed = self.__dict__.get("_convergence_monitor")
        if placed is not None and not isinstance(placed, ConvergenceMonitor) and hasattr(placed, "report"):
            # A monitor the caller put in place before fit (hmmlearn's ConvergenceMonitor or a
            # subclass, as hmmlearn's tests do) sees the chosen fit's total log-likelihood at every
            # iteration, in order, and judges convergence by its own rule.
            if hasattr(placed, "_reset"):
                placed._reset()
            for total in totals:
                placed.report(total)
            return
        self.monitor_ = self._monitor(totals, self.converged_)

    @property
    def monitor_(self) -> Any:
        """hmmlearn's convergence monitor: the totals of the fit's iterations (before fit, an empty one).

        As in hmmlearn, a monitor assigned before ``fit`` (for instance a
        subclass of hmmlearn's ``ConvergenceMonitor``) is reported every
        iteration's total log-likelihood of the fit; dem reports them when
        the fit ends (iterations run on the cluster, with dem's own rule).
        """
        monitor = self.__dict__.get("_convergence_monitor")
        if monitor is None:
            monitor = self.__dict__["_convergence_monitor"] = ConvergenceMonitor(self.tol, self.n_iter, self.verbose)
        return monitor

    @monitor_.setter
    def monitor_(self, value: Any) -> None:
        self.__dict__["_convergence_monitor"] = value

    def _monitor(self, history: list[float], converged: bool) -> ConvergenceMonitor:
        monitor = ConvergenceMonitor(self.tol, self.n_iter, self.verbose)
        monitor.history.extend(history)
        monitor.iter = len(history)
        monitor.converged = bool(converged)
        return monitor

    def _fitted_params(self) -> Any:
        check_is_fitted(self, "startprob_")
        params = self._params_type()(startprob=np.asarray(self.startprob_, dtype=np.float64),
                                     transmat=np.asarray(self.transmat_, dtype=np.float64),
                                     **self._emission_params())
        self._check_transitions(params.startprob, params.transmat)
        return params

    #: Settings inference reads, checked again there: they may have been changed after ``fit``.
    _inference_params: ClassVar[tuple[str, ...]] = ("n_components", "covariance_type", "n_mix", "algorithm")

    def _fitted_family(self) -> Any:
        from dem.estimator.params import validate

        validate(self, self._inference_params)
        params = self._fitted_params()
        n_features = getattr(self, "n_features", None) or self._n_features_of(params)
        self._check_emission(params, n_features, fitted=True)
        return self._family(n_features)

    def _verbose_callback(self, data: Any) -> Any:
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
            monitor.report(info["objective"] * data.n_samples)
        return show

    # -- fitting --------------------------------------------------------------------------

    def fit(self, X: Any, lengths: Any = None, *, callback: Any = None) -> "HMMEstimator":
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
            ``callback(event, info)`` with ``"start"``, ``"iteration"`` and ``"end"`` events.

        Returns
        -------
        self
        """
        return self._fit(X, lengths=lengths, callback=callback)

    def partial_fit(self, X: Any, lengths: Any = None) -> "HMMEstimator":
        """One online-EM step on a batch of whole sequences (the first call also initialises).

        See :mod:`dem.estimator.incremental`; ``X`` and ``lengths`` are as in :meth:`fit`.
        """
        return self._partial_fit(X, lengths=lengths)

    @classmethod
    def _generate_demo(cls, path: str, options: dict[str, Any], client: Any = None) -> str:
        from dem.data.generate_sequences import generate_hmm_dataset

        kind = cls._kind
        for flag, key in (("--sequences", "n_sequences"), ("--length", "length"), ("--features", "n_features")):
            if options.get(key) is None or options[key] < 1:
                raise ConfigError(f"dem generate --kind {kind} needs {flag} >= 1")
        emission = kind.removesuffix("_hmm")
        sizes = {"n_symbols": options["n_features"]} if cls._symbols else {"n_features": options["n_features"]}
        generate_hmm_dataset(path, options["n_sequences"], options["length"], options["n_components"],
                             kind=emission, seed=options["seed"], chunk_rows=options["chunk_rows"],
                             dtype=options["dtype"], **sizes)
        return f"{options['n_sequences']:,} sequences × {options['length']} steps ({kind}, " \
               f"{options['n_components']} states)"
