"""Find the identity folders of a dataset: the direct subfolders of its root."""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from .text import shown

# FACE01 files images it could not use into these folders inside an identity folder.
FACE01_SIDE_FOLDERS = frozenset({"noFace", "multipleFaces"})


@dataclass(frozen=True)
class Identity:
    """One identity folder. `name` is the folder name exactly as the file system gives it."""

    name: str
    path: Path
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def display(self) -> str:
        """The name as safe printable text: escapes as in dataset_checks.text (%XX)."""
        return display_name(self.name)


def display_name(name: str) -> str:
    """The name as safe, reversible text (dataset_checks.text.shown)."""
    return shown(name)


def _name_notes(name: str, nfc_clash: list[str]) -> tuple[str, ...]:
    notes = []
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        notes.append(f"folder name is not valid UTF-8 (shown as {display_name(name)!r})")
    else:
        nfc = unicodedata.normalize("NFC", name)
        if nfc != name:
            notes.append("folder name is not in Unicode NFC form (decomposed, e.g. written on macOS)")
        if nfc_clash:
            others = ", ".join(repr(display_name(o)) for o in nfc_clash)
            notes.append(f"folder name is the same text as {others} after Unicode normalisation")
    return tuple(notes)


def discover_identities(root: str | Path) -> list[Identity]:
    """Identity folders under `root`, sorted by name; hidden folders are not identities.

    Only directory entries are read: nothing in the dataset is opened for writing.
    """
    root = Path(root)
    entries = []
    with os.scandir(root) as it:
        for entry in it:
            if entry.name.startswith(".") or entry.name in FACE01_SIDE_FOLDERS:
                continue
            try:
                if entry.is_dir():
                    entries.append(entry.name)
            except OSError:
                continue
    entries.sort()
    by_nfc: dict[str, list[str]] = {}
    for name in entries:
        try:
            key = unicodedata.normalize("NFC", name)
        except Exception:  # pragma: no cover - normalize accepts any str
            key = name
        by_nfc.setdefault(key, []).append(name)
    identities = []
    for name in entries:
        clash = [o for o in by_nfc.get(unicodedata.normalize("NFC", name), []) if o != name]
        identities.append(Identity(name=name, path=root / name, notes=_name_notes(name, clash)))
    return identities
