"""Reading config.yaml: YAML without duplicate keys, --set overrides, key-by-key validation."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from typing import Any

import yaml

from dem.config.checks import _Invalid, _number
from dem.config.schema import (
    _MIXTURE_FIT_KEYS,
    _NESTED,
    SECTIONS,
    Config,
    ModelConfig,
    _model_defaults,
    _model_keys,
    _shared_params,
    all_keys,
    model_keys,
)
from dem.errors import ConfigError


class _Source:
    """Where each dotted key's value came from, for messages."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.overridden: set[str] = set()

    def of(self, key: str) -> str:
        if key in self.overridden or any(key.startswith(k + ".") for k in self.overridden):
            return "--set"
        return self.filename


def _unknown(key: str, candidates: list[str], where: str, what: str = "key") -> ConfigError:
    """An unknown-key error suggesting the nearest valid key."""
    last = key.rsplit(".", 1)[-1]
    # The right name in the wrong section (model.max_iter -> fit.max_iter) first.
    moved = sorted((c for c in all_keys() if c.rsplit(".", 1)[-1] == last and c != key),
                   key=lambda c: c.count("."))
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.75)
    hint = moved[:1] or close
    msg = f"unknown {what} {key!r} in {where}"
    if hint:
        return ConfigError(f"{msg}; did you mean {hint[0]!r}?")
    return ConfigError(f"{msg}; valid {what}s are {', '.join(candidates)}")


def _build(cls: type, raw: Any, prefix: str, src: _Source) -> Any:
    """An instance of section dataclass ``cls`` from a raw mapping, checked key by key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{prefix} in {src.of(prefix)} must be a mapping of keys; got {_show(raw)}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if not isinstance(key, str) or key not in fields:
            raise _unknown(f"{prefix}.{key}", [f"{prefix}.{k}" for k in fields], src.of(f"{prefix}.{key}"))
    values = {}
    for name, f in fields.items():
        dotted = f"{prefix}.{name}"
        if name not in raw:
            continue
        value = raw[name]
        nested = _NESTED.get(tuple(dotted.split(".")))  # type: ignore[arg-type]
        if nested is not None:
            values[name] = None if value is None else _build(nested, value, dotted, src)
            continue
        try:
            values[name] = f.metadata["check"](value)
        except _Invalid as exc:
            raise ConfigError(f"{dotted} must be {exc.args[0]}; got {_show(value)} in {src.of(dotted)}") from None
    obj = cls(**values)
    for name in getattr(cls, "REQUIRED", ()):
        if getattr(obj, name) is None:
            raise ConfigError(f"{prefix}.{name} is required when {prefix} is set (in {src.of(prefix)})")
    return obj


def _check_parameter(cls: type, param: str, value: Any, dotted: str, src: _Source) -> Any:
    """A config value checked with the estimator's own constraint for ``param`` (one line)."""
    from sklearn.utils._param_validation import (
        InvalidParameterError,
        validate_parameter_constraints,
    )

    if isinstance(value, str):
        value = _number(value)  # YAML 1.1 reads 1e-3 as a string
    if isinstance(value, float) and value.is_integer() and param in ("n_components", "n_mix", "n_features",
                                                                      "n_experts"):
        value = int(value)
    constraints = cls._parameter_constraints.get(param)
    if constraints is None or constraints == "no_validation":
        return value
    try:
        validate_parameter_constraints({param: constraints}, {param: value}, caller_name=cls.__name__)
    except InvalidParameterError:
        raise ConfigError(f"{dotted} must be {_describe(constraints)}; got {_show(value)} "
                          f"in {src.of(dotted)}") from None
    return value


def _describe(constraints: list) -> str:
    """scikit-learn parameter constraints in the config's words ("an integer >= 1 or null")."""
    from numbers import Integral

    from sklearn.utils._param_validation import Interval, StrOptions

    parts: list[str] = []
    for c in constraints:
        if isinstance(c, Interval):
            integer = c.type is Integral
            lo, hi = c.left, c.right
            fmt = (lambda v: str(int(v))) if integer else (lambda v: f"{v:g}")
            if hi is None:
                op = ">=" if c.closed in ("left", "both") else ">"
                parts.append(f"{'an integer' if integer else 'a finite number'} {op} {fmt(lo)}")
            else:
                left = "[" if c.closed in ("left", "both") else "("
                right = "]" if c.closed in ("right", "both") else ")"
                parts.append(f"{'an integer' if integer else 'a number'} in {left}{fmt(lo)}, {fmt(hi)}{right}")
        elif isinstance(c, StrOptions):
            parts.append("one of " + ", ".join(sorted(c.options)))
        elif c is None:
            parts.append("null")
        elif c in (list, tuple):
            if "a list of them" not in parts:
                parts.append("a list of them")
        else:
            parts.append({"boolean": "true or false", "array-like": "a list of numbers", str: "a string",
                          dict: "a mapping", "random_state": "an integer >= 0 or null",
                          "verbose": "an integer"}.get(c, str(c)))
    return " or ".join(parts)


