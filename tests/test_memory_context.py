"""The run's memory budget is handed explicitly (context.RunContext), never held by a module: two
budgets, two contexts or two pipelines in one process do not see each other. A module global (the
budget "of the run in progress") let one run's checkpoints trim another's table, and the first
run to close silenced the other's."""

from __future__ import annotations

import ast
import dataclasses
import threading
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from helpers import write_face01

import dataset_checks
from dataset_checks import memory
from dataset_checks.checks import CheckData
from dataset_checks.check_run import run_checks
from dataset_checks.checks.near_duplicates import folder_pairs
from dataset_checks.context import RunContext, budget_of
from dataset_checks.discover import discover_identities
from dataset_checks.rules import parse_rules
from dataset_checks.run import Pipeline
from dataset_checks.vectors import load_table

PACKAGE = Path(dataset_checks.__file__).parent


def _mapped(tmp_path: Path, name: str, rows: int = 3000, dim: int = 64) -> tuple[np.ndarray, np.memmap]:
    x = np.random.default_rng(len(name)).standard_normal((rows, dim)).astype(np.float32)
    path = tmp_path / f"{name}.f32"
    x.tofile(path)
    return x, np.memmap(path, dtype=np.float32, mode="r").reshape(-1, dim)


@pytest.fixture
def quiet_watchers():
    """Budgets whose watcher thread stops at once: every trim then comes from a checkpoint, so the
    counts are exact. Resident memory reads as 1 GiB: past any of these budgets' headroom."""
    with mock.patch.object(memory.Budget, "_run"), \
            mock.patch.object(memory, "resident_bytes", return_value=2**30):
        yield


def _running_budget(table: np.memmap) -> memory.Budget:
    budget = memory.Budget(2**20)
    budget.watch(table)  # the table is larger than the budget's margin: the budget runs
    return budget


def test_a_context_checkpoints_its_own_budget_only(tmp_path, quiet_watchers):
    _, ma = _mapped(tmp_path, "a")
    _, mb = _mapped(tmp_path, "bb")
    a, b = _running_budget(ma), _running_budget(mb)  # b started last: the global pointed at b
    try:
        RunContext(budget=a).checkpoint()
        assert (a.trims, b.trims) == (1, 0)
        RunContext(budget=b).checkpoint()
        assert (a.trims, b.trims) == (1, 1)
        b.close()  # b's run ends first: a's checkpoints go on (the global's close silenced them)
        RunContext(budget=a).checkpoint()
        assert a.trims == 2
        RunContext(budget=b).checkpoint()  # closed: nothing runs
        assert b.trims == 1
    finally:
        a.close()
        b.close()
    RunContext(budget=a).checkpoint()
    assert a.trims == 2


def test_no_budget_and_an_unwatched_budget_checkpoint_nothing(tmp_path, quiet_watchers):
    RunContext().checkpoint()  # no budget: a no-op
    assert budget_of(None) is None and budget_of(RunContext()) is None
    idle = memory.Budget(2**20)  # nothing mapped is watched: it does not run
    RunContext(budget=idle).checkpoint()
    assert idle.trims == 0 and idle.peak == 0  # not even /proc was read


