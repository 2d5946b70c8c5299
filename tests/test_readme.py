"""The README stays true: its test command is what CI runs, and every config key is documented."""

from __future__ import annotations

import dataclasses
import pathlib
import re

from dem import config as C

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _keys(prefix: str, cls: type) -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        nested = {"generate": C.GenerateConfig, "security": C.SecurityConfig}.get(f.name)
        out.append(f"{prefix}.{f.name}")
        if nested is not None:
            out += _keys(f"{prefix}.{f.name}", nested)
    return out


def test_every_config_key_is_in_the_readme_reference():
    keys = [k for name, cls in C.SECTIONS.items() for k in _keys(name, cls)]
    missing = [k for k in keys if f"`{k}`" not in README]
    assert len(keys) > 30
    assert missing == []


def test_ci_runs_the_readme_test_command():
    block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2, "the README's set-up is exactly two commands"
    main_job, tests = commands
    assert "dem fit config.yaml" in main_job and "pip install" in main_job
    assert tests in (ROOT / ".ci" / "run").read_text()
