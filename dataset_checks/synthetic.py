"""Deterministic synthetic face embeddings, written in FACE01's layout.

Used by the built-in demo, the benchmark and the tests. Identities are random directions on the
unit sphere; a face is its identity's direction plus noise, scaled so that two faces of one
person score about `intra` cosine (ArcFace-like: different people score about 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from numpy.typing import NDArray

from .vectors import FACE01_FILE


@dataclass
class SyntheticDataset:
    names: list[str]
    files: list[list[str]]
    vectors: list[NDArray[np.float32]]  # (n_i, dim) per identity, not normalised
    planted: list[tuple[str, str, str, str]] = field(default_factory=list)  # (id, file, other_id, other_file)

    def write(self, root: Path, key: str = "efficientnetv2_arcface", shape_3d: bool = True) -> Path:
        """FACE01 layout: root/<identity>/npKnown.npz with `name` and `key`."""
        root = Path(root)
        for name, files, vecs in zip(self.names, self.files, self.vectors):
            save_folder(root / name, files, vecs, key, shape_3d)
        return root


def save_folder(folder: Path, files: list[str], vecs: NDArray[np.floating[Any]], key: str = "efficientnetv2_arcface",
                shape_3d: bool = True, dtype: str = "float32") -> Path:
    """One identity folder's npKnown.npz (FACE01: ArcFace arrays are (N, 1, D))."""
    folder.mkdir(parents=True, exist_ok=True)
    arr = vecs[:, None, :] if shape_3d and key == "efficientnetv2_arcface" else vecs
    # numpy's stub types **kwds as the `allow_pickle` flag's bool; they are arrays to save
    np.savez(folder / FACE01_FILE, name=np.array(files, dtype=str), **{key: arr.astype(dtype)})  # type: ignore[arg-type]
    return folder / FACE01_FILE


def faces(rng: np.random.Generator, centre: NDArray[np.float64], n: int, intra: float) -> NDArray[np.float32]:
    dim = centre.shape[0]
    sigma = np.sqrt(1.0 / intra - 1.0) / np.sqrt(dim)
    out: NDArray[np.float32] = (centre + sigma * rng.standard_normal((n, dim))).astype(np.float32)
    return out


def unit(rng: np.random.Generator, dim: int) -> NDArray[np.float64]:
    v = rng.standard_normal(dim)
    out: NDArray[np.float64] = v / np.linalg.norm(v)
    return out


def seed_scale(
    n_identities: int = 1291,
    n_vectors: int = 57_637,
    dim: int = 512,
    n_planted: int = 300,
    crowded_every: int = 50,
    crowd_size: int = 400,
    intra: float = 0.65,
    seed: int = 0,
) -> SyntheticDataset:
    """A dataset shaped like the one that started this project: heavy-tailed folder sizes,
    crowded folders of near-identical frames, and photos copied into other folders."""
    plan = _Plan(n_identities, n_vectors, dim, n_planted, crowded_every, crowd_size, intra, seed)
    vectors = [plan.folder(i) for i in range(n_identities)]
    for a, ja, b, jb, noise in plan.plants():
        src = vectors[a][ja] / np.linalg.norm(vectors[a][ja])
        vectors[b][jb] = (src + noise).astype(np.float32)
    return SyntheticDataset(plan.names, [plan.files(i) for i in range(n_identities)], vectors, plan.planted)


def write_seed_scale(root: Path, dtype: str = "float32", key: str = "efficientnetv2_arcface",
                     **params: Any) -> int:
    """seed_scale(**params) written to root folder by folder, never all of it in memory (10M
    faces are 20 GB). With float32 the files are those of seed_scale(...).write(root); float16
    halves them (what fits on a small disk; the loader reads either). Returns the planted copies."""
    root = Path(root)
    plan = _Plan(**params)

    def save(i: int, vecs: NDArray[np.float32]) -> None:
        save_folder(root / plan.names[i], plan.files(i), vecs, key, dtype=dtype)

    def read(i: int) -> NDArray[np.float32]:
        with np.load(root / plan.names[i] / FACE01_FILE) as z:
            arr = z[key]
        out: NDArray[np.float32] = arr.reshape(len(arr), -1).astype(np.float32)
        return out

    for i in range(plan.n_identities):
        save(i, plan.folder(i))
    for a, ja, b, jb, noise in plan.plants():
        src = read(a)[ja]
        src = src / np.linalg.norm(src)
        vecs = read(b)
        vecs[jb] = (src + noise).astype(np.float32)
        save(b, vecs)
    return len(plan.planted)


