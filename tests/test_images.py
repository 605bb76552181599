"""Decoding the images of an identity folder: every odd file becomes an array or a reason."""

import io

import numpy as np
import pytest
from PIL import Image

from dataset_checks.embed.images import MIN_SIDE, decode, has_images, list_images


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(w=64, h=48):
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, : w // 2] = (200, 30, 30)  # left half red: shows which way the image was turned
    return Image.fromarray(arr)


def test_plain_rgb_jpeg_png_webp_bmp():
    for fmt in ("JPEG", "PNG", "WEBP", "BMP"):
        d = decode(_bytes(_rgb(), fmt))
        assert d.error is None and d.array.shape == (48, 64, 3) and d.array.dtype == np.uint8
        assert d.notes == []


def test_greyscale_is_converted_and_noted():
    d = decode(_bytes(Image.new("L", (40, 40), 128), "PNG"))
    assert d.array.shape == (40, 40, 3) and (d.array == 128).all()
    assert any("greyscale" in n for n in d.notes)


def test_cmyk_jpeg_is_converted_and_noted():
    d = decode(_bytes(_rgb().convert("CMYK"), "JPEG"))
    assert d.array.shape == (48, 64, 3)
    assert d.array[:, :10, 0].mean() > 150 and d.array[:, -10:, 0].mean() < 40  # red stays red
    assert any("CMYK" in n for n in d.notes)


def test_16_bit_greyscale_is_scaled_not_clipped():
    arr = np.full((40, 40), 32768, dtype=np.uint16)  # mid grey in 16 bits
    d = decode(_bytes(Image.fromarray(arr), "PNG"))
    assert d.error is None
    assert abs(int(d.array[0, 0, 0]) - 128) <= 1  # not 255 (clipped) and not 0
    assert any("16-bit" in n for n in d.notes)


def test_exif_rotation_is_applied():
    img = _rgb(64, 48)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    d = decode(_bytes(img, "JPEG", exif=exif))
    assert d.array.shape == (64, 48, 3)  # upright: height and width swapped
    assert d.array[:10, :, 0].mean() > 150  # the red left half is now on top
    assert any("EXIF orientation 6" in n for n in d.notes)


def test_alpha_and_palette():
    rgba = Image.new("RGBA", (40, 40), (10, 20, 30, 128))
    assert decode(_bytes(rgba, "PNG")).array.shape == (40, 40, 3)
    pal = _rgb().convert("P")
    assert decode(_bytes(pal, "PNG")).array.shape == (48, 64, 3)


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\xff\xd8\xff\xe0" + b"\x00" * 20])
def test_garbage_is_unreadable(data):
    d = decode(data)
    assert d.array is None and "unreadable" in d.error


def test_truncated_jpeg_is_reported():
    good = _bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)), "JPEG")
    d = decode(good[: len(good) // 2])
    assert d.array is None and d.error


def test_tiny_image_is_reported():
    d = decode(_bytes(Image.new("RGB", (8, 8)), "PNG"))
    assert d.array is None and "too small" in d.error and str(MIN_SIDE) in d.error


def test_listing_ignores_other_files_and_subfolders(tmp_path):
    for name in ("a.JPG", "b.jpeg", "c.png", "d.webp", "e.bmp", "npKnown.npz", "notes.txt", ".hidden.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "noFace").mkdir()
    (tmp_path / "noFace" / "f.jpg").write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.jpeg", "c.png", "d.webp", "e.bmp"]
    assert has_images(tmp_path)
    assert not has_images(tmp_path / "noFace" / "missing")
