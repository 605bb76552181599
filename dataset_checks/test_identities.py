"""The dataset checks: one test per identity folder (`pytest dataset_checks`)."""

import warnings

import pytest


class DatasetWarning(UserWarning):
    """An input problem that does not fail the identity (bad_input: warn, odd folder names)."""


def test_identity(identity, dataset_checks_session):
    """No face in this folder matches a face in another folder at or above the threshold."""
    verdict = dataset_checks_session.verdict(identity)
    if verdict.status != "pass":
        pytest.fail(verdict.message(), pytrace=False)
    for problem in verdict.problems:
        warnings.warn(DatasetWarning(str(problem)), stacklevel=1)
