"""Names from the dataset as safe, reversible text: one form for test ids, terminal, CSV and HTML.

A folder or file name is hostile input: it may hold terminal escape sequences, HTML, bidi
overrides, bytes that are not UTF-8, backslash sequences that pytest-html feeds to
`unicode_escape`, or a leading `=` that a spreadsheet runs as a formula. Every output shows a
name through `shown()`:

* printable characters stay as they are (高橋 and 髙橋 read as themselves);
* `%`, `<`, `>`, `&`, `\\`, every non-printable character (controls, ESC, bidi marks, line
  breaks, tabs) and every byte that is not UTF-8 become `%XX` escapes of their bytes, as in URLs.

`unshown()` reverses it exactly, so a name written to a baseline or findings.csv and read back
is the file system's name, byte for byte. CSV cells also go through `csv_cell()` (a leading `'`
when the cell would start a spreadsheet formula) and `csv_uncell()` on the way back.
"""

from __future__ import annotations

import os
import re

_ALWAYS = frozenset("%<>&\\")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def _plain(ch: str) -> bool:
    return ch not in _ALWAYS and ch.isprintable() and not ("\ud800" <= ch <= "\udfff")


_SPECIAL = re.compile(r"[%<>&\\]")


def shown(name: str) -> str:
    """The name as safe printable text (see the module doc); `unshown` gives the name back."""
    # str.isprintable is False for controls, bidi marks and surrogates (non-UTF-8 bytes): one C
    # call for the common name instead of a Python call per character
    if name.isprintable() and _SPECIAL.search(name) is None:
        return name
    out = []
    for ch in name:
        if _plain(ch):
            out.append(ch)
        else:
            # os.fsencode turns surrogate-escaped bytes (non-UTF-8 names) back into those bytes
            try:
                raw = os.fsencode(ch)
            except UnicodeEncodeError:  # a lone surrogate no file system gives (only inside an npz)
                raw = ch.encode("utf-8", "surrogatepass")
            out.extend(f"%{b:02X}" for b in raw)
    return "".join(out)


def unshown(text: str) -> str:
    """Exact inverse of `shown` (text without escapes is returned as is)."""
    if "%" not in text:
        return text
    data = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(text):
        data += text[pos : m.start()].encode("utf-8", "surrogateescape")
        data.append(int(m.group(1), 16))
        pos = m.end()
    data += text[pos:].encode("utf-8", "surrogateescape")
    return os.fsdecode(bytes(data))


def csv_cell(text: str) -> str:
    """A text cell that no spreadsheet evaluates: a leading `'` before = + - @ tab CR (and `'`)."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_uncell(cell: str) -> str:
    """Inverse of `csv_cell`."""
    return cell[1:] if cell.startswith("'") else cell


def name_cell(name: str) -> str:
    """A dataset name as a CSV cell: shown, then formula-safe."""
    return csv_cell(shown(name))


def cell_name(cell: str) -> str:
    """Inverse of `name_cell`."""
    return unshown(csv_uncell(cell))


def terminal_line(text: str, limit: int = 300) -> str:
    """A line for the terminal: no control characters, at most `limit` characters."""
    text = "".join(ch if ch.isprintable() else f"%{ord(ch):02X}" if ord(ch) < 256 else "?" for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def file_text(value: object, limit: int = 300) -> str:
    """Text read from a file rather than written by the tool (npz member names, a dtype's field
    names, a reader's error quoting the archive, strings in a cache's json): shown as names are
    (`shown`), at most `limit` characters."""
    text = shown(str(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def own_text(text: str) -> str:
    """The tool's own wording (a check's detail, a problem's message), which holds names already
    shown: it is not a name, so it is not escaped again (`>=` stays `>=`, a shown `%25` stays
    `%25`); only characters that are not printable (controls, bidi marks) become `%XX`, as a
    last guard for text a check did not build through `shown`."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else shown(ch) for ch in text)
