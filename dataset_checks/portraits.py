"""Face-like pictures for synthetic datasets, drawn from the embeddings themselves.

The demo and benchmark datasets hold embeddings only; their reports need pictures to show.
Each picture is drawn (Pillow, a few shapes) from a fixed projection of the face's own vector,
so two faces of one person look alike, a copied face looks like its source, and different
people look different. Deterministic and fast: about a millisecond per picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:  # Pillow is imported only when pictures are drawn
    from PIL.Image import Image

SIZE = 64
FEATURES = 14


def _projection(dim: int) -> NDArray[np.float64]:
    rng = np.random.default_rng(12345 + dim)
    out: NDArray[np.float64] = rng.standard_normal((dim, FEATURES)) / np.sqrt(dim)
    return out


def features(vectors: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
    """(n, FEATURES) values in (0, 1) from unit-normalised vectors."""
    x = np.asarray(vectors, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    z = x @ _projection(x.shape[1]) * np.sqrt(x.shape[1]) / 2.5
    out: NDArray[np.float64] = 1.0 / (1.0 + np.exp(-3.0 * z))
    return out


def portrait(f: NDArray[np.float64], size: int = SIZE) -> Image:
    from PIL import Image, ImageDraw

    s = size / 64.0
    bg = tuple(int(v) for v in (150 + 90 * f[0], 160 + 80 * f[1], 170 + 70 * f[2]))
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    skin = tuple(int(v) for v in (120 + 125 * f[3], 80 + 110 * f[3], 60 + 90 * f[3]))
    hair = tuple(int(v) for v in (20 + 140 * f[4], 15 + 90 * f[4] * f[5], 10 + 60 * f[5]))
    w, h = (15 + 6 * f[6]) * s, (19 + 6 * f[7]) * s
    cx, cy = 32 * s, 34 * s
    d.ellipse([cx - w - 2 * s, cy - h - 3 * s - 4 * s * f[8], cx + w + 2 * s, cy + h * 0.4], fill=hair)  # hair
    d.ellipse([cx - w, cy - h, cx + w, cy + h], fill=skin)  # face
    ey, ex, er = cy - h * 0.2, w * (0.35 + 0.2 * f[9]), (1.6 + 1.6 * f[10]) * s
    for sx in (-1, 1):
        d.ellipse([cx + sx * ex - er * 1.6, ey - er, cx + sx * ex + er * 1.6, ey + er], fill=(250, 250, 250))
        d.ellipse([cx + sx * ex - er * 0.7, ey - er * 0.7, cx + sx * ex + er * 0.7, ey + er * 0.7],
                  fill=(40 + int(80 * f[11]), 40 + int(60 * f[12]), 40))
        d.line([cx + sx * ex - er * 2, ey - er * 2.2 - 2 * s * f[13], cx + sx * ex + er * 2, ey - er * 2.2],
               fill=hair, width=max(1, int(1.5 * s)))  # brows
    d.line([cx, ey + 2 * s, cx - 2 * s * f[6], cy + h * 0.3], fill=tuple(int(v * 0.7) for v in skin), width=max(1, int(s)))
    my, mw, curve = cy + h * 0.55, w * (0.3 + 0.3 * f[12]), (f[13] - 0.3) * 6 * s
    d.arc([cx - mw, my - 3 * s - curve, cx + mw, my + 3 * s + curve], 20, 160, fill=(150, 40, 50), width=max(1, int(1.5 * s)))
    return im


def write_portraits(root: Path, names: list[str], files: list[list[str]], vectors: list[NDArray[np.float32]],
                    size: int = SIZE, quality: int = 80) -> int:
    """Write one JPEG per face into root/<identity>/<file>; returns the number written."""
    written = 0
    for name, fnames, vecs in zip(names, files, vectors):
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        for fname, f in zip(fnames, features(np.asarray(vecs).reshape(len(fnames), -1))):
            portrait(f, size).save(folder / fname, "JPEG", quality=quality)
            written += 1
    return written
