"""Issue 21, done when: a generated FACE01 dataset with every state FACE01 really leaves behind
gives no folder "not checkable" and no test failing for a format reason, with the default rules
(`threshold: auto`, every check on), while its one real error still fails.

The states (each generated as FACE01 writes it: `np.savez(folder/'npKnown', name=[...],
efficientnetv2_arcface=[...])`, vectors float32 (N, 1, 512), not normalised, norms 30-92):
images FACE01 found no face in (not in the npz), faces its duplicate finder moved into same_face/
(still listed), noFace/ and multipleFaces/ subfolders, a folder where it found no face at all
(float64 (0,) arrays), and plain complete folders.
"""

from __future__ import annotations

import json

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see test_plugin.py)
import numpy as np
import pytest

from helpers import ARC, clustered, family_outcomes
from test_face01_folders import _face01, _image, _names
from test_report import PKG

D = 512


def _raw(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """FACE01's ONNX outputs are not normalised: every row at its own norm between 30 and 92."""
    return (x / np.linalg.norm(x, axis=1, keepdims=True) * rng.uniform(30, 92, (len(x), 1))).astype(np.float32)


def _dataset(root, seed: int) -> None:
    rng = np.random.default_rng(seed)
    people = ["Akira", "Beatriz", "Chen", "Dmitri", "Farida", "Gustav", "Hana", "Ines", "Jonas", "Kofi"]
    faces = dict(zip(people, clustered(rng, [8] * len(people), D, intra=0.6)))
    faces["Farida"][2] = faces["Akira"][0]  # the real error: a photo of Akira filed under Farida too
    for k, name in enumerate(people):
        files = _names(name, len(faces[name]))
        where = {f: "" for f in files}
        if name == "Beatriz":  # 2 images FACE01 found no face in: in the folder, not in the npz
            where.update({f"{name}_0009.jpg": "", f"{name}_0010.jpg": ""})
        if name == "Chen":  # 3 near-identical photos moved into same_face/, still listed
            where.update({f: "same_face" for f in files[:3]})
        if name == "Dmitri":  # FACE01's other subfolders, their images not listed
            where.update({f"{name}_group.jpg": "multipleFaces", f"{name}_blur.jpg": "noFace"})
        _face01(root, name, _raw(rng, faces[name]), files, where, seed=k)
    empty = root / "Emma"  # FACE01 found no face at all here
    empty.mkdir(parents=True)
    np.savez(empty / "npKnown", name=[], efficientnetv2_arcface=[])
    for k in range(2):
        _image(empty / f"Emma_{k + 1:04d}.jpg", 50_000 + k)  # seeds no other image uses


@pytest.mark.parametrize("seed", [0, 1])
def test_a_face01_dataset_as_users_keep_it_fails_only_its_real_error(pytester, seed):
    root = pytester.path / "faces"
    _dataset(root, seed)
    rules = pytester.path / "rules.yaml"
    rules.write_text("threshold: auto\nembeddings:\n  workers: 1\n", encoding="utf-8")  # built-in dlib: never needed
    result = pytester.runpytest_inprocess(PKG, "-p", "no:cacheprovider", "--report-dir", "out", "--rules", str(rules),
                                          f"--dataset={root}", "-W", "always")
    doc = json.loads((pytester.path / "out" / "findings.json").read_text(encoding="utf-8"))
    assert doc["embedding_key"] == ARC and doc["counts"]["not_checkable"] == 0
    assert doc["embedding"] == {}  # no image was embedded: the npz files are the record
    # test_identity: the planted photo fails both folders, every FACE01 state passes
    outcomes = family_outcomes(result.reprec, "test_identity")
    assert {k for k, v in outcomes.items() if v == "failed"} == {"Akira", "Farida"}, outcomes
    assert len(outcomes) == 11 and "same_face" not in outcomes and "noFace" not in outcomes
    # no other failing test but for that error (misfiled may name the planted face, nothing else)
    failed = {rep.nodeid.split("::")[-1] for rep in result.reprec.getreports("pytest_runtest_logreport")
              if rep.when == "call" and rep.failed}
    assert all(t.split("[")[0] in ("test_identity", "test_misfiled") and t.split("[")[-1][:-1] in ("Akira", "Farida")
               for t in failed), failed
    identities = doc["identities"]
    assert identities["Emma"]["status"] == "pass" and identities["Emma"]["vectors"] == 0
    assert any("FACE01 found no face in this folder" in p for p in identities["Emma"]["problems"])
    assert any("2 image(s) not in npKnown.npz (FACE01 found no face?)" in p for p in identities["Beatriz"]["problems"])
    assert any("3 listed face(s) are in same_face/" in p for p in identities["Chen"]["problems"])
    assert identities["Chen"]["vectors"] == 8 and identities["Beatriz"]["vectors"] == 8
    assert not any("stale" in p for v in identities.values() for p in v["problems"])
    # threshold: auto was calibrated on the raw vectors as on unit ones (ArcFace: about 0)
    assert doc["threshold_calibration"] is not None and 0.3 < doc["threshold"] < 0.99
