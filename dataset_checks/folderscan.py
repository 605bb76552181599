"""One listing of an identity folder: its embeddings file, its images, and what is wrong with them.

One `os.scandir` per folder replaces a stat per candidate file, and every OSError becomes a
Problem of that folder: a folder without permission, a file behind a dangling link, a file
whose link leads out of its identity folder (read, but announced).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

from .discover import display_name, inside, why
from .problems import Problem

FACE01_FILE = "npKnown.npz"
PLAIN_FILE = "embeddings.npz"
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


@dataclass
class FolderScan:
    embeddings: Path | None = None  # npKnown.npz first, else embeddings.npz
    images: list[Path] = field(default_factory=list)  # sorted by name
    problems: list[Problem] = field(default_factory=list)
    unreadable: bool = False  # the folder itself could not be listed: nothing else is known
    # (name, size, mtime_ns, inode) of the files read, when asked: what a dataset version is made of
    stamps: list[tuple] = field(default_factory=list)
    names: frozenset[str] = frozenset()  # every entry of the folder, whatever it is


def scan_folder(folder: Path, where: str, stamps: bool = False) -> FolderScan:
    """List `folder` once; `where` is its shown path relative to the dataset root (no slash).
    `stamps`: also stat every file that will be read (one syscall each)."""
    out = FolderScan()
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError as exc:
        out.problems.append(Problem(where + "/", f"cannot be read: {why(exc)}", code="unreadable"))
        out.unreadable = True
        return out
    out.names = frozenset(entry.name for entry in entries)
    real_folder: Path | None = None
    files = set()
    for entry in entries:
        name = entry.name
        wanted = name in (FACE01_FILE, PLAIN_FILE)
        image = not wanted and is_image_name(name)
        if not (wanted or image):
            continue
        file = f"{where}/{display_name(name)}"
        try:
            if entry.is_symlink():
                try:
                    os.stat(entry.path)
                except OSError as exc:
                    if exc.errno not in (errno.ENOENT, errno.ELOOP):
                        raise
                    target = os.readlink(entry.path)
                    out.problems.append(Problem(file, f"dangling symbolic link to {display_name(target)}: "
                                                      "storage not mounted?", code="dangling-link"))
                    continue
                if real_folder is None:
                    real_folder = Path(os.path.realpath(folder))
                real = Path(os.path.realpath(entry.path))
                if not inside(real, real_folder):
                    # Read anyway (datasets deduplicate with links), but never silently: the
                    # face may belong to another identity's folder.
                    out.problems.append(Problem(file, f"symbolic link to {display_name(str(real))}, outside "
                                                      "its identity folder; read", fatal=False, code="outside-folder"))
            if not entry.is_file():
                continue
        except OSError as exc:
            out.problems.append(Problem(file, f"cannot be read: {why(exc)}", code="unreadable"))
            continue
        if stamps:
            try:
                st = entry.stat()
                out.stamps.append((name, st.st_size, st.st_mtime_ns, st.st_ino))
            except OSError as exc:
                out.stamps.append((name, why(exc)))
        if wanted:
            files.add(name)
        else:
            out.images.append(folder / name)
    for name in (FACE01_FILE, PLAIN_FILE):
        if name in files:
            out.embeddings = folder / name
            break
    out.images.sort(key=lambda p: p.name)
    out.stamps.sort()
    out.problems.sort(key=lambda p: p.file)
    return out