def _build_model(raw: Any, src: _Source) -> ModelConfig:
    """The ``model`` section: ``kind`` picks the family, whose estimator declares the other keys."""
    from dem import registry

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"model in {src.of('model')} must be a mapping of keys; got {_show(raw)}")
    kind = raw.get("kind", "gmm")
    if kind not in registry.kinds():
        raise ConfigError(f"model.kind must be one of {', '.join(registry.kinds())}; got {_show(kind)} "
                          f"in {src.of('model.kind')}")
    cls = registry.estimator_class(kind)
    keys = _model_keys(kind)
    values = _model_defaults(kind)
    for key, value in raw.items():
        if key == "kind":
            continue
        dotted = f"model.{key}"
        if not isinstance(key, str) or key not in keys:
            owners = [k for k, declared in model_keys().items() if key in declared]
            if owners:
                raise ConfigError(f"{dotted} is not a key of model.kind={kind} (it belongs to model.kind="
                                  f"{' or '.join(owners)}); {kind} takes {', '.join(f'model.{k}' for k in keys)} "
                                  f"(in {src.of(dotted)})")
            raise _unknown(dotted, ["model.kind", *(f"model.{k}" for k in keys)], src.of(dotted))
        values[key] = _check_parameter(cls, keys[key].param, value, dotted, src)
    return ModelConfig(kind, values)


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``section.key=value`` into the key path and the value read as a YAML scalar."""
    key, sep, text = item.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not sep or len(parts) < 2 or not all(re.fullmatch(r"[A-Za-z_][\w+-]*", p) for p in parts):
        raise ConfigError(f"--set expects section.key=value (e.g. model.n_components=4); got {item!r}")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text  # not YAML: keep the text, the key's check decides
    return parts, value


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...], src: _Source | None = None) -> dict:
    """``raw`` with each ``section.key=value`` of ``overrides`` set (a new dict)."""
    import copy

    raw = copy.deepcopy(raw)
    for item in overrides:
        parts, value = parse_override(item)
        node = raw
        for i, p in enumerate(parts[:-1]):
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(parts[:i + 1])} is not a mapping")
            node = child
        node[parts[-1]] = value
        if src is not None:
            src.overridden.add(".".join(parts))
    return raw


def _refuse_duplicate_keys(node: Any, name: str, path: str = "", seen: set[int] | None = None) -> None:
    """A :class:`ConfigError` naming the first key written twice in one mapping, and both lines.

    PyYAML keeps the last value of a repeated key without a word, so a second
    ``fit:`` section would silently replace the first.
    """
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias of a node already checked (or a recursive one)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, Any] = {}
        for key, value in node.value:
            # `<<` merges are meant to be overridden; other non-scalar keys are refused later.
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                dotted = f"{path}.{key.value}" if path else key.value
                if key.value in first:
                    raise ConfigError(
                        f"{name}: key {dotted!r} appears twice, at lines {first[key.value].start_mark.line + 1} "
                        f"and {key.start_mark.line + 1}; keep one (YAML would silently use the last)")
                first[key.value] = key
            else:
                dotted = path
            _refuse_duplicate_keys(value, name, dotted, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, name, f"{path}[{i}]", seen)


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping."""

    def construct_document(self, node: Any) -> Any:
        _refuse_duplicate_keys(node, self.name)
        return super().construct_document(node)


def read_yaml(path: str | os.PathLike) -> dict:
    """The top-level mapping of a YAML file (empty file: ``{}``).

    Parsed with PyYAML's safe loader (no Python objects), refusing a key
    that appears twice in one mapping.
    """
    path = os.fspath(path)
    name = path
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.load(fh, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except FileNotFoundError:
        raise ConfigError(f"config file {name!r} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {name!r} is a directory") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"cannot parse {name}{where}: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{name} must hold a mapping of sections (data, model, fit, cluster, output); "
                          f"got {type(raw).__name__}")
    return raw


def config_from_dict(raw: dict, overrides: list[str] | tuple[str, ...] = (), *,
                     source: str = "config", resolve_paths: bool = True,
                     require_data: bool = True) -> Config:
    """Validate a raw nested mapping (plus overrides) into a :class:`Config`.

    Parameters
    ----------
    raw : dict
        Sections as read from YAML.
    overrides : list of str
        ``section.key=value`` items applied on top.
    source : str
        Name used in messages for values from ``raw``.
    resolve_paths : bool
        Make relative local paths absolute (against the working directory).
    require_data : bool
        Require ``data.path``.
    """
    src = _Source(source)
    raw = apply_overrides(raw, overrides, src)
    for section in raw:
        if not isinstance(section, str) or section not in SECTIONS:
            raise _unknown(str(section), list(SECTIONS), src.of(str(section)), what="section")
    cfg = Config(**{name: (_build_model(raw.get(name), src) if cls is ModelConfig else
                           _build(cls, raw.get(name), name, src)) for name, cls in SECTIONS.items()})
    _check_consistency(cfg, src, require_data)
    if resolve_paths:
        _resolve_paths(cfg)
    return cfg


