"""pytest adapter: options, one parametrized test per identity, report hooks.

Everything of substance lives in `CheckSession`; the hooks here only translate. Loading the
plugin imports neither faiss nor numpy-heavy code, so unrelated pytest runs pay nothing.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
from collections.abc import Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from .baseline import Baseline, BaselineError
from .discover import display_name
from .text import terminal_line
from .outputs import FolderLock, is_inside, writable_dir_problem
from .safe_write import LINK, UnsafeTarget, private_temp, publish, target_problem
from .rules import RulesError, load_rules
from .run import DatasetError
from .session import CheckSession

if TYPE_CHECKING:
    from .checks.base import Check

PACKAGE_DIR = Path(__file__).resolve().parent
SESSION = pytest.StashKey[CheckSession]()
OTHERS = None  # the identity parameter of a check family's item for every identity it did not flag
_SHOWN = pytest.StashKey[dict[str, str]]()  # folder name -> its test id (pytest_make_parametrize_id)


class _HtmlReportData(Protocol):
    """What this plugin uses of pytest-html's ReportData, the object its public
    pytest_html_report_title hook hands over (pytest-html ships no type hints)."""

    title: str

    @property
    def config(self) -> pytest.Config: ...

    @property
    def data(self) -> dict[str, Any]: ...

    def set_data(self, key: str, value: object) -> None: ...

    # its count of each outcome: setting it counts one more test of that outcome
    outcomes: Any


_HTML_DATA = pytest.StashKey[_HtmlReportData]()  # the run's report.html data (pytest_html_report_title)
_HTML_PUBLISHED = pytest.StashKey[Path]()  # report.html, once the finished file was renamed there


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


def _memory(text: str) -> int:
    from .memory import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {exc}") from None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dataset_checks", "face dataset checks (pytest dataset_checks)")
    group.addoption("--dataset", type=_existing_dir, metavar="PATH",
                    help="dataset root: one folder per identity (overrides rules.yaml)")
    group.addoption("--rules", metavar="PATH",
                    help="rules file (default: rules.yaml in the current folder, else in the rootdir; "
                         "never one inside the dataset)")
    group.addoption("--threshold", type=_threshold, metavar="FLOAT",
                    help="cosine similarity at or above which two faces of different identities fail "
                         "(overrides rules.yaml)")
    group.addoption("--report-dir", metavar="PATH", default=None,
                    help="where findings.csv, findings.json, merge_candidates.csv and report.html go "
                         "(default: reports/ in the rootdir)")
    group.addoption("--baseline", metavar="FILE", default=None,
                    help="accepted findings and input problems: they are waived, only new ones fail")
    group.addoption("--update-baseline", action="store_true", default=False,
                    help="accept every current finding and input problem and write them to the --baseline file")
    group.addoption("--memory", type=_memory, metavar="SIZE", default=None,
                    help="the most memory the run keeps to, e.g. 4GB (overrides rules.yaml memory:; "
                         "default: half the machine)")
    group.addoption("--engine", choices=("local", "ray"), default=None,
                    help="where the search runs: local, or ray (needs dataset-checks[ray]; overrides rules.yaml)")
    group.addoption("--full", action="store_true", default=False,  # incremental
                    help="search the whole dataset even when the stored search state allows an incremental run "
                         "(the state is written anew)")
    # -- leakage: begin --
    group.addoption("--against", type=_existing_dir, metavar="PATH", action="append", default=None,
                    help="another dataset root (a benchmark, a val/test split) checked for leakage: faces and "
                         "people of --dataset that are also there (repeatable; added to rules.yaml against:)")
    # -- leakage: end --


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
    # Only test paths are rewritten: an option's value (`--report-dir dataset_checks/out`) stays.
    namespace = getattr(early_config, "known_args_namespace", None)
    positional = getattr(namespace, "file_or_dir", None) or []
    for argv, where in ((args, _positional_indexes(parser, args)), (positional, range(len(positional)))):
        for k in where:
            mapped = _package_arg(argv[k])
            if mapped is not None:
                argv[k] = mapped


def _positional_indexes(parser: pytest.Parser, args: list[str]) -> list[int]:
    """Where the test paths are in `args`: not an option, nor the value after an option that takes one.

    Asked of pytest's own parser (its public parse_known_args) one token at a time: the token is
    a test path when a marker put in its place comes back as one. A command line has few tokens."""
    out: list[int] = []
    for k, arg in enumerate(args):
        if arg.startswith("-"):  # an option (or, after `--`, a path that _package_arg leaves alone)
            continue
        try:
            found = getattr(parser.parse_known_args([*args[:k], _PROBE, *args[k + 1:]]), "file_or_dir", None)
        except (pytest.UsageError, SystemExit, argparse.ArgumentError):  # the marker is a bad option value
            continue
        if found and _PROBE in found:
            out.append(k)
    return out


_PROBE = ":dataset_checks:probe:"  # never an existing path, nor a valid number or choice


def _package_arg(arg: str) -> str | None:
    """A test path that names the installed package but is no path here, as that package's path.

    A failing test's node id, pasted back, reruns it: pytest prints the id relative to a rootdir
    it picked (`../../test_identities.py::test_identity[X]` run from a far folder, `test_identities.py::...`
    under `dataset-checks`, `dataset_checks/test_identities.py::...` in a checkout), and where that
    path does not exist it names the package's test_identities.py, with the same `::` suffix.
    Only `dataset_checks[/...]`, or a test_identities.py whose `::` names one of this package's
    tests; an existing path is always pytest's own."""
    if arg.startswith("-"):
        return None
    name, sep, rest = arg.partition("[")[0].partition("::")  # pytest: the [params] may hold `::`
    if not name or os.path.exists(name):
        return None
    if name in ("dataset_checks", "dataset_checks/") or name.startswith("dataset_checks/"):
        return str(PACKAGE_DIR) + arg[len("dataset_checks"):]
    test = rest.split("::")[0]
    if Path(name).name == "test_identities.py" and sep and (test == "test_dataset" or _check_of_family(test)):
        return str(PACKAGE_DIR / "test_identities.py") + arg[len(name):]
    return None


