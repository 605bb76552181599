"""The calibration check: its numbers equal a direct computation, its SVG is well-formed and puts
each threshold where it belongs, names are escaped, and it shows up in a real run."""

from __future__ import annotations

import json

import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see test_plugin.py)
import numpy as np
import pytest

from dataset_checks.check_run import run_checks
from dataset_checks.checks import CheckData, get
from dataset_checks.checks.calibration import sample_same_similarities
from dataset_checks.rules import Rules, default_settings
from dataset_checks.threshold import calibrate_threshold
from helpers import cross_identity_only, write_face01

PKG = str(Path(__file__).resolve().parents[1] / "dataset_checks")
LFW = Path(__file__).resolve().parents[1].parent / "shared" / "lfw"
SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = "<script>alert('x')</script>&amp;\"'"


def _table(sizes, dim=16, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes).astype(np.int32)
    centres = rng.standard_normal((len(sizes), dim))
    x = centres[labels] + spread * rng.standard_normal((labels.size, dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return SimpleNamespace(vectors=x, identity_of=labels, key="efficientnetv2_arcface",
                           identities=[SimpleNamespace(name=f"id{i}") for i in range(len(sizes))])


def _run(table, threshold, choice=None, overrides=None, **params):
    rules = Rules(threshold=threshold, identity_thresholds=overrides or {}, threshold_auto=choice is not None)
    data = CheckData(root=Path("."), rules=rules, identities=[], table=table, pairs=None, threshold=threshold,
                     threshold_choice=choice)
    cls = get("calibration")
    settings = default_settings(cls)
    if params:
        settings = type(settings)(settings.enabled, settings.severity, {**settings.params, **params})
    check = cls()
    issues = check.run(data, settings)
    return check, issues


def _svg(check) -> ET.Element:
    html = check.report_html()
    return ET.fromstring(html[html.index("<svg"): html.index("</svg>") + 6])


def test_summary_equals_direct_computation_when_every_pair_fits():
    table = _table([1, 2, 5, 9, 3, 12, 1, 7])
    x, lab, t = table.vectors.astype(np.float64), table.identity_of, 0.4
    r, c = np.triu_indices(len(x), k=1)
    sims = np.einsum("ij,ij->i", x[r], x[c])
    same, cross = sims[lab[r] == lab[c]], sims[lab[r] != lab[c]]
    check, issues = _run(table, t)
    s = check.summary()
    assert json.loads(json.dumps(s)) == s  # JSON-ready
    assert s["cross_exact"] and s["same_exact"] and issues == []
    assert (s["cross_pairs"], s["cross_sampled"], s["same_pairs"], s["same_sampled"]) == \
        (cross.size, cross.size, same.size, same.size)
    assert s["cross_at_threshold_sampled"] == int(np.sum(cross >= t))
    assert s["same_at_threshold_sampled"] == int(np.sum(same >= t))
    assert s["false_match_rate_sample"] == pytest.approx(np.mean(cross >= t))
    assert s["same_share_at_threshold"] == pytest.approx(np.mean(same >= t))
    assert s["expected_chance_pairs_sample"] == pytest.approx(np.sum(cross >= t))
    assert s["cross_quantiles"]["max"] == pytest.approx(cross.max(), abs=1e-6)
    assert s["same_quantiles"]["p50"] == pytest.approx(np.quantile(same, 0.5), abs=1e-6)
    np.testing.assert_allclose(np.sort(check.same), np.sort(same), atol=1e-6)
    # too few cross-folder pairs to fit: the suggestion is the model's floor (0.85 for arcface)
    assert s["suggested_threshold"] == 0.85 and s["suggested_source"] == "fallback"


def test_same_folder_sample_is_uniform_over_pairs():
    # folder 0: 2 faces (1 pair), folder 1: 60 faces (1770 pairs); uniform over folders would
    # give folder 0 half the sample, uniform over pairs 1 in 1771
    table = _table([2, 60, 1], dim=8, seed=1)
    sims, total = sample_same_similarities(table.vectors, table.identity_of, 1500, seed=3)
    assert total == 1 + 1770 and sims.size == 1500
    only = float(table.vectors[0] @ table.vectors[1])
    share = np.mean(np.isclose(sims, only, atol=1e-7))
    assert share < 0.01
    all_sims, _ = sample_same_similarities(table.vectors, table.identity_of, 10**6)
    assert all_sims.size == total and np.abs(sims.mean() - all_sims.mean()) < 0.03
    assert sample_same_similarities(table.vectors[:3], np.array([0, 1, 2]), 100)[1] == 0


@pytest.fixture(scope="module")
def auto_check():
    table = _table([30] * 8 + [5] * 40, dim=24, seed=2, spread=1.5)  # ~60k cross-folder pairs
    choice = calibrate_threshold(table.vectors, table.identity_of, floor=0.3, ceiling=0.9)
    overrides = {HOSTILE: 0.55, "id3": choice.value - 0.05}
    check, issues = _run(table, choice.value, choice, overrides)
    return check, issues, choice


def test_svg_is_well_formed_and_marks_each_threshold_in_place(auto_check):
    check, issues, choice = auto_check
    assert choice.source != "fallback" and issues == []
    root = _svg(check)
    panels = root.findall(f".//{SVG}g[@class='dc-cal-panel']")
    assert [p.get("data-panel") for p in panels] == ["density", "tail"]
    expected = dict(check.markers())
    assert expected["threshold"] == choice.value and {"floor", "ceiling", "budget"} <= set(expected)
    for panel in panels:
        lo, hi = float(panel.get("data-lo")), float(panel.get("data-hi"))
        left, width = float(panel.get("data-left")), float(panel.get("data-width"))
        seen = {}
        for ln in panel.findall(f"{SVG}line[@class='dc-cal-mark']"):
            v = float(ln.get("data-value"))
            assert float(ln.get("x1")) == pytest.approx(left + (v - lo) / (hi - lo) * width, abs=0.01)
            seen[ln.get("data-kind")] = v
        assert seen == {k: pytest.approx(v, abs=1e-6) for k, v in expected.items() if lo <= v <= hi}
        assert "threshold" in seen
        ticks = [float(t.get("data-value")) for t in panel.findall(f"{SVG}line[@class='dc-cal-override']")]
        assert sorted(ticks) == pytest.approx(sorted(v for v in check.overrides.values() if lo <= v <= hi), abs=1e-6)
    s = check.summary()
    # with a fit, the fitted rate at the threshold keeps the expected chance pairs within the budget
    assert s["expected_chance_pairs_fit"] <= s["chance_pairs_budget"] * 1.001 or choice.source != "data"


def test_hostile_names_are_escaped(auto_check):
    check, _, _ = auto_check
    html = check.report_html()
    assert "<script>" not in html and "alert(&#x27;x&#x27;)" in html
    _svg(check)  # still parses with the hostile name inside a <title>


def test_fixed_threshold_far_below_the_data_is_one_info_issue():
    table = _table([30] * 8 + [5] * 40, dim=24, seed=2, spread=1.5)
    check, issues = _run(table, 0.1)
    s = check.summary()
    assert s["threshold_source"] == "fixed" and s["suggested_threshold"] > 0.1
    assert len(issues) == 1 and issues[0].severity == "info" and issues[0].identity == ""
    assert f"{s['suggested_threshold']:.4f}" in issues[0].detail
    rules = Rules(threshold=0.1)
    data = CheckData(root=Path("."), rules=rules, identities=[], table=table, pairs=None, threshold=0.1)
    result = run_checks(data, only=["calibration"])["calibration"]
    assert result.error is None and result.outcome().status == "pass"


def test_report_has_the_section_and_the_run_passes(pytester):
    root = pytester.path / "data"
    rng = np.random.default_rng(3)
    for name, n in (("Alice", 4), ("Bob", 2), ("Carol", 1), ("D<i>ve & 'co'", 3)):
        write_face01(root, name, rng.standard_normal((n, 16)).astype(np.float32))
    rules = cross_identity_only(pytester.path, keep=("calibration",))  # random faces trip misfiled
    rec = pytester.inline_run(PKG, "-p", "no:cacheprovider", "--report-dir", "out", "--dataset", str(root),
                              "--threshold", "0.99", "--rules", str(rules))
    assert rec.ret == pytest.ExitCode.OK
    out = pytester.path / "out"
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "id='dc-check-calibration'" in html and "class='dc-cal-panel'" in html
    assert "D<i>ve" not in html
    doc = json.loads((out / "findings.json").read_text(encoding="utf-8"))
    s = doc["checks"]["calibration"]["summary"]
    assert s["threshold"] == 0.99 and s["same_pairs"] == 6 + 1 + 3 and s["cross_pairs"] == (10 * 10 - 16 - 4 - 1 - 9) // 2


@pytest.mark.skipif(not (LFW.is_dir() and any(LFW.glob("*/npKnown.npz"))), reason=f"LFW not found at {LFW}")
def test_lfw(tmp_path):
    from dataset_checks.discover import discover_identities
    from dataset_checks.vectors import load_table

    table = load_table(LFW, discover_identities(LFW), "dlib")
    choice = calibrate_threshold(table.vectors, table.identity_of, floor=0.95)
    check, issues = _run(table, choice.value, choice)
    s = check.summary()
    assert 0.96 < s["threshold"] < 0.99 and s["cross_pairs"] > 80_000_000
    assert s["expected_chance_pairs_fit"] == pytest.approx(choice.expected_pairs, rel=1e-6)
    assert 0.0 < s["same_share_at_threshold"] < 0.2  # dlib: most same-person pairs sit below 0.97
    assert s["same_quantiles"]["p50"] > s["cross_quantiles"]["p99"]
    _svg(check)
    # the fixed 0.95 of the model, on LFW's 87M cross-folder pairs: far over the budget
    fixed, issues = _run(table, 0.95)
    assert len(issues) == 1 and fixed.summary()["expected_chance_pairs_fit"] > 100
    (tmp_path / "lfw_calibration.html").write_text(
        "<html><meta charset='utf-8'><body>" + check.report_html() + fixed.report_html() + "</body></html>",
        encoding="utf-8")
