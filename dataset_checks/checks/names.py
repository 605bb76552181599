"""Folder names that are one name: `Nan_Wang` and `Wang_Nan`, `高橋_一郎` and `髙橋 一郎`.

A dataset assembled from several sources files one person under two spellings; the face search
finds the pair only when a photo is shared or the faces are close enough. The names say it
directly. Four rules, strongest first (a pair is reported once, under the strongest):

* `exact`: equal after NFKC, variant CJK characters (itaiji.py), case folding and dropping
  every separator (space, `_`, `-`, `.`, any punctuation or symbol): `Nan_Wang` / `nan-wang`;
* `reordered`: the same name parts in another order: `Nan_Wang` / `Wang_Nan`,
  `Dai_Chul_Chyung` / `Chyung_Dai-chul`. Parts split on separators, and on camel case in a
  name that has no separator at all (`NanWang`);
* `subset`: every part of the shorter name (two parts at least) is a part of the longer:
  `Mireya_Moscoso` / `Mireya_Elisa_Moscoso_Rodriguez`;
* `near`: a near spelling of the folded name: at most `max_edits` edits (Levenshtein) and at
  most `max_edit_ratio` of the longer name's letters: `Noer_Moeis` / `Noer_Muis`,
  `Hasan_Wirayuda` / `Hassan_Wirajuda`, `John_Barnett` / `John_Burnett`.

A name match alone does not make one person: `Wang_Nan` and `Nan_Wang` can be two people, and
common names collide. So the faces decide the severity: the two folders' centred mean vectors
(CheckData.folder_means) are compared by merge.py's CSLS score, 2·cos(A, B) − r(A) − r(B) (r: the
mean cosine to a folder's 5 nearest other folders), because in dlib's crowded regions two
different East Asian men reach a plain cosine of 0.66 while a name variant reaches 0.59. When
the score is above the `face_quantile` (0.9999) of the scores of random folder pairs of this
dataset (all pairs among up to 800 sampled folders, the name-matched pairs left out), the faces
agree and the pair gets the check's severity (default fail); otherwise `name_only` (default
warn) for exact and reordered names, `near_name_only` (default info) for subset and near
spellings, which collide by chance far more often. With fewer than 100 random pairs to measure
the level, faces are not judged.

Cost: names are bucketed by folded key and by sorted parts; subsets are looked up by their part
combinations; near spellings are blocked by the pigeonhole principle (Pass-Join: a name within
k edits of another holds one of the other's k+1 segments at a position shifted by at most k),
so no pair of names is compared unless it shares a segment.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections import defaultdict
from itertools import combinations
from typing import Any, Iterable

import numpy as np
from numpy.typing import NDArray

from ..discover import display_name
from . import register
from .base import Check, CheckSettings, Issue, Param
from .data import CheckData
from .folder_fit import folder_means
from .itaiji import ITAIJI

RULES = ("exact", "reordered", "subset", "near")
_RULE_WEIGHT = {"exact": 3.0, "reordered": 2.0, "subset": 1.0, "near": 1.0}
# A name with more parts than this is not searched for names it contains (2**parts combinations;
# a hostile folder name can have hundreds of parts).
MAX_SUBSET_PARTS = 10
# Folders sampled (all pairs among them: 320k) to measure the between-folder level; their
# crowding costs a scan of every folder mean each, about 0.2 s at 20k folders.
FACE_SAMPLE = 800
CSLS_K = 5  # as merge.py
# Fewer random folder pairs than this cannot tell the dataset's level: in a 6-folder dataset one
# random pair in 13 tops the other 12, so no pair is confirmed by its faces there.
MIN_LEVEL_PAIRS = 100


_ASCII_SEPARATORS = re.compile(r"[^0-9a-z]+")


def _separator(ch: str) -> bool:
    # letters, digits and combining marks (kana voicing, Devanagari vowels) are the name
    return unicodedata.category(ch)[0] not in "LNM"


def name_parts(name: str, itaiji: bool = True, camel_case: bool = True) -> tuple[str, ...]:
    """The folded parts of a folder name, in order."""
    s = unicodedata.normalize("NFKC", name)
    if itaiji:
        s = s.translate(ITAIJI)
    if camel_case and not any(_separator(ch) for ch in s):
        # only a name with no separator at all: `Ronald_McDonald` already says where its parts
        # end, and splitting `Mc|Donald` there would invent parts for the subset rule
        s = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", s)
    s = s.casefold()
    if s.isascii():  # most names: letters and digits are exactly [0-9a-z] there
        return tuple(p for p in _ASCII_SEPARATORS.split(s) if p)
    parts: list[str] = []
    cur: list[str] = []
    for ch in s:
        if _separator(ch):
            if cur:
                parts.append("".join(cur))
                cur = []
        else:
            cur.append(ch)
    if cur:
        parts.append("".join(cur))
    return tuple(parts)


def edit_distance(a: str, b: str, limit: int) -> int:
    """Levenshtein distance of a and b, or limit + 1 when it is larger than limit."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    # a common prefix or suffix never changes the distance, and near spellings share most of both
    p = 0
    while p < len(a) and p < len(b) and a[p] == b[p]:
        p += 1
    a, b = a[p:], b[p:]
    s = 0
    while s < len(a) and s < len(b) and a[-1 - s] == b[-1 - s]:
        s += 1
    if s:
        a, b = a[:-s], b[:-s]
    if not a or not b:
        return max(len(a), len(b)) if max(len(a), len(b)) <= limit else limit + 1
    big = limit + 1
    prev = [j if j <= limit else big for j in range(len(b) + 1)]
    for i in range(1, len(a) + 1):
        lo, hi = max(1, i - limit), min(len(b), i + limit)
        cur = [big] * (len(b) + 1)
        cur[0] = i if i <= limit else big
        ca = a[i - 1]
        best = cur[0]
        for j in range(lo, hi + 1):
            v = prev[j - 1] + (ca != b[j - 1])
            if prev[j] + 1 < v:
                v = prev[j] + 1
            if cur[j - 1] + 1 < v:
                v = cur[j - 1] + 1
            cur[j] = v if v <= limit else big
            if v < best:
                best = v
        if best > limit:
            return big
        prev = cur
    return prev[len(b)] if prev[len(b)] <= limit else big


