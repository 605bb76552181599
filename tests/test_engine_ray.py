"""`engine: ray` on a local Ray cluster with two workers: the local engine's pairs, array for
array; a driver killed halfway resumes from its checkpoints; `pytest dataset_checks` end to end.

Skips where Ray is not installed (pip install "dataset-checks[ray]"). One cluster serves the
module (2 CPUs, a 200 MB object store, no dashboard) and is shut down after it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see test_plugin.py)
import numpy as np
import pytest

ray = pytest.importorskip("ray", reason='engine: ray needs Ray: pip install "dataset-checks[ray]"')

import dataset_checks  # noqa: E402
from dataset_checks.engines import ranges as rg  # noqa: E402
from dataset_checks.engines.ray_engine import RayEngine  # noqa: E402
from dataset_checks.rules import IndexRules  # noqa: E402
from dataset_checks.search import find_pairs  # noqa: E402
from helpers import assert_same_result as assert_same  # noqa: E402
from helpers import engine_dataset as dataset  # noqa: E402
from helpers import search_account  # noqa: E402
from helpers import write_face01  # noqa: E402

IVF = IndexRules(type="ivf", nlist=16, gpu=False)
PKG = str(Path(dataset_checks.__file__).resolve().parent)


@pytest.fixture(scope="module")
def cluster():
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, object_store_memory=200 << 20, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.WARNING)
    # the address to join, and the cluster's token (Ray >= 2.50 starts local clusters with token
    # authentication; a process whose HOME differs, as under pytester, must be told where it is)
    token = Path.home() / ".ray" / "auth_token"
    yield ray.get_runtime_context().gcs_address, token if token.is_file() else None
    if started:
        ray.shutdown()




@pytest.mark.parametrize("seed, threshold, rules", [
    (0, 0.6, IVF),
    (1, 0.5, IVF),
    (2, 0.7, IndexRules(type="ivf", nlist=16, gpu=False, scan="faiss")),
    (3, 0.6, IndexRules(type="flat", gpu=False)),
    (4, 0.55, IndexRules(type="ivf", nlist=16, gpu=False, certify=True)),
    (5, 0.6, IndexRules(type="caps", gpu=False)),
])
def test_ray_workers_find_exactly_the_local_engines_pairs(cluster, seed, threshold, rules):
    x, labels = dataset(seed)
    local = find_pairs(x, labels, threshold, rules)
    remote = find_pairs(x, labels, threshold, rules, engine=RayEngine(ranges=5))
    assert len(local) > 0
    assert_same(local, remote)
    info = remote.info["engine"]
    assert info["type"] == "ray" and info["cpus"] == 2 and info["nodes"] == 1
    assert info["table"] == "object store" and info["computed"] == info["ranges"] > 1
    assert search_account(remote.info) == search_account(local.info)  # candidates, cells, certificate


def test_ray_workers_map_the_table_file(cluster, tmp_path):
    x, labels = dataset(4)
    x.tofile(tmp_path / "vectors.f32")
    mapped = np.memmap(tmp_path / "vectors.f32", dtype=np.float32, mode="r", shape=x.shape)
    remote = find_pairs(mapped, labels, 0.6, IVF, engine=RayEngine(ranges=4))
    assert remote.info["engine"]["table"] == "file"
    assert_same(find_pairs(x, labels, 0.6, IVF), remote)


def test_a_table_file_workers_cannot_see_goes_through_the_object_store(cluster, tmp_path, monkeypatch):
    # a node without the shared filesystem: its task fails to map the file, the table is put
    # into the object store once and the range runs again
    x, labels = dataset(5)
    monkeypatch.setattr(rg, "table_file", lambda vectors, x: rg.TableFile(
        str(tmp_path / "elsewhere.f32"), *x.shape, "0" * 64, (0, 0, 0)))
    remote = find_pairs(x, labels, 0.6, IVF, engine=RayEngine(ranges=4))
    info = remote.info["engine"]
    assert info["table"] == "object store" and "cannot map" in info["table_fallback"]
    assert_same(find_pairs(x, labels, 0.6, IVF), remote)


class Interrupted(Exception):
    pass


def test_an_interrupted_ray_run_resumes_with_the_missing_ranges(cluster, tmp_path):
    x, labels = dataset(6)

    def stop(done):
        if done == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        find_pairs(x, labels, 0.6, IVF, engine=RayEngine(ranges=6, checkpoints=tmp_path, after_range=stop))
    again = find_pairs(x, labels, 0.6, IVF, engine=RayEngine(ranges=6, checkpoints=tmp_path))
    info = again.info["engine"]
    assert info["resumed"] == 2 and info["computed"] == info["ranges"] - 2
    assert_same(find_pairs(x, labels, 0.6, IVF), again)
    assert ray.is_initialized()  # the module's cluster: reused, not shut down


def test_a_killed_driver_with_its_own_cluster_resumes_on_another(cluster, tmp_path):
    # a separate driver starts its own local cluster (2 CPUs) and dies (os._exit) after three
    # checkpointed ranges; this process resumes on the module's cluster
    x, labels = dataset(8)
    x.tofile(tmp_path / "vectors.f32")
    np.save(tmp_path / "labels.npy", labels)
    script = f"""
