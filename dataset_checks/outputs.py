"""Where a run may write, checked before it starts; one run per report folder at a time.

The dataset is read-only for this tool, whatever the cwd, rootdir, report dir or cache settings:
every output path is checked against the dataset root (symlinks resolved) before anything is
written, and folders that will receive files are probed for writability up front, so a run never
searches for minutes and then dies on a read-only folder or a file standing where a folder
should be.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

LOCK_NAME = ".dataset_checks.lock"


def resolved(path: Path) -> Path:
    """Absolute, symlinks resolved as far as the path exists (a missing tail stays as written)."""
    return Path(os.path.realpath(os.path.abspath(os.path.expanduser(str(path)))))


def is_inside(path: Path, root: Path) -> bool:
    """Whether `path` is `root` or lies under it, after resolving symlinks on both."""
    p, r = resolved(path), resolved(root)
    return p == r or r in p.parents


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dataset_checks"


def writable_dir_problem(folder: Path) -> str | None:
    """None when files can be created in `folder` (created if missing), else why not.

    Probes by creating and removing a temporary file: permission bits say nothing on read-only
    mounts, and root passes every access() check."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return f"{folder} is not a folder"
    except OSError as exc:
        return f"cannot create folder {folder}: {exc.strerror or exc}"
    if not folder.is_dir():
        return f"{folder} is not a folder"
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".dataset_checks_probe_")
    except OSError as exc:
        return f"cannot write into {folder}: {exc.strerror or exc}"
    os.close(fd)
    os.unlink(tmp)
    return None


class FolderLock:
    """An exclusive lock on a report folder for the life of one run.

    Two runs writing the same report folder would interleave their files (findings.csv of one,
    report.html of the other); the second run is refused instead. flock locks vanish with the
    process, so a killed run never leaves a stale lock behind."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, wait: bool = False) -> str | None:
        """None on success, else who holds the lock. `wait`: block until it is free. Raises
        safe_write.UnsafeTarget (an OSError naming it) when the lock file is a symbolic link or
        not a regular file: it is never opened through a link."""
        import fcntl

        from .safe_write import open_lock

        fd = open_lock(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "another process"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return f"in use by another dataset_checks run ({holder})"
            return f"cannot be locked: {exc.strerror or exc}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode("ascii"), 0)
        self._fd = fd
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
