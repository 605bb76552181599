"""Find the identity folders of a dataset: the direct subfolders of its root."""

from __future__ import annotations

import errno
import os
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from .problems import Problem
from .text import shown

# the arrays of a FACE01 npKnown.npz that hold vectors (rules `vector_key`)
KNOWN_VECTOR_KEYS = ("efficientnetv2_arcface", "dlib")

# FACE01's subfolders of an identity folder: images with no face or several faces, and the
# near-identical photos its duplicate finder moves out (still listed in npKnown.npz: a listed name
# is looked up there too). Never identities, at the top level either. Most common first: the
# order notes and lookups use.
FACE01_SIDE_ORDER = ("same_face", "noFace", "multipleFaces")
FACE01_SIDE_FOLDERS = frozenset(FACE01_SIDE_ORDER)
# What an identity folder holds: an embeddings file (FACE01's first; every format's file names:
# formats.embeddings_file_names), images.
FACE01_FILE = "npKnown.npz"
PLAIN_FILE = "embeddings.npz"
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class Identity:
    """One identity folder. `name` is the folder name exactly as the file system gives it.

    `problems`: what discovery found wrong with the folder itself (its name, a dangling or
    outside link, no permission). A fatal one means nothing is read from the folder.
    `notes`: plain strings, older form of non-fatal problems (still honoured).
    """

    name: str
    path: Path
    notes: tuple[str, ...] = field(default=(), compare=False)
    problems: tuple[Problem, ...] = field(default=(), compare=False)

    @property
    def display(self) -> str:
        """The name as safe printable text: escapes as in dataset_checks.text (%XX)."""
        return display_name(self.name)

    @property
    def fatal(self) -> bool:
        """The folder cannot be read at all (dangling link, permission denied)."""
        return any(p.fatal for p in self.problems)


def display_name(name: str) -> str:
    """The name as safe, reversible text (dataset_checks.text.shown)."""
    return shown(name)


def why(exc: OSError) -> str:
    """An OSError as a short reason, lower case ("permission denied")."""
    text = exc.strerror or type(exc).__name__
    return text[:1].lower() + text[1:]


def _name_problems(name: str, nfc_clash: list[str]) -> list[Problem]:
    where = display_name(name) + "/"
    out = []
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        out.append(Problem(where, f"folder name is not valid UTF-8 (shown as {display_name(name)!r})",
                           fatal=False, code="name-not-utf8"))
    else:
        nfc = unicodedata.normalize("NFC", name)
        if nfc != name:
            out.append(Problem(where, "folder name is not in Unicode NFC form (decomposed, e.g. written on macOS)",
                               fatal=False, code="name-not-nfc"))
        if nfc_clash:
            others = ", ".join(repr(display_name(o)) for o in nfc_clash)
            out.append(Problem(where, f"folder name is the same text as {others} after Unicode normalisation",
                               fatal=False, code="name-clash"))
    return out


def inside(path: Path, folder: Path) -> bool:
    """Whether resolved `path` is `folder` or below it (both already resolved)."""
    return path == folder or folder in path.parents


def _link_problems(entry: os.DirEntry[str], real_root: Path) -> list[Problem] | None:
    """Problems of a symlinked entry; None when it is a link to something that is not a folder."""
    where = display_name(entry.name) + "/"
    try:
        target = os.readlink(entry.path)
    except OSError:
        target = "?"
    try:
        st = os.stat(entry.path)
    except FileNotFoundError:
        # A link whose storage is not mounted: skipping it would make the identity vanish and the
        # gate pass on a dataset it never saw.
        return [Problem(where, f"dangling symbolic link to {display_name(target)}: storage not mounted?",
                        code="dangling-link")]
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return [Problem(where, f"symbolic link loop ({display_name(target)})", code="dangling-link")]
        return [Problem(where, f"cannot be read: {why(exc)}", code="unreadable")]
    if not stat.S_ISDIR(st.st_mode):
        return None
    real = Path(os.path.realpath(entry.path))
    if not inside(real, real_root):
        return [Problem(where, f"symbolic link to {display_name(str(real))}, outside the dataset folder; followed",
                        fatal=False, code="outside-root")]
    return []


def discover_identities(root: str | Path) -> list[Identity]:
    """Identity folders under `root`, sorted by name; hidden folders are not identities.

    An entry that cannot be looked at (no permission, dangling symbolic link) is still an
    identity, carrying a fatal problem: it fails as not checkable instead of vanishing. Only the
    root itself being unreadable raises (OSError).

    Only directory entries are read: nothing in the dataset is opened for writing.
    """
    root = Path(root)
    real_root = Path(os.path.realpath(root))
    found: dict[str, list[Problem]] = {}
    with os.scandir(root) as it:
        for entry in it:
            if entry.name.startswith(".") or entry.name in FACE01_SIDE_FOLDERS:
                continue
            try:
                if entry.is_symlink():
                    probs = _link_problems(entry, real_root)
                    if probs is not None:
                        found[entry.name] = probs
                elif entry.is_dir(follow_symlinks=False):
                    found[entry.name] = []
            except OSError as exc:
                found[entry.name] = [Problem(display_name(entry.name) + "/", f"cannot be read: {why(exc)}",
                                             code="unreadable")]
    entries = sorted(found)
    by_nfc: dict[str, list[str]] = {}
    for name in entries:
        by_nfc.setdefault(unicodedata.normalize("NFC", name), []).append(name)
    identities = []
    for name in entries:
        clash = [o for o in by_nfc[unicodedata.normalize("NFC", name)] if o != name]
        problems = tuple(found[name]) + tuple(_name_problems(name, clash))
        identities.append(Identity(name=name, path=root / name, problems=problems))
    return identities
