"""Where the candidates stage runs (rules `engine:`, --engine).

`local` (the default) is `find_pairs` as it is: every unit of the built index in this process.
`ray` splits the units (inverted lists of the IVF list scan, query rows otherwise) into ranges
and runs each range as a Ray task (`ray_engine.py`); the driver checkpoints every finished range
in the cache folder and feeds the ranges' pairs into the same collector, so the result is the
local engine's. Ray is an optional extra and only imported when the engine is `ray`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..rules import EngineRules
    from .ray_engine import RayEngine

RAY_INSTALL = 'pip install "dataset-checks[ray]"'


class EngineUnavailable(RuntimeError):
    """The engine the rules ask for cannot run here (Ray not installed)."""


def ray_missing() -> str | None:
    """Why `engine: ray` cannot run in this environment, or None when it can."""
    if importlib.util.find_spec("ray") is None:
        return f"engine: ray needs Ray, which is not installed: {RAY_INSTALL}"
    return None


def make_engine(rules: EngineRules | None, cache_dir: Path | None = None) -> RayEngine | None:
    """The engine for `Rules.engine` (an `EngineRules`): None for `local`, else an object whose
    `candidates(built, collector, vectors, x, progress)` runs the candidates stage. Checkpoints go
    to `cache_dir/ranges` (none without a cache folder)."""
    if rules is None or rules.type == "local":
        return None
    if rules.type == "ray":
        why = ray_missing()
        if why:
            raise EngineUnavailable(why)
        from .ray_engine import RayEngine

        checkpoints = Path(cache_dir) / "ranges" if cache_dir is not None else None
        return RayEngine(address=rules.address, ranges=rules.ranges, checkpoints=checkpoints)
    raise ValueError(f"unknown engine {rules.type!r}")
