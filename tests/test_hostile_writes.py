"""Links planted in the report and cache folders (they come with a git checkout) are never written
through: each one's target is byte-identical after the run, and the refusal names the link."""

from __future__ import annotations

import os
from pathlib import Path

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see test_plugin.py)
import numpy as np
import pytest

from dataset_checks import safe_write
from dataset_checks.embed.cache import Cache, Entry
from dataset_checks.sinks import planned_files
from dataset_checks.outputs import LOCK_NAME, FolderLock
from dataset_checks.rules import Rules
from dataset_checks.table_store import centred, open_vectors
from helpers import write_face01

SECRET = b"precious: never to be overwritten\n"


@pytest.fixture
def faces(pytester) -> Path:
    root = pytester.path / "faces"
    write_face01(root, "Alice", np.eye(2, 8, dtype=np.float32))
    write_face01(root, "Bob", np.eye(2, 8, k=4, dtype=np.float32))
    return root


@pytest.fixture
def secret(pytester) -> Path:
    path = pytester.path / "elsewhere" / "secret.txt"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


def _plant(link: Path, target: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return link


def _refused(capsys, rec, *needles: str) -> None:
    assert rec.ret == pytest.ExitCode.USAGE_ERROR
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err


# -- the report folder ----------------------------------------------------------------------------


def test_linked_lock_file_is_refused_and_its_target_kept(pytester, run, faces, secret, capsys):
    out = pytester.path / "out"
    _plant(out / LOCK_NAME, secret)
    rec = run("--dataset", str(faces), "--threshold", "0.9")
    _refused(capsys, rec, LOCK_NAME, "symbolic link", "nothing was checked")
    assert secret.read_bytes() == SECRET
    assert (out / LOCK_NAME).is_symlink() and not (out / "findings.csv").exists()


def test_folder_lock_never_opens_a_link_or_a_folder(tmp_path, secret):
    _plant(tmp_path / "a" / LOCK_NAME, secret)
    with pytest.raises(safe_write.UnsafeTarget, match="symbolic link"):
        FolderLock(tmp_path / "a").acquire()
    (tmp_path / "b" / LOCK_NAME).mkdir(parents=True)
    with pytest.raises(safe_write.UnsafeTarget, match="not a regular file"):
        FolderLock(tmp_path / "b").acquire()
    assert secret.read_bytes() == SECRET


def test_report_html_temp_names_are_not_predictable(pytester, run, faces, secret):
    out = pytester.path / "out"
    # every name the old code used for pytest-html's temporary file: .report.html.<pid>.tmp
    planted = [_plant(out / f".report.html.{os.getpid()}.tmp", secret)]
    planted.append(_plant(out / f".report.html.{os.getppid()}.tmp", secret))
    rec = run("--dataset", str(faces), "--threshold", "0.9")
    assert rec.ret == pytest.ExitCode.OK
    assert secret.read_bytes() == SECRET
    report = out / "report.html"
    assert not report.is_symlink() and report.is_file() and b"dataset_checks run" in report.read_bytes()
    assert all(p.is_symlink() for p in planted)  # left as they are, never renamed into place
    # the temporary file was beside the report (readable, as an artifact), and is gone
    assert oct(report.stat().st_mode & 0o044) == oct(0o044 & ~_umask())
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")) == sorted(p.name for p in planted)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("name", ["report.html", "findings.csv", "findings.json", "merge_candidates.csv",
                                  *[p.name for p in planned_files(Path("out"), Rules())
                                    if p.suffix == ".csv" and p.name not in ("findings.csv", "merge_candidates.csv")]])
def test_linked_report_file_is_refused_before_the_run(pytester, run, faces, secret, capsys, name):
    out = pytester.path / "out"
    link = _plant(out / name, secret)
    rec = run("--dataset", str(faces), "--threshold", "0.9")
    _refused(capsys, rec, name, "symbolic link", "nothing was checked")
    assert secret.read_bytes() == SECRET
    assert link.is_symlink() and os.readlink(link) == str(secret)  # refused, not replaced
    assert not (out / "findings.csv").exists() or name == "findings.csv"


