"""Folder consistency: faces that fit nowhere, and folders that are not one person.

Uses the measures of `misfiled` (see its module doc): own(i), the mean centred cosine of a face
to the other faces of its folder, and the face's best other folder. Two kinds of issue:

* outlier: a face far below its dataset's own-folder distribution AND close to no other folder
  (a stranger without a folder of their own, a non-face, a bad crop, a profile the model cannot
  read). Only in folders of at least `min_faces` (4): with 2 or 3 faces the odd one cannot be told
  from the others, so such a folder is judged as a whole instead;
* folder: the mean pairwise similarity of a folder's faces is below what a single face usually
  scores to its own folder: the folder as a whole does not look like one person.

A face close to another folder is `misfiled`'s, not an outlier here, so the two never report one
face twice when their `same` thresholds agree.
"""

from __future__ import annotations

import math

from . import register
from .base import AutoNumber, Check, CheckSettings, Issue, Param
from .data import CheckData
from .folder_fit import folder_fit, outlier_rows


@register
class Consistency(Check):
    name = "consistency"
    order = 20
    lane = "folder_fit"  # shares FolderFit and its best-other state with misfiled
    title = "inconsistent folders"
    doc = ("A face far from every other face of its folder and close to no other folder (a "
           "stranger, a non-face, a bad crop), or a folder whose faces do not look like one "
           "person (reported as a folder when it has too few faces to tell which one is odd).")
    # LFW's outliers are mostly hard photos of the right person (profiles, occlusion, blur):
    # worth a look, not a failed build
    severity = "warn"
    columns = {"score": "shortfall"}
    params = {
        "min_faces": Param(4, "folders with fewer faces are judged as a whole, not face by face", kind="int", low=3),
        "outlier_quantile": Param(0.01, "outlier: own-folder similarity below this quantile of all faces'",
                                  low=0.0, high=1.0),
        "folder_quantile": Param(0.01, "folder: mean pairwise similarity below this quantile of all faces' "
                                 "own-folder similarity", low=0.0, high=1.0),
        "same_quantile": Param(0.25, "close to another folder (then not an outlier): similarity to it at or "
                               "above this quantile", low=0.0, high=1.0),
        "outlier": AutoNumber("auto", "override outlier_quantile with a similarity (centred cosine)",
                              low=-1.0, high=1.0),
        "folder": AutoNumber("auto", "override folder_quantile with a similarity (centred cosine)",
                             low=-1.0, high=1.0),
        "same": AutoNumber("auto", "override same_quantile with a similarity (centred cosine)", low=-1.0, high=1.0),
        "min_other_faces": Param(2, "only folders of at least this many faces count as another folder",
                                 kind="int", low=1),
    }

    def run(self, data: CheckData, settings: CheckSettings) -> list[Issue]:
        import numpy as np

        from ..discover import display_name

        fit = folder_fit(data)
        outlier = fit.threshold(settings["outlier"], settings["outlier_quantile"])
        folder = fit.threshold(settings["folder"], settings["folder_quantile"])
        same = fit.threshold(settings["same"], settings["same_quantile"])
        typical = fit.threshold("auto", 0.5)
        self.facts = {"outlier": outlier, "folder": folder, "same": same, "typical": typical,
                      "outliers": 0, "folders": 0}
        if any(math.isnan(v) for v in (outlier, folder, same)):
            return []
        names = [i.name for i in data.table.identities]
        owner = fit._owner
        issues = []
        far = outlier_rows(fit, settings)
        other, other_sim = fit.best_other(data, far, settings["min_other_faces"])
        lone = (other < 0) | ~(other_sim >= same)
        for r, g, sim in zip(far[lone].tolist(), other[lone].tolist(), other_sim[lone].tolist()):
            own = float(fit.own[r])
            nearest = (f"; closest other folder {display_name(names[g])} at {sim:.3f}, below {same:.3f}"
                       if g >= 0 else "")
            issues.append(Issue(
                self.name, names[owner[r]], data.table.files[r], score=typical - own, severity=settings.severity,
                detail=(f"outlier: mean similarity {own:.3f} to the other {int(fit.counts[owner[r]]) - 1} faces of "
                        f"its folder (typical {typical:.3f}, outlier below {outlier:.3f}){nearest}")))
        self.facts["outliers"] = len(issues)
        bad = np.flatnonzero((fit.counts >= 2) & (fit.folder_mean < folder))
        for k in bad.tolist():
            mean = float(fit.folder_mean[k])
            issues.append(Issue(
                self.name, names[k], score=typical - mean, severity=settings.severity,
                detail=(f"folder: its {int(fit.counts[k])} faces score {mean:.3f} to each other on average "
                        f"(typical {typical:.3f}, below {folder:.3f}): not one person?")))
        self.facts["folders"] = len(bad)
        return issues

    def report_html(self) -> str:
        f = getattr(self, "facts", None)
        if not f or math.isnan(f["outlier"]):
            return ""
        return (f"<p>Thresholds from this dataset (mean centred cosine of a face to the other faces of its "
                f"folder; typical {f['typical']:.3f}): outlier below {f['outlier']:.3f} and below {f['same']:.3f} "
                f"to every other folder; folder mean below {f['folder']:.3f}. {f['outliers']} outlier(s), "
                f"{f['folders']} folder(s).</p>")
