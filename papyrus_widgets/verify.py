"""Geometric verification: re-rank the top hits of a search by local features, with evidence.

The embedding says "these look alike"; verification checks that the *same* papyrus is in both
pictures: SIFT keypoints (ORB where OpenCV has no SIFT) of the query and of a reference are
matched (RootSIFT, Lowe's ratio test) and a homography is fitted with RANSAC. The inlier pairs
are the evidence — the same fibre, hole or letter seen in both images — and their number lifts
the hit's score:

    score = embedding_score + (1 - embedding_score) * support(inliers)

``support`` is 0 up to :data:`MIN_INLIERS` (chance agreements of a random homography) and rises
linearly to 1 at :data:`FULL_INLIERS`. The blended score stays a similarity in [0, 1]: an
unverified hit keeps its embedding score, a well-verified one moves towards 1.

Work is bounded: images are looked at with a long side of at most :data:`MAX_SIDE` pixels and
at most :data:`MAX_KEYPOINTS` keypoints each. Keypoint coordinates are stored in the pixels of the
image *as stored* (the original scan / the uploaded photo after EXIF orientation), so evidence can
be drawn over the images a person sees.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

import numpy as np
from PIL import Image

MAX_SIDE = 768
"""Long side (px) at which features are computed. On re-photographs of the Heidelberg scans
(queries of at most 512 px) 768 verified every query against its own scan (more than 15 inliers)
where 1024 missed 2.5 % (fine detail of the scan that a small, blurred photo does not hold)."""
MAX_KEYPOINTS = 1000
"""At most this many keypoints per image (the strongest)."""
RATIO = 0.85
"""Lowe's ratio test: keep a match when best distance < RATIO x second best."""
RANSAC_THRESHOLD = 0.008
"""RANSAC reprojection threshold as a fraction of the long side of the work image (≈6 px at 768)."""
MIN_INLIERS = 12
"""Inlier counts up to this are treated as chance (support 0). Against the wrong scan, 320
re-photographs gave at most 12 inliers (mostly the library's footer, the same in every scan);
against the right one at least 16, median 113."""
FULL_INLIERS = 50
"""Inlier count at which the support saturates at 1."""
MAX_EVIDENCE = 50
"""At most this many inlier pairs are kept per hit as evidence."""
CACHE_SIZE = 512
"""Reference features kept per process (about 130 KB each for SIFT)."""


@dataclass(frozen=True)
class Features:
    """Keypoints and descriptors of one image.

    ``points``: (N, 2) float32 x, y in the pixels of the image as stored (``size``);
    ``descriptors``: (N, D) uint8 (SIFT values are 0 … 255; ORB bits packed in bytes);
    ``work_side``: the long side (px) the features were computed at (sets the RANSAC threshold);
    ``params``: how they were made (:func:`feature_params`), so stored features made with other
    settings are recognised as stale.
    """

    points: np.ndarray = field(repr=False)
    descriptors: np.ndarray = field(repr=False)
    size: tuple[int, int]
    method: str
    work_side: int
    params: str = ""

    def __len__(self) -> int:
        return int(len(self.points))

    def to_bytes(self) -> bytes:
        """A compact ``.npz`` (for an object store or a disk cache)."""
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            points=self.points.astype(np.float32),
            descriptors=self.descriptors.astype(np.uint8),
            size=np.asarray(self.size, dtype=np.int64),
            method=np.asarray(self.method),
            work_side=np.asarray(self.work_side, dtype=np.int64),
            params=np.asarray(self.params),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Features":
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls(
                points=z["points"].astype(np.float32),
                descriptors=z["descriptors"].astype(np.uint8),
                size=(int(z["size"][0]), int(z["size"][1])),
                method=str(z["method"]),
                work_side=int(z["work_side"]),
                params=str(z["params"]) if "params" in z.files else "",
            )


