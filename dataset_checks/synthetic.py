"""Deterministic synthetic face embeddings, written in FACE01's layout.

Used by the built-in demo, the benchmark and the tests. Identities are random directions on the
unit sphere; a face is its identity's direction plus noise, scaled so that two faces of one
person score about `intra` cosine (ArcFace-like: different people score about 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .vectors import FACE01_FILE


@dataclass
class SyntheticDataset:
    names: list[str]
    files: list[list[str]]
    vectors: list[np.ndarray]  # float32 (n_i, dim) per identity, not normalised
    planted: list[tuple[str, str, str, str]] = field(default_factory=list)  # (id, file, other_id, other_file)

    def write(self, root: Path, key: str = "efficientnetv2_arcface", shape_3d: bool = True) -> Path:
        """FACE01 layout: root/<identity>/npKnown.npz with `name` and `key`."""
        root = Path(root)
        for name, files, vecs in zip(self.names, self.files, self.vectors):
            folder = root / name
            folder.mkdir(parents=True, exist_ok=True)
            arr = vecs[:, None, :] if shape_3d and key == "efficientnetv2_arcface" else vecs
            np.savez(folder / FACE01_FILE, name=np.array(files, dtype=str), **{key: arr.astype(np.float32)})
        return root


def faces(rng: np.random.Generator, centre: np.ndarray, n: int, intra: float) -> np.ndarray:
    dim = centre.shape[0]
    sigma = np.sqrt(1.0 / intra - 1.0) / np.sqrt(dim)
    return (centre + sigma * rng.standard_normal((n, dim))).astype(np.float32)


def unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    v = rng.standard_normal(dim)
    return v / np.linalg.norm(v)


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
    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(3.3, 0.8, n_identities)
    sizes = np.maximum(2, sizes / sizes.sum() * n_vectors).astype(int)
    crowded = np.arange(0, n_identities, crowded_every) if crowded_every else np.array([], int)
    sizes[crowded] = crowd_size
    # the largest non-crowded folders absorb the rounding so the total is exact
    diff = n_vectors - int(sizes.sum())
    order = [k for k in np.argsort(-sizes) if k not in set(crowded.tolist())]
    k = 0
    while diff:
        step = 1 if diff > 0 else -1
        if sizes[order[k % len(order)]] + step >= 2:
            sizes[order[k % len(order)]] += step
            diff -= step
        k += 1
    names = [f"person_{i:04d}" for i in range(n_identities)]
    files, vectors = [], []
    for i, m in enumerate(sizes):
        centre = unit(rng, dim)
        if i in set(crowded.tolist()):
            # a video: frames scatter tightly around one face
            base = faces(rng, centre, 1, intra)[0]
            vecs = faces(rng, base / np.linalg.norm(base), int(m), 0.97)
        else:
            vecs = faces(rng, centre, int(m), intra)
        vectors.append(vecs)
        files.append([f"{names[i]}_{j:04d}.jpg" for j in range(int(m))])
    planted = []
    owners = np.repeat(np.arange(n_identities), sizes)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    for _ in range(n_planted):
        # copy one face into another folder (re-encoded: a little noise), half of them out of
        # crowded folders, where top-k searches cannot see them
        if len(crowded) and rng.random() < 0.5:
            a = int(rng.choice(crowded))
            ja = int(rng.integers(sizes[a]))
        else:
            flat = int(rng.integers(n_vectors))
            a, ja = int(owners[flat]), int(flat - offsets[owners[flat]])
        b = int(rng.integers(n_identities))
        if b == a:
            continue
        jb = int(rng.integers(sizes[b]))
        src = vectors[a][ja] / np.linalg.norm(vectors[a][ja])
        noise = rng.uniform(0.02, 0.9) / np.sqrt(dim)
        vectors[b][jb] = (src + noise * rng.standard_normal(dim)).astype(np.float32)
        planted.append((names[a], files[a][ja], names[b], files[b][jb]))
    return SyntheticDataset(names, files, vectors, planted)
