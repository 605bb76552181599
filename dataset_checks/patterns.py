"""What the findings between two folders look like, said in one line, with what to do about it.

Fifty lines of "A_0002.jpg ↔ B/B_0117.jpg 0.9871" hide the one fact a reviewer needs. The
findings between two identity folders A and B fall into three shapes:

* **misfiled photo** (`one_photo`): one face of A matches several faces of B, and no other face
  of A matches B. One photo of B was filed under A (a copied video frame, a group photo whose
  detected face is B's). The folders' mean vectors differ, so the merge score ranks it low,
  yet the evidence is strong: every matched face of B is an independent witness.
* **copies** (`copies`): every matched face is in exactly one pair and every pair is at or above
  `copy_similarity` (the near_duplicates check's threshold for the model: 0.99, 0.993 raw dlib):
  the same photo(s) filed under both names (one person under two names, or a photo of one person
  filed under the other).
* **different photos, one-to-one** (`one_to_one`): one-to-one pairs as for copies, but some pair
  below `copy_similarity`: different photos of one person under two names (or look-alikes), not
  copies; the next step is merging the folders, not deleting photos.
* **one person** (`one_person`): several faces of A match several faces of B: one person under
  two names (a transliteration, a name order swap) or look-alikes (twins: allowlist them).

`evidence` puts the shapes on one footing for ordering (merge.py ranks candidates by it; the
terminal summary and report.html order failing identities by it):

* folders: the merge score (CSLS-corrected cosine of the folders' mean vectors, see merge.py);
* a misfiled photo: `2·q − 1` with `q = matched / (faces of B + 3)`, the share of B's faces the
  photo matches, shrunk towards 0 for small folders (matching 2 of 2 faces is weak evidence,
  matching 300 of 300 strong). Like a cosine it runs from −1 to 1, the range of the merge
  score of a clear pair. A candidate's evidence is the larger of the two.

No pytest, no numpy: plain counts in, plain text out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Protocol

from .discover import display_name

if TYPE_CHECKING:
    from .findings import Findings, Verdict
    from .issues import Finding


class MergeCounts(Protocol):
    """What a pattern is read from for two folders (merge.MergeCandidate has it; merge.py imports
    this module, not the other way round)."""

    identity: str
    other_identity: str
    faces_matching: int  # distinct faces of `identity` that match a face of `other_identity`
    faces: int
    other_faces_matching: int
    other_faces: int
    pairs: int
    best_similarity: float
    score: float  # the merge score
    examples: list["Finding"]  # the best pairs, best first
    worst_similarity: float | None
    copy_similarity: float


ONE_PHOTO = "one_photo"
COPIES = "copies"
ONE_PERSON = "one_person"
ONE_TO_ONE = "one_to_one"
# The cosine at or above which a one-to-one pair counts as the same photo (copies): the
# near_duplicates check's auto threshold for models it has no measurement for. A run passes its
# own (findings.metadata["copy_similarity"]: that check's threshold for the model and centring).
COPY_SIMILARITY = 0.99
# A photo that matches a single face of the other folder is a copy, not a pattern.
MIN_ONE_PHOTO_MATCHES = 2
# Pseudo-faces added to the other folder before taking the share a photo matches: 3 of 3 then
# counts as no evidence, 300 of 300 as nearly full (on LFW, +2 let photos matching all of a
# 3-4 face folder in dlib's crowded region push name variants out of the top 60).
PHOTO_PRIOR = 3

_KIND_NAME = {ONE_PHOTO: "misfiled photo", COPIES: "copies", ONE_PERSON: "many-to-many",
              ONE_TO_ONE: "different photos, one-to-one"}


@dataclass(frozen=True)
class Pattern:
    """The shape of the findings between `identity` and `other_identity`.

    For `one_photo`, `identity` is the folder that holds `photo` and `other_identity` the folder
    whose faces it matches."""

    kind: str
    identity: str
    other_identity: str
    photo: str | None  # the misfiled photo (one_photo), the face of `identity` when it is one face
    faces_matching: int  # distinct faces of `identity` in a pair with `other_identity`
    faces: int  # faces (usable vectors) of `identity`
    other_faces_matching: int
    other_faces: int
    pairs: int
    best_similarity: float
    score: float | None = None  # the merge score (merge.py), when known
    other_photo: str | None = None  # the face of `other_identity` when it is one face
    worst_similarity: float | None = None  # the lowest similarity of the pairs (None: best_similarity)
    copy_similarity: float = COPY_SIMILARITY  # a pair at or above this is the same photo

    @property
    def label(self) -> str:
        return _KIND_NAME[self.kind]

    @property
    def photo_evidence(self) -> float:
        if self.kind != ONE_PHOTO:
            return -1.0
        if not self.other_faces:
            return -1.0
        q = self.other_faces_matching / (self.other_faces + PHOTO_PRIOR)
        return 2 * q - 1

    @property
    def evidence(self) -> float:
        return max(self.photo_evidence, self.score if self.score is not None else -1.0)

    @property
    def description(self) -> str:
        a, b = display_name(self.identity), display_name(self.other_identity)
        if self.kind == ONE_PHOTO:
            of = f" of {self.other_faces}" if self.other_faces else ""
            return (f"{display_name(self.photo or '')} matches {self.other_faces_matching}{of} "
                    f"faces of {b}: a photo of {b} filed under {a}?")
        if self.kind == COPIES:
            if self.pairs == 1:
                return (f"{a}/{display_name(self.photo or '')} matches {b}/{display_name(self.other_photo or '')} "
                        f"(cosine {self.best_similarity:.4f} >= {self.copy_similarity:g}), no other face: "
                        f"the same photo filed twice?")
            return (f"{self.pairs} photos of {a} have a copy in {b} (every cosine >= {self.copy_similarity:g}, best "
                    f"{self.best_similarity:.4f}): the same photos filed under both names?")
        if self.kind == ONE_TO_ONE:
            below = f"below {self.copy_similarity:g}, the cosine of the same photo"
            if self.pairs == 1:
                return (f"{a}/{display_name(self.photo or '')} matches {b}/{display_name(self.other_photo or '')} "
                        f"(cosine {self.best_similarity:.4f}, {below}), no other face: different photos of one "
                        f"person under two names, or look-alikes?")
            return (f"{self.pairs} photos of {a} each match one photo of {b} (best cosine {self.best_similarity:.4f}, "
                    f"some {below}): one person under two names, or look-alikes?")
        of = f" of {self.other_faces}" if self.other_faces else ""
        return (f"{self.faces_matching} of {self.faces} faces of {a} match {self.other_faces_matching}{of} "
                f"faces of {b}: one person under two names?")

    @property
    def fix(self) -> str:
        a, b = display_name(self.identity), display_name(self.other_identity)
        if self.kind == ONE_PHOTO:
            return f"move {a}/{display_name(self.photo or '')} to {b} (or delete it)"
        if self.kind == COPIES:
            return f"delete the copies filed under the wrong name ({a} or {b}), or merge the folders"
        return f"merge {a} and {b} into one folder"

    @property
    def next_step(self) -> str:
        a, b = display_name(self.identity), display_name(self.other_identity)
        return (f"{self.fix}; if they are different people, allowlist [{a}, {b}] under `allow:` in "
                f"rules.yaml; or accept the findings with --baseline FILE --update-baseline")


def classify(identity: str, other_identity: str, pairs: Iterable[tuple[str, str, float]], faces: int,
             other_faces: int, score: float | None = None, copy_similarity: float = COPY_SIMILARITY) -> Pattern:
    """The pattern of the findings between two folders.

    `pairs`: (file of identity, file of other_identity, similarity), at least one; one-to-one pairs
    are copies only when every similarity is at least `copy_similarity`."""
    pairs = list(pairs)
    if not pairs:
        raise ValueError("classify needs at least one pair")
    mine = {p[0] for p in pairs}
    theirs = {p[1] for p in pairs}
    best = max(p[2] for p in pairs)
    return _pattern(identity, other_identity, len(mine), faces, len(theirs), other_faces, len(pairs), best,
                    next(iter(mine)) if len(mine) == 1 else None,
                    next(iter(theirs)) if len(theirs) == 1 else None, score,
                    min(p[2] for p in pairs), copy_similarity)


def _pattern(a: str, b: str, fa: int, na: int, fb: int, nb: int, pairs: int, best: float,
             photo_a: str | None, photo_b: str | None, score: float | None, worst: float | None = None,
             copy_similarity: float = COPY_SIMILARITY) -> Pattern:
    if fa == 1 and fb >= MIN_ONE_PHOTO_MATCHES:
        return Pattern(ONE_PHOTO, a, b, photo_a, fa, na, fb, nb, pairs, best, score)
    if fb == 1 and fa >= MIN_ONE_PHOTO_MATCHES:
        return Pattern(ONE_PHOTO, b, a, photo_b, fb, nb, fa, na, pairs, best, score)
    if pairs == fa == fb:  # one-to-one: the same photos only at a near-duplicate similarity
        kind = COPIES if (best if worst is None else worst) >= copy_similarity else ONE_TO_ONE
    else:
        kind = ONE_PERSON
    return Pattern(kind, a, b, photo_a if fa == 1 else None, fa, na, fb, nb, pairs, best, score,
                   photo_b if fb == 1 else None, worst, copy_similarity)


def candidate_pattern(c: MergeCounts) -> Pattern:
    """The pattern of a merge candidate (its counts and examples suffice: with one matching face
    on a side, every pair, hence its best example, holds that face)."""
    photo_a = c.examples[0].file if c.examples else None
    photo_b = c.examples[0].other_file if c.examples else None
    return _pattern(c.identity, c.other_identity, c.faces_matching, c.faces, c.other_faces_matching,
                    c.other_faces, c.pairs, c.best_similarity, photo_a, photo_b, c.score,
                    c.worst_similarity, c.copy_similarity)


def identity_patterns(verdict: "Verdict", findings: "Findings | None" = None,
                      scores: dict[frozenset[str], float] | None = None,
                      copy_similarity: float | None = None) -> list[Pattern]:
    """Patterns of a failing identity's (not waived) matches, one per other folder, best evidence first.

    `findings` gives the other folders' sizes (without it a misfiled photo's evidence is unknown
    and its line says "matches N faces" without "of M"); `scores`: merge scores by
    frozenset({a, b}) (see `merge_scores`); `copy_similarity`: default the run's
    (findings.metadata["copy_similarity"]), else COPY_SIMILARITY."""
    if copy_similarity is None:
        copy_similarity = run_copy_similarity(findings)
    groups: dict[str, list[tuple[str, str, float]]] = {}
    for m in verdict.failing_matches:
        groups.setdefault(m.other_identity, []).append((m.file, m.other_file, m.similarity))
    name = verdict.identity.name
    out = []
    for other, pairs in groups.items():
        other_v = findings.verdicts.get(other) if findings is not None else None
        score = (scores or {}).get(frozenset((name, other)))
        out.append(classify(name, other, pairs, verdict.vectors, other_v.vectors if other_v else 0, score,
                            copy_similarity))
    out.sort(key=lambda p: (-p.evidence, -p.best_similarity, -p.pairs, p.other_identity))
    return out


def run_copy_similarity(findings: "Findings | None") -> float:
    """The run's copy similarity (findings.metadata["copy_similarity"]), else COPY_SIMILARITY."""
    value = findings.metadata.get("copy_similarity") if findings is not None else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else COPY_SIMILARITY