@dataclass
class Verification:
    """The outcome of matching a query against one reference.

    ``inliers``: RANSAC inliers of the homography (0 when none could be fitted);
    ``matches``: up to :data:`MAX_EVIDENCE` inlier pairs ``[qx, qy, rx, ry]`` (query and reference
    pixels, best descriptor distance first); ``homography``: 3x3 reference → query pixels, or None;
    ``support``: the 0 … 1 factor the score blend uses; ``seconds``: time spent matching;
    ``query_size`` / ``reference_size``: ``[width, height]`` of the images the points refer to.
    """

    inliers: int
    matches: list[list[float]]
    homography: list[list[float]] | None
    support: float
    seconds: float = 0.0
    query_size: list[int] | None = None
    reference_size: list[int] | None = None


# --- features ------------------------------------------------------------------------------------


def feature_method() -> str:
    """``"sift"`` when this OpenCV has SIFT (4.4+), else ``"orb"``."""
    import cv2

    return "sift" if hasattr(cv2, "SIFT_create") else "orb"


def feature_params(method: str | None = None, max_side: int = MAX_SIDE, max_keypoints: int = MAX_KEYPOINTS) -> str:
    """``"sift/768/1000"``: the method and bounds features are made with (stored with them)."""
    return f"{method or feature_method()}/{max_side}/{max_keypoints}"


_detector_local = threading.local()


def _detector(method: str, max_keypoints: int) -> Any:
    import cv2

    key = (method, max_keypoints)
    cache = getattr(_detector_local, "cache", None)
    if cache is None:
        cache = _detector_local.cache = {}
    if key not in cache:
        if method == "sift":
            cache[key] = getattr(cv2, "SIFT_create")(nfeatures=max_keypoints)  # not in every build's stubs
        elif method == "orb":
            cache[key] = getattr(cv2, "ORB_create")(nfeatures=max_keypoints)
        else:
            raise ValueError(f"unknown feature method {method!r}: use 'sift' or 'orb'")
    return cache[key]


def extract_features(
    img: Image.Image,
    *,
    size: tuple[int, int] | None = None,
    max_side: int = MAX_SIDE,
    max_keypoints: int = MAX_KEYPOINTS,
    method: str | None = None,
) -> Features:
    """Keypoints and descriptors of ``img``, computed at a long side of at most ``max_side`` px.

    ``size``: the (width, height) of the image as stored when ``img`` is a downscaled decode of it
    (e.g. ``img.info["original_size"]`` from :func:`papyrus_widgets.imaging.decode_image`; not
    read implicitly, since Pillow copies ``info`` onto every derived image); default ``img.size``.
    Points are returned in those pixels.
    """
    method = method or feature_method()
    params = feature_params(method, max_side, max_keypoints)
    size = tuple(size or img.size)  # type: ignore[assignment]
    grey = img.convert("L")
    if max(grey.size) > max_side:
        grey = grey.copy()
        grey.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    arr = np.asarray(grey, dtype=np.uint8)
    keypoints, descriptors = _detector(method, max_keypoints).detectAndCompute(arr, None)
    if descriptors is None or not keypoints:
        width = 128 if method == "sift" else 32
        return Features(
            np.zeros((0, 2), np.float32), np.zeros((0, width), np.uint8), size, method, max(grey.size), params  # type: ignore[arg-type]
        )
    if len(keypoints) > max_keypoints:  # SIFT may return a few more (ties at the cut)
        order = np.argsort([-k.response for k in keypoints])[:max_keypoints]
        keypoints = [keypoints[i] for i in order]
        descriptors = descriptors[order]
    pts = np.array([k.pt for k in keypoints], dtype=np.float32)
    # keypoint centres at pixel centres: scale (x + 0.5) to the stored size, back to pixel edges
    sx, sy = size[0] / grey.size[0], size[1] / grey.size[1]  # type: ignore[index]  # set above
    pts[:, 0] = (pts[:, 0] + 0.5) * sx - 0.5
    pts[:, 1] = (pts[:, 1] + 0.5) * sy - 0.5
    desc = np.clip(np.rint(descriptors), 0, 255).astype(np.uint8) if method == "sift" else descriptors.astype(np.uint8)
    return Features(pts, desc, size, method, max(grey.size), params)  # type: ignore[arg-type]


# --- matching ------------------------------------------------------------------------------------


def _root_sift(desc: np.ndarray) -> np.ndarray:
    d = desc.astype(np.float32)
    d /= d.sum(axis=1, keepdims=True) + 1e-7
    return np.sqrt(d)


