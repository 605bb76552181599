"""Folders that may be one person: identity pairs ranked by the evidence that they should merge.

A finding says "this face of A matches that face of B". Many findings between the same two
folders, in both directions, say more: A and B may be one person under two names (a
transliteration variant, a name order swap, a nickname), or one folder may hold the other's
photos. For every identity pair with at least one finding this module gathers:

* faces of A that match some face of B (distinct), and faces of B that match A;
* the best similarity of any pair;
* the cosine of the two folders' mean vectors, after centring: the dataset mean is subtracted
  from every vector before the means are taken (descriptors such as dlib's are not centred, so
  every raw mean looks like every other; for centred embeddings such as ArcFace this changes
  nothing);
* the ranking score: that cosine corrected for crowding (CSLS, as in cross-lingual word
  matching): score = 2*cos(A, B) - r(A) - r(B), where r(X) is the mean cosine of X's mean vector
  to its `k` nearest other folder means. In a crowded region of the embedding space (dlib puts
  many East Asian faces close together, for instance) every pair of folders is close; a pair
  that stands out against its own neighbourhood is the better evidence. On LFW this brings
  name variants (Joseph_Blatter / Sepp_Blatter, Felipe_De_Borbon / Prince_Felipe) up among the
  duplicated photos, above look-alikes that merely share a crowded region.

Candidates are ranked by `evidence`, not by the score alone. A misfiled photo (one face of A
matching many faces of B: a copied video frame, a group photo whose face is B's) is a label
error whose folders' mean vectors differ, so its score is low, often the lowest of all; its
evidence is the share of B's faces the photo matches (patterns.py: `2·q − 1`, q = matched /
(faces of B + 3)). A candidate's evidence is the larger of its score and that; ties go to the
best similarity. When the folder names match too (the names check: one name folded, reordered,
contained or spelt nearly alike; `name_matches`), the candidate gains a name bonus, NAME_EVIDENCE
(by rule): two independent signals (faces that match across the folders, names that match) rarely
meet by chance. So candidates are sorted by the rank score = evidence + name bonus, and every
output shows that number (and its two parts), not the evidence alone. `pattern` says which shape the pairs have (patterns.Pattern: misfiled photo,
copies, different photos one-to-one, one person), in one line, with the next step.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, TextIO

import numpy as np

from .discover import display_name
from .findings import _atomic_write
from .issues import Finding
from .checks.folder_fit import crowding
from .patterns import COPY_SIMILARITY, Pattern, candidate_pattern
from .text import cell_name, csv_cell, csv_uncell, name_cell

CSLS_K = 5
EXAMPLES = 4
# Added to a candidate's evidence when the two folder names match, by the names check's rule. A
# name folded or reordered is the stronger sign; near spellings and contained names collide by
# chance (Kim_Jong-Il / Kim_Yong-il are two men on LFW: +0.5 lifted them from 304th to 15th).
NAME_EVIDENCE = {"exact": 0.5, "reordered": 0.5, "subset": 0.25, "near": 0.25}
CSV_HEADER = (
    "rank", "identity", "other_identity", "score", "mean_cosine", "best_similarity",
    "faces_matching", "faces", "other_faces_matching", "other_faces", "pairs", "waived",
    "rank_score", "evidence", "name_bonus", "pattern",  # rows are sorted by rank_score = evidence + name_bonus
)


@dataclass
class MergeCandidate:
    identity: str
    other_identity: str
    faces_matching: int  # distinct faces of `identity` that match a face of `other_identity`
    faces: int  # faces (usable vectors) in `identity`
    other_faces_matching: int
    other_faces: int
    pairs: int
    best_similarity: float
    mean_cosine: float  # centred mean vectors
    score: float
    examples: list[Finding] = field(default_factory=list)  # the best pairs, best first
    waived: str | None = None  # set when every pair between the two is waived
    name_match: str | None = None  # the names check's rule when the folder names match (exact, reordered...)
    worst_similarity: float | None = None  # the lowest similarity of the pairs (copies need it >= copy_similarity)
    copy_similarity: float = COPY_SIMILARITY  # the run's cosine of the same photo (patterns.py)

    @property
    def pattern(self) -> Pattern:
        return candidate_pattern(self)

    @property
    def evidence(self) -> float:
        """The ranking key (see the module doc): the score, or a misfiled photo's evidence."""
        return self.pattern.evidence

    @property
    def name_bonus(self) -> float:
        """NAME_EVIDENCE of the names check's rule when the folder names match, else 0."""
        return NAME_EVIDENCE.get(self.name_match, 0.25) if self.name_match else 0.0

    @property
    def rank_evidence(self) -> float:
        """What candidates are ranked by (the rank score): the evidence plus the name bonus."""
        return self.evidence + self.name_bonus

    def row(self, rank: int) -> tuple[str | int, ...]:
        return (
            rank, name_cell(self.identity), name_cell(self.other_identity), f"{self.score:.4f}",
            f"{self.mean_cosine:.4f}", f"{self.best_similarity:.6f}", self.faces_matching, self.faces,
            self.other_faces_matching, self.other_faces, self.pairs, csv_cell(self.waived or ""),
            f"{self.rank_evidence:.4f}", f"{self.evidence:.4f}", f"{self.name_bonus:.2f}", self.pattern.kind,
        )

    def line(self) -> str:
        return (
            f"{display_name(self.identity)} + {display_name(self.other_identity)}: rank score "
            f"{self.rank_evidence:.3f} (evidence {self.evidence:.3f} + name bonus {self.name_bonus:.2f}), "
            f"score {self.score:.3f}, "
            f"{self.faces_matching}/{self.faces} and {self.other_faces_matching}/{self.other_faces} faces match, "
            f"best {self.best_similarity:.4f}, mean-vector cosine {self.mean_cosine:.3f}"
            + (f", names match ({self.name_match})" if self.name_match else "")
            + (f" (waived: {self.waived})" if self.waived else "")
        )


