"""A failing identity in the terminal: a brief (the identity, each other folder's pattern and best
pair); the whole message in report.html, junitxml and `str(report.longrepr)`."""

from __future__ import annotations

import html as html_mod
import re
import xml.etree.ElementTree as ET

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see test_plugin.py)
import pytest

from dataset_checks.findings import Finding
from dataset_checks.report import BRIEF_FOLDERS, identity_brief, message_brief
from dataset_checks.patterns import rank_failing
from test_patterns import findings_of
from test_plugin import pair_sim, reference_rows
from test_report import PKG, build, report_tests

HEADER = re.compile(r"^_{3,} (test_\w+\[.*\]) _{3,}$")


@pytest.fixture
def dataset(pytester):
    return build(pytester.path / "data", images=False)


def _run(pytester, dataset, *args: str):
    return pytester.runpytest_inprocess(PKG, "-p", "no:cacheprovider", "--report-dir", "out",
                                        "--dataset", str(dataset), "--threshold", "0.85", *args)


def failures(out: str) -> list[str]:
    # the section ends where the next begins: the warnings summary (when a warning was shown;
    # which run of a process shows a once-per-process warning depends on the order of the tests)
    # or the short test summary
    start = out.index(" FAILURES =")
    end = min(i for i in (out.find(" warnings summary ", start), out.index(" short test summary info ")) if i >= 0)
    return out[start:end].splitlines()[1:-1]


def blocks(lines: list[str]) -> dict[str, list[str]]:
    """Failures section -> test id -> the lines under its header."""
    out: dict[str, list[str]] = {}
    current = None
    for line in lines:
        m = HEADER.match(line)
        if m:
            current = out.setdefault(m.group(1), [])
        elif current is not None:
            current.append(line)
    return out


def failing_identities(dataset) -> set[str]:
    rows = reference_rows(dataset, 0.85)
    return {r[0] for r in rows} | {r[2] for r in rows}


def eve_best(dataset) -> tuple[str, float]:
    """Eve's one face matches all 40 Crowd frames: the best Crowd frame and its cosine (brute force)."""
    rows = [r for r in reference_rows(dataset, 0.85) if {r[0], r[2]} == {"Crowd", "Eve"}]
    assert len(rows) == 40
    best = rows[0]
    return (best[1] if best[0] == "Crowd" else best[3]), best[4]


def test_failing_identity_is_brief_in_the_terminal(pytester, dataset):
    result = _run(pytester, dataset)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    got = blocks(failures(out))
    identities = {k[len("test_identity["):-1]: v for k, v in got.items() if k.startswith("test_identity[")}
    assert set(identities) == failing_identities(dataset)
    for name, lines in identities.items():
        assert lines[0].startswith(f"{name}: ") and " face pair(s) with " in lines[0], lines
        assert 2 <= len(lines) <= 2 + BRIEF_FOLDERS, lines  # the count, a line per other folder, "... and N more"
        assert sum("↔" in line for line in lines) <= BRIEF_FOLDERS
    crowd_file, sim = eve_best(dataset)
    assert identities["Eve"] == [
        "Eve: 40 face pair(s) with 1 other folder(s) at cosine >= 0.85",
        f"  misfiled photo with Crowd: Eve_0001.jpg ↔ Crowd/{crowd_file}  {sim:.4f} (+39 more pair(s))",
    ]
    bob_alice = pair_sim(dataset, "Alice", "Bob")
    assert f"  copies with Alice: Bob_0003.jpg ↔ Alice/Alice_0002.jpg  {bob_alice:.4f}" in identities["Bob"]


def test_report_html_row_holds_the_whole_message(pytester, dataset):
    result = _run(pytester, dataset)
    tests = report_tests((pytester.path / "out" / "report.html").read_text(encoding="utf-8"))
    eve = next(t for k, t in tests.items() if k.endswith("test_identity[Eve]"))
    log = html_mod.unescape(eve["log"])
    # more than the terminal's brief: the next step and the best pairs, the rest counted
    assert log.startswith("Eve: 40 face pair(s) with 1 other folder(s) at cosine >= 0.85")
    assert "next: move Eve/Eve_0001.jpg to Crowd" in log and "... and 37 more pair(s)" in log
    assert log.count("↔") == 3 and "Eve_0001.jpg ↔ Crowd/" not in "\n".join(blocks(failures(result.stdout.str()))
                                                                           ["test_identity[Eve]"][2:])
    passing = [t for k, t in tests.items() if t["result"] == "Passed"]
    assert passing and all(t["log"] == "" for t in passing)  # one line each, nothing under it
    assert all(t["extras"] == [] for k, t in tests.items() if t["result"] == "Passed" and "test_identity[" not in k)


