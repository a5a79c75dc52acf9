"""Query photos that look like real use: a phone photo of a screen, a desk or a lightbox.

Independent of :func:`papyrus_widgets.training.recapture` (which the model trains on), so that
evaluating on these scenes is not circular. Each scene composes a target scan into a whole
photograph (windows and thumbnails on a monitor; other papyri, a ruler, a colour chart and hands
on a desk; a lightbox under glass), views it through a pinhole camera at an angle, then applies
photo effects (moiré, glare, vignetting, blur, noise, colour cast, gamma, JPEG). ``Scene.corners``
are exactly where the target's TL, TR, BR, BL corners land in the final frame. All randomness
comes from the ``rng`` argument: the same seed gives the same pixels.

Geometry uses edge coordinates (pixel ``(i, j)`` covers ``[i, i+1] x [j, j+1]``); a 3x3 matrix
maps an object's pixels to the world plane, the camera maps the world plane to the frame.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import cv2
import numpy as np
from PIL import Image

KINDS = ("screen", "desk", "lightbox")
FRACTION_RANGE = (0.10, 0.40)
TARGET_MAX_SIDE = 1400
"""The target is first downscaled to at most this long side (speed; the frame never needs more)."""

# Approximate sRGB values of a 24-patch colour checker, row by row.
CHART = np.array(
    [[115, 82, 68], [194, 150, 130], [98, 122, 157], [87, 108, 67], [133, 128, 177], [103, 189, 170],
     [214, 126, 44], [80, 91, 166], [193, 90, 99], [94, 60, 108], [157, 188, 64], [224, 163, 46],
     [56, 61, 150], [70, 148, 73], [175, 54, 60], [231, 199, 31], [187, 86, 149], [8, 133, 161],
     [243, 243, 242], [200, 200, 200], [160, 160, 160], [122, 122, 121], [85, 85, 85], [52, 52, 52]],
    dtype=np.float32,
)  # fmt: skip


@dataclass
class Scene:
    """A synthetic phone photo and where the target scan's corners lie in it."""

    image: Image.Image
    """RGB photo, ``size`` pixels (default 1600 x 1200)."""
    corners: np.ndarray
    """(4, 2) float: the target image's TL, TR, BR, BL corners in ``image`` pixels (edge coordinates)."""
    kind: str
    """``"screen"``, ``"desk"`` or ``"lightbox"``."""
    target_fraction: float
    """Area of the target quadrilateral / frame area (of the whole outline, even where part of it
    lies outside the frame, as in a close-up)."""
    orientation: int = 1
    """The EXIF orientation to save ``image`` with (1: as it is; 6: stored turned a quarter to the
    left, tagged to be shown turned back, as a phone held upright writes it): see :func:`encode`."""


# --------------------------------------------------------------------------------------------- geometry


def _t(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0, dx], [0, 1, dy], [0, 0, 1]])


def _s(sx: float, sy: float | None = None) -> np.ndarray:
    return np.diag([sx, sx if sy is None else sy, 1.0])


def _r(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.c_[np.asarray(pts, dtype=np.float64), np.ones(len(pts))] @ m.T
    return p[:, :2] / p[:, 2:3]


def _rect(w: float, h: float) -> np.ndarray:
    return np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])


