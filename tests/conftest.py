"""Shared fixtures and Hypothesis profiles for the dataset_checks test suite."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=25,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "dev",
    max_examples=40,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))

from helpers import ARC, write_dataset  # noqa: E402

# pytester's in-process runs restore sys.modules afterwards, dropping every module first imported
# inside them; faiss imported again in the same process re-registers its SWIG types over the
# live ones, and the next faiss call crashes (a segfault in leakage's range search after an
# in-process run). Imported here, before any test, it is never dropped.
import faiss  # noqa: E402, F401


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture
def make_dataset(tmp_path):
    """make_dataset({"A": vecs, ...}, key=..., shape_3d=...) -> dataset root under tmp_path."""
    counter = iter(range(10_000))

    def make(folders: dict[str, np.ndarray], key: str = ARC, shape_3d: bool = False, name: str | None = None) -> Path:
        root = tmp_path / (name or f"ds{next(counter)}")
        return write_dataset(root, folders, key=key, shape_3d=shape_3d)

    return make


@pytest.fixture
def run(pytester):
    """In-process run of the package's tests; always with an explicit report dir."""
    pkg = str(Path(__file__).resolve().parents[1] / "dataset_checks")

    def go(*args: str, report_dir: str = "out"):
        return pytester.inline_run(pkg, "-p", "no:cacheprovider", "--report-dir", report_dir, *args)

    return go
