"""The dataset checks: one test per identity folder (`pytest dataset_checks`)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Callable

import pytest

if TYPE_CHECKING:
    from .checks import Check
    from .session import CheckSession


class DatasetWarning(UserWarning):
    """An input problem that does not fail the identity (bad_input: warn, odd folder names)."""


def test_identity(identity: str, dataset_checks_session: CheckSession) -> None:
    """No face in this folder matches a face in another folder at or above the threshold."""
    session = dataset_checks_session
    from .findings import identity_test_status  # the same judgement as the counts (findings.identity_outcomes)

    verdict = session.verdict(identity)
    cross = session.rules.check_settings("cross_identity")
    if verdict.status == "fail" and cross.enabled and cross.severity == "warn":
        warnings.warn(DatasetWarning(session.message(identity)), stacklevel=1)
    if identity_test_status(verdict, session.rules) != "pass":  # an unusable folder fails whatever the pairs
        pytest.fail(session.message(identity), pytrace=False)
    if session.rules.bad_input != "info":
        from .problems import capped

        for problem in capped(verdict.problems, verdict.identity.display + "/"):  # at most 20, the rest counted
            warnings.warn(DatasetWarning(str(problem)), stacklevel=1)


def test_faces_detected(identity: str, dataset_checks_session: CheckSession) -> None:
    """Every image of this folder (embedded by the tool) decodes and shows exactly one face.

    Collected only for folders with images and no embeddings file. Images with no face, several
    faces, or unreadable data are listed here; the rest of the folder is still checked by
    test_identity. Conversions (greyscale, CMYK, 16-bit, EXIF rotation) are warnings, and so are
    group photos (several faces, the one nearest the centre used) unless
    `checks.faces_detected.several_faces: fail`. The message lists the worst problems first.
    """
    report = dataset_checks_session.faces_report(identity)
    if report is None:
        return
    rules = dataset_checks_session.rules
    settings = rules.check_settings("faces_detected")
    severity = settings.severity
    several = settings.params.get("several_faces", "warn")  # a group photo: soft unless configured
    from .findings import faces_test_fails  # the same judgement as the counts (findings.identity_outcomes)

    if faces_test_fails(report, rules):
        pytest.fail(report.message(), pytrace=False)
    if severity != "info" and (report.hard or (report.several and several != "info")):
        warnings.warn(DatasetWarning(report.message()), stacklevel=1)
    for outcome in report.notes:
        warnings.warn(DatasetWarning(outcome.line()), stacklevel=1)


def test_dataset(dataset_checks_session: CheckSession) -> None:
    """The dataset was found, holds identity folders, at least one of them was checked, and the
    search ran: a run that checked nothing never passes."""
    problems = dataset_checks_session.dataset_problems()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


# -- one test family per registered check (dataset_checks.checks) --------------------------------


def _judge(session: CheckSession, name: str, identity: str | None) -> None:
    result = session.check_result(name)
    if result is None:
        if session.run_error:  # the run broke before the checks: never a skip that reads as a pass
            pytest.fail(f"check {name} did not run: the run failed: {session.run_error}", pytrace=False)
        pytest.skip(f"check {name} did not run (off in the rules, or nothing to check)")
    if not result.error and result.instance is not None:  # what the check could not look at, never silent
        for note in result.instance.notes():
            warnings.warn(DatasetWarning(note), stacklevel=1)
    if identity is None and result.check.level == "identity":  # every identity the check did not flag
        if result.error:
            pytest.fail(result.outcome(None).message(), pytrace=False)
        return
    outcome = result.outcome(identity)
    if outcome.status == "fail":
        pytest.fail(outcome.message(), pytrace=False)
    if outcome.status == "warn":  # per identity: one line per check, the details in <check>.csv / report.html
        text = outcome.message() if identity is None else result.warn_summary()
        warnings.warn(DatasetWarning(text), stacklevel=1)


def _family(check: type[Check]) -> Callable[..., None]:
    test: Callable[..., None]
    if check.level == "dataset":
        def dataset_test(dataset_checks_session: CheckSession) -> None:
            _judge(dataset_checks_session, check.name, None)

        test = dataset_test
    else:
        def identity_test(identity: str | None, dataset_checks_session: CheckSession) -> None:
            _judge(dataset_checks_session, check.name, identity)

        test = identity_test
    test.__name__ = test.__qualname__ = check.test_name()
    test.__doc__ = f"{check.title}: {check.doc}"
    return test


def _register_families() -> None:
    from dataset_checks.checks import all_checks

    for check in all_checks():
        if not check.builtin and check.test_name() not in globals():
            globals()[check.test_name()] = _family(check)


_register_families()
