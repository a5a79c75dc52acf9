"""Local features: SIFT keypoints and descriptors (ORB where OpenCV has no SIFT), bounded in work,
with their coordinates in the pixels of the image as stored, and a per-process LRU of them.

Ingest computes each reference's features once and stores them in the object store
(``features/…npz``, with the bounds they were made with); the confirming stage
(:mod:`papyrus_widgets.retrieval.confirm`) and the word index (:mod:`.shortlist`) use them.
Queries are looked at in more detail than references (:data:`QUERY_MAX_SIDE`,
:data:`QUERY_MAX_KEYPOINTS`): in a phone photo the papyrus may fill a tenth of the frame.
"""

from __future__ import annotations

import dataclasses
import io
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
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
COARSE_KEYPOINTS = 500
"""A reference is also looked at with half the resolution of its first look, and this many more
keypoints, balanced over scales, are kept from that second look (:func:`describe_reference`; 0:
none, the reference's features as before 2026-12-04). A photo that is shaken, soft, or shot off a
screen keeps a papyrus's coarse structure and loses its fine one; the half-resolution look
describes that structure with keypoints the first look's 1,000 leave out. Chosen on development
photos (seed 77900, 16 indexed papyri, 2 photos each per set, each photo's own keypoints as the
search finds them, matched against its own scan and against 3 held-out scans), median inliers
with the own scan:

- *shaky* photos 107.5 as the references were, 157.5 with these 500 (all 32 gained), against
  122.5 with 1,500 keypoints at the first look's resolution (2 lost some);
- ordinary scenes 334 → 467.5 (all gained; 1,500 at full resolution: 442);
- *lcd* photos 195.5 → 270 (all gained; 1,500: 237);
- the most inliers with a wrong scan 0 → 8, 11 → 15 and 0 → 7 (1,500 at full resolution: 11,
  22 and 18).

Keeping the budget at 1,000 (700 at full resolution and 300 at half) gained as many photos as it
lost, so the 500 come on top: a reference's stored features and visual words are 1.5 times as
many. Then the benchmark's photos among 10,035 images (results.md, figure 0d): *shaky* 63 of 64
found against 61, *lcd* 64 of 64 against 62, *steep* 63 of 64 against 61, held-out 0 of 48 confirmed; figure 0 the same
answers, its first stage's recall@10 1.000 against 0.984. Matching them costs a found photo
nothing measurable and "no confirmed match" 5-10 % (same run, ``confirm.MATCH_COARSE`` off); the
features step of ingest 1.26x."""
COARSER_LOOKS: tuple[tuple[int, int], ...] = ((3, 300), (4, 250))
"""More looks at a reference after the half-resolution one: ``(d, n)`` looks at it with ``1/d`` of
its first look's long side (256 and 192 px) and keeps up to ``n`` keypoints, balanced over scales
(:func:`describe_reference`; appended after :data:`COARSE_KEYPOINTS`' and counted with them in
:attr:`Features.coarse`; ``()``: none, the references as from 2026-12-04 to 2026-12-06). A panel
photographed with a shaking hand keeps only a papyrus's coarsest structure, and its descriptors
there are smeared: a reference described from a smaller image looks more like it. Chosen on
development photos (2026-12-06, an experiment script, not kept: seed 79500, 64 *lcd+shaky* photos
of the indexed papyri, each photo's keypoints and visual words as the search makes them, matched
against its own scan and against 10 other indexed scans), as the references were against with
these 550 more: median inliers with the own scan 92 → 118, photos under the 40 inliers that
confirm 7 → 4, the own scan's word matches (own word, signature within the Hamming threshold)
69 → 93 against the most of any other scan 34 → 40, photos whose own scan had no more word
matches than another scan 8 → 4; a third or a quarter alone gave about half of that each. Then the
benchmark's photos among 10,035 images (results.md, figure 0d; not alternated: another index):
*lcd+shaky* 116 of 128 found against 114, its first stage's recall@10 0.703 / 0.781 → 0.859 /
0.859 on its two sets, ordinary scenes at 25 % of the frame 64 of 64 either way, held-out 0 of 48
confirmed. The references' features step of ingest 1.16x; a Heidelberg scan's keypoints 1.37x."""
STORE_COMPRESSED = False
"""Whether :meth:`Features.to_bytes` compresses (``np.savez_compressed``, as before 2026-12-06).
SIFT descriptors barely compress, and every candidate a search confirms that its worker has not
kept (:data:`CACHE_SIZE`) is read and decoded: a search that confirms nothing reads some 230.
Uncompressed, a read takes 0.23x the time (0.5 against 2.2 ms median, 24 Heidelberg scans;
``bench_features.py``, benchmarks/results.md figure 7) for 1.32-1.35x the bytes (figure 0's
distractor crops 184 against 139 KB mean, the scans 281 against 208 KB median). Stored features
written before are read as they are."""
CACHE_SIZE = 512
"""Reference features kept per process (about 200 KB each for SIFT)."""

