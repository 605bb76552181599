"""Exact search by folder caps: the default above `index.flat_below` vectors.

Every face is tested against the cap of every folder after its own (folders smallest first), one
float32 product per (face, folder): a cap whose provable bound excludes the face costs nothing
more, and the members of the others are scored (backends/bounds.py, `Certifier`, for the proof).
No index is trained and nothing is sampled: every cross-folder pair at or above the radius is
found, and the search says so (`info["certified"]`: exact, how).

Cost: about the sum over folder pairs of the smaller folder's size in products (0.46 N x F / 2
on the heavy-tailed seed-scale data), plus the needed members; where folders are tight
(identity clusters) that is far below the flat search's N x N / 2 and, at 300k to 1M faces on
this project's benchmark, below the IVF search with its k-means and calibration
(benchmarks/exact_default.py). Where most folders hold one or two faces (LFW), they have no cap
and their rows are scored one by one: the cost approaches the flat search's.

Units are rows in the search's folder order, so a range engine (engines/) runs a run of folders
per range; a row's cost is the number of folders after its own (`unit_costs`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..memory import gather
from ..context import RunContext, budget_of
from . import (DEFAULT_TUNING, BackendRequest, BackendSpec, Emit, Place, Progress, SearchTuning, _bar, _span, _stage,
               register)
from . import bounds as _bounds
from .flat import FlatBackend, FlatIndex

# With `flat_fallback` (index.type auto): the flat search instead when, on a sample, the caps
# leave more than this share of the work to scoring (a low threshold, folders of one or two
# faces); exact too, and then cheaper (seed-scale 57k at 0.5: 96% left, flat 23.8 s, caps 37.6 s)
CAPS_MAX_SCANNED = 0.4


class CapsIndex:
    unit = "vec"

    def __init__(self, x: np.ndarray, labels: np.ndarray, radius: float, tuning: SearchTuning,
                 certifier: _bounds.Certifier):
        self.x, self.labels, self.radius, self.tuning = x, labels, radius, tuning
        self.certifier = certifier
        self.rows = certifier.order()
        self.units = len(x)
        caps = certifier.caps
        self.info: dict[str, Any] = {
            "index": "folder caps", "caps": int(len(caps.cutoff)), "loose_rows": int(len(certifier.loose)),
            "certified": {"exact": True,
                          "how": "folder caps: each face against every other folder's cap, proven or scored"}}
        self.stats: dict[str, Any] = {}

    def calibrate(self, progress: Progress | None = None) -> None:
        pass  # exact: nothing to calibrate

    def scanned_share(self, queries: int = 512, seed: int = 0, context: RunContext | None = None) -> float:
        """The share of the work the caps leave to scoring, estimated on a sample of faces: the
        (face, other folder's cap) tests that cannot exclude the cap, and the faces outside every
        cap (scored one by one). Near 0 on tight identity clusters at a useful threshold; at a low
        threshold (0.5 on 512-d faces) or with folders of one or two faces it nears 1, and the
        flat search, with no cap tests to pay for, is the cheaper exact search."""
        cert, n = self.certifier, len(self.x)
        caps = cert.caps
        if n == 0:
            return 0.0
        loose = len(cert.loose) / n
        if not len(caps.cutoff):
            return 1.0
        rows = np.sort(np.random.default_rng(seed).choice(n, size=min(queries, n), replace=False))
        sims = np.asarray(gather(self.x, rows, budget=budget_of(context)), dtype=np.float32) @ caps.centres.T  # scattered reads
        other = cert.folder[rows][:, None] != caps.group[None, :]
        need = (sims >= caps.cutoff[None, :]) & other
        share = float(np.count_nonzero(need)) / max(1, int(np.count_nonzero(other)))
        return share * (1.0 - loose) + loose

    def candidates(self, emit: Emit, start: int = 0, end: int | None = None,
                   progress: Progress | None = None, context: RunContext | None = None) -> None:
        first, last = _span(self.units, start, end)
        bar = _bar(progress, last - first, "searching (folder caps)", "vec")
        self.certifier.search(self.rows[first:last], emit, self.stats, self.tuning.scan_cells, progress=bar.update)
        bar.close()

    def unit_costs(self) -> NDArray[np.float64]:
        """Each unit's share of the work, for cutting ranges of equal cost: the folders after
        its row's own (its cap tests) plus one."""
        folder = self.certifier.folder[self.rows]
        costs: NDArray[np.float64] = (int(folder.max(initial=0)) + 2 - folder).astype(np.float64)
        return costs

    def exact_rows(self, rows: np.ndarray, emit: Emit) -> None:
        """These rows against every other folder (both sides): an incremental run's new rows."""
        self.certifier.search(rows, emit, self.stats, self.tuning.scan_cells, both_sides=True)


class CapsBackend:
    def __init__(self, tuning: SearchTuning = DEFAULT_TUNING, flat_fallback: bool = False,
                 context: RunContext | None = None):
        self.tuning, self.flat_fallback, self.context = tuning, flat_fallback, context

    def build(self, x: NDArray[np.float32], labels: np.ndarray, radius: float, progress: Progress | None = None,
              place: Place | None = None) -> CapsIndex | FlatIndex:
        # `place` (a device) is not used: the caps search runs its products with numpy's BLAS
        with _stage(progress, "folder caps"):
            norms = _bounds.NormRange.of(x)
            certifier = _bounds.Certifier(x, labels, radius, norms, min_size=self.tuning.cap_min,
                                          peel=self.tuning.cap_peel)
        built = CapsIndex(x, labels, radius, self.tuning, certifier)
        if self.flat_fallback:
            share = built.scanned_share(context=self.context)
            if share > CAPS_MAX_SCANNED:  # the caps exclude too little to pay
                flat = FlatBackend(self.tuning).build(x, labels, radius, progress)
                flat.info = {**flat.info, "caps_scanned_share": round(share, 4),
                             "chosen": f"flat: folder caps would leave {share:.0%} of the work to scoring"}
                return flat
        return built


def _caps(request: BackendRequest) -> CapsBackend:
    # numpy's BLAS on the CPU, whatever the device; auto: the flat search where caps cannot pay
    return CapsBackend(request.tuning, flat_fallback=request.rules.type == "auto", context=request.context)


register(BackendSpec("caps", _caps, order=20))
