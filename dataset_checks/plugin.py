"""pytest adapter: options, one parametrized test per identity, report hooks.

Everything of substance lives in `CheckSession`; the hooks here only translate. Loading the
plugin imports neither faiss nor numpy-heavy code, so unrelated pytest runs pay nothing.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path

import pytest

from .baseline import Baseline, BaselineError
from .rules import RulesError, load_rules
from .session import CheckSession, DatasetError

PACKAGE_DIR = Path(__file__).resolve().parent
SESSION = pytest.StashKey[CheckSession]()
ID_ESCAPING = "disable_test_id_escaping_and_forfeit_all_rights_to_community_support"


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [-1, 1], found {text!r}") from None
    if not math.isfinite(value) or not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [-1, 1], found {text!r}")
    return value


def _existing_dir(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"not an existing folder: {text!r}")
    return path.resolve()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dataset_checks", "face dataset checks (pytest dataset_checks)")
    group.addoption("--dataset", type=_existing_dir, metavar="PATH",
                    help="dataset root: one folder per identity (overrides rules.yaml)")
    group.addoption("--rules", metavar="PATH", help="rules file (default: rules.yaml in the rootdir)")
    group.addoption("--threshold", type=_threshold, metavar="FLOAT",
                    help="cosine similarity at or above which two faces of different identities fail "
                         "(overrides rules.yaml)")
    group.addoption("--report-dir", metavar="PATH", default=None,
                    help="where findings.csv, findings.json, merge_candidates.csv and report.html go "
                         "(default: reports/ in the rootdir)")
    group.addoption("--baseline", metavar="FILE", default=None,
                    help="accepted findings (findings.csv format): they are waived, only new findings fail")
    group.addoption("--update-baseline", action="store_true", default=False,
                    help="accept every current finding and write them to the --baseline file")


def _targets_us(args: list[str]) -> bool:
    for arg in args:
        if arg.startswith("-"):
            continue
        path = Path(arg.split("::")[0])
        try:
            resolved = path.resolve()
        except OSError:
            continue
        if resolved == PACKAGE_DIR or PACKAGE_DIR in resolved.parents:
            return True
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    # `pytest dataset_checks` must work from any folder, not only from a checkout of this project:
    # a bare `dataset_checks` that is not a path there names the installed package.
    # The already-parsed positional arguments are rewritten too: pytest loads the initial conftests
    # from them, and a conftest above the package found only later at collection is an error.
    namespace = getattr(early_config, "known_args_namespace", None)
    for argv in (args, getattr(namespace, "file_or_dir", None) or []):
        for k, arg in enumerate(argv):
            name = arg.split("::")[0]
            if name in ("dataset_checks", "dataset_checks/") and not Path(name).exists():
                argv[k] = str(PACKAGE_DIR) + arg[len(name):]


@pytest.hookimpl(tryfirst=True)  # before pytest-html's, which reads --html
def pytest_configure(config: pytest.Config) -> None:
    if not (_targets_us(config.args) or config.getoption("dataset") or config.getoption("rules")):
        return
    rules_path = config.getoption("rules")
    if rules_path is None:
        default = config.rootpath / "rules.yaml"
        rules_path = default if default.is_file() else None
    try:
        rules = load_rules(rules_path)
    except RulesError as exc:
        raise pytest.UsageError(str(exc)) from None
    if config.getoption("dataset") is not None:
        rules = replace(rules, dataset=config.getoption("dataset"))
    if config.getoption("threshold") is not None:
        rules = replace(rules, threshold=config.getoption("threshold"), threshold_auto=False)
    report_dir = config.getoption("report_dir")
    report_dir = Path(report_dir) if report_dir else config.rootpath / "reports"
    if config.getoption("update_baseline") and not config.getoption("baseline"):
        raise pytest.UsageError("--update-baseline needs --baseline FILE (the file to write)")
    baseline_path = config.getoption("baseline")
    try:
        baseline = Baseline.load(Path(baseline_path), missing_ok=config.getoption("update_baseline")) \
            if baseline_path else None
    except BaselineError as exc:
        raise pytest.UsageError(str(exc)) from None
    session = CheckSession(rules, report_dir=report_dir, baseline=baseline,
                           update_baseline=config.getoption("update_baseline"))
    if hasattr(config.option, "htmlpath"):  # pytest-html is installed (a dependency; -p no:html turns it off)
        if not config.option.htmlpath:
            config.option.htmlpath = str(report_dir / "report.html")
            config.option.self_contained_html = True
        session.html_path = Path(config.option.htmlpath).expanduser()
    try:
        session.identities()
    except DatasetError as exc:
        raise pytest.UsageError(str(exc)) from None
    session.cache_root = config.rootpath  # .dataset_checks_cache/ goes there unless rules.yaml says otherwise
    config.stash[SESSION] = session
    # Test ids are the folder names exactly: 高橋 and 髙橋 must read as themselves, not \u escapes.
    config._inicache[ID_ESCAPING] = True


@pytest.hookimpl(tryfirst=True)  # before pytest's own unconfigure, which runs a full gc.collect
def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION, None)
    if session is not None:
        session.close()


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # The dataset may live inside the rootdir; its folders are data, never test files.
    session = config.stash.get(SESSION, None)
    if session is not None and not session.is_demo:
        root = session.root
        if collection_path == root or root in collection_path.parents:
            return True
    return None


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    session = config.stash.get(SESSION, None)
    return session.header_lines() if session is not None else None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "identity" not in metafunc.fixturenames or not metafunc.definition.path.is_relative_to(PACKAGE_DIR):
        return
    session = metafunc.config.stash.get(SESSION, None)
    identities = session.identities() if session is not None else []
    if metafunc.function.__name__ == "test_faces_detected":  # only folders whose images are embedded
        identities = session.image_identities() if session is not None else []
    metafunc.parametrize("identity", [i.name for i in identities], ids=[i.display for i in identities])


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj) -> list | None:
    # A dataset without image folders has no test_faces_detected at all: not an "empty
    # parameter set" skip, not a deselected item.
    if name != "test_faces_detected" or not collector.path.is_relative_to(PACKAGE_DIR):
        return None
    session = collector.config.stash.get(SESSION, None)
    if session is None or not session.image_identities():
        return []
    return None


@pytest.fixture(scope="session")
def dataset_checks_session(request: pytest.FixtureRequest) -> CheckSession:
    session = request.config.stash.get(SESSION, None)
    if session is None:
        pytest.skip("dataset_checks is not configured for this run (run `pytest dataset_checks`)")
    # The one search runs here, once per session; with capture suspended its progress bars reach
    # the terminal instead of the first test's captured output.
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            session.findings()
    else:
        session.findings()
    return session


def pytest_sessionfinish(session: pytest.Session) -> None:
    check = session.config.stash.get(SESSION, None)
    if check is not None:
        check.write_reports()


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    check = config.stash.get(SESSION, None)
    if check is None or not check.written:
        return
    terminalreporter.section("dataset_checks")
    for line in check.summary_lines():
        terminalreporter.write_line(line)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    check = item.config.stash.get(SESSION, None)
    spec = getattr(item, "callspec", None)
    if check is not None and report.when == "call" and spec is not None and "identity" in spec.params:
        html = check.identity_html(spec.params["identity"])
        if html:
            report.extras = [*getattr(report, "extras", []), {"name": "pairs", "format_type": "html",
                             "content": html, "mime_type": None, "extension": None}]
    return report


@pytest.hookimpl(optionalhook=True)
def pytest_html_report_title(report) -> None:
    if SESSION in report.config.stash:
        report.title = "dataset_checks report"


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_summary(prefix: list, summary: list, postfix: list, session: pytest.Session) -> None:
    check = session.config.stash.get(SESSION, None)
    if check is not None:
        prefix.append(check.summary_html())
        postfix.extend(check.sections_html())


# -- report.html result table: evidence order, no Duration column, escaped test ids -------------
# (appended hooks; they only act in a dataset_checks run)

_ROW_ORDER = pytest.StashKey[dict]()
_HTML_CONFIG: list[pytest.Config] = []  # the config of the run whose report pytest-html is building


@pytest.hookimpl(tryfirst=True)  # before pytest-html builds the header
def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    _HTML_CONFIG[:] = [config] if SESSION in config.stash else []
    if SESSION not in config.stash or config.pluginmanager.getplugin("html") is None:  # -p no:html
        return
    try:
        if config.getini("initial_sort") != "result":  # the user chose a sort
            return
        from pytest_html.report_data import ReportData
    except (ValueError, KeyError, ImportError):
        return

    # Rows open in evidence order (the Evidence column) unless the user chose a sort in the ini.
    for plugin in config.pluginmanager.get_plugins():
        data = getattr(plugin, "_report", None)
        if isinstance(data, ReportData):
            data.set_data("initialSort", "dcorder")


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_table_header(cells: list) -> None:
    if not _HTML_CONFIG:
        return
    cells[:] = [c for c in cells if 'data-column-type="duration"' not in c]
    cells.insert(2, '<th class="sortable" data-column-type="dcorder">Evidence</th>')


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_table_row(report, cells: list) -> None:
    config = _HTML_CONFIG[0] if _HTML_CONFIG else None
    check = config.stash.get(SESSION, None) if config is not None else None
    if check is None:
        return
    from html import escape

    from .report import row_order

    # pytest-html 4.2 inserts this cell with innerHTML (pytest-html#1024): escape the id.
    test_id = report.nodeid + ("" if report.when == "call" else f"::{report.when}")
    cells[:] = [f'<td class="col-testId">{escape(test_id)}</td>' if 'class="col-testId"' in c else c
                for c in cells if 'class="col-duration"' not in c]
    key, label = "5", ""
    name = report.nodeid.rsplit("[", 1)[-1][:-1] if report.nodeid.endswith("]") else None
    if check._findings is not None and "::test_identity[" in report.nodeid and name is not None:
        if _ROW_ORDER not in config.stash:
            config.stash[_ROW_ORDER] = row_order(check._findings, check.merge_candidates())
        key, label = config.stash[_ROW_ORDER].get(name, ("5", ""))
    elif report.failed:
        key = "1"  # other failing tests (faces not detected) right after the ranked identities
    # pytest-html sorts by the cell's text: the hidden key first, then what a reader sees.
    cells.insert(2, f'<td class="col-dcorder"><span hidden>{key}</span>{escape(label)}</td>')
