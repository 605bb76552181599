"""CI ratchet: a baseline file of accepted findings and input problems.

`--baseline FILE`: whatever FILE lists is waived (reported as `baseline: FILE`, never failing);
only new findings and new problems fail. `--update-baseline`: the run accepts the current state
and rewrites FILE, so fixed findings drop out and the file only grows when someone accepts new
ones in review. A run that checked nothing never rewrites FILE, and a run that saw part of the
dataset keeps the rows of what it did not see as they were (`Coverage`). Allowlisted findings (rules.yaml `allow`) never go into the baseline: the rules
already cover them.

The file is a CSV, one accepted item per row, sorted by (check, key) so that a diff shows what
was accepted or fixed:

    check,identity,file,other_identity,other_file,similarity,code,detail
    cross_identity,Alice,Alice_0002.jpg,Bob,Bob_0003.jpg,0.981234,,
    input,Eve,Eve/npKnown.npz,,,,corrupt,corrupt or truncated archive (...)

Each check ratchets on its own key (`KEY_COLUMNS`): a pair on its two (identity, file) sides,
order-free; a problem on (identity, file, code). `similarity` and `detail` are for the reader.
Names are written with `text.name_cell` and read with `text.cell_name` (exact round trip). The
old findings.csv-format baseline (`identity,file,other_identity,other_file,similarity`) is read
as pair entries.

Under `threshold: auto` the file also records the threshold it was accepted at, in one row
right after the header (`THRESHOLD_ROW`; no check has that name): the value in `similarity`,
`auto` in `code`, and the settings it was calibrated under as JSON in `detail`:

    #threshold,,,,,0.9765,auto,"{""ceiling"": 0.98, ""centre"": false, ...}"

A gate run (`--baseline` without `--update-baseline`) under the same settings uses that value
instead of recalibrating (run.Pipeline._model_rules): removing an error never moves the gate.
A file without the row (written before, or under a fixed threshold) reads as before.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, TextIO, TypedDict

from .cutoff import ThresholdRecord
from .findings import CSV_HEADER, Findings, _atomic_write
from .issues import INPUT_CHECK, PAIR_CHECK, Issue, Key
from .text import cell_name, csv_cell, csv_uncell, file_text, name_cell, unshown

BASELINE_PREFIX = "baseline"
THRESHOLD_ROW = "#threshold"  # the recorded `threshold: auto` value and its settings (module docstring)
HEADER = ("check", "identity", "file", "other_identity", "other_file", "similarity", "code", "detail")
# Which columns key each check. A new check adds its line here and ratchets on its own key.
KEY_COLUMNS: dict[str, tuple[str, ...]] = {
    PAIR_CHECK: ("identity", "file", "other_identity", "other_file"),
    INPUT_CHECK: ("identity", "file", "code"),
}
NAME_COLUMNS = ("identity", "file", "other_identity", "other_file")
# the registered checks (dataset_checks.checks) key their issues by these columns
ISSUE_COLUMNS = ("identity", "file", "other_identity", "other_file")


def key_columns(check: str) -> tuple[str, ...] | None:
    """The columns that key `check`'s entries; None for a check this version does not know."""
    if check in KEY_COLUMNS:
        return KEY_COLUMNS[check]
    from .checks import all_checks

    return ISSUE_COLUMNS if any(c.name == check for c in all_checks()) else None
# csv refuses fields over 128 KB by default (a _csv.Error mid-read); no name comes near this, but
# a problem's detail may be long. Beyond it the file is not a baseline this tool wrote.
FIELD_LIMIT = 16 * 1024 * 1024


class BaselineMeta(TypedDict, total=False):
    """What a baseline file holds besides its entries (`read_entries`' `meta`)."""

    threshold: ThresholdRecord


class BaselineError(ValueError):
    """The baseline file cannot be used; the message is meant for the user as is."""


def _raw(name: str) -> str:
    """Undo display_name(): a shown name back to the file system's name."""
    return unshown(name)


