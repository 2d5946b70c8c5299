"""The config.yaml schema: sections as dataclasses, the model section from the registry, the reference table."""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

from dem.config.checks import (
    _address,
    _beta,
    _bool,
    _cache,
    _choice,
    _field,
    _float,
    _host,
    _int,
    _listen_address,
    _mapping,
    _memory_limit,
    _str,
    _without_secrets,
)
from dem.data.generate import DTYPES


@dataclasses.dataclass
class GenerateConfig:
    """``data.generate``: make a synthetic dataset at ``data.path`` when it is missing."""

    path: str | None = _field(None, _str(optional=True),
                              "the one `data.path` to generate into: any other missing `data.path` is an error, "
                              "so a typo is refused rather than filled with new data (null: generate at any "
                              "missing `data.path`, with a warning)")
    n_samples: int = _field(None, _int(1), "rows")
    n_features: int = _field(None, _int(1), "columns")
    n_components: int = _field(None, _int(1), "true mixture components")
    chunk_rows: int = _field(100_000, _int(1), "rows per Zarr chunk")
    dtype: str = _field("float32", _choice(DTYPES), "storage dtype of X")
    seed: int = _field(0, _int(0), "seed of the true parameters and the rows")
    separation: float = _field(6.0, _float(1e-12), "closest means, in standard deviations")
    weighted: bool = _field(False, _bool, "also write sample weights")

    REQUIRED = ("n_samples", "n_features", "n_components")


@dataclasses.dataclass
class DataConfig:
    """``data``: where the rows are."""

    path: str | None = _field(None, _str(optional=True), "Zarr path/URL of a group holding X, or of an array")
    variable: str = _field("X", _str(), "array of the group to fit")
    weights: str | None = _field(None, _str(optional=True), "array of sample weights in the group")
    target: str | None = _field(None, _str(optional=True), "array of targets y in the group (conditional models: "
                                                          "mixture_of_experts)")
    storage_options: dict = _field({}, _mapping, "fsspec options for URLs")
    generate: GenerateConfig | None = _field(None, lambda v: v, "synthetic data to create if path is missing")


class ModelConfig:
    """``model``: which family (``model.kind``) and that family's own keys.

    The keys are not listed here: each family's estimator declares the
    ``model.*`` keys it takes (``_config_keys``, with defaults and one-line
    docs) and the registry collects them, so a new family brings its keys
    with it. A key's value is checked with the estimator's own parameter
    constraints. ``cfg.model.<key>`` reads a key.
    """

    def __init__(self, kind: str = "gmm", values: dict[str, Any] | None = None) -> None:
        self.__dict__["kind"] = kind
        self.__dict__["values"] = dict(values) if values is not None else _model_defaults(kind)

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        raise AttributeError(f"model.{name} is not a key of model.kind={self.__dict__.get('kind')!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "kind":
            self.__dict__["kind"] = value
        else:
            self.__dict__["values"][name] = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"ModelConfig({self.to_dict()!r})"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.values}


def _estimator_class(kind: Any) -> type:
    from dem import registry
    return registry.estimator_class(kind)


def _model_keys(kind: str) -> dict[str, Any]:
    """``{key: ConfigKey}`` of the ``model.*`` keys ``kind`` takes (without the ``model.`` prefix)."""
    return {k.split(".", 1)[1]: ck for k, ck in _estimator_class(kind)._config_keys.items()
            if k.startswith("model.")}


def _model_defaults(kind: str) -> dict[str, Any]:
    return {name: ck.default for name, ck in _model_keys(kind).items()}


def model_keys() -> dict[str, dict[str, Any]]:
    """Every kind's ``model.*`` keys: ``{kind: {key: ConfigKey}}`` (the config reference lists them)."""
    from dem import registry
    return {kind: _model_keys(kind) for kind in registry.kinds()}


