"""The public surface: what `__init__` exports is what exists."""

from __future__ import annotations

import importlib

import pytest


def _isort_style(name: str) -> tuple[int, str]:
    """Constants, then classes, then functions, each alphabetical (ruff's RUF022)."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


@pytest.mark.parametrize("package", ["eventbus", "sinks"])
def test_all_lists_exactly_the_public_names(package: str) -> None:
    """__all__ is sorted, complete, and every name in it exists."""
    module = importlib.import_module(package)
    exported = list(module.__all__)
    assert exported == sorted(exported, key=_isort_style)
    public = {name for name in vars(module) if not name.startswith("_")}
    public -= {"annotations"}
    submodules = {name for name in public if type(getattr(module, name)).__name__ == "module"}
    assert set(exported) == public - submodules
    for name in exported:
        assert getattr(module, name) is not None


def test_errors_form_one_hierarchy() -> None:
    """Every exception eventbus raises derives from EventBusError."""
    import eventbus

    errors = [
        getattr(eventbus, name)
        for name in eventbus.__all__
        if isinstance(getattr(eventbus, name), type)
        and issubclass(getattr(eventbus, name), BaseException)
    ]
    assert len(errors) >= 6
    assert all(issubclass(error, eventbus.EventBusError) for error in errors)