def test_tb_line_gives_one_line_per_failing_identity(pytester, dataset):
    result = _run(pytester, dataset, "--tb=line", "-vv")  # -vv: the short summary's lines are not cut
    lines = failures(result.stdout.str())
    crowd_file, sim = eve_best(dataset)
    eve = f"Eve: misfiled photo with Crowd: Eve_0001.jpg ↔ Crowd/{crowd_file}  {sim:.4f} (+39 more pair(s))"
    assert eve in lines
    for name in failing_identities(dataset):
        assert sum(bool(re.match(rf"{name}: (copies|misfiled photo|many-to-many|different photos, one-to-one) with ", x)) for x in lines) == 1, name
    assert not any("test_identities.py:" in line for line in lines)  # the test's code line says nothing
    # the same line in pytest's short summary
    result.stdout.fnmatch_lines([f"FAILED *test_identity?Eve? - {eve}"])


def test_tb_long_gives_the_whole_message(pytester, dataset):
    result = _run(pytester, dataset, "--tb=long")
    eve = blocks(failures(result.stdout.str()))["test_identity[Eve]"]
    assert eve[0] == "Eve: 40 face pair(s) with 1 other folder(s) at cosine >= 0.85"
    assert any(line.startswith("    next: move Eve/Eve_0001.jpg to Crowd") for line in eve)
    assert "  ... and 37 more pair(s) (findings.csv, report.html)" in eve


def test_junitxml_has_the_brief_line_and_the_whole_message(pytester, dataset):
    _run(pytester, dataset, "--junitxml", "out/junit.xml")
    root = ET.parse(pytester.path / "out" / "junit.xml").getroot()
    case = next(c for c in root.iter("testcase") if c.get("name") == "test_identity[Eve]")
    failure = case.find("failure")
    assert failure.get("message").startswith("Eve: misfiled photo with Crowd: Eve_0001.jpg ↔ Crowd/")
    assert "next: move Eve/Eve_0001.jpg to Crowd" in failure.text and "... and 37 more pair(s)" in failure.text


TEARDOWN_PLUGIN = """
import pytest

@pytest.fixture(autouse=True)
def say_bye(request):
    yield
    if request.node.name == "test_identity[Eve]":
        print("bye from Eve's teardown")


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"passed setups/teardowns kept: {len(terminalreporter.stats.get('', []))}")
"""


def test_captured_teardown_output_still_shown_with_the_failure(pytester, dataset):
    # passed setups and teardowns that captured nothing leave pytest's lookup list; one that did stays
    pytester.makepyfile(bye_plugin=TEARDOWN_PLUGIN)
    pytester.syspathinsert()
    result = _run(pytester, dataset, "-p", "bye_plugin")
    got = blocks(failures(result.stdout.str()))
    eve = got["test_identity[Eve]"]
    assert any("Captured stdout teardown" in line for line in eve) and "bye from Eve's teardown" in eve
    assert not any("bye from" in line for k, v in got.items() if k != "test_identity[Eve]" for line in v)
    result.stdout.fnmatch_lines(["passed setups/teardowns kept: 1"])  # Eve's teardown, of 17 tests' 34
    # --durations still sees every phase
    result = _run(pytester, dataset, "--durations=0", "--durations-min=0", "-vv")
    assert "teardown" in result.stdout.str()[result.stdout.str().index("slowest durations"):]


def test_report_rows_without_the_media_viewer_unless_a_row_has_media(pytester, dataset):
    _run(pytester, dataset)
    html = (pytester.path / "out" / "report.html").read_text(encoding="utf-8")
    assert "<video" not in html and '<div class="media"></div>' in html
    # a plugin that adds an image to a row keeps pytest-html's viewer for it
    pytester.makepyfile(image_plugin="""
import pytest
from pytest_html import extras

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and item.name == "test_dataset":
        report.extras = [*getattr(report, "extras", []), extras.image("iVBORw0KGgo=", mime_type="image/png")]
""")
    pytester.syspathinsert()
    pytester.runpytest_inprocess(PKG, "-p", "no:cacheprovider", "--report-dir", "out2", "--dataset", str(dataset),
                                 "--threshold", "0.85", "-p", "image_plugin")
    assert "<video" in (pytester.path / "out2" / "report.html").read_text(encoding="utf-8")