def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    # Outside the rootdir pytest names a file by its path from the test path given: the package
    # given, its tests are `test_identities.py::...`; the file itself given (a pasted-back node
    # id, _package_arg), they would be `::...`, which cannot be pasted again. Same id both ways.
    if module_path != PACKAGE_DIR / "test_identities.py":
        return None
    module = pytest.Module.from_parent(parent, path=module_path)
    if module.nodeid:
        return module
    return pytest.Module.from_parent(parent, path=module_path, nodeid=module_path.name)


@pytest.hookimpl(tryfirst=True)  # before pytest-html's, which reads --html, and the cache plugin's
def pytest_configure(config: pytest.Config) -> None:
    if not (_targets_us(config.args) or config.getoption("dataset") or config.getoption("rules")):
        return
    _refuse_xdist(config)
    dataset_opt = config.getoption("dataset")
    notes: list[str] = []
    rules_path, rules_from = _find_rules(config, dataset_opt, notes)
    try:
        rules = load_rules(rules_path)
    except RulesError as exc:
        raise pytest.UsageError(str(exc)) from None
    if dataset_opt is not None:
        rules = replace(rules, dataset=dataset_opt)
    if config.getoption("threshold") is not None:
        rules = replace(rules, threshold=config.getoption("threshold"), threshold_auto=False,
                        threshold_from="--threshold")
    if config.getoption("memory") is not None:
        rules = replace(rules, memory=config.getoption("memory"))
    if config.getoption("engine") is not None:
        rules = replace(rules, engine=replace(rules.engine, type=config.getoption("engine"),
                                              address=rules.engine.address if config.getoption("engine") == "ray"
                                              else None))
    if rules.engine.type == "ray":  # engines: Ray is an optional extra, said before anything runs
        from .engines import ray_missing

        if ray_missing():
            raise pytest.UsageError(ray_missing())
    if config.getoption("update_baseline") and not config.getoption("baseline"):
        raise pytest.UsageError("--update-baseline needs --baseline FILE (the file to write)")
    # -- leakage: begin --
    if config.getoption("against"):
        rules = replace(rules, against=tuple(dict.fromkeys((*rules.against, *config.getoption("against")))))
    for other in rules.against:
        if rules.dataset is not None and (is_inside(other, rules.dataset) or is_inside(rules.dataset, other)):
            raise pytest.UsageError(f"against: {display_name(str(other))} is, holds or lies inside the dataset "
                                    f"{display_name(str(rules.dataset))}: give another dataset's root")
    # -- leakage: end --
    if rules.dataset is not None:
        _keep_out_of_dataset(config, rules.dataset)
    for other in rules.against:  # leakage: the other datasets are never written either
        _keep_out_of_dataset(config, other)
    report_dir = _report_dir(config, rules.dataset)
    for other in rules.against:  # leakage
        if is_inside(report_dir, other):
            raise pytest.UsageError(f"the report folder {display_name(str(report_dir))} is inside the --against "
                                    f"dataset {display_name(str(other))}, which is never written: give --report-dir "
                                    "outside it")
    baseline_path = config.getoption("baseline")
    try:
        baseline = Baseline.load(Path(baseline_path), missing_ok=config.getoption("update_baseline"),
                                 writable=config.getoption("update_baseline")) if baseline_path else None
    except BaselineError as exc:
        raise pytest.UsageError(str(exc)) from None
    session = CheckSession(rules, report_dir=report_dir, baseline=baseline,
                           update_baseline=config.getoption("update_baseline"))
    session.notes = notes
    session.rules_from = rules_from
    session.full = config.getoption("full")  # incremental
    if hasattr(config.option, "htmlpath"):  # pytest-html is installed (a dependency; -p no:html turns it off)
        if not config.option.htmlpath:
            config.option.htmlpath = str(report_dir / "report.html")
            config.option.self_contained_html = True
        session.html_path = Path(config.option.htmlpath).expanduser().absolute()
    _check_writable(config, session)
    lock = FolderLock(report_dir)
    try:
        held = lock.acquire()
    except OSError as exc:  # safe_write.UnsafeTarget: a link or a folder at the lock file's name
        why = str(exc) if isinstance(exc, UnsafeTarget) else f"{display_name(str(lock.path))}: {exc.strerror or exc}"
        raise pytest.UsageError(f"report folder {display_name(str(report_dir))} cannot be locked: {why}; "
                                "nothing was checked") from None
    if held:
        raise pytest.UsageError(f"report folder {display_name(str(report_dir))} is {held}; "
                                "give this run its own --report-dir")
    session.lock = lock
    try:
        session.identities()
    except DatasetError as exc:
        lock.release()
        raise pytest.UsageError(str(exc)) from None
    # .dataset_checks_cache/ goes to the rootdir unless rules.yaml says otherwise (never the dataset)
    session.cache_root = config.rootpath
    notes += _linked_cache_note(session)
    if session.html_path is not None:
        # pytest-html writes in place (a killed run leaves a 0-byte report) and opens the path it
        # is given: it gets a new file at an unpredictable name beside the report (mkstemp, never a
        # planted link), renamed over the report once complete (pytest_sessionfinish)
        try:
            config.option.htmlpath = str(private_temp(session.html_path))
        except OSError as exc:
            lock.release()
            raise pytest.UsageError(f"--html: {display_name(str(session.html_path.parent))}: "
                                    f"{exc.strerror or exc}; nothing was checked") from None
    config.stash[SESSION] = session
    if config.option.durations is None:  # --durations reads every phase's report
        config.pluginmanager.register(_PassedPhases(config), "dataset_checks_passed_phases")


