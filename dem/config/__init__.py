"""The ``config.yaml`` schema: dataclasses with defaults, YAML loading,
``--set section.key=value`` overrides, and validation with one-line errors.

Every problem is a :class:`dem.errors.ConfigError` whose message names the
key, what was expected, the value found, and where it came from (the file or
``--set``); an unknown key suggests the nearest valid one.

Relative paths (``data.path``, ``output.run_dir``, the TLS files of
``cluster.security``) are resolved against the current working directory
when the configuration is loaded, so the resolved configuration a run saves
in its run directory works from anywhere. URLs (anything with ``://``) are
left as they are.
"""

from __future__ import annotations

from dem.config.checks import ADDRESS_SCHEMES  # noqa: F401
from dem.config.loading import (  # noqa: F401
    apply_overrides,
    config_from_dict,
    load_config,
    parse_override,
    read_yaml,
)
from dem.config.schema import (  # noqa: F401
    SECTIONS,
    ClusterConfig,
    Config,
    DataConfig,
    FitConfig,
    GenerateConfig,
    ModelConfig,
    OutputConfig,
    SecurityConfig,
    all_keys,
    model_keys,
    reference_markdown,
)
