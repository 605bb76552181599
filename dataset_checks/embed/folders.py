"""Per identity folder: vectors from its embeddings file, from its images, or both (stale files).

* embeddings file, no images: the file as is (vectors-only datasets).
* images, no embeddings file: every image embedded (cache first) with the configured embedder.
* both: the file's name list is compared with the images. The file is the record of the faces
  it lists, so their vectors are always kept, image present or not (vectors-only datasets list
  images they do not ship; dropping them would hide the duplicates among them). Images it does
  not list are embedded when the embedder makes the same model's vectors as the file, else
  reported as not checked (fatal). Listed files that are gone are a non-fatal note.

Nothing here writes into the dataset.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..discover import Identity, display_name
from ..problems import MAX_PROBLEMS, Problem, few
from ..readahead import ordered_map
from ..folderscan import FolderScan, scan_folder
from ..table_store import Version
from ..vectors import MEMORY_LIMIT, FolderVectors, read_bytes, read_folder
from .cache import Entry
from .models import EmbedderInfo, EmbedderUnavailable, get_embedder
from .pool import EmbedStats, embed_images


@dataclass
class ImageOutcome:
    file: str
    entry: Entry

    @property
    def problem(self) -> str | None:
        e = self.entry
        if e.error:
            return e.error
        if e.faces == 0 or e.vector is None:
            return "no face found"
        if e.faces > 1:
            return f"{e.faces} faces found; the one nearest the image centre is used"
        return None

    @property
    def rank(self) -> int:
        """How bad the problem is, worst first: 0 unreadable/too small, 1 no face, 2 several faces
        (a soft finding: a face is still used), 3 none."""
        e = self.entry
        if e.error:
            return 0
        if e.faces == 0 or e.vector is None:
            return 1
        return 2 if e.faces > 1 else 3

    def line(self) -> str:
        text = display_name(self.file) + ": " + (self.problem or "ok")
        return text + (f" ({'; '.join(self.entry.notes)})" if self.entry.notes else "")


@dataclass
class FaceReport:
    """What face detection found in one identity's images (for test_faces_detected)."""

    identity: Identity
    outcomes: list[ImageOutcome] = field(default_factory=list)
    error: str | None = None  # the images could not be embedded at all (no embedder)

    @property
    def problems(self) -> list[ImageOutcome]:
        """Every image with a face problem, worst first (unreadable, no face, several faces), so a
        capped message never cuts a worse one off for a note."""
        return sorted((o for o in self.outcomes if o.problem), key=lambda o: o.rank)

    @property
    def hard(self) -> list[ImageOutcome]:
        """Images that gave no face (unreadable, too small, no face): their faces are not checked."""
        return [o for o in self.problems if o.rank < 2]

    @property
    def several(self) -> list[ImageOutcome]:
        """Group photos: several faces found, the one nearest the centre used (a soft finding)."""
        return [o for o in self.problems if o.rank == 2]

    @property
    def notes(self) -> list[ImageOutcome]:
        return [o for o in self.outcomes if not o.problem and o.entry.notes]

    @property
    def faces_used(self) -> int:
        return sum(1 for o in self.outcomes if o.entry.vector is not None)

    def message(self) -> str:
        name = self.identity.display
        if self.error:
            return f"{name}: images not embedded: {self.error}"
        lines = [f"{name}: {len(self.problems)} of {len(self.outcomes)} image(s) with a face problem "
                 f"({self.faces_used} face(s) used):"]
        problems = self.problems
        lines += ["  " + o.line() for o in problems[:MAX_PROBLEMS]]
        if len(problems) > MAX_PROBLEMS:
            lines.append(f"  ... and {len(problems) - MAX_PROBLEMS} more images with a face problem")
        return "\n".join(lines)


@dataclass
class Prepared:
    folders: Iterable[FolderVectors]  # one per identity, in order; read lazily, one pass
    faces: dict[str, FaceReport]
    embedder: EmbedderInfo | None
    stats: EmbedStats | None
    embed_seconds: float = 0.0  # images embedded (cache included), not the reading of files
    version: str = ""  # digest of every folder's listing and the settings: the table's dataset version
    # -- incremental: begin --
    # per identity (in order): the digest of its own listing and the settings, so a later run can
    # tell which folders changed; and `read(indices)`, pass 2 for just those identities (in order)
    folder_versions: list[str] = field(default_factory=list)
    read: Callable[[list[int]], Iterator[FolderVectors]] | None = None
    # -- incremental: end --


