"""exact_duplicates: the same bytes filed twice, in one folder or under two identities.

Files: every image listed in an identity folder plus every file an embeddings file names that
exists on disk. Only files whose sizes collide are read, and those first by their head: a
dataset of 13,000 JPEGs has few same-sized files and fewer same-headed ones. Two names for one
inode (hard or symbolic links) are the same content without reading.

Vectors-only rows (the file an embeddings file names is not on disk): identical vectors, i.e.
bit-identical float32 rows of the table (after normalisation; identical raw rows always give
identical normalised rows).

A content held n times gives n - 1 issues, each copy against the canonical first copy (the
smallest (identity, file)), not n^2 pairs.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import defaultdict
from dataclasses import replace
from typing import Any

from . import register
from .base import Check, CheckData, CheckSettings, Issue, Param
from ..discover import display_name

HEAD = 64 << 10  # bytes read first; small images (most face crops) are done in one read
CHUNK = 1 << 20
ROW_BLOCK = 4096  # vector rows hashed per numpy call


def _digest(path: str, head_only: bool) -> bytes | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:  # read-only: the dataset is never written
            block = fh.read(HEAD)
            h.update(block)
            if not head_only:
                while block := fh.read(CHUNK):
                    h.update(block)
    except OSError:
        return None
    return h.digest()


def _same_content(entries: list[tuple], read) -> list[list[tuple]]:
    """Groups (2+) of entries with identical bytes. entries: (identity, file, path, size, inode)."""
    groups: list[list[tuple]] = []
    by_size: dict[int, list[tuple]] = defaultdict(list)
    for e in entries:
        by_size[e[3]].append(e)
    for size, same_size in by_size.items():
        if len(same_size) < 2:
            continue
        # one read per inode: links to one file are one content
        by_inode: dict[tuple, list[tuple]] = defaultdict(list)
        for e in same_size:
            by_inode[e[4]].append(e)
        if len(by_inode) < 2:
            groups.append(same_size)
            continue
        inodes = list(by_inode.values())
        buckets: dict[bytes, list[list[tuple]]] = defaultdict(list)
        for members in inodes:
            d = read(members[0][2], True)
            if d is not None:
                buckets[d].append(members)
        for heads in buckets.values():
            if size <= HEAD or len(heads) < 2:
                full = {0: heads}
            else:
                full = defaultdict(list)
                for members in heads:
                    d = read(members[0][2], False)
                    if d is not None:
                        full[d].append(members)
            for same in full.values():
                flat = [e for members in same for e in members]
                if len(flat) > 1:
                    groups.append(flat)
    return groups


@register
class ExactDuplicates(Check):
    name = "exact_duplicates"
    title = "exact duplicates"
    doc = ("Byte-identical files (SHA-256 of the content) filed twice: under two identities (one photo, two "
           "labels: fails) or twice in one folder (weights that face double: in_folder severity). For folders "
           "with vectors only, bit-identical vectors. Each copy is reported against the first copy of its content.")
    level = "identity"
    needs = frozenset({"images", "names", "vectors"})
    severity = "fail"
    symmetric = True
    columns = {"score": "copies"}
    params = {
        "in_folder": Param("warn", "severity of a duplicate inside one folder", kind="choice",
                           choices=("fail", "warn", "info")),
        "vectors": Param(True, "compare vectors of rows whose file is not on disk (vectors-only datasets)",
                         kind="bool"),
        "max_per_folder": Param(50, "issues listed per folder; the rest are counted in the last one's detail",
                                kind="int", low=1),
    }

    def __init__(self) -> None:
        self.facts: dict[str, Any] = {}

    def run(self, data: CheckData, settings: CheckSettings) -> list[Issue]:
        entries, seen = self._files(data)
        groups = _same_content(entries, _digest)
        n_file_groups = len(groups)
        if settings["vectors"]:
            groups += self._vector_groups(data, seen)
        issues: list[Issue] = []
        for group in groups:
            # canonical order: the first copy is the smallest (identity, file)
            group = sorted({(e[0], e[1]): e for e in group}.values(), key=lambda e: (e[0], e[1]))
            if len(group) < 2:
                continue
            first = group[0]
            folders = len({e[0] for e in group})
            for e in group[1:]:
                inside = e[0] == first[0]
                how = ("identical vectors" if e[2] is None
                       else "the same file (a link)" if e[4] == first[4] else "byte-identical")
                where = "in the same folder" if inside else f"filed under {display_name(first[0])} and {display_name(e[0])}"
                detail = f"{how} to {display_name(first[0])}/{display_name(first[1])}, {where}"
                if len(group) > 2:
                    detail += f"; one of {len(group)} copies in {folders} folder(s)"
                issues.append(Issue(self.name, first[0], first[1], e[0], e[1], score=float(len(group)),
                                    detail=detail, severity=settings["in_folder"] if inside else settings.severity))
        kept = self._capped(issues, settings["max_per_folder"])
        self.facts = {
            "files_compared": len(entries),
            "content_groups": n_file_groups,
            "vector_groups": len(groups) - n_file_groups,
            "duplicates": len(issues),
            "cross_folder": sum(1 for i in issues if i.other_identity != i.identity),
            "in_folder": sum(1 for i in issues if i.other_identity == i.identity),
            "listed": len(kept),
        }
        return kept

    def _files(self, data: CheckData) -> tuple[list[tuple], set[tuple[int, str]]]:
        """(identity, file, path, size, inode) of every file on disk; and the (identity index,
        file) rows of the table that such a file backs."""
        from ..folderscan import scan_folder

        table = data.table
        names_of: dict[int, list[str]] = defaultdict(list)
        for idx, f in zip(table.identity_of.tolist(), table.files):
            names_of[idx].append(f)
        entries: list[tuple] = []
        seen: set[tuple[int, str]] = set()
        for idx, ident in enumerate(table.identities):
            if ident.fatal:
                continue
            folder = str(ident.path)
            # the listing every part of the tool uses (its problems are reported by the loader)
            listed = [p.name for p in scan_folder(ident.path, display_name(ident.name)).images]
            inodes: set[tuple] = set()
            for name in sorted(set(listed)) + names_of.get(idx, []):
                path = os.path.join(folder, name)
                try:
                    st = os.stat(path)
                except (OSError, ValueError):  # gone, dangling, or a name no file system accepts
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                seen.add((idx, name))
                inode = (st.st_dev, st.st_ino)
                if inode in inodes:  # one file named twice in its own folder (listing + embeddings)
                    continue
                inodes.add(inode)
                entries.append((ident.name, name, path, st.st_size, inode))
        return entries, seen

    def _vector_groups(self, data: CheckData, seen: set[tuple[int, str]]) -> list[list[tuple]]:
        import numpy as np

        table = data.table
        owner = table.identity_of
        rows = np.array([r for r, (idx, f) in enumerate(zip(owner.tolist(), table.files)) if (idx, f) not in seen],
                        dtype=np.int64)
        if len(rows) < 2:
            return []
        x = np.ascontiguousarray(table.vectors)
        words = x.view(np.uint32) if x.dtype == np.float32 else x.view(np.uint8)
        # a 64-bit fingerprint of the bits of each row (multiply-add mod 2^64); collisions are
        # then settled by comparing the rows themselves
        rng = np.random.default_rng(0x5EED)
        weights = rng.integers(1, 2**63, size=words.shape[1], dtype=np.uint64) | np.uint64(1)
        prints = np.empty(len(rows), dtype=np.uint64)
        for s in range(0, len(rows), ROW_BLOCK):
            w = words[rows[s : s + ROW_BLOCK]].astype(np.uint64)
            w *= weights
            prints[s : s + ROW_BLOCK] = w.sum(axis=1, dtype=np.uint64)
        order = np.argsort(prints, kind="stable")
        sp = prints[order]
        starts = np.flatnonzero(np.r_[True, sp[1:] != sp[:-1]])
        ends = np.r_[starts[1:], len(sp)]
        groups = []
        for s, e in zip(starts.tolist(), ends.tolist()):
            if e - s < 2:
                continue
            members = rows[order[s:e]]
            block = words[members]
            # exact: group the rows by their full bytes
            by_bytes: dict[bytes, list[int]] = defaultdict(list)
            for r, b in zip(members.tolist(), block):
                by_bytes[b.tobytes()].append(r)
            for same in by_bytes.values():
                if len(same) > 1:
                    groups.append([(table.identities[owner[r]].name, table.files[r], None, None, ("v", int(r)))
                                   for r in same])
        return groups

    @staticmethod
    def _capped(issues: list[Issue], cap: int) -> list[Issue]:
        """At most `cap` issues per folder; the last listed one counts the rest."""
        issues.sort(key=lambda i: (i.identity != i.other_identity and i.severity == "fail", i.score), reverse=True)
        count: dict[str, int] = defaultdict(int)
        dropped: dict[str, int] = defaultdict(int)
        last: dict[str, int] = {}
        kept: list[Issue] = []
        for issue in issues:
            folders = {issue.identity, issue.other_identity}
            if all(count[f] < cap for f in folders):
                for f in folders:
                    count[f] += 1
                    last[f] = len(kept)
                kept.append(issue)
            else:
                for f in folders:
                    dropped[f] += 1
        for f, n in dropped.items():
            if f in last:
                k = last[f]
                kept[k] = replace(kept[k], detail=kept[k].detail + f"; {n} more duplicate(s) involving "
                                                                   f"{display_name(f)} not listed (max_per_folder)")
        return kept

    def summary(self) -> dict[str, Any]:
        return dict(self.facts)

