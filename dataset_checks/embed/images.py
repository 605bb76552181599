"""Finding and decoding the images of an identity folder (Pillow), never raising for bad files.

Every image an embedder sees is an HxWx3 uint8 RGB numpy array, upright (EXIF orientation
applied). Greyscale, palette, alpha, CMYK and 16-bit images are converted; each conversion is
recorded as a note so the user can see what the tool did with the file.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..folderscan import IMAGE_EXTENSIONS as IMAGE_EXTENSIONS, is_image_name as is_image_name  # public here too

MIN_SIDE = 32  # smaller than this cannot hold a face any detector finds (dlib's HOG needs ~80 px)
MAX_PIXELS = 100_000_000  # larger images are refused instead of decoded (decompression bombs)


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in `folder` (not in subfolders such as FACE01's noFace/), sorted.

    Quiet about what it cannot read; `folderscan.scan_folder` reports it (prepare uses that)."""
    folder = Path(folder)
    out = []
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if not is_image_name(entry.name):
                    continue
                try:
                    if entry.is_file():
                        out.append(folder / entry.name)
                except OSError:
                    continue
    except OSError:
        return []
    out.sort(key=lambda p: p.name)
    return out


def has_images(folder: str | Path) -> bool:
    try:
        with os.scandir(folder) as it:
            return any(is_image_name(e.name) for e in it)
    except OSError:
        return False


@dataclass
class Decoded:
    """An image as the embedder sees it, or why there is none."""

    array: np.ndarray | None  # HxWx3 uint8 RGB, or None when the file cannot be used
    error: str | None = None  # why the file cannot be used
    notes: list[str] = field(default_factory=list)  # what was done to it (converted, rotated)


def _to_uint8(arr: np.ndarray, bits_hint: int) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    a = arr.astype(np.float64)
    if arr.dtype.kind == "f":
        top = 1.0 if np.nanmax(a, initial=0.0) <= 1.0 else 255.0
    else:
        top = float((1 << bits_hint) - 1)
    return np.clip(np.rint(np.nan_to_num(a) * (255.0 / top)), 0, 255).astype(np.uint8)


def decode(data: bytes) -> Decoded:
    """Bytes of an image file -> `Decoded`. Never raises for bad data."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    notes: list[str] = []
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format or "image"
            w, h = img.size
            if w * h > MAX_PIXELS:
                return Decoded(None, f"{fmt} of {w}x{h} pixels is too large to decode")
            img.load()
            orientation = img.getexif().get(0x0112, 1)
            if orientation not in (None, 1):
                img = ImageOps.exif_transpose(img)
                notes.append(f"rotated upright (EXIF orientation {orientation})")
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                arr = np.asarray(img)
                arr = _to_uint8(arr, 16)
                arr = np.repeat(arr[:, :, None], 3, axis=2)
                notes.append(f"16-bit greyscale ({mode}) scaled to 8-bit RGB" if mode != "F"
                             else "floating-point greyscale scaled to 8-bit RGB")
            else:
                if mode in ("L", "1", "LA", "La"):
                    notes.append("greyscale converted to RGB")
                elif mode == "CMYK":
                    notes.append("CMYK converted to RGB")
                elif mode in ("RGBA", "RGBa", "PA", "LA"):
                    notes.append("alpha channel dropped")
                elif mode not in ("RGB", "P"):
                    notes.append(f"{mode} converted to RGB")
                if mode in ("P", "PA"):
                    img = img.convert("RGBA")
                arr = np.asarray(img.convert("RGB"))
    except Image.DecompressionBombError as exc:
        return Decoded(None, f"refused: {exc}")
    except UnidentifiedImageError:
        return Decoded(None, "unreadable: not a recognised image format (corrupt or not an image)")
    except Exception as exc:  # Pillow raises many types for bad data (OSError, SyntaxError, ...)
        text = str(exc) or type(exc).__name__
        return Decoded(None, f"unreadable or corrupt image ({type(exc).__name__}: {text})")
    if arr.ndim != 3 or arr.shape[2] != 3:
        return Decoded(None, f"unexpected pixel layout {arr.shape}")
    h, w = arr.shape[:2]
    if min(h, w) < MIN_SIDE:
        return Decoded(None, f"too small: {w}x{h} pixels (a face needs at least {MIN_SIDE} px per side)", notes)
    return Decoded(np.ascontiguousarray(arr, dtype=np.uint8), None, notes)
