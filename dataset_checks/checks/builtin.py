"""The core pipeline's own checks, in the registry like every other check.

They are judged by the core (one search, `findings.Verdict`, the embedder's face reports) and keep
their historic test ids and files: `test_identity[<identity>]` with findings.csv and
merge_candidates.csv, `test_faces_detected[<identity>]`, and the input problems inside
`test_identity`. The registry gives them what every check has: a rules.yaml section
(`checks.<name>: {enabled, severity}`), a place in docs/checks.md and findings.json, and a baseline key
(`cross_identity`, `input`).
"""

from __future__ import annotations

from . import register
from .base import Check, CheckSettings, Issue, Param
from .data import CheckData


class _Builtin(Check):
    builtin = True

    def run(self, data: CheckData, settings: CheckSettings) -> list[Issue]:  # pragma: no cover - core-judged
        return []


@register
class CrossIdentity(_Builtin):
    name = "cross_identity"
    order = 0
    title = "faces of two identities"
    doc = ("A face of this folder matches a face of another folder at or above the cosine threshold "
           "(one person under two names, a photo filed twice, a misfiled photo). findings.csv, "
           "merge_candidates.csv. warn/info or off: pairs do not fail (the folder's input problems still do).")
    family = "test_identity"
    columns = {"score": "similarity"}


@register
class FacesDetected(_Builtin):
    name = "faces_detected"
    order = 1
    title = "faces detected"
    doc = ("Every image the tool embeds decodes and shows exactly one face (folders with images and no "
           "embeddings file). Off: no test_faces_detected items. A group photo (several faces, the one "
           "nearest the centre used) is a warning unless `several_faces: fail`.")
    family = "test_faces_detected"
    params = {
        "several_faces": Param("warn", "severity of an image with several faces (the one nearest the centre "
                               "is used); unreadable images and images with no face follow `severity`",
                               kind="choice", choices=("fail", "warn", "info")),
    }


@register
class BadInput(_Builtin):
    name = "bad_input"
    order = 2
    title = "input problems"
    doc = ("An embeddings file or folder that cannot be used (corrupt, missing array, NaN rows, unreadable, "
           "dangling link...), reported in the folder's test_identity. warn, info or off: they do not fail "
           "(rules' top-level `bad_input: warn` is the same as `checks.bad_input.severity: warn`).")