class _PassedPhases:
    """Keeps the terminal reporter's list of passed setup/teardown reports short.

    For every failed test, pytest's failures section looks up its teardown report by scanning
    that list (terminal.py `_get_teardown_reports`): 4,000 failing identities x 40,000 reports
    took 40 s of a 20,000-identity run. A passed setup or teardown that captured nothing prints
    nothing anywhere, so it leaves the list as soon as it is filed; one with captured output
    stays (its teardown section is printed with the failure)."""

    def __init__(self, config: pytest.Config):
        self.config = config

    @pytest.hookimpl(trylast=True)  # after the terminal reporter filed it
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or not report.passed or report.sections:
            return
        reporter: pytest.TerminalReporter | None = self.config.pluginmanager.get_plugin("terminalreporter")
        # TerminalReporter.stats is public: pytest's docs read it in pytest_terminal_summary examples
        filed = reporter.stats.get("") if reporter is not None else None
        if filed and filed[-1] is report:
            filed.pop()


def _refuse_xdist(config: pytest.Config) -> None:
    """pytest-xdist's -n/--dist: every worker would redo the whole load and search for its share
    of the tests and fight over the report folder; the run computes everything once, in one
    process. Refused in one line before anything is read or written (--collect-only is not
    distributed, so it stays allowed)."""
    if hasattr(config, "workerinput"):  # a worker: its controller is refused first; a last guard
        raise pytest.UsageError("dataset_checks cannot run in a pytest-xdist worker: drop -n/--dist")
    dist, tx = getattr(config.option, "dist", "no"), getattr(config.option, "tx", None)
    if dist in (None, "no") or not tx or config.option.collectonly:
        return
    numprocesses = getattr(config.option, "numprocesses", None)
    given = f"-n {numprocesses}" if numprocesses else f"--dist {dist}"
    raise pytest.UsageError(f"{given} (pytest-xdist) is not supported: the run loads and searches the dataset "
                            "once, in one process, and its tests only report that result; drop -n (use "
                            "--engine ray to spread the search over machines); nothing was checked")


def _find_rules(config: pytest.Config, dataset: Path | None, notes: list[str]) -> tuple[Path | None, str | None]:
    """The rules file and why it was chosen: --rules FILE, else rules.yaml in the current folder,
    else rules.yaml in pytest's rootdir, else none (the built-in defaults). A rules.yaml inside the
    dataset (or an --against dataset) is never read: it is skipped with a note."""
    given = config.getoption("rules")
    if given is not None:
        return Path(given), "--rules"
    datasets = [d for d in (dataset, *(config.getoption("against") or [])) if d is not None]
    seen: set[Path] = set()
    for base, why in ((Path.cwd(), "from the current folder"), (config.rootpath, "from the rootdir")):
        path = base / "rules.yaml"
        if not path.is_file() or path.resolve() in seen:
            continue
        seen.add(path.resolve())
        if any(is_inside(path, d) for d in datasets):
            # the data must not configure its own check (it could name an embedder to import)
            notes.append(f"{display_name(str(path))} lies inside the dataset and is not read (--rules to use it)")
            continue
        return path, why
    return None, None


def _report_dir(config: pytest.Config, dataset: Path | None) -> Path:
    """--report-dir, else reports/ in the rootdir, else in the cwd: never inside the dataset."""
    given = config.getoption("report_dir")
    if given:
        path = Path(given).expanduser().absolute()
        if dataset is not None and is_inside(path, dataset):
            raise pytest.UsageError(f"--report-dir {display_name(str(path))} is inside the dataset "
                                    f"{display_name(str(dataset))}; the dataset is never written: choose a folder outside it")
        return path
    for base in (config.rootpath, Path.cwd()):
        path = base / "reports"
        if dataset is None or not is_inside(path, dataset):
            return path
    raise pytest.UsageError(f"the default report folder would be inside the dataset {display_name(str(dataset))} "
                            "(run from outside it); the dataset is never written: give --report-dir outside it")