def allowed_edits(longer: int, max_edits: int, max_ratio: float) -> int:
    return min(max_edits, int(max_ratio * longer + 1e-9))


def _segments(length: int, k: int) -> list[tuple[int, int]]:
    """(start, length) of the k+1 segments (fewer in a short key) a key of `length` is cut into."""
    m = min(k + 1, length)
    base, extra = divmod(length, m)
    out, start = [], 0
    for i in range(m):
        n = base + (1 if i >= m - extra else 0)
        out.append((start, n))
        start += n
    return out


_MASK = (1 << 64) - 1
_BASE = 0x100000001B3  # odd: invertible modulo 2**64, so substring hashes need no division
_INV_BASE = pow(_BASE, -1, 1 << 64)
_MIX = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9)
_HIST = 32  # hashed character bins of the bag-distance filter
MAX_NEAR_LENGTH = 64  # longer folded names are not compared for near spellings


def _segment_table(lengths: np.ndarray, k: int, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, length, exists) of segment i of keys of `lengths` cut as in _segments."""
    m = np.minimum(k + 1, lengths)
    base, extra = lengths // np.maximum(m, 1), lengths % np.maximum(m, 1)
    first_long = m - extra  # segments from here on are one longer
    start = i * base + np.maximum(0, i - first_long)
    n = base + (i >= first_long)
    return start, n, i < m


def near_pairs(keys: list[str], max_edits: int, max_ratio: float, min_length: int) -> dict[tuple[int, int], int]:
    """(a, b) -> edit distance for every pair of distinct keys (a < b, indices into keys) within
    allowed_edits of each other, both at least min_length (at most MAX_NEAR_LENGTH) long.

    Exact, in numpy: candidates share a segment (pigeonhole, see the module doc), joined on a
    rolling hash of (length, segment number, text); a hash collision only adds a candidate. A
    bag-of-characters lower bound drops most candidates; a banded Levenshtein decides the rest."""
    K = int(max_edits)
    ids = np.array([n for n, key in enumerate(keys) if min_length <= len(key) <= MAX_NEAR_LENGTH], dtype=np.int64)
    if K <= 0 or ids.size < 2:
        return {}
    lens = np.array([len(keys[n]) for n in ids], dtype=np.int64)
    L = int(lens.max())
    codes = np.zeros((ids.size, L + K + 1), dtype=np.int64)
    for row, n in enumerate(ids):
        codes[row, : lens[row]] = [ord(c) for c in keys[n]]
    with np.errstate(over="ignore"):
        powers = np.ones(L + 1, dtype=np.uint64)
        inv = np.ones(L + 1, dtype=np.uint64)
        for p in range(1, L + 1):
            powers[p] = powers[p - 1] * np.uint64(_BASE)
            inv[p] = inv[p - 1] * np.uint64(_INV_BASE)
        prefix = np.zeros((ids.size, L + 1), dtype=np.uint64)
        prefix[:, 1:] = np.cumsum(codes[:, :L].astype(np.uint64) * powers[:L], axis=1, dtype=np.uint64)
        rows = np.arange(ids.size)

        def sub_hash(r: np.ndarray, q: np.ndarray, n: np.ndarray, seg_len: np.ndarray,
                     seg_no: np.ndarray) -> NDArray[np.uint64]:
            h: NDArray[np.uint64] = (prefix[r, q + n] - prefix[r, q]) * inv[q]
            mixed: NDArray[np.uint64] = h * np.uint64(_MIX[0]) + seg_len.astype(np.uint64) * np.uint64(_MIX[1]) \
                + seg_no.astype(np.uint64) * np.uint64(_MIX[2])
            return mixed

        parts_h: list[np.ndarray] = []
        parts_r: list[np.ndarray] = []
        for i in range(K + 1):
            start, n, ok = _segment_table(lens, K, i)
            r = rows[ok]
            parts_h.append(sub_hash(r, start[ok], n[ok], lens[ok] * (L + 1) + n[ok], np.full(r.size, i)))
            parts_r.append(r)
        idx_h, idx_r = np.concatenate(parts_h), np.concatenate(parts_r)
        order = np.argsort(idx_h, kind="stable")
        idx_h, idx_r = idx_h[order], idx_r[order]
        k_of = np.minimum(K, np.floor(max_ratio * lens + 1e-9).astype(np.int64))
        cand_s, cand_r = [], []
        for d in range(K + 1):
            shorter = lens - d
            live = (k_of >= max(d, 1)) & (shorter >= min_length)
            for i in range(K + 1):
                start, n, ok = _segment_table(np.maximum(shorter, 1), K, i)
                for t in range(-K, K + 1):
                    # the parts left and right of an aligned segment differ in length by |t| and
                    # |d - t|, and the i segments left of the first matching one hold an edit each
                    q = start + t
                    m = live & ok & (max(i, abs(t)) + abs(d - t) <= k_of) & (q >= 0) & (q + n <= lens)
                    if not m.any():
                        continue
                    s = rows[m]
                    h = sub_hash(s, q[m], n[m], shorter[m] * (L + 1) + n[m], np.full(s.size, i))
                    lo = np.searchsorted(idx_h, h, "left")
                    hi = np.searchsorted(idx_h, h, "right")
                    count = hi - lo
                    if not count.any():
                        continue
                    at = np.repeat(lo - np.cumsum(count) + count, count) + np.arange(count.sum())
                    cand_s.append(np.repeat(s, count))
                    cand_r.append(idx_r[at])
    if not cand_s:
        return {}
    s = np.concatenate(cand_s)
    r = np.concatenate(cand_r)
    keep = (s != r) & ((lens[r] < lens[s]) | ((lens[r] == lens[s]) & (r < s)))
    pair = np.sort(s[keep] * ids.size + r[keep])
    pair = pair[np.r_[True, pair[1:] != pair[:-1]]] if pair.size else pair
    s, r = pair // ids.size, pair % ids.size
    k = k_of[s]
    keep = lens[s] - lens[r] <= k
    s, r, k = s[keep], r[keep], k[keep]
    # bag distance: characters of one the other lacks; hashing them into bins only lowers it
    hist = np.zeros((ids.size, _HIST), dtype=np.int16)
    filled = np.arange(codes.shape[1])[None, :] < lens[:, None]
    np.add.at(hist, (np.nonzero(filled)[0], codes[filled] % _HIST), 1)
    diff = hist[s] - hist[r]
    bag = np.maximum(np.clip(diff, 0, None).sum(axis=1), np.clip(-diff, 0, None).sum(axis=1))
    keep = bag <= k
    s, r, k = s[keep], r[keep], k[keep]
    dist = _banded_levenshtein(codes, lens, s, r, K)
    keep = dist <= k
    out: dict[tuple[int, int], int] = {}
    for a, b, e in zip(ids[s[keep]].tolist(), ids[r[keep]].tolist(), dist[keep].tolist()):
        out[(min(a, b), max(a, b))] = int(e)
    return out


def _banded_levenshtein(codes: np.ndarray, lens: np.ndarray, s: np.ndarray, r: np.ndarray, K: int) -> np.ndarray:
    """Levenshtein distance of rows s and r (capped at K + 1), len(s) - len(r) in [0, K]."""
    big = K + 1
    out = np.full(s.size, big, dtype=np.int64)
    if s.size == 0:
        return out
    la, lb = lens[s], lens[r]
    a, b = codes[s], codes[r]
    width = 2 * K + 1
    # band cell t of row i is column j = i + t - K
    prev = np.full((s.size, width), big, dtype=np.int64)
    for t in range(K, width):
        prev[:, t] = t - K
    for i in range(1, int(la.max()) + 1):
        cur = np.full((s.size, width), big, dtype=np.int64)
        for t in range(width):
            j = i + t - K
            if j < 0:
                continue
            if j == 0:
                cur[:, t] = i
                continue
            v = prev[:, t] + (a[:, i - 1] != b[:, j - 1])
            if t + 1 < width:
                v = np.minimum(v, prev[:, t + 1] + 1)
            if t > 0:
                v = np.minimum(v, cur[:, t - 1] + 1)
            cur[:, t] = np.minimum(v, big)
        done = la == i
        if done.any():
            out[done] = cur[done, (lb[done] - i + K)]
        prev = cur
    return out


def name_matches(names: list[str], *, itaiji: bool = True, camel_case: bool = True, subset: bool = True,
                 max_edits: int = 2, max_edit_ratio: float = 0.25, min_length: int = 6
                 ) -> dict[tuple[int, int], tuple[str, int]]:
    """(a, b) -> (rule, edits) for every pair of names (indices, a < b) that match, under the
    strongest rule (RULES order); edits is the edit distance for `near`, else 0."""
    parts = [name_parts(n, itaiji, camel_case) for n in names]
    out: dict[tuple[int, int], tuple[str, int]] = {}

    def add(a: int, b: int, rule: str, edits: int = 0) -> None:
        pair = (a, b) if a < b else (b, a)
        if pair not in out:  # rules run strongest first
            out[pair] = (rule, edits)

    by_key: dict[str, list[int]] = defaultdict(list)
    by_bag: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for n, p in enumerate(parts):
        if p:
            by_key["".join(p)].append(n)
            by_bag[tuple(sorted(p))].append(n)
    for ids in by_key.values():
        for a, b in combinations(ids, 2):
            add(a, b, "exact")
    for ids in by_bag.values():
        for a, b in combinations(ids, 2):
            add(a, b, "reordered")
    if subset:
        for bag, ids in by_bag.items():
            if len(bag) > MAX_SUBSET_PARTS:
                continue
            smaller = {c for r in range(2, len(bag)) for c in combinations(bag, r)}
            for c in smaller:
                for a in by_bag.get(c, ()):
                    for b in ids:
                        add(a, b, "subset")
    if max_edits > 0:
        # numbered folders (VGGFace2's n000123, person_0001, id_17) are different identities
        # whenever their numbers differ: one edit in the digits is never a spelling variant, so
        # only keys with the same digits are compared (and a dataset of numbered folders costs
        # nothing here)
        by_digits: dict[str, list[str]] = defaultdict(list)
        for key in by_key:
            by_digits[_digits(key)].append(key)
        for keys in by_digits.values():
            if len(keys) < 2:
                continue
            for (x, y), d in near_pairs(keys, max_edits, max_edit_ratio, min_length).items():
                for a in by_key[keys[x]]:
                    for b in by_key[keys[y]]:
                        add(a, b, "near", d)
    return out


def _digits(key: str) -> str:
    return "".join(ch for ch in key if ch.isdigit())


def crowding(means: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """r(X) of merge.py's CSLS score for the folders `rows` (0 for folders without faces)."""
    from .folder_fit import crowding

    return crowding(means, rows, k)


