"""Hostile input besides folder names: a rules.yaml built to exhaust the loader (alias bomb, deep
nesting, a huge file, keys given twice), and text read from files that are not names (npz member
names, dtype field names, errors quoting an archive, the search state's state.json) reaching the
terminal, findings.json, the CSVs, the baseline and report.html."""

from __future__ import annotations

import json
import shutil
import tracemalloc
import zipfile
from pathlib import Path

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see test_plugin.py)
import numpy as np
import pytest

from dataset_checks.rules import MAX_DEPTH, MAX_NODES, MAX_RULES_BYTES, SHOWN_CHARS, RulesError, load_rules
from dataset_checks.search_state import state_folder
from helpers import cross_identity_only, write_face01

# -- rules.yaml --------------------------------------------------------------------------------


def _bomb(levels: int) -> str:
    """Billion laughs: each level a list of 9 aliases of the one before; the last one is the value
    of a key whose error message shows what it found."""
    lines = ["identity_thresholds:", '  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    names = "abcdefghijklmnop"[:levels]
    for prev, cur in zip(names, names[1:]):
        lines.append(f"  {cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    lines.append(f"threshold: *{names[-1]}")
    return "\n".join(lines) + "\n"


def _error(tmp_path: Path, text: str) -> RulesError:
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RulesError) as info:
        load_rules(path)
    return info.value


def test_alias_bomb_is_refused_at_the_alias_in_bounded_memory(tmp_path):
    # 9**7 = 4.8 million values behind 7 short lines: the old loader built the value and the
    # error repr'd all of it (33 MB of text; the 9-level bomb below took 46 s and 3.4 GB)
    path = tmp_path / "rules.yaml"
    path.write_text(_bomb(7), encoding="utf-8")
    tracemalloc.start()
    try:
        with pytest.raises(RulesError) as info:
            load_rules(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    msg = str(info.value)
    assert peak < 8 * 2**20, peak  # the file's read buffer and a few nodes, never the expansion
    assert msg.startswith(f"{path}: key 'line ")
    assert f"at most {MAX_NODES} values" in msg and "found alias *" in msg and "alias bomb" in msg
    # the alias that crosses the bound: a..f expand to 9 + 81 + ... + 9**6 values before threshold:
    # the count passes 100,000 at the first *e inside f (line 7)
    assert info.value.key == "line 7", msg
    assert len(msg) < 600


def test_billion_laughs_is_a_usage_error_naming_file_and_line(pytester):
    rules = pytester.path / "bomb.yaml"
    rules.write_text(_bomb(9), encoding="utf-8")  # 9**9 = 387 million values
    assert rules.stat().st_size < 600
    result = pytester.runpytest_subprocess("dataset_checks", "--rules", str(rules), "-p", "no:cacheprovider",
                                           "--report-dir", str(pytester.path / "out"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    err = result.stderr.str()
    assert f"{rules}: key 'line 7': expected at most {MAX_NODES} values" in err, err
    assert "INTERNALERROR" not in err and "MemoryError" not in err


def test_recursive_alias_is_refused(tmp_path):
    err = _error(tmp_path, "allow: &x [*x]\n")
    assert err.key == "line 1" and "recursive alias" in str(err)


def test_aliases_within_the_bound_work_and_merge_keys_may_override(tmp_path):
    rules = load_rules(_write(tmp_path, "checks:\n  misfiled: &m {enabled: true, severity: warn}\n"
                                        "  consistency:\n    <<: *m\n    severity: fail\n"
                                        "  names: *m\n"))
    assert rules.checks["consistency"].severity == "fail"  # merged, then overridden: not a duplicate
    assert rules.checks["names"].severity == "warn"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text, key, lines", [
    ("threshold: 0.9\nbad_input: warn\nthreshold: 0.8\n", "threshold", (1, 3)),
    ("checks:\n  misfiled:\n    enabled: true\n    severity: warn\n    enabled: false\n",
     "checks.misfiled.enabled", (3, 5)),
    ("checks:\n  misfiled: {enabled: false}\n  names: {}\n  misfiled: {severity: warn}\n", "checks.misfiled", (2, 4)),
    ("allow:\n  - identities: [A, B]\n    reason: twins\n    reason: again\n", "allow[0].reason", (3, 4)),
    ("identity_thresholds:\n  1: 0.9\n  0x1: 0.8\n", "identity_thresholds.1", (2, 3)),  # the same key, 1
])
def test_duplicate_keys_are_refused_naming_key_and_both_lines(tmp_path, text, key, lines):
    err = _error(tmp_path, text)
    msg = str(err)
    assert err.key == key, msg
    assert str(tmp_path / "rules.yaml") in msg
    assert f"found the key on line {lines[0]} and again on line {lines[1]}" in msg


def test_deep_nesting_is_refused_before_any_recursion_limit(tmp_path):
    err = _error(tmp_path, "allow: " + "[" * 200 + "]" * 200 + "\n")
    assert err.key == "line 1" and f"nested at most {MAX_DEPTH} deep" in str(err), str(err)
    block = "".join("  " * k + f"k{k}:\n" for k in range(600)) + "  " * 600 + "v: 1\n"
    assert len(block) < MAX_RULES_BYTES
    err = _error(tmp_path, block)
    assert f"nested at most {MAX_DEPTH} deep" in str(err) and err.key == f"line {MAX_DEPTH}", str(err)


def test_a_file_over_the_size_bound_is_refused_without_parsing_it(tmp_path):
    path = tmp_path / "rules.yaml"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("threshold: 0.9\n")
        fh.write(("# " + "x" * 1000 + "\n") * (2 * MAX_RULES_BYTES // 1000))
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert info.value.key == "(file)" and f"at most {MAX_RULES_BYTES // 1024} KiB" in str(info.value)


@pytest.mark.parametrize("text, key", [
    ("threshold: '" + "x" * 50_000 + "'\n", "threshold"),
    ("allow: " + json.dumps([["y" * 1000] * 20] * 20) + "\n", "allow[0]"),
    ("memory: {" + ", ".join(f"k{k}: {k}" for k in range(5000)) + "}\n", "memory"),
    ("threshold: " + "9" * 5000 + "\n", "line 1"),  # more digits than Python converts: not a ValueError
    # a key is shown as names are, and cut (YAML keys stop at 1024 characters, values do not)
    ("identity_thresholds:\n  \"\\e[2J\\u202e<b>" + "z" * 900 + "\": 2\n", None),
])
def test_a_huge_value_in_an_error_is_cut(tmp_path, text, key):
    err = _error(tmp_path, text)
    msg = str(err)
    if key is not None:
        assert err.key == key, msg[:500]
    assert len(msg) < len(str(tmp_path)) + 2 * SHOWN_CHARS + 300, len(msg)
    assert "\x1b" not in msg and "\u202e" not in msg and "\n" not in msg
    assert "found " in msg


# -- text from files ---------------------------------------------------------------------------

EVIL = "\x1b[2J\x1b[31m<script>alert(1)</script>\u202eevil"
MARKS = ("\x1b", "\u202e", "<script>alert")


def _npy_with_header(header: bytes) -> bytes:
    head = header + b" " * (63 - len(header) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(head).to_bytes(2, "little") + head


def _hostile_npz_dataset(root: Path) -> None:
    rng = np.random.default_rng(3)
    for name in ("Alice", "Bob", "Carol"):
        write_face01(root, name, rng.standard_normal((3, 32)))
    # member names: a vector array missing, the names array missing
    (root / "Dan").mkdir()
    np.savez(root / "Dan" / "npKnown.npz", name=np.array(["d.jpg"]), **{EVIL: np.zeros((1, 32), np.float32)})
    (root / "Eve").mkdir()
    np.savez(root / "Eve" / "npKnown.npz", efficientnetv2_arcface=np.zeros((1, 32), np.float32),
             **{EVIL + "2": np.zeros(1)})
    # file names inside the `name` array
    write_face01(root, "Fay", rng.standard_normal((2, 32)), files=[EVIL + ".jpg", "ok.jpg"])
    # a dtype whose field name is hostile
    write_face01(root, "Gus", rng.standard_normal((2, 32)))
    np.savez(root / "Gus" / "npKnown.npz", name=np.array(["g1.jpg", "g2.jpg"]),
             efficientnetv2_arcface=np.zeros(2, dtype=[(EVIL, "<f4")]))
    # a header numpy's own reader refuses, quoting it in its error
    (root / "Hal").mkdir()
    with zipfile.ZipFile(root / "Hal" / "npKnown.npz", "w") as zf:
        zf.writestr("name.npy", _npy_with_header(b"{'descr': '" + EVIL.encode() + b"', 'fortran_order': False, "
                                                 b"'shape': (1,), }"))
        zf.writestr("efficientnetv2_arcface.npy", _npy_with_header(b"{'descr': '<f4'}"))


def _outputs(out: Path, *extra: Path) -> dict[str, str]:
    files = [*sorted(out.glob("*.csv")), out / "findings.json", out / "report.html", *extra]
    return {p.name: p.read_text(encoding="utf-8") for p in files if p.is_file()}


def _assert_clean(texts: dict[str, str]) -> None:
    for name, text in texts.items():
        for mark in MARKS:
            assert mark not in text, (name, mark, text[max(text.find(mark) - 200, 0) : text.find(mark) + 100])


def test_npz_member_names_dtypes_and_errors_are_escaped_everywhere(pytester):
    root = pytester.path / "data"
    _hostile_npz_dataset(root)
    out, base = pytester.path / "out", pytester.path / "baseline.csv"
    result = pytester.runpytest_subprocess("dataset_checks", "--dataset", str(root), "--report-dir", str(out),
                                           "--baseline", str(base), "--update-baseline", "-p", "no:cacheprovider",
                                           "-rA")
    text = result.stdout.str() + result.stderr.str()
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), text  # not INTERNALERROR
    texts = {"terminal": text, **_outputs(out, base)}
    assert {"findings.json", "report.html", "baseline.csv", "findings.csv"} <= set(texts)
    _assert_clean(texts)
    # each hostile string did reach the outputs, escaped (so the test saw the paths it is about)
    shown_evil = "%1B[2J%1B[31m%3Cscript%3Ealert(1)%3C/script%3E%E2%80%AEevil"
    for what in ("Dan/npKnown.npz", "Eve/npKnown.npz", "Gus/npKnown.npz", "Hal/npKnown.npz"):
        line = next((ln for ln in texts["baseline.csv"].splitlines() if what in ln), "")
        assert "%3Cscript%3E" in line, (what, texts["baseline.csv"])
    assert f"arrays present: name, {shown_evil}" in texts["baseline.csv"]
    assert f"arrays present: efficientnetv2_arcface, {shown_evil}2" in texts["baseline.csv"]


def _small_dataset(root: Path) -> None:
    rng = np.random.default_rng(11)
    for name in ("Ann", "Ben", "Cat", "Dov"):
        write_face01(root, name, rng.standard_normal((4, 16)))


def _run(pytester, dataset: Path, rules: Path, out: str):
    result = pytester.runpytest_subprocess("dataset_checks", f"--dataset={dataset}", "--rules", str(rules),
                                           "--report-dir", str(pytester.path / out), "-p", "no:cacheprovider")
    text = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.OK, text
    return text


def test_search_state_text_is_never_shown_raw(pytester):
    """state.json's `root` (no digest covers it) is never shown: the note names the state's folder;
    its descriptive strings (the carried search info, the index history) and a damaged state's
    error are shown as names are."""
    one, two, cache = pytester.path / "one", pytester.path / "two", pytester.path / "cache"
    _small_dataset(one)
    rules = cross_identity_only(pytester.path, f"embeddings:\n  cache: {cache}\nthreshold: 0.99\n")
    _run(pytester, one, rules, "out1")
    state = state_folder(cache, one.resolve()) / "state.json"
    doc = json.loads(state.read_text())
    assert doc["root"] == str(one.resolve())  # the field this test plants (not covered by a digest)
    doc["root"] = EVIL
    doc["info"]["device"] = EVIL
    doc["history"]["full_at"] = EVIL
    state.write_text(json.dumps(doc))
    shutil.copytree(one, two)
    text = _run(pytester, two, rules, "out2")
    report = json.loads((pytester.path / "out2" / "findings.json").read_text(encoding="utf-8"))
    _assert_clean({"terminal": text, **_outputs(pytester.path / "out2")})
    assert report["incremental"]["mode"] == "incremental", report["incremental"]  # the planted state was used
    assert "no search state for this dataset path; the one in " in text
    assert str(state.parent) in text  # its folder is named instead of the root it claims
    assert "%3Cscript%3E" in json.dumps(report)  # the carried search info, escaped

    # a damaged state: its error quotes state.json
    own = state_folder(cache, two.resolve()) / "state.json"
    doc = json.loads(own.read_text())
    doc["files"][EVIL] = {"bytes": 1, "sha256": "0"}
    own.write_text(json.dumps(doc))
    text = _run(pytester, two, rules, "out3")
    report = json.loads((pytester.path / "out3" / "findings.json").read_text(encoding="utf-8"))
    _assert_clean({"terminal": text, **_outputs(pytester.path / "out3")})
    assert report["incremental"]["mode"] == "full" and "damaged" in report["incremental"]["reason"]
    assert "%3Cscript%3E" in report["incremental"]["reason"]


def test_problems_read_back_from_a_cached_table_are_never_raw():
    # meta.json of a cached table is the cache's text, not the tool's: a forged message with a
    # terminal escape comes back with it escaped (the tool's own words otherwise unchanged)
    from dataset_checks.table_store import problems_from_json

    (p,) = problems_from_json({"0": [{"file": "A/x.npz", "message": "bad \x1b[2J\u202e <x> 100% >= 1",
                                      "fatal": True, "code": "corrupt"}]})[0]
    assert "\x1b" not in p.message and "\u202e" not in p.message
    assert p.message.endswith(" <x> 100% >= 1") and p.file == "A/x.npz" and p.code == "corrupt"
