"""Safe decoding, corner ordering, deskew, thumbnails, model input — on real scans and made-up bad files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from papyrus_widgets import imaging
from papyrus_widgets.errors import CornersError, ImageError

from .conftest import reference

SCAN = reference("19331_p_g_107.jpg")


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def test_decode_real_scan_is_rgb_with_original_size():
    data = SCAN.read_bytes()
    full = Image.open(io.BytesIO(data)).size
    img = imaging.decode_image(data, max_side=512)
    assert img.mode == "RGB"
    assert max(img.size) == 512
    assert img.info["original_size"] == full
    assert img.info["format"] == "JPEG"


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", "empty"),
        (b"this is text, not an image", "not an image"),
        (SCAN.read_bytes()[:2000], "truncated"),
    ],
    ids=["empty", "text", "truncated-jpeg"],
)
def test_bad_bytes_give_readable_image_error(data, words):
    with pytest.raises(ImageError, match=words):
        imaging.decode_image(data, name="x.jpg")


def test_pixel_limit_checked_before_decoding():
    # a 20000 x 20000 one-bit PNG is tiny on disk but 400 MP when decoded
    bomb = _png(Image.new("1", (20000, 20000)))
    assert len(bomb) < 200_000
    with pytest.raises(ImageError, match="MP"):
        imaging.decode_image(bomb, max_pixels=60_000_000)


def test_byte_limit():
    with pytest.raises(ImageError, match="MB"):
        imaging.decode_image(b"x" * 2_000_001, max_bytes=1_000_000)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "1"])
def test_every_mode_becomes_rgb(mode):
    base = Image.new("RGB", (40, 30), (200, 120, 40))
    img = base.convert(mode) if mode not in ("I;16",) else Image.fromarray(np.full((30, 40), 40000, np.uint16))
    buf = io.BytesIO()
    img.save(buf, "TIFF" if mode in ("CMYK", "I;16") else "PNG")
    out = imaging.decode_image(buf.getvalue())
    assert out.mode == "RGB" and out.size == (40, 30)


def test_alpha_is_composited_over_white():
    img = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    out = imaging.decode_image(_png(img))
    assert out.getpixel((5, 5)) == (255, 255, 255)


def test_exif_orientation_is_honoured():
    img = Image.new("RGB", (60, 20), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    assert imaging.decode_image(buf.getvalue()).size == (20, 60)


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_phone_formats_decode_upright(fmt):
    """HEIC (iPhones) and AVIF photos decode, turned as their orientation says: stored lying on the
    side with orientation 6, a blue block at the stored top left shows at the top right."""
    stored = Image.new("RGB", (64, 48), (200, 120, 60))
    stored.paste((0, 0, 255), (0, 0, 16, 12))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, fmt, quality=90, exif=exif.tobytes())
    out = imaging.decode_image(buf.getvalue(), name="IMG_0001")
    assert out.size == (48, 64) and out.info["original_size"] == (48, 64)
    r, g, b = out.getpixel((44, 4))
    assert b > 200 and r < 60, out.getpixel((44, 4))
    r, g, b = out.getpixel((4, 4))
    assert r > 150 and b < 110, out.getpixel((4, 4))
    assert Path("IMG_0001.HEIC").suffix.lower() in imaging.IMAGE_SUFFIXES


def test_animated_gif_takes_first_frame():
    frames = [Image.new("P", (16, 16), i) for i in (1, 2, 3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert imaging.decode_image(buf.getvalue()).size == (16, 16)


def test_order_corners_any_order():
    square = [[10, 10], [110, 10], [110, 90], [10, 90]]
    for perm in ([2, 0, 3, 1], [3, 2, 1, 0], [1, 3, 0, 2]):
        got = imaging.order_corners([square[i] for i in perm], (200, 200))
        assert got.tolist() == square


@pytest.mark.parametrize(
    "corners, words",
    [
        ([[0, 0], [10, 10], [20, 20], [30, 30]], "one line"),
        ([[0, 0], [1, 1], [2, 2]], "four"),
        ([[0, 0], [10, 0], [float("nan"), 10], [0, 10]], "NaN"),
        ([[0, 0], [500, 0], [500, 500], [0, 500]], "outside"),
        ([[0, 0], [100, 0], [100, 100], [90, 10]], "convex"),
        ("abcd", "four"),
    ],
    ids=["collinear", "three", "nan", "outside", "concave", "garbage"],
)
def test_bad_corners(corners, words):
    with pytest.raises(CornersError, match=words):
        imaging.order_corners(corners, (200, 200))


def test_deskew_recovers_a_warped_rectangle():
    # paint a known pattern, warp it onto a bigger canvas with a perspective, then undo it
    rect = Image.new("RGB", (200, 100), (255, 255, 255))
    rect.paste((255, 0, 0), (0, 0, 100, 100))  # left half red, right half white
    canvas_size = (400, 300)
    quad = np.array([[60, 40], [330, 70], [300, 250], [80, 220]], dtype=float)
    coeffs = imaging._perspective_coefficients(quad, np.array([[0, 0], [200, 0], [200, 100], [0, 100]], float))
    warped = rect.transform(canvas_size, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BICUBIC)
    flat = imaging.deskew(warped, quad[[2, 0, 3, 1]].tolist())
    arr = np.asarray(flat.resize((200, 100)))
    assert arr[50, 40].tolist()[0] > 200 and arr[50, 40].tolist()[1] < 60  # red on the left
    assert min(arr[50, 160].tolist()) > 200  # white on the right


def test_thumbnail_and_model_input():
    img = imaging.decode_image(SCAN.read_bytes(), max_side=1024)
    thumb = Image.open(io.BytesIO(imaging.thumbnail_bytes(img, 128)))
    assert thumb.format == "JPEG" and max(thumb.size) == 128
    arr = imaging.model_input(img)
    assert arr.shape == (3, 224, 224) and arr.dtype == np.float32
    assert -2.2 < float(arr.min()) < float(arr.max()) < 2.7
