"""One listing of an identity folder: its embeddings file, its images, and what is wrong with them.

One `os.scandir` per folder replaces a stat per candidate file, and every OSError becomes a
Problem of that folder: a folder without permission, a file behind a dangling link, a file
whose link leads out of its identity folder (read, but announced).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .discover import FACE01_FILE as FACE01_FILE  # (these three: importable from here as before)
from .discover import IMAGE_EXTENSIONS as IMAGE_EXTENSIONS
from .discover import PLAIN_FILE as PLAIN_FILE
from .discover import FACE01_SIDE_FOLDERS, display_name, inside, why
from .discover import is_image_name as is_image_name  # (embed.images imports it from here)
from .formats import embeddings_file_names
from .problems import Problem


@dataclass
class FolderScan:
    embeddings: Path | None = None  # the first file name a format claims (formats.embeddings_file_names)
    images: list[Path] = field(default_factory=list)  # sorted by name
    problems: list[Problem] = field(default_factory=list)
    unreadable: bool = False  # the folder itself could not be listed: nothing else is known
    # (name, size, mtime_ns, ctime_ns, inode, device, zip_index or None) of the files read, when
    # asked: what a dataset version is made of
    stamps: list[tuple[str | int | None, ...]] = field(default_factory=list)
    names: frozenset[str] = frozenset()  # every entry of the folder, whatever it is
    # FACE01's subfolders present (same_face/, noFace/, multipleFaces/) -> the files in each: a
    # name npKnown.npz lists may have been moved there (discover.FACE01_SIDE_ORDER)
    side: dict[str, frozenset[str]] = field(default_factory=dict)


def _special_kind(entry: os.DirEntry[str]) -> str | None:
    """What an entry that is not a regular file is ("a FIFO (named pipe)", "a folder", ...),
    following a link; None when it cannot be told."""
    try:
        mode = entry.stat().st_mode
    except OSError:
        return None
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) else "an entry of an unknown kind"


def _side_files(entry: os.DirEntry[str]) -> frozenset[str] | None:
    """The files in a FACE01 subfolder of an identity folder (one listing, names only); None when
    it is not a folder of its own (a link is not followed: it could lead anywhere) or cannot be
    listed (the names it would resolve then stay "stale", which says enough)."""
    try:
        if not entry.is_dir(follow_symlinks=False):
            return None
        with os.scandir(entry.path) as it:
            return frozenset(e.name for e in it if e.is_file())
    except OSError:
        return None


TAIL = 4096  # bytes read from the end of an archive for zip_index (numpy's central directory fits)
MAX_INDEX = 1 << 20  # a central directory larger than this is not read: its last TAIL bytes count


def zip_index(path: str, size: int) -> str | None:
    """A digest of a zip archive's central directory, read from the end of the file: the CRC-32
    and size of every member as its writer computed them. So an archive rewritten in place with
    the same size, its mtime set back (utime), changes its listing all the same (hostile cache;
    the ctime says so too, but not on every file system). One small read per archive, the
    dataset's files are otherwise not read when their folder did not change; None when the file
    cannot be read (its folder is then read and says why)."""
    import hashlib
    import struct

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        tail = os.pread(fd, min(size, TAIL), max(0, size - TAIL))
        start = max(0, size - len(tail))
        data = tail
        at = tail.rfind(b"PK\x05\x06")
        if at >= 0 and at + 22 <= len(tail):
            offset = struct.unpack_from("<I", tail, at + 16)[0]
            if offset == 0xFFFFFFFF and at >= 20 and tail[at - 20 : at - 16] == b"PK\x06\x07":  # zip64
                record = os.pread(fd, 56, struct.unpack_from("<Q", tail, at - 12)[0])
                offset = struct.unpack_from("<Q", record, 48)[0] if record[:4] == b"PK\x06\x06" else start
            if start <= offset < size:
                data = tail[offset - start :]
            elif 0 <= offset < start and size - offset <= MAX_INDEX:
                data = os.pread(fd, size - offset, offset)
        return hashlib.sha256(data).hexdigest()[:32]
    except (OSError, struct.error):
        return None
    finally:
        os.close(fd)


def scan_folder(folder: Path, where: str, stamps: bool = False) -> FolderScan:
    """List `folder` once; `where` is its shown path relative to the dataset root (no slash).
    `stamps`: also stat every file that will be read (one syscall each)."""

    claimed = embeddings_file_names()
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
        wanted = name in claimed
        image = not wanted and is_image_name(name)
        if name in FACE01_SIDE_FOLDERS and not (wanted or image):
            files_there = _side_files(entry)
            if files_there is not None:
                out.side[name] = files_there
                if stamps:  # a face moved in or out changes what the file's names resolve to
                    out.stamps.extend((f"{name}/{f}",) for f in files_there)
            continue
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
                    if exc.errno == errno.ELOOP:  # a link to itself, a -> b -> a: nothing is missing
                        out.problems.append(Problem(file, f"symbolic link loop ({display_name(target)})",
                                                    code="dangling-link"))
                    else:
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
                kind = _special_kind(entry)
                if kind is not None and (wanted or kind != "a folder"):
                    # never opened (a FIFO would block the run), never skipped silently either; an
                    # embeddings file that is not a file leaves the folder without its vectors
                    out.problems.append(Problem(file, f"not a regular file: {kind}; not read", fatal=wanted,
                                                code="not-a-file"))
                continue
        except OSError as exc:
            out.problems.append(Problem(file, f"cannot be read: {why(exc)}", code="unreadable"))
            continue
        if stamps:
            try:
                st = entry.stat()
                # hostile cache: ctime (which utime cannot set back), inode and device beside size
                # and mtime; for the embeddings file also the archive's own checksums (zip_index)
                out.stamps.append((name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev,
                                   zip_index(entry.path, st.st_size) if wanted else None))
            except OSError as exc:
                out.stamps.append((name, why(exc)))
        if wanted:
            files.add(name)
        else:
            out.images.append(folder / name)
    for name in claimed:
        if name in files:
            out.embeddings = folder / name
            break
    out.images.sort(key=lambda p: p.name)
    if stamps:  # what is wrong is part of the dataset version too: a new broken link is a change
        # ("!problem" sorts apart from the names: only image and embeddings file names are stamped)
        out.stamps.extend(("!problem", p.file, p.code, p.message) for p in out.problems)
    out.stamps.sort()
    out.problems.sort(key=lambda p: p.file)
    return out


def why_no_identities(root: Path, what: str = "--dataset") -> str:
    """Why `root` gave no identity folder, in words (test_dataset's message; the leakage check's for
    an --against dataset): it cannot be listed, is empty (not mounted?), is one identity folder, or
    holds only files and hidden or side folders. `what`: the option that named it."""
    root = Path(root)
    shown_root = display_name(str(root))
    try:
        entries = sorted(os.listdir(root))
    except OSError as exc:
        return f"{shown_root} cannot be listed: {exc.strerror or exc}"
    claimed = embeddings_file_names()
    own = [e for e in entries if e in claimed or is_image_name(e)]
    if own:
        return (f"{shown_root} holds {display_name(own[0])} itself: it looks like ONE identity folder. {what} must "
                f"be the folder that holds one folder per identity (its parent, {display_name(str(root.parent))}?)")
    if not entries:
        return f"{shown_root} is empty: no identity folders (storage not mounted, or the wrong path?)"
    return (f"{shown_root} holds no identity folder ({len(entries)} entr{'y' if len(entries) == 1 else 'ies'}: "
            "files, hidden folders or FACE01 side folders only)")