def test_html_and_junitxml_links_are_refused(pytester, run, faces, secret, capsys):
    html = _plant(pytester.path / "mine" / "r.html", secret)
    rec = run("--dataset", str(faces), "--threshold", "0.9", "--html", str(html))
    _refused(capsys, rec, "--html", "r.html", "symbolic link")
    xml = _plant(pytester.path / "mine" / "j.xml", secret)
    rec = run("--dataset", str(faces), "--threshold", "0.9", "--junitxml", str(xml))
    _refused(capsys, rec, "--junitxml", "j.xml", "symbolic link")
    assert secret.read_bytes() == SECRET


def test_html_assets_links_are_refused(pytester, run, faces, secret, capsys):
    # a report that is not self-contained: pytest-html writes assets/style.css beside it itself
    mine = pytester.path / "mine"
    _plant(mine / "assets" / "style.css", secret)
    rec = run("--dataset", str(faces), "--threshold", "0.9", "--html", str(mine / "r.html"))
    _refused(capsys, rec, "--html", "style.css", "symbolic link")
    (mine / "assets" / "style.css").unlink()
    (mine / "assets").rmdir()
    _plant(mine / "assets", secret.parent)
    rec = run("--dataset", str(faces), "--threshold", "0.9", "--html", str(mine / "r.html"))
    _refused(capsys, rec, "--html", "assets", "symbolic link")
    assert secret.read_bytes() == SECRET and sorted(p.name for p in secret.parent.iterdir()) == ["secret.txt"]
    (mine / "assets").unlink()
    rec = run("--dataset", str(faces), "--threshold", "0.9", "--html", str(mine / "r.html"))
    assert rec.ret == pytest.ExitCode.OK and (mine / "assets" / "style.css").is_file()
    assert b"assets/style.css" in (mine / "r.html").read_bytes()  # beside the report, as before


def test_a_folder_at_a_report_file_name_is_refused(pytester, run, faces, capsys):
    (pytester.path / "out" / "findings.json").mkdir(parents=True)
    rec = run("--dataset", str(faces), "--threshold", "0.9")
    _refused(capsys, rec, "findings.json", "not a regular file")


def test_link_planted_during_the_run_is_not_written_through(pytester, run, faces, secret, monkeypatch):
    # the writers refuse too: a link that appears after the up-front check
    import dataset_checks.findings as files_mod  # the sinks call its writers

    out = pytester.path / "out"
    real = files_mod.write_csv

    def plant_then_write(findings, path):
        _plant(path, secret)
        return real(findings, path)

    monkeypatch.setattr(files_mod, "write_csv", plant_then_write)
    rec = run("--dataset", str(faces), "--threshold", "0.9")
    assert rec.ret == pytest.ExitCode.TESTS_FAILED  # an output is missing: the run does not pass
    assert secret.read_bytes() == SECRET and (out / "findings.csv").is_symlink()
    assert (out / "findings.json").is_file() and not (out / "findings.json").is_symlink()


def test_publish_refuses_a_link_at_report_html(tmp_path, secret):
    report = _plant(tmp_path / "report.html", secret)
    tmp = safe_write.private_temp(report)
    tmp.write_text("<html>new</html>")
    with pytest.raises(safe_write.UnsafeTarget, match="report.html: a symbolic link"):
        safe_write.publish(tmp, report)
    assert secret.read_bytes() == SECRET and report.is_symlink() and not tmp.exists()


def test_atomic_write_never_follows_and_escapes_the_name(tmp_path, secret):
    link = _plant(tmp_path / "bad\x1b[31m.csv", secret)
    with pytest.raises(safe_write.UnsafeTarget) as info:
        safe_write.atomic_write(link, lambda fh: fh.write("x"))
    assert "bad%1B[31m.csv: a symbolic link" in str(info.value) and "\x1b" not in str(info.value)
    assert secret.read_bytes() == SECRET and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == [link.name]  # no temporary file left
    ok = safe_write.atomic_write(tmp_path / "ok.csv", lambda fh: fh.write("a,b\n"))
    assert ok.read_text() == "a,b\n"


# -- the baseline -----------------------------------------------------------------------------------


def test_linked_baseline_is_not_updated_through_the_link(pytester, run, faces, secret, capsys):
    link = _plant(pytester.path / "baseline.csv", secret)
    rec = run("--dataset", str(faces), "--threshold", "0.9", "--baseline", str(link), "--update-baseline")
    _refused(capsys, rec, "baseline", "baseline.csv", "symbolic link")
    assert secret.read_bytes() == SECRET and link.is_symlink()