# -- the brief itself (no pytest run) ----------------------------------------------------------


def test_identity_brief_names_strongest_folders_and_counts_the_rest():
    pairs = ([Finding("A", "a1.jpg", "B", "b1.jpg", 0.99)]
             + [Finding("A", f"a{k}.jpg", "C", f"c{k}.jpg", 0.95 - k * 1e-3) for k in range(2, 5)]
             + [Finding("A", "a9.jpg", "\x1b[31mD<b>", "d1.jpg", 0.91)])
    f = findings_of({"A": 9, "B": 3, "C": 5, "\x1b[31mD<b>": 2}, pairs)
    ranked = {r.verdict.identity.name: r for r in rank_failing(f)}
    brief = identity_brief(f.verdicts["A"], ranked["A"].patterns)
    assert brief.lines[0] == "A: 5 face pair(s) with 3 other folder(s) at cosine >= 0.9"
    assert len(brief.lines) == 1 + BRIEF_FOLDERS + 1 and brief.lines[-1].startswith("  ... and 1 more folder(s)")
    assert brief.line.endswith("; and 2 more folder(s)") and "↔" in brief.line
    assert "  different photos, one-to-one with C: a2.jpg ↔ C/c2.jpg  0.9480 (+2 more pair(s))" in brief.lines  # its best pair
    other = identity_brief(f.verdicts["\x1b[31mD<b>"], ranked["\x1b[31mD<b>"].patterns)
    text = "\n".join([other.line, *other.lines])
    assert "\x1b" not in text and "<b>" not in text and "%1B[31mD%3Cb%3E" in text


def test_message_brief_keeps_a_few_lines():
    brief = message_brief("X: 5 misfiled faces issue(s):\n  x1 ↔ Y/y1: far\n  x2\n  x3\n  ... and 2 more")
    assert brief.line == "X: 5 misfiled faces issue(s): x1 ↔ Y/y1: far"
    assert brief.lines == ("X: 5 misfiled faces issue(s):", "  x1 ↔ Y/y1: far", "  x2",
                           "  ... and 2 more line(s) (report.html)")
    assert message_brief("one line").lines == ("one line",)


def test_many_failing_tests_are_listed_in_our_section_not_one_entry_each(pytester, dataset, monkeypatch):
    # issue 23: thousands of failing identities made a 36,000-line terminal; over the budget
    # the terminal lists the strongest in one section, and every failing test stays a failure
    import dataset_checks.plugin as plugin

    monkeypatch.setattr(plugin, "TERMINAL_FAILURES", 2)
    result = _run(pytester, dataset, "-q", "--junitxml", "junit.xml")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert " FAILURES =" not in out and not any(line.startswith("FAILED ") for line in result.stdout.lines)
    capped = [line for line in result.stdout.lines if "failing tests (over 2): the strongest are listed below" in line]
    assert len(capped) == 1
    failing = failing_identities(dataset)
    assert "failing identities, strongest evidence first:" in out
    headline = [line for line in result.stdout.lines if " identities fail (" in line]
    assert len(headline) == 2 and headline[0] == headline[1]  # again at the end: in the log's last screen
    junit = ET.parse(pytester.path / "junit.xml").getroot()
    failed = {tc.get("name") for tc in junit.iter("testcase") if tc.find("failure") is not None}
    assert {f"test_identity[{name}]" for name in failing} <= failed  # every one is still a failing test
    # the user's own --tb wins: each failure listed again
    result = _run(pytester, dataset, "-q", "--tb=short")
    assert " FAILURES =" in result.stdout.str() and any(line.startswith("FAILED ") for line in result.stdout.lines)
    assert not any("failing tests (over 2)" in line for line in result.stdout.lines)


def test_few_failing_tests_keep_pytests_own_lines(pytester, dataset):
    result = _run(pytester, dataset, "-q")
    assert " FAILURES =" in result.stdout.str() and any(line.startswith("FAILED ") for line in result.stdout.lines)
    assert not any("the strongest are listed below" in line for line in result.stdout.lines)
