"""The misfiled check: its own-folder and best-other-folder similarities against brute force, planted
misfiled faces found with the folder they belong to, its test family and CSV, and LFW."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import faiss  # noqa: F401  - before pytester's sys.modules snapshot (see test_plugin.py)
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from dataset_checks.checks import CheckData, get
from dataset_checks.checks.misfiled import folder_fit
from dataset_checks.rules import default_settings
from helpers import family_outcomes, write_face01
from strategies import build_clusters, clusters

PKG = str(Path(__file__).resolve().parents[1] / "dataset_checks")
LFW = Path(__file__).resolve().parents[1].parent / "shared" / "lfw"
TOL = 1e-5  # float32 search and centring against a float64 reference
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_data(vectors, labels, names, files) -> CheckData:
    """A CheckData without files on disk: the checks read only the table."""
    ids = [SimpleNamespace(name=n, path=Path(n)) for n in names]
    table = SimpleNamespace(vectors=np.ascontiguousarray(vectors, dtype=np.float32),
                            identity_of=np.asarray(labels, dtype=np.int32), files=list(files), identities=ids)
    return CheckData(root=Path("."), rules=None, identities=ids, table=table, pairs=None, threshold=0.9)


def run_check(name, data, **params):
    cls = get(name)
    base = default_settings(cls)
    return cls().run(data, type(base)(base.enabled, base.severity, {**base.params, **params}))


def reference(vectors, labels, n_ids, min_other=2):
    """Straightforward float64 numpy: own(i), every other(i, g), folder mean pairwise similarity."""
    x = np.asarray(vectors, dtype=np.float64)
    x = x - x.mean(axis=0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=n_ids)
    own = np.full(len(x), np.nan)
    to_folder = np.full((len(x), n_ids), -np.inf)
    for i in range(len(x)):
        mates = np.flatnonzero((labels == labels[i]) & (np.arange(len(x)) != i))
        if mates.size:
            own[i] = sims[i, mates].mean()
        for g in range(n_ids):
            if g != labels[i] and counts[g] >= min_other:
                to_folder[i, g] = sims[i, labels == g].mean()
    folder_mean = np.full(n_ids, np.nan)
    for g in range(n_ids):
        if counts[g] > 1:
            block = sims[np.ix_(labels == g, labels == g)]
            folder_mean[g] = (block.sum() - np.trace(block)) / (counts[g] * (counts[g] - 1))
    return own, to_folder, folder_mean, counts


def usable(c) -> bool:
    # centring needs the rows not to collapse onto the dataset mean
    x = c.vectors.astype(np.float64)
    return len(x) >= 3 and np.linalg.norm(x - x.mean(axis=0), axis=1).min() > 1e-3


@FAST
@given(clusters(max_folders=7), st.integers(1, 3))
def test_similarities_equal_brute_force(c, min_other):
    if not usable(c):
        return
    data = make_data(c.vectors, c.labels, c.names, c.files)
    fit = folder_fit(data)
    own, to_folder, folder_mean, counts = reference(c.vectors, c.labels, len(c.names), min_other)
    np.testing.assert_allclose(fit.own, own, atol=TOL)
    np.testing.assert_allclose(fit.folder_mean, folder_mean, atol=TOL)
    rows = np.arange(len(c.vectors))
    other, other_sim = fit.best_other(data, rows, min_other)
    best = to_folder.max(axis=1)
    none = ~np.isfinite(best)
    assert set(np.flatnonzero(other < 0)) == set(np.flatnonzero(none))
    np.testing.assert_allclose(other_sim[~none], best[~none], atol=TOL)
    # the folder named is a best one (ties within the tolerance are equal evidence)
    chosen = to_folder[rows[~none], other[~none]]
    np.testing.assert_allclose(chosen, best[~none], atol=TOL)


def expected_misfiled(c, far_q=0.05, same_q=0.25, margin=0.1, min_faces=3, min_other=2):
    """Brute-force issue set, and the rows too close to a threshold to call either way."""
    own, to_folder, _, counts = reference(c.vectors, c.labels, len(c.names), min_other)
    n_of = counts[c.labels]
    dist = own[n_of >= 3] if (n_of >= 3).any() else own[n_of >= 2]
    if dist.size == 0:
        return set(), set()
    far, same = np.quantile(dist, far_q), np.quantile(dist, same_q)
    out, near = set(), set()
    for i in range(len(own)):
        if n_of[i] < min_faces or not np.isfinite(to_folder[i]).any():
            continue
        g = int(np.argmax(to_folder[i]))
        sim = to_folder[i, g]
        gaps = (abs(own[i] - far), abs(sim - same), abs(sim - own[i] - margin))
        top2 = np.sort(to_folder[i][np.isfinite(to_folder[i])])[-2:]
        if min(gaps) < 1e-4 or (top2.size == 2 and top2[1] - top2[0] < 1e-4):
            near.add(i)
        if own[i] < far and sim >= same and sim - own[i] >= margin:
            out.add((c.names[c.labels[i]], c.files[i], c.names[g]))
    return out, {(c.names[c.labels[i]], c.files[i]) for i in near}


@FAST
@given(clusters(max_folders=7), st.floats(0.02, 0.5), st.floats(0.0, 0.6), st.floats(0.0, 0.3))
def test_issues_equal_brute_force(c, far_q, same_q, margin):
    if not usable(c):
        return
    data = make_data(c.vectors, c.labels, c.names, c.files)
    issues = run_check("misfiled", data, far_quantile=far_q, same_quantile=same_q, margin=margin)
    want, near = expected_misfiled(c, far_q, same_q, margin)
    got = {(i.identity, i.file, i.other_identity) for i in issues}
    assert {g for g in got if g[:2] not in near} == {w for w in want if w[:2] not in near}
    for i in issues:  # the face named is in the folder named, and the best of it
        assert i.other_file.startswith(i.other_identity + "_") and i.score >= margin - TOL


def planted(seed: int, n_folders=20, size=8, dim=64, plants=3, noise=0.1):
    """Clusters with `plants` faces of one folder copied (with noise) over faces of others."""
    rng = np.random.default_rng(seed)
    c = build_clusters(seed, dim, [size] * n_folders, 0.7, [], [])
    moved = []
    for k, (src, dst) in enumerate(rng.choice(n_folders, size=(plants, 2), replace=False).reshape(plants, 2)):
        # the source folder's most typical face: a copy of one of its own outliers would fit it no
        # better than the lowest quantiles do, and a test must not depend on the draw
        members = np.arange(int(src) * size, (int(src) + 1) * size)
        fit = (c.vectors[members] @ c.vectors[members].T).sum(axis=1)
        a = int(members[np.argmax(fit)])
        b = int(dst) * size + k  # a different face of each destination
        v = c.vectors[a] + noise / np.sqrt(dim) * rng.standard_normal(dim)
        c.vectors[b] = v / np.linalg.norm(v)
        moved.append((c.names[dst], c.files[b], c.names[src]))
    return c, moved


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_planted_misfiled_faces_are_found_with_their_folder(seed):
    c, moved = planted(seed)
    # a misfiled photo fits its true folder like any photo of that folder does: about a quarter
    # of them below the default same_quantile (0.25, tuned for precision on LFW), so here 0.05
    issues = run_check("misfiled", make_data(c.vectors, c.labels, c.names, c.files), same_quantile=0.05)
    got = {(i.identity, i.file, i.other_identity) for i in issues}
    assert got == set(moved)  # strangers score about 0 here: nothing else is close to a folder
    top = sorted(issues, key=lambda i: -i.score)[: len(moved)]
    assert {(i.identity, i.file, i.other_identity) for i in top} == set(moved)


def test_small_folders_are_skipped_and_one_face_folders_cannot_claim():
    c, moved = planted(7, plants=1)
    dst, copy, src = c.names.index(moved[0][0]), moved[0][1], c.names.index(moved[0][2])
    rows = np.arange(len(c.labels))
    dst_rows = [r for r in rows if c.labels[r] == dst]
    two = [r for r in rows if c.labels[r] != dst or c.files[r] == copy or r == dst_rows[-1]]
    if c.files[dst_rows[-1]] == copy:
        two.append(dst_rows[0])
    data = make_data(c.vectors[two], c.labels[two], c.names, [c.files[r] for r in two])
    assert not run_check("misfiled", data, same_quantile=0.05)  # the destination keeps 2 faces: which one is odd?
    # the source keeps only its best match to the copy: a one-photo folder claims nothing
    src_rows = [r for r in rows if c.labels[r] == src]
    best = max(src_rows, key=lambda r: float(c.vectors[r] @ c.vectors[c.files.index(copy)]))
    one = [r for r in rows if c.labels[r] != src or r == best]
    data = make_data(c.vectors[one], c.labels[one], c.names, [c.files[r] for r in one])
    assert not run_check("misfiled", data, same_quantile=0.05)
    got = {(i.identity, i.file, i.other_identity)
           for i in run_check("misfiled", data, min_other_faces=1, same_quantile=0.05)}
    assert moved[0] in got


def test_rules_errors_name_the_key(tmp_path):
    from dataset_checks.rules import RulesError, load_rules

    path = tmp_path / "rules.yaml"
    path.write_text("checks:\n  misfiled:\n    far: 2\n", encoding="utf-8")
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert info.value.key == "checks.misfiled.far" and "auto or a number in [-1, 1]" in str(info.value)
    path.write_text("checks:\n  misfiled:\n    far: 0.2\n    same: auto\n", encoding="utf-8")
    assert load_rules(path).check_settings("misfiled")["far"] == 0.2


# -- the test family and its CSV -------------------------------------------------------------



def test_family_fails_the_folder_holding_the_misfiled_face_and_writes_csv(pytester):
    c, moved = planted(11, n_folders=12, plants=1, noise=0.6)  # noise keeps the copy under --threshold
    root = pytester.path / "data"
    for name, vecs in c.folders().items():
        write_face01(root, name, vecs, files=c.folder_files()[name])
    rules = pytester.path / "r.yaml"
    rules.write_text("checks:\n  misfiled:\n    same_quantile: 0.05\n", encoding="utf-8")
    rec = pytester.inline_run(PKG, "-p", "no:cacheprovider", "--report-dir", "out", "--dataset", str(root),
                              "--threshold", "0.99", "--rules", str(rules))
    outcomes = family_outcomes(rec, "test_misfiled")
    assert {k for k, v in outcomes.items() if v == "failed"} == {moved[0][0]}
    assert outcomes == {moved[0][0]: "failed", "11 other identities": "passed"}
    with open(pytester.path / "out" / "misfiled.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][:5] == ["identity", "file", "other_identity", "other_file", "margin"]
    assert [tuple(r[:3]) for r in rows[1:]] == [moved[0]]
    assert rows[1][3].startswith(moved[0][2] + "_")


# -- LFW -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lfw_data():
    if not (LFW.is_dir() and any(LFW.glob("*/npKnown.npz"))):
        pytest.skip(f"LFW with dlib descriptors not found at {LFW}")
    from dataset_checks.discover import discover_identities
    from dataset_checks.vectors import load_table

    table = load_table(LFW, discover_identities(LFW), "dlib")
    return CheckData(root=LFW, rules=None, identities=table.identities, table=table, pairs=None, threshold=0.97)


def test_lfw_misfiled(lfw_data):
    issues = run_check("misfiled", lfw_data)
    got = {(i.identity, i.file, i.other_identity) for i in issues}
    # LFW's best-known label error: a photo of Barrichello filed under Schumacher (and, by the
    # photo, Abdullah Gul under Erdogan); the defaults report those and almost nothing else
    assert ("Michael_Schumacher", "Michael_Schumacher_0008.jpg", "Rubens_Barrichello") in got
    assert ("Recep_Tayyip_Erdogan", "Recep_Tayyip_Erdogan_0004.jpg", "Abdullah_Gul") in got
    assert len(issues) <= 6
    top = max(issues, key=lambda i: i.score)
    assert top.file == "Michael_Schumacher_0008.jpg"


# -- the search for a face's best other folder: with a floor, in any row order, in small blocks --

@FAST
@given(clusters(max_folders=12, max_dim=96), st.integers(1, 3), st.floats(-0.3, 0.9), st.integers(0, 2**32 - 1))
def test_best_other_with_a_floor_equals_brute_force(c, min_other, level, seed):
    """Below its floor a face gets no folder; at or above it, its best folder (as without a floor).
    The floors differ per face, as misfiled's do (same-person level, or own + margin)."""
    if not usable(c):
        return
    data = make_data(c.vectors, c.labels, c.names, c.files)
    fit = folder_fit(data)
    _, to_folder, _, _ = reference(c.vectors, c.labels, len(c.names), min_other)
    rows = np.arange(len(c.vectors))
    best = to_folder.max(axis=1)
    # floors about the best score (where a wrong bound would show), else anywhere
    rng = np.random.default_rng(seed)
    floor = np.where(np.isfinite(best) & (rng.random(rows.size) < 0.7), best, level)
    floor = floor + rng.uniform(-0.05, 0.05, rows.size)
    other, sim = fit.best_other(data, rows, min_other, floor=floor)
    above, below = best >= floor + TOL, best < floor - TOL
    assert (other[below] == -1).all() and np.isnan(sim[below]).all()
    assert (other[above] >= 0).all()
    np.testing.assert_allclose(sim[above], best[above], atol=TOL)
    np.testing.assert_allclose(to_folder[rows[above], other[above]], best[above], atol=TOL)
    # what the floor search learnt agrees with a later search without one
    full, full_sim = fit.best_other(data, rows, min_other)
    found = other >= 0
    assert (full[found] == other[found]).all() and np.array_equal(full_sim[found], sim[found])
    assert set(np.flatnonzero(full < 0)) == set(np.flatnonzero(~np.isfinite(best)))


