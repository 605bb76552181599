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
from typing import Callable

import numpy as np

from ..discover import Identity, display_name
from ..problems import MAX_PROBLEMS, Problem, few
from ..readahead import ordered_map
from ..vectors import FolderVectors, fetch_folder, read_folder
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
        return [o for o in self.outcomes if o.problem]

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
    folders: list[FolderVectors]
    faces: dict[str, FaceReport]
    embedder: EmbedderInfo | None
    stats: EmbedStats | None
    embed_seconds: float = 0.0  # images embedded (cache included), not the reading of files


def _stale_plan(fv: FolderVectors, images: list[Path]) -> tuple[list[str], list[Path]]:
    """(listed files with no image in the folder, images the file does not list)."""
    present = {p.name for p in images}
    listed = set(fv.names)
    absent = [n for n in fv.names if n not in present]
    added = [p for p in images if p.name not in listed]
    return absent, added


def prepare(
    root: Path,
    identities: list[Identity],
    vector_key: str | None,
    embedder_spec: str,
    cache_dir: Path,
    workers: int | None = None,
    progress: Callable | None = None,
    max_bytes: int | None = None,
) -> Prepared:
    """Every identity's vectors, read or embedded (see the module doc). `max_bytes`: memory bound
    for one folder's arrays (vectors.MEMORY_LIMIT by default)."""
    root = Path(root)

    def fetch(ident: Identity):  # on a reader thread: listings and raw bytes only
        return ident, *fetch_folder(ident, root, max_bytes)

    scanned = []
    fetched = ordered_map(fetch, identities)
    if progress is not None:
        fetched = progress(fetched, total=len(identities), desc="loading", unit="folder")
    for ident, scan, data in fetched:
        if scan is None or scan.unreadable:  # load_table reports the identity's own problems
            scanned.append((ident, [], FolderVectors(ident, problems=list(scan.problems) if scan else [])))
            continue
        images = scan.images
        fv = None
        if scan.embeddings is not None or not images:
            fv = read_folder(ident, root, vector_key, (scan.embeddings, data), scan=scan, max_bytes=max_bytes)
        scanned.append((ident, images, fv if fv is not None else scan))

    # What needs embedding: image-only folders, and images a stale embeddings file does not list.
    wanted: list[Path] = []
    plans = []
    for ident, images, fv in scanned:
        if not isinstance(fv, FolderVectors):  # image-only: the listing's problems go with it
            plans.append((ident, fv, images, [], images))
            wanted += images
        elif images and fv.names is not None and fv.arrays:
            removed, added = _stale_plan(fv, images)
            plans.append((ident, fv, images, removed, added))
            wanted += added
        else:
            plans.append((ident, fv, images, [], []))

    embedder, unavailable, entries, stats, embed_seconds = None, None, {}, None, 0.0
    if wanted:
        try:
            embedder = get_embedder(embedder_spec)
        except EmbedderUnavailable as exc:
            unavailable = str(exc)
        if embedder is not None:
            t0 = time.perf_counter()
            entries, stats = embed_images(wanted, embedder, cache_dir, workers=workers, progress=progress)
            embed_seconds = time.perf_counter() - t0

    folders, faces = [], {}
    for ident, fv, images, removed, added in plans:
        rel = display_name(ident.name)
        if not isinstance(fv, FolderVectors):  # image-only folder
            report = FaceReport(ident, error=unavailable)
            out = FolderVectors(ident, source=ident.path, problems=list(fv.problems))
            if unavailable:
                out.problems.append(Problem(rel + "/", f"{len(images)} image(s) and no embeddings file; "
                                                       f"not embedded: {unavailable}", code="not-embedded"))
            else:
                names, vecs = [], []
                for p in images:
                    e = entries[p]
                    report.outcomes.append(ImageOutcome(p.name, e))
                    if e.vector is not None:
                        names.append(p.name)
                        vecs.append(e.vector)
                out.names = names
                if vecs:
                    out.arrays[embedder.name] = np.stack(vecs)
                else:
                    out.problems.append(Problem(rel + "/", f"none of its {len(images)} image(s) gave a face "
                                                           "(see test_faces_detected)", code="no-face"))
            faces[ident.name] = report
            folders.append(out)
            continue
        if not (removed or added):
            folders.append(fv)
            continue
        folders.append(_refresh(fv, root, removed, added, entries, embedder, unavailable))
    return Prepared(folders, faces, embedder, stats, embed_seconds)


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