def folder_means(vectors: np.ndarray, owner: np.ndarray, n_identities: int, block: int = 1024) -> np.ndarray:
    """Unit mean vector of every identity after centring (zero rows for empty identities).

    Rows are centred and normalised in float32 blocks (a ranking signal, not the gate: float32
    is plenty, and a whole-table float64 copy cost more than the rest of the report on the 57k
    benchmark); block sums are accumulated in float64."""
    x = np.asarray(vectors, dtype=np.float32)
    means = np.zeros((n_identities, x.shape[1] if x.ndim == 2 else 0))
    if len(x) == 0:
        return means
    from .memory import release

    total = np.zeros(x.shape[1])
    for s in range(0, len(x), 1 << 16):  # blocks, each given back: no whole-table pass stays resident
        total += x[s : s + (1 << 16)].sum(axis=0, dtype=np.float64)
        release(vectors, s, s + (1 << 16))
    centre = (total / len(x)).astype(np.float32)
    order = np.argsort(owner, kind="stable")
    owner_sorted = np.asarray(owner)[order]
    for s in range(0, len(order), block):
        rows = order[s : s + block]
        xc = x[rows] - centre
        if rows.size and rows[-1] - rows[0] == rows.size - 1:  # a run of table rows (the usual case)
            release(vectors, int(rows[0]), int(rows[-1]) + 1)  # after the run: do not refill the mapping
        norms = np.sqrt(np.einsum("ij,ij->i", xc, xc))
        xc /= np.where(norms > 0, norms, 1.0)[:, None]
        ids, inv = np.unique(owner_sorted[s : s + block], return_inverse=True)
        member = np.zeros((ids.size, rows.size), dtype=np.float32)
        member[inv, np.arange(rows.size)] = 1.0
        means[ids] += member @ xc  # per-identity sums of this block (GEMM, not reduceat: 3x faster)
    norms = np.sqrt(np.einsum("ij,ij->i", means, means))
    return means / np.where(norms > 0, norms, 1.0)[:, None]


