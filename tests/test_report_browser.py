"""report.html in a real browser: headless Chromium runs pytest-html's JavaScript, and the DOM it
leaves behind must show the summary, the failing identities with thumbnails and the merge
candidates. Skips (with the reason) where Chromium is not installed (.ci/run installs it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see test_plugin.py)
import pytest

from test_report import PKG, build

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")


def dump_dom(html: Path, profile: Path) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--virtual-time-budget=5000", "--dump-dom", html.resolve().as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_report_renders_in_chromium(pytester, tmp_path):
    dataset = build(pytester.path / "data")
    rec = pytester.inline_run(PKG, "-p", "no:cacheprovider", "--report-dir", "out", "--dataset", str(dataset),
                              "--threshold", "0.85")
    assert rec.ret == pytest.ExitCode.TESTS_FAILED
    dom = dump_dom(pytester.path / "out" / "report.html", tmp_path / "profile")
    from html.parser import HTMLParser

    class Rows(HTMLParser):
        """Collect the result rows that JavaScript built from the JSON blob, with their images."""

        def __init__(self):
            super().__init__()
            self.rows, self.current, self.in_results = {}, None, False

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "table" and a.get("id") == "results-table":
                self.in_results = True
            if self.in_results and tag == "tbody" and "results-table-row" in (a.get("class") or ""):
                self.current = a.get("id", "")
                self.rows[self.current] = {"class": a.get("class"), "imgs": 0}
            if tag == "img" and self.current and (a.get("src") or "").startswith("data:image/jpeg;base64,"):
                self.rows[self.current]["imgs"] += 1

    parser = Rows()
    parser.feed(dom)
    rows = {k.rsplit("[", 1)[-1].rstrip("]"): v for k, v in parser.rows.items() if "test_identity[" in k}
    assert len(rows) == 8, list(parser.rows)  # the table was rendered by the report's script
    failing = {k for k, v in rows.items() if "failed" in v["class"]}
    assert failing == {"Alice", "Bob", "Crowd", "Dana", "Dana_R", "Eve"}
    assert all(rows[k]["imgs"] >= 2 for k in failing)  # both faces of each shown pair
    assert rows["Carol"]["imgs"] == 0 and rows["Frank"]["imgs"] == 0
    order = list(rows)  # DOM order after pytest-html's script sorted the rows
    assert set(order[:6]) == failing and set(order[:2]) == {"Dana", "Dana_R"}  # evidence order
    table = dom[dom.index('id="results-table"'):]
    assert ">Duration<" not in table[: table.index("</thead>")] and ">Evidence<" in table
    assert 'id="dc-summary"' in dom and "Search recall (this run)" in dom and "6 failed" in dom
    merge = dom[dom.index('id="dc-merge"'):]
    assert "Folders that may be one person" in merge
    assert merge.index("Dana") < merge.index("Crowd")  # ranked
    assert merge[: merge.index("</table>")].count("data:image/jpeg;base64,") >= 6