def support(inliers: int, min_inliers: int = MIN_INLIERS, full_inliers: int = FULL_INLIERS) -> float:
    """0 for ``inliers <= min_inliers``, rising linearly to 1 at ``full_inliers``."""
    if inliers <= min_inliers:
        return 0.0
    return float(min(1.0, (inliers - min_inliers) / max(1, full_inliers - min_inliers)))


def blend(embedding_score: float, support_value: float) -> float:
    """``embedding_score + (1 - embedding_score) * support``: stays in [0, 1] for scores in [0, 1]."""
    return float(embedding_score + (1.0 - embedding_score) * support_value)


def match(
    query: Features, reference: Features, *, ratio: float = RATIO, max_evidence: int = MAX_EVIDENCE
) -> Verification:
    """Match ``query`` against ``reference``: ratio-tested nearest neighbours, then a RANSAC
    homography (reference → query). Returns the inliers as evidence."""
    import time

    import cv2

    t0 = time.perf_counter()
    q_size, r_size = [int(v) for v in query.size], [int(v) for v in reference.size]
    empty = Verification(0, [], None, 0.0, query_size=q_size, reference_size=r_size)
    if query.method != reference.method:
        raise ValueError(f"cannot match {query.method} features against {reference.method} features")
    if len(query) < 4 or len(reference) < 4:
        empty.seconds = time.perf_counter() - t0
        return empty
    if query.method == "sift":
        matcher = cv2.BFMatcher(cv2.NORM_L2)
        q, r = _root_sift(query.descriptors), _root_sift(reference.descriptors)
    else:
        matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
        q, r = query.descriptors, reference.descriptors
    pairs = matcher.knnMatch(q, r, k=2)
    good = [
        (m.queryIdx, m.trainIdx, m.distance)
        for m, *rest in (p for p in pairs if p)
        if not rest or m.distance < ratio * rest[0].distance
    ]
    # one reference keypoint may serve one query keypoint only (keep the closest)
    best: dict[int, tuple[int, int, float]] = {}
    for qi, ri, dist in good:
        if ri not in best or dist < best[ri][2]:
            best[ri] = (qi, ri, dist)
    good = sorted(best.values(), key=lambda t: t[2])
    if len(good) < 4:
        empty.seconds = time.perf_counter() - t0
        return empty
    q_idx = np.array([g[0] for g in good])
    r_idx = np.array([g[1] for g in good])
    # fit in work pixels of the query (the threshold is relative to the image size there)
    q_scale = query.work_side / max(query.size)
    r_scale = reference.work_side / max(reference.size)
    src = reference.points[r_idx].astype(np.float64) * r_scale
    dst = query.points[q_idx].astype(np.float64) * q_scale
    threshold = max(1.0, RANSAC_THRESHOLD * query.work_side)
    H, mask = cv2.findHomography(src, dst, ROBUST_METHOD(), threshold, maxIters=2000, confidence=0.995)
    if H is None or mask is None or not _plausible(H):
        empty.seconds = time.perf_counter() - t0
        return empty
    inlier = mask.ravel().astype(bool)
    n = int(inlier.sum())
    evidence = [
        [round(float(x), 1) for x in (*query.points[a], *reference.points[b])]
        for a, b in zip(q_idx[inlier][:max_evidence], r_idx[inlier][:max_evidence])
    ]
    # homography in stored pixels: H_px = S_q^-1 · H · S_r
    Hs = np.diag([1 / q_scale, 1 / q_scale, 1.0]) @ H @ np.diag([r_scale, r_scale, 1.0])
    Hs = Hs / Hs[2, 2] if abs(Hs[2, 2]) > 1e-12 else Hs
    return Verification(
        inliers=n,
        matches=evidence,
        homography=[[float(v) for v in row] for row in Hs],
        support=support(n),
        seconds=time.perf_counter() - t0,
        query_size=q_size,
        reference_size=r_size,
    )


def _plausible(H: np.ndarray) -> bool:
    """Reject homographies no camera gives: mirror images, collapse, extreme scale or perspective."""
    if not np.all(np.isfinite(H)) or abs(H[2, 2]) < 1e-12:
        return False
    H = H / H[2, 2]
    det = float(np.linalg.det(H[:2, :2]))
    if det <= 0:
        return False
    scale = det**0.5
    return 1 / 30 < scale < 30 and abs(H[2, 0]) < 0.01 and abs(H[2, 1]) < 0.01


