"""Outputs of the registered checks: `<check>.csv`, their findings.json entries, report sections.

Every name goes through `text.name_cell` (CSV) or `display_name` + html.escape (HTML).
"""

from __future__ import annotations

import csv
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .check_run import CheckResult, issue_line
from .discover import display_name
from .findings import _atomic_write
from .issues import Issue
from .text import csv_cell, name_cell, own_text

if TYPE_CHECKING:
    from .thumbnails import Thumbnails

REPORT_ROWS = 50
THUMBS = True


def csv_header(result: CheckResult) -> tuple[str, ...]:
    score = result.check.columns.get("score", "score")
    return ("identity", "file", "other_identity", "other_file", score, "severity", "detail", "waived")


def write_issues_csv(result: CheckResult, path: Path) -> Path:
    """One row per issue, ranked by evidence (the check's score), highest first."""

    def write(fh: TextIO) -> None:
        w = csv.writer(fh)
        w.writerow(csv_header(result))
        for i in result.issues:
            w.writerow((name_cell(i.identity), name_cell(i.file), name_cell(i.other_identity), name_cell(i.other_file),
                        f"{i.score:.6f}", i.severity, csv_cell(own_text(i.detail)), csv_cell(i.waived or "")))

    _atomic_write(path, write)
    return path


def issues_json(results: dict[str, CheckResult]) -> dict[str, Any]:
    out = {}
    for name, r in results.items():
        out[name] = {
            "title": r.check.title,
            "severity": r.settings.severity,
            "error": r.error,
            "seconds": round(r.seconds, 4),
            **({"summary": r.instance.summary()} if r.instance is not None and not r.error else {}),
            "issues": [
                {k: v for k, v in (("identity", display_name(i.identity)), ("file", display_name(i.file)),
                                   ("other_identity", display_name(i.other_identity)),
                                   ("other_file", display_name(i.other_file)), ("score", round(i.score, 6)),
                                   ("severity", i.severity), ("detail", own_text(i.detail)),
                                   ("waived", i.waived)) if v not in ("", None)}
                for i in r.issues
            ],
        }
    return out


FOLDER_FACES = 3  # a folder-level row (a names pair, a folder that is not one person): its first faces


def _face(thumbs: Thumbnails | None, identity: str, file: str, caption: bool = True) -> str:
    uri = thumbs.data_uri(identity, file) if (thumbs is not None and identity and file) else None
    if not uri:
        return ""
    img = f"<img src='{uri}' alt='{escape(display_name(file))}'>"
    if not caption:
        return img
    return (f"<figure class='dc-face'>{img}<figcaption>{escape(display_name(identity))}/<br>"
            f"{escape(display_name(file))}</figcaption></figure>")


def _folder_faces(thumbs: Thumbnails | None, identity: str, n: int = FOLDER_FACES) -> str:
    """A few faces of a folder, for a row about the folder as a whole (no file of its own)."""
    if thumbs is None or not identity:
        return ""
    from .embed.images import list_images

    shown = []
    for path in list_images(thumbs.root / identity):
        face = _face(thumbs, identity, path.name, caption=False)
        if face:
            shown.append(face)
        if len(shown) == n:
            break
    if not shown:
        return ""
    return (f"<figure class='dc-face dc-folder'>{''.join(shown)}<figcaption>{escape(display_name(identity))}/ "
            f"({len(shown)} face(s) of the folder)</figcaption></figure>")


def _faces(thumbs: Thumbnails | None, i: Issue, score: str) -> str:
    """An issue's thumbnails: its faces captioned folder/file (or a few faces of a folder the row is
    about as a whole), and for a pair of faces the score between them."""
    own = _face(thumbs, i.identity, i.file) if i.file else _folder_faces(thumbs, i.identity)
    other = ""
    if i.other_identity:
        other = (_face(thumbs, i.other_identity, i.other_file) if i.other_file
                 else _folder_faces(thumbs, i.other_identity))
    pair = f"<div class='dc-caption'>{score} {i.score:.4f}</div>" if own and other and i.file and i.other_file else ""
    return own + other + pair


def issues_html(result: CheckResult, thumbs: Thumbnails | None = None, limit: int = REPORT_ROWS) -> str:
    """A report section: the check's issues, strongest evidence first, with thumbnails."""
    c = result.check
    anchor = f"dc-check-{c.name}"
    head = f"<h3>{escape(c.title[:1].upper() + c.title[1:])} ({escape(c.name)})</h3><p>{escape(c.doc)}</p>"
    if result.error:
        return f"<div class='dc-check' id='{anchor}'>{head}<p class='dc-bad'>The check failed to run: " \
               f"{'<br>'.join(escape(own_text(line)) for line in result.error.splitlines())}</p></div>"
    extra = result.instance.report_html() if result.instance is not None else ""
    if not result.issues:
        return f"<div class='dc-check' id='{anchor}'>{head}{extra}<p>Nothing found.</p></div>"
    score = escape(c.columns.get("score", "score"))
    rows = []
    for i in result.issues[:limit]:
        faces = _faces(thumbs, i, score)
        status = escape(i.waived) if i.waived else escape(i.severity)
        rows.append(f"<tr class='dc-issue dc-{escape(i.severity)}'><td>{escape(display_name(i.identity))}</td>"
                    f"<td>{escape(issue_line(i, None))}</td><td>{i.score:.4f}</td><td>{status}</td>"
                    f"<td class='dc-thumbs'>{faces}</td></tr>")
    more = (f"<p>&hellip; {len(result.issues) - limit} more in {escape(c.name)}.csv</p>"
            if len(result.issues) > limit else "")
    table = (f"<table><tr><th>Identity</th><th>Issue</th><th>{score}</th><th>Severity</th><th>Faces</th></tr>"
             f"{''.join(rows)}</table>")
    return f"<div class='dc-check' id='{anchor}'>{head}{extra}{table}{more}</div>"
