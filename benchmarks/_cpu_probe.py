"""pytest plugin for benchmarks/pytest_share.py: the CPU time of the pipeline, inside the child.

The pipeline (load, search, checks) runs inside dataset_checks' `pytest_report_header`; this
wraps it and writes that CPU time (all threads of the process) and the whole process's to the
JSON file named by $PYTEST_SHARE_PROBE at unconfigure. On a shared machine, CPU time is steadier
than wall time: pytest's share in CPU seconds is the process's minus the pipeline's.
"""

from __future__ import annotations

import json
import os
import time

import pytest

_SEEN: dict[str, float] = {}


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_report_header(config):
    t0 = time.process_time()
    try:
        return (yield)
    finally:
        _SEEN["pipeline_cpu"] = _SEEN.get("pipeline_cpu", 0.0) + time.process_time() - t0


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    path = os.environ.get("PYTEST_SHARE_PROBE")
    if path:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump({**_SEEN, "process_cpu": time.process_time()}, fh)