@dataclass(frozen=True)
class Entry:
    """One accepted item: a check and its key, plus what a reader of the file wants to see."""

    check: str
    key: tuple[str, ...]
    similarity: float | None = None
    detail: str = ""

    @property
    def full_key(self) -> Key:
        return (self.check, self.key)

    @property
    def identities(self) -> tuple[str, ...]:
        """The identity folders the entry is about (a pair: both)."""
        cols = key_columns(self.check) or ISSUE_COLUMNS
        return tuple(v for c, v in zip(cols, self.key) if c in ("identity", "other_identity") and v)

    def row(self) -> tuple[str, ...]:
        cells = dict.fromkeys(HEADER, "")
        cells["check"] = self.check
        for col, value in zip(key_columns(self.check) or ISSUE_COLUMNS, self.key):
            cells[col] = name_cell(value) if col in NAME_COLUMNS else csv_cell(value)
        if self.similarity is not None:
            cells["similarity"] = f"{self.similarity:.6f}"
        cells["detail"] = csv_cell(self.detail)
        return tuple(cells[c] for c in HEADER)


def pair_entry(identity: str, file: str, other_identity: str, other_file: str,
               similarity: float | None = None) -> Entry:
    a, b = (identity, file), (other_identity, other_file)
    return Entry(PAIR_CHECK, (*min(a, b), *max(a, b)), similarity)


def current_entries(findings: Findings) -> list[Entry]:
    """What `--update-baseline` accepts from this run: every issue (the search's pairs, input
    problems, the registered checks') that fails or warns today and that the rules do not
    already allow."""
    out = []
    for issue in findings.issues:
        if issue.severity == "info" or not is_baselinable(issue):
            continue
        check, key = issue.baseline_key()
        out.append(Entry(check, key, None if check == INPUT_CHECK else issue.score, issue.detail))
    return out


class Baseline:
    def __init__(self, path: Path, entries: list[Entry] | None = None, threshold: ThresholdRecord | None = None):
        self.path = Path(path)
        self.entries = entries or []
        self.keys = {e.full_key for e in self.entries}
        # the `threshold: auto` value accepted with the file
        self.threshold = threshold

    @classmethod
    def load(cls, path: Path, missing_ok: bool = False, writable: bool = False) -> "Baseline":
        """Read FILE; `missing_ok`: a missing file is an empty baseline; `writable`: fail now,
        before the search, when FILE could not be written at the end (--update-baseline)."""
        path = Path(path)
        if writable:
            check_writable(path)
        if not path.exists():
            if missing_ok:
                return cls(path)
            raise BaselineError(f"baseline file not found: {path} (create it with --update-baseline)")
        if not path.is_file():
            raise BaselineError(f"baseline is not a file: {path}")
        meta: BaselineMeta = {}
        entries = read_entries(path, meta)
        return cls(path, entries, meta.get("threshold"))

    @property
    def reason(self) -> str:
        return f"{BASELINE_PREFIX}: {self.path.name}"

    def waivers(self) -> list[tuple[Key, str]]:
        return [(k, self.reason) for k in self.keys]

    @staticmethod
    def accept_all(findings: Findings, reason: str) -> list[tuple[Key, str]]:
        """Waivers that accept the whole current state (--update-baseline): pairs the rules do
        not already allow, and input problems."""
        return [(e.full_key, reason) for e in current_entries(findings)]

    def stale(self, findings: Findings) -> list[Entry]:
        """Accepted entries this run no longer finds (fixed, or below the threshold now); what
        --update-baseline would drop. An entry about something this run did not see is not stale."""
        current = {e.full_key for e in current_entries(findings)}
        seen = Coverage(findings)
        return [e for e in self.entries if e.full_key not in current and seen.saw(e)]

    def updated(self, findings: Findings) -> list[Entry]:
        """The new baseline: the current state, plus every earlier entry this run did not see
        (`Coverage`): a partial run never shrinks the baseline. A run that checked nothing (no
        identity folder, none checkable, the search failed) is refused: BaselineError."""
        if findings.error is not None:
            raise BaselineError(f"baseline {self.path} not updated: this run could not check everything "
                                f"({findings.error}); fix that and run --update-baseline again")
        if not any(v.checkable for v in findings.verdicts.values()):
            what = (f"none of the {len(findings.verdicts)} identity folder(s) could be checked" if findings.verdicts
                    else "the dataset holds no identity folder")
            raise BaselineError(f"baseline {self.path} not updated: this run checked nothing ({what}); "
                                f"the file is left as it was")
        seen = Coverage(findings)
        entries = {e.full_key: e for e in self.entries if not seen.saw(e)}
        entries.update((e.full_key, e) for e in current_entries(findings))
        return sorted(entries.values(), key=lambda e: e.full_key)

    def write(self, findings: Findings) -> Path:
        """Write the updated baseline atomically (a reader never sees half a file); raises
        BaselineError, and leaves the file as it was, when this run could not see everything."""
        entries = self.updated(findings)
        rows = [e.row() for e in entries]
        record = findings.metadata.get("threshold_record")  # threshold: auto (run.Pipeline)
        if record is not None:
            rows.insert(0, threshold_row(record))

        def write(fh: TextIO) -> None:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(HEADER)
            w.writerows(rows)

        try:
            _atomic_write(self.path, write)
        except OSError as exc:
            raise BaselineError(f"baseline {self.path} could not be written: {exc.strerror or exc}") from None
        self.entries = entries
        self.keys = {e.full_key for e in self.entries}
        self.threshold = None
        if record is not None:
            self.threshold = {"value": record["value"], "settings": record["settings"]}
        return self.path