def _keep_out_of_dataset(config: pytest.Config, dataset: Path) -> None:
    """Refuse output options, and pytest's own cache, that point into the dataset."""
    shown = display_name(str(dataset))
    if config.inipath is not None and is_inside(config.inipath, dataset):
        raise pytest.UsageError(
            f"pytest read its configuration from {display_name(str(config.inipath))}, inside the dataset {shown}: "
            f"a dataset must not configure its own check, and pytest has already applied it (addopts, pythonpath). "
            f"Run `dataset-checks --dataset {shown}` instead, which never reads a configuration from the dataset "
            f"(or, from a folder outside the dataset, write --dataset={shown} with '=')")
    for option, flag in (("htmlpath", "--html"), ("xmlpath", "--junitxml"), ("basetemp", "--basetemp")):
        value = getattr(config.option, option, None)
        if value and is_inside(Path(value), dataset):
            raise pytest.UsageError(f"{flag} {display_name(str(value))} is inside the dataset {shown}; "
                                    "the dataset is never written: choose a path outside it")
    baseline = config.getoption("baseline")
    if baseline and config.getoption("update_baseline") and is_inside(Path(baseline), dataset):
        raise pytest.UsageError(f"--update-baseline would write {display_name(str(baseline))} inside the dataset "
                                f"{shown}; the dataset is never written: keep the baseline outside it")
    # pytest's cache plugin writes its folder at the end of every run (and --cache-clear empties
    # it in its pytest_configure, after ours). pytest has no public way to move it once the ini is
    # read, so a cache folder inside the dataset is refused, with the ways around it.
    cache = _pytest_cache_dir(config)
    if cache is not None and is_inside(cache, dataset):
        raise pytest.UsageError(
            f"pytest's cache folder {display_name(str(cache))} is inside the dataset {shown}; the dataset is never "
            f"written: add -p no:cacheprovider, or -o cache_dir=PATH outside the dataset, or run "
            f"`dataset-checks --dataset {shown}` (its rootdir, where the cache goes, is outside the dataset); "
            "nothing was checked")


def _pytest_cache_dir(config: pytest.Config) -> Path | None:
    """Where pytest's cache plugin will write, None when it is off (-p no:cacheprovider): the
    ini's cache_dir as that plugin reads it (~ and $VARS expanded, relative to the rootdir)."""
    if not config.pluginmanager.has_plugin("cacheprovider"):
        return None
    value = os.path.expandvars(os.path.expanduser(str(config.getini("cache_dir"))))
    return config.rootpath / value  # an absolute value replaces the rootdir


def _check_writable(config: pytest.Config, session: CheckSession) -> None:
    """Every folder this run writes to, probed before the search (not after minutes of work)."""
    assert session.report_dir is not None  # pytest_configure always gives one
    folders = {session.report_dir: "--report-dir"}
    if session.html_path is not None:
        folders.setdefault(session.html_path.parent, "--html")
    xml = getattr(config.option, "xmlpath", None)
    if xml:
        folders.setdefault(Path(xml).expanduser().absolute().parent, "--junitxml")
    if session.update_baseline and session.baseline is not None:
        folders.setdefault(session.baseline.path.expanduser().absolute().parent, "--baseline")
    for folder, flag in folders.items():
        problem = writable_dir_problem(folder)
        if problem:
            raise pytest.UsageError(f"{flag}: {display_name(problem)}; nothing was checked")
    # every file this run will write: a link (or a folder) at its name is refused now, not after
    # the search (the writers refuse it too); the baseline's is checked by Baseline.load
    from .sinks import UnknownOutput, planned_files

    try:
        planned = planned_files(session.report_dir, session.rules)
    except UnknownOutput as exc:  # rules `outputs:` names an output no sink offers
        raise pytest.UsageError(str(exc)) from None
    targets = {path: "--report-dir" for path in planned}
    if session.html_path is not None:
        targets[session.html_path] = "--html"
    if xml:  # pytest's junitxml opens the path itself: a link there would be written through
        targets[Path(xml).expanduser().absolute()] = "--junitxml"
    if session.html_path is not None and not getattr(config.option, "self_contained_html", False):
        assets = session.html_path.parent / "assets"  # pytest-html writes assets/style.css itself
        if assets.is_symlink():
            raise pytest.UsageError(f"--html: {display_name(str(assets))}: {LINK}; nothing was checked")
        targets[assets / "style.css"] = "--html"
    for path, flag in targets.items():
        why = target_problem(path)
        if why:
            raise pytest.UsageError(f"{flag}: {display_name(str(path))}: {why}; nothing was checked")


def _linked_cache_note(session: CheckSession) -> list[str]:
    """The cache folder may come with a checkout as a symbolic link: it is followed (a cache on
    a bigger disk is a common setup) and said in the header; files in it are never written
    through links (safe_write)."""
    try:
        cache = session.cache_dir
        if not cache.is_symlink():
            return []
        target = os.readlink(cache)
    except OSError:
        return []
    return [f"the cache folder {display_name(str(cache))} is a symbolic link to {display_name(target)}; "
            "the cache is written there"]