def _stale_plan(names: list[str], images: list[Path]) -> tuple[list[str], list[Path]]:
    """(listed files with no image in the folder, images the file does not list)."""
    present = {p.name for p in images}
    listed = set(names)
    absent = [n for n in names if n not in present]
    added = [p for p in images if p.name not in listed]
    return absent, added


@dataclass
class _Plan:
    ident: Identity
    scan: FolderScan | None  # None: discovery found the folder unusable
    removed: list[str] = field(default_factory=list)  # listed in the file, no image
    added: list[Path] = field(default_factory=list)  # images to embed (all of an image-only folder's)
    image_only: bool = False


def prepare(
    root: Path,
    identities: list[Identity],
    vector_key: str | None,
    embedder_spec: str,
    cache_dir: Path,
    workers: int | None = None,
    progress: Callable | None = None,
    max_bytes: int | None = None,
    refresh: bool = False,
) -> Prepared:
    """Every identity's vectors, read or embedded (see the module doc). `max_bytes`: memory bound
    for one folder's arrays (vectors.MEMORY_LIMIT by default).

    Two passes, so that memory holds one folder's arrays at a time, never the dataset's: the
    first lists the folders (and reads the name lists of those that hold images as well, to find
    stale ones) and embeds what needs it; `Prepared.folders` is the second, read lazily as the
    table consumes it."""
    root = Path(root)
    settings = (vector_key, embedder_spec, MEMORY_LIMIT if max_bytes is None else max_bytes)
    version = Version(*settings)
    folder_versions: list[str] = []  # incremental

    def scan(ident: Identity):  # on a reader thread: listings, and raw bytes where names are needed
        if ident.fatal:
            return ident, None, None
        sc = scan_folder(ident.path, display_name(ident.name), stamps=True)
        data = read_bytes(sc.embeddings, max_bytes) if sc.embeddings is not None and sc.images else None
        return ident, sc, data

    plans: list[_Plan] = []
    wanted: list[Path] = []
    scanned = ordered_map(scan, identities)
    if progress is not None:
        scanned = progress(scanned, total=len(identities), desc="listing", unit="folder")
    for ident, sc, data in scanned:
        version.add(ident.name, ident.fatal, sc.stamps if sc is not None else None)
        one = Version(*settings)  # incremental: this folder's own version
        one.add(ident.name, ident.fatal, sc.stamps if sc is not None else None)
        folder_versions.append(one.hexdigest()[:32])
        plan = _Plan(ident, sc)
        plans.append(plan)
        if sc is None or sc.unreadable:
            continue
        if sc.embeddings is None and sc.images:
            plan.image_only, plan.added = True, list(sc.images)
        elif data is not None:
            fv = read_folder(ident, root, vector_key, (sc.embeddings, data), scan=sc, max_bytes=max_bytes)
            if fv.arrays:
                plan.removed, plan.added = _stale_plan(fv.names, sc.images)
        wanted += plan.added

    embedder, unavailable, entries, stats, embed_seconds = None, None, {}, None, 0.0
    if wanted:
        try:
            embedder = get_embedder(embedder_spec)
        except EmbedderUnavailable as exc:
            unavailable = str(exc)
        if embedder is not None:
            t0 = time.perf_counter()
            entries, stats = embed_images(wanted, embedder, cache_dir, workers=workers, progress=progress,
                                          refresh=refresh)
            embed_seconds = time.perf_counter() - t0

    faces = {}
    for plan in plans:
        if plan.image_only:
            report = FaceReport(plan.ident, error=unavailable)
            if not unavailable:
                report.outcomes = [ImageOutcome(p.name, entries[p]) for p in plan.added]
            faces[plan.ident.name] = report

    def folders(chosen: list[_Plan]) -> Iterator[FolderVectors]:
        def fetch(plan: _Plan):
            sc = plan.scan
            readable = sc is not None and not sc.unreadable and not plan.image_only
            return plan, read_bytes(sc.embeddings, max_bytes) if readable and sc.embeddings is not None else None

        for plan, data in ordered_map(fetch, chosen):
            ident, sc = plan.ident, plan.scan
            if sc is None or sc.unreadable:  # load_table reports the identity's own problems
                yield FolderVectors(ident, problems=list(sc.problems) if sc else [])
            elif plan.image_only:
                yield _embedded(ident, sc, faces[ident.name], embedder, unavailable)
            else:
                fv = read_folder(ident, root, vector_key, (sc.embeddings, data), scan=sc, max_bytes=max_bytes)
                if plan.removed or plan.added:
                    fv = _refresh(fv, root, plan.removed, plan.added, entries, embedder, unavailable)
                yield fv

    return Prepared(folders(plans), faces, embedder, stats, embed_seconds, version.hexdigest(),
                    folder_versions=folder_versions, read=lambda indices: folders([plans[k] for k in indices]))


