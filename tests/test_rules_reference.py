"""docs/rules.md is generated from the shipped rules.yaml and the check registry, and stays so."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from dataset_checks import rules as rules_mod
from dataset_checks.checks import all_checks
from dataset_checks.rules import load_rules
from dataset_checks.rules_reference import reference

ROOT = Path(__file__).resolve().parent.parent


def test_docs_rules_md_is_the_generated_reference():
    want = reference((ROOT / "rules.yaml").read_text(encoding="utf-8"))
    assert (ROOT / "docs" / "rules.md").read_text(encoding="utf-8") == want, (
        "docs/rules.md is stale: python -m dataset_checks.rules_reference rules.yaml > docs/rules.md")


def test_every_top_level_key_is_in_the_shipped_rules_yaml_and_every_check_in_the_reference():
    text = (ROOT / "rules.yaml").read_text(encoding="utf-8")
    shown = set(re.findall(r"^#? ?([a-z_]+):", text, flags=re.M))
    assert rules_mod._TOP_KEYS <= shown, rules_mod._TOP_KEYS - shown
    load_rules(ROOT / "rules.yaml")  # the shipped file is valid as it is
    doc = (ROOT / "docs" / "rules.md").read_text(encoding="utf-8")
    for check in all_checks():
        assert f"### `checks.{check.name}`" in doc
        for param in check.params:
            assert f"| `{param}` |" in doc, (check.name, param)


def test_each_commented_example_of_the_shipped_file_is_valid():
    text = (ROOT / "rules.yaml").read_text(encoding="utf-8")
    for key in ("calibration", "against", "checks"):
        line = re.search(rf"^# ({key}: .*)$", text, flags=re.M)
        assert line is not None, key
        if key == "against":
            continue  # a path that exists only on the user's machine
        rules_mod.parse_rules({"threshold": "auto", **yaml.safe_load(line.group(1))})
