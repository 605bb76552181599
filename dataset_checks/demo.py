"""The built-in demo dataset: small, deterministic, with a few planted label errors.

`pytest dataset_checks` runs on it when neither rules.yaml nor --dataset names a dataset, so a
new user sees real failures within seconds of installing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from .synthetic import SyntheticDataset, faces, unit

DIM = 512
PEOPLE = [
    "Aiko_Tanaka", "Ana_María_López", "Chen_Wei", "David_Okafor", "Elena_Petrova",
    "Fatima_Zahra", "Grace_Kim", "Hannah_Schmidt", "Ingrid_Johansson", "João_Silva",
    "Kwame_Mensah", "Li_Na", "Lucas_Martin", "Maria_Rossi", "Mohammed_Ali",
    "Nadia_Haddad", "Olivia_Brown", "Pedro_Alves", "Priya_Sharma", "Rafael_Costa",
    "Sofia_Russo", "Tomás_García", "Yuki_Sato", "高橋一生",
]
LIVE_HOST = "Live_Stream_Host"  # a folder of 300 near-identical video frames
# The demo's look-alikes, allowlisted by the demo run itself: a user's rules start with none.
DEMO_ALLOW = (("Olsen_Ashley", "Olsen_Mary-Kate"), "twins (the demo dataset's look-alikes)")


def build(seed: int = 2024) -> SyntheticDataset:
    rng = np.random.default_rng(seed)
    names: list[str] = []
    files: list[list[str]] = []
    vectors: list[NDArray[np.float32]] = []
    centres: dict[str, NDArray[np.float64]] = {}

    def add(name: str, centre: NDArray[np.float64], n: int, intra: float = 0.6) -> None:
        names.append(name)
        vectors.append(faces(rng, centre, n, intra))
        files.append([f"{name}_{j + 1:04d}.jpg" for j in range(n)])

    for person in PEOPLE:
        centres[person] = unit(rng, DIM)
        add(person, centres[person], int(rng.integers(6, 16)))
    add(LIVE_HOST, unit(rng, DIM), 300, intra=0.97)
    # Planted error 1: one person under two names (高 and its variant 髙 look alike); the scraper
    # filed some of the same photos under both.
    add("髙橋一生", centres["高橋一生"], 5)
    # Twins: different people who look alike; the demo rules allowlist them.
    twin = unit(rng, DIM)
    add("Olsen_Ashley", twin + 0.12 * unit(rng, DIM), 6, intra=0.93)
    add("Olsen_Mary-Kate", twin + 0.12 * unit(rng, DIM), 6, intra=0.93)
    planted: list[tuple[str, str, str, str]] = []

    def copy(src: str, i: int, dst: str, j: int, noise: float = 0.1) -> None:
        a, b = names.index(src), names.index(dst)
        v = vectors[a][i] / np.linalg.norm(vectors[a][i])
        vectors[b][j] = (v + noise / np.sqrt(DIM) * rng.standard_normal(DIM)).astype(np.float32)
        planted.append((src, files[a][i], dst, files[b][j]))

    for i in range(3):
        copy("高橋一生", i, "髙橋一生", i, noise=0.3)
    # Planted error 2: one photo of Maria_Rossi filed under Sofia_Russo.
    copy("Maria_Rossi", 2, "Sofia_Russo", 0)
    # Planted error 3: a frame of the crowded folder copied into another folder; its 10 nearest
    # neighbours are all frames of its own folder, so a top-k search never reports it.
    copy(LIVE_HOST, 17, "Olivia_Brown", 1)
    return SyntheticDataset(names, files, vectors, planted)


def write_demo(root: Path, images: bool = True) -> Path:
    """Embeddings, and (images=True) a small drawn face per file, so report.html has thumbnails."""
    ds = build()
    ds.write(Path(root))
    if images:
        from .portraits import write_portraits

        write_portraits(Path(root), ds.names, ds.files, ds.vectors)
    return Path(root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the built-in demo dataset (FACE01 layout) to a folder.")
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    write_demo(args.folder)
    print(f"demo dataset written to {args.folder}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