class _Plan:
    """seed_scale's random choices, in one fixed order: folder sizes, each folder's faces, then
    the planted copies (the same dataset whether it is built in memory or written folder by folder)."""

    def __init__(self, n_identities: int = 1291, n_vectors: int = 57_637, dim: int = 512, n_planted: int = 300,
                 crowded_every: int = 50, crowd_size: int = 400, intra: float = 0.65, seed: int = 0):
        rng = self.rng = np.random.default_rng(seed)
        self.n_identities, self.n_vectors, self.dim, self.n_planted, self.intra = (
            n_identities, n_vectors, dim, n_planted, intra)
        sizes = rng.lognormal(3.3, 0.8, n_identities)
        sizes = np.maximum(2, sizes / sizes.sum() * n_vectors).astype(int)
        crowded = np.arange(0, n_identities, crowded_every) if crowded_every else np.array([], int)
        sizes[crowded] = crowd_size
        # the largest non-crowded folders absorb the rounding so the total is exact
        diff = n_vectors - int(sizes.sum())
        crowded_set = set(crowded.tolist())
        order = [k for k in np.argsort(-sizes) if k not in crowded_set]
        k = 0
        while diff:
            step = 1 if diff > 0 else -1
            if sizes[order[k % len(order)]] + step >= 2:
                sizes[order[k % len(order)]] += step
                diff -= step
            k += 1
        self.sizes, self.crowded, self.crowded_set = sizes, crowded, crowded_set
        self.names = [f"person_{i:04d}" for i in range(n_identities)]
        self.planted: list[tuple[str, str, str, str]] = []

    def files(self, i: int) -> list[str]:
        return [f"{self.names[i]}_{j:04d}.jpg" for j in range(int(self.sizes[i]))]

    def folder(self, i: int) -> NDArray[np.float32]:
        """Folder i's faces; folders must be asked for in order, 0 first."""
        centre = unit(self.rng, self.dim)
        m = int(self.sizes[i])
        if i in self.crowded_set:
            # a video: frames scatter tightly around one face
            base = faces(self.rng, centre, 1, self.intra)[0]
            return faces(self.rng, base / np.linalg.norm(base), m, 0.97)
        return faces(self.rng, centre, m, self.intra)

    def plants(self) -> Iterator[tuple[int, int, int, int, NDArray[np.float64]]]:
        """(a, ja, b, jb, noise): face jb of folder b becomes a copy of face ja of folder a (unit
        length) plus noise (re-encoded), in order; a later copy may take an earlier one's face."""
        rng, sizes, crowded, dim = self.rng, self.sizes, self.crowded, self.dim
        owners = np.repeat(np.arange(self.n_identities), sizes)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        for _ in range(self.n_planted):
            # half of them out of crowded folders, where top-k searches cannot see them
            if len(crowded) and rng.random() < 0.5:
                a = int(rng.choice(crowded))
                ja = int(rng.integers(sizes[a]))
            else:
                flat = int(rng.integers(self.n_vectors))
                a, ja = int(owners[flat]), int(flat - offsets[owners[flat]])
            b = int(rng.integers(self.n_identities))
            if b == a:
                continue
            jb = int(rng.integers(sizes[b]))
            noise = rng.uniform(0.02, 0.9) / np.sqrt(dim)
            yield a, ja, b, jb, noise * rng.standard_normal(dim)
            self.planted.append((self.names[a], f"{self.names[a]}_{ja:04d}.jpg", self.names[b],
                                 f"{self.names[b]}_{jb:04d}.jpg"))
