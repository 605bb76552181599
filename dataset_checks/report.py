"""HTML pieces of report.html (pytest-html draws the page; these fill it). No pytest here.

* `summary_html`: the run at a glance, at the top of the page.
* `identity_html`: a failing identity's offending pairs, both faces side by side (thumbnails
  when the images are next to the embeddings, names otherwise), shown in its test row.
* `merge_html`: "Folders that may be one person", ranked as in merge_candidates.csv.
* `waived_html`: allowlisted and baselined findings, listed, not hidden.

Every name from the dataset is escaped. Thumbnails are capped per identity and per candidate,
so the report of a large dataset stays small.
"""

from __future__ import annotations

from html import escape
from typing import Any, Iterable

from .discover import display_name
from .findings import Findings, Match, Verdict
from .merge import MergeCandidate
from .thumbnails import Thumbnails

PAIRS_PER_IDENTITY = 4
MERGE_ROWS = 25
MERGE_THUMBS = 3
WAIVED_ROWS = 50

STYLE = """<style>
.dc-summary table, .dc-merge table, .dc-waived table { border-collapse: collapse; margin: 4px 0 12px; }
.dc-summary th, .dc-summary td, .dc-merge th, .dc-merge td, .dc-waived th, .dc-waived td {
  border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; font-size: 13px; }
.dc-summary th { background: #f3f3f3; width: 16em; }
.dc-pairs { display: flex; flex-wrap: wrap; gap: 10px; margin: 6px 0; }
.dc-pair { border: 1px solid #ccc; border-radius: 4px; padding: 4px; background: #fafafa; font-size: 12px; }
.dc-pair.dc-waived-pair { opacity: .6; }
.dc-faces { display: flex; gap: 4px; align-items: flex-start; }
.dc-face { width: 104px; overflow-wrap: anywhere; }
.dc-face img { display: block; max-width: 96px; max-height: 96px; }
.dc-noimg { display: flex; align-items: center; justify-content: center; width: 96px; height: 64px;
  background: #eee; color: #666; font-size: 11px; text-align: center; }
.dc-sim { font-weight: bold; }
.dc-ok { color: #2a7a2a; } .dc-bad { color: #b00020; }
.dc-merge .dc-thumbs img { max-width: 64px; max-height: 64px; margin-right: 2px; }
</style>"""


def _e(text: Any) -> str:
    return escape(display_name(str(text)))


def _seconds(v: float) -> str:
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


def search_description(meta: dict[str, Any]) -> str:
    search = meta.get("search") or {}
    params = [f"{k}={search[k]}" for k in ("nlist", "nprobe") if k in search]
    calib = search.get("calibration") or {}
    if calib.get("mode") == "calibrated":
        by = calib.get("recall_by_nprobe") or {}
        params.append(f"nprobe calibrated on {calib.get('sample_queries')} queries "
                      f"(recall {max(by.values()) if by else 1:.4f})")
    if search.get("scan") == "lists":
        params.append("scanned list by list")
    index = meta.get("index") or "none"
    return index + (f" ({', '.join(params)})" if params else "")


def verification_text(v: dict[str, Any] | None) -> str:
    if not v:
        return "not measured"
    if v.get("recall") is None:
        return (f"no cross-folder pair at the threshold among {v['queries']} sampled faces "
                f"(exact brute force over all vectors): nothing to miss")
    text = (f"{v['recall']:.4f}: {v['found_pairs']} of {v['exact_pairs']} cross-folder pairs of "
            f"{v['queries']} sampled faces ({v.get('random_queries', 0)} random, "
            f"{v.get('queries_from_findings', 0)} from findings) found, checked by exact brute force")
    return text + (f"; {v['extra']} unconfirmed" if v.get("extra") else "")


def summary_html(findings: Findings, candidates: list[MergeCandidate], files: Iterable[str] = (),
                 baseline: dict[str, Any] | None = None) -> str:
    meta, c = findings.metadata, findings.counts()
    timings = meta.get("timings") or {}
    rows = [
        ("Dataset", _e(meta.get("dataset"))),
        ("Identities", f"{c['identities']} checked: <span class='dc-ok'>{c['passed']} passed</span>, "
                       f"<span class='dc-bad'>{c['failed']} failed</span>, {c['not_checkable']} not checkable"),
        ("Faces (vectors)", f"{meta.get('vectors', 0)} &times; {meta.get('dim') or '?'}-d "
                            f"(<code>{_e(meta.get('embedding_key'))}</code>)"),
        ("Threshold", f"cosine &ge; {meta.get('threshold')}"
                      + (f" ({len(meta['identity_thresholds'])} per-identity overrides)"
                         if meta.get("identity_thresholds") else "")),
        ("Findings", f"{c['findings']} cross-identity pair(s) fail, {c['waived']} waived"),
        ("Index", _e(search_description(meta))),
        ("Device", _e(str(meta.get("device") or "cpu").upper())),
        ("Time per stage", ", ".join(f"{_e(k)} {_seconds(v)}" for k, v in timings.items()) or "&ndash;"),
        ("Search recall (this run)", _e(verification_text(meta.get("verification")))),
        ("Merge candidates", f"{len(candidates)} identity pair(s); see below and merge_candidates.csv"),
    ]
    if baseline:
        text = f"{_e(baseline['path'])}: {baseline['entries']} accepted finding(s)"
        if baseline.get("updated"):
            text += ", rewritten by --update-baseline"
        if baseline.get("stale"):
            text += f"; {baseline['stale']} no longer found (run --update-baseline to drop them)"
        rows.append(("Baseline", text))
    if meta.get("error"):
        rows.append(("Error", _e(meta["error"])))
    files = list(files)
    if files:
        rows.append(("Files", "<br>".join(_e(f) for f in files)))
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f"{STYLE}<div class='dc-summary' id='dc-summary'><h3>dataset_checks run</h3><table>{body}</table></div>"