# -- the caches -------------------------------------------------------------------------------------


def test_cache_gitignore_linked_to_the_baseline_is_left_alone(tmp_path):
    baseline = tmp_path / "baseline.csv"
    baseline.write_bytes(b"check,identity\r\npairs,Alice\r\n")
    before = baseline.read_bytes()
    root = tmp_path / ".dataset_checks_cache"
    _plant(root / ".gitignore", baseline)
    cache = Cache(root, "model", "model-1")
    entry = Entry(np.ones(4, np.float32), faces=1)
    cache.put("ab" * 32, entry)
    assert baseline.read_bytes() == before and (root / ".gitignore").is_symlink()
    assert (root / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")
    assert np.array_equal(cache.get("ab" * 32).vector, entry.vector)
    # an existing .gitignore of the user's is not overwritten either
    own = tmp_path / "c2"
    own.mkdir()
    (own / ".gitignore").write_text("!keep\n")
    Cache(own, "model", "model-1").put("cd" * 32, entry)
    assert (own / ".gitignore").read_text() == "!keep\n"


def test_cache_entry_link_is_refused(tmp_path, secret):
    cache = Cache(tmp_path / "cache", "model", "model-1")
    digest = "ef" * 32
    _plant(cache._path(digest), secret)
    with pytest.raises(safe_write.UnsafeTarget, match="symbolic link"):
        cache.put(digest, Entry(np.ones(4, np.float32), faces=1))
    assert secret.read_bytes() == SECRET


def test_centred_table_files_are_not_written_through_links(tmp_path, secret):
    folder = tmp_path / "tables" / "t"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 8)).astype(np.float32)
    x.tofile(folder / "vectors.f32")
    vectors = open_vectors(folder / "vectors.f32", 50, 8)
    _plant(folder / "centred-mean.npy", secret)
    got, mean = centred(folder, vectors)
    assert secret.read_bytes() == SECRET and (folder / "centred-mean.npy").is_symlink()
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=0))
    want = x - mean
    np.testing.assert_allclose(got, want / np.linalg.norm(want, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    (folder / "centred-mean.npy").unlink()
    _plant(folder / "centred.f32", secret)
    got2, _ = centred(folder, vectors)
    assert secret.read_bytes() == SECRET and np.array_equal(np.asarray(got2), np.asarray(got))


def _cache_rules(pytester, cache: Path) -> str:
    rules = pytester.path / "rules.yaml"
    rules.write_text(f"embeddings:\n  cache: {cache}\n")
    return str(rules)


def test_links_in_table_and_search_state_folders_are_not_followed(pytester, run, faces, secret):
    cache = pytester.path / ".dataset_checks_cache"
    rules = _cache_rules(pytester, cache)
    rec = run("--dataset", str(faces), "--threshold", "0.9", "--rules", rules)
    assert rec.ret == pytest.ExitCode.OK
    stored = [p for p in cache.rglob("*") if p.is_file() and not p.is_symlink() and "locks" not in p.parts]
    assert any("tables" in p.parts for p in stored) and any("search_state" in p.parts for p in stored)
    for p in stored:  # every file of the table and the search state, and the cache lock
        p.unlink()
        _plant(p, secret)
    for lock in cache.rglob(LOCK_NAME):
        lock.unlink()
        _plant(lock, secret)
    write_face01(faces, "Carol", np.eye(2, 8, k=2, dtype=np.float32))  # a changed dataset: written anew
    rec = run("--dataset", str(faces), "--threshold", "0.9", "--rules", rules)
    assert rec.ret == pytest.ExitCode.OK
    assert secret.read_bytes() == SECRET


def test_linked_cache_folder_is_announced(pytester, run, faces, capsys):
    elsewhere = pytester.path / "bigdisk"
    elsewhere.mkdir()
    link = pytester.path / ".dataset_checks_cache"
    link.symlink_to(elsewhere)
    # the default cache: .dataset_checks_cache in the rootdir, as a checkout brings it
    rec = run("--dataset", str(faces), "--threshold", "0.9", f"--rootdir={pytester.path}")
    assert rec.ret == pytest.ExitCode.OK
    out = capsys.readouterr().out
    assert "the cache folder" in out and "is a symbolic link to" in out and "bigdisk" in out
    assert any(elsewhere.rglob("*.npy")) and not any(p.is_symlink() for p in elsewhere.rglob("*"))
