"""Images: safe decoding, four-corner deskew, thumbnails and model input arrays.

This is the one place that decodes an image; the widget, the API, ingest and training all call
:func:`decode_image`.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import CornersError, ImageError

MODEL_INPUT_SIZE = 224
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# We enforce our own pixel limit before decoding; Pillow's bomb check stays on as a second guard
# at a higher level so that a setting above Pillow's default still works.
Image.MAX_IMAGE_PIXELS = 400_000_000


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_image(
    data: bytes,
    *,
    max_pixels: int = 60_000_000,
    max_bytes: int | None = None,
    max_side: int | None = None,
    name: str = "image",
) -> Image.Image:
    """Decode ``data`` into an RGB image, safely.

    - refuses empty, oversized (bytes or pixels, checked from the header before decoding) and
      non-image data with :class:`ImageError`;
    - honours EXIF orientation; takes the first frame of animations;
    - converts every mode (palette, alpha, 16-bit, CMYK, greyscale) to RGB, alpha over white;
    - ``max_side``: return at most this long side; big JPEGs are decoded in draft mode (fast).
    """
    if not data:
        raise ImageError(f"{name} is empty (0 bytes): choose an image file (JPEG, PNG, TIFF, WebP).")
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageError(
            f"{name} is {len(data) / 1e6:.0f} MB, over the limit of {max_bytes / 1e6:.0f} MB: "
            "downscale it or raise PAPYRUS_MAX_UPLOAD_BYTES."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w < 1 or h < 1:
                raise ImageError(f"{name} has no pixels ({w}x{h}).")
            if w * h > max_pixels:
                raise ImageError(
                    f"{name} is {w}x{h} = {w * h / 1e6:.0f} MP, over the limit of {max_pixels / 1e6:.0f} MP: "
                    "downscale it or raise PAPYRUS_MAX_IMAGE_PIXELS."
                )
            if max_side and img.format == "JPEG" and max(w, h) > 2 * max_side:
                img.draft("RGB", (max_side, max_side))
            img.seek(0)
            img.load()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(
            f"{name} is not an image Pillow can read: use JPEG, PNG, TIFF, WebP, BMP or GIF."
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name} is too large to decode safely ({exc}).") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{name} could not be decoded ({exc}): the file may be truncated or corrupt.") from None
    fmt = img.format
    original_size = (w, h)
    try:
        if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF says: shown rotated by 90 degrees
            original_size = (h, w)
        img = ImageOps.exif_transpose(img) or img
    except Exception:  # a broken EXIF block must not lose the image
        pass
    rgb = to_rgb(img)
    if max_side and max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    rgb.info["original_size"] = original_size
    rgb.info["format"] = fmt
    return rgb


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode → RGB; transparency is composited over white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 1.0
        lo = arr.min() if arr.size else 0.0
        scaled = ((arr - lo) / (hi - lo or 1.0) * 255.0).astype(np.uint8)
        return Image.fromarray(scaled, "L").convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def order_corners(corners: Sequence[Sequence[float]], size: tuple[int, int] | None = None) -> np.ndarray:
    """Validate four corner points and order them top-left, top-right, bottom-right, bottom-left.

    Points may come in any order. ``size`` (width, height) checks that they lie on the image
    (2 % tolerance). Raises :class:`CornersError` for wrong counts, NaN, points off the image,
    collinear or tiny quadrilaterals.
    """
    try:
        pts = np.asarray(corners, dtype=np.float64)
    except (TypeError, ValueError):
        raise CornersError("corners must be four (x, y) points in image pixels.") from None
    if pts.shape != (4, 2):
        raise CornersError(f"corners must be four (x, y) points, got shape {pts.shape}.")
    if not np.all(np.isfinite(pts)):
        raise CornersError("corners contain NaN or infinite values: mark the four corners again.")
    if size is not None:
        w, h = size
        tol = 0.02 * max(w, h)
        if np.any(pts[:, 0] < -tol) or np.any(pts[:, 0] > w + tol) or np.any(pts[:, 1] < -tol) or np.any(
            pts[:, 1] > h + tol
        ):
            raise CornersError(f"corners lie outside the {w}x{h} image: mark them on the papyrus.")
        pts[:, 0] = np.clip(pts[:, 0], 0, w)
        pts[:, 1] = np.clip(pts[:, 1], 0, h)
    centre = pts.mean(axis=0)
    angles = np.arctan2(pts[:, 1] - centre[1], pts[:, 0] - centre[0])
    ordered = pts[np.argsort(angles)]  # clockwise on screen (y down), starting anywhere
    start = int(np.argmin(ordered.sum(axis=1)))
    ordered = np.roll(ordered, -start, axis=0)
    area = _polygon_area(ordered)
    extent = np.ptp(pts, axis=0)
    if area < 1e-3 * max(extent[0] * extent[1], 1.0) or min(extent) < 4:
        raise CornersError("the four corners are (nearly) on one line: mark the corners of the papyrus.")
    if size is not None and area < 1e-4 * size[0] * size[1]:
        raise CornersError("the marked area is too small: mark the four corners of the papyrus.")
    # After angular ordering a quadrilateral is simple; require convexity so the warp is sane.
    edges = np.roll(ordered, -1, axis=0) - ordered
    nxt = np.roll(edges, -1, axis=0)
    cross = edges[:, 0] * nxt[:, 1] - edges[:, 1] * nxt[:, 0]
    if not (all(c > 0 for c in cross) or all(c < 0 for c in cross)):
        raise CornersError("the corners do not form a convex quadrilateral: drag them to the papyrus' corners.")
    return ordered


def _polygon_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def deskew(img: Image.Image, corners: Sequence[Sequence[float]], max_side: int = 1600) -> Image.Image:
    """Perspective-correct the quadrilateral ``corners`` of ``img`` into an upright rectangle."""
    quad = order_corners(corners, img.size)
    tl, tr, br, bl = quad
    width = max(np.linalg.norm(tr - tl), np.linalg.norm(br - bl))
    height = max(np.linalg.norm(bl - tl), np.linalg.norm(br - tr))
    scale = min(1.0, max_side / max(width, height))
    out_w, out_h = max(8, int(round(width * scale))), max(8, int(round(height * scale)))
    dst = np.array([[0, 0], [out_w, 0], [out_w, out_h], [0, out_h]], dtype=np.float64)
    coeffs = _perspective_coefficients(dst, quad)
    return img.transform((out_w, out_h), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BICUBIC)


def _perspective_coefficients(src: np.ndarray, dst: np.ndarray) -> tuple[float, ...]:
    """Coefficients mapping output points ``src`` onto input points ``dst`` (Pillow's convention)."""
    rows = []
    rhs = []
    for (x, y), (u, v) in zip(src, dst):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs.extend([u, v])
    try:
        sol = np.linalg.solve(np.asarray(rows, dtype=np.float64), np.asarray(rhs, dtype=np.float64))
    except np.linalg.LinAlgError:
        raise CornersError("the corners do not define a perspective: mark four distinct corners.") from None
    return tuple(float(c) for c in sol)


def thumbnail_bytes(img: Image.Image, size: int = 256, quality: int = 85) -> bytes:
    """A JPEG thumbnail whose long side is ``size`` pixels."""
    thumb = img.copy()
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def jpeg_bytes(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def model_input(img: Image.Image, size: int = MODEL_INPUT_SIZE) -> np.ndarray:
    """``img`` → float32 array (3, size, size), ImageNet-normalised, as the network expects.

    The whole papyrus is resized to a square (no crop), as in the original papyrusNet.
    """
    resized = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(resized, dtype=np.float32) / 255.0
    arr = (arr - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(arr.transpose(2, 0, 1))

