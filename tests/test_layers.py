"""The import layers: the core loads no coordinator and no sinks; the sinks load no coordinator.

Each check runs in a fresh interpreter, so what a test imported earlier cannot hide a
dependency: it imports one package and lists what ``sys.modules`` then holds.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest


def _loaded_after(statement: str) -> set[str]:
    """The eventbus and sinks modules that ``statement`` loads in a fresh interpreter."""
    script = (
        f"{statement}\n"
        "import json, sys\n"
        "ours = [m for m in sys.modules if m.split('.')[0] in ('eventbus', 'sinks')]\n"
        "print(json.dumps(sorted(ours)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(result.stdout))


def _under(modules: set[str], package: str) -> set[str]:
    return {name for name in modules if name == package or name.startswith(package + ".")}


def test_import_eventbus_loads_the_core_alone() -> None:
    """``import eventbus`` loads no coordinator, no CLI, no web app and no sinks."""
    loaded = _loaded_after("import eventbus")
    assert "eventbus" in loaded
    for package in ("eventbus.coordinator", "eventbus.cli", "eventbus.web", "sinks"):
        assert not _under(loaded, package), sorted(_under(loaded, package))


def test_import_sinks_loads_no_coordinator_and_no_entry_point() -> None:
    """``import sinks`` loads the core and the sinks only."""
    loaded = _loaded_after("import sinks")
    assert "sinks" in loaded
    for package in ("eventbus.coordinator", "eventbus.cli", "eventbus.web"):
        assert not _under(loaded, package), sorted(_under(loaded, package))


@pytest.mark.parametrize(
    "module", ["sinks.jsonl", "sinks.index", "sinks.artifacts", "sinks.workspace", "sinks.memory"]
)
def test_each_sink_part_loads_no_coordinator(module: str) -> None:
    """Every part of ``sinks`` stays below the coordinator."""
    loaded = _loaded_after(f"import {module}")
    assert not _under(loaded, "eventbus.coordinator")


def test_the_coordinator_loads_no_sinks_and_no_entry_point() -> None:
    """``eventbus.coordinator`` builds on the core only."""
    loaded = _loaded_after("import eventbus.coordinator")
    for package in ("sinks", "eventbus.cli", "eventbus.web"):
        assert not _under(loaded, package)


def test_moved_coordinator_names_still_resolve_from_eventbus() -> None:
    """``from eventbus import SessionCoordinator`` works, and only then loads the coordinator."""
    loaded = _loaded_after("from eventbus import SessionCoordinator")
    assert "eventbus.coordinator" in loaded


def _imports_of(path: Path, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``module`` imports anywhere (type-only and local imports
    too), with the packages Python imports on the way (not ``module``'s own ancestors)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    named: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                child = f"{target}.{alias.name}" if target else alias.name
                named.add(child if child in known else target)
    ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
    found = set()
    for name in named:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in known and prefix not in ancestors and prefix != module:
                found.add(prefix)
    return found


def test_no_module_imports_itself_through_others() -> None:
    """The import graph of ``src`` has no circle, counting every import statement."""
    source = Path(__file__).resolve().parents[1] / "src"
    modules: dict[str, tuple[Path, bool]] = {}
    for path in source.rglob("*.py"):
        parts = list(path.relative_to(source).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    known = set(modules)
    graph = {
        name: _imports_of(path, name, is_package, known)
        for name, (path, is_package) in modules.items()
    }
    circles = [sorted(component) for component in _strongly_connected(graph) if len(component) > 1]
    assert circles == []


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iteratively: the graph's strongly connected components."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                found.append(component)
    return found