@FAST
@given(clusters(max_folders=12, max_dim=96), st.integers(1, 3), st.integers(1, 8), st.integers(1, 40),
       st.integers(0, 2**32 - 1))
def test_best_other_in_tiles_of_folders_equals_brute_force(c, min_other, row_tile, cells, seed):
    """Faces in blocks of any size against the folder means in tiles of any width (each tile's
    best, then the best over tiles): the same best folders and floors as brute force."""
    from unittest import mock

    import dataset_checks.checks.folder_fit as fitting

    if not usable(c):
        return
    data = make_data(c.vectors, c.labels, c.names, c.files)
    _, to_folder, _, _ = reference(c.vectors, c.labels, len(c.names), min_other)
    rows = np.arange(len(c.vectors))
    best = to_folder.max(axis=1)
    none = ~np.isfinite(best)
    floor = np.where(none, 0.0, best) + np.random.default_rng(seed).uniform(-0.05, 0.05, rows.size)
    with mock.patch.object(fitting, "ROW_TILE", row_tile), mock.patch.object(fitting, "QUERY_CELLS", cells):
        fit = folder_fit(data)
        other, sim = fit.best_other(data, rows, min_other)
        fit_floor = folder_fit(make_data(c.vectors, c.labels, c.names, c.files))
        f_other, f_sim = fit_floor.best_other(data, rows, min_other, floor=floor)
    assert set(np.flatnonzero(other < 0)) == set(np.flatnonzero(none))
    np.testing.assert_allclose(sim[~none], best[~none], atol=TOL)
    np.testing.assert_allclose(to_folder[rows[~none], other[~none]], best[~none], atol=TOL)
    above, below = ~none & (best >= floor + TOL), none | (best < floor - TOL)
    assert (f_other[below] == -1).all() and (f_other[above] >= 0).all()
    np.testing.assert_allclose(f_sim[above], best[above], atol=TOL)


@FAST
@given(clusters(max_folders=6, max_size=12), st.integers(0, 2**32 - 1), st.integers(1, 5))
def test_folder_fit_in_any_row_order_and_block_size(c, seed, block_rows):
    """Rows need not be in folder order, and a folder larger than a block is summed over blocks:
    own(i) and the folder means are the same."""
    from unittest import mock

    import dataset_checks.checks.folder_fit as fitting

    if not usable(c):
        return
    rng = np.random.default_rng(seed)
    p = c.permuted(rng.permutation(len(c.labels)), rng.permutation(len(c.names)))
    data = make_data(p.vectors, p.labels, c.names, p.files)
    with mock.patch.object(fitting, "BLOCK_BYTES", 8 * p.dim * block_rows):
        fit = folder_fit(data)
    own, _, folder_mean, _ = reference(p.vectors, p.labels, len(c.names))
    np.testing.assert_allclose(fit.own, own, atol=TOL)
    np.testing.assert_allclose(fit.folder_mean, folder_mean, atol=TOL)
    for g in range(len(c.names)):  # members() names the folder's rows
        assert set(np.arange(len(p.labels))[fit.members(g)]) == set(np.flatnonzero(p.labels == g))