class Coverage:
    """What one run evaluated. An accepted entry about anything else is kept by --update-baseline
    and never called stale:

    * an identity that could not be checked (no usable vectors: unreadable folder, broken or
      truncated embeddings file, dangling link, empty) -- every entry naming it, of every check;
    * a face that is not in this run's table of an identity checked only in part
      (`Findings.partial`: NaN rows, an unreadable image) -- pair and check entries naming it;
    * a registered check that did not run (off, failed, nothing to compare with) or that says it
      could not have found the entry (`Check.evaluated`: leakage against a dataset not given).

    Pairs and input problems are evaluated whenever the search ran (otherwise nothing is written).
    """

    def __init__(self, findings: Findings):
        self.unseen = {name for name, v in findings.verdicts.items() if not v.checkable}
        self.partial = findings.partial
        self.checks = findings.evaluated

    def saw(self, e: Entry) -> bool:
        if self.unseen.intersection(e.identities):
            return False
        if e.check not in KEY_COLUMNS:  # a registered check
            judge = (self.checks or {}).get(e.check)
            if judge is None or not judge(e.key):
                return False
        if e.check != INPUT_CHECK and self.partial:
            cols = dict(zip(key_columns(e.check) or ISSUE_COLUMNS, e.key))
            for ident, file in ((cols.get("identity"), cols.get("file")),
                                (cols.get("other_identity"), cols.get("other_file"))):
                if file and ident in self.partial and file not in self.partial[ident]:
                    return False
        return True


def is_baselinable(f: Issue) -> bool:
    return f.waived is None or f.waived.startswith(BASELINE_PREFIX)


