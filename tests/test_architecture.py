"""The package's shape, checked statically (issue: architecture): no import cycles, no upward
imports into megatron from rollout/data/rewards, short functions and a one-screen training
loop, and algorithm names compared only inside the algorithm registry."""
import ast
from pathlib import Path

import pytest

from megatron_nft.algorithms.registry import ALGORITHM_NAMES

PKG = Path(__file__).resolve().parents[1] / "megatron_nft"


def _modules() -> dict[str, ast.Module]:
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = ast.parse(f.read_text(), str(f))
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return (PKG.parent / Path(*name.split(".")) / "__init__.py").is_file()


def _imports(name: str, tree: ast.Module) -> set[str]:
    """megatron_nft modules ``name`` imports (at module level or inside functions)."""
    pkg = name if _is_package(name) else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            for a in node.names:  # "from pkg import submodule" is an import of the submodule
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, tree) for name, tree in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    return comps


def test_the_checker_sees_imports():
    # guards against a checker that passes because it reads nothing
    assert "megatron_nft.megatron.policy" in GRAPH["megatron_nft.trainer"]  # a function-level import
    assert "megatron_nft.algorithms.registry" in GRAPH["megatron_nft.config"]
    assert "megatron_nft.rollout.base" in GRAPH["megatron_nft.rollout.hf_engine"]


def test_no_import_cycles():
    assert _cycles() == []


@pytest.mark.parametrize("package", ["rollout", "data", "rewards"])
def test_no_upward_imports_into_megatron(package):
    bad = {m: sorted(d for d in deps if d.startswith("megatron_nft.megatron"))
           for m, deps in GRAPH.items() if m.startswith(f"megatron_nft.{package}")}
    assert {m: d for m, d in bad.items() if d} == {}


def _functions():
    for name, tree in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield name, node


def test_functions_are_short_and_the_loop_fits_one_screen():
    long = [(m, f.name, f.end_lineno - f.lineno + 1) for m, f in _functions() if f.end_lineno - f.lineno + 1 > 100]
    assert long == []
    train = [f for m, f in _functions() if m == "megatron_nft.trainer" and f.name == "train"]
    assert len(train) == 1 and train[0].end_lineno - train[0].lineno + 1 <= 60


def _names_in(node) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    return set()


def test_algorithm_names_are_compared_only_in_the_registry():
    hits = []
    for name, tree in MODULES.items():
        if name.startswith("megatron_nft.algorithms"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                consts = set().union(*(_names_in(x) for x in [node.left, *node.comparators]))
                if consts & set(ALGORITHM_NAMES):
                    hits.append((name, node.lineno, sorted(consts & set(ALGORITHM_NAMES))))
    assert hits == []
