"""Issue 20, the step: one result model and one contract.

Every finding of a run is an `issues.Issue` (the search's pairs, the folders' input problems, the
registered checks'), keyed for the baseline by one method; the run's result is built once and
never changed; the rules stay as given (the threshold a run resolves is its own typed value);
every file of the report folder is a registered sink, and a new one is one class.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import pytest

from dataset_checks import sinks
from dataset_checks.baseline import Baseline, current_entries
from dataset_checks.discover import discover_identities
from dataset_checks.issues import INPUT_CHECK, PAIR_CHECK, Finding, Issue
from dataset_checks.rules import parse_rules
from dataset_checks.run import Pipeline
from helpers import write_face01

D = 16


def _dataset(root: Path, seed: int) -> None:
    """Six folders of random faces, one face of B filed again in A (a cross-identity pair), one
    broken archive (an input problem) and one near-copy inside C (near_duplicates)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((30, D)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for k, name in enumerate("ABCDEF"):
        rows = x[k * 5:(k + 1) * 5].copy()
        if name == "A":
            rows[0] = x[5]  # B's first face
        if name == "C":
            rows[1] = rows[0]  # the same photo twice in C
        write_face01(root, name, rows)
    broken = root / "G"
    broken.mkdir()
    (broken / "npKnown.npz").write_bytes(b"PK\x03\x04 not an archive")


def _run(root: Path, cache: Path, **rules) -> tuple[object, object]:
    config = parse_rules({"threshold": "auto", **rules})
    pipeline = Pipeline(config, root, discover_identities(root), cache)
    return config, pipeline.execute()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_finding_is_one_issue_type_and_the_baseline_reads_only_that_list(tmp_path, seed):
    _dataset(tmp_path / "d", seed)
    _, result = _run(tmp_path / "d", tmp_path / "cache", threshold=0.99)
    issues = result.issues
    assert all(isinstance(i, Issue) for i in issues)
    pairs = [i for i in issues if i.check == PAIR_CHECK]
    assert pairs and all(isinstance(i, Finding) for i in pairs) and pairs == result.findings.pairs
    assert {(i.identity, i.other_identity) for i in pairs} >= {("A", "B")}
    problems = [i for i in issues if i.check == INPUT_CHECK]
    assert problems and {i.identity for i in problems} == {"G"} and all(i.code for i in problems)
    checks = {i.check for i in issues} - {PAIR_CHECK, INPUT_CHECK}
    assert "near_duplicates" in checks
    # what --update-baseline accepts is exactly the issues that fail or warn, keyed by one method
    accepted = {e.full_key for e in current_entries(result.findings)}
    assert accepted == {i.baseline_key() for i in issues if i.severity != "info" and i.waived is None}
    base = Baseline(tmp_path / "b.csv")
    base.write(result.findings)
    assert Baseline.load(tmp_path / "b.csv").keys == accepted


def test_the_result_is_built_once_and_the_rules_stay_as_given(tmp_path):
    _dataset(tmp_path / "d", 3)
    config, result = _run(tmp_path / "d", tmp_path / "cache")
    assert result.rules is config and config.threshold_auto  # `auto` stays auto in the rules
    assert result.threshold.auto and result.threshold.choice is not None
    assert result.findings.metadata["threshold"] == result.threshold.value
    assert all(v.threshold == result.threshold.value for v in result.findings.verdicts.values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.findings.check_issues = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.threshold = None  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.issues[0].waived = "x"  # type: ignore[misc]


class _PairCount:
    """An output added by a plugin author: one class, registered."""

    name: ClassVar[str] = "pair_count.txt"
    order: ClassVar[int] = 99

    def names(self, rules: object) -> list[str]:
        return [self.name]

    def files(self, view: sinks.RunView) -> list[tuple[str, Callable[[Path], object]]]:
        def write(path: Path) -> None:
            path.write_text(f"{len(view.findings.pairs)}\n", encoding="utf-8")

        return [(self.name, write)]


def test_a_new_output_is_one_registered_class(tmp_path, monkeypatch):
    sinks.all_sinks()  # the built-in sinks registered first, kept when the registry is restored
    monkeypatch.setattr(sinks, "_REGISTRY", dict(sinks._REGISTRY))
    sinks.register(_PairCount)
    _dataset(tmp_path / "d", 4)
    config, result = _run(tmp_path / "d", tmp_path / "cache", threshold=0.99)
    assert tmp_path / "out" / "pair_count.txt" in sinks.planned_files(tmp_path / "out", config)
    (tmp_path / "out").mkdir()
    written = sinks.write_all(tmp_path / "out", sinks.RunView(result.findings, (), result.check_results))
    assert not written.errors
    names = [p.name for p in written.files]
    assert names[:3] == ["findings.csv", "findings.json", "merge_candidates.csv"] and names[-1] == "pair_count.txt"
    assert (tmp_path / "out" / "pair_count.txt").read_text() == f"{len(result.findings.pairs)}\n"


def test_a_sink_that_fails_is_named_and_the_others_still_write(tmp_path, monkeypatch):
    import dataset_checks.findings as findings_mod

    def full(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(findings_mod, "write_csv", full)
    _dataset(tmp_path / "d", 5)
    _, result = _run(tmp_path / "d", tmp_path / "cache", threshold=0.99)
    (tmp_path / "out").mkdir()
    written = sinks.write_all(tmp_path / "out", sinks.RunView(result.findings, (), result.check_results))
    assert len(written.errors) == 1 and "findings.csv" in written.errors[0] and "No space" in written.errors[0]
    assert (tmp_path / "out" / "findings.json").is_file() and not (tmp_path / "out" / "findings.csv").exists()


class _Bars:
    """A tqdm-like factory that records each bar: its description, total and the count reached."""

    def __init__(self) -> None:
        self.bars: list[dict] = []

    def __call__(self, iterable=None, **kw):
        bar = {"desc": kw.get("desc"), "total": kw.get("total"), "n": 0, "closed": False}
        self.bars.append(bar)
        if iterable is not None:
            def gen():
                for item in iterable:
                    bar["n"] += 1
                    yield item
            return gen()

        class Bar:
            def update(self, k=1):
                bar["n"] += k

            def close(self):
                bar["closed"] = True

        return Bar()


def test_every_long_stage_shows_a_bar_with_its_count(tmp_path, monkeypatch):
    # issue 23: progress a person can follow; a bar exists only where the run shows progress
    # (a terminal), so CI logs stay quiet (Pipeline(progress=False) opens none)
    from dataset_checks.session import CheckSession

    _dataset(tmp_path / "d", 6)
    bars = _Bars()
    monkeypatch.setattr(Pipeline, "_bar", lambda self, iterable=None, **kw: bars(iterable, **kw))
    session = CheckSession(parse_rules({"threshold": "auto", "dataset": str(tmp_path / "d")}), progress=True)
    session.cache_root = tmp_path
    session.findings()
    session.merge_candidates()
    by_desc = {b["desc"]: b for b in bars.bars}
    for desc in ("listing", "loading", "calibrating the threshold (threshold: auto)", "searching",
                 "verifying a sample against brute force", "checks", "ranking the folders that may be one person"):
        assert desc in by_desc, (desc, list(by_desc))
    assert by_desc["loading"]["n"] == by_desc["loading"]["total"] == 7
    checks = by_desc["checks"]
    assert checks["n"] == checks["total"] == len(session.check_results) and checks["closed"]
    quiet = CheckSession(parse_rules({"threshold": "auto", "dataset": str(tmp_path / "d")}), progress=False)
    quiet.cache_root = tmp_path / "q"
    before = len(bars.bars)
    quiet.findings()
    assert len(bars.bars) == before  # no bar without a terminal
