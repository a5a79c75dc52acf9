"""Where the papyrus is in the photo.

A confirmed match's homography maps the reference's outline (its four corners) into the photo:
that quadrilateral is the region found (:func:`outline`), reported on the hit, drawn by the
widget as corners the user can accept or adjust, and searched again at full detail when it is a
small part of the photo (:func:`needs_closer_look`, :func:`clip`). Without a match,
:func:`suggest_corners` (background vs foreground, :mod:`papyrus_widgets.imaging`) proposes a
region from the pixels alone.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..imaging import polygon_area, suggest_corners

__all__ = [
    "CLOSER_LOOK_BELOW",
    "CLOSER_LOOK_UNDER_INLIERS",
    "outline",
    "clip",
    "area_fraction",
    "needs_closer_look",
    "aim_order",
    "off_centre",
    "outside",
    "intersection_area",
    "covered",
    "suggest_corners",
]

CLOSER_LOOK_BELOW = 0.5
"""When the region found covers less than this fraction of the photo …"""
CLOSER_LOOK_UNDER_INLIERS = 100
"""… and the match has fewer inliers than this, the region is looked at again in full detail (a
confident match needs no second look)."""


def outline(homography: Sequence[Sequence[float]], size: Sequence[int]) -> list[list[float]]:
    """The corners (TL, TR, BR, BL) of a ``size`` = (width, height) image mapped by ``homography``."""
    w, h = float(size[0]), float(size[1])
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], dtype=np.float64)
    mapped = corners @ np.asarray(homography, dtype=np.float64).T
    return [[round(float(x / z), 1), round(float(y / z), 1)] for x, y, z in mapped]


def clip(quad: Sequence[Sequence[float]], size: Sequence[int]) -> list[list[float]]:
    """``quad`` clipped to a ``size`` image (a reference may reach past the photo's edge)."""
    w, h = float(size[0]), float(size[1])
    return [[min(max(float(x), 0.0), w), min(max(float(y), 0.0), h)] for x, y in quad]


def area_fraction(quad: Sequence[Sequence[float]], size: Sequence[int]) -> float:
    """Area of ``quad`` / area of the ``size`` image."""
    return polygon_area(np.asarray(quad, dtype=np.float64)) / max(1.0, float(size[0]) * float(size[1]))


def needs_closer_look(verification: Any) -> bool:
    """Whether a match's region is worth searching again in full detail: a plausible match with
    :data:`~.confirm.LOOK_AGAIN_INLIERS` or more, under :data:`CLOSER_LOOK_UNDER_INLIERS`, on a
    small part of the photo."""
    from .confirm import LOOK_AGAIN_INLIERS

    v = verification
    return bool(
        v is not None
        and v.inliers >= LOOK_AGAIN_INLIERS
        and v.outline is not None
        and v.query_size is not None
        and v.inliers < CLOSER_LOOK_UNDER_INLIERS
        and area_fraction(v.outline, v.query_size) < CLOSER_LOOK_BELOW
    )


def _inside(point: np.ndarray, quad: np.ndarray) -> bool:
    import cv2

    return (
        cv2.pointPolygonTest(quad.astype(np.float32).reshape(-1, 1, 2), (float(point[0]), float(point[1])), False) >= 0
    )


def off_centre(quad: Sequence[Sequence[float]], size: Sequence[int]) -> float:
    """How far the centre of ``quad`` lies from the middle of a ``size`` photo, in units of its
    half-diagonal (0: in the middle, 1: in a corner)."""
    w, h = float(size[0]), float(size[1])
    cx, cy = np.asarray(quad, dtype=np.float64).mean(axis=0)
    return float(np.hypot(cx - w / 2, cy - h / 2)) / max(1.0, float(np.hypot(w, h)) / 2)


def outside(points: np.ndarray, quads: Sequence[Sequence[Sequence[float]]]) -> np.ndarray:
    """A boolean mask of the ``points`` ((N, 2) x, y) that lie in none of ``quads`` (outlines of
    papyri found, in the same pixels; a point on an outline is inside it, as for :func:`_inside`)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    outlines = [np.asarray(q, dtype=np.float64) for q in quads]
    return np.array([not any(_inside(p, q) for q in outlines) for p in pts], dtype=bool)


def intersection_area(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> float:
    """The area two convex quadrilaterals share (0 where they do not meet, or one is degenerate)."""
    import cv2

    try:
        inter, _ = cv2.intersectConvexConvex(np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32))
    except cv2.error:
        return 0.0
    return float(inter)


def covered(region: Sequence[Sequence[float]], outline: Sequence[Sequence[float]]) -> float:
    """How much of ``region`` (the corners a user marked) the ``outline`` of a papyrus found covers:
    0 (none) to 1 (all of it)."""
    area = polygon_area(np.asarray(region, dtype=np.float64))
    return min(1.0, intersection_area(region, outline) / area) if area > 0 else 0.0


def aim_order(outlines: Sequence[Sequence[Sequence[float]]], size: Sequence[int]) -> list[int]:
    """The order in which to show several papyri found in one photo (``outlines``, given strongest
    evidence first): the one the camera was aimed at first.

    Outlines whose centres lie in one another are one papyrus (several references of it) and stay
    together, in the order given; the papyri are ordered by how near the photo's centre their
    first outline's centre lies (in units of the photo's half-diagonal; nearer than a tenth of it
    counts as a tie, kept in the order given). A photo of a papyrus among others — thumbnails on a
    screen, sheets on a desk, all perhaps in the collection — is taken of the one in the middle."""
    quads = [np.asarray(q, dtype=np.float64) for q in outlines]
    centres = [q.mean(axis=0) for q in quads]
    groups: list[list[int]] = []
    for i, c in enumerate(centres):
        for g in groups:
            j = g[0]
            if _inside(c, quads[j]) or _inside(centres[j], quads[i]):
                g.append(i)
                break
        else:
            groups.append([i])
    distance = [round(off_centre(outlines[g[0]], size) / 0.1) for g in groups]
    order = sorted(range(len(groups)), key=lambda k: (distance[k], k))
    return [i for k in order for i in groups[k]]