def load_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read, override and validate a ``config.yaml``.

    Parameters
    ----------
    path : path-like or None
        The YAML file; ``None`` starts from the defaults.
    overrides : list of str
        ``section.key=value`` items (values parsed as YAML scalars), applied
        after the file.

    Returns
    -------
    Config
        With relative local paths resolved against the working directory.

    Raises
    ------
    dem.errors.ConfigError
        One line naming the key, the expected type or range, and the value.
    """
    if path is None:
        return config_from_dict({}, overrides, source="defaults")
    raw = read_yaml(path)
    return config_from_dict(raw, overrides, source=os.path.basename(os.fspath(path)) or os.fspath(path))


def _check_consistency(cfg: Config, src: _Source, require_data: bool) -> None:
    """Rules that span keys."""
    if require_data and cfg.data.path is None:
        raise ConfigError(f"data.path is not set in {src.of('data.path')}: give the Zarr path or URL of the data")
    gen = cfg.data.generate
    if gen is not None:
        if gen.n_components > gen.n_samples:
            raise ConfigError(f"data.generate.n_components ({gen.n_components}) must not exceed "
                              f"data.generate.n_samples ({gen.n_samples})")
        if cfg.data.weights is not None and (not gen.weighted or cfg.data.weights != "weights"):
            raise ConfigError("data.weights must be 'weights' with data.generate.weighted: true when the data "
                              f"is generated; got data.weights={cfg.data.weights!r}")
        if cfg.data.variable != "X":
            raise ConfigError(f"data.variable must be 'X' for generated data; got {cfg.data.variable!r}")
    _check_kind_takes_keys(cfg, src)
    sec = cfg.cluster.security
    if sec is not None:
        if cfg.cluster.address is None or not cfg.cluster.address.startswith("tls://"):
            raise ConfigError("cluster.security is for a TLS scheduler: set cluster.address to tls://host:port "
                              f"(got {cfg.cluster.address!r})")
        for name in ("tls_ca_file", "tls_client_cert", "tls_client_key"):
            if getattr(sec, name) is None:
                raise ConfigError(f"cluster.security.{name} is required when cluster.security is set")


def _check_kind_takes_keys(cfg: Config, src: _Source) -> None:
    """Keys set for a family that does not take them are refused; the estimator checks the rest."""
    cls = cfg.estimator_class()
    kind = cfg.model.kind
    defaults = Config(model=ModelConfig(kind))
    names = set(cls._get_param_names())
    from dem.estimator.base import SHARED_CONFIG_PARAMS

    for dotted, param in {**SHARED_CONFIG_PARAMS, **_MIXTURE_FIT_KEYS}.items():
        taken = dotted not in cls._config_excluded and (cls._max_iter_param if param == "max_iter" else param) in names
        if not taken and cfg.value(dotted) != defaults.value(dotted):
            raise ConfigError(f"{dotted} is not available for model.kind={kind}; got {_show(cfg.value(dotted))} "
                              f"in {src.of(dotted)}")
    for dotted in ("data.weights", "data.target"):
        if cfg.value(dotted) is not None and dotted not in cls._config_fit_arguments:
            raise ConfigError(f"{dotted} is not available for model.kind={kind}; got {_show(cfg.value(dotted))} "
                              f"in {src.of(dotted)}")
    if cfg.data.variable != "X" and "data.variable" not in cls._config_fit_arguments:
        raise ConfigError(f"data.variable is not available for model.kind={kind}; got {_show(cfg.data.variable)}")
    if cfg.data.generate is not None and not cls._config_generates_data:
        raise ConfigError(f"data.generate writes Gaussian-mixture data, not data for model.kind={kind}: write it "
                          f"with `dem generate PATH --kind {kind} ...` and set data.path")
    # Every value the estimator takes is checked with its own constraints, named by its key here.
    for dotted, param in _shared_params(cls).items():
        if param in names and dotted not in ("output.run_dir", "data.storage_options"):
            _check_parameter(cls, param, cfg.value(dotted), dotted, src)
    est = cfg.make_estimator()
    try:
        est._check_parameters()
    except ConfigError as exc:  # a combination of values: name the config key
        message = str(exc)
        for key, ck in _model_keys(kind).items():
            if message.startswith(ck.param + " "):
                message = f"model.{key}{message[len(ck.param):]} in {src.of('model.' + key)}"
                break
        raise ConfigError(message) from None


def _resolve(path: str) -> str:
    if "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


def _resolve_paths(cfg: Config) -> None:
    if cfg.data.path is not None:
        cfg.data.path = _resolve(cfg.data.path)
    if cfg.data.generate is not None and cfg.data.generate.path is not None:
        cfg.data.generate.path = _resolve(cfg.data.generate.path)
    cfg.output.run_dir = _resolve(cfg.output.run_dir)
    sec = cfg.cluster.security
    if sec is not None:
        for name in ("tls_ca_file", "tls_client_cert", "tls_client_key"):
            value = _resolve(getattr(sec, name))
            if not os.path.isfile(value):
                raise ConfigError(f"cluster.security.{name}: file {value!r} not found")
            setattr(sec, name, value)
