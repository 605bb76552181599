"""Misfiled faces: a photo far from the rest of its own folder but close to another folder.

Both this check and `consistency` judge a face by how well it fits folders, measured the same
way: own(i), the mean cosine of a face to the other faces of its folder, and other(i, g), its mean
cosine to the faces of another folder g, after centring (checks/folder_fit.py says how, and why
it costs O(n d) plus O(suspects x identities x d)).

What "same person" and "far" mean differs by model (dlib, ArcFace) and by dataset, so the
thresholds are quantiles of own(i) over the dataset's faces (folders of at least 3 faces), with
numbers in rules.yaml to override them.
"""

from __future__ import annotations

import math

from . import register
from .base import AutoNumber, Check, CheckSettings, Issue, Param
from .data import CheckData
from .folder_fit import FolderFit, folder_fit, outlier_rows  # noqa: F401  (FolderFit: importable from here as before)


@register
class Misfiled(Check):
    name = "misfiled"
    order = 10
    lane = "folder_fit"  # shares FolderFit and its best-other state with consistency
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
        if data.rules is not None:
            # consistency (when on) needs its outliers' best folder exactly, and they are among
            # these faces: searched in full now, they are not searched twice
            wanted = data.rules.check_settings("consistency")
            if wanted.enabled and wanted["min_other_faces"] == settings["min_other_faces"]:
                fit.best_other(data, outlier_rows(fit, wanted), settings["min_other_faces"])
        # only a folder that can make it misfiled is wanted: same-person level and the margin
        floor = np.maximum(same, fit.own[suspects] + settings["margin"]) - 1e-9
        other, other_sim = fit.best_other(data, suspects, settings["min_other_faces"], floor=floor)
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

