"""Helpers shared by the tests (imported as `helpers`; tests/ is on sys.path)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

ARC = "efficientnetv2_arcface"


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_face01(
    root: Path,
    identity: str,
    vectors: np.ndarray,
    files: Sequence[str] | None = None,
    key: str = ARC,
    shape_3d: bool = False,
    **extra: np.ndarray,
) -> Path:
    """root/<identity>/npKnown.npz with `name` and `key` (optionally (N, 1, D))."""
    folder = Path(root) / identity
    folder.mkdir(parents=True, exist_ok=True)
    vectors = np.asarray(vectors, dtype=np.float32)
    if files is None:
        files = [f"{identity}_{k + 1:04d}.jpg" for k in range(len(vectors))]
    arr = vectors[:, None, :] if shape_3d else vectors
    path = folder / "npKnown.npz"
    np.savez(path, name=np.array(list(files), dtype=str), **{key: arr}, **extra)
    return path


def write_plain(root: Path, identity: str, vectors: np.ndarray, files: Sequence[str] | None = None) -> Path:
    """root/<identity>/embeddings.npz with `files` and `vectors`."""
    folder = Path(root) / identity
    folder.mkdir(parents=True, exist_ok=True)
    vectors = np.asarray(vectors, dtype=np.float32)
    if files is None:
        files = [f"{identity}_{k + 1:04d}.jpg" for k in range(len(vectors))]
    path = folder / "embeddings.npz"
    np.savez(path, files=np.array(list(files), dtype=str), vectors=vectors)
    return path


def write_dataset(root: Path, folders: dict[str, np.ndarray], key: str = ARC, shape_3d: bool = False) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, vecs in folders.items():
        write_face01(root, name, vecs, key=key, shape_3d=shape_3d)
    return root


def brute_force(vectors: np.ndarray, labels: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    """Independent reference: every i<j pair of different labels with float64 cosine >= threshold."""
    x = np.asarray(vectors, dtype=np.float64)
    sims = x @ x.T
    labels = np.asarray(labels)
    out = set()
    n = len(x)
    for i in range(n):
        for j in np.flatnonzero(sims[i, i + 1 :] >= threshold) + i + 1:
            if labels[i] != labels[j]:
                out.add((i, int(j)))
    return out


def pair_set(result) -> set[tuple[int, int]]:
    return set(zip(result.i.tolist(), result.j.tolist()))


def tree_state(root: Path) -> dict[str, tuple]:
    """Every entry under root: content hash and mtime (files), mtime (folders), mode."""
    import hashlib

    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            state[str(p.relative_to(root))] = (digest, st.st_mtime_ns, st.st_mode, st.st_size if digest else None)
    st = Path(root).stat()
    state["."] = (None, st.st_mtime_ns, st.st_mode, None)
    return state



def clustered(rng: np.random.Generator, sizes: Iterable[int], dim: int, intra: float = 0.6) -> list[np.ndarray]:
    """One random unit centre per folder; faces around it (ArcFace-like: same person ~intra)."""
    out = []
    for n in sizes:
        c = rng.standard_normal(dim)
        c /= np.linalg.norm(c)
        sigma = np.sqrt(1.0 / intra - 1.0) / np.sqrt(dim)
        out.append((c + sigma * rng.standard_normal((n, dim))).astype(np.float32))
    return out


def cross_identity_only(folder: Path, extra: str = "", keep: tuple[str, ...] = ()) -> Path:
    """A rules file with every registered check off: for tests about the cross-identity search,
    the baseline or the plugin, whose datasets also (rightly) trip the other checks."""
    from dataset_checks.checks import all_checks

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cross-identity-only.yaml"
    lines = ["checks:"] + [f"  {c.name}: {{enabled: false}}" for c in all_checks()
                           if c.name not in keep and not c.builtin]
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


def family_outcomes(rec, family: str) -> dict[str, str]:
    """test id inside the brackets -> outcome, for one test family of an in-process run."""
    out = {}
    for rep in rec.getreports("pytest_runtest_logreport"):
        if rep.when == "call" and f"::{family}[" in rep.nodeid:
            out[rep.nodeid.rsplit("[", 1)[1][:-1]] = rep.outcome
    return out


def engine_dataset(seed: int, dim: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, labels) for the engine tests: 30 folders of 20 faces, two crowds of
    near-identical frames, copies across folders; enough for IVF with 16 lists."""
    from strategies import build_clusters

    data = build_clusters(seed, dim, [20] * 30, 0.6, [150, 80], [(0, 3, 0.1), (1, 7, 0.2), (5, 11, 0.4)])
    return data.vectors, data.labels


def assert_same_result(a, b) -> None:
    """Two SearchResults are one: the same pairs, in the same order, with the same float64 similarities."""
    np.testing.assert_array_equal(a.i, b.i)
    np.testing.assert_array_equal(a.j, b.j)
    np.testing.assert_array_equal(a.sim, b.sim)


def search_account(info: dict) -> dict:
    """A search's info without what may differ between engines: timings, the engine's own record,
    and the certify pass's costs (a range engine batches a range's rows, not all rows, so its cap
    tests differ; its rows and result do not). Candidates, scored cells, nprobe, the bounds'
    counters and the certificate must be the local engine's."""
    cost = ("certify_seconds", "certify_cells", "certify_cap_tests", "certify_caps_scanned")
    out = {k: v for k, v in info.items() if k not in ("timings", "engine", *cost)}
    certify = out.get("certified", {}).get("certify")
    if certify:
        out["certified"] = {**out["certified"], "certify": {"rows": certify["rows"]}}
    return out


_FAKE_EMBEDDER = '''
import numpy as np

def embed(images):
    """Test embedder: 4x4 grid of grey means (16-d); a black image has no face."""
    out = []
    for im in images:
        if im.reshape(-1, 3).mean(axis=0).sum() < 5:
            out.append(None)
            continue
        h, w = im.shape[:2]
        out.append(np.array([im[i * h // 4:(i + 1) * h // 4, j * w // 4:(j + 1) * w // 4].mean()
                             for i in range(4) for j in range(4)], dtype=np.float32) - 127.0)
    return out

embed.model_name = MODEL
embed.model_version = "1"
'''


def fake_embedder(model_name: str) -> str:
    """Source of a module whose `embed` is a plugged embedder (no dlib) making `model_name` vectors."""
    return _FAKE_EMBEDDER.replace("MODEL", repr(model_name))