LEVEL_TOP = 5  # the face level is never set by fewer than this many random folder pairs


def between_folder_level(means: np.ndarray, quantile: float, k: int, exclude: Iterable[tuple[int, int]] = (),
                         seed: int = 0) -> tuple[float | None, int, np.ndarray, np.ndarray]:
    """The `quantile` of the CSLS score of two different folders, from all pairs among (a sample
    of) the folders with faces, less the `exclude` pairs (rows); also the sample's rows and
    crowding. None with fewer than MIN_LEVEL_PAIRS such pairs."""
    present = np.flatnonzero(np.einsum("ij,ij->i", means, means) > 0)
    if present.size < 3:
        return None, 0, present[:0], np.zeros(0)
    if present.size > FACE_SAMPLE:
        present = np.sort(np.random.default_rng(seed).choice(present, FACE_SAMPLE, replace=False))
    r = crowding(means, present, k)
    m = means[present]
    upper = np.triu_indices(present.size, 1)
    grid = 2 * (m @ m.T) - r[:, None] - r[None, :]
    # name-matched pairs are not random pairs: in a small dataset one of them would be the
    # quantile itself and never rise above it
    at = {int(x): n for n, x in enumerate(present)}
    for a, b in exclude:
        if a in at and b in at:
            grid[at[a], at[b]] = grid[at[b], at[a]] = np.nan
    csls = grid[upper]
    csls = csls[~np.isnan(csls)]
    if csls.size < MIN_LEVEL_PAIRS:
        return None, int(csls.size), present, r
    # With few folders a high quantile is the single highest pair: one pair of look-alikes (the
    # demo's twins) would set the level for the whole dataset. Never above the 5th highest pair.
    quantile = min(quantile, 1.0 - LEVEL_TOP / csls.size)
    return float(np.quantile(csls, quantile)), int(csls.size), present, r