def _face(thumbs: Thumbnails | None, identity: str, file: str) -> str:
    uri = thumbs.data_uri(identity, file) if thumbs is not None else None
    img = f"<img src='{uri}' alt='{_e(file)}'>" if uri else f"<div class='dc-noimg'>no image</div>"
    return f"<div class='dc-face'>{img}<div>{_e(identity)}/<br>{_e(file)}</div></div>"


def _pair(thumbs: Thumbnails | None, identity: str, m: Match) -> str:
    cls = "dc-pair dc-waived-pair" if m.waived else "dc-pair"
    waived = f"<div>waived: {_e(m.waived)}</div>" if m.waived else ""
    return (f"<div class='{cls}'><div class='dc-sim'>cosine {m.similarity:.4f}</div>{waived}"
            f"<div class='dc-faces'>{_face(thumbs, identity, m.file)}"
            f"{_face(thumbs, m.other_identity, m.other_file)}</div></div>")


def identity_html(verdict: Verdict, thumbs: Thumbnails | None, limit: int = PAIRS_PER_IDENTITY) -> str:
    """Offending pairs of a failing identity (thumbnails); waived pairs of any identity (names)."""
    name = verdict.identity.name
    parts = []
    failing = verdict.failing_matches
    if failing:
        shown = "".join(_pair(thumbs, name, m) for m in failing[:limit])
        more = f"<p>&hellip; and {len(failing) - limit} more pair(s) in findings.csv</p>" if len(failing) > limit else ""
        parts.append(f"<div class='dc-identity'><b>{len(failing)} pair(s) match another identity at cosine &ge; "
                     f"{verdict.threshold:g}</b><div class='dc-pairs'>{shown}</div>{more}</div>")
    waived = verdict.waived_matches
    if waived:
        items = "".join(f"<li>{_e(m.line())}</li>" for m in waived[:WAIVED_ROWS])
        parts.append(f"<div class='dc-identity-waived'><b>{len(waived)} waived pair(s)</b><ul>{items}</ul></div>")
    return "".join(parts)


def merge_html(candidates: list[MergeCandidate], thumbs: Thumbnails | None, limit: int = MERGE_ROWS,
               per_side: int = MERGE_THUMBS) -> str:
    head = ("<tr><th>#</th><th>Folders</th><th>Score</th><th>Faces of A matching B</th>"
            "<th>Faces of B matching A</th><th>Best cosine</th><th>Mean-vector cosine</th><th>Faces</th></tr>")
    rows = []
    for rank, c in enumerate(candidates[:limit], start=1):
        a_files = list(dict.fromkeys(f.file for f in c.examples))[:per_side]
        b_files = list(dict.fromkeys(f.other_file for f in c.examples))[:per_side]
        cells = []
        for ident, files in ((c.identity, a_files), (c.other_identity, b_files)):
            imgs = []
            for f in files:
                uri = thumbs.data_uri(ident, f) if thumbs is not None else None
                imgs.append(f"<img src='{uri}' alt='{_e(f)}' title='{_e(ident)}/{_e(f)}'>" if uri else _e(f))
            cells.append(f"<div class='dc-thumbs'><b>{_e(ident)}</b><br>{' '.join(imgs)}</div>")
        waived = f"<br><i>waived: {_e(c.waived)}</i>" if c.waived else ""
        rows.append(
            f"<tr class='dc-candidate'><td>{rank}</td><td>{_e(c.identity)}<br>+ {_e(c.other_identity)}{waived}</td>"
            f"<td>{c.score:.3f}</td><td>{c.faces_matching} of {c.faces}</td>"
            f"<td>{c.other_faces_matching} of {c.other_faces}</td><td>{c.best_similarity:.4f}</td>"
            f"<td>{c.mean_cosine:.3f}</td><td>{''.join(cells)}</td></tr>"
        )
    more = (f"<p>&hellip; {len(candidates) - limit} more in merge_candidates.csv</p>"
            if len(candidates) > limit else "")
    if not candidates:
        body = "<p>No two folders share a face at the threshold.</p>"
    else:
        body = (f"<p>Identity pairs with at least one matching face, ranked by the evidence that they are one "
                f"person: score = 2&middot;cos(A,B) &minus; r(A) &minus; r(B), the cosine of the two folders' mean "
                f"vectors (centred on the dataset mean) corrected for crowding (r: mean cosine to the 5 nearest "
                f"other folders).</p><table>{head}{''.join(rows)}</table>{more}")
    return f"<div class='dc-merge' id='dc-merge'><h3>Folders that may be one person</h3>{body}</div>"


def waived_html(findings: Findings, limit: int = WAIVED_ROWS) -> str:
    waived = findings.waived
    if not waived:
        return ""
    rows = "".join(
        f"<tr><td>{_e(f.identity)}/{_e(f.file)}</td><td>{_e(f.other_identity)}/{_e(f.other_file)}</td>"
        f"<td>{f.similarity:.4f}</td><td>{_e(f.waived)}</td></tr>"
        for f in waived[:limit]
    )
    more = f"<p>&hellip; and {len(waived) - limit} more in findings.json</p>" if len(waived) > limit else ""
    return (f"<div class='dc-waived' id='dc-waived'><h3>Waived findings ({len(waived)})</h3>"
            f"<p>Allowlisted in the rules or accepted in the baseline: reported, not failing.</p>"
            f"<table><tr><th>Face</th><th>Other face</th><th>Cosine</th><th>Why</th></tr>{rows}</table>{more}</div>")
