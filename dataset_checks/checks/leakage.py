"""Leakage: faces (and people) of this dataset that are also in another one (rules `against:`,
--against): a benchmark such as LFW, or the validation / test split of the same data.

Two kinds of issue, told apart by `file`:
  face leak     identity, file, other_identity, other_file: a face of this dataset whose cosine
                with a face of the other dataset is at or above the run's threshold (the very test
                test_identity applies inside the dataset, applied across datasets);
  same person   identity, "", other_identity, "": the centred folder means of the two folders
                point the same way far beyond what two different people do in these data.
                Catches the same person photographed differently, where no face pair is close.

`other_identity` is `<dataset>/<folder>`: the other dataset's name (its folder's base name, with
parent folders added until the names of all --against roots differ) and the folder in it,
split at the LAST "/" (a folder name holds no "/"). Base names keep baseline keys stable when a
benchmark moves to another disk.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..arrays import nonzero
from ..backends import RADIUS_MARGIN  # the search's own float32 margin
from . import register
from .base import Check, CheckSettings, Issue, Param
from .data import CheckData
from ..discover import Identity, display_name
from ..folderscan import why_no_identities
from ..text import own_text
from ..problems import MAX_PROBLEMS, SHOWN, Problem, few
from ..vectors import NO_FACE

if TYPE_CHECKING:
    from ..vectors import VectorTable

# The cross-dataset search bounds: score cells per BLAS product and pairs kept in total. A run
# over the cap is an error of the check (its tests fail saying so), never an unbounded list.
SCAN_CELLS = 1 << 22
BASE_BYTES = 64 << 20  # rows of the other dataset indexed at a time
MAX_PAIRS = 20_000_000
NULL_SAMPLE = 1_000_000  # folder-mean pairs sampled to measure what different people score
NULL_SEED = 0


def dataset_names(roots: list[Path]) -> list[str]:
    """Shortest unique path tails: base names unless two roots share one."""
    parts = [Path(r).parts[1:] if Path(r).is_absolute() else Path(r).parts for r in roots]
    longest = max((len(p) for p in parts), default=1)
    for depth in range(1, longest + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    # the same root twice: only the position tells them apart
    names = [f"{p[-1] if p else 'dataset'}#{k + 1}" for k, p in enumerate(parts)]
    return names


class AgainstDatasetError(RuntimeError):
    """An --against dataset that cannot stand for itself: the leakage check fails (every test of
    its family), as test_dataset fails for this dataset."""


def lost_folders(identities: list[Identity], table: VectorTable | None) -> list[Problem]:
    """The folders of another dataset that gave no vectors to `table`, each by its first fatal
    problem (a dangling link, a symbolic link loop, no permission, another model, no embeddings);
    a FACE01 folder in which FACE01 found no face is not lost: it holds no face to compare."""
    out = []
    for k, ident in enumerate(identities):
        if table is not None and k < len(table.counts) and table.counts[k] > 0:
            continue
        probs = list(table.problems.get(k, ())) if table is not None else list(ident.problems)
        if probs and not any(p.fatal for p in probs) and any(p.code == NO_FACE for p in probs):
            continue  # FACE01 found no face there: a folder with nothing to leak, not a lost one
        first = next((p for p in probs if p.fatal), probs[0] if probs else None)
        out.append(first or Problem(ident.display + "/", "no usable vectors", code="empty"))
    return out


def _listed(lost: list[Problem]) -> str:
    from collections import Counter

    codes = Counter(p.code for p in lost)
    more = f"; ... first {SHOWN} of {len(lost)} shown" if len(lost) > SHOWN else ""
    return ("(" + ", ".join(f"{n} {code}" for code, n in codes.most_common()) + "): "
            + "; ".join(str(p) for p in lost[:SHOWN]) + more)


def judge_against(root: Path, identities: list[Identity], table: VectorTable | None, key: str | None, dim: int,
                  other_model: Callable[[], VectorTable | None] | None = None) -> tuple[str | None, list[Problem]]:
    """Whether another dataset can be checked for leakage, by the rule test_dataset applies to this
    one, and more strictly: (why not, or None; the folders that gave no vectors).

    It cannot when it holds no identity folder (empty: storage not mounted?), when its vectors are
    of another model or dimension, when no folder gave vectors, or when more than half of its
    folders gave none (dangling links, loops, no permission, ...): a leakage check that read a
    fraction of the other dataset would pass on what it never saw. Fewer lost folders are named
    in the check's notes. `other_model()`: the dataset read for any model's vectors (a table),
    asked only when it gave none of this one's, to say what it holds instead."""
    if not identities:
        return why_no_identities(root, "--against"), []
    lost = lost_folders(identities, table)
    n = len(identities)
    if table is not None and len(table) and table.dim != dim:
        return (f"its {table.key} vectors are {table.dim}-d, this dataset's are {dim}-d ({key}): another model? "
                "Both datasets must be embedded by the same model"), lost
    if table is None or not len(table):
        seen = other_model() if other_model is not None and len(lost) and not all(
            any(p.fatal for p in i.problems) for i in identities) else None
        if seen is not None and len(seen) and (seen.key, seen.dim) != (key, dim):
            return (f"its vectors are {seen.dim}-d ({seen.key}), this dataset's are {dim}-d ({key}): another "
                    "model? Both datasets must be embedded by the same model"), lost
        return f"none of its {n} identity folder(s) gave vectors of this dataset's model " + _listed(lost), lost
    if 2 * len(lost) > n:
        return (f"{len(lost)} of its {n} identity folder(s) gave no vectors, more than half: not checked "
                + _listed(lost)), lost
    return None, lost


