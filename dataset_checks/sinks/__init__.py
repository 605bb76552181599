"""Outputs of a run: every file of the report folder is a registered sink over the run's result.

A new output (SARIF, parquet, ...) is one module in this package: a class with `name`, `order`,
`names(rules)` (the files it may write: checked for planted links before the run starts) and
`files(view)` (each file's name and the function that writes it), decorated with `@register`; the
registry finds the module itself. An output written only when rules.yaml asks for it (`outputs:
[face01_pairs]`) also has `output`, the name asked for, and writes only when `view.rules.outputs`
holds it. Write through `safe_write.atomic_write` (atomic, never through a link). A file that cannot be written is named in the summary and fails the run; the other files
are still written.

The other outputs read the same result: the terminal summary, report.html (pytest-html) and JUnit
XML are pytest's, fed by the plugin (report.py); the baseline is written by --update-baseline
(baseline.py).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar, Mapping, Protocol, Sequence

from ..discover import display_name

if TYPE_CHECKING:
    from ..check_run import CheckResult
    from ..findings import Findings
    from ..merge import MergeCandidate
    from ..rules import Rules


@dataclass(frozen=True)
class RunView:
    """What the sinks read: the run's result and what the session derived from it."""

    findings: Findings
    candidates: Sequence[MergeCandidate] = ()
    check_results: Mapping[str, CheckResult] = field(default_factory=dict)
    # seconds of the stages run after the pipeline (the merge ranking), added to findings.json's
    timings: Mapping[str, float] = field(default_factory=dict)
    # the run's rules: the optional outputs asked for (`outputs:`); None writes none of them
    rules: Rules | None = None


class Sink(Protocol):
    name: ClassVar[str]
    order: ClassVar[int]  # the order the files are written and listed in

    def names(self, rules: Rules) -> list[str]: ...

    def files(self, view: RunView) -> list[tuple[str, Callable[[Path], object]]]: ...


_REGISTRY: dict[str, type[Sink]] = {}
_loaded = False


def register(cls: type[Sink]) -> type[Sink]:
    known = _REGISTRY.get(cls.name)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"two outputs named {cls.name!r}: {known.__module__} and {cls.__module__}")
    _REGISTRY[cls.name] = cls
    return cls


def all_sinks() -> list[Sink]:
    """One instance of every registered sink, in `order`."""
    global _loaded
    if not _loaded:
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")
        _loaded = True
    return [cls() for cls in sorted(_REGISTRY.values(), key=lambda c: (c.order, c.name))]


class UnknownOutput(ValueError):
    """rules `outputs:` names an output no sink writes; the message names the known ones."""


def optional_outputs() -> list[str]:
    """The names rules `outputs:` accepts: each sink's `output`, the sinks that write only when asked."""
    return sorted({name for sink in all_sinks() if isinstance(name := getattr(sink, "output", None), str)})


def _check_outputs(rules: Rules) -> None:
    known = optional_outputs()
    unknown = [name for name in rules.outputs if name not in known]
    if unknown:
        from ..rules import brief

        where = f"{display_name(str(rules.source))}: " if rules.source is not None else ""
        raise UnknownOutput(f"{where}key 'outputs': expected optional outputs among "
                            f"{', '.join(known) or '(none)'}, found unknown {brief([display_name(n) for n in unknown])}")


@dataclass
class Written:
    files: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "<file>: <why>" for each file not written


def planned_files(report_dir: Path, rules: Rules) -> list[Path]:
    """Every file the sinks may write, and the report folder's lock file: checked for planted
    links before the run (plugin._check_writable). Raises UnknownOutput when rules `outputs:`
    names an output that no sink writes."""
    from ..outputs import LOCK_NAME

    _check_outputs(rules)

    return [Path(report_dir) / name for sink in all_sinks() for name in sink.names(rules)] + [Path(report_dir) / LOCK_NAME]


def write_all(report_dir: Path, view: RunView) -> Written:
    """Every sink's files. A file that cannot be written (disk full, folder gone, a link planted
    at its name) is named in `errors`; the other sinks still write."""
    out = Written()
    for sink in all_sinks():
        for name, write in sink.files(view):
            path = Path(report_dir) / name
            try:
                write(path)
            except OSError as exc:
                out.errors.append(f"{display_name(str(path))}: {exc.strerror or exc}")
            else:
                out.files.append(path)
    return out