QUERY_MAX_SIDE = 1600
"""Long side (px) at which a query photo's features are computed: a papyrus that fills a third of
the frame is then looked at with a long side of about 550-900 px, like the references."""
QUERY_MAX_KEYPOINTS = 4000
"""At most this many keypoints per query photo (clutter around the papyrus takes its share)."""
QUERY_CONTRAST: float | None = None
"""SIFT's contrast threshold for a query photo's keypoints (OpenCV's ``contrastThreshold``; None:
its default, 0.04, as for references). Tried at 0.02 and not adopted (2026-12-05 night,
``bench_realphoto.py --variants lcd+shaky --trial contrast02``, 64 photos of indexed papyri and 16
held-out ones among 10,035 images, each searched both ways; results.md figure 0d): a shaken
panel photo does keep more of its papyrus (in an experiment on 64 such photos, the scan's word
matches and inliers rose for most), but the clutter around it gains as many, the first stage's
list got worse, and top-1 fell from 0.906 to 0.859 (2 photos gained, 5 lost), at 1.13x the time
per photo and 1.26x per "no confirmed match" search. A rule that lowers it only for a photo with
few keypoints, or only inside a region, is not measured."""
QUERY_MIN_SIDE = 800
"""A query photo whose long side is shorter is enlarged to this (bicubic) before SIFT, and a
region of it by the same factor, about a reference's :data:`MAX_SIDE`: a photo sent on by a messenger at
300-400 px shows a papyrus at 10-15 % of its frame in some 100-130 px, and SIFT finds too few
keypoints there for the words or the geometry. Enlarged, it finds them (2026-12-02, an experiment
on figure 0's 64 photos shrunk to 400 / 300 px through the engine on its 10,035-image index:
60 / 51 of 64 first as they were, 64 / 64 enlarged; held-out 0 of 8 confirmed either way).
A photo of this size or more is looked at as before, whatever the size of the region looked at.
0: never enlarge."""

DEBAND = True
"""Whether the bands that a screen's flickering backlight leaves across a phone's rolling-shutter
rows are taken out of a query photo before its keypoints are found (:func:`_without_bands`;
``lift_dark`` photos too; a region of it too, :data:`DEBAND_REGIONS`). One benchmark photo of a laptop panel
(results.md, figure 0d, variant *lcd*: bands 5-30 % deep every 30-160 rows among its effects)
matched its own scan with 0 inliers, 209 without the panel's effects and 149 without its bands
alone. Chosen on development photos (seed 77900, 32 photos of the
indexed papyri per set, each matched against its own scan): bands found in 15 of 32 *lcd* photos
and in none of 32 ordinary scenes, 32 12-megapixel portrait photos or 32 turned frames (these
returned as they were); 14 of the 15 gained inliers (42 -> 59, 59 -> 101, 88 -> 177), one lost
some (242 -> 181); the median of all 32 169 -> 200. Then measured through the engine among 10,035
images (``bench_realphoto.py --fractions 0.25 --variants lcd --trial banded``, the search without
it, each photo searched both ways; results.md figure 0d): *lcd* photos 62 of 64 found and
confirmed against 58, four found that were not, none lost; ordinary scenes at 25 % of the frame
the same answers (64 of 64), 0.97x per photo (finding no bands cost about 0.05 s then; since the
rows' medians come from their histograms, :func:`_median_logs`, 14 ms against 29 ms the same hour,
128 development photos, the same arrays out); held-out 0 of 32 confirmed either way. Another draw of
development photos (seed 77900, 16 papyri, 2 photos each): bands found in 17 of 32 *lcd* photos and
in one of 96 others, a desk whose wood grain runs along the rows (90 -> 83 inliers with its scan)."""
DEBAND_REGIONS = True
"""Whether a region of a query photo (the corners a user marks, the closer look at a papyrus found
small) has its flicker bands taken out too (:data:`DEBAND`; they run across the photo's rows, so
across a region's as well); False: a region is looked at as it is, as before 2026-12-04 18:30.
Development photos (seed 77900, 32 per set, each photo's true corners, matched against its own
scan): bands found in 14 of 32 *lcd* regions (median inliers 177 -> 193; 9 gained, up to
212 -> 402; 5 lost some, at most 273 -> 207) and in none of 96 others (the same arrays). Then the benchmark's 64
*lcd* photos searched with their true corners among 10,035 images, both ways alternated (results.md
figure 0d): 63 of 64 found and confirmed against 59, four found, none lost; held-out 0 of 16
confirmed either way; 1.02x per photo; searched with no corners the same answers (1.00x)."""
BAND_PEAK = 15.0
"""Bands are taken out when the profile's spectrum (:func:`_without_bands`) peaks at a period of
:data:`BAND_PERIODS` with at least this many times its median there. Development photos (seed
77900): 3-143 for *lcd* photos, at most 11.1 for ordinary scenes (screens, desks, light boxes,
whose rows hold windows, text lines and rulers)."""
BAND_AMPLITUDE = 0.01
"""… and when that peak's wave is at least this deep (in log grey: 1 % of the brightness either
way); shallower bands do SIFT no harm, and a photo with flat rows (a plain ground) has a spectrum
of rounding errors whose peak may stand high above its median."""
BAND_PERIODS = (20, 180)
"""The periods (work pixels) looked at for bands."""
BAND_SMOOTH = 40.0
"""The profile of rows is taken less its Gaussian smooth of this sigma (rows): what stays is the
bands, not the photo's slow changes of light."""