@pytest.hookimpl(tryfirst=True)  # before pytest's own unconfigure, which runs a full gc.collect
def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION, None)
    if session is not None:
        session.close()
        html_tmp = getattr(config.option, "htmlpath", None)
        if session.html_path is not None and html_tmp and Path(html_tmp) != session.html_path:
            Path(html_tmp).unlink(missing_ok=True)  # not published (pytest-html did not write it)
        if session.lock is not None:
            session.lock.release()
    if _HTML_CONFIG and _HTML_CONFIG[0] is config:
        _HTML_CONFIG.clear()  # no run's config outlives it (in-process runs in one interpreter)


@pytest.hookimpl(trylast=True, specname="pytest_unconfigure")  # after pytest's own, and its collections
def pytest_unconfigure_release() -> None:
    from . import gc_policy

    gc_policy.release()


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # The dataset may live inside the rootdir; its folders are data, never test files.
    session = config.stash.get(SESSION, None)
    if session is not None and not session.is_demo:
        if is_inside(collection_path, session.root):
            return True
    if session is not None and any(is_inside(collection_path, o) for o in session.rules.against):  # leakage
        return True
    return None


def _run_once(config: pytest.Config, session: CheckSession) -> None:
    """The one load + search + judgement, with capture suspended so that progress bars reach the
    terminal. Runs before the header is printed (the header shows the threshold actually used),
    or at the first test when pytest prints no header."""
    from . import gc_policy

    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            session.findings()
    else:
        session.findings()
    gc_policy.keep()  # the results live until the end: later collections need not walk them
    _terminal_budget(config, session)


# More failing tests than this and the terminal lists them in our section, strongest evidence
# first, instead of pytest's lines per failing test (a FAILURES entry and a short-summary line
# each: 36,355 lines at 1M faces). Every failing test is still a failing test: report.html,
# findings.json's failed_tests and JUnit XML list each; --tb or -r given by the user win.
TERMINAL_FAILURES = 200
TERMINAL_CAPPED_IDENTITIES = 30  # failing identities our section lists when it stands in for pytest's


def _terminal_budget(config: pytest.Config, session: CheckSession) -> None:
    if session.terminal_capped is not None or session.run_error:
        return
    failing = sum(len(o.failing) for o in session.findings().identity_outcomes().values())
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if failing <= TERMINAL_FAILURES or config.option.tbstyle != "auto" or reporter is None:
        session.terminal_capped = 0
        return
    config.option.tbstyle = "no"  # read by the terminal reporter when it writes the FAILURES section
    if config.option.reportchars == "fE":  # pytest's default -r: without its FAILED line per failing test
        reporter.reportchars = reporter.reportchars.replace("f", "")
    session.terminal_capped = failing


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    session = config.stash.get(SESSION, None)
    if session is None:
        return None
    # --collect-only too: it lists what a run runs, and a check family holds the identities the
    # run's result flags (pytest_generate_tests); the findings files are not written (sessionfinish)
    _run_once(config, session)
    return session.header_lines()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "identity" not in metafunc.fixturenames or not metafunc.definition.path.is_relative_to(PACKAGE_DIR):
        return
    session = metafunc.config.stash.get(SESSION, None)
    identities = session.identities() if session is not None else []
    if metafunc.function.__name__ == "test_faces_detected":  # only folders whose images are embedded
        identities = session.image_identities() if session is not None else []
    check = _check_of_family(metafunc.function.__name__)
    if check is not None and not check.builtin and session is not None:  # under --collect-only too
        # A check's family holds the identities it has something to say about, plus one item
        # for all the others: a test per identity per check would cost pytest ~1 ms each, and
        # most checks flag a handful of folders among thousands (tests/test_checks_framework.py).
        _run_once(metafunc.config, session)
        result = session.check_results.get(check.name)
        if result is not None and not result.error:
            flagged = [i for i in identities if any(x.severity != "info" for x in result.of(i.name))]
            rest = len(identities) - len(flagged)
            # the ids of the flagged folders come from pytest_make_parametrize_id; this one is ASCII,
            # which pytest's escaping of a given id leaves as it is
            others = [pytest.param(OTHERS, id=f"{rest} other identities")] if rest else []
            metafunc.parametrize("identity", [*(i.name for i in flagged), *others])
            return
    metafunc.parametrize("identity", [i.name for i in identities])


