"""Hidden Markov models with categorical emissions: the family and ``CategoricalHMM``.

One categorical distribution over ``n_features`` symbols per state
(hmmlearn's ``CategoricalHMM``). The machinery every HMM shares is
:mod:`dem.families.hmm`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from dem.errors import DataError
from dem.estimator.base import ConfigKey, store_params
from dem.estimator.params import Integral, Interval, Real
from dem.estimator.sequence import HMMEstimator, check_distribution
from dem.families.base import FlatParameters, Rebasing
from dem.families.hmm import HMMFamily, HMMStats
from dem.families.hmm_coordinates import (
    simplex_rows_from_vector, simplex_rows_to_vector, transitions_from_vector, transitions_to_vector,
)


@dataclasses.dataclass(frozen=True)
class CategoricalHMMParams:
    """Parameters of a categorical HMM: ``emissionprob`` is (K, n_symbols)."""

    startprob: np.ndarray
    transmat: np.ndarray
    emissionprob: np.ndarray


@dataclasses.dataclass(frozen=True)
class CategoricalHMMStats(HMMStats):
    """``obs[k, s] = Σ_t γ_k(t) [x_t = s]``."""

    obs: np.ndarray


def check_symbols(X: Any, n_symbols: int | None, row_offset: int = 0) -> np.ndarray:
    """Symbols as a 1-D integer array, or a DataError naming the first bad row.

    Accepts shape (n,) or hmmlearn's (n, 1).
    """
    X = np.asarray(X)
    if X.ndim == 2 and X.shape[1] == 1:
        X = X[:, 0]
    if X.ndim != 1:
        raise DataError(f"categorical observations must have shape (n_samples, 1) or (n_samples,); "
                        f"got {X.shape}")
    if not np.issubdtype(X.dtype, np.integer):
        raise DataError(f"categorical observations must be integer symbols; got dtype {X.dtype}")
    if X.size:
        if X.min() < 0:
            row = int(np.flatnonzero(X < 0)[0])
            raise DataError(f"symbol at row {row_offset + row} is negative ({int(X[row])}); "
                            "symbols are 0, 1, …, n_features − 1")
        if n_symbols is not None and X.max() >= n_symbols:
            row = int(np.flatnonzero(X >= n_symbols)[0])
            raise DataError(f"symbol at row {row_offset + row} is {int(X[row])}, but the model "
                            f"only emits symbols 0…{n_symbols - 1} (n_features={n_symbols})")
    return X


@dataclasses.dataclass(frozen=True, eq=False)
class CategoricalHMMFamily(HMMFamily, FlatParameters, Rebasing):
    """HMM with categorical emissions (hmmlearn's ``CategoricalHMM``).

    ``emissionprob_prior`` is the Dirichlet prior of each state's emission row.
    """

    params: str = "ste"
    emissionprob_prior: Any = 1.0

    stats_cls = CategoricalHMMStats
    kind = "categorical_hmm"
    params_type = CategoricalHMMParams

    def check_block(self, params: CategoricalHMMParams | None, X: np.ndarray, row_offset: int) -> np.ndarray:
        return check_symbols(X, None if params is None else params.emissionprob.shape[1], row_offset)

    def prepare(self, params: CategoricalHMMParams) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.ascontiguousarray(np.log(params.emissionprob).T)  # (S, K)

    def log_emission(self, prep: np.ndarray, Xb: np.ndarray) -> np.ndarray:
        return prep[Xb]

    def _new_emission_acc(self, params: CategoricalHMMParams) -> dict[str, np.ndarray]:
        return {"obs": np.zeros(params.emissionprob.shape)}

    def _accumulate(self, prep: np.ndarray, Xb: np.ndarray, gamma: np.ndarray, acc: dict) -> None:
        S = prep.shape[0]
        for k in range(self.n_components):
            acc["obs"][k] += np.bincount(Xb, weights=gamma[:, k], minlength=S)

    def _m_step_emission(self, stats: CategoricalHMMStats, params: CategoricalHMMParams) -> dict[str, np.ndarray]:
        if "e" not in self.params:
            return {}
        e = np.maximum(self.emissionprob_prior - 1.0 + np.asarray(stats.obs), 0.0)
        rows = e.sum(axis=1)
        rows[rows == 0] = 1.0
        return {"emissionprob": e / rows[:, None]}

    def free_scalars(self, n_features: int) -> dict[str, int]:
        K = self.n_components
        return {**super().free_scalars(n_features), "e": K * (n_features - 1)}

    def emit(self, params: CategoricalHMMParams, state: int, random_state: np.random.RandomState) -> Any:
        cdf = np.cumsum(params.emissionprob[state])
        return [(cdf > random_state.rand()).argmax()]

    def rebase(self, stats: CategoricalHMMStats, old: CategoricalHMMParams, new: CategoricalHMMParams
               ) -> CategoricalHMMStats:
        """Counts have no reference point: they add whatever the parameters (online EM)."""
        return stats

    def to_vector(self, params: CategoricalHMMParams) -> np.ndarray:
        """Log-ratio transitions and emission rows: only what ``params`` letters update."""
        return np.concatenate([transitions_to_vector(params, self.params),
                               simplex_rows_to_vector(params.emissionprob) if "e" in self.params
                               else np.empty(0)])

    def from_vector(self, vector: np.ndarray, like: CategoricalHMMParams) -> CategoricalHMMParams:
        """Parameters from :meth:`to_vector`'s coordinates; fixed parts and zeros come from ``like``."""
        startprob, transmat, rest = transitions_from_vector(vector, like, self.params)
        emissionprob = like.emissionprob
        if "e" in self.params:
            emissionprob, rest = simplex_rows_from_vector(rest, like.emissionprob)
        return CategoricalHMMParams(startprob, transmat, emissionprob)


class CategoricalHMM(HMMEstimator):
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

    _kind = "categorical_hmm"
    _symbols = True
    _attributes = {"s": "startprob_", "t": "transmat_", "e": "emissionprob_"}
    _config_keys = {
        "model.n_components": ConfigKey("n_components", 1, "hidden states"),
        "model.n_features": ConfigKey("n_features", None, "number of symbols (null: inferred from the data)"),
        "model.algorithm": ConfigKey("algorithm", "viterbi", "decoder of predict: viterbi or map"),
    }
    _parameter_constraints = {
        **HMMEstimator._parameter_constraints,
        "emissionprob_prior": ["array-like", Real],
        "n_features": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(self, n_components: int = 1, startprob_prior: Any = 1.0, transmat_prior: Any = 1.0, *,
                 emissionprob_prior: Any = 1.0, n_features: int | None = None, algorithm: str = "viterbi",
                 random_state: Any = None, n_iter: int = 10, tol: float = 1e-2, verbose: bool = False,
                 params: str = "ste", init_params: str = "ste", implementation: str = "log", n_init: int = 1,
                 max_sequence_bytes: int | None = None, accelerate: str | None = None,
                 learning_method: str = "batch", learning_decay: float = 0.7, learning_offset: float = 10.0,
                 batch_size: int | None = None, client: Any = None, partition_rows: int | None = None,
                 fan_in: int = 8, cache: Any = "auto", checkpoint_dir: str | None = None,
                 checkpoint_every: int = 1, keep_checkpoints: int = 3,
                 storage_options: dict | None = None) -> None:
        store_params(self, locals())

    def _resolve_n_features(self, data: Any, user: dict, summary: Any) -> int:
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

    def _family(self, n_features: int) -> CategoricalHMMFamily:
        return CategoricalHMMFamily(
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

    def _check_emission(self, p: CategoricalHMMParams, n_features: int, fitted: bool = False) -> None:
        check_distribution("emissionprob_", p.emissionprob, (self.n_components, n_features), rows=True)

    def _set_emission(self, p: CategoricalHMMParams) -> None:
        self.emissionprob_ = p.emissionprob

    def _emission_params_names(self) -> tuple[str, ...]:
        return ("emissionprob",)

    def _emission_params(self) -> dict[str, np.ndarray]:
        return {"emissionprob": np.atleast_2d(np.asarray(self.emissionprob_, dtype=np.float64))}

    def _n_features_of(self, params: CategoricalHMMParams) -> int:
        return int(params.emissionprob.shape[1])


ESTIMATORS = [CategoricalHMM]
