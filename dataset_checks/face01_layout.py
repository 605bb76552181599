"""FACE01's default project layout: one npKnown.npz at the root for `preset_face_images/`.

FACE01 keeps its known faces in ONE folder, `preset_face_images/`, holding many people, the
person given by the file-name prefix before the first `_` (`Audrey Hepburn_9.png`,
`安倍晋三_default.png`), and ONE `npKnown.npz` beside that folder, at the project root, whose
`name` array lists those file names. This tool needs one folder per person: read as it is,
`preset_face_images` would be one identity of many people (every pair of different people inside
it unseen) and the root npz ignored. The layout is recognised from listings alone
(`root_layout`, which the session turns into a usage error) and converted into a new dataset of
one folder per person:

    python -m dataset_checks.face01_layout SRC DST

SRC is never written: DST is built in a new folder beside it and renamed into place once
complete. Each person's folder holds their images (hard links where the file system allows,
else copies; FACE01's `same_face/`, `noFace/` and `multipleFaces/` subfolders keep their place)
and their own npKnown.npz: that person's `name` rows and vector rows, under the root file's key,
with its dtype and row shape. The root npz is read with allow_pickle=False (never unpickled).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .discover import FACE01_SIDE_FOLDERS, KNOWN_VECTOR_KEYS, display_name, is_image_name

ROOT_FILE = "npKnown.npz"
PRESET_FOLDER = "preset_face_images"
COMMAND = "python -m dataset_checks.face01_layout"
# subfolders FACE01 moves images into (its duplicate finder, no face, several faces): kept
# inside the person's folder, where the loader resolves the names the npz still lists
SUBFOLDERS = ("same_face", "noFace", "multipleFaces")
SHOWN_NAMES = 5  # names listed in one message; the rest are counted
NAME_ROOM = 120  # characters of one name from the npz in a message


def person_of(file_name: str) -> tuple[str, bool]:
    """The person a FACE01 file name belongs to and whether it had a `_` prefix: the text before
    the first `_`; a name without one (or starting with `_`) is its own person, its whole stem."""
    prefix, sep, _ = file_name.partition("_")
    if sep and prefix:
        return prefix, True
    return os.path.splitext(file_name)[0] or file_name, False


def _short(name: str) -> str:
    text = display_name(name)
    return text if len(text) <= NAME_ROOM else text[: NAME_ROOM - 1] + "…"


def _few(names: list[str]) -> str:
    shown = ", ".join(repr(_short(n)) for n in names[:SHOWN_NAMES])
    return shown + (f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else "")


def is_root_layout(root: Path) -> bool:
    """An npKnown.npz at `root` and a preset_face_images/ folder beside it (listings only)."""
    try:
        return (root / ROOT_FILE).is_file() and (root / PRESET_FOLDER).is_dir()
    except OSError:  # the session's own checks name an unreadable root
        return False


def root_layout(root: str | Path) -> str | None:
    """What to tell the user when `root` is FACE01's default project layout (an npKnown.npz at the
    root and a preset_face_images/ folder), or that layout's preset_face_images/ itself; None
    otherwise. Listings only: no file is opened."""
    root = Path(root)
    if not is_root_layout(root):
        if root.name == PRESET_FOLDER and is_root_layout(root.parent):
            message = root_layout(root.parent)
            return f"{display_name(str(root))} is the images folder of a FACE01 project; {message}"
        return None
    try:
        images = [e for e in os.listdir(root / PRESET_FOLDER) if is_image_name(e)]
    except OSError:
        images = None
    what = ""
    if images is not None:
        people = len({person_of(n)[0] for n in images})
        what = f" ({len(images)} image(s) of {people} people by file-name prefix)"
    shown_root = display_name(str(root))
    return (f"{shown_root} is FACE01's default project layout: one {ROOT_FILE} at the dataset root for the single "
            f"folder {PRESET_FOLDER}/{what}, which holds many people, the person being the file-name prefix "
            f"before the first '_'. Read as it is, {PRESET_FOLDER} would be ONE identity and the root "
            f"{ROOT_FILE} ignored, so nothing was checked. Convert it into one folder per person (the original "
            f"is not written): {COMMAND} {shlex.quote(shown_root)} NEW_FOLDER, then run with --dataset NEW_FOLDER")


class Refused(Exception):
    """The conversion cannot be done as asked; the message is for the user as is (exit 2)."""


@dataclass
class Converted:
    """What a conversion did, for its report."""

    faces: int = 0
    people: int = 0
    linked: int = 0
    copied: int = 0
    unlisted: list[str] = field(default_factory=list)  # images no npz row names (FACE01: no face found)
    missing: list[str] = field(default_factory=list)  # npz rows whose image is nowhere in the folder
    no_prefix: list[str] = field(default_factory=list)  # names without a `_` prefix: own folder each
    skipped: list[str] = field(default_factory=list)  # entries that are not images (left out)


def _read_root(path: Path) -> tuple[NDArray[Any], dict[str, NDArray[Any]]]:
    """The root npz's names and its vector arrays (every known key present), checked to agree."""
    shown = display_name(str(path))
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            vector_keys = [k for k in KNOWN_VECTOR_KEYS if k in keys]
            if "name" not in keys or not vector_keys:
                raise Refused(f"{shown}: expected FACE01's arrays 'name' and one of {', '.join(KNOWN_VECTOR_KEYS)}, "
                              f"found {_few(keys) or 'no array'}")
            names = npz["name"]
            vectors = {k: npz[k] for k in vector_keys}
    except ValueError as exc:  # allow_pickle=False refusing an object array, or a damaged array
        raise Refused(f"{shown}: cannot be read without unpickling or is damaged ({_short(str(exc))}); "
                      "dataset_checks never unpickles a file") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise Refused(f"{shown}: cannot be read: {_short(str(exc))}") from None
    if names.ndim != 1 or names.dtype.kind != "U":
        raise Refused(f"{shown}: 'name' must be a list of file names, found an array of dtype {names.dtype} and "
                      f"shape {names.shape}")
    if len(names) == 0:
        raise Refused(f"{shown} lists no face (FACE01 found no face in {PRESET_FOLDER}?): nothing to convert")
    for key, rows in vectors.items():
        if rows.ndim < 2 or len(rows) != len(names):
            raise Refused(f"{shown}: {len(names)} names but {key} holds {rows.shape[0] if rows.ndim else 0} "
                          f"vectors (shape {rows.shape}): the names and vectors do not pair up, nothing was converted")
    return names, vectors