@pytest.hookimpl(tryfirst=True)  # before a conftest's: our node ids are pasted back to rerun a test
def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str) -> str | None:
    """The test id of an identity: its folder name as text.shown writes it (Identity.display).

    pytest does not escape what this hook returns (an id given as `ids=` it would write with
    \\u escapes): 高橋 and 髙橋 read as themselves, and everything unsafe is already a %XX escape."""
    if argname != "identity" or not isinstance(val, str):
        return None
    session = config.stash.get(SESSION, None)
    if session is None:
        return None
    shown = config.stash.get(_SHOWN, None)
    if shown is None:  # one lookup per item: 20,000 identities are parametrized in 3+ families
        shown = config.stash[_SHOWN] = {i.name: i.display for i in session.identities()}
    return shown.get(val)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str,
                              obj: object) -> list[pytest.Item | pytest.Collector] | None:
    # No parameters means no item at all (not an "empty parameter set" skip, which would read as
    # a pass): a dataset without identity folders is failed by test_dataset alone, and one
    # without image folders has no test_faces_detected.
    if not name.startswith("test_") or not collector.path.is_relative_to(PACKAGE_DIR):
        return None
    session = collector.config.stash.get(SESSION, None)
    check = _check_of_family(name)
    if name not in ("test_faces_detected", "test_identity") and check is None:
        return None
    if session is None:
        return []
    if check is not None and check.builtin:
        if name == "test_faces_detected" and not session.rules.check_settings(check.name).enabled:
            return []
        check = None  # test_identity stays for the input problems even with cross_identity off
    if check is not None:  # a registered check: no items when it is off, or per identity and none
        if not session.rules.check_settings(check.name).enabled:
            return []
        if "against" in check.needs and not session.rules.against:  # leakage: nothing to compare with
            return []
        return None if check.level == "dataset" or session.identities() else []
    wanted = session.image_identities() if name == "test_faces_detected" else session.identities()
    return None if wanted else []


def _check_of_family(name: str) -> type[Check] | None:
    from .checks import all_checks

    for check in all_checks():
        if check.test_name() == name:
            return check
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The dataset-level test first, then failing identities by evidence, then the rest."""
    session = config.stash.get(SESSION, None)
    if session is None or session._findings is None:
        return
    rank = session.identity_rank()

    def key(item: pytest.Item) -> tuple[int, int]:
        spec = getattr(item, "callspec", None)
        if spec is None or "identity" not in spec.params:
            return (0, 0)
        return (1, rank.get(spec.params["identity"], len(rank)))

    if any(item.path.is_relative_to(PACKAGE_DIR) for item in items):
        ours = [i for i in items if i.path.is_relative_to(PACKAGE_DIR)]
        others = [i for i in items if not i.path.is_relative_to(PACKAGE_DIR)]
        items[:] = sorted(ours, key=key) + others


@pytest.fixture(scope="session")
def dataset_checks_session(request: pytest.FixtureRequest) -> CheckSession:
    session = request.config.stash.get(SESSION, None)
    if session is None:
        pytest.skip("dataset_checks is not configured for this run (run `pytest dataset_checks`)")
    _run_once(request.config, session)
    return session


def pytest_sessionfinish(session: pytest.Session) -> None:
    check = session.config.stash.get(SESSION, None)
    if check is not None and not session.config.option.collectonly:  # --co lists; it writes no findings or baseline
        check.write_reports()
        # a gate whose outputs are missing, or whose baseline could not be updated, did not pass
        if (check.write_errors or check.baseline_refused) and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


# innermost wrapper: around pytest-html's writer, inside the terminal reporter's summary
@pytest.hookimpl(wrapper=True, trylast=True, specname="pytest_sessionfinish")
def pytest_sessionfinish_around_html(session: pytest.Session) -> Generator[None, None, None]:
    check = session.config.stash.get(SESSION, None)
    try:
        result = yield
    except OSError as exc:  # pytest-html could not write report.html (disk full, folder gone)
        if check is None:
            raise
        check.write_errors.append(f"report.html: {exc.strerror or exc}")
        Path(session.config.option.htmlpath).unlink(missing_ok=True)  # half-written; the last report stays
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        return None
    if check is not None and check.html_path is not None:
        _publish_html(session.config, check)
    return result


def _light_rows(config: pytest.Config, html: Path) -> None:
    """Rows without pytest-html's media viewer, when no row shows an image or a video.

    Its row template holds an <img> and a <video controls> for image and video extras, built
    for every row: Chromium sets up a media element per <video>, and 20,000 rows took 20-30 s
    to open (without them about 3 s). Our rows carry HTML extras only (the thumbnails are
    inline), so the viewer is dropped from the finished file's row template (our own temp
    file, before it is published) unless some row has such an extra; with an unexpected
    template (another pytest-html), nothing changes."""
    data = config.stash.get(_HTML_DATA, None)
    if data is None or any(extra.get("format_type") in ("image", "video") for rows in data.data["tests"].values()
                           for row in rows for extra in row.get("extras", ())):
        return
    try:
        text = html.read_bytes()
    except OSError:
        return
    row = text.find(b'<template id="template_results-table__tbody">')
    start = text.find(b'<div class="media">', row) if row >= 0 else -1
    end = text.find(b'<div class="logwrapper">', start) if start >= 0 else -1
    if end < 0:
        return
    try:  # O_NOFOLLOW: a link planted at the temp name is refused (publish then refuses it too)
        fd = os.open(html, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "wb") as out:
            out.write(text[:start] + b'<div class="media"></div>\n' + text[end:])
    except OSError:
        html.unlink(missing_ok=True)  # half-written: publish finds nothing, the last report stays
        raise


def _publish_html(config: pytest.Config, check: CheckSession) -> None:
    tmp, html = Path(config.option.htmlpath), check.html_path
    if html is None or tmp == html or not os.path.lexists(tmp):
        return
    try:
        _light_rows(config, tmp)
        publish(tmp, html)  # refuses a link or a folder at report.html (left as it is)
    except OSError as exc:
        check.write_errors.append(f"{display_name(str(html))}: {exc.strerror or exc}")
        return
    config.stash[_HTML_PUBLISHED] = html
    # pytest-html's report object has done its work (it wrote the file we just published); its
    # last hook, the terminal line, would name the temp file: it is unregistered (pluggy's public
    # API) and our terminal summary names the real report
    from pytest_html.basereport import BaseReport

    for plugin in config.pluginmanager.get_plugins():
        if isinstance(plugin, BaseReport):
            config.pluginmanager.unregister(plugin)


@pytest.hookimpl(wrapper=True, tryfirst=True)  # outermost: our section comes after pytest's short summary
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> Generator[None, None, None]:
    result = yield
    published = config.stash.get(_HTML_PUBLISHED, None)
    if published is not None:
        # in pytest-html's words, for the real file (its own line, about the temp file, is off)
        terminalreporter.write_sep("-", f"Generated html report: {published.as_uri()}")
    check = config.stash.get(SESSION, None)
    if check is not None and (check.written or check.write_errors):
        terminalreporter.section("dataset_checks")
        capped = bool(check.terminal_capped)
        if capped:
            terminalreporter.write_line(
                f"dataset_checks: {check.terminal_capped:,} failing tests (over {TERMINAL_FAILURES}): the strongest are "
                "listed below instead of one entry each; every one is in report.html, findings.json (failed_tests) "
                "and --junitxml; --tb=short lists each here")
        lines = check.summary_lines(limit=TERMINAL_CAPPED_IDENTITIES if capped else 10)
        for line in lines:
            terminalreporter.write_line(terminal_line(line, limit=1000))
        if capped and lines:  # the headline again, in the last screen of a long log
            terminalreporter.write_line(terminal_line(lines[0], limit=1000))
    return result


# -- a failing identity in the terminal: a few lines, the whole message in report.html -----------


class _LineWriter(Protocol):
    """The part of pytest's terminal writer a longrepr uses (its class is not exported)."""

    def line(self, s: str = "", **markup: bool) -> None: ...


