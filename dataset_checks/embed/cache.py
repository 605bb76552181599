"""Embedding cache outside the dataset: one small .npz per (image content, model).

Layout: `<cache>/<model slug>/<sha256[:2]>/<sha256>.npz`, holding the used face's vector (or an
empty array), the number of faces found, the decode error and notes, the model id, and a
checksum over all of those. Entries are written to a temporary file and renamed into place, so a
crash leaves no half-written entry; an entry that fails to load or whose checksum or model id
does not match is reported as corrupt and recomputed.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..safe_write import atomic_write, create_new

DEFAULT_CACHE = ".dataset_checks_cache"
FORMAT = "1"


@dataclass
class Entry:
    """One image's embedding outcome."""

    vector: np.ndarray | None  # float32 (D,) of the used face; None: no usable face
    faces: int = 0  # faces found; -1 when the image could not be decoded
    error: str | None = None  # decode error (unreadable, corrupt, too small)
    notes: list[str] = field(default_factory=list)  # conversions done (greyscale, EXIF, ...)


def file_hash(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _checksum(model_id: str, vec: np.ndarray, faces: int, error: str, notes: list[str]) -> str:
    h = hashlib.sha256()
    for part in (FORMAT, model_id, str(faces), error, "\x00".join(notes)):
        h.update(part.encode("utf-8", "surrogatepass") + b"\x1f")
    h.update(np.ascontiguousarray(vec, dtype="<f4").tobytes())
    return h.hexdigest()


class Cache:
    def __init__(self, root: Path, model_slug: str, model_id: str):
        self.root = Path(root)
        self.dir = self.root / model_slug
        self.model_id = model_id
        self.corrupt: list[Path] = []

    def _path(self, digest: str) -> Path:
        return self.dir / digest[:2] / f"{digest}.npz"

    def get(self, digest: str) -> Entry | None:
        """The cached entry, or None when absent or corrupt (corrupt ones are remembered)."""
        path = self._path(digest)
        try:
            with np.load(path, allow_pickle=False) as z:
                vec = z["vector"]
                faces = int(z["faces"])
                error = str(z["error"])
                notes = [str(n) for n in z["notes"].tolist()]
                model = str(z["model"])
                check = str(z["check"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, TypeError):
            self.corrupt.append(path)
            return None
        if model != self.model_id or check != _checksum(model, vec, faces, error, notes) or vec.ndim != 1:
            self.corrupt.append(path)
            return None
        return Entry(vec.astype(np.float32) if vec.size else None, faces, error or None, notes)

    def put(self, digest: str, entry: Entry) -> None:
        path = self._path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._mark_root()
        vec = np.zeros(0, dtype=np.float32) if entry.vector is None else np.asarray(entry.vector, dtype=np.float32)
        error = entry.error or ""
        # through the one writer: a link planted at the entry's name is refused (UnsafeTarget)
        atomic_write(path, lambda fh: np.savez(
            fh,
            vector=vec,
            faces=np.int64(entry.faces),
            error=np.array(error),
            notes=np.array(entry.notes, dtype=str),
            model=np.array(self.model_id),
            check=np.array(_checksum(self.model_id, vec, entry.faces, error, entry.notes)),
        ), binary=True)

    def _mark_root(self) -> None:
        # created only where nothing stands at the name (a planted link is left alone, never
        # written through), and never overwritten: a user's own .gitignore stays theirs
        if getattr(self, "_marked", False):
            return
        self._marked = True
        for name, text in (("CACHEDIR.TAG", "Signature: 8a477f597d28d172789f06886806bc55\n"
                                            "# dataset_checks embedding cache\n"), (".gitignore", "*\n")):
            try:
                create_new(self.root / name, text.encode("ascii"))
            except OSError:
                pass