def _bad_file_name(name: str) -> bool:
    try:
        os.fsencode(name)  # a lone surrogate no file system can name
    except UnicodeEncodeError:
        return True
    return not name or name in (".", "..") or "/" in name or "\0" in name


def _unusable_folder(person: str) -> bool:
    # discovery skips these names: a person there would vanish from the check
    return person.startswith(".") or person in FACE01_SIDE_FOLDERS or person in SUBFOLDERS


def _place(src: Path, dst: Path, done: Converted) -> None:
    """dst: a hard link to src where the file system allows, else a copy (SRC is only read)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst, follow_symlinks=True)
        done.linked += 1
    except OSError:  # another file system, no links allowed, too many links: a copy
        shutil.copyfile(src, dst)
        done.copied += 1


def _images(folder: Path, done: Converted) -> tuple[dict[str, Path], dict[str, list[tuple[str, Path]]]]:
    """The images of preset_face_images: top level by name, and those of FACE01's subfolders."""
    top: dict[str, Path] = {}
    sub: dict[str, list[tuple[str, Path]]] = {}
    with os.scandir(folder) as it:
        for entry in sorted(it, key=lambda e: e.name):
            if entry.name in SUBFOLDERS and entry.is_dir():
                with os.scandir(entry.path) as inner:
                    sub[entry.name] = sorted((e.name, Path(e.path)) for e in inner
                                             if is_image_name(e.name) and e.is_file())
            elif is_image_name(entry.name) and entry.is_file():
                top[entry.name] = Path(entry.path)
            elif not entry.name.startswith("."):
                done.skipped.append(entry.name)
    return top, sub


