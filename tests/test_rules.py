"""rules.yaml: a valid file round-trips; every error names the file, the key, expected and found."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from dataset_checks.checks import all_checks
from dataset_checks.rules import default_settings, AllowedPair, IndexRules, Rules, RulesError, load_rules

PROJECT_RULES = Path(__file__).resolve().parents[1] / "rules.yaml"


def write(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_full_file_round_trip(tmp_path):
    (tmp_path / "data").mkdir()
    path = write(
        tmp_path,
        """
dataset: data
embeddings:
  key: dlib
threshold: 0.97
index:
  type: ivf
  flat_below: 100
  nlist: 64
  nprobe: 8
  recall_target: 0.99
  gpu: false
  scan: faiss
identity_thresholds:
  Some_Name: 0.9
  高橋一生: 0.95
allow:
  - identities: [Olsen_Ashley, Olsen_Mary-Kate]
    reason: "  twins  "
bad_input: warn
""",
    )
    rules = replace(load_rules(path), checks={})  # the checks' sections: test_checks_framework.py
    assert rules == Rules(
        source=path.resolve(),
        dataset=(tmp_path / "data").resolve(),
        vector_key="dlib",
        threshold=0.97,
        index=IndexRules(type="ivf", nlist=64, nprobe=8, flat_below=100, gpu=False, recall_target=0.99, scan="faiss"),
        identity_thresholds={"Some_Name": 0.9, "高橋一生": 0.95},
        allow=(AllowedPair(frozenset({"Olsen_Ashley", "Olsen_Mary-Kate"}), "twins"),),
        bad_input="warn",
        threshold_from=str(path.resolve()),
    )
    assert rules.threshold_for("高橋一生") == 0.95
    assert rules.threshold_for("Other") == 0.97
    assert rules.min_threshold == 0.9
    assert rules.allowed("Olsen_Mary-Kate", "Olsen_Ashley").reason == "twins"
    assert rules.allowed("Olsen_Ashley", "Other") is None


def test_defaults_and_auto_values(tmp_path):
    rules = load_rules(write(tmp_path, "embeddings:\n  key: auto\nindex:\n  nlist: auto\n  nprobe: auto\n  gpu: auto\n"))
    assert rules.dataset is None and rules.vector_key is None
    assert rules.index == IndexRules()
    assert rules.threshold == 0.85 and rules.bad_input == "fail" and rules.allow == ()
    defaults = load_rules(None)  # no rules file: the documented defaults, every check with its own
    assert replace(defaults, checks={}) == replace(Rules(), threshold_auto=True)
    assert all(defaults.checks[c.name] == default_settings(c) for c in all_checks())
    # an empty file is all defaults
    assert load_rules(write(tmp_path, "", "empty.yaml")).threshold == 0.85


def test_project_rules_file_is_valid():
    rules = load_rules(PROJECT_RULES)
    assert rules.dataset is None
    # the shipped file is the built-in defaults, spelled out (the demo's allowlist belongs to the demo)
    assert replace(rules, source=None, threshold_from="built-in default") == load_rules(None)


def test_relative_dataset_resolves_against_the_rules_folder(tmp_path, monkeypatch):
    (tmp_path / "sub" / "data").mkdir(parents=True)
    path = write(tmp_path / "sub", "dataset: data\n")
    monkeypatch.chdir(tmp_path)
    assert load_rules(path).dataset == (tmp_path / "sub" / "data").resolve()


@pytest.mark.parametrize(
    "text, key, expected, found",
    [
        ("thresold: 0.9\n", "thresold", "one of the known keys", "unknown key "),
        ("index:\n  typ: flat\n", "index.typ", "one of the known keys", "unknown key "),
        ("embeddings:\n  keys: dlib\n", "embeddings.keys", "one of the known keys", "unknown key "),
        ("threshold: high\n", "threshold", "a number in [-1, 1]", "'high'"),
        ("threshold: true\n", "threshold", "a number in [-1, 1]", "True"),
        ("threshold: 1.5\n", "threshold", "a number in [-1, 1]", "1.5"),
        ("threshold: -1.01\n", "threshold", "a number in [-1, 1]", "-1.01"),
        ("threshold: .nan\n", "threshold", "a number in [-1, 1]", "nan"),
        ("identity_thresholds:\n  Bob: 2\n", "identity_thresholds.Bob", "a number in [-1, 1]", "2.0"),
        ("identity_thresholds: [1]\n", "identity_thresholds", "a mapping", "[1]"),
        ("index:\n  type: hnsw\n", "index.type", "one of auto, flat, caps, ivf", "'hnsw'"),
        ("index:\n  nlist: 0\n", "index.nlist", "'auto' or a whole number >= 1", "0"),
        ("index:\n  nprobe: 2.5\n", "index.nprobe", "'auto' or a whole number >= 1", "2.5"),
        ("index:\n  gpu: maybe\n", "index.gpu", "auto, true or false", "'maybe'"),
        ("index:\n  flat_below: -1\n", "index.flat_below", "a whole number >= 0", "-1"),
        ("index:\n  recall_target: 0\n", "index.recall_target", "a number in (0, 1]", "0"),
        ("index:\n  scan: gpu\n", "index.scan", "one of lists, faiss", "'gpu'"),
        ("index: fast\n", "index", "a mapping", "'fast'"),
        ("embeddings:\n  key: 5\n", "embeddings.key", "'auto' or the name", "5"),
        ("bad_input: ignore\n", "bad_input", "one of fail, warn", "'ignore'"),
        ("dataset: 5\n", "dataset", "a path to the dataset root", "5"),
        ("allow: yes\n", "allow", "a list of", "True"),
        ("allow:\n  - identities: [A, B]\n", "allow[0].reason", "a non-empty reason", "None"),
        ("allow:\n  - identities: [A, B]\n    reason: '  '\n", "allow[0].reason", "a non-empty reason", "'  '"),
        ("allow:\n  - identities: [A]\n    reason: r\n", "allow[0].identities", "a list of two different", "['A']"),
        ("allow:\n  - identities: [A, A]\n    reason: r\n", "allow[0].identities", "a list of two different", "['A', 'A']"),
        ("allow:\n  - identities: [A, B]\n    reason: r\n    why: x\n", "allow[0].why", "one of the known keys", "unknown key "),
        ("- a\n- b\n", "", "a mapping", "['a', 'b']"),
        ("incremental: on\n", "incremental", "a mapping", "True"),
        ("incremental:\n  enabled: sometimes\n", "incremental.enabled", "true or false", "'sometimes'"),
        ("incremental:\n  max_changed: -1\n", "incremental.max_changed", "'auto', a whole number", "-1"),
        ("incremental:\n  max_changed: 150%\n", "incremental.max_changed", "'auto', a whole number", "'150%'"),
        ("incremental:\n  max_changed: lots%\n", "incremental.max_changed", "'auto', a whole number", "'lots%'"),
        ("incremental:\n  margin: 0.5\n", "incremental.margin", "'auto' or a number in [0, 0.2]", "0.5"),
        ("incremental:\n  max_imbalance_growth: 0.5\n", "incremental.max_imbalance_growth", "a number >= 1", "0.5"),
        ("incremental:\n  full: true\n", "incremental.full", "one of the known keys", "unknown key "),
    ],
)
def test_each_error_names_file_key_expected_found(tmp_path, text, key, expected, found):
    path = write(tmp_path, text)
    with pytest.raises(RulesError) as info:
        load_rules(path)
    err = info.value
    msg = str(err)
    assert err.key == key
    assert str(path.resolve()) in msg or str(path) in msg, msg
    assert f"key '{key}'" in msg
    assert f"expected {expected}" in msg
    assert msg.endswith(f"found {found}") or f"found {found}" in msg, msg
    assert "\n" not in msg


def test_missing_dataset_path(tmp_path):
    path = write(tmp_path, "dataset: no_such_folder\n")
    with pytest.raises(RulesError) as info:
        load_rules(path)
    msg = str(info.value)
    assert str(path.resolve()) in msg
    assert "key 'dataset'" in msg and "expected an existing folder" in msg
    assert str((tmp_path / "no_such_folder").resolve()) in msg


def test_dataset_that_is_a_file(tmp_path):
    (tmp_path / "data").write_text("x")
    path = write(tmp_path, "dataset: data\n")
    with pytest.raises(RulesError, match=r"key 'dataset': expected an existing folder"):
        load_rules(path)


def test_broken_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "threshold: 0.9\nindex: [flat\nallow: []\n")
    with pytest.raises(RulesError) as info:
        load_rules(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: key 'line ")
    assert "expected valid YAML" in msg
    assert "found " in msg


def test_tab_indented_yaml(tmp_path):
    path = write(tmp_path, "index:\n\ttype: flat\n")
    with pytest.raises(RulesError, match=r"expected valid YAML"):
        load_rules(path)


def test_missing_rules_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert str(info.value) == f"{path}: key '(file)': expected an existing rules file, found 'no such file'"


def test_non_utf8_rules_file(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_bytes(b"threshold: 0.9\n# caf\xe9\n")
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert str(path) in str(info.value) and "a readable UTF-8 YAML file" in str(info.value)


def test_calibration_section(tmp_path):
    rules = load_rules(write(tmp_path, "threshold: auto\ncalibration:\n  chance_pairs: 3\n  ceiling: 0.97\n"
                                       "  sample_pairs: 500000\n  seed: 4\n"))
    assert rules.threshold_auto and rules.calibration.chance_pairs == 3.0 and rules.calibration.ceiling == 0.97
    assert rules.calibration.sample_pairs == 500_000 and rules.calibration.seed == 4
    assert load_rules(None).calibration.ceiling is None  # auto: 0.98 raw, 0.90 centred


@pytest.mark.parametrize("text, key", [
    ("calibration:\n  chance_pairs: 0\n", "calibration.chance_pairs"),
    ("calibration:\n  chance_pairs: .inf\n", "calibration.chance_pairs"),
    ("calibration:\n  ceiling: 2\n", "calibration.ceiling"),
    ("calibration:\n  sample_pairs: 10\n", "calibration.sample_pairs"),
    ("calibration:\n  seed: -1\n", "calibration.seed"),
    ("calibration:\n  budget: 1\n", "calibration.budget"),
    ("threshold: 0.9\ncalibration:\n  chance_pairs: 2\n", "calibration"),
])
def test_calibration_errors_name_the_key(tmp_path, text, key):
    with pytest.raises(RulesError) as info:
        load_rules(write(tmp_path, text))
    assert info.value.key == key and str(tmp_path) in str(info.value)


def test_incremental_settings(tmp_path):
    rules = load_rules(write(tmp_path, "incremental:\n  max_changed: 2.5%\n  margin: 0\n"))
    assert (rules.incremental.max_changed, rules.incremental.max_changed_share, rules.incremental.margin) == \
        (None, 0.025, 0.0)
    rules = load_rules(write(tmp_path, "incremental:\n  max_changed: 500\n  enabled: false\n"))
    assert (rules.incremental.max_changed, rules.incremental.enabled) == (500, False)