DARK_LEVEL = 160
"""A photo whose brightest 1 % lies below this grey level (of 255) is looked at as a dark photo
(``lift_dark`` of :func:`extract_features`): stretched to the full grey range, at half the work
side. SIFT's contrast threshold is absolute, so a photo exposed at a third of the range gives it a
few hundred keypoints where a well-lit one gives thousands; stretched alone, its noise and JPEG
blocks become keypoints too (4,000 on every dark development photo, and the word shortlist got
worse); averaged over 2 x 2 pixels first, the noise halves and the papyrus's own structure (a dark
photo is a soft one) stays. Measured on the scenes' dark variant (exposure x0.3-0.5, blur, noise,
JPEG 30-45), 12 development photos against their own scans: 14-186 inliers as they are, 73-230
lifted; through the engine, 32 such photos (development seed 77100) among 10,035 images: top-1
0.625 -> 0.875, first-stage recall@50 0.56 -> 0.72, p50 1.17 -> 0.75 s; held-out papyri confirmed
0 of 8 either way. Well-exposed photos of the scenes have their brightest 1 % at 198-255, the dark
ones at 69-131."""


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
    work_scale: float = 0.0
    """Work pixels per stored pixel (0: ``work_side / max(size)``, features of the whole image)."""
    coarse: int = 0
    """How many of the keypoints, the last ones, come from a reference's looks at half resolution
    and less (:func:`describe_reference`)."""

    @property
    def scale(self) -> float:
        """Work pixels per stored pixel: what :func:`~papyrus_widgets.retrieval.confirm.match` fits in."""
        return self.work_scale or self.work_side / max(self.size)

    def __len__(self) -> int:
        return int(len(self.points))

    def fine(self) -> "Features":
        """These features without the :attr:`coarse` ones (the first look's alone)."""
        if not self.coarse:
            return self
        n = len(self) - self.coarse
        return dataclasses.replace(self, points=self.points[:n], descriptors=self.descriptors[:n], coarse=0)

    def every(self, stride: int) -> "Features":
        """Every ``stride``-th keypoint of these (from the first), fine and :attr:`coarse` alike."""
        kept = np.arange(0, len(self), max(1, stride))
        coarse = int((kept >= len(self) - self.coarse).sum()) if self.coarse else 0
        return dataclasses.replace(self, points=self.points[kept], descriptors=self.descriptors[kept], coarse=coarse)

    def to_bytes(self) -> bytes:
        """An ``.npz`` (for an object store or a disk cache), compressed when
        :data:`STORE_COMPRESSED` is set; :meth:`from_bytes` reads either."""
        buf = io.BytesIO()
        (np.savez_compressed if STORE_COMPRESSED else np.savez)(
            buf,
            points=self.points.astype(np.float32),
            descriptors=self.descriptors.astype(np.uint8),
            size=np.asarray(self.size, dtype=np.int64),
            method=np.asarray(self.method),
            work_side=np.asarray(self.work_side, dtype=np.int64),
            params=np.asarray(self.params),
            work_scale=np.asarray(self.work_scale, dtype=np.float64),
            coarse=np.asarray(self.coarse, dtype=np.int64),
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
                work_scale=float(z["work_scale"]) if "work_scale" in z.files else 0.0,
                coarse=int(z["coarse"]) if "coarse" in z.files else 0,
            )



