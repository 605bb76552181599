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
import unicodedata
from collections import defaultdict
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeAlias

from . import register
from .base import Check, CheckSettings, Issue, Param
from .data import CheckData
from ..discover import display_name

if TYPE_CHECKING:  # annotations only; numpy is imported where used
    import numpy as np

HEAD = 64 << 10  # bytes read first; small images (most face crops) are done in one read
CHUNK = 1 << 20
ROW_BLOCK_BYTES = 8 << 20  # vector rows fingerprinted per numpy call (4096 rows at d=512)

# (identity, file, path, size, inode) of a file on disk
FileEntry: TypeAlias = "tuple[str, str, str, int, tuple[int, int]]"
# a row whose file is not on disk: no path, no size; ("v", row) in place of the inode
VectorEntry: TypeAlias = "tuple[str, str, None, None, tuple[str, int]]"
Entry: TypeAlias = "FileEntry | VectorEntry"


def _fold(name: str) -> str:
    """A name as file systems that ignore case and Unicode normalisation compare it."""
    return name.lower() if name.isascii() else unicodedata.normalize("NFC", name).casefold()


def _on_disk(names: list[str], listing: frozenset[str]) -> list[int]:
    """Indices of the names that may be files of a folder with this listing: listed, listed but
    for case and Unicode normalisation (file systems that fold those find either name), or a
    path with a separator (looked up as it is)."""
    out = [k for k, n in enumerate(names) if n in listing]
    if len(out) == len(names):
        return out
    rest = [k for k, n in enumerate(names) if n not in listing]
    joined = "\0".join(names[k] for k in rest)
    for sep in {os.sep, os.altsep or os.sep}:
        if sep in joined:
            out += [k for k in rest if sep in names[k]]
    if listing:
        folded = {_fold(e) for e in listing}
        if joined.isascii() and joined.count("\0") == len(rest) - 1:  # one C call folds them all
            keys = joined.lower().split("\0")
        else:
            keys = [_fold(names[k]) for k in rest]
        out += [k for k, key in zip(rest, keys) if key in folded]
    return sorted(set(out))


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


