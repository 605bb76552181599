"""The registry of checks: one module per kind of label error.

A new check is one module in this package that defines a `Check` subclass and decorates it with
`@register`, plus its line in `_MODULES` below (import order is report order). Everything else
comes from the registry: its rules.yaml section (`checks: {<name>: {enabled, severity, ...}}`),
its pytest test family, its `<name>.csv`, its report section, its findings.json entry and its
baseline key. Importing this package imports no heavy library.
"""

from __future__ import annotations

import importlib

from .base import Check, CheckSettings, Issue, Param, SEVERITIES

_REGISTRY: dict[str, type[Check]] = {}
# check modules, in report order; each registers itself on import
_MODULES: tuple[str, ...] = ("builtin", "misfiled", "consistency", "exact_duplicates", "near_duplicates", "names",
                             "leakage", "calibration")
_loaded = False


def register(cls: type[Check]) -> type[Check]:
    known = _REGISTRY.get(cls.name)
    # the same class imported again (a test runner that unloads modules) replaces itself
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"two checks named {cls.name!r}: {known.__module__} and {cls.__module__}")
    _REGISTRY[cls.name] = cls
    return cls


def all_checks() -> list[type[Check]]:
    """Every registered check, in report order."""
    global _loaded
    if not _loaded:
        for module in _MODULES:
            importlib.import_module(f"{__name__}.{module}")
        _loaded = True
    order = {f"{__name__}.{m}": k for k, m in enumerate(_MODULES)}
    return sorted(_REGISTRY.values(), key=lambda c: order.get(c.__module__, len(order)))


def __getattr__(name: str) -> object:
    # The run's data types live in checks/data.py, which imports the pipeline's types; importing
    # them here would tie this registry (read by rules.py) into a circle.
    if name in ("AgainstData", "CheckData"):
        from . import data

        return getattr(data, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get(name: str) -> type[Check]:
    for check in all_checks():
        if check.name == name:
            return check
    raise KeyError(name)


__all__ = ["AgainstData", "Check", "CheckData", "CheckSettings", "Issue", "Param", "SEVERITIES", "all_checks",
           "get", "register"]