def check_writable(path: Path) -> None:
    """Raise BaselineError unless a file can be created next to `path` (the atomic write's temp)."""
    from .discover import display_name
    from .safe_write import target_problem

    folder = path.parent
    why = target_problem(path)  # the writer refuses it too (safe_write): never write through a link
    if why:
        raise BaselineError(f"baseline {display_name(str(path))} cannot be updated: {why}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        raise BaselineError(f"baseline {path} cannot be written: {folder} is not a folder") from None
    except OSError as exc:
        raise BaselineError(f"baseline {path} cannot be written in the folder {folder}: "
                            f"{exc.strerror or exc}") from None


def threshold_row(record: ThresholdRecord) -> tuple[str, ...]:
    """The `THRESHOLD_ROW` of a recorded `threshold: auto` value and its settings."""
    cells = dict.fromkeys(HEADER, "")
    cells.update(check=THRESHOLD_ROW, similarity=repr(float(record["value"])), code="auto",
                 detail=csv_cell(json.dumps(record["settings"], sort_keys=True)))
    return tuple(cells[c] for c in HEADER)


def _threshold_record(path: Path, line: int, cells: dict[str, str]) -> ThresholdRecord:
    try:
        settings = json.loads(csv_uncell(cells["detail"]))
    except ValueError:
        settings = None
    if cells["code"] != "auto" or not isinstance(settings, dict):
        raise BaselineError(f"baseline {path}: line {line}: the {THRESHOLD_ROW} row is not one this tool wrote "
                            f"(expected code 'auto' and the settings as JSON); delete the row or run "
                            f"--update-baseline")
    value = _number(path, line, cells["similarity"])
    if not -1.0 <= value <= 1.0:  # NaN too
        raise BaselineError(f"baseline {path}: line {line}: the recorded threshold is not in [-1, 1]: "
                            f"{file_text(cells['similarity'], 100)!r}")
    return {"value": value, "settings": settings}


def read_entries(path: Path, meta: BaselineMeta | None = None) -> list[Entry]:
    """Every entry of a baseline file (this format or the old findings.csv format); `meta`, when
    given, gets the recorded threshold (`meta["threshold"]`, see THRESHOLD_ROW)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BaselineError(f"baseline {path} cannot be read: {exc.strerror or exc}") from None
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0  # Excel writes one
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = bom + exc.start  # a position in the file, for a hex editor
        raise BaselineError(f"baseline {path} is not UTF-8: byte {at} (0x{data[at]:02X}) "
                            f"cannot be decoded; save it as UTF-8") from None
    old_limit = csv.field_size_limit()
    csv.field_size_limit(FIELD_LIMIT)
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            return _parse(path, reader, meta)
        except csv.Error as exc:
            if "field larger than field limit" in str(exc):
                raise BaselineError(f"baseline {path}: line {reader.line_num}: a field is larger than "
                                    f"{FIELD_LIMIT // (1024 * 1024)} MB; this is not a baseline file") from None
            raise BaselineError(f"baseline {path}: line {reader.line_num}: {exc}") from None
    finally:
        csv.field_size_limit(old_limit)


def _parse(path: Path, reader: Iterable[list[str]], meta: BaselineMeta | None = None) -> list[Entry]:
    first = next(iter(reader), None)
    header = tuple(first or ())
    if header == CSV_HEADER:
        return _parse_old(path, reader)
    if header != HEADER:
        raise BaselineError(f"baseline {path}: expected the header {','.join(HEADER)} "
                            f"(or the old {','.join(CSV_HEADER)}), found {file_text(','.join(header), 200) or 'an empty file'}")
    out = []
    for line, row in _rows(path, reader, len(HEADER)):
        cells = dict(zip(HEADER, row))
        check = cells["check"]
        if check == THRESHOLD_ROW:  # not an entry: the threshold the file was accepted at
            record = _threshold_record(path, line, cells)
            if meta is not None:
                meta["threshold"] = record
            continue
        columns = key_columns(check)
        if columns is None:
            from .checks import all_checks

            known = sorted({*KEY_COLUMNS, *(c.name for c in all_checks())})
            raise BaselineError(f"baseline {path}: line {line}: unknown check {file_text(check, 100)!r} "
                                f"(known: {', '.join(known)})")
        key = tuple(cell_name(cells[c]) if c in NAME_COLUMNS else csv_uncell(cells[c]) for c in columns)
        sim = _number(path, line, cells["similarity"]) if cells["similarity"] else None
        if check == PAIR_CHECK:
            identity, file, other_identity, other_file = key  # KEY_COLUMNS[PAIR_CHECK]
            out.append(pair_entry(identity, file, other_identity, other_file, similarity=sim))
        else:
            out.append(Entry(check, key, sim, csv_uncell(cells["detail"])))
    return out


def _parse_old(path: Path, reader: Iterable[list[str]]) -> list[Entry]:
    # Old baselines hold shown names; a findings.csv copied as a baseline holds name_cell()s.
    # cell_name reads both, except an old name that itself began with ' (shown keeps it).
    out = []
    for line, row in _rows(path, reader, len(CSV_HEADER)):
        identity, file, other_identity, other_file = (cell_name(c) for c in row[:4])
        out.append(pair_entry(identity, file, other_identity, other_file, similarity=_number(path, line, row[4])))
    return out


def _rows(path: Path, reader: Iterable[list[str]], width: int) -> Iterator[tuple[int, list[str]]]:
    """(line number, row) of the data rows; blank lines skipped, a row of another width refused."""
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != width:
            raise BaselineError(f"baseline {path}: line {line}: expected {width} fields, found {len(row)}")
        yield line, row


def _number(path: Path, line: int, cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        raise BaselineError(f"baseline {path}: line {line}: similarity is not a number: {file_text(cell, 100)!r}") from None
