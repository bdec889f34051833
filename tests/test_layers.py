"""The import layers: the core loads no coordinator and no sinks; the sinks load no coordinator.

Each check runs in a fresh interpreter, so what a test imported earlier cannot hide a
dependency: it imports one package and lists what ``sys.modules`` then holds.
"""

from __future__ import annotations

import json
import subprocess
import sys

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