@dataclass(frozen=True, eq=False)
class BriefFailure:
    """The longrepr of a domain failure (`pytest.fail(message, pytrace=False)` in a test of one
    identity): the terminal's failures section shows `lines` (a few; --tb=long: the whole
    message; --tb=line: none, the crash line says it); `reprcrash.message` is the one line of
    pytest's short summary and junitxml's message; str() is the whole message (junitxml's text,
    xdist) and report.html's row log shows it too. 4,000 failing identities then print about
    12,000 lines, not 40,000."""

    lines: tuple[str, ...]
    full: str
    reprcrash: "BriefCrash"

    def toterminal(self, tw: _LineWriter) -> None:
        for line in self.lines:
            tw.line(line)

    def __str__(self) -> str:
        return self.full


@dataclass(frozen=True)
class BriefCrash:
    """Where and what, as pytest's ReprFileLocation; str() (--tb=line) is the message alone:
    the line of test code is the same for every identity and says nothing."""

    path: str
    lineno: int
    message: str

    def __str__(self) -> str:
        return self.message


def _brief_failure(item: pytest.Item, call: pytest.CallInfo[None], check: CheckSession) -> BriefFailure | None:
    """The brief of a domain failure of a test of one identity, else None (pytest's report)."""
    exc = call.excinfo.value if call.when == "call" and call.excinfo is not None else None
    if not isinstance(exc, pytest.fail.Exception) or exc.pytrace:
        return None  # a bug in a test or a check keeps pytest's own traceback
    spec = getattr(item, "callspec", None)
    if spec is None or "identity" not in spec.params:
        return None  # test_dataset and dataset-level checks: one test each, said in full
    message = exc.msg or ""
    brief = check.brief(spec.params["identity"], message, cross_identity=_is_test_identity(item))
    style = item.config.option.tbstyle
    lines = tuple(message.split("\n")) if style == "long" else () if style == "line" else brief.lines
    path, lineno, _ = item.location
    return BriefFailure(lines, message, BriefCrash(path, (lineno or 0) + 1, brief.line))


def _is_test_identity(item: pytest.Item) -> bool:
    return isinstance(item, pytest.Function) and item.originalname == "test_identity"


