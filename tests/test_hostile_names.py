"""Folder and file names are hostile input: escaped in test ids, terminal, CSV, JSON and HTML."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see test_plugin.py)
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dataset_checks.text import cell_name, csv_cell, name_cell, shown, unshown
from helpers import write_face01

HOSTILE = [
    "<img src=x onerror=alert(1)>",
    "a\\x41b",
    "c\\u0041d",
    "e\\N{BULLET}f",
    "\x1b[2J\x1b[31mred",
    "=HYPERLINK(\"x\",\"y\")",
    "-1+2",
    "@SUM(A1)",
    "line\nbreak",
    "rtl\u202eevil",
    "100%",
]


def _dataset(root: Path) -> Path:
    """One hostile-named folder per name, each holding a copy of the next one's first face, so
    every folder fails and its name reaches every output."""
    rng = np.random.default_rng(7)
    dim = 32
    base = rng.standard_normal((len(HOSTILE), 3, dim)).astype(np.float32)
    for k in range(len(HOSTILE)):
        base[k, 0] = base[(k + 1) % len(HOSTILE), 1]
    for k, name in enumerate(HOSTILE):
        files = [f"{name}_{j}.jpg" for j in range(3)]
        write_face01(root, name, base[k], files=files)
    return root


def test_hostile_names_end_to_end(pytester):
    root = _dataset(pytester.path / "data")
    out = pytester.path / "out"
    result = pytester.runpytest_subprocess("dataset_checks", "--dataset", str(root), "--threshold", "0.99",
                                           "--report-dir", str(out), "-p", "no:cacheprovider", "-rA")
    text = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, text  # not INTERNALERROR (3)
    assert "\x1b" not in text and "\u202e" not in text  # no terminal escapes, no bidi override
    for name in HOSTILE:
        assert f"test_identity[{shown(name)}]" in text
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "<img src=x" not in html and "onerror=alert(1)>" not in html
    assert "\x1b" not in html
    with open(out / "findings.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    assert rows
    for row in rows:
        for cell in (row[0], row[1], row[2], row[3]):
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
            assert cell_name(cell) in HOSTILE or any(cell_name(cell).startswith(h + "_") for h in HOSTILE)
    doc = json.loads((out / "findings.json").read_text(encoding="utf-8"))
    assert set(doc["identities"]) == {shown(n) for n in HOSTILE}


names = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20) | st.builds(
    lambda b: os.fsdecode(b), st.binary(max_size=12).filter(lambda b: b"/" not in b and b"\x00" not in b))


@given(names)
def test_shown_round_trips_and_is_safe(name):
    text = shown(name)
    assert unshown(text) == name
    assert text.isprintable() and not set(text) & set("<>&\\")
    assert cell_name(name_cell(name)) == name
    assert not name_cell(name).startswith(("=", "+", "-", "@"))


@given(st.text(max_size=10))
def test_csv_cell_round_trips(text):
    from dataset_checks.text import csv_uncell

    assert csv_uncell(csv_cell(text)) == text
