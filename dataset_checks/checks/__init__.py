"""The registry of checks: one module per kind of label error.

A new check touches exactly one file of the package, its own module `checks/<name>.py`, plus its
tests: a `Check` subclass decorated with `@register`, whose `order` places it in the report
(builtin checks 0-2, misfiled 10, consistency 20, exact_duplicates 30, near_duplicates 40,
names 50, leakage 60, calibration 70). `all_checks()` finds the module itself: it imports every
module of this package except the helpers in `_NOT_CHECKS` and names starting with `_` (a new
helper module is better named so; imported by mistake it registers nothing, it only costs its
import). Everything else comes from the registry: its rules.yaml section
(`checks: {<name>: {enabled, severity, ...}}`), its pytest test family, its `<name>.csv`, its
report section, its findings.json entry and its baseline key. Importing this package imports no
heavy library: the check modules are imported by the first `all_checks()`.
"""

from __future__ import annotations

import importlib

from .base import Check, CheckSettings, Issue, Param, SEVERITIES

_REGISTRY: dict[str, type[Check]] = {}
# modules of this package that define no check (the checks' shared helpers); every other module
# is a check module, which registers its checks on import
_NOT_CHECKS = frozenset({"base", "settings", "data", "folder_fit", "itaiji"})
_loaded = False


def register(cls: type[Check]) -> type[Check]:
    known = _REGISTRY.get(cls.name)
    # the same class imported again (a test runner that unloads modules) replaces itself
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"two checks named {cls.name!r}: {known.__module__} and {cls.__module__}")
    _REGISTRY[cls.name] = cls
    return cls


def check_modules() -> list[str]:
    """The check modules of this package (short names, sorted): every module but the helpers."""
    import pkgutil  # here: importing the package stays as light as it was

    return sorted(m.name for m in pkgutil.iter_modules(__path__)
                  if m.name not in _NOT_CHECKS and not m.name.startswith("_"))


def all_checks() -> list[type[Check]]:
    """Every registered check, in report order (`Check.order`; on a tie, by module, then as registered)."""
    global _loaded
    if not _loaded:
        for module in check_modules():
            importlib.import_module(f"{__name__}.{module}")
        _loaded = True
    # a stable sort: checks of one module with one order stay in registration (definition) order
    return sorted(_REGISTRY.values(), key=lambda c: (c.order, c.__module__))


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
           "check_modules", "get", "register"]
