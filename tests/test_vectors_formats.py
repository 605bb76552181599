"""Issue #20: a new embeddings format is one module (found by its name) plus its tests."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest

import dataset_checks
from dataset_checks import vectors
from dataset_checks import formats
from dataset_checks.discover import discover_identities
from dataset_checks.folderscan import why_no_identities
from dataset_checks.folderscan import scan_folder
from dataset_checks.vectors import load_table, read_folder

# what a format's module holds: its reader, registered when the module is imported
MODULE = textwrap.dedent('''
    import json
    from dataclasses import dataclass

    import numpy as np

    from dataset_checks.problems import Problem
    from dataset_checks.vectors import accept_arrays, register_reader


    @dataclass(frozen=True)
    class JsonReader:
        file_names: tuple = ("embeddings.json",)
        vector_keys: tuple = ("json_vectors",)

        def read(self, data, rel, vector_key, limit, out):
            try:
                doc = json.loads(data)
            except ValueError as exc:
                out.problems.append(Problem(rel, f"not JSON ({exc})", code="corrupt"))
                return
            accept_arrays(out, rel, "files", np.array(doc["files"], dtype=str),
                          {"json_vectors": np.array(doc["vectors"], dtype=np.float32)})


    register_reader(JsonReader())
''')


@pytest.fixture
def json_format(tmp_path, monkeypatch):
    """The package as it is plus one module `embeddings_json.py` (in a folder of its path)."""
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "embeddings_json.py").write_text(MODULE)
    monkeypatch.setattr(dataset_checks, "__path__", [*dataset_checks.__path__, str(extra)])
    monkeypatch.setattr(formats, "_READERS", formats._READERS)
    monkeypatch.setattr(formats, "_discovered", False)
    yield
    sys.modules.pop("dataset_checks.embeddings_json", None)


def _write(folder, files, vecs):
    folder.mkdir(parents=True)
    (folder / "embeddings.json").write_text(json.dumps({"files": files, "vectors": vecs.tolist()}))


def test_the_built_in_formats_are_face01_then_plain():
    assert vectors.embeddings_file_names()[:2] == ("npKnown.npz", "embeddings.npz")
    assert vectors.reader_for("npKnown.npz") is vectors.FACE01_READER
    assert vectors.reader_for("anything.else") is vectors.PLAIN_READER  # as before: read as a plain npz


def test_a_format_module_is_found_and_read_everywhere(tmp_path, json_format):
    rng = np.random.default_rng(0)
    root = tmp_path / "ds"
    _write(root / "a", ["a1.jpg", "a2.jpg"], rng.standard_normal((2, 8)))
    _write(root / "b", ["b1.jpg"], rng.standard_normal((1, 8)))
    (root / "c").mkdir()
    assert vectors.embeddings_file_names()[-1] == "embeddings.json"
    scan = scan_folder(root / "a", "a", stamps=True)
    assert scan.embeddings == root / "a" / "embeddings.json" and scan.stamps[0][0] == "embeddings.json"
    assert vectors.embeddings_path(root / "b") == root / "b" / "embeddings.json"
    ids = discover_identities(root)
    table = load_table(root, ids)
    assert table.key == "json_vectors" and len(table) == 3 and table.files[:2] == ["a1.jpg", "a2.jpg"]
    assert [p.message for p in table.problems[2]] == [
        "no embeddings: none of npKnown.npz, embeddings.npz, embeddings.json is in this folder"]
    (root / "b" / "embeddings.json").write_text("{")
    assert read_folder(ids[1], root, None).problems[0].code == "corrupt"
    assert "looks like ONE identity folder" in why_no_identities(root / "a")


def test_without_another_format_the_message_is_unchanged(tmp_path):
    (tmp_path / "ds" / "a").mkdir(parents=True)
    root = tmp_path / "ds"
    f = read_folder(discover_identities(root)[0], root, None)
    assert [p.message for p in f.problems] == ["no embeddings: neither npKnown.npz nor embeddings.npz is in this folder"]