def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT (Arandjelović & Zisserman 2012): L1-normalise, then square root; rows have unit L2 norm."""
    d = np.asarray(descriptors, dtype=np.float32)
    d = d / (d.sum(axis=1, keepdims=True) + 1e-7)
    return np.sqrt(d)


# --- features ------------------------------------------------------------------------------------


def feature_method() -> str:
    """``"sift"`` when this OpenCV has SIFT (4.4+), else ``"orb"``."""
    import cv2

    return "sift" if hasattr(cv2, "SIFT_create") else "orb"


SCALE_BALANCED = True
"""Keep SIFT keypoints balanced over scales (:func:`_balanced`) rather than the strongest ones
alone, which are mostly the finest: a papyrus shown on a screen or photographed out of focus
keeps its coarse structure and loses its fine one, and a reference described only at fine scales
then has little left to match (p_g_213 shown on a screen, its region against its reference: 15
inliers with the strongest 1,000 keypoints, 130 with 1,000 balanced over scales)."""
CANDIDATES_PER_KEYPOINT = 4
"""SIFT proposes this many candidates per keypoint kept, for the balanced choice."""


def feature_params(method: str | None = None, max_side: int = MAX_SIDE, max_keypoints: int = MAX_KEYPOINTS) -> str:
    """``"sift/768/1000/scales"``: the method, bounds and keypoint choice features are made with
    (stored with them: features made otherwise are made again)."""
    method = method or feature_method()
    choice = "/scales" if method == "sift" and SCALE_BALANCED else ""
    return f"{method}/{max_side}/{max_keypoints}{choice}"


def _later_looks() -> tuple[tuple[int, int], ...]:
    """The looks at a SIFT reference after its first, ``(d, n)``: ``1/d`` of the first look's long
    side, up to ``n`` keypoints; the half look (:data:`COARSE_KEYPOINTS`), then :data:`COARSER_LOOKS`
    (none without the half look)."""
    return ((2, COARSE_KEYPOINTS), *COARSER_LOOKS) if COARSE_KEYPOINTS else ()


def reference_params(method: str | None = None) -> str:
    """:func:`feature_params` of a reference as :func:`describe_reference` makes it
    (``"sift/768/1000/scales+half/500+1/3/300+1/4/250"``: the half look is written ``half``, as
    before the coarser ones came): stored features made otherwise are made again."""
    method = method or feature_method()
    base = feature_params(method)
    looks = _later_looks()
    if method != "sift" or not looks:
        return base
    (_, half), *coarser = looks
    return f"{base}+half/{half}" + "".join(f"+1/{d}/{n}" for d, n in coarser)


def describe_reference(img: Image.Image, *, size: tuple[int, int] | None = None, method: str | None = None) -> Features:
    """A reference's features, as ingest stores them and the confirming stage matches them:
    :func:`extract_features` at :data:`MAX_SIDE` with :data:`MAX_KEYPOINTS`, then (SIFT) up to
    :data:`COARSE_KEYPOINTS` more from a look at half that resolution and those of
    :data:`COARSER_LOOKS`, appended (:attr:`Features.coarse` counts them). ``size``: as for :func:`extract_features`."""
    fine = extract_features(img, size=size, method=method)
    later = _later_looks()
    if fine.method != "sift" or not later:
        return fine
    looks = [
        extract_features(img, size=size, method=method, max_side=max(1, fine.work_side // d), max_keypoints=n)
        for d, n in later
    ]
    return dataclasses.replace(
        fine,
        points=np.concatenate([fine.points, *(f.points for f in looks)]),
        descriptors=np.concatenate([fine.descriptors, *(f.descriptors for f in looks)]),
        params=reference_params(fine.method),
        coarse=sum(len(f) for f in looks),
    )


def _balanced(keypoints: Sequence[Any], n: int) -> list[int]:
    """Indices of ``n`` of ``keypoints``: an equal share for each octave of keypoint size (the
    strongest in each), the rest of the budget to the strongest of those left."""
    sizes = np.array([k.size for k in keypoints], dtype=np.float64)
    response = np.array([k.response for k in keypoints], dtype=np.float64)
    octave = np.floor(np.log2(np.maximum(sizes, 1.0))).astype(int)
    groups = np.unique(octave)
    share = n // max(1, len(groups))
    chosen: list[int] = []
    for g in groups:
        members = np.flatnonzero(octave == g)
        chosen += members[np.argsort(-response[members], kind="stable")][:share].tolist()
    rest = np.setdiff1d(np.arange(len(keypoints)), chosen)
    chosen += rest[np.argsort(-response[rest], kind="stable")][: n - len(chosen)].tolist()
    return chosen


ONE_PASS = True
"""Whether :func:`_sift_balanced` proposes and describes the keypoints in one pass (on since
2026-12-03). False: propose, choose, then describe the chosen ones, as before (OpenCV builds its
image pyramid twice; the same features, more slowly): ``benchmarks/bench_features.py`` and
``bench_realphoto.py --trial two-pass`` compare the two."""


def _sift_balanced(
    arr: np.ndarray, mask: np.ndarray | None, max_keypoints: int, contrast: float | None = None
) -> tuple[Sequence[Any], Any]:
    """SIFT keypoints of ``arr`` (inside ``mask``) with their descriptors: :data:`CANDIDATES_PER_KEYPOINT`
    times ``max_keypoints`` proposed, ``max_keypoints`` of them kept balanced over scales
    (:func:`_balanced`). With :data:`ONE_PASS`, ``detectAndCompute`` describes every keypoint
    proposed and those kept keep their descriptors: OpenCV builds its Gaussian pyramid once, where
    proposing and then describing the kept ones built it twice. The same keypoints and
    descriptors, bit for bit; a photo's 4,000 keypoints at 1,600 px in 0.71-0.72x the time, its
    tilted views' in 0.72-0.75x, a scan's 1,000 at 768 px (where describing all 4,000 proposed
    costs about what the second pyramid did) in 0.98-1.01x (three runs of
    ``benchmarks/bench_features.py``, results.md figure 7). ``contrast``: SIFT's contrast
    threshold (None: OpenCV's default)."""
    detector = _detector("sift", max_keypoints * CANDIDATES_PER_KEYPOINT, contrast)
    if not ONE_PASS:
        found = detector.detect(arr, mask)
        if len(found) > max_keypoints:
            found = [found[i] for i in _balanced(found, max_keypoints)]
        keypoints, descriptors = detector.compute(arr, found) if found else ((), None)
    else:
        keypoints, descriptors = detector.detectAndCompute(arr, mask)
        if descriptors is not None and len(keypoints) > max_keypoints:
            chosen = _balanced(keypoints, max_keypoints)
            keypoints, descriptors = [keypoints[i] for i in chosen], descriptors[chosen]
    if descriptors is None or not keypoints:
        return (), None
    return keypoints, descriptors


_detector_local = threading.local()


def _detector(method: str, max_keypoints: int, contrast: float | None = None) -> Any:
    import cv2

    key = (method, max_keypoints, contrast)
    cache = getattr(_detector_local, "cache", None)
    if cache is None:
        cache = _detector_local.cache = {}
    if key not in cache:
        if method == "sift":
            more = {} if contrast is None else {"contrastThreshold": contrast}
            cache[key] = getattr(cv2, "SIFT_create")(nfeatures=max_keypoints, **more)  # not in every build's stubs
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
    region: Sequence[Sequence[float]] | None = None,
    lift_dark: bool = False,
    min_side: int = 0,
    deband: bool = False,
    contrast: float | None = None,
    rectify: bool = False,
    aspect: float | None = None,
) -> Features:
    """Keypoints and descriptors of ``img``, computed at a long side of at most ``max_side`` px.

    ``size``: the (width, height) of the image as stored when ``img`` is a downscaled decode of it
    (e.g. ``img.info["original_size"]`` from :func:`papyrus_widgets.imaging.decode_image`; not
    read implicitly, since Pillow copies ``info`` onto every derived image); default ``img.size``.
    Points are returned in those pixels.

    ``region``: a polygon (e.g. four corners, in stored pixels): only keypoints inside it, and the
    work resolution spent on it alone — its bounding box is cut from ``img`` at the resolution
    ``img`` has and brought to at most ``max_side``, so a papyrus that fills a tenth of a photo is
    looked at in full detail.

    ``lift_dark``: a dark image (:data:`DARK_LEVEL`) is stretched to the full grey range and looked
    at with at most half its long side (no less than :data:`MAX_SIDE`, a reference's): queries, a
    photo taken in a dim room.

    ``min_side``: an ``img`` whose long side is shorter is enlarged to it first, and a region of it
    by the same factor (no further than ``max_side``; :data:`QUERY_MIN_SIDE` for queries; 0: never).

    ``deband``: the image's flicker bands are taken out first (:func:`_without_bands`; queries,
    :data:`DEBAND`), a region's too unless :data:`DEBAND_REGIONS` is off.

    ``contrast``: SIFT's contrast threshold (queries: :data:`QUERY_CONTRAST`; None: OpenCV's
    default, as for references).

    ``rectify``: a ``region`` of four corners (a sheet's, as a user marks them) is looked at as a
    square-on camera would show it, when :data:`RECTIFY_REGIONS` is on too (:func:`_rectified`):
    the descriptors are those of the rectified view, the points where its keypoints lie in ``img``.
    ``aspect``: the sheet's width / height when it is known (a reference's, whose outline the region
    is: the closer look); None: solved from the corners' perspective (``imaging.rectangle_aspect``).
    """
    import cv2

    method = method or feature_method()
    params = feature_params(method, max_side, max_keypoints)
    size = tuple(int(v) for v in (size or img.size))  # type: ignore[assignment]
    fx = img.width / size[0]  # type: ignore[index]  # img pixels per stored pixel
    fy = img.height / size[1]  # type: ignore[index]
    grey = img.convert("L")
    x0 = y0 = 0
    mask = None
    if region is not None:
        poly = np.asarray(region, dtype=np.float64).reshape(-1, 2) * [fx, fy]
        pad = 0.03 * float(np.ptp(poly, axis=0).max())
        lo = np.clip(np.floor(poly.min(0) - pad), 0, [grey.width, grey.height]).astype(int)
        hi = np.clip(np.ceil(poly.max(0) + pad), 0, [grey.width, grey.height]).astype(int)
        if (hi - lo).min() < 8:
            raise ValueError("the region is too small to look at (under 8 pixels).")
        x0, y0 = int(lo[0]), int(lo[1])
        grey = grey.crop((x0, y0, int(hi[0]), int(hi[1])))
    crop_w = grey.width
    stretch = _dark_range(grey) if lift_dark else None
    if stretch is not None:  # 2 x 2 pixels averaged, unless that would leave less than a reference's detail
        long_side = max(grey.size)
        max_side = min(max_side, max(long_side // 2, min(long_side, MAX_SIDE)))
    if max(grey.size) > max_side:
        grey = grey.copy()
        grey.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    elif min_side and max(img.size) < min_side:  # a small photo: it, or its region, enlarged alike
        f = min(min_side / max(img.size), max_side / max(grey.size))  # a dark one's max_side: its own
        if f > 1:
            grey = grey.resize((round(grey.width * f), round(grey.height * f)), Image.Resampling.BICUBIC)
    r = grey.width / crop_w  # work pixels per img pixel
    arr = np.asarray(grey, dtype=np.uint8)
    if stretch is not None:
        lo, hi = stretch
        arr = np.clip((arr.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    if deband and (region is None or DEBAND_REGIONS):
        arr = _without_bands(arr)
    work_side = max(grey.size)
    view = None  # work pixels of the crop -> pixels of its rectified view
    if region is not None and rectify and RECTIFY_REGIONS and len(poly) == 4:
        from .. import imaging

        sheet = aspect if aspect is not None else imaging.rectangle_aspect(region, size)  # type: ignore[arg-type]
        arr, view = _rectified(arr, (poly - [x0, y0]) * r, sheet)
        work_side = max(arr.shape)
    elif region is not None:
        mask = np.zeros(arr.shape, dtype=np.uint8)
        cv2.fillPoly(mask, [np.round((poly - [x0, y0]) * r).astype(np.int32)], 255)
    if method == "sift" and SCALE_BALANCED:
        keypoints, descriptors = _sift_balanced(arr, mask, max_keypoints, contrast)
    else:
        detector = _detector(method, max_keypoints, contrast if method == "sift" else None)
        keypoints, descriptors = detector.detectAndCompute(arr, mask)
    work_scale = r * fx if region is not None else 0.0
    if descriptors is None or not keypoints:
        width = 128 if method == "sift" else 32
        empty = (np.zeros((0, 2), np.float32), np.zeros((0, width), np.uint8))
        return Features(*empty, size, method, work_side, params, work_scale)  # type: ignore[arg-type]
    if len(keypoints) > max_keypoints:  # SIFT may return a few more (ties at the cut)
        order = np.argsort([-k.response for k in keypoints])[:max_keypoints]
        keypoints = [keypoints[i] for i in order]
        descriptors = descriptors[order]
    pts = np.array([k.pt for k in keypoints], dtype=np.float64)
    if view is not None:  # from the rectified view back to where they lie in the crop
        back = cv2.perspectiveTransform((pts + 0.5).reshape(-1, 1, 2), np.linalg.inv(view)).reshape(-1, 2)
        pts = np.asarray(back - 0.5, dtype=np.float64)
    # keypoint centres at pixel centres: (x + 0.5) is a pixel-edge coordinate; take it to the
    # stored image's pixels, and back to pixel centres
    pts[:, 0] = ((pts[:, 0] + 0.5) / r + x0) / fx - 0.5
    pts[:, 1] = ((pts[:, 1] + 0.5) / r + y0) / fy - 0.5
    desc = np.clip(np.rint(descriptors), 0, 255).astype(np.uint8) if method == "sift" else descriptors.astype(np.uint8)
    return Features(pts.astype(np.float32), desc, size, method, work_side, params, work_scale)  # type: ignore[arg-type]


RECTIFY_REGIONS = True
"""Whether a region of four corners given to :func:`extract_features` with ``rectify`` (the corners
a user marks: ``tasks.prepare_task``; a match's outline: ``tasks.RECTIFY_CLOSER_LOOK``) is looked at
rectified (:func:`_rectified`). False: in the
photo's own perspective, as before 2026-12-06 (``bench_realphoto.py --trial unrectified``)."""


def _rectified(arr: np.ndarray, quad: np.ndarray, aspect: float) -> tuple[np.ndarray, np.ndarray]:
    """(view, M): the quadrilateral ``quad`` (top-left, top-right, bottom-right, bottom-left, in
    pixels of ``arr``) warped to an upright rectangle of width / height ``aspect``
    (``imaging.rectangle_aspect``) whose long side is the quadrilateral's longest side, so that its
    nearest side keeps its pixels and the sides foreshortened are stretched back; M maps ``arr``'s
    pixels to the view's. A sheet photographed at 45-60° is then described as its square-on scan
    is: SIFT's descriptors hold up to a tilt of about 40° only."""
    import cv2

    q = np.asarray(quad, dtype=np.float64)
    longest = float(np.linalg.norm(np.roll(q, -1, axis=0) - q, axis=1).max())
    w, h = (longest, longest / aspect) if aspect >= 1 else (longest * aspect, longest)
    w, h = max(8, int(round(w))), max(8, int(round(h)))
    target = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
    m = cv2.getPerspectiveTransform(q.astype(np.float32), target)
    view = cv2.warpPerspective(arr, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return view, m


def _without_bands(arr: np.ndarray) -> np.ndarray:
    """``arr`` (a photo or a region of it, grey, work pixels) without the bands of a flickering backlight, when it
    has them. Along each axis (rows, and columns for a photo turned upright), the profile is the
    median log-grey of each row less its smooth (:data:`BAND_SMOOTH`): when its spectrum peaks at a
    period of :data:`BAND_PERIODS` at :data:`BAND_PEAK` times its median there or more, and the
    peak's wave is :data:`BAND_AMPLITUDE` deep or more, the photo is divided by it. A photo without
    such a peak is returned as it is (the same array)."""
    import cv2

    found = []
    for axis in (1, 0):
        profile = _median_logs(arr if axis == 1 else arr.T)
        if len(profile) < 2 * BAND_PERIODS[1]:
            continue
        bands = profile - cv2.GaussianBlur(profile.reshape(-1, 1), (0, 0), BAND_SMOOTH).ravel()
        window = np.hanning(len(bands)).astype(np.float32)
        spectrum = np.abs(np.fft.rfft(bands * window))
        freq = np.fft.rfftfreq(len(bands))
        looked = spectrum[(freq >= 1 / BAND_PERIODS[1]) & (freq <= 1 / BAND_PERIODS[0])]
        peak = looked.max()
        if peak >= BAND_PEAK * np.median(looked) and 2 * peak / window.sum() >= BAND_AMPLITUDE:
            found.append(bands[:, None] if axis == 1 else bands[None, :])
    if not found:
        return arr
    out = _LOG_LEVELS[arr]
    for bands in found:
        out = out - bands
    return np.clip(np.exp(out) - 8.0, 0, 255).astype(np.uint8)


_LOG_LEVELS = np.log(np.arange(256, dtype=np.float32) + 8.0)
"""log(grey + 8) of each 8-bit grey level: the log-grey that :func:`_without_bands` works in."""


def _median_logs(a: np.ndarray) -> np.ndarray:
    """The median log-grey (:data:`_LOG_LEVELS`) of each row of the 8-bit ``a``, as
    ``np.median(_LOG_LEVELS[a], axis=1)`` gives it (the log keeps the order of the levels, so the
    middle value or the mean of the two middle ones), from each row's histogram of levels: some
    three times as fast as sorting a 1,600 x 1,200 photo's rows and columns of floats."""
    rows, n = a.shape
    codes = (np.arange(rows, dtype=np.int32)[:, None] * 256 + a).ravel()
    below = np.cumsum(np.bincount(codes, minlength=rows * 256).reshape(rows, 256), axis=1)
    upper = _LOG_LEVELS[(below <= n // 2).sum(axis=1)]  # the level of the value at sorted place n // 2
    if n % 2:
        return upper
    lower = _LOG_LEVELS[(below <= n // 2 - 1).sum(axis=1)]
    return (lower + upper) / np.float32(2)


def _dark_range(grey: Image.Image) -> tuple[float, float] | None:
    """(1st, 99.5th percentile) of ``grey``'s levels when its 99th lies below :data:`DARK_LEVEL`
    (a dark image: to be stretched from the one to the other), else None."""
    levels = np.asarray(grey.reduce(2) if min(grey.size) >= 64 else grey, dtype=np.uint8)
    cdf = np.cumsum(np.bincount(levels.ravel(), minlength=256)) / levels.size
    lo, p99, hi = (int(np.searchsorted(cdf, q)) for q in (0.01, 0.99, 0.995))
    if p99 >= DARK_LEVEL or hi - lo < 8:  # well lit, or a flat image with nothing to lift
        return None
    return float(lo), float(hi)


TILT_VIEWS: tuple[tuple[float, float], ...] = ((2.0, 0.0), (2.0, 45.0), (2.0, 90.0), (2.0, 135.0))
"""The views :func:`tilted_features` adds, as (t, degrees): the photo shortened by t along that
direction, as a camera tilted by arccos(1/t) (60 degrees for t = 2) would show a square-on
sheet. SIFT holds up to a tilt of about 40 degrees; a sheet photographed at 60 degrees, turned
by an unknown angle, is then seen square-on again, to within a factor of about 1.4, by one of
them (the affine simulation of ASIFT, Morel and Yu 2009, on the photo's side only)."""
TILTED_VIEW_KEYPOINTS = 1000
"""Keypoints per tilted view."""
TILTED_VIEW_SIDE = 1200
"""Long side (px) of the photo the tilted views are made from (at most the base features' own)."""


def tilted_features(
    img: Image.Image,
    base: Features,
    *,
    views: Sequence[tuple[float, float]] = TILT_VIEWS,
    max_keypoints: int = TILTED_VIEW_KEYPOINTS,
) -> Features:
    """``base`` (features of the whole of ``img``, e.g. a query photo's) with the keypoints of
    ``img`` seen through each of ``views`` added: the photo turned by the view's angle, shortened
    by its t across, anti-aliased (a Gaussian of 0.8 sqrt(t² - 1) along the shortened axis),
    SIFT run on that, and each keypoint taken back to ``base``'s pixels through the inverse
    mapping. A keypoint's position is where it lies in the photo; its descriptor describes the
    patch as a square-on view would show it, so a reference scanned square-on can match a photo
    taken at a steep angle. ``base`` must be SIFT features of the whole image (no region)."""
    import cv2

    if base.method != "sift" or base.work_scale:
        raise ValueError("tilted views are made for SIFT features of a whole photo")
    size = base.size
    grey = img.convert("L")
    work_side = min(base.work_side, TILTED_VIEW_SIDE)
    if max(grey.size) > work_side:
        grey = grey.copy()
        grey.thumbnail((work_side, work_side), Image.Resampling.BILINEAR)
    arr = np.asarray(grey, dtype=np.uint8)
    h, w = arr.shape
    s = grey.width / size[0]  # work pixels per stored pixel

    def view(t: float, deg: float) -> tuple[np.ndarray, np.ndarray] | None:
        rot = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
        corners = np.c_[[[0, 0], [w, 0], [w, h], [0, h]], np.ones(4)] @ rot.T
        rot[:, 2] -= corners.min(0)
        span = np.ceil(corners.max(0) - corners.min(0)).astype(int)
        turned = cv2.warpAffine(arr, rot, (int(span[0]), int(span[1])), flags=cv2.INTER_LINEAR)
        inside = cv2.warpAffine(np.full_like(arr, 255), rot, (int(span[0]), int(span[1])), flags=cv2.INTER_NEAREST)
        turned = cv2.GaussianBlur(turned, (0, 0), sigmaX=0.8 * float(np.sqrt(t * t - 1)), sigmaY=0.01)
        view_w = max(1, int(round(span[0] / t)))
        shown = cv2.resize(turned, (view_w, int(span[1])), interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(inside, (view_w, int(span[1])), interpolation=cv2.INTER_NEAREST)
        mask = cv2.erode(mask, np.ones((5, 5), np.uint8))  # no keypoints on the edge of the turned photo
        keypoints, desc = _sift_balanced(shown, mask, max_keypoints)
        if desc is None or not keypoints:
            return None
        m = np.vstack([np.diag([view_w / span[0], 1.0]) @ rot, [0, 0, 1]])  # work px -> view px
        pts = np.c_[np.array([k.pt for k in keypoints], dtype=np.float64) + 0.5, np.ones(len(keypoints))]
        back = pts @ np.linalg.inv(m).T
        return ((back[:, :2] / s) - 0.5).astype(np.float32), np.clip(np.rint(desc), 0, 255).astype(np.uint8)

    # two at a time: OpenCV lets go of the GIL while it works
    with ThreadPoolExecutor(max_workers=2) as pool:
        made = [v for v in pool.map(lambda tv: view(*tv), views) if v is not None]
    points = [base.points] + [p for p, _ in made]
    descriptors = [base.descriptors] + [d for _, d in made]
    return dataclasses.replace(base, points=np.concatenate(points), descriptors=np.concatenate(descriptors))


class FeatureCache:
    """A thread-safe LRU of :class:`Features` by key (e.g. a content-addressed object key); the
    search also keeps its decoded query photos in one (``tasks.PHOTO_CACHE``)."""

    def __init__(self, maxsize: int = CACHE_SIZE) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
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