import os, pathlib, numpy as np
from dataset_checks.engines.ray_engine import RayEngine
from dataset_checks.rules import IndexRules
from dataset_checks.search import find_pairs
x = np.memmap({str(tmp_path / "vectors.f32")!r}, dtype=np.float32, mode="r", shape={x.shape!r})
labels = np.load({str(tmp_path / "labels.npy")!r})
stop = lambda done: os._exit(17) if done == 3 else None
find_pairs(x, labels, 0.6, IndexRules(type="ivf", nlist=16, gpu=False),
           engine=RayEngine(ranges=8, checkpoints=pathlib.Path({str(tmp_path / "ranges")!r}), after_range=stop,
                            num_cpus=2, object_store_memory=128 << 20))
"""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 17, proc.stderr[-3000:]
    mapped = np.memmap(tmp_path / "vectors.f32", dtype=np.float32, mode="r", shape=x.shape)
    again = find_pairs(mapped, labels, 0.6, IVF, engine=RayEngine(checkpoints=tmp_path / "ranges"))
    info = again.info["engine"]
    plan = json.loads(next((tmp_path / "ranges").glob("*/plan.json")).read_text())
    assert plan["requested"] == 8 and info["ranges"] == len(plan["bounds"])  # the killed run's cut, kept
    assert info["resumed"] == 3 and info["computed"] == info["ranges"] - 3
    assert_same(find_pairs(x, labels, 0.6, IVF), again)


def test_pytest_dataset_checks_with_engine_ray_end_to_end(cluster, pytester, monkeypatch):
    # rules.yaml joins the module's cluster (engine.address); findings.csv is the local run's,
    # byte for byte; a second run with --engine ray resumes every range and starts no cluster
    address, token = cluster
    if token is not None:
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    rng = np.random.default_rng(0)
    root = pytester.path / "faces"
    centres = rng.standard_normal((60, 32))
    for k, c in enumerate(centres):
        v = c / np.linalg.norm(c) + 0.05 * rng.standard_normal((25, 32))
        if k % 10 == 1:
            v[0] = centres[k - 1] / np.linalg.norm(centres[k - 1])  # a photo of the previous person
        write_face01(root, f"person_{k:02d}", v.astype(np.float32))
    common = ["index: {type: ivf, nlist: 16}", "threshold: 0.9", f"dataset: {root}", "incremental: {enabled: false}"]
    (pytester.path / "local.yaml").write_text("\n".join(common + ["engine: local"]) + "\n")
    (pytester.path / "ray.yaml").write_text("\n".join(common + [f"engine: {{type: ray, address: '{address}', ranges: 3}}"]) + "\n")
    base = [PKG, "-p", "no:cacheprovider", "-p", "no:randomly", "-q"]
    local = pytester.runpytest_subprocess(*base, "--rules", "local.yaml", "--report-dir", "out_local")
    remote = pytester.runpytest_subprocess(*base, "--rules", "ray.yaml", "--report-dir", "out_ray")
    assert local.ret == remote.ret == 1  # the planted photos fail
    csv_local = (pytester.path / "out_local" / "findings.csv").read_bytes()
    assert csv_local.count(b"\n") > 6
    assert (pytester.path / "out_ray" / "findings.csv").read_bytes() == csv_local
    engine = json.loads((pytester.path / "out_ray" / "findings.json").read_text())["search"]["engine"]
    assert engine["type"] == "ray" and engine["address"] == address and engine["ranges"] == 3
    assert engine["computed"] == 3 and engine["table"] == "file"
    assert "engine ray: 3 ranges of lists on 2 CPU(s)" in remote.stdout.str()
    again = pytester.runpytest_subprocess(*base, "--rules", "local.yaml", "--engine", "ray", "--report-dir", "out_again")
    assert again.ret == 1
    engine = json.loads((pytester.path / "out_again" / "findings.json").read_text())["search"]["engine"]
    assert engine["resumed"] == 3 and engine["computed"] == 0 and "startup_seconds" not in engine
    assert (pytester.path / "out_again" / "findings.csv").read_bytes() == csv_local
