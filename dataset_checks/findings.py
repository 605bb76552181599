"""From search pairs to findings, per-identity verdicts and the findings files."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .discover import Identity, display_name
from .rules import Rules
from .search import SearchResult
from .vectors import Problem, VectorTable

CSV_HEADER = ("identity", "file", "other_identity", "other_file", "similarity")
MESSAGE_LINES = 50


@dataclass(frozen=True)
class Finding:
    """Two faces in different identity folders at or above the threshold (an unordered pair)."""

    identity: str
    file: str
    other_identity: str
    other_file: str
    similarity: float
    waived: str | None = None  # why this finding does not fail (allowlist, baseline)

    def row(self) -> tuple:
        return (
            display_name(self.identity),
            display_name(self.file),
            display_name(self.other_identity),
            display_name(self.other_file),
            f"{self.similarity:.6f}",
        )

    def key(self) -> tuple[str, str, str, str]:
        """Order-free identity of the pair, for baselines and deduplication."""
        a, b = (self.identity, self.file), (self.other_identity, self.other_file)
        return (*min(a, b), *max(a, b))

    def seen_from(self, identity: str) -> "Match":
        if identity == self.identity:
            return Match(self.file, self.other_identity, self.other_file, self.similarity, self.waived)
        return Match(self.other_file, self.identity, self.file, self.similarity, self.waived)


@dataclass(frozen=True)
class Match:
    """A finding as seen from one identity: its own file and the face it matches elsewhere."""

    file: str
    other_identity: str
    other_file: str
    similarity: float
    waived: str | None = None

    def line(self) -> str:
        text = f"{display_name(self.file)} ↔ {display_name(self.other_identity)}/{display_name(self.other_file)}  {self.similarity:.4f}"
        return f"{text}  (waived: {self.waived})" if self.waived else text


@dataclass
class Verdict:
    identity: Identity
    threshold: float
    vectors: int
    matches: list[Match] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    bad_input: str = "fail"
    error: str | None = None  # the whole run could not check anything (e.g. search failed)

    @property
    def failing_matches(self) -> list[Match]:
        return [m for m in self.matches if m.waived is None]

    @property
    def waived_matches(self) -> list[Match]:
        return [m for m in self.matches if m.waived is not None]

    @property
    def fatal_problems(self) -> list[Problem]:
        return [p for p in self.problems if p.fatal]

    @property
    def checkable(self) -> bool:
        return self.error is None and self.vectors > 0

    @property
    def status(self) -> str:
        """'fail' (matches another identity), 'error' (could not be checked), 'pass'."""
        if any(m.waived is None for m in self.matches):
            return "fail"
        if not self.checkable:
            return "error"
        if self.fatal_problems and self.bad_input == "fail":
            return "error"
        return "pass"

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def message(self) -> str:
        lines = []
        name = self.identity.display
        if self.error:
            lines.append(f"{name}: not checked: {self.error}")
        elif self.vectors == 0:
            lines.append(f"{name}: not checked: no usable embeddings")
        failing = self.failing_matches
        if failing:
            lines.append(
                f"{name}: {len(failing)} face pair(s) match another identity at cosine >= {self.threshold:g}:"
            )
            lines += ["  " + m.line() for m in failing[:MESSAGE_LINES]]
            if len(failing) > MESSAGE_LINES:
                lines.append(f"  ... and {len(failing) - MESSAGE_LINES} more (see findings.csv)")
        if self.problems:
            checked = f"{self.vectors} face(s) checked" if self.vectors else "nothing checked"
            lines.append(f"{name}: {len(self.problems)} input problem(s) ({checked}):")
            lines += ["  " + str(p) for p in self.problems]
        if self.waived_matches:
            lines.append(f"{name}: {len(self.waived_matches)} waived pair(s):")
            lines += ["  " + m.line() for m in self.waived_matches[:MESSAGE_LINES]]
        return "\n".join(lines)


@dataclass
class Findings:
    """Everything one run found: pairs, per-identity verdicts, and run metadata."""

    pairs: list[Finding]
    verdicts: dict[str, Verdict]
    metadata: dict[str, Any]

    @property
    def active(self) -> list[Finding]:
        return [f for f in self.pairs if f.waived is None]

    @property
    def waived(self) -> list[Finding]:
        return [f for f in self.pairs if f.waived is not None]

    def counts(self) -> dict[str, int]:
        statuses = [v.status for v in self.verdicts.values()]
        return {
            "identities": len(statuses),
            "passed": statuses.count("pass"),
            "failed": statuses.count("fail"),
            "not_checkable": statuses.count("error"),
            "findings": len(self.active),
            "waived": len(self.waived),
        }


def build_findings(
    table: VectorTable,
    result: SearchResult | None,
    rules: Rules,
    metadata: dict[str, Any] | None = None,
    waive: Iterable[tuple[tuple[str, str, str, str], str]] = (),
    error: str | None = None,
) -> Findings:
    """Turn search pairs into findings and one verdict per identity.

    A pair counts against an identity when its similarity reaches *that identity's* threshold
    (per-identity overrides); it is a finding when it counts against at least one side.
    """
    waivers = dict(waive)
    names = [ident.name for ident in table.identities]
    verdicts = {
        ident.name: Verdict(
            identity=ident,
            threshold=rules.threshold_for(ident.name),
            vectors=int(table.counts[k]),
            problems=list(table.problems.get(k, [])),
            bad_input=rules.bad_input,
            error=error,
        )
        for k, ident in enumerate(table.identities)
    }
    pairs: list[Finding] = []
    if result is not None:
        files = table.files
        thresholds = [rules.threshold_for(n) for n in names]
        allowed_cache: dict[tuple[int, int], str | None] = {}
        owner_i = table.identity_of[result.i].tolist()
        owner_j = table.identity_of[result.j].tolist()
        for i, j, oi, oj, s in zip(result.i.tolist(), result.j.tolist(), owner_i, owner_j, result.sim.tolist()):
            hits_i, hits_j = s >= thresholds[oi], s >= thresholds[oj]
            if not (hits_i or hits_j):
                continue
            a, b, fa, fb = names[oi], names[oj], files[i], files[j]
            if (a, fa) > (b, fb):
                a, b, fa, fb, hits_i, hits_j = b, a, fb, fa, hits_j, hits_i
            pair_key = (oi, oj) if oi < oj else (oj, oi)
            if pair_key not in allowed_cache:
                allowed = rules.allowed(a, b)
                allowed_cache[pair_key] = f"allowlisted: {allowed.reason}" if allowed else None
            reason = allowed_cache[pair_key]
            finding = Finding(a, fa, b, fb, s)
            if reason is None and waivers:
                reason = waivers.get(finding.key())
            if reason:
                finding = Finding(a, fa, b, fb, s, reason)
            pairs.append(finding)
            if hits_i:
                verdicts[a].matches.append(finding.seen_from(a))
            if hits_j:
                verdicts[b].matches.append(finding.seen_from(b))
    pairs.sort(key=lambda f: (-f.similarity, f.identity, f.file, f.other_identity, f.other_file))
    for v in verdicts.values():
        v.matches.sort(key=lambda m: (-m.similarity, m.file, m.other_identity, m.other_file))
    return Findings(pairs=pairs, verdicts=verdicts, metadata=dict(metadata or {}))


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    # mkstemp creates 0600 files; report files are meant to be read by others (CI artifacts).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_csv(findings: Findings, path: Path) -> Path:
    def write(fh):
        w = csv.writer(fh)
        w.writerow(CSV_HEADER)
        w.writerows(f.row() for f in findings.active)

    _atomic_write(path, write)
    return path


def _finding_json(f: Finding) -> dict:
    d = dict(zip(CSV_HEADER, f.row()))
    d["similarity"] = round(f.similarity, 6)
    if f.waived:
        d["waived"] = f.waived
    return d


def write_json(findings: Findings, path: Path) -> Path:
    doc = {
        **findings.metadata,
        "counts": findings.counts(),
        "findings": [_finding_json(f) for f in findings.active],
        "waived": [_finding_json(f) for f in findings.waived],
        "identities": {
            v.identity.display: {
                "status": v.status,
                "vectors": v.vectors,
                "threshold": v.threshold,
                "matches": len(v.failing_matches),
                "problems": [str(p) for p in v.problems],
            }
            for v in findings.verdicts.values()
        },
    }
    _atomic_write(path, lambda fh: _dump_lines(doc, fh))
    return path


def _dump_lines(doc: dict, fh) -> None:
    """JSON with one top-level key, and one finding or identity, per line.

    Readable in a diff or a pager, and it uses json's C encoder line by line: `indent=` falls
    back to the pure-Python encoder (1.1 s for 40k findings on the benchmark; this is ~0.15 s)."""
    enc = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "), default=str)
    fh.write("{")
    for n, (key, value) in enumerate(doc.items()):
        fh.write(("," if n else "") + "\n " + enc.encode(key) + ": ")
        if isinstance(value, list) and value:
            fh.write("[\n  " + ",\n  ".join(enc.encode(v) for v in value) + "\n ]")
        elif isinstance(value, dict) and value and key == "identities":
            fh.write("{\n  " + ",\n  ".join(f"{enc.encode(k)}: {enc.encode(v)}" for k, v in value.items()) + "\n }")
        else:
            fh.write(enc.encode(value))
    fh.write("\n}\n")


def read_csv(path: Path) -> list[Finding]:
    """Read a findings.csv (or a baseline written as one)."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(header) != CSV_HEADER:
            raise ValueError(f"{path}: expected the header {','.join(CSV_HEADER)}, found {header!r}")
        out = []
        for line, row in enumerate(reader, start=2):
            if len(row) != len(CSV_HEADER):
                raise ValueError(f"{path}: line {line}: expected {len(CSV_HEADER)} fields, found {len(row)}")
            try:
                sim = float(row[4])
            except ValueError:
                raise ValueError(f"{path}: line {line}: similarity is not a number: {row[4]!r}") from None
            out.append(Finding(row[0], row[1], row[2], row[3], sim))
        return out