def _place(w: float, h: float, cx: float, cy: float, deg: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """Object pixels → world: centred on (cx, cy), rotated by ``deg``, scaled by ``scale``."""
    return _t(cx, cy) @ _r(deg) @ _s(scale) @ _t(-w / 2, -h / 2)


def _area(q: np.ndarray) -> float:
    x, y = q[:, 0], q[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _camera(
    rng: np.random.Generator,
    world_side: float,
    image_side: float,
    frame_w: int,
    tilt_range: tuple[float, float],
    max_roll: float,
) -> np.ndarray:
    """World plane (centred on 0, 0) → image: a pinhole camera tilted by ``tilt_range`` degrees."""
    tilt, phi = math.radians(rng.uniform(*tilt_range)), rng.uniform(0, 2 * math.pi)
    rot_tilt, _ = cv2.Rodrigues(np.array([math.cos(phi), math.sin(phi), 0.0]) * tilt)
    rot = _r(rng.uniform(-max_roll, max_roll)) @ rot_tilt
    f = frame_w * rng.uniform(1.1, 1.5)
    d = f * world_side / image_side  # distance that gives the wanted size near the optical axis
    return np.diag([f, f, 1.0]) @ np.c_[rot[:, 0], rot[:, 1], [0.0, 0.0, d]]  # fmt: skip


def _fit(
    cam: np.ndarray, quad: np.ndarray, size: tuple[int, int], fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Scale and shift ``cam`` so the target ``quad`` (world) covers ``fraction`` of the frame,
    wholly inside it (shrunk if it would not fit); returns the camera and the fraction reached."""
    w, h = size
    q = _apply(cam, quad)
    k = math.sqrt(fraction * w * h / _area(q))
    margin = 0.02 * min(w, h)
    span = (q.max(0) - q.min(0)) * k
    k *= min(1.0, (w - 2 * margin) / span[0], (h - 2 * margin) / span[1])
    q = q * k
    lo, hi = margin - q.min(0), np.array([w, h]) - margin - q.max(0)
    shift = rng.uniform(lo, np.maximum(lo, hi))
    cam = _t(*shift) @ _s(k) @ cam
    return cam, _area(_apply(cam, quad)) / (w * h)


def _centre(m: np.ndarray) -> np.ndarray:
    """An edge-coordinate homography as cv2 wants it (pixel centres at integers)."""
    return _t(-0.5, -0.5) @ m @ _t(0.5, 0.5)


# --------------------------------------------------------------------------------------------- drawing


def _pixels(img: Image.Image, max_side: int) -> np.ndarray:
    """float32 in 0..1, at most ``max_side`` long: (h, w, 4) if ``img`` has transparency, else (h, w, 3)."""
    img = _shrink(img, max_side)
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    return np.asarray(img.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32) / 255.0


def _shrink(img: Image.Image, max_side: int) -> Image.Image:
    """``img`` downscaled to at most ``max_side`` long (unchanged if already small)."""
    if max(img.size) <= max_side:
        return img
    k = max_side / max(img.size)
    new = (max(1, round(img.width * k)), max(1, round(img.height * k)))
    return img.resize(new, Image.Resampling.BILINEAR, reducing_gap=2.0)


def _solid(w: int, h: int, colour: Sequence[float] | np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
    """A plain colour (0..255) object: opaque (h, w, 3), or (h, w, 4) with ``alpha``."""
    out = np.empty((h, w, 3 if alpha is None else 4), np.float32)
    out[..., :3] = np.asarray(colour, np.float32) / 255.0
    if alpha is not None:
        out[..., 3] = alpha
    return out


def _paste(
    frame: np.ndarray, obj: np.ndarray, m: np.ndarray, shadow: float = 0.0
) -> tuple[np.ndarray, int, int] | None:
    """Composite ``obj`` (h, w, 4; or h, w, 3: opaque) onto ``frame`` through ``m`` (object edge px →
    frame); an optional soft drop shadow of strength ``shadow``.
    Returns the warped alpha and its ROI's top left (or None)."""
    h, w = obj.shape[:2]
    q = _apply(m, _rect(w, h))
    k = math.sqrt(_area(q) / (w * h))
    if k < 0.7:  # downscale first: warpPerspective does not antialias
        small = cv2.resize(obj, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA)
        m = m @ _s(w / small.shape[1], h / small.shape[0])
        obj = small
    blur = 0.01 * math.sqrt(_area(q)) if shadow else 0.0
    pad = int(3 * blur) + 2
    x0, y0 = np.floor(q.min(0)).astype(int) - pad
    x1, y1 = np.ceil(q.max(0)).astype(int) + pad
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(frame.shape[1], x1), min(frame.shape[0], y1)
    if x1 <= x0 or y1 <= y0:
        return None
    roi_m = _t(-x0, -y0) @ m
    if obj.shape[2] == 3:  # opaque: the alpha is the projected rectangle, drawn anti-aliased
        out = cv2.warpPerspective(obj, _centre(roi_m), (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR)
        alpha = np.zeros(out.shape[:2], np.float32)
        pts = np.round(_apply(roi_m, _rect(obj.shape[1], obj.shape[0])) * 16 - 8).astype(np.int32)
        cv2.fillConvexPoly(alpha, pts, 1.0, cv2.LINE_AA, 4)
        out *= alpha[..., None]
    else:
        pre = obj.copy()
        pre[..., :3] *= obj[..., 3:4]  # premultiplied: no dark fringe at the edges
        out = cv2.warpPerspective(pre, _centre(roi_m), (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR)
        alpha = out[..., 3]
    roi = frame[y0:y1, x0:x1]
    if shadow:
        sh, o = cv2.GaussianBlur(alpha, (0, 0), blur + 0.5), int(blur)
        if o < min(roi.shape[0], roi.shape[1]):  # a sliver at the frame's edge casts no shadow
            roi[o:, o:] *= 1.0 - shadow * sh[: sh.shape[0] - o, : sh.shape[1] - o, None]  # offset down-right
    roi *= 1.0 - alpha[..., None]
    roi += out[..., :3]
    return alpha, int(x0), int(y0)


def _gradient(w: int, h: int, c0: np.ndarray, c1: np.ndarray, deg: float) -> np.ndarray:
    """float32 (h, w, 3) linear gradient from colour ``c0`` to ``c1`` (0..255) along direction ``deg``."""
    x = np.linspace(-0.5, 0.5, 33, dtype=np.float32) * math.cos(math.radians(deg))
    y = np.linspace(-0.5, 0.5, 33, dtype=np.float32) * math.sin(math.radians(deg))
    t = np.clip(x[None, :] + y[:, None] + 0.5, 0, 1)[..., None]
    small = ((1 - t) * c0.astype(np.float32) + t * c1.astype(np.float32)) / 255.0
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _text(img: np.ndarray, x0: int, y0: int, x1: int, y1: int, rng: np.random.Generator, ink: float) -> None:
    """Greeked text: lines of word-sized dark strokes in the box."""
    lh = int(rng.integers(13, 22))
    for y in range(y0 + lh // 2, y1 - lh, lh):
        if rng.random() < 0.12:
            continue  # paragraph break
        x, end = x0, x1 - int(rng.uniform(0, 0.5) * (x1 - x0)) if rng.random() < 0.3 else x1
        while x < end - 10:
            ww = int(rng.integers(10, 60))
            cv2.rectangle(img, (x, y), (min(x + ww, end), y + max(2, lh // 3)), (ink, ink, ink), -1)
            x += ww + int(rng.integers(5, 9))


def _window(img: np.ndarray, box: tuple[int, int, int, int], rng: np.random.Generator, bar: int) -> None:
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = rng.uniform(0.93, 1.0)
    img[y0 : y0 + bar, x0:x1] = rng.uniform(0.75, 0.9)
    cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), (0.5, 0.5, 0.5), 1)
    _text(img, x0 + 16, y0 + bar + 10, x1 - 16, y1 - 8, rng, float(rng.uniform(0.05, 0.3)))


def _screen_content(
    tgt: np.ndarray, others: list[np.ndarray], rng: np.random.Generator, sw: int, sh: int
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A desktop: wallpaper, text windows, an image viewer showing ``tgt`` above a filmstrip of
    thumbnails (``others`` and the target), a taskbar or dock. Returns it and the target's box."""
    img = _gradient(sw, sh, rng.integers(0, 200, 3), rng.integers(0, 256, 3), rng.uniform(0, 360))
    task = int(rng.integers(32, 56))
    for _ in range(int(rng.integers(1, 4))):
        ww, wh = int(sw * rng.uniform(0.25, 0.55)), int(sh * rng.uniform(0.3, 0.7))
        x, y = int(rng.integers(0, sw - ww)), int(rng.integers(0, sh - task - wh))
        _window(img, (x, y, x + ww, y + wh), rng, int(rng.integers(22, 32)))
    vx, vy = int(sw * rng.uniform(0.02, 0.2)), int(sh * rng.uniform(0.02, 0.08))
    vw, vh = min(int(sw * rng.uniform(0.6, 0.9)), sw - vx - 4), int((sh - task - vy) * rng.uniform(0.88, 1.0))
    dark = rng.random() < 0.5
    title, tool = int(rng.integers(24, 34)), int(rng.integers(30, 46))
    img[vy : vy + vh, vx : vx + vw] = 0.16 if dark else 0.92
    img[vy : vy + title, vx : vx + vw] = 0.22 if dark else 0.82
    for i, c in enumerate([(0.9, 0.35, 0.3), (0.95, 0.75, 0.2), (0.3, 0.8, 0.3)]):
        cv2.circle(img, (vx + 14 + 20 * i, vy + title // 2), 6, c, -1, cv2.LINE_AA)
    for i in range(int(rng.integers(5, 12))):  # toolbar icons
        x = vx + 12 + i * (tool + 4)
        cv2.rectangle(img, (x, vy + title + 6), (x + tool - 12, vy + title + tool - 6), (0.45, 0.45, 0.5), -1)
    thumb = int(rng.integers(40, 121))
    strip = thumb + 16
    cy0, cy1 = vy + title + tool, vy + vh - strip
    canvas = float(rng.choice([rng.uniform(0.1, 0.25), rng.uniform(0.4, 0.6), rng.uniform(0.85, 0.95)]))
    img[cy0:cy1, vx : vx + vw] = canvas
    img[cy1 : vy + vh, vx : vx + vw] = 0.12 if dark else 0.85
    margin = int(rng.integers(8, 40))
    k = min((vw - 2 * margin) / tgt.shape[1], (cy1 - cy0 - 2 * margin) / tgt.shape[0])
    dw, dh = max(8, round(tgt.shape[1] * k)), max(8, round(tgt.shape[0] * k))
    dx, dy = vx + (vw - dw) // 2, cy0 + (cy1 - cy0 - dh) // 2
    _blend(img, tgt, dx, dy, dw, dh)
    pool = others or [_solid(3, 4, rng.integers(60, 200, 3))]
    x, slot = vx + 8, int(rng.integers(0, 6))
    for i in range(64):
        t = tgt if i == slot else pool[int(rng.integers(0, len(pool)))]
        tw = int(np.clip(thumb * t.shape[1] / t.shape[0], 0.5 * thumb, 1.6 * thumb))
        if x + tw > vx + vw - 8:
            break
        if i == slot:
            cv2.rectangle(img, (x - 3, cy1 + 5), (x + tw + 2, cy1 + thumb + 10), (0.2, 0.5, 0.95), -1)
        _blend(img, t, x, cy1 + 8, tw, thumb)
        x += tw + int(rng.integers(6, 12))
    img[sh - task :] = img[sh - task :] * 0.3 + 0.1  # translucent taskbar / dock
    for i in range(int(rng.integers(6, 14))):
        x = sw // 2 + (i - 5) * (task + 6)
        cv2.rectangle(img, (x, sh - task + 5), (x + task - 10, sh - 5), tuple(rng.uniform(0.2, 1, 3)), -1)
    return img, (dx, dy, dw, dh)


def _blend(img: np.ndarray, obj: np.ndarray, x: int, y: int, w: int, h: int) -> None:
    """Draw ``obj`` (rgba) resized to exactly w x h at (x, y) into the rgb ``img``."""
    inter = cv2.INTER_AREA if w < obj.shape[1] else cv2.INTER_LINEAR
    o = cv2.resize(obj, (w, h), interpolation=inter)
    roi = img[y : y + h, x : x + w]
    if o.shape[2] == 3:
        roi[:] = o
    else:
        roi[:] = roi * (1 - o[..., 3:]) + o[..., :3] * o[..., 3:]


def _ruler(rng: np.random.Generator, length: int) -> np.ndarray:
    w = max(12, length // 9)
    img = _solid(length, w, rng.choice([[235, 230, 205], [245, 245, 245], [190, 192, 196]]))
    step = length / float(rng.integers(120, 200))
    for i in range(int(length / step)):
        x = int(i * step) + 2
        tick = w * (0.45 if i % 10 == 0 else 0.3 if i % 5 == 0 else 0.18)
        cv2.line(img, (x, 0), (x, int(tick)), (0.1, 0.1, 0.1), 1)
        if i % 10 == 0 and i:
            cv2.rectangle(img, (x - 3, int(w * 0.55)), (x + 3, int(w * 0.75)), (0.1, 0.1, 0.1), -1)
    return img


def _chart(width: int) -> np.ndarray:
    cell = max(4, width // 6)
    img = _solid(cell * 6 + cell // 2, cell * 4 + cell // 2, (25, 25, 25))
    for i, c in enumerate(CHART):
        y, x = cell // 4 + (i // 6) * cell, cell // 4 + (i % 6) * cell
        img[y + 2 : y + cell - 2, x + 2 : x + cell - 2, :3] = c / 255.0
    return img


def _hand(rng: np.random.Generator, size: int) -> np.ndarray:
    """A skin-coloured hand and forearm with fingertips at the top centre, pointing up."""
    w, h = size, int(size * 2.4)
    mask: np.ndarray = np.zeros((h, w), np.float32)
    finger = max(3, size // 9)
    palm_y = int(size * 0.62)
    for i, (dx, length) in enumerate([(-0.27, 0.42), (-0.09, 0.55), (0.09, 0.5), (0.26, 0.36)]):
        x = int(w / 2 + dx * size)
        cv2.line(mask, (x, palm_y), (x, int(palm_y - length * size + finger)), 1.0, finger * 2, cv2.LINE_AA)
    cv2.ellipse(mask, (w // 2, palm_y + size // 5), (int(size * 0.38), int(size * 0.34)), 0, 0, 360, 1.0, -1)
    cv2.line(mask, (int(w * 0.12), palm_y + size // 4), (0, palm_y - size // 8), 1.0, finger * 2, cv2.LINE_AA)
    cv2.rectangle(mask, (int(w * 0.18), palm_y + size // 3), (int(w * 0.82), h), 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, size / 200))
    red = rng.uniform(120, 240)
    skin = np.array([red, red * rng.uniform(0.68, 0.82), red * rng.uniform(0.52, 0.68)])
    shade = cv2.GaussianBlur(mask, (0, 0), size / 12)[..., None] * 0.35 + 0.65
    return np.dstack([_solid(w, h, skin) * shade, mask])


# --------------------------------------------------------------------------------------------- photo effects


def _field(size: tuple[int, int], fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """A smooth field ``fn(x, y)`` (frame pixel coordinates) computed at 1/8 resolution and upscaled."""
    w, h = size
    y, x = np.mgrid[0:h:8, 0:w:8].astype(np.float32)
    return cv2.resize(fn(x, y).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


def _glare(rng: np.random.Generator, size: tuple[int, int], at: np.ndarray, strength: float) -> np.ndarray:
    """A soft elliptical blob near ``at`` and/or a long specular streak (0..1 to add as light)."""
    w, h = size
    cx, cy = at + rng.normal(0, 0.25, 2) * min(w, h)
    ax, ay = rng.uniform(0.05, 0.2, 2) * min(w, h)
    c, s = math.cos(rng.uniform(0, math.pi)), math.sin(rng.uniform(0, math.pi))
    blob_amp = strength * rng.uniform(0.3, 1.0) * (rng.random() < 0.8)
    streak_amp, width = strength * rng.uniform(0.2, 0.8) * (rng.random() < 0.6), rng.uniform(3, 14)

    def fn(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u, v = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
        blob = blob_amp * np.exp(-0.5 * ((u / ax) ** 2 + (v / ay) ** 2))
        streak = streak_amp * np.exp(-0.5 * (v / width) ** 2 - 0.5 * (u / (0.6 * w)) ** 2)
        return np.minimum(blob + streak, 0.85)

    return _field(size, fn)


def _vignette(rng: np.random.Generator, size: tuple[int, int], amount: float) -> np.ndarray:
    w, h = size
    gx, gy, k = rng.uniform(-0.25, 0.25), rng.uniform(-0.25, 0.25), rng.uniform(0, amount)
    return _field(size, lambda x, y: (1 - k * ((x / w - 0.5) ** 2 + (y / h - 0.5) ** 2) * 2.2)
                  * (1 + gx * (x / w - 0.5) + gy * (y / h - 0.5)))  # fmt: skip


def _panel_phase(screen: np.ndarray, x0: int, y0: int, shape: tuple[int, ...], per_pixel: float) -> np.ndarray:
    """For each frame pixel of a ``shape`` (h, w) window from ``x0, y0``, the panel's pixel
    coordinates (``screen``: panel pixels → frame) times ``per_pixel``: (h, w, 2) float32. Exact on
    a grid of every 8th pixel, linear between."""
    h, w = shape[:2]
    inv = _s(per_pixel) @ np.linalg.inv(_t(-x0, -y0) @ screen)
    y, x = np.mgrid[0 : h + 8 : 8, 0 : w + 8 : 8].astype(np.float64) + 0.5
    coarse = _apply(inv, np.c_[x.ravel(), y.ravel()]).reshape(*x.shape, 2).astype(np.float32)
    phase: np.ndarray = cv2.resize(coarse, (x.shape[1] * 8, x.shape[0] * 8), interpolation=cv2.INTER_LINEAR)[:h, :w]
    return phase


def _moire(frame: np.ndarray, screen: np.ndarray, mask: np.ndarray, x0: int, y0: int, rng: np.random.Generator) -> None:
    """Beat of the screen's pixel grid (a fine sinusoid in screen coordinates, through the
    perspective ``screen`` → frame) sampled by the sensor's pixels: curved coloured bands."""
    h, w = mask.shape
    uv = _panel_phase(screen, x0, y0, mask.shape, 2 * math.pi / rng.uniform(0.9, 2.2))
    wave: np.ndarray = np.cos(uv[..., 0]) + np.cos(uv[..., 1])
    wave = cv2.GaussianBlur(wave, (0, 0), 1.2)  # the lens: only the low-frequency beat stays
    amp = rng.uniform(0.04, 0.14) * mask
    frame[y0 : y0 + h, x0 : x0 + w] *= (1 + amp * wave)[..., None] * rng.uniform(0.95, 1.05, 3).astype(np.float32)


def _off_axis(screen: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What a laptop's LCD panel shows when it is seen off its axis: its tone curve changes with the
    vertical angle, so the top and the bottom of the panel get different gammas (0.55-1.8), the
    black level rises (the image washes out) and the colours take a tint."""
    h = screen.shape[0]
    top, bottom = rng.uniform(0.55, 1.8, 2)
    gamma = np.linspace(top, bottom, h, dtype=np.float32)[:, None, None]
    lift = np.float32(rng.uniform(0.0, 0.25))
    tint = rng.uniform(0.88, 1.12, 3).astype(np.float32)
    out: np.ndarray = (lift + (1 - lift) * np.clip(screen, 0, 1) ** gamma) * tint
    return out


def _lcd_capture(
    frame: np.ndarray, screen: np.ndarray, mask: np.ndarray, x0: int, y0: int, rng: np.random.Generator
) -> None:
    """What a phone's camera adds to a photo of an LCD panel (``screen``: its pixels → frame;
    ``mask``: where it lies in the frame from ``x0, y0``): the red, green and blue stripes of its
    pixels, sampled by the sensor (coloured moiré, 8-25 %); the dark bands of its backlight's
    flicker across the rolling shutter's rows (5-30 %, every 30-160 rows); a reflection of the
    room in its glossy surface (a bright window with its bars and the photographer's dark head
    and shoulders, out of focus, 10-40 %); over-exposure of the bright panel (x1.0-1.4)."""
    h, w = mask.shape
    u = _panel_phase(screen, x0, y0, mask.shape, 2 * math.pi)[..., 0]  # one period per panel pixel
    amp = np.float32(rng.uniform(0.08, 0.25))
    stripes = np.stack([np.cos(u - np.float32(2 * math.pi * c / 3)) for c in range(3)], axis=-1)
    stripes = cv2.GaussianBlur(stripes, (0, 0), rng.uniform(0.8, 1.4))  # the lens
    light = 1 + amp * stripes
    rows = np.arange(y0, y0 + h, dtype=np.float32)[:, None, None]
    depth, period = np.float32(rng.uniform(0.05, 0.3)), np.float32(rng.uniform(30, 160))
    phase = np.float32(rng.uniform(0, 2 * math.pi))
    light *= 1 - depth * (0.5 + 0.5 * np.sin(rows * np.float32(2 * math.pi) / period + phase))
    room = np.full((h, w), rng.uniform(0.03, 0.12), np.float32)
    wx, wy = int(rng.uniform(0, 0.7) * w), int(rng.uniform(0, 0.5) * h)
    ww, wh = int(rng.uniform(0.2, 0.5) * w), int(rng.uniform(0.25, 0.6) * h)
    room[wy : wy + wh, wx : wx + ww] = rng.uniform(0.3, 0.7)
    bar = max(2, w // 80)
    room[wy : wy + wh, wx + (ww - bar) // 2 : wx + (ww + bar) // 2] *= 0.3  # the window's bars
    room[wy + (wh - bar) // 2 : wy + (wh + bar) // 2, wx : wx + ww] *= 0.3
    cx, cy, r = rng.uniform(0.35, 0.65) * w, rng.uniform(0.3, 0.6) * h, rng.uniform(0.06, 0.12) * min(w, h) + 1
    cv2.ellipse(room, (int(cx), int(cy)), (int(r), int(1.3 * r)), 0, 0, 360, 0.0, -1)  # the head
    cv2.ellipse(room, (int(cx), int(cy + 3.2 * r)), (int(3 * r), int(2 * r)), 0, 180, 360, 0.0, -1)  # shoulders
    room = cv2.GaussianBlur(room, (0, 0), rng.uniform(6, 25)) * np.float32(rng.uniform(0.25, 0.6))
    roi = frame[y0 : y0 + h, x0 : x0 + w]
    lit = roi * light * np.float32(rng.uniform(1.0, 1.4)) + room[..., None]
    roi[:] = roi + mask[..., None] * (lit - roi)


def _photo(photo: np.ndarray, rng: np.random.Generator, blur: float, noise: float) -> Image.Image:
    """Defocus or motion blur, white balance, gamma, sensor noise and a JPEG re-encode (quality 60-90)."""
    frame: np.ndarray = photo
    if rng.random() < 0.3:
        r, a = int(rng.integers(1, 4)), rng.uniform(0, math.pi)  # a line through the centre: no shift
        kern = np.zeros((2 * r + 1, 2 * r + 1), np.float32)
        dx, dy = round(r * math.cos(a)), round(r * math.sin(a))
        cv2.line(kern, (r - dx, r - dy), (r + dx, r + dy), 1.0, 1)
        frame = cv2.filter2D(frame, -1, kern / kern.sum())
    sigma = rng.uniform(0.3, blur)
    frame = cv2.GaussianBlur(frame, (0, 0), sigma)
    frame *= (rng.uniform(0.9, 1.1, 3) * rng.uniform(0.9, 1.1) * 255).astype(np.float32)
    h, w = frame.shape[:2]
    sd = np.float32(rng.uniform(0.004, noise) * 255)  # luminance noise per pixel, chroma noise blotchier
    frame = frame + (rng.standard_normal((h, w), dtype=np.float32) * sd)[..., None]
    chroma = rng.standard_normal((h // 2, w // 2, 3), dtype=np.float32) * (sd / 2)
    frame = frame + cv2.resize(chroma, (w, h), interpolation=cv2.INTER_NEAREST)
    gamma = np.clip((np.arange(256) / 255.0) ** rng.uniform(0.8, 1.2) * 255 + 0.5, 0, 255).astype(np.uint8)
    out = Image.fromarray(cv2.LUT(np.clip(frame, 0, 255).astype(np.uint8), gamma), "RGB")
    return _jpeg(out, int(rng.integers(60, 91)))


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    """``img`` as a camera's JPEG of ``quality`` would give it back."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


# --------------------------------------------------------------------------------------------- scenes


def _fraction(rng: np.random.Generator, fraction: float | None) -> float:
    return float(rng.uniform(*FRACTION_RANGE)) if fraction is None else float(fraction)


def _pick(others: Sequence[Image.Image], rng: np.random.Generator, n: int, side: int) -> list[np.ndarray]:
    idx = rng.permutation(len(others))[:n]
    return [_pixels(others[int(i)], side) for i in idx]


def screen_scene(
    target: Image.Image,
    others: Sequence[Image.Image],
    rng: np.random.Generator,
    *,
    size: tuple[int, int] = (1600, 1200),
    fraction: float | None = None,
    tilt: tuple[float, float] | None = None,
    lcd: np.random.Generator | None = None,
) -> Scene:
    """A monitor photographed at an angle: an image viewer shows ``target``, a filmstrip shows
    ``others``; bezel, room, moiré, glare, vignetting, blur, noise, colour cast, gamma, JPEG.
    ``lcd``: a generator for what a phone sees of a real LCD panel besides (:func:`_off_axis`,
    :func:`_lcd_capture`); its draws leave ``rng``'s alone, so the photo is the same scene."""
    w, h = size
    frac = _fraction(rng, fraction)
    sw = int(rng.integers(1366, 1921))
    sh = int(sw / rng.choice([1.6, 16 / 9, 1.5]))
    screen, (dx, dy, dw, dh) = _screen_content(
        _pixels(target, TARGET_MAX_SIDE), _pick(others, rng, 12, 160), rng, sw, sh
    )
    if lcd is not None:
        screen = _off_axis(screen, lcd)
    quad = _rect(dw, dh) + [dx, dy]
    cam = _camera(rng, math.sqrt(dw * dh), math.sqrt(frac * w * h), w, tilt or (0, 35), 12)
    cam = cam @ _t(-dx - dw / 2, -dy - dh / 2)
    cam, frac = _fit(cam, quad, size, frac, rng)
    wall, floor = rng.integers(120, 240, 3), rng.integers(30, 170, 3)
    frame = _gradient(w, h, wall, floor, rng.uniform(60, 120))
    bezel, chin = int(rng.integers(8, 40)), int(rng.integers(0, 60))
    body = rng.choice([[20, 20, 22], [180, 182, 186], [40, 40, 44]])
    if rng.random() < 0.6:  # laptop: a keyboard deck below the screen, foreshortened (drawn at 1/4 size)
        deck = _solid((sw + 2 * bezel) // 4, int(sh * 0.7) // 4, body)
        for r in range(5):
            for c in range(14):
                x0, y0 = int(deck.shape[1] * (0.08 + c * 0.06)), int(deck.shape[0] * (0.08 + r * 0.11))
                deck[y0 : y0 + int(deck.shape[0] * 0.08), x0 : x0 + int(deck.shape[1] * 0.05), :3] = 0.06
        _paste(frame, deck, cam @ _t(-bezel, sh + bezel + chin + 6) @ _s(4.0, 4 * rng.uniform(0.3, 0.6)), 0.4)
    outline = _apply(cam, _rect(sw + 2 * bezel, sh + 2 * bezel + chin) - bezel)
    cv2.fillConvexPoly(frame, np.round(outline * 16 - 8).astype(np.int32), tuple(body / 255.0), cv2.LINE_AA, 4)
    pasted = _paste(frame, screen, cam)
    if pasted is not None:
        _moire(frame, cam, *pasted, rng)
        if lcd is not None:
            _lcd_capture(frame, cam, *pasted, lcd)
    frame *= _vignette(rng, size, 0.5)[..., None]
    glare = _glare(rng, size, _apply(cam, quad).mean(0), rng.uniform(0.2, 0.7))[..., None]
    frame += (1 - np.clip(frame, 0, 1)) * glare
    corners = _apply(cam, quad)
    return Scene(_photo(frame, rng, 1.4, 0.03), corners, "screen", frac)


def _surface(
    rng: np.random.Generator, size: tuple[int, int], cam: np.ndarray, wood: bool, colour: np.ndarray
) -> np.ndarray:
    """The desk (wood grain or cloth) in frame pixels: a world texture seen through ``cam``."""
    n = 256
    grain = cv2.resize(rng.random((8, 8)).astype(np.float32), (n, n), interpolation=cv2.INTER_CUBIC)
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    if wood:  # rings bent by a field that varies slowly along the grain, plus fine fibre lines
        bend = cv2.resize(rng.random((12, 3)).astype(np.float32), (n, n), interpolation=cv2.INTER_CUBIC)
        fibres = rng.random((n, 1)).astype(np.float32) * 0.08
        tex = 0.88 + 0.08 * np.sin((y + 30 * bend) * rng.uniform(0.1, 0.25)) + fibres + 0.04 * grain
    else:
        tex = 0.93 + 0.07 * rng.random((n, n)).astype(np.float32) + 0.05 * grain
    scale = rng.uniform(0.2, 0.5)  # texture pixels per world unit
    tex_cam = _centre(cam @ _s(1 / scale))
    out = cv2.warpPerspective(tex, tex_cam, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return out[..., None] * (colour.astype(np.float32) / 255.0)


def _coverage(cover: np.ndarray, obj: np.ndarray, m: np.ndarray, to_grid: np.ndarray) -> np.ndarray:
    """The target's occlusion grid with ``obj`` (placed by ``m``) added."""
    g = cover.shape[0]
    alpha = obj[..., 3] if obj.shape[2] == 4 else np.ones(obj.shape[:2], np.float32)
    a = cv2.warpPerspective(alpha, _centre(to_grid @ m), (g, g), flags=cv2.INTER_NEAREST)
    return np.maximum(cover, a)


def _flat_scene(
    kind: str,
    target: Image.Image,
    others: Sequence[Image.Image],
    rng: np.random.Generator,
    size: tuple[int, int],
    fraction: float | None,
    tilt: tuple[float, float] | None = None,
) -> Scene:
    """Desk and lightbox: the target lies on a plane with sheets, ruler, colour chart (and hands)."""
    w, h = size
    desk = kind == "desk"
    frac = _fraction(rng, fraction)
    tw, th = target.size
    need = math.sqrt(frac * w * h / (tw * th)) * max(tw, th) * 1.3  # the long side the frame can show
    tgt = _pixels(target, int(min(TARGET_MAX_SIDE, need)))
    th, tw = tgt.shape[:2]
    k = math.sqrt(frac * w * h / (tw * th))  # world units ≈ frame pixels
    place = _place(tw, th, 0, 0, rng.uniform(-25, 25) if desk else rng.uniform(-8, 8), k)
    quad = _apply(place, _rect(tw, th))
    cam = _camera(rng, k * math.sqrt(tw * th), math.sqrt(frac * w * h), w, tilt or (0, 35 if desk else 20), 10)
    cam, frac = _fit(cam, quad, size, frac, rng)
    side = k * max(tw, th)
    if desk:
        colour = rng.choice([[150, 100, 60], [110, 70, 40], [190, 150, 105], [60, 70, 90], [40, 60, 45]])
        frame = _surface(rng, size, cam, rng.random() < 0.6, colour)
    else:  # a lightbox panel on a darker table
        frame = _surface(rng, size, cam, False, rng.integers(60, 140, 3))
        panel = _solid(100, 100, rng.uniform(238, 255, 3))
        lo, hi = quad.min(0) - rng.uniform(0.15, 0.8, 2) * side, quad.max(0) + rng.uniform(0.15, 0.8, 2) * side
        _paste(frame, panel, cam @ _t(*lo) @ _s(*((hi - lo) / 100)))
    visible = _apply(np.linalg.inv(cam), _rect(w, h))
    sheets = _pick(others, rng, int(rng.integers(1, 4)) if desk else int(rng.integers(0, 2)), 700)
    if desk and rng.random() < 0.5:
        page = _solid(420, 594, (245, 243, 236))
        _text(page, 40, 50, 380, 550, rng, 0.15)
        sheets.append(page)
    for s in sheets:
        e = int(rng.integers(0, 4))
        at = visible[e] + rng.uniform(0.1, 0.9) * (visible[(e + 1) % 4] - visible[e])
        at = at + rng.uniform(0, 0.25) * (quad.mean(0) - at)
        scale = side * rng.uniform(0.5, 1.1) / max(s.shape[:2])
        _paste(frame, s, cam @ _place(s.shape[1], s.shape[0], at[0], at[1], rng.uniform(-40, 40), scale), 0.35)
    _paste(frame, tgt, cam @ place, 0.45 if desk else 0.0)
    props = [_ruler(rng, int(side * rng.uniform(0.6, 1.2))), _chart(int(side * rng.uniform(0.25, 0.45)))]
    if not desk:
        props = props[: 1 + int(rng.random() < 0.5)] if rng.random() < 0.5 else props[1:]
    hands = [_hand(rng, int(side * rng.uniform(0.3, 0.45))) for _ in range(int(rng.choice(3, p=[0.3, 0.5, 0.2])))]
    to_grid = _s(48 / tw, 48 / th) @ np.linalg.inv(place)
    cover = np.zeros((48, 48), np.float32)
    for i, obj in enumerate(props + (hands if desk else [])):
        is_hand = i >= len(props)
        for _ in range(8):  # a few tries to keep ≤ ~15 % of the target covered
            e = int(rng.integers(0, 4))
            a, b = quad[e], quad[(e + 1) % 4]
            normal = np.array([b[1] - a[1], a[0] - b[0]]) / np.linalg.norm(b - a)  # points outwards
            at = a + rng.uniform(0.15, 0.85) * (b - a)
            if is_hand:  # fingertips a little over the edge, forearm outwards
                deg = math.degrees(math.atan2(-normal[1], -normal[0])) + 90 + rng.uniform(-25, 25)
                tip = at - normal * rng.uniform(0.0, 0.12) * obj.shape[1]
                m = _t(*tip) @ _r(deg) @ _t(-obj.shape[1] / 2, 0)
            else:
                deg = math.degrees(math.atan2(b[1] - a[1], b[0] - a[0])) + rng.uniform(-8, 8)
                at = at + normal * (0.5 * obj.shape[0] + rng.uniform(-0.2, 1.5) * obj.shape[0])
                m = _place(obj.shape[1], obj.shape[0], at[0], at[1], deg)
            trial = _coverage(cover, obj, m, to_grid)
            if trial.mean() <= 0.15:
                cover = trial
                _paste(frame, obj, cam @ m, 0.4 if desk else 0.15)
                break
    corners = _apply(cam, quad)
    if desk:
        frame *= _vignette(rng, size, 0.6)[..., None] * np.float32(rng.uniform(0.8, 1.15))
        if rng.random() < 0.4:  # the shadow of the phone or the photographer
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.2, 0.5) * w
            frame *= _field(size, lambda x, y: 1 - 0.25 / (1 + np.exp(((x - cx) ** 2 + (y - cy) ** 2) ** 0.5 / 40
                                                                     - r / 40)))[..., None]  # fmt: skip
        return Scene(_photo(frame, rng, 1.6, 0.035), corners, kind, frac)
    frame *= _vignette(rng, size, 0.2)[..., None]
    ramp = _field(size, lambda x, y: np.clip((x / w * 0.6 + y / h * 0.4 - 0.3), 0, 1) * 0.08)  # glass reflection
    frame += (1 - np.clip(frame, 0, 1)) * (ramp + _glare(rng, size, corners.mean(0), rng.uniform(0.1, 0.35)))[..., None]
    return Scene(_photo(frame, rng, 1.0, 0.015), corners, kind, frac)


def desk_scene(
    target: Image.Image,
    others: Sequence[Image.Image],
    rng: np.random.Generator,
    *,
    size: tuple[int, int] = (1600, 1200),
    fraction: float | None = None,
    tilt: tuple[float, float] | None = None,
) -> Scene:
    """The target scan as a print on a desk (wood or cloth) at an angle, among other papyri and a
    printed page, with a ruler, a colour chart, hands, soft shadows, uneven light, blur, noise, JPEG."""
    return _flat_scene("desk", target, others, rng, size, fraction, tilt)


def lightbox_scene(
    target: Image.Image,
    others: Sequence[Image.Image],
    rng: np.random.Generator,
    *,
    size: tuple[int, int] = (1600, 1200),
    fraction: float | None = None,
    tilt: tuple[float, float] | None = None,
) -> Scene:
    """The target on an evenly lit white panel under glass (a faint reflection and a specular
    line), a colour chart and/or ruler, mild perspective, JPEG."""
    return _flat_scene("lightbox", target, others, rng, size, fraction, tilt)


SCENES = {"screen": screen_scene, "desk": desk_scene, "lightbox": lightbox_scene}

STEEP_TILT = (45.0, 60.0)
"""Camera tilt (degrees) of the *steep* variant."""

SHAKE_LENGTH = (0.003, 0.010)
"""How far a *shaky* photo's camera moves while the shutter is open, as a fraction of the frame's
long side (5-16 px at 1,600): a phone held in the hand at 1/15-1/30 s in a dim room or before a
dimmed screen, its stabiliser not keeping up."""

RESENT_SIDE = (480, 1024)
"""Long side (pixels) of a *resent* photo: what messengers and mail clients shrink a photo to
(640-1,280 px are common settings; 480 is a thumbnail's)."""

VARIANTS = (
    "closeup", "steep", "phone", "turned", "dim", "print", "relit", "wavy", "resent", "lcd", "shaky", "bare"
)  # fmt: skip
"""Photos outside the range the scenes are drawn from (``make_scene(..., variant=...)``), to see how
the search holds up beyond it rather than to tune on: *closeup*, only 35-60 % of the papyrus in the
frame, which it fills; *steep*, the camera tilted by :data:`STEEP_TILT` degrees from square-on
(the scenes draw 0-35, lightboxes 0-20); *phone*, a 12-megapixel portrait photo stored
turned with EXIF orientation 6, as phones write it; *turned*, the frame turned by a quarter or a
half turn with no EXIF to undo it; *dim*, a dark, noisy, blurred photo saved as JPEG quality 30-45;
*print*, the papyrus as a plate of a printed edition shows it (:func:`_printed`: a halftone screen,
mostly black on off-white paper, sometimes four-colour), in any of the scene kinds (a book on a
desk, a photocopy on a lightbox, a PDF of the edition on a screen); *relit*, another photograph
of the papyrus than the scan indexed (:func:`_relit`: light from a low side, uneven, other white
balance and tone curves, sometimes an infrared image); *wavy*, a sheet that does not lie flat
(:func:`_wavy`: gentle waves and a bend, seen from an angle, so that no homography maps it
exactly). *relit* and *wavy* are drawn in any scene kind (the photo on a screen, or the sheet on
a desk or a lightbox). *resent*, the photo as a colleague's messenger or mail delivers it:
shrunk to a long side of :data:`RESENT_SIDE` and compressed again (JPEG quality 55-80). *lcd*, a
screen only (added 2026-12-04, after the search was settled): the same screen scene with what a
phone sees of a real laptop panel besides — its tone curve seen off its axis, washed out and
tinted (:func:`_off_axis`), its pixels' colour stripes, its backlight's flicker bands, a
reflection of the room and the photographer, over-exposure (:func:`_lcd_capture`). *shaky*, any
kind (added 2026-12-04, after the search was settled): the scene of the same seed smeared along
the path a hand-held camera moved during the exposure (:data:`SHAKE_LENGTH`, :func:`_shaken`), with
the sensor noise of a long exposure, saved again as JPEG. *bare*, any kind (added 2026-12-07, after
the search was settled): the papyrus itself, not its scan (:func:`_bare`): without the scan's
white ground, footer bar (the library's logo, address and seal) and colour strip, its holes and
torn edges showing what it lies on — the sheet in a museum's case, on a conservator's desk, on a
light box, or a website's cut-out of it — and the papyri around it alike; the same scene as the
seed's photo without it otherwise. A collection's scans share their footer, which no photo of the
sheet itself shows: with it a photo's words find the collection's scans before anything else.
Several join into one photo with :data:`COMBINED` (``"lcd+steep+shaky"``: a laptop panel
photographed steeply with a shaking hand), as real photos bring several of these at once."""


COMBINED = "+"
"""What joins variants into one photo (``variant="lcd+shaky"``): :func:`make_scene` draws the
changes to the papyrus first (*print*, *relit*, *wavy*, in the order given), then the scene (*lcd*,
*steep*, and the framing of *closeup* or *phone*), then what happens to the photo afterwards
(*turned*, *resent*, *shaky*, *dim*, in the order given). A single variant is drawn exactly as on
its own, so a combination is the photo of one of its parts' seeds with the others added."""

def variant_parts(variant: str | None) -> tuple[str, ...]:
    """``variant`` (None, one of :data:`VARIANTS` or several joined by :data:`COMBINED`) as its
    parts; ``ValueError`` for an unknown part, a part given twice, or *closeup* with *phone*
    (each sets the photo's framing)."""
    if not variant:
        return ()
    parts = tuple(p.strip() for p in variant.split(COMBINED))
    unknown = [p for p in parts if p not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant {unknown[0]!r}: one of {', '.join(VARIANTS)}, or several joined by '+'")
    if len(set(parts)) != len(parts):
        raise ValueError(f"variant {variant!r} names a part twice")
    if {"closeup", "phone"} <= set(parts):
        raise ValueError("the variants 'closeup' and 'phone' each set the photo's framing: not both")
    return parts


def make_scene(
    target: Image.Image,
    others: Sequence[Image.Image],
    rng: np.random.Generator,
    *,
    kind: str | None = None,
    size: tuple[int, int] = (1600, 1200),
    fraction: float | None = None,
    variant: str | None = None,
) -> Scene:
    """One scene of ``kind`` (None: one of :data:`KINDS` drawn from ``rng``); ``variant``: one of
    :data:`VARIANTS`, a photo outside the usual range, or several of them joined by
    :data:`COMBINED` (``size`` is then the size of the photo as it is shown; ``fraction`` is
    ignored by *closeup*)."""
    parts = variant_parts(variant)
    if kind is None:
        kind = "screen" if "lcd" in parts else KINDS[int(rng.integers(0, len(KINDS)))]
    if kind not in SCENES:
        raise ValueError(f"unknown scene kind {kind!r}: one of {', '.join(KINDS)}")
    if "lcd" in parts and kind != "screen":
        raise ValueError(f"the variant 'lcd' is a photo of a screen, not of a {kind}")
    changes = {"print": _printed, "relit": _relit, "wavy": _wavy}  # the papyrus itself, before the scene
    after: dict[str, Callable[[Scene], Scene]] = {  # the photo once taken
        "turned": lambda s: _turned(s, int(rng.choice([90, 180, 270]))),
        "resent": lambda s: _resent(s, rng),
        "shaky": lambda s: _shaken(s, rng),
        "dim": lambda s: _dim(s, rng),
    }
    if "bare" in parts:
        target, others = _bare(target), _Bare(others)
    for part in parts:
        if part in changes:
            target = changes[part](target, rng)
    extra: dict[str, Any] = {}
    if "lcd" in parts:
        extra["lcd"] = rng.spawn(1)[0]
    if "steep" in parts:
        extra["tilt"] = STEEP_TILT
    w, h = size
    if "closeup" in parts:
        scene = _closeup(SCENES[kind](target, others, rng, size=(2 * w, 2 * h), fraction=0.5, **extra), rng, size)
    elif "phone" in parts:
        scene = SCENES[kind](target, others, rng, size=(3024, 4032), fraction=fraction, **extra)
        scene = Scene(scene.image, scene.corners, kind, scene.target_fraction, orientation=6)
    else:
        scene = SCENES[kind](target, others, rng, size=size, fraction=fraction, **extra)
    for part in parts:
        if part in after:
            scene = after[part](scene)
    return scene


HALFTONE_PITCH = (3.0, 6.0)
"""Distance between the halftone dots of a *print* (pixels of the target at its long side of
:data:`TARGET_MAX_SIDE` or less): a coarse screen, as a plate's 60-100 lines per inch show at a
phone's distance."""


def _printed(target: Image.Image, rng: np.random.Generator) -> Image.Image:
    """``target`` as a plate of a printed edition shows it, the same size, so its corners stay
    where they were: two times in three black ink in a round-dot halftone screen at 45° on
    off-white paper, else four-colour (cyan, magenta, yellow screens at 15°, 75° and 0°); dot gain
    darkens the mid-tones, the paper's white is not the scan's, and the ink spreads a little."""
    img, alpha = _split_alpha(target)
    if alpha is not None:  # a cut-out fragment: the page shows where the scan is transparent
        img = img * alpha + (1 - alpha)
    h, w = img.shape[:2]
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    pitch = rng.uniform(*HALFTONE_PITCH)
    gain = rng.uniform(1.1, 1.5)

    def screen(cover: np.ndarray, deg: float) -> np.ndarray:  # 1 where ink lands, for coverage 0..1
        a = math.radians(deg + rng.uniform(-2, 2))
        u = (x * math.cos(a) + y * math.sin(a)) * np.float32(2 * math.pi / pitch)
        v = (y * math.cos(a) - x * math.sin(a)) * np.float32(2 * math.pi / pitch)
        spot = 0.5 + 0.25 * (np.cos(u) + np.cos(v))  # a round dot grows from each cell's middle
        return (spot > 1 - np.clip(cover, 0, 1) ** (1 / gain)).astype(np.float32)

    paper = rng.uniform(228, 250) * np.array([1.0, rng.uniform(0.97, 1.0), rng.uniform(0.9, 0.98)], np.float32)
    if rng.random() < 2 / 3:
        ink = screen(1 - img @ np.array([0.299, 0.587, 0.114], np.float32), 45.0)[..., None]
        left = 1 - ink * np.float32(rng.uniform(0.8, 0.9))  # the paper's light that the ink lets through
    else:  # cyan takes red, magenta green, yellow blue
        left = np.stack([1 - 0.85 * screen(1 - img[..., c], deg) for c, deg in enumerate((15.0, 75.0, 0.0))], -1)
    out: np.ndarray = cv2.GaussianBlur((paper * left).astype(np.float32), (0, 0), rng.uniform(0.4, 0.8))
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")


BARE_SATURATION = 24
"""A pixel of a scan is of the papyrus (:func:`_bare`) when its channels differ by this much or more
(0-255: papyrus is brown; a scan's ground, footer bar and grey scale are not)…"""
BARE_DARK = 96
"""… or when none is brighter than this (its ink)."""
BARE_KEEP = 0.03
"""Pieces of papyrus under this share of the largest piece's area are left out with the ground (a
footer's seal or logo, its text; a few crumbs of papyrus go with them)."""


def _bare(target: Image.Image) -> Image.Image:
    """``target`` (a scan) as the papyrus itself: transparent (RGBA) but where it shows papyrus
    (:data:`BARE_SATURATION`, :data:`BARE_DARK`; closed over its ink, opened over the ground's
    speckle; pieces under :data:`BARE_KEEP` of the largest dropped), so that its ground, footer bar
    and colour strip go, and its holes show what lies under it. The same size, so its corners stay
    where they were. Deterministic (it draws nothing), and ``target`` as it is when it shows no
    papyrus, or is cut out already (transparent somewhere)."""
    if target.mode == "RGBA" and np.asarray(target.getchannel("A")).min() < 255:
        return target
    rgb = np.asarray(target.convert("RGB"))
    sat = rgb.max(-1).astype(np.int16) - rgb.min(-1)
    papyrus = ((sat >= BARE_SATURATION) | (rgb.max(-1) < BARE_DARK)).astype(np.uint8)
    r = max(1, round(0.004 * max(rgb.shape[:2])))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    papyrus = cv2.morphologyEx(cv2.morphologyEx(papyrus, cv2.MORPH_CLOSE, disc), cv2.MORPH_OPEN, disc)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(papyrus, connectivity=8)
    if n <= 1:
        return target
    areas = stats[1:, cv2.CC_STAT_AREA]
    kept = np.isin(labels, np.flatnonzero(areas >= BARE_KEEP * areas.max()) + 1).astype(np.float32)
    alpha = np.round(cv2.GaussianBlur(kept, (0, 0), 0.7) * 255).astype(np.uint8)
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


class _Bare(Sequence[Image.Image]):
    """``others`` as :func:`_bare` shows each, cut out when a scene picks it (a scene shows a few, at
    most 700 px long)."""

    def __init__(self, others: Sequence[Image.Image]):
        self._others = others

    def __len__(self) -> int:
        return len(self._others)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        return _bare(_shrink(self._others[i], 700))


def _split_alpha(target: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """``target``'s colour (h, w, 3, 0..1) and its alpha (h, w, 1), None when it has none."""
    img = _pixels(target, max(target.size))
    return (img[..., :3], img[..., 3:]) if img.shape[2] == 4 else (img, None)


def _image(rgb: np.ndarray, alpha: np.ndarray | None) -> Image.Image:
    """An image of ``rgb`` (0..1) with ``alpha`` (None: opaque)."""
    out = rgb if alpha is None else np.concatenate([rgb, alpha], axis=-1)
    return Image.fromarray(np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8), "RGB" if alpha is None else "RGBA")


def _relit(target: Image.Image, rng: np.random.Generator) -> Image.Image:
    """``target`` as another photograph of the same papyrus shows it, not the scan indexed; the
    same size, so its corners stay where they were. Two times in three a colour photo: other
    white balance and tone curve per channel, the phone's local contrast; else an infrared image,
    as multispectral imaging of papyri records them (the sheet pale grey, carbon ink near black).
    Either way lit from a low side: the light grazes the sheet's relief (its brightness taken as
    height: fibres and ink), brightening the slopes that face it and darkening the others, and
    falls off across the sheet."""
    rgb, alpha = _split_alpha(target)
    h, w = rgb.shape[:2]
    lum = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    if rng.random() < 2 / 3:
        curve = rng.uniform(0.75, 1.35, 3).astype(np.float32)
        rgb = np.clip(rgb * rng.uniform(0.8, 1.15, 3).astype(np.float32), 0, 1) ** curve
        small = cv2.resize(rgb, (max(1, w // 8), max(1, h // 8)), interpolation=cv2.INTER_AREA)
        soft = cv2.resize(cv2.GaussianBlur(small, (0, 0), 0.005 * max(h, w)), (w, h), interpolation=cv2.INTER_LINEAR)
        rgb = rgb + np.float32(rng.uniform(0.2, 0.6)) * (rgb - soft)  # local contrast, as a phone's tone mapping
    else:  # the red end carries through papyrus and is absorbed by carbon ink
        ir = 0.8 * rgb[..., 0] + 0.2 * lum
        seen = ir[alpha[..., 0] > 0.5] if alpha is not None and (alpha > 0.5).any() else ir
        lo, hi = np.percentile(seen, [1, 99])
        ir = np.clip((ir - lo) / max(hi - lo, 1e-3), 0, 1) ** rng.uniform(0.6, 1.0) * rng.uniform(0.75, 0.95)
        rgb = np.repeat(ir[..., None], 3, axis=-1).astype(np.float32)
    height = cv2.GaussianBlur(lum, (0, 0), rng.uniform(1.0, 2.5))
    a = rng.uniform(0, 2 * math.pi)
    slope = cv2.Sobel(height, cv2.CV_32F, 1, 0) * math.cos(a) + cv2.Sobel(height, cv2.CV_32F, 0, 1) * math.sin(a)
    relief = np.clip(slope / (slope.std() + 1e-6), -3, 3)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    falloff = 1 - rng.uniform(0.1, 0.35) * ((x / w - 0.5) * math.cos(a) + (y / h - 0.5) * math.sin(a) + 0.5)
    shade = (1 + np.float32(rng.uniform(0.08, 0.2)) * relief) * falloff
    return _image(np.clip(rgb * shade[..., None], 0, 1), alpha)


WAVE_AMPLITUDE = (0.008, 0.02)
"""How far the highest point of a *wavy* sheet moves in the photo (share of its long side): the
parallax of its waves and bend seen from an angle. Once the corners are pinned (:func:`_wavy`)
the largest move is 0.7-1.8 times this (median 1.2 over 200 draws; at most twice by
construction): 0.6-3.7 % of the long side."""


def _wavy(target: Image.Image, rng: np.random.Generator) -> Image.Image:
    """``target`` as a sheet that does not lie flat shows it to a camera at an angle: its height
    over the plane is a bend along one axis plus two or three gentle waves (cockling, 0.35-0.9 of
    its long side apart), and each point moves by its height along the direction the camera looks
    (the highest by :data:`WAVE_AMPLITUDE` of the long side), less the bilinear blend of the
    corners' moves: the four corners stay where they were (so a scene's corners stay exact) while the
    edges and the writing between them wave. The slopes facing the light are a little brighter.
    Returned with transparency where an edge moved inwards; what moves out past the sheet's box
    is cut."""
    rgb, alpha = _split_alpha(target)
    if alpha is None:
        alpha = np.ones((*rgb.shape[:2], 1), np.float32)
    h, w = rgb.shape[:2]
    side = float(max(h, w))
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    b = rng.uniform(0, math.pi)
    along = ((x - w / 2) * math.cos(b) + (y - h / 2) * math.sin(b)) / side
    z = rng.uniform(-1, 1) * 4 * along**2  # the bend: a shallow parabola across the sheet
    for _ in range(int(rng.integers(2, 4))):
        d, length = rng.uniform(0, math.pi), rng.uniform(0.35, 0.9) * side
        z = z + rng.uniform(0.3, 1.0) * np.sin(2 * math.pi * (x * math.cos(d) + y * math.sin(d)) / length
                                               + rng.uniform(0, 2 * math.pi))  # fmt: skip
    z = z.astype(np.float32)
    z /= np.abs(z).max() + 1e-6
    look = rng.uniform(0, 2 * math.pi)
    move = rng.uniform(*WAVE_AMPLITUDE) * side * np.array([math.cos(look), math.sin(look)], np.float32)
    u, v = x / max(w - 1, 1), y / max(h - 1, 1)
    corner_z = z[[0, 0, -1, -1], [0, -1, -1, 0]]  # TL, TR, BR, BL
    blend = (corner_z[0] * (1 - u) * (1 - v) + corner_z[1] * u * (1 - v)
             + corner_z[2] * u * v + corner_z[3] * (1 - u) * v)  # fmt: skip
    z = z - blend
    # where each shown pixel comes from (the move is small and smooth: its inverse is its negative)
    src_x, src_y = x - z * move[0], y - z * move[1]
    rgba = np.concatenate([rgb * alpha, alpha], axis=-1)  # premultiplied: no dark fringe
    out = cv2.remap(rgba, src_x, src_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    light = rng.uniform(0, 2 * math.pi)
    tilt = cv2.Sobel(z, cv2.CV_32F, 1, 0) * math.cos(light) + cv2.Sobel(z, cv2.CV_32F, 0, 1) * math.sin(light)
    shade = 1 + np.float32(rng.uniform(0.05, 0.12)) * tilt / (np.abs(tilt).max() + 1e-6)
    a = out[..., 3:]
    colour = np.where(a > 1e-4, out[..., :3] / np.maximum(a, 1e-4), 0) * shade[..., None]
    return _image(np.clip(colour, 0, 1), a)


def _closeup(scene: Scene, rng: np.random.Generator, size: tuple[int, int]) -> Scene:
    """A part of ``scene`` around the papyrus, 35-60 % of its outline's area, brought to ``size``."""
    w, h = size
    q = scene.corners
    area = rng.uniform(0.35, 0.6) * _area(q)
    cw = math.sqrt(area * w / h)
    centre = q.mean(0) + rng.uniform(0.0, 0.5) * (q[int(rng.integers(0, 4))] - q.mean(0))
    x0, y0 = centre - [cw / 2, cw * h / w / 2]
    m = _s(w / cw) @ _t(-x0, -y0)  # frame edge px → close-up edge px
    pixels = np.asarray(scene.image)
    fill = tuple(float(c) for c in pixels.reshape(-1, 3).mean(0))  # what lies beyond: a plain surround
    out = cv2.warpPerspective(pixels, _centre(m), size, flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=fill)  # fmt: skip
    corners = _apply(m, q)
    return Scene(Image.fromarray(out, "RGB"), corners, scene.kind, _area(corners) / (w * h), scene.orientation)


def _turned(scene: Scene, deg: int) -> Scene:
    """``scene`` turned by ``deg`` (90, 180 or 270) degrees clockwise, pixels and corners."""
    w, h = scene.image.size
    turn = {90: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_90}[deg]
    m = {90: np.array([[0.0, -1, h], [1, 0, 0], [0, 0, 1]]), 180: _t(w, h) @ _s(-1.0),
         270: np.array([[0.0, 1, 0], [-1, 0, w], [0, 0, 1]])}[deg]  # fmt: skip
    image = scene.image.transpose(turn)
    return Scene(image, _apply(m, scene.corners), scene.kind, scene.target_fraction, scene.orientation)


def _dim(scene: Scene, rng: np.random.Generator) -> Scene:
    """``scene`` as a dark room would give it: under-exposed, noisy, soft, heavily compressed."""
    dark = np.asarray(scene.image, np.float32) * np.float32(rng.uniform(0.3, 0.5))
    out = _noisy_jpeg(cv2.GaussianBlur(dark, (0, 0), rng.uniform(1.2, 2.2)), rng, (5, 9), (30, 46))
    return Scene(out, scene.corners, scene.kind, scene.target_fraction, scene.orientation)


def _noisy_jpeg(
    frame: np.ndarray, rng: np.random.Generator, noise: tuple[float, float], quality: tuple[int, int]
) -> Image.Image:
    """``frame`` (float RGB, 0-255) with sensor noise of a standard deviation drawn from ``noise``
    (grey levels, the same in each channel), saved as JPEG of a quality drawn from ``quality``
    (upper bound excluded): what a dim room's long exposure leaves."""
    frame = frame + rng.standard_normal(frame.shape[:2], dtype=np.float32)[..., None] * np.float32(rng.uniform(*noise))
    return _jpeg(Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8), "RGB"), int(rng.integers(*quality)))


def _shake_kernel(rng: np.random.Generator, length: float) -> np.ndarray:
    """The blur of a hand-held camera's shake: the image of a point moved along a random path
    (velocity a random walk with a drift, so the path wanders and bends; the whole path spans
    ``length`` pixels), sampled evenly in time — where the camera moved slowly the point stays longer
    and the trace is brighter. The path's mean is the kernel's centre, so the blur moves nothing
    on average: its centroid is the kernel's centre."""
    velocity = np.cumsum(rng.standard_normal((48, 2)), axis=0) + rng.standard_normal(2) * 4.0
    path = np.cumsum(velocity, axis=0)
    steps = np.linspace(0, len(path) - 1, max(64, int(40 * length)))
    path = np.stack([np.interp(steps, np.arange(len(path)), path[:, i]) for i in (0, 1)], axis=1)
    path -= path.mean(0)
    path *= length / max(float(np.linalg.norm(np.ptp(path, axis=0))), 1e-6)
    r = int(np.ceil(np.abs(path).max())) + 1
    kern = np.zeros((2 * r + 1, 2 * r + 1), np.float64)
    x, y = path[:, 0] + r, path[:, 1] + r
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    for dy, dx, wgt in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(kern, (y0 + dy, x0 + dx), wgt)  # bilinear: the centroid stays the path's mean
    return (kern / kern.sum()).astype(np.float32)


def _shaken(scene: Scene, rng: np.random.Generator) -> Scene:
    """``scene`` as a camera shaken during the exposure gives it (:func:`_shake_kernel`, a path
    of :data:`SHAKE_LENGTH` of the frame's long side), with a long exposure's sensor noise, saved as
    JPEG of quality 70-90; nothing moves on average, so the corners stay."""
    length = rng.uniform(*SHAKE_LENGTH) * max(scene.image.size)
    kern = _shake_kernel(rng, length)
    frame: np.ndarray = cv2.filter2D(np.asarray(scene.image, np.float32), -1, kern[::-1, ::-1].copy(),
                                     borderType=cv2.BORDER_REFLECT)  # fmt: skip
    out = _noisy_jpeg(frame, rng, (2, 5), (70, 91))
    return Scene(out, scene.corners, scene.kind, scene.target_fraction, scene.orientation)


def _resent(scene: Scene, rng: np.random.Generator) -> Scene:
    """``scene`` shrunk to a long side drawn from :data:`RESENT_SIDE` and saved again as JPEG of
    quality 55-80, as a messenger delivers a photo; corners scaled with it."""
    w, h = scene.image.size
    f = rng.uniform(*RESENT_SIDE) / max(w, h)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    small = _jpeg(scene.image.resize(size, Image.Resampling.LANCZOS), int(rng.integers(55, 81)))
    corners = scene.corners * [size[0] / w, size[1] / h]
    return Scene(small, corners, scene.kind, scene.target_fraction, scene.orientation)


def encode(scene: Scene, quality: int = 92) -> bytes:
    """``scene.image`` as JPEG bytes; with ``scene.orientation`` 6 the pixels are stored turned a
    quarter to the left and tagged so that a viewer (and :func:`papyrus_widgets.imaging.decode_image`)
    shows them as ``scene.image``."""
    img = scene.image
    exif = Image.Exif()
    if scene.orientation == 6:
        img = img.transpose(Image.Transpose.ROTATE_90)
        exif[0x0112] = 6
    elif scene.orientation != 1:
        raise ValueError(f"orientation {scene.orientation} is not written here (1 or 6)")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, exif=exif.tobytes() if scene.orientation != 1 else b"")
    return buf.getvalue()


def make_scenes(
    targets: Sequence[tuple[str, Image.Image]],
    others: Sequence[Image.Image],
    n_per_target: int,
    seed: int,
    **kw: object,
) -> list[tuple[str, Scene]]:
    """``n_per_target`` scenes of each named target; scene j of target i depends only on (seed, i, j).
    ``others`` and the targets are downscaled once; ``kw`` goes to :func:`make_scene`."""
    small = [_shrink(o, 700) for o in others]
    out = []
    for i, (name, img) in enumerate(targets):
        tgt = _shrink(img, TARGET_MAX_SIDE)
        for j in range(n_per_target):
            out.append((name, make_scene(tgt, small, np.random.default_rng([seed, i, j]), **kw)))  # type: ignore[arg-type]
    return out
