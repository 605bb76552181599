"""Issue 20: under `threshold: auto` the gate does not move when the data does. A baseline
records the threshold it was accepted at (and the calibration settings); a gate run uses it
instead of recalibrating, so removing one planted error never fails untouched pairs. Only
--update-baseline (recalibrates, records) or an explicit --threshold moves it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see test_plugin.py)
import numpy as np
import pytest

from dataset_checks.baseline import HEADER, THRESHOLD_ROW, Baseline, BaselineError
from helpers import cross_identity_only, write_face01
from test_report import PKG

FOLDERS, PER, DIM, PLANTED = 60, 8, 10, 3
LOOKALIKE = 0.964


def faces(seed: int = 1) -> tuple[dict[str, list[str]], dict[str, np.ndarray]]:
    """60 folders of 8 random faces (d=10: chance pairs reach ~0.96, so `threshold: auto`
    calibrates from the data), and 3 planted photos: a near copy of a face of the next folder
    filed in this one. The copies make the cross-folder tail heavy: removing one lowers the
    calibrated threshold (premise checked in the test)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((FOLDERS * PER, DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    files = {f"P{f:03d}": [f"P{f:03d}_{k:04d}.jpg" for k in range(PER)] for f in range(FOLDERS)}
    vecs = {f"P{f:03d}": x[f * PER:(f + 1) * PER] for f in range(FOLDERS)}
    for k in range(PLANTED):
        src = k * 7 + 3
        v = x[src * PER] + rng.standard_normal(DIM) * 0.03
        into = f"P{src - 1:03d}"
        files[into] = [*files[into], f"{into}_planted.jpg"]
        vecs[into] = np.vstack([vecs[into], v / np.linalg.norm(v)])
    # an untouched look-alike pair between the two thresholds (P030_0001 ~ P045_0001, cosine 0.964)
    u = vecs["P045"][1]
    r = np.random.default_rng(9).standard_normal(DIM)
    r -= (r @ u) * u
    vecs["P030"][1] = LOOKALIKE * u + np.sqrt(1 - LOOKALIKE**2) * r / np.linalg.norm(r)
    return files, vecs


def write(root: Path, files, vecs) -> None:
    for name in files:
        write_face01(root, name, vecs[name], files[name])


def go(pytester, rules: Path, *args: str):
    return pytester.runpytest_inprocess(PKG, "-p", "no:cacheprovider", "--report-dir", "out", "--rules", str(rules),
                                        *args)


def doc(pytester) -> dict:
    return json.loads((pytester.path / "out" / "findings.json").read_text(encoding="utf-8"))


def failed(result) -> set[str]:
    return {r.nodeid for r in result.reprec.getreports("pytest_runtest_logreport") if r.when == "call" and r.failed}


def header(result) -> str:
    return next(line for line in result.outlines if line.startswith("dataset_checks: cosine threshold"))


def rows(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.reader(fh))


def cross_pairs_between(vecs, lo: float, hi: float) -> int:
    names = sorted(vecs)
    x = np.vstack([vecs[n] for n in names]).astype(np.float32).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.concatenate([[i] * len(vecs[n]) for i, n in enumerate(names)])
    sims = x @ x.T
    cross = np.triu(labels[:, None] != labels[None, :], 1)
    return int(np.count_nonzero(cross & (sims >= lo) & (sims < hi)))


@pytest.fixture
def setup(pytester):
    root = pytester.path / "data"
    files, vecs = faces()
    write(root, files, vecs)
    rules = cross_identity_only(pytester.path / "rules", extra="threshold: auto\n")
    return root, rules, files, vecs


def test_removing_a_planted_photo_does_not_move_the_gate(pytester, setup):
    root, rules, files, vecs = setup
    base = pytester.path / "gate" / "baseline.csv"
    result = go(pytester, rules, "--dataset", str(root), "--baseline", str(base), "--update-baseline")
    assert result.ret == pytest.ExitCode.OK
    accepted = doc(pytester)
    t1 = accepted["threshold"]
    assert accepted["threshold_choice"].startswith("auto from the data")  # calibrated, not the floor
    written = rows(base)
    assert tuple(written[0]) == HEADER and written[1][0] == THRESHOLD_ROW and float(written[1][5]) == t1
    recorded = Baseline.load(base).threshold
    assert recorded["value"] == t1 and recorded["settings"]["seed"] == 0 and recorded["settings"]["centre"] is False
    assert {r[0] for r in written[2:]} == {"cross_identity"} and len(written) - 2 >= PLANTED

    # remove one planted photo: one accepted error fixed, nothing else touched
    name = "P002"
    keep = [k for k, f in enumerate(files[name]) if not f.endswith("_planted.jpg")]
    files[name] = [files[name][k] for k in keep]
    vecs[name] = vecs[name][keep]
    write(root, files, vecs)

    result = go(pytester, rules, "--dataset", str(root), "--baseline", str(base))
    assert result.ret == pytest.ExitCode.OK and not failed(result)  # removing an error is never a new one
    gate = doc(pytester)
    assert gate["threshold"] == t1
    assert "from the baseline baseline.csv" in gate["threshold_choice"] and "not recalibrated" in gate["threshold_choice"]
    assert gate["threshold_calibration"] is None and gate["threshold_record"]["from"] == "baseline"
    assert header(result).startswith(f"dataset_checks: cosine threshold {t1:g} (from the baseline baseline.csv")
    assert rows(base) == written  # a gate never writes the baseline

    # an explicit --threshold wins, and says so
    result = go(pytester, rules, "--dataset", str(root), "--baseline", str(base), "--threshold", "0.999")
    assert result.ret == pytest.ExitCode.OK
    assert header(result).startswith("dataset_checks: cosine threshold 0.999 (from --threshold)")
    result.stdout.fnmatch_lines([f"dataset_checks: note: the threshold 0.999 from --threshold wins over the baseline "
                                 f"baseline.csv's recorded {t1:g}"])
    assert doc(pytester)["threshold"] == 0.999

    # --update-baseline recalibrates: the threshold moves, and is recorded
    result = go(pytester, rules, "--dataset", str(root), "--baseline", str(base), "--update-baseline")
    assert result.ret == pytest.ExitCode.OK
    moved = doc(pytester)
    t2 = moved["threshold"]
    assert t2 < t1 and moved["threshold_choice"].startswith("auto from the data")
    assert Baseline.load(base).threshold["value"] == t2
    # the premise: recalibrating at the gate would have failed untouched pairs in [t2, t1)
    newly = cross_pairs_between(vecs, t2, t1)
    assert newly >= 1
    accepted_pairs = [r for r in rows(base)[2:] if r[0] == "cross_identity"]
    assert len(accepted_pairs) == len(written) - 2 - 1 + newly  # one fixed, the moved-in ones accepted


def test_other_calibration_settings_recalibrate_and_say_why(pytester, setup):
    root, rules, _, _ = setup
    base = pytester.path / "baseline.csv"
    assert go(pytester, rules, "--dataset", str(root), "--baseline", str(base), "--update-baseline").ret == 0
    t1 = doc(pytester)["threshold"]
    other = cross_identity_only(pytester.path / "rules2", extra="threshold: auto\ncalibration: {seed: 5}\n")
    result = go(pytester, other, "--dataset", str(root), "--baseline", str(base))
    assert doc(pytester)["threshold_choice"].startswith("auto from the data")
    result.stdout.fnmatch_lines([f"dataset_checks: note: the baseline baseline.csv's threshold {t1:g} was accepted "
                                 "under other calibration settings (seed 0 -> 5)*"])


def test_old_baseline_without_a_record_still_reads_and_recalibrates(pytester, setup):
    root, rules, _, _ = setup
    base = pytester.path / "old.csv"
    base.write_text(",".join(HEADER) + "\ncross_identity,P001,P001_0000.jpg,P002,P002_0000.jpg,0.5,,\n",
                    encoding="utf-8")
    assert Baseline.load(base).threshold is None and len(Baseline.load(base).keys) == 1
    result = go(pytester, rules, "--dataset", str(root), "--baseline", str(base))
    assert doc(pytester)["threshold_choice"].startswith("auto from the data")
    result.stdout.fnmatch_lines(["dataset_checks: note: the baseline old.csv records no threshold*"])


@pytest.mark.parametrize("row, message", [
    ("#threshold,,,,,0.97,fixed,{}", "not one this tool wrote"),
    ("#threshold,,,,,0.97,auto,not json", "not one this tool wrote"),
    ("#threshold,,,,,nan,auto,{}", r"not in \[-1, 1\]"),
    ("#threshold,,,,,1.5,auto,{}", r"not in \[-1, 1\]"),
])
def test_a_broken_record_is_a_clear_error(tmp_path, row, message):
    path = tmp_path / "b.csv"
    path.write_text(",".join(HEADER) + "\n" + row + "\n", encoding="utf-8")
    with pytest.raises(BaselineError, match=f"b.csv: line 2: .*{message}"):
        Baseline.load(path)


def test_the_record_round_trips_a_hostile_key(tmp_path):
    from dataset_checks.baseline import threshold_row

    settings = {"key": "%3Cscript%3E,\"x\"", "centre": False, "floor": 0.85, "ceiling": 0.98, "chance_pairs": 1.0,
                "sample_pairs": 2_000_000, "seed": 0}
    path = tmp_path / "b.csv"
    with open(path, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows([HEADER, threshold_row({"value": 0.9611, "settings": settings})])
    assert "<script>" not in path.read_text(encoding="utf-8")
    assert Baseline.load(path).threshold == {"value": 0.9611, "settings": settings}
