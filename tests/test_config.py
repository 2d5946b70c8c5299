"""config.yaml schema: defaults, overrides, path resolution and every error class."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

import dem
from dem.config import Config, all_keys, config_from_dict, load_config, parse_override
from dem.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str, overrides: list[str] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), list(overrides))
    message = str(info.value)
    assert "\n" not in message
    return message


# -- defaults and mapping to the estimator ------------------------------------

def test_defaults_match_the_estimator_defaults() -> None:
    cfg = Config()
    assert cfg.model.kind == "gmm"
    assert cfg.model.covariance_type == "full"
    assert cfg.fit.fan_in == 8 and cfg.fit.cache == "auto" and cfg.fit.partition_rows is None
    assert cfg.cluster.address is None and cfg.cluster.n_workers == 2 and cfg.cluster.threads_per_worker == 1
    assert cfg.output.checkpoint_every == 1 and cfg.output.keep_checkpoints == 3 and cfg.output.overwrite is False
    defaults = dem.GaussianMixture()
    for key in ("covariance_type", "reg_covar", "tol", "max_iter", "n_init", "init_params", "fan_in", "cache",
                "checkpoint_every", "keep_checkpoints"):
        assert cfg.estimator_kwargs()[key] == getattr(defaults, key), key


def test_estimator_kwargs_are_accepted_by_gaussian_mixture(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "data: {path: d.zarr, storage_options: {anon: true}}\n"
                                      "model: {n_components: 3}\n"))
    kwargs = cfg.estimator_kwargs()
    est = dem.GaussianMixture(**kwargs)
    assert est.get_params()["n_components"] == 3
    assert kwargs["checkpoint_dir"] == cfg.output.run_dir
    assert kwargs["storage_options"] == {"anon": True}


def test_empty_file_needs_data_path(tmp_path: Path) -> None:
    assert "data.path is not set" in error_of(tmp_path, "")


def test_relative_paths_resolve_against_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(write(tmp_path, "data: {path: d/x.zarr}\noutput: {run_dir: runs/a}\n"))
    assert cfg.data.path == str(tmp_path / "d" / "x.zarr")
    assert cfg.output.run_dir == str(tmp_path / "runs" / "a")
    url = load_config(write(tmp_path, "data: {path: 's3://bucket/x.zarr'}\n"))
    assert url.data.path == "s3://bucket/x.zarr"


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    cfg = load_config(REPO / "config.yaml", ["data.path=/x/y.zarr"])
    again = config_from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


def test_shipped_config_is_valid() -> None:
    cfg = load_config(REPO / "config.yaml")
    assert cfg.data.generate is not None and cfg.data.generate.n_components == cfg.model.n_components
    assert cfg.cluster.address is None and cfg.cluster.n_workers == 2


def test_every_schema_key_is_listed() -> None:
    keys = all_keys()
    for key in ("data.path", "data.generate.seed", "model.n_components", "fit.cache",
                "cluster.security.tls_ca_file", "output.run_dir"):
        assert key in keys


# -- overrides -----------------------------------------------------------------

def test_overrides_are_yaml_scalars(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "data: {path: d.zarr}\n"), [
        "model.n_components=4", "fit.tol=1e-4", "fit.random_state=null", "fit.cache=false",
        "cluster.dashboard=false", "model.covariance_type=diag", "data.storage_options={anon: true}",
        "fit.partition_rows=1e5",
    ])
    assert cfg.model.n_components == 4
    assert cfg.fit.tol == pytest.approx(1e-4)
    assert cfg.fit.random_state is None
    assert cfg.fit.cache is False
    assert cfg.cluster.dashboard is False
    assert cfg.model.covariance_type == "diag"
    assert cfg.data.storage_options == {"anon": True}
    assert cfg.fit.partition_rows == 100_000 and isinstance(cfg.fit.partition_rows, int)


def test_override_creates_nested_generate_section(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "data: {path: d.zarr}\n"), [
        "data.generate.n_samples=100", "data.generate.n_features=2", "data.generate.n_components=2"])
    assert cfg.data.generate is not None
    assert cfg.data.generate.n_samples == 100 and cfg.data.generate.chunk_rows == 100_000


def test_override_later_wins(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "data: {path: d.zarr}\nmodel: {n_components: 2}\n"),
                      ["model.n_components=3", "model.n_components=5"])
    assert cfg.model.n_components == 5


@pytest.mark.parametrize("item", ["model.n_components", "n_components=3", "=3", "model..x=1", "model.n components=2"])
def test_bad_set_syntax(item: str) -> None:
    with pytest.raises(ConfigError, match="--set expects section.key=value"):
        parse_override(item)


# -- errors --------------------------------------------------------------------

def test_unknown_key_suggests_the_nearest(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "data: {path: d.zarr}\nmodel:\n  n_componets: 3\n")
    assert msg == "unknown key 'model.n_componets' in config.yaml; did you mean 'model.n_components'?"


def test_unknown_key_from_set_names_set(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "data: {path: d.zarr}\n", ["fit.max_iters=3"])
    assert msg == "unknown key 'fit.max_iters' in --set; did you mean 'fit.max_iter'?"


def test_key_in_the_wrong_section_points_to_the_right_one(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "data: {path: d.zarr}\nmodel: {max_iter: 3}\n")
    assert "did you mean 'fit.max_iter'?" in msg


def test_unknown_section_suggests_the_nearest(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "data: {path: d.zarr}\nmodle: {n_components: 3}\n")
    assert msg == "unknown section 'modle' in config.yaml; did you mean 'model'?"


def test_unknown_nested_key(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "data:\n  path: d.zarr\n  generate: {n_samples: 10, n_features: 2, "
                             "n_components: 2, chunkrows: 5}\n")
    assert "unknown key 'data.generate.chunkrows'" in msg and "'data.generate.chunk_rows'" in msg


def test_unknown_key_without_a_close_match_lists_valid_keys(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "data: {path: d.zarr}\noutput: {zzzzzz: 1}\n")
    assert "unknown key 'output.zzzzzz'" in msg and "output.run_dir" in msg


@pytest.mark.parametrize("text, key, expected, value", [
    ("model: {n_components: six}", "model.n_components", "an integer >= 1", "'six'"),
    ("model: {n_components: true}", "model.n_components", "an integer >= 1", "True"),
    ("model: {n_components: 2.5}", "model.n_components", "an integer >= 1", "2.5"),
    ("fit: {tol: fast}", "fit.tol", "a finite number >= 0", "'fast'"),
    ("cluster: {dashboard: 'yes please'}", "cluster.dashboard", "true or false", "'yes please'"),
    ("fit: {cache: sometimes}", "fit.cache", "auto, true or false", "'sometimes'"),
    ("data: {path: d.zarr, storage_options: [1, 2]}", "data.storage_options", "a mapping", "[1, 2]"),
    ("cluster: {memory_limit: plenty}", "cluster.memory_limit", "'auto', a size like 2GiB", "'plenty'"),
    ("cluster: {address: 'http://host:1'}", "cluster.address", "scheduler address", "'http://host:1'"),
])
def test_wrong_type_names_key_expectation_and_value(tmp_path: Path, text: str, key: str, expected: str,
                                                    value: str) -> None:
    if "data:" not in text:
        text = "data: {path: d.zarr}\n" + text
    msg = error_of(tmp_path, text + "\n")
    assert msg.startswith(f"{key} must be ")
    assert expected in msg and value in msg and "config.yaml" in msg


@pytest.mark.parametrize("override, key, expected", [
    ("model.n_components=0", "model.n_components", "an integer >= 1 or a list of them"),

    ("fit.beta_init=1.5", "fit.beta_init", "a number in (0, 1] or null"),
    ("fit.max_iter=-5", "fit.max_iter", "an integer >= 1"),
    ("fit.fan_in=1", "fit.fan_in", "an integer >= 2"),
    ("fit.tol=-1", "fit.tol", "a finite number >= 0"),
    ("model.reg_covar=.nan", "model.reg_covar", "a finite number >= 0"),
    ("cluster.n_workers=0", "cluster.n_workers", "an integer >= 1"),
    ("output.keep_checkpoints=0", "output.keep_checkpoints", "an integer >= 1"),
    ("fit.partition_rows=0", "fit.partition_rows", "an integer >= 1 or null"),
])
def test_out_of_range(tmp_path: Path, override: str, key: str, expected: str) -> None:
    msg = error_of(tmp_path, "data: {path: d.zarr}\n", [override])
    assert msg.startswith(f"{key} must be {expected}; got ")
    assert msg.endswith("in --set")


def test_a_repeated_candidate_k_names_the_key(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "data: {path: d.zarr}\n", ["model.n_components=[2,2]"])
    assert msg == "model.n_components lists a value twice: [2, 2] in --set"


def test_invalid_covariance_type_lists_choices(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "data: {path: d.zarr}\nmodel: {covariance_type: ful}\n")
    assert msg == "model.covariance_type must be one of diag, full, spherical, tied; got 'ful' (str) in config.yaml"


def test_invalid_choices(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "data: {path: d.zarr}\nmodel: {kind: hmm}\n")
    # The list grows as families land; it is sorted and names at least the families shipped first.
    kinds = re.fullmatch(r"model\.kind must be one of (.*); got 'hmm' \(str\) in config\.yaml", msg).group(1).split(", ")
    assert kinds == sorted(kinds) and {"categorical_hmm", "gaussian_hmm", "gmm", "gmm_hmm"} <= set(kinds)
    assert "fit.init_params must be one of k-means++, k-means||, kmeans, random, random_from_data" in error_of(
        tmp_path, "data: {path: d.zarr}\nfit: {init_params: best}\n")
    assert "data.generate.dtype must be one of float32, float64" in error_of(
        tmp_path, "data: {path: d.zarr, generate: {n_samples: 9, n_features: 2, n_components: 2, dtype: int8}}\n")


def test_section_must_be_a_mapping(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "data: {path: d.zarr}\nmodel: 3\n")
    assert msg.startswith("model in config.yaml must be a mapping")


def test_generate_needs_its_sizes(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "data: {path: d.zarr, generate: {n_samples: 100}}\n")
    assert "data.generate.n_features is required" in msg


def test_security_needs_a_tls_address(tmp_path: Path) -> None:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    sec = (f"security: {{tls_ca_file: {tmp_path / 'ca.pem'}, tls_client_cert: {tmp_path / 'cert.pem'}, "
           f"tls_client_key: {tmp_path / 'key.pem'}}}")
    msg = error_of(tmp_path, f"data: {{path: d.zarr}}\ncluster: {{{sec}}}\n")
    assert "cluster.security is for a TLS scheduler" in msg
    cfg = load_config(write(tmp_path, f"data: {{path: d.zarr}}\ncluster: {{address: 'tls://h:8786', {sec}}}\n"))
    assert cfg.cluster.security is not None and os.path.isabs(cfg.cluster.security.tls_ca_file)
    os.remove(tmp_path / "key.pem")
    msg = error_of(tmp_path, f"data: {{path: d.zarr}}\ncluster: {{address: 'tls://h:8786', {sec}}}\n")
    assert "cluster.security.tls_client_key: file" in msg and "not found" in msg


def test_yaml_syntax_error_is_one_line_with_position(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "data:\n  path: [unclosed\nmodel: {}\n")
    assert msg.startswith("cannot parse") and "line" in msg


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert "must hold a mapping of sections" in error_of(tmp_path, "- 1\n- 2\n")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


# -- issue 17: duplicate keys, scheduler addresses, listening interfaces ------

def test_duplicate_section_is_refused_naming_key_and_both_lines(tmp_path: Path) -> None:
    text = "data:\n  path: d.zarr\nfit:\n  tol: 0.5\nmodel:\n  n_components: 2\nfit:\n  max_iter: 3\n"
    msg = error_of(tmp_path, text)
    assert msg == (f"{tmp_path / 'config.yaml'}: key 'fit' appears twice, at lines 3 and 7; "
                   "keep one (YAML would silently use the last)")


def test_duplicate_nested_key_is_refused_with_its_dotted_name(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "data: {path: d.zarr}\nfit:\n  tol: 0.5\n  max_iter: 4\n  tol: 0.1\n")
    assert "key 'fit.tol' appears twice, at lines 3 and 5" in msg


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "data: {path: d.zarr}\nfit:\n  <<: {max_iter: 7, tol: 0.5}\n  tol: 0.25\n"))
    assert cfg.fit.max_iter == 7 and cfg.fit.tol == 0.25


@pytest.mark.parametrize("address", ["notanaddress", "tcp://scheduler", "scheduler:port", "tcp://host:99999",
                                     "tcp://:8786"])
def test_scheduler_address_without_host_and_port_is_refused(tmp_path: Path, address: str) -> None:
    msg = error_of(tmp_path, "data: {path: d.zarr}\n", [f"cluster.address={address}"])
    assert msg == ("cluster.address must be null or a scheduler address like tcp://host:8786 or "
                   f"tls://host:8786; got {address!r} (str) in --set")


@pytest.mark.parametrize("address", ["tcp://scheduler:8786", "scheduler:8786", "tls://10.0.0.1:8786",
                                     "tcp://[::1]:8786", "inproc://192.168.1.1/123/4"])
def test_valid_scheduler_addresses_pass(tmp_path: Path, address: str) -> None:
    assert load_config(write(tmp_path, "data: {path: d.zarr}\n"), [f"cluster.address={address}"]
                       ).cluster.address == address


def test_embedded_cluster_listens_on_loopback_by_default(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "data: {path: d.zarr}\n"))
    assert cfg.cluster.host == "127.0.0.1" and cfg.cluster.dashboard_address is None
    cfg = load_config(write(tmp_path, "data: {path: d.zarr}\n"),
                      ["cluster.host=0.0.0.0", "cluster.dashboard_address='0.0.0.0:8787'"])
    assert cfg.cluster.host == "0.0.0.0" and cfg.cluster.dashboard_address == "0.0.0.0:8787"
    msg = error_of(tmp_path, "data: {path: d.zarr}\n", ["cluster.dashboard_address=8787"])
    assert msg.startswith("cluster.dashboard_address must be null or host:port")


def test_connect_timeout_is_a_positive_number_of_seconds(tmp_path: Path) -> None:
    assert "cluster.connect_timeout must be a finite number >= 0.1" in error_of(
        tmp_path, "data: {path: d.zarr}\ncluster: {address: 'tcp://127.0.0.1:8786', connect_timeout: 0}\n")
    cfg = config_from_dict({"data": {"path": "d.zarr"}, "cluster": {"connect_timeout": "2.5"}})
    assert cfg.cluster.connect_timeout == 2.5