def convert(src: str | Path, dst: str | Path) -> Converted:
    """A new dataset at `dst`, one folder per person, from FACE01's root layout at `src`; raises
    `Refused` (nothing written) when it cannot be done as asked. `src` is only read."""
    src, dst = Path(src), Path(dst)
    if not is_root_layout(src):
        raise Refused(f"{display_name(str(src))} is not FACE01's default project layout: expected "
                      f"{ROOT_FILE} and the folder {PRESET_FOLDER}/ in it")
    real_src, real_dst = Path(os.path.realpath(src)), Path(os.path.realpath(dst))
    if real_dst == real_src or real_src in real_dst.parents:
        raise Refused(f"{display_name(str(dst))} is inside {display_name(str(src))}, which is never written: "
                      "choose a folder outside it")
    if os.path.lexists(dst):
        if not dst.is_dir() or dst.is_symlink() or any(os.scandir(dst)):
            raise Refused(f"{display_name(str(dst))} already exists and is not an empty folder: give a new folder")
    names, vectors = _read_root(src / ROOT_FILE)
    done = Converted(faces=len(names))
    bad = [str(n) for n in names if _bad_file_name(str(n))]
    if bad:
        raise Refused(f"{display_name(str(src / ROOT_FILE))}: {len(bad)} name(s) are not plain file names "
                      f"({_few(bad)}): nothing was converted")
    rows_of: dict[str, list[int]] = {}
    for row, name in enumerate(names.tolist()):
        person, prefixed = person_of(name)
        rows_of.setdefault(person, []).append(row)
        if not prefixed:
            done.no_prefix.append(name)
    top, sub = _images(src / PRESET_FOLDER, done)
    listed = set(names.tolist())
    done.unlisted = [n for n in top if n not in listed]
    for name in done.unlisted:
        rows_of.setdefault(person_of(name)[0], [])
    for folder_images in sub.values():
        for name, _ in folder_images:
            rows_of.setdefault(person_of(name)[0], [])
    unusable = sorted(p for p in rows_of if _unusable_folder(p))
    if unusable:
        raise Refused(f"person name(s) {_few(unusable)} would make folders that are never read as identities "
                      "(hidden, or a FACE01 subfolder's name): rename those images; nothing was converted")
    placed = set(top) | {n for images in sub.values() for n, _ in images}
    done.missing = [n for n in dict.fromkeys(names.tolist()) if n not in placed]
    done.people = len(rows_of)
    _build(src, dst, names, vectors, rows_of, top, sub, done)
    return done


def _build(src: Path, dst: Path, names: NDArray[Any], vectors: dict[str, NDArray[Any]],
           rows_of: dict[str, list[int]], top: dict[str, Path], sub: dict[str, list[tuple[str, Path]]],
           done: Converted) -> None:
    """Everything written into a new folder beside `dst`, renamed to `dst` once complete: a failed
    conversion leaves no half-built dataset."""
    parent = dst.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dst.name}.converting-", dir=parent))
    try:
        for person, rows in rows_of.items():
            folder = work / person
            folder.mkdir()
            if rows:
                index = np.asarray(rows, dtype=np.intp)
                # the root file's own arrays, row-selected: same key, dtype and row shape
                np.savez(folder / ROOT_FILE, allow_pickle=False, name=names[index],
                         **{k: v[index] for k, v in vectors.items()})
        for name, path in top.items():
            _place(path, work / person_of(name)[0] / name, done)
        for subfolder, images in sub.items():
            for name, path in images:
                _place(path, work / person_of(name)[0] / subfolder / name, done)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(work, 0o777 & ~mask)  # mkdtemp's folder is private; the dataset is an ordinary folder
        os.replace(work, dst)  # onto a missing or empty folder only (checked before)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def report(src: Path, dst: Path, done: Converted) -> list[str]:
    """What the conversion did, in a few lines (names listed up to SHOWN_NAMES, then counted)."""
    lines = [f"converted {display_name(str(src))} into {display_name(str(dst))}: {done.faces} face(s) of "
             f"{done.people} people, one folder each ({done.linked} image(s) hard-linked, {done.copied} copied)"]
    if done.no_prefix:
        lines.append(f"{len(done.no_prefix)} name(s) without a '_' prefix, each in a folder named by its whole file "
                     f"name stem: {_few(done.no_prefix)}")
    if done.unlisted:
        lines.append(f"{len(done.unlisted)} image(s) not in {ROOT_FILE} (FACE01 found no face?), filed by prefix "
                     f"with no vector: {_few(done.unlisted)}")
    if done.missing:
        lines.append(f"{len(done.missing)} name(s) in {ROOT_FILE} with no image in {PRESET_FOLDER}/ (vectors kept): "
                     f"{_few(done.missing)}")
    if done.skipped:
        what = "entry of" if len(done.skipped) == 1 else "entries of"
        lines.append(f"{len(done.skipped)} {what} {PRESET_FOLDER}/ not an image, left out: {_few(done.skipped)}")
    lines.append(f"check it with: dataset-checks --dataset {shlex.quote(display_name(str(dst)))}")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {COMMAND} SRC DST\n  SRC: a FACE01 project folder ({ROOT_FILE} and {PRESET_FOLDER}/); "
              "DST: a new folder, written with one folder per person (SRC is never written)", file=sys.stderr)
        return 2
    src, dst = Path(argv[0]), Path(argv[1])
    try:
        done = convert(src, dst)
    except Refused as exc:
        print(f"{COMMAND}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = display_name(str(exc.filename)) if exc.filename is not None else display_name(str(dst))
        print(f"{COMMAND}: {where}: {exc.strerror or exc}; nothing was converted", file=sys.stderr)
        return 1
    print("\n".join(report(src, dst, done)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
