"""HTML pieces of report.html (pytest-html draws the page; these fill it). No pytest here.

* `summary_html`: the run at a glance, at the top of the page.
* `identity_html`: a failing identity's offending pairs, both faces side by side (thumbnails
  when the images are next to the embeddings, names otherwise), shown in its test row.
* `merge_html`: "Folders that may be one person", ranked as in merge_candidates.csv.
* `waived_html`: allowlisted and baselined findings, listed, not hidden.
* `summary_lines`: the dataset_checks section of the terminal output (plain text).
* `identity_brief`, `message_brief`: a failure as the terminal shows it (a line, a few lines).
* `row_order`: the key that puts report.html's result rows in evidence order.

Every name from the dataset is escaped. Thumbnails are capped per identity and per candidate,
so the report of a large dataset stays small.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from html import escape
from typing import Any, Iterable

from .discover import display_name
from .findings import Findings, Verdict
from .issues import Match
from .merge import NAME_EVIDENCE, MergeCandidate
from .patterns import Pattern, RankedIdentity, identity_patterns, merge_scores, rank_failing
from .text import own_text, terminal_line
from .thumbnails import Thumbnails

PAIRS_PER_IDENTITY = 4
# report.html at any size: the strongest failing identities show their pairs with thumbnails,
# the rest their best pair as text; above REPORT_PASSING_ROWS passing tests, those are counted
# in the summary, not listed row by row (every identity is in findings.json, every pair in
# findings.csv)
REPORT_DETAILED = 300
REPORT_PASSING_ROWS = 1000
MERGE_ROWS = 25
MERGE_THUMBS = 3
WAIVED_ROWS = 50

# Names are the dataset's own: Japanese, Chinese and Korean ones must not fall back to boxes or
# a mismatched glyph set (高 vs 髙 must stay distinguishable), so CJK fonts are in the list.
FONTS = ('Helvetica, Arial, "Noto Sans", "Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK KR", '
         '"Hiragino Sans", "Hiragino Kaku Gothic ProN", "Yu Gothic", "Meiryo", "Microsoft YaHei", '
         '"PingFang SC", "Source Han Sans", "WenQuanYi Micro Hei", sans-serif')

STYLE = """<style>
body, #results-table, .dc-summary, .dc-merge, .dc-waived, .extras-container { font-family: FONTS; }
.dc-pattern { margin: 4px 0; font-weight: bold; }
.dc-kind { display: inline-block; padding: 0 5px; border-radius: 3px; background: #fde7c6; font-size: 11px; }
.dc-next { color: #444; font-size: 12px; }
""".replace("FONTS", FONTS) + """
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
.dc-merge td.dc-side { width: 230px; }
.dc-thumbs figure { display: inline-block; margin: 0 4px 0 0; vertical-align: top; font-size: 11px; }
.dc-thumbs .dc-folder { width: auto; } .dc-folder img { display: inline-block; max-width: 64px; max-height: 64px; }
</style>"""


def _e(text: Any) -> str:
    """A name from the dataset (or a path), escaped as names are, then for HTML."""
    return escape(display_name(str(text)))


def _t(text: Any) -> str:
    """The tool's own wording (names in it already shown): for HTML, not escaped again as a name."""
    return escape(own_text(str(text)))


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
    from .engines.ranges import describe  # engines

    engine = describe(search.get("engine"))
    if engine:
        params.append(engine)
    index = meta.get("index") or "none"
    return index + (f" ({', '.join(params)})" if params else "")


def exactness_text(meta: dict[str, Any]) -> str:
    """What is proven about the search, in one clause: exact (and how), or not proven, with the
    sampled check's bound. The summary line and report.html say this, never a bare recall."""
    exact = meta.get("exact") or {}
    v = meta.get("verification") or {}
    sampled = v.get("exact_pairs")
    if exact.get("exact"):
        text = "exact: every cross-folder pair at or above the threshold is found (" + str(exact.get("how")) + ")"
        if sampled:
            missed = v.get("missed_count", len(v.get("missed") or ()))
            text += f"; sampled check: {v['found_pairs']} of {sampled} pairs of {v['queries']} faces"
            if missed:
                text += f", {missed} MISSED (a bug: please report it)"
        return text
    text = "NOT proven exact (" + str(exact.get("how") or "no search") + ")"
    if sampled:
        bound = v.get("recall_lower_bound")
        text += (f"; sampled recall {v['recall']:.4f}: {v['found_pairs']} of {sampled} pairs of {v['queries']} "
                 f"sampled faces")
        if bound is not None:
            text += (f"; recall >= {bound:.4f} at 95% confidence ({v.get('random_found_pairs')} of "
                     f"{v.get('random_exact_pairs')} pairs of the {v.get('random_queries')} random faces)")
        if v.get("missed_count") or v.get("missed"):
            text += f"; {v.get('missed_count', len(v['missed']))} missed pair(s) seen, added to the findings"
    return text


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
                 baseline: dict[str, Any] | None = None, passing_rows_left_out: int = 0) -> str:
    meta, c = findings.metadata, findings.counts()
    timings = meta.get("timings") or {}
    rows = [
        ("Dataset", _e(meta.get("dataset"))),
        ("Identities", f"{c['identities']} checked: <span class='dc-ok'>{c['passed']} passed</span>, "
                       f"<span class='dc-bad'>{c['failed']} failed</span> (a test of theirs fails; "
                       f"{c['not_checkable']} of the {c['failed']} not checkable{_t(failed_by_test(findings))})"),
        ("Faces (vectors)", f"{meta.get('vectors', 0)} &times; {meta.get('dim') or '?'}-d "
                            f"(<code>{_e(meta.get('embedding_key'))}</code>)"),
        ("Threshold", f"cosine &ge; {meta.get('threshold')}"
                      + (f" &mdash; {_t(meta['threshold_choice'])}" if isinstance(meta.get("threshold_choice"), str) else "")
                      + (f" ({len(meta['identity_thresholds'])} per-identity overrides)"
                         if meta.get("identity_thresholds") else "")),
        ("Findings", f"{c['findings']} cross-identity pair(s) fail, {c['waived']} waived"),
        ("Index", _t(search_description(meta))),
        ("Device", _t(str(meta.get("device") or "cpu").upper())),
        ("Time per stage", ", ".join(f"{_t(k)} {_seconds(v)}" for k, v in timings.items()) or "&ndash;"),
        ("Exact?", _t(exactness_text(meta))),
        ("Search recall (this run)", _t(verification_text(meta.get("verification")))),
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
        rows.append(("Error", _t(meta["error"])))
    if passing_rows_left_out:
        rows.append(("Rows", f"{passing_rows_left_out:,} passing tests are counted, not listed row by row (over "
                             f"{REPORT_PASSING_ROWS:,}): the table lists every failing, not checkable or waived one, "
                             f"strongest evidence first; findings.json has every identity's status"))
    if c["failed"] > REPORT_DETAILED:
        rows.append(("Detail", f"the {REPORT_DETAILED} strongest failing identities show their pairs with "
                               "thumbnails; the others their best pair (findings.csv has every pair)"))
    files = list(files)
    if files:
        rows.append(("Files", "<br>".join(_e(f) for f in files)))
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f"{STYLE}<div class='dc-summary' id='dc-summary'><h3>dataset_checks run</h3><table>{body}</table></div>"


def _face(thumbs: Thumbnails | None, identity: str, file: str) -> str:
    uri = thumbs.data_uri(identity, file) if thumbs is not None else None
    img = f"<img src='{uri}' alt='{_e(file)}'>" if uri else "<div class='dc-noimg'>no image</div>"
    return f"<div class='dc-face'>{img}<div>{_e(identity)}/<br>{_e(file)}</div></div>"


def _pair(thumbs: Thumbnails | None, identity: str, m: Match) -> str:
    cls = "dc-pair dc-waived-pair" if m.waived else "dc-pair"
    waived = f"<div>waived: {_t(m.waived)}</div>" if m.waived else ""
    return (f"<div class='{cls}'><div class='dc-sim'>cosine {m.similarity:.4f}</div>{waived}"
            f"<div class='dc-faces'>{_face(thumbs, identity, m.file)}"
            f"{_face(thumbs, m.other_identity, m.other_file)}</div></div>")


def pattern_html(pattern: Pattern) -> str:
    return (f"<div class='dc-pattern'><span class='dc-kind'>{escape(pattern.label)}</span> "
            f"{escape(pattern.description)}</div><div class='dc-next'>Next step: {escape(pattern.next_step)}</div>")


def identity_html(verdict: Verdict, thumbs: Thumbnails | None, limit: int = PAIRS_PER_IDENTITY,
                  findings: Findings | None = None, candidates: Iterable[MergeCandidate] = (),
                  patterns: list[Pattern] | None = None, text_only: bool = False) -> str:
    """Offending pairs of a failing identity (thumbnails; `text_only`: one line each, the rows
    past report.html's REPORT_DETAILED strongest); waived pairs of any identity (names).

    With `findings` (and `candidates`) the pattern line knows the other folders' sizes and the
    merge scores; without, it still names the shape. `patterns`: the identity's patterns when
    already known (`rank_failing`), so that 4,000 failing identities do not each redo them."""
    name = verdict.identity.name
    parts = []
    failing = verdict.failing_matches
    if failing:
        if patterns is None:
            patterns = identity_patterns(verdict, findings, merge_scores(candidates))
        lines = "".join(pattern_html(p) for p in patterns[:3])
        if len(patterns) > 3:
            lines += f"<div>&hellip; and {len(patterns) - 3} more folder(s)</div>"
        shown = ("<ul>" + "".join(f"<li>{_t(m.line())}</li>" for m in failing[:limit]) + "</ul>" if text_only
                 else "".join(_pair(thumbs, name, m) for m in failing[:limit]))
        more = f"<p>&hellip; and {len(failing) - limit} more pair(s) in findings.csv</p>" if len(failing) > limit else ""
        parts.append(f"<div class='dc-identity'>{lines}<b>{len(failing)} pair(s) match another identity at cosine &ge; "
                     f"{verdict.threshold:g}</b><div class='dc-pairs'>{shown}</div>{more}</div>")
    waived = verdict.waived_matches
    if waived:
        items = "".join(f"<li>{_t(m.line())}</li>" for m in waived[:WAIVED_ROWS])
        parts.append(f"<div class='dc-identity-waived'><b>{len(waived)} waived pair(s)</b><ul>{items}</ul></div>")
    return "".join(parts)


def _side(thumbs: Thumbnails | None, identity: str, files: list[str], matching: int, faces: int) -> str:
    imgs = []
    for f in files:
        uri = thumbs.data_uri(identity, f) if thumbs is not None else None
        imgs.append(f"<img src='{uri}' alt='{_e(f)}' title='{_e(identity)}/{_e(f)}'>" if uri
                    else f"<span class='dc-noimg-name'>{_e(f)}</span>")
    return (f"<td class='dc-side'><div class='dc-thumbs'><b>{_e(identity)}</b><br>{matching} of {faces} faces "
            f"match<br>{' '.join(imgs)}</div></td>")


def merge_html(candidates: list[MergeCandidate], thumbs: Thumbnails | None, limit: int = MERGE_ROWS,
               per_side: int = MERGE_THUMBS) -> str:
    head = ("<tr><th>#</th><th>Folder A</th><th>Folder B</th><th>What it looks like</th>"
            "<th>Rank score (evidence + name bonus)</th><th>Evidence</th><th>Name bonus</th>"
            "<th>Score</th><th>Best cosine</th><th>Mean-vector cosine</th></tr>")
    rows = []
    for rank, c in enumerate(candidates[:limit], start=1):
        a_files = list(dict.fromkeys(f.file for f in c.examples))[:per_side]
        b_files = list(dict.fromkeys(f.other_file for f in c.examples))[:per_side]
        waived = f"<br><i>waived: {_t(c.waived)}</i>" if c.waived else ""
        p = c.pattern
        rows.append(
            f"<tr class='dc-candidate'><td>{rank}</td>"
            f"{_side(thumbs, c.identity, a_files, c.faces_matching, c.faces)}"
            f"{_side(thumbs, c.other_identity, b_files, c.other_faces_matching, c.other_faces)}"
            f"<td><span class='dc-kind'>{escape(p.label)}</span> {escape(p.description)}{waived}</td>"
            f"<td class='dc-rank-score'>{c.rank_evidence:.3f}</td><td>{c.evidence:.3f}</td>"
            f"<td>{c.name_bonus:.2f}</td><td>{c.score:.3f}</td><td>{c.best_similarity:.4f}</td>"
            f"<td>{c.mean_cosine:.3f}</td></tr>"
        )
    more = (f"<p>&hellip; {len(candidates) - limit} more in merge_candidates.csv</p>"
            if len(candidates) > limit else "")
    if not candidates:
        body = "<p>No two folders share a face at the threshold.</p>"
    else:
        body = (f"<p>Identity pairs with at least one matching face, sorted by the rank score = evidence + name "
                f"bonus ({NAME_EVIDENCE['reordered']:g} when the two folder names are one name folded or reordered, "
                f"{NAME_EVIDENCE['near']:g} when one contains the other or they are spelt nearly alike, else 0). "
                f"Evidence is the larger of the score "
                f"(2&middot;cos(A,B) &minus; r(A) &minus; r(B), the cosine of the two folders' mean vectors, centred "
                f"on the dataset mean, corrected for crowding; r: mean cosine to the 5 nearest other folders) and, "
                f"for a single photo that matches many faces of the other folder, 2q &minus; 1 with q the share of "
                f"that folder's faces it matches (shrunk for small folders).</p><table>{head}{''.join(rows)}</table>{more}")
    return f"<div class='dc-merge' id='dc-merge'><h3>Folders that may be one person</h3>{body}</div>"


def waived_html(findings: Findings, limit: int = WAIVED_ROWS) -> str:
    waived = findings.waived
    if not waived:
        return ""
    rows = "".join(
        f"<tr><td>{_e(f.identity)}/{_e(f.file)}</td><td>{_e(f.other_identity)}/{_e(f.other_file)}</td>"
        f"<td>{f.similarity:.4f}</td><td>{_t(f.waived or '')}</td></tr>"
        for f in waived[:limit]
    )
    more = f"<p>&hellip; and {len(waived) - limit} more in findings.json</p>" if len(waived) > limit else ""
    return (f"<div class='dc-waived' id='dc-waived'><h3>Waived findings ({len(waived)})</h3>"
            f"<p>Allowlisted in the rules or accepted in the baseline: reported, not failing.</p>"
            f"<table><tr><th>Face</th><th>Other face</th><th>Cosine</th><th>Why</th></tr>{rows}</table>{more}</div>")


# -- terminal ----------------------------------------------------------------------------------

TERMINAL_IDENTITIES = 10
TERMINAL_CANDIDATES = 5
TERMINAL_STEPS = 3


def threshold_text(meta: dict[str, Any]) -> str:
    """"cosine >= 0.95 (from --threshold)": the value and, when the run recorded it, its source."""
    text = f"cosine >= {meta.get('threshold')}" if meta.get("threshold") is not None else "cosine threshold unknown"
    choice = meta.get("threshold_choice")
    if isinstance(choice, dict):
        choice = choice.get("source") or choice.get("reason") or choice.get("how")
    if choice:
        text += f" ({choice})"
    if meta.get("identity_thresholds"):
        text += f", {len(meta['identity_thresholds'])} per-identity override(s)"
    return text


def failed_by_test(findings: Findings) -> str:
    """"; failing test_identity 26, test_names 12": how many identities each test family fails (an
    identity failing two families counts in both), from the same outcomes as the counts."""
    from collections import Counter

    by = Counter(t for o in findings.identity_outcomes().values() for t in o.failing)
    return ("; failing " + ", ".join(f"{t} {n}" for t, n in sorted(by.items(), key=lambda x: (-x[1], x[0])))
            if by else "")


def _failing_groups(ranked: list[RankedIdentity], limit: int) -> tuple[list[tuple[list[str], Pattern | None]], int]:
    """The first `limit` failing identities, those that fail through the same folder pair on one
    line (A and B fail for the same photo: one line, not two)."""
    groups: list[tuple[list[str], Pattern | None]] = []
    by_pair: dict[frozenset[str], int] = {}
    for r in ranked[:limit]:
        top = r.top
        key = frozenset((top.identity, top.other_identity)) if top else None
        if key is not None and key in by_pair:
            groups[by_pair[key]][0].append(r.verdict.identity.display)
            continue
        if key is not None:
            by_pair[key] = len(groups)
        groups.append(([r.verdict.identity.display], top))
    return groups, max(0, len(ranked) - limit)


def summary_lines(findings: Findings, candidates: list[MergeCandidate], files: Iterable[str] = (),
                  baseline: dict[str, Any] | None = None, limit: int = TERMINAL_IDENTITIES,
                  top_candidates: int = TERMINAL_CANDIDATES, ranked: list[RankedIdentity] | None = None) -> list[str]:
    """The dataset_checks section of the terminal output, meant to be printed last.

    Counts and threshold; failing identities strongest evidence first, each with its pattern
    line (identities failing through the same folder pair share a line); the top merge
    candidates; what to do next; the files written. Every name goes through display_name and
    every line through text.terminal_line (no control characters, bounded length)."""
    meta, c = findings.metadata, findings.counts()
    lines = [
        f"{c['failed']} of {c['identities']} identities fail ({c['passed']} passed; {c['not_checkable']} of the "
        f"{c['failed']} not checkable{failed_by_test(findings)}); {meta.get('vectors', 0)} faces; "
        f"{c['findings']} face pair(s) across folders"
        + (f", {c['waived']} waived (allowlist/baseline)" if c["waived"] else ""),
        f"threshold: {threshold_text(meta)}",
    ]
    if meta.get("error"):
        lines.append(f"error: {meta['error']}")
    search = f"search: {search_description(meta)} on {meta.get('device') or 'cpu'}; {exactness_text(meta)}"
    seconds = sum((meta.get("timings") or {}).values())
    lines.append(search + (f"; {seconds:.1f} s" if seconds else ""))
    if ranked is None:
        ranked = rank_failing(findings, candidates)
    if ranked:
        lines.append("failing identities, strongest evidence first:")
        groups, rest = _failing_groups(ranked, limit)
        for names, pattern in groups:
            what = f"{pattern.label}: {pattern.description}" if pattern else "input problems (see its test)"
            lines.append(f"  FAIL {', '.join(names)}: {what}")
        if rest:
            lines.append(f"  ... and {rest} more failing identities (report.html, findings.csv)")
    if candidates:
        lines.append(f"folders that may be one person ({len(candidates)}, highest rank score first; "
                     f"rank score = evidence + name bonus):")
        for k, cand in enumerate(candidates[:top_candidates], start=1):
            p = cand.pattern
            waived = f" (waived: {cand.waived})" if cand.waived else ""
            lines.append(f"  {k}. {display_name(cand.identity)} + {display_name(cand.other_identity)}: {p.label}, "
                         f"rank score {cand.rank_evidence:.3f} = evidence {cand.evidence:.3f} + name bonus "
                         f"{cand.name_bonus:.2f}, best cosine {cand.best_similarity:.4f}{waived}")
    if ranked:
        lines.append("next steps:")
        seen = set()
        for r in ranked:
            if r.top is None or frozenset((r.top.identity, r.top.other_identity)) in seen:
                continue
            seen.add(frozenset((r.top.identity, r.top.other_identity)))
            lines.append(f"  {r.top.fix}")
            if len(seen) == TERMINAL_STEPS:
                break
        lines.append("  different people who look alike: allowlist the pair under `allow:` in rules.yaml (with a reason)")
        lines.append("  accept today's findings and fail only on new ones: --baseline FILE --update-baseline")
    if baseline:
        if baseline.get("updated"):
            lines.append(f"baseline {baseline['path']}: rewritten with {baseline['entries']} accepted finding(s)")
        else:
            stale = (f"; {baseline['stale']} no longer found (--update-baseline drops them)"
                     if baseline.get("stale") else "")
            lines.append(f"baseline {baseline['path']}: {baseline['entries']} accepted finding(s) waived{stale}")
    lines += [f"wrote {f}" for f in files]
    return [terminal_line(line) for line in lines]


def identity_message(verdict: Verdict, findings: Findings | None = None,
                     candidates: Iterable[MergeCandidate] = (), pairs: int = 3,
                     patterns: list[Pattern] | None = None) -> str:
    """A compact failure message for a failing identity's test: one pattern line per other
    folder (at most 3) and its best few pairs, instead of up to 50 near-identical pair lines.
    `patterns`: as in `identity_html`."""
    name = verdict.identity.display
    failing = verdict.failing_matches
    if not failing:
        return verdict.message()
    if patterns is None:
        patterns = identity_patterns(verdict, findings, merge_scores(candidates))
    lines = [f"{name}: {len(failing)} face pair(s) with {len(patterns)} other folder(s) at cosine >= {verdict.threshold:g}"]
    for p in patterns[:3]:
        lines.append(f"  {p.label}: {p.description}")
        lines.append(f"    next: {p.next_step}")
    if len(patterns) > 3:
        lines.append(f"  ... and {len(patterns) - 3} more folder(s)")
    lines += ["  " + m.line() for m in failing[:pairs]]
    if len(failing) > pairs:
        lines.append(f"  ... and {len(failing) - pairs} more pair(s) (findings.csv, report.html)")
    rest = replace(verdict, matches=verdict.waived_matches).message()  # input problems, waived pairs
    return "\n".join(terminal_line(line, limit=1000) for line in [*lines, *filter(None, rest.split("\n"))])


# -- a failure in the terminal ----------------------------------------------------------------

BRIEF_FOLDERS = 2  # other folders a failing identity's terminal report names (the rest counted)
BRIEF_LINES = 3  # lines of any other failure message the terminal shows (the rest counted)


@dataclass(frozen=True)
class Brief:
    """A failure as the terminal shows it: `line` for pytest's short summary and --tb=line,
    `lines` for its failures section. The whole message is in report.html and junitxml."""

    line: str
    lines: tuple[str, ...]


def identity_brief(verdict: Verdict, patterns: list[Pattern]) -> Brief:
    """A failing identity in a few lines: the count, then per other folder (the strongest
    `BRIEF_FOLDERS`) its pattern and best pair, so the terminal of a run with thousands of
    failing identities stays readable; everything else is in report.html and the files.

    `patterns`: `identity_patterns` of the verdict (best evidence first)."""
    failing = verdict.failing_matches
    if not failing or not patterns:
        return message_brief(verdict.message())
    own = verdict.identity.name
    best: dict[str, Match] = {}
    for m in failing:  # highest similarity first
        best.setdefault(m.other_identity, m)

    def said(p: Pattern) -> str:
        other = p.other_identity if p.identity == own else p.identity
        more = f" (+{p.pairs - 1} more pair(s))" if p.pairs > 1 else ""
        return f"{p.label} with {display_name(other)}: {best[other].line()}{more}"

    name = verdict.identity.display
    line = f"{name}: {said(patterns[0])}"
    if len(patterns) > 1:
        line += f"; and {len(patterns) - 1} more folder(s)"
    lines = [f"{name}: {len(failing)} face pair(s) with {len(patterns)} other folder(s) at cosine >= {verdict.threshold:g}"]
    lines += ["  " + said(p) for p in patterns[:BRIEF_FOLDERS]]
    if len(patterns) > BRIEF_FOLDERS:
        lines.append(f"  ... and {len(patterns) - BRIEF_FOLDERS} more folder(s) (report.html, findings.csv)")
    problems = [p for p in verdict.problems if p not in verdict.problem_waivers]
    if problems:
        lines.append(f"  and {len(problems)} input problem(s): {problems[0]}" + (" ..." if len(problems) > 1 else ""))
    return Brief(terminal_line(line), tuple(terminal_line(x) for x in lines))


def message_brief(message: str, limit: int = BRIEF_LINES) -> Brief:
    """Any other failure message, cut to `limit` lines (each at most 300 characters); its line is
    the first one, with the second when the first only announces a list ("...: 2 issue(s):")."""
    lines = message.split("\n")
    line = lines[0]
    if line.endswith(":") and len(lines) > 1:
        line = f"{line} {lines[1].strip()}"
    shown = lines[:limit]
    if len(lines) > limit:
        shown.append(f"  ... and {len(lines) - limit} more line(s) (report.html)")
    return Brief(terminal_line(line), tuple(terminal_line(x) for x in shown))


# -- report.html result rows -------------------------------------------------------------------


def row_order(findings: Findings, candidates: Iterable[MergeCandidate] = (),
              ranked: list[RankedIdentity] | None = None) -> dict[str, tuple[str, str]]:
    """(sort key, label) per identity (by display name) for report.html's Evidence column:
    failing identities in evidence order, then not checkable, then passed with waived pairs,
    then passed; by name within a group. Keys compare as strings (pytest-html sorts cell text)."""
    out: dict[str, tuple[str, str]] = {}
    for k, r in enumerate(rank_failing(findings, candidates) if ranked is None else ranked):
        out[r.verdict.identity.display] = (f"0{k:07d}", f"#{k + 1} failing")
    rest = sorted((v for v in findings.verdicts.values() if v.identity.display not in out),
                  key=lambda v: v.identity.display)
    for k, v in enumerate(rest):
        if v.status == "error":
            out[v.identity.display] = (f"2{k:07d}", "not checkable")
        elif v.waived_matches:
            out[v.identity.display] = (f"3{k:07d}", f"passed, {len(v.waived_matches)} waived")
        else:
            out[v.identity.display] = (f"4{k:07d}", "passed")
    return out