def _robust_method() -> int:
    """OpenCV's USAC with MAGSAC++ (4.5+: fast when most matches are wrong), else classic RANSAC."""
    import cv2

    return int(getattr(cv2, "USAC_MAGSAC", cv2.RANSAC))


ROBUST_METHOD = _robust_method


# --- re-ranking ----------------------------------------------------------------------------------


@dataclass
class Candidate:
    """A hit to verify: its embedding score and a way to get its reference features."""

    score: float
    features: Callable[[], Features] | Features
    payload: Any = None


@dataclass
class Reranked:
    """A candidate after verification: blended ``score``, the ``embedding_score`` it came with,
    its :class:`Verification` (None when its features could not be had) and its payload."""

    score: float
    embedding_score: float
    verification: Verification | None
    payload: Any = None


def rerank(query: Features, candidates: Sequence[Candidate]) -> list[Reranked]:
    """Verify every candidate against ``query`` and sort by blended score (embedding score breaks
    ties). A candidate whose features fail (missing image) keeps its embedding score."""
    out: list[Reranked] = []
    for c in candidates:
        try:
            feats = c.features() if callable(c.features) else c.features
            v: Verification | None = match(query, feats)
        except Exception:  # noqa: BLE001 - evidence is a bonus: never lose the hit over it
            v = None
        score = blend(c.score, v.support) if v is not None else float(c.score)
        out.append(Reranked(score=score, embedding_score=float(c.score), verification=v, payload=c.payload))
    out.sort(key=lambda r: (-r.score, -r.embedding_score))
    return out


class FeatureCache:
    """A thread-safe LRU of :class:`Features` by key (e.g. a content-addressed object key)."""

    def __init__(self, maxsize: int = CACHE_SIZE) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[Hashable, Features] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, compute: Callable[[], Features]) -> Features:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            self.misses += 1
        value = compute()  # outside the lock: two threads may compute the same key once each
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.hits = self.misses = 0


# --- drawing (notebooks) -------------------------------------------------------------------------


def draw_matches(
    query_img: Image.Image,
    reference_img: Image.Image,
    matches: Sequence[Sequence[float]],
    *,
    query_size: tuple[int, int] | None = None,
    reference_size: tuple[int, int] | None = None,
    title: str | None = None,
    height: float = 4.0,
) -> Any:
    """A matplotlib Figure: query (left) and reference (right) side by side, inlier pairs as lines.

    ``matches`` are ``[qx, qy, rx, ry]`` in stored pixels (``Verification.matches`` or
    ``Hit.matches``); ``query_size`` / ``reference_size`` give the stored sizes when the images
    passed are downscaled (default: their own size).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import ConnectionPatch

    qs = query_size or query_img.size
    rs = reference_size or reference_img.size
    aspect = query_img.size[0] / query_img.size[1] + reference_img.size[0] / reference_img.size[1]
    fig, (ax_q, ax_r) = plt.subplots(1, 2, figsize=(max(4.0, height * aspect), height))
    ax_q.imshow(query_img)
    ax_r.imshow(reference_img)
    for ax, name in ((ax_q, "query"), (ax_r, "reference")):
        ax.set_axis_off()
        ax.set_title(name, fontsize=9)
    fq = (query_img.size[0] / qs[0], query_img.size[1] / qs[1])
    fr = (reference_img.size[0] / rs[0], reference_img.size[1] / rs[1])
    colours = plt.cm.viridis(np.linspace(0, 1, max(1, len(matches))))
    for (qx, qy, rx, ry), colour in zip(matches, colours):
        a = (qx * fq[0], qy * fq[1])
        b = (rx * fr[0], ry * fr[1])
        ax_q.plot(*a, "o", ms=3, color=colour)
        ax_r.plot(*b, "o", ms=3, color=colour)
        fig.add_artist(
            ConnectionPatch(
                xyA=a, coordsA=ax_q.transData, xyB=b, coordsB=ax_r.transData, color=colour, lw=0.7, alpha=0.8
            )
        )
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