def cross_pairs(queries: np.ndarray, base: np.ndarray, threshold: float,
                max_pairs: int = MAX_PAIRS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (query row, base row) with float64 cosine >= threshold, ranked by similarity.

    An exact faiss flat range search of query blocks against an index of a block of `base`
    selects the candidates (radius lowered by a margin: faiss scores in float32); each is then
    re-scored in float64 like search.pair_similarity, so the answer is brute force's. Both tables
    are only read, in blocks (either may be a memmap larger than memory): memory is one base
    block's index, one query block's results and the pairs kept."""
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))
    if not len(queries) or not len(base) or queries.shape[1] != base.shape[1]:
        return empty
    import faiss

    base_rows = max(1, BASE_BYTES // (base.shape[1] * 4))
    out_i, out_j, out_s, total = [], [], [], 0
    for b0 in range(0, len(base), base_rows):
        index = faiss.IndexFlatIP(base.shape[1])
        index.add(np.ascontiguousarray(base[b0 : b0 + base_rows], dtype=np.float32))
        rows = max(1, min(8192, SCAN_CELLS // index.ntotal))
        for s in range(0, len(queries), rows):
            q = np.ascontiguousarray(queries[s : s + rows], dtype=np.float32)
            lims, dist, nb = index.range_search(q, float(threshold) - RADIUS_MARGIN)
            if not nb.size:
                continue
            qi = np.repeat(np.arange(s, s + len(lims) - 1, dtype=np.int64), np.diff(lims).astype(np.int64))
            nb = nb.astype(np.int64) + b0
            sim = _dot(queries, base, qi, nb)
            ok = sim >= threshold
            out_i.append(qi[ok])
            out_j.append(nb[ok])
            out_s.append(sim[ok])
            total += int(ok.sum())
            if total > max_pairs:
                raise RuntimeError(f"more than {max_pairs} face pairs across the datasets at or above "
                                   f"{threshold:g}: the threshold is far too low for a leakage check")
    if not out_i:
        return empty
    i, j, sim = (np.concatenate(a) for a in (out_i, out_j, out_s))
    order = np.lexsort((j, i, -sim))
    return i[order], j[order], sim[order]


def _dot(q: np.ndarray, b: np.ndarray, qi: np.ndarray, nb: np.ndarray, block: int = 1024) -> np.ndarray:
    # search.pair_similarity gathers both rows from one table; here they come from two
    out = np.empty(len(qi), dtype=np.float64)
    for s in range(0, len(qi), block):
        out[s : s + block] = np.einsum("ij,ij->i", np.asarray(q[qi[s : s + block]], np.float32).astype(np.float64),
                                       np.asarray(b[nb[s : s + block]], np.float32).astype(np.float64))
    return out


def centred_means(vectors: np.ndarray, owner: np.ndarray, n: int, centre: np.ndarray,
                  block: int = 1024) -> np.ndarray:
    """Unit mean of every identity's centred unit rows (merge.folder_means with a given centre:
    both datasets must be centred on the same point for their means to be comparable)."""
    x = np.asarray(vectors, dtype=np.float32)
    means = np.zeros((n, x.shape[1] if x.ndim == 2 else 0))
    c = centre.astype(np.float32)
    for s in range(0, len(x), block):
        xc = x[s : s + block] - c
        norms = np.sqrt(np.einsum("ij,ij->i", xc, xc))
        xc /= np.where(norms > 0, norms, 1.0)[:, None]
        np.add.at(means, owner[s : s + block], xc)
    norms = np.sqrt(np.einsum("ij,ij->i", means, means))
    return means / np.where(norms > 0, norms, 1.0)[:, None]


def null_level(a: np.ndarray, b: np.ndarray, sigmas: float, floor: float,
               sample: int = NULL_SAMPLE, seed: int = NULL_SEED) -> tuple[float, dict[str, Any]]:
    """The folder-mean cosine above which two folders are taken for one person.

    Almost every (this folder, other folder) pair is two different people, even when the
    datasets share many: a median and MAD over a sample of all pairs describe "different
    people" in these data and this model, untouched by the few true overlaps. The level is
    `sigmas` robust standard deviations above the median, never below `floor`."""
    ok_a, ok_b = np.flatnonzero(a.any(axis=1)), np.flatnonzero(b.any(axis=1))
    if not ok_a.size or not ok_b.size:
        return float("inf"), {"pairs": 0}
    rng = np.random.default_rng(seed)
    m = min(sample, ok_a.size * ok_b.size)
    ia, ib = ok_a[rng.integers(0, ok_a.size, m)], ok_b[rng.integers(0, ok_b.size, m)]
    cos = np.empty(m)
    step = max(1, SCAN_CELLS // (2 * a.shape[1]))  # gathered mean vectors: 32 MiB at a time
    for s in range(0, m, step):
        cos[s : s + step] = np.einsum("ij,ij->i", a[ia[s : s + step]], b[ib[s : s + step]])
    med = float(np.median(cos))
    sd = 1.4826 * float(np.median(np.abs(cos - med)))
    level = max(floor, med + sigmas * sd)
    return level, {"pairs": int(m), "median": round(med, 4), "robust_sd": round(sd, 4)}


def mean_pairs(a: np.ndarray, b: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (a row, b row) with cosine >= level, in blocks of rows of `a`."""
    out_i, out_j, out_s = [], [], []
    rows = max(1, SCAN_CELLS // max(len(b), 1))
    for s in range(0, len(a), rows):
        cos = a[s : s + rows] @ b.T
        r, c = nonzero(cos >= level)
        out_i.append(r + s)
        out_j.append(c)
        out_s.append(cos[r, c])
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return tuple(np.concatenate(x) for x in (out_i, out_j, out_s))  # type: ignore[return-value]


@register
class Leakage(Check):
    name = "leakage"
    order = 60
    title = "leakage into another dataset"
    doc = ("A face of this folder that is also in another dataset (rules against:, --against: a benchmark, a "
           "validation or test split): a face pair across the datasets at or above the threshold fails the "
           "folder. A folder whose centred mean matches a folder of the other dataset far beyond what different "
           "people do in these data is the same person in both (overlap_severity).")
    needs = frozenset({"vectors", "against"})
    severity = "fail"
    columns = {"score": "similarity"}
    params = {
        "overlap": Param(True, "also report folders that are the same person as a folder of the other dataset "
                               "(centred folder means)", kind="bool"),
        "overlap_severity": Param("warn", "what a same-person folder does to the test", kind="choice",
                                  choices=("fail", "warn", "info")),
        "overlap_sigmas": Param(5.0, "robust standard deviations above the median folder-mean cosine of "
                                     "two folders of the two datasets", low=0.0),
        "overlap_floor": Param(0.5, "the same-person level is never below this cosine", low=0.0, high=1.0),
    }

    def __init__(self) -> None:
        self._summary: dict[str, Any] = {}
        self._notes: list[str] = []  # folders of the other datasets that gave no vectors
        self._lost: set[str] = set()  # those folders as `<dataset>/<folder>`

    def run(self, data: CheckData, settings: CheckSettings) -> list[Issue]:
        if not data.against:
            self._summary = {"against": []}
            return []
        t = data.table
        names = dataset_names([o.root for o in data.against])
        unusable = [f"--against dataset {display_name(n)}: {o.unusable}" for n, o in zip(names, data.against)
                    if o.unusable]
        if unusable:  # a dataset it could (mostly) not read: never a pass on what it never saw
            raise AgainstDatasetError("\n".join(unusable))
        own = [i.name for i in t.identities]
        issues: list[Issue] = []
        per_dataset = []
        overlap = settings["overlap"] and len(t) > 0
        if overlap:  # one centre for both sides: this dataset's, the one its own threshold lives in
            centre = t.vectors.mean(axis=0, dtype=np.float64)
            means_a = centred_means(t.vectors, t.identity_of, len(own), centre)
        for name, other in zip(names, data.against):
            o = other.table
            assert o is not None  # a dataset without a table is unusable (judge_against), refused above
            fi, fj, fs = cross_pairs(t.vectors, o.vectors, data.threshold)
            theirs = [i.name for i in o.identities]
            for a, b, s in zip(fi.tolist(), fj.tolist(), fs.tolist()):
                issues.append(Issue(self.name, own[t.identity_of[a]], t.files[a],
                                    f"{name}/{theirs[o.identity_of[b]]}", o.files[b], score=s,
                                    detail=f"face also in {display_name(name)} (cosine {s:.4f} >= {data.threshold:g})",
                                    severity=settings.severity))
            facts = {"name": name, "root": display_name(str(other.root)), "identities": len(o.identities),
                     "faces": len(o), "face_pairs": int(fi.size),
                     "leaking_identities": int(np.unique(t.identity_of[fi]).size) if fi.size else 0,
                     "lost_folders": len(other.lost), "lost": [str(p) for p in other.lost[:MAX_PROBLEMS]]}
            if other.lost:  # named, never silent: leakage into these folders was not checked
                self._lost.update(f"{name}/{i.name}" for k, i in enumerate(o.identities) if not o.counts[k])
                self._notes.append(f"--against dataset {display_name(name)}: {len(other.lost)} of its "
                                   f"{len(o.identities)} identity folder(s) gave no vectors, leakage into them not "
                                   f"checked: {few([str(p) for p in other.lost])}")
            if overlap and len(o):
                means_b = centred_means(o.vectors, o.identity_of, len(theirs), centre)
                level, null = null_level(means_a, means_b, settings["overlap_sigmas"], settings["overlap_floor"])
                mi, mj, ms = mean_pairs(means_a, means_b, level)
                for a, b, s in zip(mi.tolist(), mj.tolist(), ms.tolist()):
                    issues.append(Issue(self.name, own[a], "", f"{name}/{theirs[b]}", "", score=float(s),
                                        detail=f"same person as {display_name(name)}/{display_name(theirs[b])}: "
                                               f"centred folder means at cosine "
                                               f"{s:.4f} >= {level:.4f} (median {null['median']:g} + "
                                               f"{settings['overlap_sigmas']:g} robust sd {null['robust_sd']:g} "
                                               f"of two folders here and there)",
                                        severity=settings["overlap_severity"]))
                facts.update(overlap_level=round(level, 6), overlap_null=null, overlaps=int(mi.size))
            per_dataset.append(facts)
        self._summary = {"against": per_dataset}
        return issues

    def evaluated(self, key: tuple[str, ...]) -> bool:
        # other_identity is `<dataset>/<folder>`: a row about a dataset not read this run stays
        return (key[2].rpartition("/")[0] in {d["name"] for d in self._summary.get("against", [])}
                and key[2] not in self._lost)  # a folder that gave no vectors was not evaluated either

    def summary(self) -> dict[str, Any]:
        return self._summary

    def notes(self) -> list[str]:
        return list(self._notes)

    def report_html(self) -> str:
        rows = []
        for d in self._summary.get("against", []):
            level = f"{d['overlap_level']:.4f}" if "overlap_level" in d else "off"
            rows.append(f"<tr><td>{escape(display_name(d['name']))}</td><td>{escape(d['root'])}</td>"
                        f"<td>{d['identities']}</td><td>{d['faces']}</td><td>{d['face_pairs']}</td>"
                        f"<td>{d['leaking_identities']}</td><td>{level}</td><td>{d.get('overlaps', 0)}</td>"
                        f"<td>{d.get('lost_folders', 0)}</td></tr>")
        if not rows:
            return "<p>No other dataset given (rules against:, --against): nothing to compare with.</p>"
        return ("<table><tr><th>Other dataset</th><th>Root</th><th>Folders</th><th>Faces</th><th>Face pairs</th>"
                "<th>Leaking folders</th><th>Same-person level</th><th>Same-person folders</th>"
                "<th>Folders not read</th></tr>" + "".join(rows) + "</table>"
                + "".join(f"<p class='dc-bad'>{escape(own_text(note))}</p>" for note in self._notes))