def test_two_runs_in_two_threads_each_trim_their_own_budget(tmp_path, quiet_watchers):
    _, ma = _mapped(tmp_path, "a")
    _, mb = _mapped(tmp_path, "bb")
    a, b = _running_budget(ma), _running_budget(mb)
    start = threading.Barrier(2)

    def run(context: RunContext, times: int) -> None:
        start.wait()
        for _ in range(times):
            context.checkpoint()

    try:
        threads = [threading.Thread(target=run, args=(RunContext(budget=a), 300)),
                   threading.Thread(target=run, args=(RunContext(budget=b), 200))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert (a.trims, b.trims) == (300, 200)
    finally:
        a.close()
        b.close()


def test_gather_and_release_rows_checkpoint_the_budget_they_are_given(tmp_path, quiet_watchers):
    x, ma = _mapped(tmp_path, "a")
    _, mb = _mapped(tmp_path, "bb")
    a, b = _running_budget(ma), _running_budget(mb)
    try:
        rows = np.arange(3 * memory.GATHER_PIECE) % len(ma)
        assert np.array_equal(memory.gather(ma, rows, budget=a), x[rows])
        assert (a.trims, b.trims) == (3, 0)  # one checkpoint per piece, of a alone
        memory.gather(ma, rows)  # no budget: no checkpoint
        memory.release_rows(ma, np.array([5, 1, 9]))
        assert (a.trims, b.trims) == (3, 0)
        memory.release_rows(ma, np.array([5, 1, 9]), budget=b)  # scattered rows: the budget's checkpoint
        assert (a.trims, b.trims) == (3, 1)
    finally:
        a.close()
        b.close()


def test_a_check_checkpoints_the_budget_of_its_data(tmp_path):
    root = _dataset(tmp_path / "data", seed=4)  # a crowd past SMALL: near_duplicates' identical_rows
    identities = discover_identities(root)
    table = load_table(root, identities)
    rules = parse_rules({"threshold": 0.5}, None)
    ours, other = memory.Budget(2**20), memory.Budget(2**20)
    data = CheckData(root=root, rules=rules, identities=identities, table=table, pairs=None,
                     threshold=rules.threshold, context=RunContext(budget=ours))
    with mock.patch.object(memory.Budget, "checkpoint", autospec=True) as checkpoint:
        res = run_checks(data, only=["near_duplicates"])["near_duplicates"]
        folder_pairs(table.vectors[:200], 0.95, 5)  # run alone: no budget, no checkpoint
    assert res.error is None and res.issues
    seen = [call.args[0] for call in checkpoint.call_args_list]
    assert seen and all(budget is ours for budget in seen)
    assert other not in seen


def test_check_data_without_a_context_keeps_no_budget():
    data = CheckData(root=None, rules=None, identities=[], table=None, pairs=None, threshold=0.9)
    assert data.context is None and budget_of(data.context) is None
    assert "context" not in repr(data)  # a run's budget is not part of what checks compare or print
    assert dataclasses.replace(data) == data


def _dataset(root: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    write_face01(root, "crowd", np.repeat(rng.standard_normal((1, 64)), 200, axis=0))
    for k in range(3):
        write_face01(root, f"p{k}", rng.standard_normal((4, 64)))
    return root


def test_two_pipelines_in_one_process_each_hand_their_own_budget_to_their_checks(tmp_path):
    pipelines, seen = [], []
    for k in range(2):
        root = _dataset(tmp_path / f"data{k}", seed=k)
        rules = parse_rules({"threshold": 0.5, "memory": "64MiB"}, None)
        pipeline = Pipeline(rules, root, discover_identities(root), tmp_path / f"cache{k}")
        with mock.patch.object(memory.Budget, "checkpoint", autospec=True) as checkpoint:
            pipeline.execute()
        seen.append({id(call.args[0]) for call in checkpoint.call_args_list})
        pipelines.append(pipeline)
    a, b = pipelines
    assert a.context.budget is a.budget and b.context.budget is b.budget
    assert a.budget is not b.budget
    assert seen == [{id(a.budget)}, {id(b.budget)}]  # near_duplicates' crowd checkpointed its run's only
    assert a.context.cache_dir == tmp_path / "cache0" and a.context.progress is None


# -- no module holds the run in progress ----------------------------------------------------------


def _module_state(path: Path) -> tuple[list[str], list[str]]:
    """(names declared `global` anywhere, module-level names bound to None) of a source file."""
    tree = ast.parse(path.read_text())
    declared = [name for node in ast.walk(tree) if isinstance(node, ast.Global) for name in node.names]
    unset = []
    for node in tree.body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        if isinstance(value, ast.Constant) and value.value is None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            unset += [t.id for t in targets if isinstance(t, ast.Name)]
    return declared, unset


@pytest.mark.parametrize("name", ["memory.py", "context.py"])
def test_no_global_statement_and_no_run_slot(name):
    declared, unset = _module_state(PACKAGE / name)
    assert declared == [], f"{name} rebinds module state: {declared}"
    assert unset == [], f"{name} has module-level slots for a run: {unset}"


def test_memory_has_no_global_checkpoint():
    assert not hasattr(memory, "_active")
    assert not hasattr(memory, "checkpoint")  # the budget's own method (Budget.checkpoint) instead
    sources = [p for p in PACKAGE.rglob("*.py")]
    users = [p.relative_to(PACKAGE) for p in sources if "memory import checkpoint" in p.read_text()]
    assert users == []