@pytest.hookimpl(tryfirst=True, specname="pytest_runtest_makereport")
def pytest_runtest_makereport_brief(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport | None:
    # The report of a domain failure is made here, with its brief as the longrepr: pytest's own
    # would first format a traceback that is never shown (1-2 ms per failing identity).
    check = item.config.stash.get(SESSION, None)
    brief = _brief_failure(item, call, check) if check is not None else None
    if brief is None:
        return None
    call = copy.copy(call)  # the original, with its exception, stays for --pdb and the other hooks
    # not an ExceptionInfo: pytest takes it as the report's longrepr (TestReport.from_item_and_call)
    call.excinfo = brief  # type: ignore[assignment]  # deliberately not an ExceptionInfo, see above
    return pytest.TestReport.from_item_and_call(item, call)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    check = item.config.stash.get(SESSION, None)
    spec = getattr(item, "callspec", None)
    if check is None or report.when != "call" or spec is None or "identity" not in spec.params:
        return report
    identity = spec.params["identity"]
    # a test_identity row shows its pairs (a check's row says its issues in its log; the pairs
    # are on the identity's test_identity row)
    if identity is not None and _is_test_identity(item):
        html = check.identity_html(identity)
        if html:
            # report.extras: pytest-html's documented way for a plugin to add to a row
            report.extras = [*getattr(report, "extras", []), {  # type: ignore[attr-defined]  # not a TestReport field
                "name": "pairs", "format_type": "html", "content": html, "mime_type": None, "extension": None}]
    return report


@pytest.hookimpl(optionalhook=True)
def pytest_html_report_title(report: _HtmlReportData) -> None:
    config = report.config
    if SESSION not in config.stash:
        return
    report.title = "dataset_checks report"
    config.stash[_HTML_DATA] = report  # its rows, read when the file is published (_light_rows)
    # Rows open in evidence order (the Evidence column) unless the user chose a sort in the ini.
    # pytest-html read initial_sort in its pytest_configure; this hook comes before any row.
    if config.getini("initial_sort") == "result":
        report.set_data("initialSort", "dcorder")


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_summary(prefix: list[str], summary: list[str], postfix: list[str],
                                session: pytest.Session) -> None:
    check = session.config.stash.get(SESSION, None)
    if check is not None:
        prefix.append(check.summary_html())
        postfix.extend(check.sections_html())


# -- report.html result table: evidence order, no Duration column, escaped test ids -------------
# (appended hooks; they only act in a dataset_checks run)

# The config of the run whose report pytest-html is building: its table hooks get the cells (and
# a report) only, no config, so the run is found here (set at sessionstart, cleared at unconfigure).
_HTML_CONFIG: list[pytest.Config] = []


@pytest.hookimpl(tryfirst=True)  # before pytest-html builds the header
def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    _HTML_CONFIG[:] = [config] if SESSION in config.stash else []


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_table_header(cells: list[str]) -> None:
    if not _HTML_CONFIG:
        return
    cells[:] = [c for c in cells if 'data-column-type="duration"' not in c]
    cells.insert(2, '<th class="sortable" data-column-type="dcorder">Evidence</th>')


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_table_row(report: pytest.TestReport, cells: list[str]) -> None:
    config = _HTML_CONFIG[0] if _HTML_CONFIG else None
    check = config.stash.get(SESSION, None) if config is not None else None
    if check is None:
        return
    if report.when != "call" and report.passed and not report.sections:
        # pytest-html shows no row for a passed setup or teardown; no cells: it skips building
        # one (two of every three reports of a run)
        cells.clear()
        return
    if report.passed and not report.sections and not getattr(report, "extras", None) and _summarise_passing(check):
        # a large run's passing tests are counted, not listed (issue 23: 20,000 rows made a 37 MB
        # page): pytest-html counts a row it builds; this one is counted through its report data
        data = config.stash.get(_HTML_DATA, None) if config is not None else None
        if data is not None:
            cells.clear()
            data.outcomes = "passed"  # pytest-html's own count of passed tests stays true
            check.passing_rows_left_out += 1
            return
    from html import escape

    # pytest-html 4.2 inserts this cell with innerHTML (pytest-html#1024): escape the id.
    test_id = report.nodeid + ("" if report.when == "call" else f"::{report.when}")
    cells[:] = [f'<td class="col-testId">{escape(test_id)}</td>' if 'class="col-testId"' in c else c
                for c in cells if 'class="col-duration"' not in c]
    key, label = "5", ""
    name = report.nodeid.rsplit("[", 1)[-1][:-1] if report.nodeid.endswith("]") else None
    if check._findings is not None and "::test_identity[" in report.nodeid and name is not None:
        key, label = check.row_order().get(name, ("5", ""))
    elif report.failed:
        key = "1"  # other failing tests (faces not detected) right after the ranked identities
    # pytest-html sorts by the cell's text: the hidden key first, then what a reader sees.
    cells.insert(2, f'<td class="col-dcorder"><span hidden>{key}</span>{escape(label)}</td>')


def _summarise_passing(check: CheckSession) -> bool:
    """Whether report.html counts passing tests instead of listing them: over REPORT_PASSING_ROWS."""
    from .report import REPORT_PASSING_ROWS

    if check._findings is None:
        return False
    if check.summarise_passing is None:  # once per run: this is asked for every row
        outcomes = check._findings.identity_outcomes().values()
        check.summarise_passing = sum(o.status == "pass" for o in outcomes) > REPORT_PASSING_ROWS
    return check.summarise_passing


_NO_LOG = "No log output captured."  # pytest-html's log of a row with nothing to show


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_table_html(report: pytest.TestReport, data: list[str]) -> None:
    if not _HTML_CONFIG or SESSION not in _HTML_CONFIG[0].stash:
        return
    longrepr = report.longrepr
    if isinstance(longrepr, BriefFailure):  # the row's log holds the whole message, not the terminal's lines
        from html import escape

        full = escape(longrepr.full) + "\n"
        if longrepr.lines:
            data[0] = full  # pytest-html's first entry: the terminal's lines (longreprtext)
        else:
            data[:] = [full, *(x for x in data if x != _NO_LOG)]
    elif report.passed and data == [_NO_LOG]:
        data.clear()  # a passing row is one line, with nothing under it
