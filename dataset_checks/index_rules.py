"""rules.yaml `index:`, the search's settings: apart from rules.py so that the search backends,
which rules.py does not need, read their settings without importing the rules parser."""

from __future__ import annotations

from dataclasses import dataclass

SCAN_KINDS = ("lists", "faiss")


@dataclass(frozen=True)
class IndexRules:
    type: str = "auto"  # auto (exact: flat below flat_below, else caps) | flat | caps | ivf (not proven exact)
    nlist: int | None = None  # None: chosen from the dataset size
    nprobe: int | None = None  # None: calibrated on a sample against brute force
    flat_below: int = 20_000  # exact flat search below this many vectors (measured crossover)
    gpu: bool | None = None  # None: use a GPU when faiss sees one
    recall_target: float = 0.999  # sampled recall that calibrating nprobe must reach
    scan: str = "lists"  # CPU IVF: lists (one BLAS product per inverted list) | faiss (range_search)
    # ivf: after the calibrated search, test every face against every folder's cap and score what
    # no bound excludes, so that the search is exact (backends/bounds.py); `auto` on a GPU sets it
    certify: bool = False