@dataclasses.dataclass
class FitConfig:
    """``fit``: the EM iterations."""

    max_iter: int = _field(100, _int(1), "iterations at most")
    tol: float = _field(1e-3, _float(0.0), "stop when |Δ mean log-likelihood| < tol (scikit-learn's rule). HMM kinds: when "
                        "the *total* log-likelihood gains less than tol (hmmlearn's rule); the display still shows Δ "
                        "per time step and prints the per-step threshold this amounts to (tol / steps)")
    n_init: int = _field(1, _int(1), "initialisations; the best is kept")
    init_params: str = _field("k-means||", _str(), "how initial centres are placed (mixtures: k-means||, kmeans, "
                                                   "k-means++, random, random_from_data)")
    random_state: int | None = _field(0, _int(0, optional=True), "seed (null: a fresh one)")
    partition_rows: int | None = _field(None, _int(1, optional=True), "rows per task, whole chunks (null: automatic, 1/16 of the data within 16-128 MiB)")
    fan_in: int = _field(8, _int(2), "children per node of the reduction tree")
    cache: Any = _field("auto", _cache, "keep partitions in worker memory")
    beta_init: float | None = _field(None, _beta, "deterministic annealing: first inverse temperature (null: off)")
    beta_rate: float = _field(2.0, _float(1.000001), "annealing: factor by which beta grows per stage")
    accelerate: str | None = _field(None, _str(optional=True), "squarem: SQUAREM extrapolation between EM steps "
                                                               "(null: plain EM)")
    learning_method: str = _field("batch", _str(), "batch EM, online (mini-batches), sem (stochastic EM) or sem+em")
    learning_decay: float = _field(0.7, _float(0.0), "online EM: step sizes (t + learning_offset)^-learning_decay, "
                                                     "in (0.5, 1]")
    learning_offset: float = _field(10.0, _float(0.0), "online EM: offset t0 of the step sizes")
    batch_size: int | None = _field(None, _int(1, optional=True), "online EM: rows per mini-batch, whole "
                                                                 "partitions (null: automatic)")


@dataclasses.dataclass
class SecurityConfig:
    """``cluster.security``: TLS files for a ``tls://`` scheduler."""

    tls_ca_file: str | None = _field(None, _str(optional=True), "CA certificate")
    tls_client_cert: str | None = _field(None, _str(optional=True), "client certificate")
    tls_client_key: str | None = _field(None, _str(optional=True), "client private key")


@dataclasses.dataclass
class ClusterConfig:
    """``cluster``: where the tasks run."""

    address: str | None = _field(None, _address, "scheduler address `[scheme://]host:port` (null: embedded "
                                                         "LocalCluster)")
    n_workers: int = _field(2, _int(1), "LocalCluster worker processes")
    threads_per_worker: int = _field(1, _int(1), "threads per worker")
    memory_limit: Any = _field("auto", _memory_limit, "per worker")
    dashboard: bool = _field(True, _bool, "serve the Dask dashboard")
    host: str = _field("127.0.0.1", _host,
                       "interface the embedded scheduler and workers listen on (`0.0.0.0`: every "
                       "interface, reachable from the network)")
    dashboard_address: str | None = _field(None, _listen_address,
                                           "`host:port` the embedded dashboard listens on (null: `cluster.host`, a "
                                           "free port); `0.0.0.0:8787` serves it to the network")
    security: SecurityConfig | None = _field(None, lambda v: v, "TLS for a tls:// address")
    connect_timeout: float = _field(20.0, _float(0.1),
                                    "seconds to wait for the scheduler at `cluster.address`, and to wait for it "
                                    "to come back once lost before the fit stops")


@dataclasses.dataclass
class OutputConfig:
    """``output``: the run directory."""

    run_dir: str = _field("runs/demo", _str(), "checkpoints, history, model")
    checkpoint_every: int = _field(1, _int(1), "iterations between checkpoints")
    keep_checkpoints: int = _field(3, _int(1), "newest checkpoints kept")
    overwrite: bool = _field(False, _bool, "replace a finished run with a different config")


@dataclasses.dataclass
class Config:
    """A whole ``config.yaml``.

    Build one with :func:`load_config`; ``Config()`` holds the defaults
    (without ``data.path``, which a fit needs).
    """

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    fit: FitConfig = dataclasses.field(default_factory=FitConfig)
    cluster: ClusterConfig = dataclasses.field(default_factory=ClusterConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML-safe) of every key, defaults included."""
        return {name: (getattr(self, name).to_dict() if name == "model" else dataclasses.asdict(getattr(self, name)))
                for name in SECTIONS}

    def to_yaml(self, redact_secrets: bool = False) -> str:
        """The configuration as YAML that :func:`load_config` reads back unchanged.

        With ``redact_secrets`` (the copy kept in a run directory), credentials
        in ``data.storage_options`` are left out: they come from the
        environment, or from ``--set data.storage_options=…`` when resuming.
        """
        d = self.to_dict()
        if redact_secrets:
            d["data"]["storage_options"] = _without_secrets(d["data"]["storage_options"])
        return yaml.safe_dump(d, sort_keys=False)

    def value(self, dotted: str) -> Any:
        """The value of a dotted key (``fit.tol``, ``model.n_components``)."""
        section, key = dotted.split(".", 1)
        return getattr(getattr(self, section), key)

    def estimator_class(self) -> type:
        """The estimator class of ``model.kind`` (from the registry)."""
        return _estimator_class(self.model.kind)

    def estimator_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the ``model.kind`` estimator (without ``client``)."""
        cls = self.estimator_class()
        names = set(cls._get_param_names())
        kwargs = {ck.param: self.model.values[key] for key, ck in _model_keys(self.model.kind).items()}
        for dotted, param in _shared_params(cls).items():
            if param in names:
                kwargs[param] = self.value(dotted)
        kwargs["storage_options"] = dict(self.data.storage_options) or None
        return kwargs

    def make_estimator(self, client: Any = None) -> Any:
        """The estimator ``model.kind`` names, configured from every section."""
        return self.estimator_class()(**self.estimator_kwargs(), client=client)

    def fit_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the estimator's ``fit`` besides the data and the callback."""
        out = {}
        for dotted, argument in self.estimator_class()._config_fit_arguments.items():
            value = self.value(dotted)
            if value is not None:
                out[argument] = value
        return out


