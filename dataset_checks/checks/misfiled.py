"""Misfiled faces: a photo far from the rest of its own folder but close to another folder.

Both this check and `consistency` judge a face by how well it fits folders, measured the same
way: the mean cosine of the face to the faces of a folder, after centring (the dataset mean is
subtracted and rows re-normalised; raw dlib descriptors score 0.83 between strangers, so without
centring every folder looks alike). With S_f the sum of folder f's centred faces and n_f its size:

* own(i)  = x_i . (S_f - x_i) / (n_f - 1): mean similarity to the OTHER faces of its folder;
* other(i, g) = x_i . S_g / n_g: mean similarity to the faces of another folder g.

Both are means over faces of a folder, so they are on one scale and compare directly, and each is
one dot product per face per folder (no face pairs). The best other folder of a face comes from
an exact faiss inner-product search of the face against the folder mean vectors S_g / n_g, and
only for the faces that are already far from their own folder (a few percent): the cost is
O(n d) for everyone plus O(suspects x identities x d).

What "same person" and "far" mean differs by model (dlib, ArcFace) and by dataset, so the
thresholds are quantiles of own(i) over the dataset's faces (folders of at least 3 faces), with
numbers in rules.yaml to override them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import register
from .base import Check, CheckData, CheckSettings, Issue, Param

if TYPE_CHECKING:
    import numpy as np

BLOCK = 4096  # rows centred at a time: bounded memory at any dataset size
SEARCH_BLOCK = 8192  # suspect rows per faiss query batch


@dataclass(frozen=True)
class AutoNumber(Param):
    """A number, or `auto`: chosen from the data."""

    kind: str = "number"

    def expected(self) -> str:
        return "auto or " + super().expected()

    def valid(self, value: Any) -> bool:
        return value == "auto" or super().valid(value)


@dataclass
class FolderFit:
    """How well every face fits its own folder, and (lazily) its best other folder."""

    counts: "np.ndarray"  # faces per identity
    own: "np.ndarray"  # float64 (n,): own(i); nan where the folder has one face
    folder_mean: "np.ndarray"  # float64 (n_ids,): mean pairwise similarity in the folder; nan below 2 faces
    sums: "np.ndarray"  # float64 (n_ids, d): sums of centred faces
    centre: "np.ndarray"  # float64 (d,)
    _order: "np.ndarray" = None
    _starts: "np.ndarray" = None
    _best: dict = field(default_factory=dict)  # min_other -> [other, other_sim, known, index, ids]
    extra: dict = field(default_factory=dict)

    def distribution(self, min_faces: int = 3) -> "np.ndarray":
        """own(i) of faces in folders of at least `min_faces` (fewer if there are none)."""
        import numpy as np

        for m in (min_faces, 2):
            ok = self.counts[self._owner] >= m
            if ok.any():
                return self.own[ok]
        return np.empty(0)

    def threshold(self, value: Any, quantile: float, min_faces: int = 3) -> float:
        """The number in rules, or the quantile of the own-folder distribution."""
        import numpy as np

        if value != "auto":
            return float(value)
        dist = self.distribution(min_faces)
        return float(np.quantile(dist, quantile)) if dist.size else math.nan

    def centred(self, vectors: "np.ndarray", rows: "np.ndarray") -> "np.ndarray":
        import numpy as np

        x = vectors[rows].astype(np.float64) - self.centre
        norms = np.sqrt(np.einsum("ij,ij->i", x, x))
        return x / np.where(norms > 0, norms, 1.0)[:, None]

    def best_other(self, data: CheckData, rows: "np.ndarray", min_other: int = 2
                   ) -> tuple["np.ndarray", "np.ndarray"]:
        """The best other folder of each face in `rows` (-1 if none) and the face's mean similarity
        to it, among folders of at least `min_other` faces. Exact: a flat inner-product search
        of each face against the folder mean vectors, the top two (one may be its own)."""
        import numpy as np

        rows = np.asarray(rows, dtype=np.int64)
        if min_other not in self._best:
            import faiss

            n = len(self.own)
            ids = np.flatnonzero(self.counts >= max(min_other, 1))
            index = faiss.IndexFlatIP(self.sums.shape[1])
            if len(ids):
                index.add(np.ascontiguousarray((self.sums[ids] / self.counts[ids, None]).astype(np.float32)))
            self._best[min_other] = [np.full(n, -1, np.int64), np.full(n, np.nan), np.zeros(n, bool), index, ids]
        other, other_sim, known, index, ids = self._best[min_other]
        todo = rows[~known[rows]]
        owner = self._owner
        for s in range(0, todo.size if index.ntotal else 0, SEARCH_BLOCK):
            part = todo[s : s + SEARCH_BLOCK]
            qd = self.centred(data.table.vectors, part)
            _, idx = index.search(np.ascontiguousarray(qd.astype(np.float32)), 2)
            cand = np.where(idx >= 0, ids[np.maximum(idx, 0)], -1)
            pick = np.where(cand[:, 0] == owner[part], cand[:, 1], cand[:, 0])
            # the similarity again in float64: the float32 search only chose the folder
            ok = pick >= 0
            sim = np.full(part.size, np.nan)
            sim[ok] = np.einsum("ij,ij->i", qd[ok], self.sums[pick[ok]]) / self.counts[pick[ok]]
            other[part], other_sim[part] = pick, sim
        known[todo] = True
        return other[rows], other_sim[rows]

    def best_face(self, data: CheckData, row: int, folder: int) -> tuple[int, float]:
        """The face of `folder` most similar to face `row` (centred cosine)."""
        import numpy as np

        if self._order is None:
            self._order = np.argsort(self._owner, kind="stable")
            self._starts = np.concatenate([[0], np.cumsum(self.counts)])
        members = self._order[self._starts[folder] : self._starts[folder + 1]]
        sims = self.centred(data.table.vectors, members) @ self.centred(data.table.vectors, np.array([row]))[0]
        k = int(np.argmax(sims))
        return int(members[k]), float(sims[k])

    @property
    def _owner(self) -> "np.ndarray":
        return self.extra["owner"]


def folder_fit(data: CheckData) -> FolderFit:
    """own(i) for every face and each folder's mean pairwise similarity, shared by the checks."""
    if "folder_fit" in data.cache:
        return data.cache["folder_fit"]
    import numpy as np

    t = data.table
    x = t.vectors
    owner = np.asarray(t.identity_of, dtype=np.int64)
    n_ids = len(t.identities)
    d = x.shape[1] if x.ndim == 2 else 0
    counts = np.bincount(owner, minlength=n_ids).astype(np.int64) if len(owner) else np.zeros(n_ids, np.int64)
    centre = x.mean(axis=0, dtype=np.float64) if len(x) else np.zeros(d)
    fit = FolderFit(counts=counts, own=np.full(len(x), np.nan), folder_mean=np.full(n_ids, np.nan),
                    sums=np.zeros((n_ids, d)), centre=centre, extra={"owner": owner})
    for s in range(0, len(x), BLOCK):
        rows = np.arange(s, min(s + BLOCK, len(x)))
        np.add.at(fit.sums, owner[rows], fit.centred(x, rows))
    for s in range(0, len(x), BLOCK):
        rows = np.arange(s, min(s + BLOCK, len(x)))
        xc = fit.centred(x, rows)
        dot = np.einsum("ij,ij->i", xc, fit.sums[owner[rows]])
        n = counts[owner[rows]]
        with np.errstate(invalid="ignore", divide="ignore"):
            fit.own[rows] = np.where(n > 1, (dot - 1.0) / (n - 1), np.nan)
    # mean of the n(n-1) ordered pairs: (|S|^2 - n) / (n (n - 1))
    sq = np.einsum("ij,ij->i", fit.sums, fit.sums)
    with np.errstate(invalid="ignore", divide="ignore"):
        fit.folder_mean = np.where(counts > 1, (sq - counts) / (counts * (counts - 1.0)), np.nan)
    data.cache["folder_fit"] = fit
    return fit