def merge_scores(candidates: Iterable[MergeCounts]) -> dict[frozenset[str], float]:
    return {frozenset((c.identity, c.other_identity)): c.score for c in candidates}


@dataclass(frozen=True)
class RankedIdentity:
    verdict: "Verdict"
    patterns: list[Pattern]  # best evidence first; empty for identities that fail on input only

    @property
    def top(self) -> Pattern | None:
        return self.patterns[0] if self.patterns else None


def _best_sim(v: "Verdict") -> float:
    return max((m.similarity for m in v.failing_matches), default=-1.0)


def rank_failing(findings: "Findings", candidates: Iterable[MergeCounts] = ()) -> list[RankedIdentity]:
    """Failing identities, strongest evidence first: the evidence of their best pattern (a
    misfiled photo's share of matched faces, or the folders' merge score), then the best
    similarity, then the number of other folders involved (fewer: a sharper error), then the name.
    Not alphabetical (the order says where to look first) and not by pair count (a crowded
    region of the embedding space gives many pairs between different people)."""
    scores = merge_scores(candidates)
    copy_similarity = run_copy_similarity(findings)
    ranked = [RankedIdentity(v, identity_patterns(v, findings, scores, copy_similarity))
              for v in findings.verdicts.values() if v.status == "fail"]
    ranked.sort(key=lambda r: (-(r.top.evidence if r.top else -1.0), -_best_sim(r.verdict),
                               len(r.patterns), r.verdict.identity.display))
    return ranked