def _shared_params(cls: type) -> dict[str, str]:
    """The shared config keys ``cls`` takes, mapped to its parameter names."""
    from dem.estimator.base import SHARED_CONFIG_PARAMS

    out = {}
    for dotted, param in {**SHARED_CONFIG_PARAMS, **_MIXTURE_FIT_KEYS}.items():
        if dotted in cls._config_excluded:
            continue
        out[dotted] = cls._max_iter_param if param == "max_iter" else param
    return out


#: Keys of the fit section that only some families take (the others refuse a value other than the default).
_MIXTURE_FIT_KEYS = {"fit.init_params": "init_params", "fit.beta_init": "beta_init", "fit.beta_rate": "beta_rate"}


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "fit": FitConfig,
            "cluster": ClusterConfig, "output": OutputConfig}
_NESTED = {("data", "generate"): GenerateConfig, ("cluster", "security"): SecurityConfig}



def _keys(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def all_keys() -> list[str]:
    """Every valid dotted key, e.g. ``model.n_components``, ``data.generate.seed``."""
    out = []
    for section, cls in SECTIONS.items():
        if cls is ModelConfig:
            out.append("model.kind")
            out.extend(dict.fromkeys(f"model.{k}" for keys in model_keys().values() for k in keys))
            continue
        for key in _keys(cls):
            out.append(f"{section}.{key}")
            nested = _NESTED.get((section, key))
            if nested is not None:
                out.extend(f"{section}.{key}.{k}" for k in _keys(nested))
    return out


def _cell(value: Any) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, dict):
        return "`{}`" if not value else f"`{value}`"
    return "`" + str(value).replace("|", "\\|") + "`"


def reference_markdown() -> str:
    """The config reference table of the README, generated from the schema and the registry."""
    rows = ["| key | default | meaning |", "|---|---|---|"]

    def section(prefix: str, cls: type) -> None:
        for f in dataclasses.fields(cls):
            nested = _NESTED.get((prefix.split(".")[0], f.name)) if "." not in prefix else None
            doc = f.metadata.get("doc", "").replace("|", "\\|")
            if nested is not None:
                rows.append(f"| `{prefix}.{f.name}` | null | {doc}: a mapping of the keys below |")
                section(f"{prefix}.{f.name}", nested)
            else:
                rows.append(f"| `{prefix}.{f.name}` | {_cell(f.default if f.default is not dataclasses.MISSING else f.default_factory())} | {doc} |")

    for name, cls in SECTIONS.items():
        if cls is not ModelConfig:
            section(name, cls)
            continue
        per_kind = dict(sorted(model_keys().items(), key=lambda kv: (kv[0] != "gmm", kv[0])))
        rows.append(f"| `model.kind` | `gmm` | model family: {', '.join(per_kind)} |")
        for key in dict.fromkeys(k for keys in per_kind.values() for k in keys):
            owners = {kind: keys[key] for kind, keys in per_kind.items() if key in keys}
            defaults = {_cell(ck.default) for ck in owners.values()}
            if len(defaults) == 1:
                default = defaults.pop()
            else:
                default = "; ".join(f"{kind}: {_cell(ck.default)}" for kind, ck in owners.items())
            docs: dict[str, list[str]] = {}
            for kind, ck in owners.items():
                docs.setdefault(ck.doc.replace("|", "\\|"), []).append(kind)
            if len(docs) == 1:
                doc = next(iter(docs))
                if len(owners) < len(per_kind):
                    doc += f" ({', '.join(owners)})"
            else:
                doc = "; ".join(f"{', '.join(kinds)}: {text}" for text, kinds in docs.items())
            rows.append(f"| `model.{key}` | {default} | {doc} |")
    return "\n".join(rows)


# -- loading ------------------------------------------------------------------