@register
class Misfiled(Check):
    name = "misfiled"
    title = "misfiled faces"
    doc = ("A face far from the rest of its own folder but as close to another folder as that "
           "folder's own faces are to it: probably the other person's photo, filed under the "
           "wrong name. Names the folder it probably belongs to and its closest face there.")
    severity = "fail"
    columns = {"score": "margin"}
    params = {
        "min_faces": Param(3, "folders with fewer faces are skipped (cannot tell which face is the odd one)",
                           kind="int", low=3),
        "far_quantile": Param(0.05, "far from own folder: own-folder similarity below this quantile of all faces'",
                              low=0.0, high=1.0),
        "same_quantile": Param(0.25, "same person: similarity to the other folder at or above this quantile "
                               "of all faces' own-folder similarity", low=0.0, high=1.0),
        "far": AutoNumber("auto", "override far_quantile with a similarity (centred cosine)", low=-1.0, high=1.0),
        "same": AutoNumber("auto", "override same_quantile with a similarity (centred cosine)", low=-1.0, high=1.0),
        "min_other_faces": Param(2, "only folders of at least this many faces can claim a face: the best of "
                                 "thousands of one-photo folders reaches same-person level by chance",
                                 kind="int", low=1),
        "margin": Param(0.1, "the other folder must beat the own folder by at least this much", low=0.0, high=2.0),
    }

    def run(self, data: CheckData, settings: CheckSettings) -> list[Issue]:
        import numpy as np

        from ..discover import display_name

        fit = folder_fit(data)
        far = fit.threshold(settings["far"], settings["far_quantile"])
        same = fit.threshold(settings["same"], settings["same_quantile"])
        self.facts = {"far": far, "same": same, "faces_far": 0, "misfiled": 0}
        if math.isnan(far) or math.isnan(same):
            return []
        owner = fit._owner
        suspects = np.flatnonzero((fit.counts[owner] >= settings["min_faces"]) & (fit.own < far))
        self.facts["faces_far"] = int(suspects.size)
        other, other_sim = fit.best_other(data, suspects, settings["min_other_faces"])
        hit = (other >= 0) & (other_sim >= same) & (other_sim - fit.own[suspects] >= settings["margin"])
        names = [i.name for i in data.table.identities]
        issues = []
        for r, g, sim in zip(suspects[hit].tolist(), other[hit].tolist(), other_sim[hit].tolist()):
            own = float(fit.own[r])
            face, face_sim = fit.best_face(data, r, g)
            issues.append(Issue(
                self.name, names[owner[r]], data.table.files[r], names[g], data.table.files[face],
                score=sim - own, severity=settings.severity,
                detail=(f"mean similarity {own:.3f} to its own folder (far: below {far:.3f}), "
                        f"{sim:.3f} to {display_name(names[g])} (same person: {same:.3f} or more; "
                        f"best face {display_name(data.table.files[face])} {face_sim:.3f})")))
        self.facts["misfiled"] = len(issues)
        return issues

    def report_html(self) -> str:
        f = getattr(self, "facts", None)
        if not f or math.isnan(f["far"]):
            return ""
        return (f"<p>Thresholds from this dataset (mean centred cosine of a face to a folder): far from its "
                f"own folder below {f['far']:.3f}, same person at {f['same']:.3f} or more. "
                f"{f['faces_far']} face(s) far from their own folder, {f['misfiled']} close to another "
                f"folder.</p>")

