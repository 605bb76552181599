"""The one writer of every file this tool writes: atomic, and never through a planted link.

Report and cache folders can come with a git checkout, so anyone who can commit may have put a
symbolic link (or a folder, a FIFO) at a name this tool writes: `reports/findings.csv ->
~/.bashrc`, `.dataset_checks_cache/.gitignore -> baseline.csv`. Every write goes through here:

* `atomic_write`: a new file with an unpredictable name (mkstemp: O_CREAT | O_EXCL |
  O_NOFOLLOW) in the target's folder, renamed over the target once complete; a target that is
  a symbolic link or not a regular file is refused (`UnsafeTarget`, naming it) and left as it is;
* `create_new`: a marker file created only when nothing stands at its name (O_EXCL), never
  overwritten;
* `open_lock`: a lock file opened with O_NOFOLLOW, refused unless it is a regular file;
* `private_temp` / `publish`: a temporary file for a writer that opens the path itself
  (pytest-html), at an unpredictable name beside the target, then renamed over it.

Folders are followed (a report folder may be a link to a bigger disk); names of files are not.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Literal, TextIO, overload

from .discover import display_name

LINK = "a symbolic link stands at this name; dataset_checks never writes through a link: remove it or choose another path"
NOT_FILE = "this is not a regular file (a folder, a FIFO or a device); dataset_checks only replaces regular files"


class UnsafeTarget(OSError):
    """A file this tool would write is a symbolic link or not a regular file (an OSError, so that
    every writer's error handling names it like a full disk)."""

    def __init__(self, path: Path, why: str):
        super().__init__(errno.ELOOP, why)
        self.path = Path(path)

    def __str__(self) -> str:
        return f"{display_name(str(self.path))}: {self.strerror}"


def target_problem(path: Path) -> str | None:
    """None when `path` may be written (absent, or a regular file), else why not."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None  # a file where a folder should be: the write itself says so
    if stat.S_ISLNK(st.st_mode):
        return LINK
    if not stat.S_ISREG(st.st_mode):
        return NOT_FILE
    return None


def check_target(path: Path) -> None:
    why = target_problem(path)
    if why:
        raise UnsafeTarget(path, why)


def _readable(fd_or_path: int | str | os.PathLike[str]) -> None:
    # mkstemp makes 0600 files; outputs are meant to be read by others (CI artifacts)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(fd_or_path, 0o666 & ~umask)


@overload
def atomic_write(path: Path, write: Callable[[BinaryIO], object], *, binary: Literal[True],
                 readable: bool = False, fsync: bool = False) -> Path: ...
@overload
def atomic_write(path: Path, write: Callable[[TextIO], object], *, binary: Literal[False] = False,
                 readable: bool = False, fsync: bool = False) -> Path: ...
def atomic_write(path: Path, write: Callable[[Any], object], *, binary: bool = False, readable: bool = False,
                 fsync: bool = False) -> Path:
    """Write `path` whole or not at all: `write(fh)` fills a new temporary file beside it (text
    mode: UTF-8, newlines as written), which is then renamed over it. Raises UnsafeTarget, and
    writes nothing, when `path` is a symbolic link or not a regular file."""
    path = Path(path)
    check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if readable:
            _readable(fd)
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="")) as fh:
            write(fh)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        check_target(path)  # again: the write may have taken minutes
        os.replace(tmp, path)  # renames over the name (a link raced in is replaced, not followed)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def create_new(path: Path, data: bytes) -> bool:
    """Create `path` holding `data` when nothing stands at its name; False (and nothing written)
    when something does, a link included."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return True


def open_lock(path: Path) -> int:
    """A read-write descriptor of the lock file `path` (created when missing), never through a
    link; raises UnsafeTarget when `path` is a link or not a regular file."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError:
        check_target(path)  # a link (ELOOP) or a folder (EISDIR): say which
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeTarget(path, NOT_FILE)
    return fd


def private_temp(path: Path) -> Path:
    """A new, empty, readable file at an unpredictable name beside `path`, for a writer that
    opens the path itself; `publish` renames it over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        _readable(fd)
    finally:
        os.close(fd)
    return Path(tmp)


def publish(tmp: Path, path: Path) -> Path:
    """Rename the finished `tmp` over `path`; raises UnsafeTarget (and removes `tmp`) when
    `path` is a link or not a regular file, or `tmp` is no longer the regular file made here."""
    try:
        if not stat.S_ISREG(os.lstat(tmp).st_mode):
            raise UnsafeTarget(tmp, NOT_FILE if not os.path.islink(tmp) else LINK)
        check_target(path)
        os.replace(tmp, path)
    except BaseException:
        if not os.path.isdir(tmp) or os.path.islink(tmp):
            Path(tmp).unlink(missing_ok=True)
        raise
    return Path(path)