def merge_candidates(
    vectors: np.ndarray,
    owner: np.ndarray,
    names: list[str],
    pairs: Iterable[Finding],
    k: int = CSLS_K,
    examples: int = EXAMPLES,
    name_matches: Mapping[tuple[str, str], str] | None = None,
    means: np.ndarray | None = None,
    copy_similarity: float | None = None,
) -> list[MergeCandidate]:
    """Every identity pair with at least one finding (waived ones included), best evidence first.

    name_matches: (identity, other_identity) -> rule for folder names that match, either order
    (checks.names: `matches_of(check_results.values())`); such candidates rank higher (the rank
    score, `rank_evidence`, is the evidence plus their `name_bonus`).
    copy_similarity: the run's cosine of the same photo (patterns.py; None: COPY_SIMILARITY).
    means: `folder_means` when the caller has them (the checks' CheckData.folder_means)."""
    index = {name: i for i, name in enumerate(names)}
    sizes = np.bincount(np.asarray(owner, dtype=np.int64), minlength=len(names))
    groups: dict[tuple[str, str], list[Finding]] = {}
    for f in pairs:
        a, b = sorted((f.identity, f.other_identity))
        groups.setdefault((a, b), []).append(f)
    if not groups:
        return []
    if means is None:
        means = folder_means(vectors, owner, len(names))
    keys = list(groups)
    rows_a = np.array([index[a] for a, _ in keys])
    rows_b = np.array([index[b] for _, b in keys])
    cos = np.einsum("ij,ij->i", means[rows_a], means[rows_b])
    involved = np.unique(np.concatenate([rows_a, rows_b]))
    r = np.zeros(len(names))
    r[involved] = crowding(means, involved, k)
    score = 2 * cos - r[rows_a] - r[rows_b]
    out = []
    for n, (a, b) in enumerate(keys):
        group = sorted(groups[(a, b)], key=lambda f: -f.similarity)
        faces_a = {f.file if f.identity == a else f.other_file for f in group}
        faces_b = {f.other_file if f.identity == a else f.file for f in group}
        waived = {f.waived for f in group}
        out.append(MergeCandidate(
            identity=a, other_identity=b,
            faces_matching=len(faces_a), faces=int(sizes[index[a]]),
            other_faces_matching=len(faces_b), other_faces=int(sizes[index[b]]),
            pairs=len(group), best_similarity=group[0].similarity,
            mean_cosine=float(cos[n]), score=float(score[n]),
            examples=[_oriented(f, a) for f in group[:examples]],
            waived=group[0].waived if None not in waived else None,
            name_match=(name_matches.get((a, b)) or name_matches.get((b, a))) if name_matches else None,
            worst_similarity=group[-1].similarity,
            copy_similarity=COPY_SIMILARITY if copy_similarity is None else float(copy_similarity),
        ))
    out.sort(key=lambda c: (-c.rank_evidence, -c.best_similarity, c.identity, c.other_identity))
    return out


def _oriented(f: Finding, identity: str) -> Finding:
    if f.identity == identity:
        return f
    return Finding(f.other_identity, f.other_file, f.identity, f.file, f.similarity, f.waived)


def write_merge_csv(candidates: list[MergeCandidate], path: Path) -> Path:
    def write(fh: TextIO) -> None:
        w = csv.writer(fh)
        w.writerow(CSV_HEADER)
        w.writerows(c.row(rank) for rank, c in enumerate(candidates, start=1))

    _atomic_write(path, write)
    return path


def read_merge_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a merge_candidates.csv; names back to the file system's names."""
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for col in ("identity", "other_identity"):
            row[col] = cell_name(row[col])
        row["waived"] = csv_uncell(row["waived"])
    return rows
