"""Images: safe decoding, four-corner deskew, thumbnails and model input arrays.

This is the one place that decodes an image; the widget, the API, ingest and training all call
:func:`decode_image`.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from .errors import CornersError, ImageError

try:  # HEIC/HEIF: what iPhones (and many Android phones) save photos as
    from pillow_heif import register_heif_opener
except ImportError:  # pragma: no cover - a dependency; without it HEIC is refused with a clear message
    HEIF = False
else:
    register_heif_opener()
    HEIF = True

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif", ".heic", ".heif", ".avif")
"""File name endings of the images that ingest, training, evaluation and the CLI read (what
:func:`decode_image` decodes: Pillow's plugins, HEIC/HEIF through ``pillow-heif``)."""
FORMATS = "JPEG, PNG, TIFF, WebP, HEIC, AVIF, BMP or GIF"

MODEL_INPUT_SIZE = 224
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# We enforce our own pixel limit before decoding; Pillow's bomb check stays on as a second guard
# at a higher level so that a setting above Pillow's default still works.
Image.MAX_IMAGE_PIXELS = 400_000_000


def image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files under ``folder`` (recursively, sorted, hidden files skipped); a file path
    gives itself. Raises :class:`ImageError` when it does not exist."""
    root = Path(folder).expanduser()
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise ImageError(f"no such folder: {root}")
    return sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


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
    - honours EXIF orientation (HEIC: its rotation, which ``pillow-heif`` applies on opening);
      takes the first frame of animations and the primary image of a HEIC;
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
        if data[4:8] == b"ftyp" and HEIF:  # an ISO-BMFF file (HEIC, AVIF) that did not open
            raise ImageError(
                f"{name} looks like a HEIC/AVIF file but could not be decoded: the file may be truncated or corrupt."
            ) from None
        raise ImageError(f"{name} is not an image Pillow can read: use {FORMATS}.") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name} is too large to decode safely ({exc}).") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{name} could not be decoded ({exc}): the file may be truncated or corrupt.") from None
    fmt = img.format
    original_size = (w, h)
    try:
        if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF says: shown rotated by 90 degrees
            original_size = (h, w)
        img = ImageOps.exif_transpose(img) or img  # type: ignore[assignment]  # an Image, no longer the file
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
    area = polygon_area(ordered)
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


def polygon_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def deskew(img: Image.Image, corners: Sequence[Sequence[float]], max_side: int = 1600) -> Image.Image:
    """Perspective-correct the quadrilateral ``corners`` of ``img`` into an upright rectangle."""
    quad = order_corners(corners, img.size)
    tl, tr, br, bl = quad
    width = float(max(np.linalg.norm(tr - tl), np.linalg.norm(br - bl)))
    height = float(max(np.linalg.norm(bl - tl), np.linalg.norm(br - tr)))
    scale = min(1.0, max_side / max(width, height))
    out_w, out_h = max(8, int(round(width * scale))), max(8, int(round(height * scale)))
    dst = np.array([[0, 0], [out_w, 0], [out_w, out_h], [0, out_h]], dtype=np.float64)
    coeffs = _perspective_coefficients(dst, quad)
    return img.transform((out_w, out_h), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BICUBIC)


FOCAL_RANGE = (0.5, 3.0)
"""The focal lengths, in long sides of the photo, that :func:`rectangle_aspect` accepts from the
corners' own perspective: a phone's main camera is about 0.75, its 2-3x zoom 1.5-2.2."""
FOCAL_DEFAULT = 1.2
"""The focal length (in long sides of the photo) :func:`rectangle_aspect` assumes where the corners
do not give one in :data:`FOCAL_RANGE`: between a phone's main camera and its zoom."""


def rectangle_aspect(corners: Sequence[Sequence[float]], size: tuple[int, int]) -> float:
    """The width / height of the rectangle (a sheet, a screen's picture of one) whose photo has
    these four ``corners``, from their perspective (Zhang and He, *Whiteboard scanning and image
    enhancement*, 2007): square pixels and the optical centre in the middle of the ``size``
    (width, height) photo, as a phone's are; the focal length solved from the two vanishing
    points, or :data:`FOCAL_DEFAULT` where they do not give one in :data:`FOCAL_RANGE` (a camera
    tilted about one of the sheet's axes only, or a sheet photographed nearly square-on, where the
    sides' own lengths give the ratio well and the focal length hardly matters). The sides' lengths
    in the photo can be far off: a sheet of 0.7 tilted 50° away looks 1.2 wide."""
    q = order_corners(corners, size)
    u0, v0 = size[0] / 2.0, size[1] / 2.0
    m1, m2, m4, m3 = (np.array([x, y, 1.0]) for x, y in q)  # top-left, top-right, bottom-right, bottom-left
    k2 = np.dot(np.cross(m1, m4), m3) / np.dot(np.cross(m2, m4), m3)
    k3 = np.dot(np.cross(m1, m4), m2) / np.dot(np.cross(m3, m4), m2)
    n2, n3 = k2 * m2 - m1, k3 * m3 - m1  # the sheet's two sides' directions, through the camera
    long_side = float(max(size))
    f = FOCAL_DEFAULT * long_side
    w = n2[2] * n3[2]
    if abs(w) > 1e-12:
        f2 = -(
            (n2[0] * n3[0] - (n2[0] * n3[2] + n2[2] * n3[0]) * u0 + w * u0 * u0)
            + (n2[1] * n3[1] - (n2[1] * n3[2] + n2[2] * n3[1]) * v0 + w * v0 * v0)
        ) / w
        if np.isfinite(f2) and f2 > 0 and FOCAL_RANGE[0] <= f2**0.5 / long_side <= FOCAL_RANGE[1]:
            f = float(f2**0.5)
    inv = np.linalg.inv(np.array([[f, 0.0, u0], [0.0, f, v0], [0.0, 0.0, 1.0]]))
    a, b = inv @ n2, inv @ n3
    return float(np.sqrt(np.dot(a, a) / np.dot(b, b)))


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



# --- corner suggestion ---------------------------------------------------------------------------

SUGGEST_WORK_SIDE = 384
"""Long side (px) at which :func:`suggest_corners` looks for the papyrus region."""


def suggest_corners(img: Image.Image, work_side: int = SUGGEST_WORK_SIDE) -> list[list[float]] | None:
    """Corners (TL, TR, BR, BL, in ``img``'s pixels) of the region that stands out from the background.

    The background colour is the median colour of the image's border; pixels far enough from it
    (Otsu threshold on the colour distance, at least a fixed contrast) are foreground. The largest
    foreground component is closed over small gaps, its convex hull is reduced to the largest
    inscribed quadrilateral, and each side of that quadrilateral is pushed outwards until the whole
    hull lies inside. Returns None when no separate region is found (the papyrus fills the photo,
    or nothing stands out): then the whole image is the query.
    """
    w, h = img.size
    if w < 16 or h < 16:
        return None
    small = img.convert("RGB")
    if max(w, h) > work_side:
        small = small.copy()
        small.thumbnail((work_side, work_side), Image.Resampling.BOX)
    arr = np.asarray(small, dtype=np.float32)
    sh, sw = arr.shape[:2]
    b = max(2, round(0.03 * min(sh, sw)))
    border = np.concatenate(
        [arr[:b].reshape(-1, 3), arr[-b:].reshape(-1, 3), arr[:, :b].reshape(-1, 3), arr[:, -b:].reshape(-1, 3)]
    )
    background = np.median(border, axis=0)
    spread = float(np.median(np.linalg.norm(border - background, axis=1)))
    dist = np.linalg.norm(arr - background, axis=2)
    threshold = max(_otsu(dist), 24.0, 3.0 * spread)
    mask = Image.fromarray(((dist > threshold) * 255).astype(np.uint8), "L")
    size = 5 if min(sh, sw) >= 100 else 3
    mask = mask.filter(ImageFilter.MaxFilter(size)).filter(ImageFilter.MinFilter(size))  # close gaps, holes
    mask = mask.filter(ImageFilter.MinFilter(3)).filter(ImageFilter.MaxFilter(3))  # drop specks
    component = _largest_component(np.asarray(mask) > 127)
    if component is None:
        return None
    fraction = component.sum() / component.size
    if fraction < 0.02 or fraction > 0.97:
        return None
    hull = _convex_hull(_component_outline(component))
    if len(hull) < 4:
        return None
    quad = _enclosing_quad(hull, _largest_inscribed_quad(hull))
    quad[:, 0] = np.clip(quad[:, 0], 0, sw) * (w / sw)
    quad[:, 1] = np.clip(quad[:, 1], 0, sh) * (h / sh)
    try:
        ordered = order_corners(quad.tolist(), (w, h))
    except CornersError:
        return None
    return [[round(float(x), 1), round(float(y), 1)] for x, y in ordered]


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=256, range=(0.0, float(values.max()) + 1e-6))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(hist).astype(np.float64)
    total = weight[-1]
    if total == 0:
        return 0.0
    mean = np.cumsum(hist * centres)
    w0, w1 = weight[:-1], total - weight[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        m0 = mean[:-1] / w0
        m1 = (mean[-1] - mean[:-1]) / w1
        between = w0 * w1 * (m0 - m1) ** 2
    between = np.nan_to_num(between, nan=-1.0)
    return float(centres[int(np.argmax(between))])


def _largest_component(mask: np.ndarray) -> np.ndarray | None:
    """The largest 4-connected True region of ``mask`` that keeps off the image's edge (the papyrus
    lies inside the photo; regions touching the edge are mounts, tables, rulers), else the largest.

    Union-find over the runs of each row, so it stays fast in pure numpy + Python.
    """
    runs: list[tuple[int, int, int]] = []  # (row, start, end exclusive)
    row_runs: list[list[int]] = []
    for y in range(mask.shape[0]):
        padded = np.concatenate(([False], mask[y], [False])).astype(np.int8)
        edges = np.flatnonzero(np.diff(padded))
        ids = []
        for start, end in zip(edges[::2], edges[1::2]):
            ids.append(len(runs))
            runs.append((y, int(start), int(end)))
        row_runs.append(ids)
    if not runs:
        return None
    parent = list(range(len(runs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for y in range(1, len(row_runs)):
        above, here = row_runs[y - 1], row_runs[y]
        i = j = 0
        while i < len(above) and j < len(here):
            _, a0, a1 = runs[above[i]]
            _, b0, b1 = runs[here[j]]
            if a0 < b1 and b0 < a1:  # overlapping runs touch
                ra, rb = find(above[i]), find(here[j])
                if ra != rb:
                    parent[ra] = rb
            if a1 < b1:
                i += 1
            else:
                j += 1
    height, width = mask.shape
    sizes: dict[int, int] = {}
    on_edge: set[int] = set()
    for idx, (y, start, end) in enumerate(runs):
        root = find(idx)
        sizes[root] = sizes.get(root, 0) + end - start
        if y == 0 or y == height - 1 or start == 0 or end == width:
            on_edge.add(root)
    inner = [r for r in sizes if r not in on_edge and sizes[r] >= 0.02 * mask.size]
    best = max(inner or list(sizes), key=sizes.__getitem__)
    out = np.zeros(mask.shape, dtype=bool)
    for idx, (y, start, end) in enumerate(runs):
        if find(idx) == best:
            out[y, start:end] = True
    return out


def _component_outline(component: np.ndarray) -> np.ndarray:
    """Pixel-corner points of the leftmost and rightmost pixel of every row (enough for the hull)."""
    rows = np.flatnonzero(component.any(axis=1))
    left = np.argmax(component[rows], axis=1)
    right = component.shape[1] - np.argmax(component[rows, ::-1], axis=1)
    ys = rows.astype(np.float64)
    return np.concatenate(
        [
            np.stack([left, ys], axis=1),
            np.stack([left, ys + 1], axis=1),
            np.stack([right, ys], axis=1),
            np.stack([right, ys + 1], axis=1),
        ]
    ).astype(np.float64)


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Convex hull (Andrew's monotone chain), counter-clockwise in a y-up frame, no repeated point."""
    pts = np.unique(points, axis=0)
    if len(pts) < 3:
        return pts

    def cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
        return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))

    lower: list[np.ndarray] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[np.ndarray] = []
    for p in pts[::-1]:
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1])


def _largest_inscribed_quad(hull: np.ndarray) -> np.ndarray:
    """The four hull vertices spanning the largest quadrilateral (in hull order)."""
    if len(hull) > 160:  # keep the O(n^3) search small: every k-th vertex is close enough
        hull = hull[np.linspace(0, len(hull), 160, endpoint=False).astype(int)]
    n = len(hull)
    d = hull[None, :, :] - hull[:, None, :]  # d[i, k] = P[k] - P[i]
    # tri[i, k, j] = cross(P[k] - P[i], P[j] - P[i]) = twice the signed area of triangle (i, k, j)
    tri = d[:, :, None, 0] * d[:, None, :, 1] - d[:, :, None, 1] * d[:, None, :, 0]
    idx = np.arange(n)
    best, best_quad = -1.0, hull[:4]
    for i in range(n):
        for k in range(i + 2, n):
            if i == 0 and k == n - 1:
                continue
            inside = (idx > i) & (idx < k)
            outside = ~inside & (idx != i) & (idx != k)
            a = tri[i, k]
            j1 = int(np.flatnonzero(inside)[np.argmax(np.abs(a[inside]))])
            j2 = int(np.flatnonzero(outside)[np.argmax(np.abs(a[outside]))])
            area = abs(a[j1]) + abs(a[j2])
            if area > best:
                best = area
                best_quad = hull[[i, j1, k, j2]]
    return np.asarray(best_quad, dtype=np.float64)


def _enclosing_quad(hull: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """Push each side of ``quad`` outwards (parallel) until every hull point is inside; new corners."""
    centre = quad.mean(axis=0)
    lines = []
    for a, b in zip(quad, np.roll(quad, -1, axis=0)):
        direction = b - a
        normal = np.array([direction[1], -direction[0]])
        norm = np.linalg.norm(normal)
        if norm == 0:
            return quad
        normal /= norm
        if np.dot(centre - a, normal) > 0:  # make the normal point outwards
            normal = -normal
        offset = max(float(np.max((hull - a) @ normal)), 0.0)
        lines.append((a + normal * offset, direction))
    corners = []
    for i in range(4):  # the corner at quad[i] joins side i-1 and side i
        (p1, d1), (p2, d2) = lines[i - 1], lines[i]
        m = np.array([[d1[0], -d2[0]], [d1[1], -d2[1]]], dtype=np.float64)
        if abs(np.linalg.det(m)) < 1e-9:
            return quad
        t = np.linalg.solve(m, np.asarray(p2 - p1, dtype=np.float64))
        corners.append(p1 + d1 * t[0])
    return np.asarray(corners, dtype=np.float64)