@register
class Names(Check):
    name = "names"
    order = 50
    title = "one name, two folders"
    doc = ("Two folders whose names are one name: equal after folding case, width, punctuation and "
           "variant characters, the same parts in another order, one name's parts inside the other's, "
           "or a near spelling. Fails when the two folders' faces agree as well; a name match alone warns "
           "(common names collide; twins share a surname).")
    needs = frozenset({"names", "vectors"})
    severity = "fail"
    symmetric = True
    columns = {"score": "score"}
    params = {
        "name_only": Param("warn", "severity of an exact or reordered name match the faces do not confirm",
                           kind="choice", choices=("fail", "warn", "info")),
        "near_name_only": Param("info", "severity of a subset or near-spelling match the faces do not confirm",
                                kind="choice", choices=("fail", "warn", "info")),
        "face_quantile": Param(0.9999, "faces agree when the folders' CSLS score (mean-vector cosine corrected "
                               "for crowding, as in merge_candidates) is above this quantile of random folder "
                               "pairs", low=0.5, high=1.0),
        "max_edits": Param(2, "most edits of a near spelling (0: no near spellings)", kind="int", low=0, high=3),
        "max_edit_ratio": Param(0.25, "most edits of a near spelling per letter of the longer name",
                                low=0.0, high=0.34),
        "min_length": Param(6, "shortest folded name compared for near spellings", kind="int", low=4),
        "subset": Param(True, "report a name whose parts are all in another name (two parts at least)",
                        kind="bool"),
        "itaiji": Param(True, "fold variant CJK characters (髙→高, 邊→辺, 齋→斎) before comparing", kind="bool"),
        "camel_case": Param(True, "split a name with no separator on camel case (NanWang)", kind="bool"),
    }

    def __init__(self) -> None:
        self.matches: dict[tuple[str, str], str] = {}  # (identity, other) sorted -> rule: merge ranking
        self.cutoff: float | None = None
        self.sampled = 0
        self.counts: dict[str, dict[str, int]] = {}

    def run(self, data: CheckData, settings: CheckSettings) -> list[Issue]:
        names = [ident.name for ident in data.identities]
        found = name_matches(names, itaiji=settings["itaiji"], camel_case=settings["camel_case"],
                             subset=settings["subset"], max_edits=settings["max_edits"],
                             max_edit_ratio=settings["max_edit_ratio"], min_length=settings["min_length"])
        if not found:
            return []
        # float32: a ranking signal, and half the cost of the crowding scans
        means = np.asarray(folder_means(data), dtype=np.float32)
        row = {ident.name: n for n, ident in enumerate(data.table.identities)}
        has_faces = np.einsum("ij,ij->i", means, means) > 0
        matched_rows = [(row[names[a]], row[names[b]]) for a, b in found if names[a] in row and names[b] in row]
        self.cutoff, self.sampled, sample, r_sample = between_folder_level(
            means, settings["face_quantile"], CSLS_K, matched_rows)
        r = np.zeros(len(means))
        r[sample] = r_sample
        in_pairs = {row[names[x]] for pair in found for x in pair if names[x] in row}
        involved = np.array(sorted(n for n in in_pairs if has_faces[n]), dtype=np.int64)
        r[involved] = crowding(means, involved, CSLS_K)
        keys = {n: "".join(name_parts(x, settings["itaiji"], settings["camel_case"])) for n, x in enumerate(names)}
        issues = []
        for (a, b), (rule, edits) in found.items():
            one, other = sorted((names[a], names[b]))
            ra, rb = row.get(one), row.get(other)
            cos = csls = None
            if ra is not None and rb is not None and has_faces[ra] and has_faces[rb]:
                cos = float(means[ra] @ means[rb])
                csls = 2 * cos - float(r[ra]) - float(r[rb])
            agree = csls is not None and self.cutoff is not None and csls > self.cutoff
            if agree:
                severity = settings.severity
            else:
                severity = settings["name_only" if rule in ("exact", "reordered") else "near_name_only"]
            score = _RULE_WEIGHT[rule] + (csls if csls is not None else -1.0)
            if rule == "near":
                score -= edits / max(len(keys[a]), len(keys[b]))
            issues.append(Issue(self.name, one, other_identity=other, score=score, severity=severity,
                                detail=self._detail(rule, edits, one, other, keys[a], cos, csls, agree)))
            self.matches[(one, other)] = rule
            tally = self.counts.setdefault(rule, {"faces_agree": 0, "name_only": 0})
            tally["faces_agree" if agree else "name_only"] += 1
        return issues

    def _detail(self, rule: str, edits: int, one: str, other: str, key: str, cos: float | None,
                csls: float | None, agree: bool) -> str:
        a, b = display_name(one), display_name(other)
        if rule == "exact":
            what = f"{a} and {b} are one name after folding ({display_name(key)})"
        elif rule == "reordered":
            what = f"{a} and {b} have the same name parts in another order"
        elif rule == "subset":
            what = f"every part of the shorter of {a} and {b} is a part of the other"
        else:
            what = f"{a} and {b} are a near spelling ({edits} edit(s))"
        if cos is None or csls is None:
            faces = "no faces to compare"
        elif self.cutoff is None:
            faces = f"mean-vector cosine {cos:.3f}; too few folders to tell the dataset's level, faces not judged"
        else:
            # words, not > and <= (details are written as they are: check_files, text.own_text)
            level = (f"mean-vector cosine {cos:.3f}, CSLS {csls:+.3f} {'above' if agree else 'not above'} "
                     f"{self.cutoff:+.3f}")
            faces = (f"faces agree ({level}, the level of random folder pairs)" if agree
                     else f"faces do not confirm it ({level})")
        return f"{rule}: {what}; {faces}"

    def summary(self) -> dict[str, Any]:
        return {"face_cutoff": self.cutoff, "folder_pairs_sampled": self.sampled, "matches": self.counts}

    def report_html(self) -> str:
        if not self.counts:
            return ""
        rows = "".join(f"<tr><td>{html.escape(rule)}</td><td>{c['faces_agree']}</td><td>{c['name_only']}</td></tr>"
                       for rule, c in sorted(self.counts.items(), key=lambda kv: RULES.index(kv[0])))
        level = (f"<p>Faces agree above CSLS score {self.cutoff:+.3f} (the level of {self.sampled} random folder "
                 f"pairs).</p>" if self.cutoff is not None else "")
        return (f"{level}<table><tr><th>rule</th><th>faces agree</th><th>name only</th></tr>{rows}</table>")


def matches_of(results: Iterable[Any]) -> dict[tuple[str, str], str]:
    """The names check's matches from a run's check results (for merge_candidates' name_matches)."""
    for r in results:
        if getattr(r, "name", None) == Names.name and isinstance(r.instance, Names):
            return dict(r.instance.matches)
    return {}
