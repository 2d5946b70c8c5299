"""Imports only point down, and families never import Dask.

Layers, top to bottom (see DESIGN.md and the README's "How dem is built"):

    api       dem/__init__, cli, config, io, registry, impute, progress, plots
    families  dem/families: pure numpy math, and each family's declarative estimator
    estimator dem/estimator: the fit template, predict path, persistence
    engine    dem/engine: the only Dask code; knows the family contract, no family
    data      dem/data, dem/errors

A family's estimator class sits at the end of its module (DESIGN.md), so the
families layer sits above the estimator template; the template reaches the
engine only inside ``fit``, which is why importing a family loads no Dask.
Every import counts, at module level or inside a function.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import textwrap


ROOT = pathlib.Path(__file__).resolve().parent.parent / "dem"
LAYERS = ["api", "families", "estimator", "engine", "data"]


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("cli", "config", "io", "registry", "impute", "progress", "plots"):
        return "api"
    if parts[1] in ("data", "errors"):
        return "data"
    return parts[1]


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: pathlib.Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name == "dem" or name.endswith(".families") and not node.module:
                found += [(f"{name}.{alias.name}", node.lineno) for alias in node.names]
            else:
                found.append((name, node.lineno))
    return [(name, line) for name, line in found if name == "dem" or name.startswith("dem.")]


def _edges() -> list[tuple[str, str, str, int]]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        src = _module_name(path)
        for target, line in _imports(path):
            out.append((src, target, str(path.relative_to(ROOT.parent)), line))
    return out


def _allowed(src: str, target: str) -> bool:
    a, b = _layer(src), _layer(target)
    if target == "dem.families.base" or target.startswith("dem.families.base."):
        # The family contract (and its ability declarations) is what the engine and template see.
        return a != "data"
    if target == "dem" and a == "api":
        return True
    return LAYERS.index(b) >= LAYERS.index(a)


def test_imports_only_point_down():
    bad = [f"{where}:{line}: {src} ({_layer(src)}) imports {target} ({_layer(target)})"
           for src, target, where, line in _edges() if not _allowed(src, target)]
    assert not bad, "\n".join(bad)


def test_the_engine_imports_no_family():
    bad = [f"{where}:{line}: {target}" for src, target, where, line in _edges()
           if _layer(src) == "engine" and target.startswith("dem.families") and target != "dem.families.base"]
    assert not bad, "\n".join(bad)


def test_the_layer_rules_catch_a_violation():
    # The checker itself: an engine module importing a family, data importing the engine.
    assert not _allowed("dem.engine.executor", "dem.families.gmm")
    assert not _allowed("dem.data.partitions", "dem.engine.executor")
    assert not _allowed("dem.estimator.base", "dem.families.gmm")
    assert _allowed("dem.families.gmm", "dem.estimator.base")
    assert _allowed("dem.engine.executor", "dem.families.base")


def test_no_import_cycles_between_modules():
    graph: dict[str, set[str]] = {}
    for src, target, _, _ in _edges():
        graph.setdefault(src, set()).add(target)
    modules = set(graph)
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in modules:
                continue
            if state.get(nxt) == 1:
                cycle.extend(stack[stack.index(nxt):] + [node, nxt] if nxt in stack else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, stack + [node]):
                return True
        state[node] = 2
        return False

    for m in sorted(modules):
        if state.get(m) is None and visit(m, []):
            break
    # dem/__init__ reaches everything lazily; it is the entry point, not a cycle.
    assert not cycle or cycle[0] == "dem", " -> ".join(cycle)


FAMILY_MODULES = sorted(p.stem for p in (ROOT / "families").glob("*.py") if p.stem != "__init__")


def test_no_family_module_imports_dask():
    # One interpreter with dask and distributed made unimportable imports every family module:
    # a family must not need them (and the first that does is named).
    code = textwrap.dedent(f"""
        import importlib, sys
        for name in ("dask", "distributed", "zarr", "xarray"):
            sys.modules[name] = None
        for module in {FAMILY_MODULES!r}:
            try:
                importlib.import_module("dem.families." + module)
            except ImportError as exc:
                sys.exit(f"dem.families.{{module}} needs {{exc.name}}: {{exc}}")
        assert not any(m == "dask" or m.startswith("dask.") for m in sys.modules if sys.modules[m] is not None)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(FAMILY_MODULES) > 10
