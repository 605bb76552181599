"""Per identity folder: vectors from its embeddings file, from its images, or both (stale files).

* embeddings file, no images: the file as is (vectors-only datasets).
* images, no embeddings file: every image embedded (cache first) with the configured embedder.
* both: the file's name list is compared with the images. The file is the record of the faces
  it lists, so their vectors are always kept, image present or not (vectors-only datasets list
  images they do not ship; dropping them would hide the duplicates among them). Images it does
  not list are embedded when the embedder makes the same model's vectors as the file. Else, in
  a FACE01 npKnown.npz, they are the images FACE01 found no face in (its move into noFace/
  fails silently): one non-fatal note names them, the listed vectors are checked. In any other
  file they are reported as not checked (fatal). An embedder that cannot make the file's model
  never runs for them (the built-in dlib is known to make `dlib` vectors before it loads).
  Listed files found in FACE01's subfolders (same_face/, noFace/, multipleFaces/) are resolved
  there (one note); listed files found nowhere are a non-fatal "stale" note.

Nothing here writes into the dataset.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..discover import FACE01_FILE, FACE01_SIDE_ORDER, Identity, display_name
from ..problems import MAX_PROBLEMS, Problem, few
from ..readahead import ordered_map
from ..folderscan import FolderScan, scan_folder
from ..table_store import Version
from ..vectors import MEMORY_LIMIT, FolderVectors, read_bytes, read_folder
from .cache import Entry
from .models import BUILTIN, EmbedderInfo, EmbedderUnavailable, get_embedder
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


def _moved(absent: list[str], side: dict[str, frozenset[str]]) -> tuple[dict[str, list[str]], list[str]]:
    """(FACE01 subfolder -> listed files found there, listed files found nowhere): FACE01's
    duplicate finder moves photos into same_face/ without updating npKnown.npz."""
    moved: dict[str, list[str]] = {}
    nowhere = []
    for name in absent:
        where = next((s for s in FACE01_SIDE_ORDER if name in side.get(s, ())), None)
        if where is None:
            nowhere.append(name)
        else:
            moved.setdefault(where, []).append(name)
    return moved, nowhere


def _model_of(spec: str) -> str | None:
    """The vector key an embedder makes, when its spec alone tells (the built-in one, unloaded)."""
    return BUILTIN if spec == BUILTIN else None


@dataclass
class _Plan:
    ident: Identity
    scan: FolderScan | None  # None: discovery found the folder unusable
    removed: list[str] = field(default_factory=list)  # listed in the file, no image anywhere
    added: list[Path] = field(default_factory=list)  # images the file does not list (all of an image-only folder's)
    image_only: bool = False
    moved: dict[str, list[str]] = field(default_factory=dict)  # listed, found in a FACE01 subfolder
    keys: tuple[str, ...] = ()  # the file's vector keys
    embed: bool = False  # `added` is embedded: the embedder makes one of `keys`


def prepare(
    root: Path,
    identities: list[Identity],
    vector_key: str | None,
    embedder_spec: str,
    cache_dir: Path,
    workers: int | None = None,
    progress: Callable[..., Any] | None = None,  # tqdm-style: progress(iterable or None, total=, desc=, unit=)
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

    def scan(ident: Identity) -> tuple[Identity, FolderScan | None, bytes | OSError | MemoryError | None]:
        # on a reader thread: listings, and raw bytes where names are needed
        if ident.fatal:
            return ident, None, None
        sc = scan_folder(ident.path, display_name(ident.name), stamps=True)
        data = read_bytes(sc.embeddings, max_bytes) if sc.embeddings is not None and sc.images else None
        return ident, sc, data

    plans: list[_Plan] = []
    wanted: list[Path] = []
    scanned: Iterable[tuple[Identity, FolderScan | None, bytes | OSError | MemoryError | None]]
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
                absent, plan.added = _stale_plan(fv.names, sc.images)
                plan.moved, plan.removed = _moved(absent, sc.side)
                plan.keys = tuple(fv.arrays)

    embedder: EmbedderInfo | None = None
    unavailable: str | None = None
    entries: dict[Path, Entry] = {}
    stats: EmbedStats | None = None
    embed_seconds = 0.0
    model = _model_of(embedder_spec)
    # loaded only for images it may embed: never for a file of another model's key (dlib would
    # describe every image FACE01 found no face in, for nothing)
    if any(p.image_only or (p.added and (model is None or model in p.keys)) for p in plans):
        try:
            embedder = get_embedder(embedder_spec)
        except EmbedderUnavailable as exc:
            unavailable = str(exc)
    for plan in plans:
        plan.embed = embedder is not None and (plan.image_only or embedder.name in plan.keys)
        if plan.embed:
            wanted += plan.added
    if wanted and embedder is not None:
        t0 = time.perf_counter()
        entries, stats = embed_images(wanted, embedder, cache_dir, workers=workers, progress=progress,
                                      refresh=refresh)
        embed_seconds = time.perf_counter() - t0

    faces: dict[str, FaceReport] = {}
    for plan in plans:
        if plan.image_only:
            report = FaceReport(plan.ident, error=unavailable)
            if not unavailable:
                report.outcomes = [ImageOutcome(p.name, entries[p]) for p in plan.added]
            faces[plan.ident.name] = report

    def folders(chosen: list[_Plan]) -> Iterator[FolderVectors]:
        def fetch(plan: _Plan) -> tuple[_Plan, bytes | OSError | MemoryError | None]:
            sc = plan.scan
            if sc is None or sc.unreadable or plan.image_only or sc.embeddings is None:
                return plan, None
            return plan, read_bytes(sc.embeddings, max_bytes)

        for plan, data in ordered_map(fetch, chosen):
            ident, sc = plan.ident, plan.scan
            if sc is None or sc.unreadable:  # load_table reports the identity's own problems
                yield FolderVectors(ident, problems=list(sc.problems) if sc else [])
            elif plan.image_only:
                yield _embedded(ident, sc, faces[ident.name], embedder, unavailable)
            else:
                fv = read_folder(ident, root, vector_key, (sc.embeddings, data), scan=sc, max_bytes=max_bytes)
                if plan.removed or plan.added or plan.moved:
                    fv = _refresh(fv, root, plan, entries, embedder, unavailable, model)
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
        assert embedder is not None  # faces come only from an embedder
        out.arrays[embedder.name] = np.stack([o.entry.vector for o in used if o.entry.vector is not None])
    else:
        out.problems.append(Problem(rel + "/", f"none of its {len(sc.images)} image(s) gave a face "
                                               "(see test_faces_detected)", code="no-face"))
    return out


def _refresh(fv: FolderVectors, root: Path, plan: _Plan, entries: dict[Path, Entry], embedder: EmbedderInfo | None,
             unavailable: str | None, model: str | None) -> FolderVectors:
    """A stale embeddings file: every listed vector kept, fresh ones for images it does not list.
    `model`: the key the embedder makes when its spec tells (it may not have been loaded)."""
    assert fv.source is not None  # stale only when the file was read
    absent, added = plan.removed, plan.added
    try:
        rel = display_name(str(fv.source.relative_to(root)))
    except ValueError:
        rel = display_name(str(fv.source))
    out = FolderVectors(fv.identity, source=fv.source, names=list(fv.names), arrays=dict(fv.arrays),
                        problems=list(fv.problems))
    if plan.moved:
        out.problems.append(_moved_note(rel, plan.moved))
    if absent:
        out.problems.append(Problem(rel, f"stale: {len(absent)} listed file(s) not in the folder ({_few(absent)}); "
                                         "their vectors are still checked", fatal=False, code="stale"))
    if not added:
        return out
    made = embedder.name if embedder is not None else model
    new = f"stale: {len(added)} image(s) not in its name list ({_few([p.name for p in added])})"
    if not (plan.embed and embedder is not None and embedder.name in out.arrays):
        if fv.source.name == FACE01_FILE:
            # FACE01 lists only the images it found a face in: the rest are its normal state, not
            # a folder that cannot be checked (and another model's vectors never join this file's)
            if made is not None and made not in out.arrays:
                why = f"the embedder makes '{display_name(made)}' vectors and this file holds {_keys(out.arrays)}"
            else:
                why = f"embedder unavailable: {unavailable}" if unavailable else "no embedder"
            out.problems.append(Problem(rel, f"{len(added)} image(s) not in {FACE01_FILE} (FACE01 found no face?): "
                                             f"{_few([p.name for p in added])}; not checked ({why})",
                                        fatal=False, code="not-in-npz"))
        elif made is not None and made not in out.arrays:
            out.problems.append(Problem(rel, f"{new} are not checked: the embedder makes '{made}' vectors and "
                                             f"this file holds {', '.join(repr(k) for k in out.arrays)}; vectors of "
                                             "two models are never compared", code="other-model"))
        else:
            out.problems.append(Problem(rel, f"{new} are not checked: {unavailable or 'no embedder'}",
                                        code="not-embedded"))
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


def _keys(keys: Iterable[str]) -> str:
    return ", ".join(f"'{display_name(k)}'" for k in keys)


# why FACE01 put listed faces into a subfolder, where it is known
_SIDE_WHY = {"same_face": " (FACE01's duplicate finder moved them)"}


def _moved_note(rel: str, moved: dict[str, list[str]]) -> Problem:
    """One note for the listed faces found in FACE01's subfolders (they are FACE01's normal state)."""
    where = [(len(moved[side]), f"in {side}/{_SIDE_WHY.get(side, '')}") for side in FACE01_SIDE_ORDER if side in moved]
    total = sum(n for n, _ in where)
    if len(where) == 1:
        text = f"{total} listed face(s) are {where[0][1]}"
    else:
        text = f"{total} listed face(s) are in FACE01's subfolders: {', '.join(f'{n} {w}' for n, w in where)}"
    return Problem(rel, f"{text}; their vectors are checked", fatal=False, code="face01-moved")
