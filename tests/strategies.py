"""Hypothesis strategies for small face-embedding datasets.

A dataset is a handful of identity folders; each folder's faces scatter around a random unit
centre. On top of that:

* planted near-duplicates: a face copied (with a little noise) into another folder, the label
  error the tool exists to find;
* crowded folders: many near-identical vectors in one folder (video frames), with one of them
  copied into another folder, so that a top-k search from the crowded side sees only its own
  folder and misses the cross-folder hit.

Dimensions and sizes are small so that every example runs in milliseconds. The structure is
drawn by Hypothesis (so it shrinks); the vectors come from a numpy generator seeded by a drawn
integer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st


@dataclass
class Clusters:
    vectors: np.ndarray  # float32 (n, d), unit rows
    labels: np.ndarray  # int64 (n,): folder index
    names: list[str]  # folder names
    files: list[str]  # per row
    planted: list[tuple[int, int]] = field(default_factory=list)  # (source row, copy row)
    crowded: list[int] = field(default_factory=list)  # folder indices that are crowded

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def folders(self) -> dict[str, np.ndarray]:
        return {name: self.vectors[self.labels == k] for k, name in enumerate(self.names)}

    def folder_files(self) -> dict[str, list[str]]:
        return {name: [f for f, lab in zip(self.files, self.labels) if lab == k] for k, name in enumerate(self.names)}

    def permuted(self, row_order: np.ndarray, label_map: np.ndarray) -> "Clusters":
        """The same dataset with rows reordered and folder indices renamed."""
        return Clusters(
            vectors=np.ascontiguousarray(self.vectors[row_order]),
            labels=label_map[self.labels[row_order]],
            names=self.names,
            files=[self.files[r] for r in row_order],
        )


def _unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    v = rng.standard_normal(dim)
    return v / np.linalg.norm(v)


def build_clusters(
    seed: int,
    dim: int,
    sizes: list[int],
    intra: float,
    crowd_sizes: list[int],
    plants: list[tuple[int, int, float]],
) -> Clusters:
    """Deterministic construction from drawn parameters (also usable without Hypothesis)."""
    rng = np.random.default_rng(seed)
    blocks, crowded = [], []
    sigma = np.sqrt(1.0 / intra - 1.0) / np.sqrt(dim)
    for n in sizes:
        c = _unit(rng, dim)
        blocks.append(c + sigma * rng.standard_normal((n, dim)))
    for n in crowd_sizes:
        crowded.append(len(blocks))
        c = _unit(rng, dim)
        # frames of one video: cosine about 0.995 to each other
        frame_sigma = np.sqrt(1.0 / 0.995 - 1.0) / np.sqrt(dim)
        blocks.append(c + frame_sigma * rng.standard_normal((n, dim)))
    blocks = [b / np.linalg.norm(b, axis=1, keepdims=True) for b in blocks]
    planted = []
    offsets = np.cumsum([0] + [len(b) for b in blocks])
    for src_pick, dst_pick, noise in plants:
        # sources prefer crowded folders (the hard case), destinations any other folder
        pool = crowded or list(range(len(blocks)))
        a = pool[src_pick % len(pool)]
        others = [k for k in range(len(blocks)) if k != a]
        b = others[dst_pick % len(others)]
        ia = int(rng.integers(len(blocks[a])))
        ib = int(rng.integers(len(blocks[b])))
        v = blocks[a][ia] + noise / np.sqrt(dim) * rng.standard_normal(dim)
        blocks[b][ib] = v / np.linalg.norm(v)
        planted.append((int(offsets[a] + ia), int(offsets[b] + ib)))
    vectors = np.concatenate(blocks).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = np.repeat(np.arange(len(blocks)), [len(b) for b in blocks]).astype(np.int64)
    names = [f"person_{k:02d}" for k in range(len(blocks))]
    files = [f"{names[lab]}_{r:04d}.jpg" for r, lab in enumerate(labels)]
    return Clusters(vectors, labels, names, files, planted, crowded)


@st.composite
def clusters(
    draw,
    min_dim: int = 8,
    max_dim: int = 64,
    min_folders: int = 2,
    max_folders: int = 6,
    max_size: int = 8,
    crowds: bool = True,
    max_crowd: int = 30,
) -> Clusters:
    dim = draw(st.integers(min_dim, max_dim))
    sizes = draw(st.lists(st.integers(1, max_size), min_size=min_folders, max_size=max_folders))
    intra = draw(st.floats(0.3, 0.9))
    crowd_sizes = draw(st.lists(st.integers(12, max_crowd), max_size=2)) if crowds else []
    plants = draw(
        st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50), st.floats(0.0, 0.6)), max_size=4)
    )
    seed = draw(st.integers(0, 2**32 - 1))
    return build_clusters(seed, dim, sizes, intra, crowd_sizes, plants)


@st.composite
def crowded_clusters(draw, min_dim: int = 16, max_dim: int = 64) -> Clusters:
    """Always at least one crowded folder, with a frame copied into another folder."""
    dim = draw(st.integers(min_dim, max_dim))
    sizes = draw(st.lists(st.integers(2, 6), min_size=1, max_size=4))
    crowd_sizes = [draw(st.integers(15, 40))]
    plants = [(0, draw(st.integers(0, 10)), draw(st.floats(0.0, 0.3)))]
    seed = draw(st.integers(0, 2**32 - 1))
    return build_clusters(seed, dim, sizes, 0.6, crowd_sizes, plants)


# thresholds where ArcFace-like data has both hits and misses; kept off 1.0
thresholds = st.floats(0.3, 0.98)


def permutations(n: int):
    """A strategy for a permutation of range(n), as an int array."""
    return st.permutations(list(range(n))).map(lambda p: np.array(p, dtype=np.int64))
