"""The registry of embeddings file formats, and what a format fills in: `FolderVectors`.

Low in the package so that folder listings (folderscan, discover) ask which file names are
embeddings files without importing the loader: the formats themselves (vectors.py's FACE01 and
plain readers, and any `embeddings_<format>.py` module) register here when they are imported,
which `readers()` does on first use. See vectors.py for adding a format.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from numpy.typing import NDArray

from .discover import Identity
from .problems import Problem


@dataclass
class FolderVectors:
    identity: Identity
    source: Path | None = None
    names: list[str] = field(default_factory=list)
    arrays: dict[str, NDArray[Any]] = field(default_factory=dict)  # vector key -> (N, D) numbers, N = len(names)
    problems: list[Problem] = field(default_factory=list)


class EmbeddingsReader(Protocol):
    """One on-disk embeddings format of an identity folder (see the module doc for adding one)."""

    @property
    def file_names(self) -> tuple[str, ...]:
        """The file names it claims in an identity folder, preferred first."""
        ...

    @property
    def vector_keys(self) -> tuple[str, ...]:
        """The vector arrays it may give, preferred first: with `key: auto`, keys found in as many
        folders are ranked by reader, then by this order."""
        ...

    def read(self, data: bytes, rel: str, vector_key: str | None, limit: int, out: FolderVectors) -> None:
        """Fill `out.names` and `out.arrays` from the whole file `data` (already read, within the
        memory bound), or add to `out.problems` why not; never raises for bad data.

        `rel`: the file as shown in problems; `vector_key`: the rules' key (None: auto); `limit`:
        the most bytes the file's arrays may take once read (check before allocating them).
        `accept_arrays` does the checks every format shares (1-D names, (N, D) numbers, N rows)."""
        ...


# Every format: the built-in two (appended below their reader), then those of the package's
# `embeddings_*` modules, imported on first use. Read by reader threads: replaced, never mutated.
_READERS: tuple[EmbeddingsReader, ...] = ()
_READERS_LOCK = threading.RLock()  # a discovered module registers itself while discovery holds it
_discovered = False
FORMAT_MODULES = "embeddings_"  # a module of this package whose name starts so is a format's


def register_reader(reader: EmbeddingsReader) -> None:
    """Add a format after those known (a format's module calls this when it is imported)."""
    global _READERS
    with _READERS_LOCK:
        _READERS = (*_READERS, reader)


def readers() -> tuple[EmbeddingsReader, ...]:
    """Every embeddings format, preferred first (a folder's file is the first one claimed)."""
    global _discovered
    if not _discovered:
        with _READERS_LOCK:
            if not _discovered:
                import importlib
                import pkgutil

                package = __name__.rpartition(".")[0]
                # the built-in readers first: vectors.py registers them when it is imported
                importlib.import_module(f"{package}.vectors")
                for module in sorted(m.name for m in pkgutil.iter_modules(importlib.import_module(package).__path__)):
                    if module.startswith(FORMAT_MODULES):
                        importlib.import_module(f"{package}.{module}")
                _discovered = True
    return _READERS


def embeddings_file_names() -> tuple[str, ...]:
    """The file names an identity folder's embeddings may have, preferred first."""
    return tuple(name for reader in readers() for name in reader.file_names)