def _embedded(ident: Identity, sc: FolderScan, report: FaceReport, embedder: EmbedderInfo | None,
              unavailable: str | None) -> FolderVectors:
    """An image-only folder's vectors, from its embedded images."""
    rel = display_name(ident.name)
    out = FolderVectors(ident, source=ident.path, problems=list(sc.problems))
    if unavailable:
        out.problems.append(Problem(rel + "/", f"{len(sc.images)} image(s) and no embeddings file; "
                                               f"not embedded: {unavailable}", code="not-embedded"))
        return out
    used = [o for o in report.outcomes if o.entry.vector is not None]
    out.names = [o.file for o in used]
    if used:
        out.arrays[embedder.name] = np.stack([o.entry.vector for o in used])
    else:
        out.problems.append(Problem(rel + "/", f"none of its {len(sc.images)} image(s) gave a face "
                                               "(see test_faces_detected)", code="no-face"))
    return out


def _refresh(fv: FolderVectors, root: Path, absent: list[str], added: list[Path],
             entries: dict[Path, Entry], embedder: EmbedderInfo | None, unavailable: str | None) -> FolderVectors:
    """A stale embeddings file: every listed vector kept, fresh ones for images it does not list."""
    try:
        rel = display_name(str(fv.source.relative_to(root)))
    except ValueError:
        rel = display_name(str(fv.source))
    out = FolderVectors(fv.identity, source=fv.source, names=list(fv.names), arrays=dict(fv.arrays),
                        problems=list(fv.problems))
    if absent:
        out.problems.append(Problem(rel, f"stale: {len(absent)} listed file(s) not in the folder ({_few(absent)}); "
                                         "their vectors are still checked", fatal=False, code="stale"))
    if not added:
        return out
    new = f"stale: {len(added)} image(s) not in its name list ({_few([p.name for p in added])})"
    if embedder is None:
        out.problems.append(Problem(rel, f"{new} are not checked: {unavailable or 'no embedder'}",
                                    code="not-embedded"))
        return out
    if embedder.name not in out.arrays:
        out.problems.append(Problem(rel, f"{new} are not checked: the embedder makes '{embedder.name}' vectors and "
                                         f"this file holds {', '.join(repr(k) for k in out.arrays)}; vectors of two "
                                         "models are never compared", code="other-model"))
        return out
    new_names, new_vecs, failed = [], [], []
    for p in added:
        e = entries[p]
        if e.vector is None:
            failed.append(f"{display_name(p.name)}: {ImageOutcome(p.name, e).problem}")
        else:
            new_names.append(p.name)
            new_vecs.append(e.vector)
    base = out.arrays[embedder.name]
    out.arrays = {embedder.name: np.concatenate([base.reshape(base.shape[0], -1).astype(np.float32),
                                                 np.array(new_vecs, dtype=np.float32).reshape(len(new_vecs), -1)])}
    out.names = out.names + new_names
    out.problems.append(Problem(rel, f"{new}; fresh '{embedder.name}' vectors are used for them", fatal=False,
                                code="stale"))
    if failed:
        out.problems.append(Problem(rel, f"no face used from {len(failed)} new image(s): {few(failed)}",
                                    fatal=False, code="no-face"))
    return out


def _few(names: list[str]) -> str:
    return few([display_name(x) for x in names[:5]], total=len(names))