def _same_content(entries: list[FileEntry], read: Callable[[str, bool], bytes | None]) -> list[list[FileEntry]]:
    """Groups (2+) of entries with identical bytes. entries: (identity, file, path, size, inode)."""
    groups: list[list[FileEntry]] = []
    by_size: dict[int, list[FileEntry]] = defaultdict(list)
    for e in entries:
        by_size[e[3]].append(e)
    for size, same_size in by_size.items():
        if len(same_size) < 2:
            continue
        # one read per inode: links to one file are one content
        by_inode: dict[tuple[int, int], list[FileEntry]] = defaultdict(list)
        for e in same_size:
            by_inode[e[4]].append(e)
        if len(by_inode) < 2:
            groups.append(same_size)
            continue
        inodes = list(by_inode.values())
        buckets: dict[bytes, list[list[FileEntry]]] = defaultdict(list)
        for members in inodes:
            d = read(members[0][2], True)
            if d is not None:
                buckets[d].append(members)
        for heads in buckets.values():
            full: dict[int | bytes, list[list[FileEntry]]]  # digest -> inodes (0: the head was all)
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
    order = 30
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
        entries, backed = self._files(data)
        groups: list[Sequence[Entry]] = list(_same_content(entries, _digest))
        n_file_groups = len(groups)
        if settings["vectors"]:
            groups += self._vector_groups(data, backed)
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

    def _files(self, data: CheckData) -> tuple[list[FileEntry], "np.ndarray"]:
        """(identity, file, path, size, inode) of every file on disk; and which rows of the table
        such a file backs.

        One listing per folder: a file the embeddings name is looked at (stat) only when the
        listing holds it, or a name equal to it but for case and Unicode normalisation (file
        systems that fold those find it under either name); names with a separator are looked
        up as they are. A vectors-only dataset of a million rows costs its listings, not a
        million failed stats."""
        import numpy as np

        from ..folderscan import scan_folder

        table = data.table
        owner = np.asarray(table.identity_of)
        order = np.argsort(owner, kind="stable")
        bounds = np.searchsorted(owner[order], np.arange(len(table.identities) + 1))
        in_order = bool(np.array_equal(order, np.arange(len(order))))
        backed = np.zeros(len(owner), bool)
        entries: list[FileEntry] = []
        for idx, ident in enumerate(table.identities):
            if ident.fatal:
                continue
            lo, hi = int(bounds[idx]), int(bounds[idx + 1])
            rows = np.arange(lo, hi) if in_order else order[lo:hi]
            names = table.files[lo:hi] if in_order else [table.files[r] for r in rows.tolist()]
            folder = str(ident.path)
            # the listing every part of the tool uses (its problems are reported by the loader)
            scan = scan_folder(ident.path, display_name(ident.name))
            listed = sorted({p.name for p in scan.images})
            named = _on_disk(names, scan.names)
            found: set[str] = set()
            inodes: set[tuple[int, int]] = set()
            for name in listed + [names[k] for k in named]:
                if name in found:
                    continue
                path = os.path.join(folder, name)
                try:
                    st = os.stat(path)
                except (OSError, ValueError):  # gone, dangling, or a name no file system accepts
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                found.add(name)
                inode = (st.st_dev, st.st_ino)
                if inode in inodes:  # one file named twice in its own folder (listing + embeddings)
                    continue
                inodes.add(inode)
                entries.append((ident.name, name, path, st.st_size, inode))
            if found:
                backed[rows[[k for k in named if names[k] in found]]] = True
        return entries, backed

    def _vector_groups(self, data: CheckData, backed: "np.ndarray") -> list[list[VectorEntry]]:
        """Groups (2+) of bit-identical rows among those no file backs. A 64-bit fingerprint of
        each row (the bits as 64-bit words, multiplied by fixed odd weights and summed mod 2^64)
        is computed in blocks of rows in table order; rows whose fingerprints collide are then
        compared byte by byte. The table is only read."""
        import numpy as np

        from ..memory import release

        table = data.table
        owner = table.identity_of
        x = table.vectors
        n = len(owner)
        if n - int(backed.sum()) < 2:
            return []
        row_bytes = x.shape[1] * x.dtype.itemsize if x.ndim == 2 else 0
        word = np.uint64 if row_bytes % 8 == 0 else np.uint8
        rng = np.random.default_rng(0x5EED)
        weights = rng.integers(1, 2**63, size=row_bytes // np.dtype(word).itemsize, dtype=np.uint64) | np.uint64(1)
        prints = np.empty(n, dtype=np.uint64)
        block = max(1, ROW_BLOCK_BYTES // max(row_bytes, 1))
        for s in range(0, n, block):
            words = np.ascontiguousarray(x[s : s + block]).view(word)
            prints[s : s + block] = np.einsum("ij,j->i", words.astype(np.uint64, copy=False), weights)
            release(x, s, s + block)  # a mapped table's rows, given back once read (peak memory)
        rows = np.flatnonzero(~backed)
        prints = prints[rows]
        order = np.argsort(prints, kind="stable")
        sp = prints[order]
        same = np.flatnonzero(sp[1:] == sp[:-1])
        if not same.size:
            return []
        starts = np.flatnonzero(np.r_[True, sp[1:] != sp[:-1]])
        ends = np.r_[starts[1:], len(sp)]
        groups: list[list[int]] = []
        for s, e in zip(starts.tolist(), ends.tolist()):
            if e - s < 2:
                continue
            members = np.sort(rows[order[s:e]])
            # exact: group the rows by their full bytes, read a block of rows at a time (a crowd
            # of a million copies is not gathered at once)
            by_bytes: dict[bytes, list[int]] = defaultdict(list)
            for k in range(0, members.size, block):
                part = members[k : k + block]
                for r, b in zip(part.tolist(), x[part]):
                    by_bytes[b.tobytes()].append(r)
            groups.extend(rows for rows in by_bytes.values() if len(rows) > 1)
        groups.sort()  # by first row: an order that does not depend on the fingerprint
        return [[(table.identities[owner[r]].name, table.files[r], None, None, ("v", int(r))) for r in rows]
                for rows in groups]

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

