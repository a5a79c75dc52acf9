"""The third part of a search: confirm candidates geometrically, with evidence, and say when
nothing is confirmed.

The first stage says "these share words" or "these look alike"; confirming checks that the *same*
papyrus is in both pictures: SIFT keypoints of the query and of a reference are matched (RootSIFT,
Lowe's ratio test) and a homography is fitted (MAGSAC++). The inlier pairs are the evidence — the
same fibre, hole or letter seen in both images. A hit is **confirmed** (:func:`is_confirmed`) when at
least :data:`CONFIRM_INLIERS` inliers agree *and* they spread over at least :data:`CONFIRM_SPREAD`
of the reference (matches on a strip that every scan of a collection shares — a library's footer,
a colour chart — do not confirm), or when :data:`CONFIRM_BAND_INLIERS` agree over at least
:data:`CONFIRM_BAND_SPREAD` (a match on a fragment's few lines of text), or (:data:`AGREEING`,
off by default) when as many of the reference's keypoints agree with a weaker match's homography
beyond chance. Its homography maps
the reference's outline into the photo: the region where the papyrus is
(:attr:`Verification.outline`), offered to the user as corners.

Scores (:func:`confirmed_score`): a confirmed hit scores 0.5 … 1 (rising with its inliers up to
:data:`FULL_INLIERS`), any other hit half its first-stage similarity (< 0.5); so "score ≥ 0.5"
means confirmed, and the order of the scores is the order of the hits.

Work is bounded: :func:`confirm` verifies the candidates in rounds (:data:`CONFIRM_FIRST`, then
:data:`CONFIRM_STEP` more) and stops after the round that confirmed one, or at
:data:`CONFIRM_MAX`; each reference's features come from the object store (made at ingest), so
the cost does not grow with the collection.
"""

from __future__ import annotations

import dataclasses
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence

import numpy as np
from PIL import Image

from .features import Features, root_sift
from .locate import aim_order, off_centre, outline

RATIO = 0.85
"""Lowe's ratio test: keep a match when best distance < RATIO x second best."""
RANSAC_THRESHOLD = 0.008
"""RANSAC reprojection threshold as a fraction of the long side of the work image (≈6 px at 768)."""
MIN_INLIERS = 12
"""Inlier counts up to this are treated as chance (support 0)."""
FULL_INLIERS = 50
"""Inlier count at which the support saturates at 1."""
MAX_EVIDENCE = 50
"""At most this many inlier pairs are kept per hit as evidence."""
CONFIRM_INLIERS = 40
"""A hit is confirmed with at least this many inliers (and :data:`CONFIRM_SPREAD`). Photos of
papyri that are not indexed reached 21-34 inliers against wrong references (light box and desk
scenes of the quality gate, 4,000 query keypoints), true matches of scene photos 100 or more in
95 % of cases; a weaker match is first looked at again in full detail
(:data:`LOOK_AGAIN_INLIERS`)."""
LOOK_AGAIN_INLIERS = 20
"""A match with this many inliers, not yet confirmed, is worth a closer look at its region."""
CONFIRM_SPREAD = 0.15
"""… spread over at least this fraction of the reference's short side in both directions (the
10th-90th percentile extent of the inliers along their principal axes). Matches on a strip that
every scan of a collection shares — the Heidelberg footer, a colour chart — spread 0.02-0.06;
true matches of re-photographed scans at least 0.40 (80 scene photos, 40 scans)."""
CONFIRM_BAND_INLIERS = 100
"""… or with at least this many inliers spread over at least :data:`CONFIRM_BAND_SPREAD`: a match
this strong is no chance match even when it lies on a band. Where two photographs share little but
the ink — a fragment with two lines of text, photographed in colour and again in infrared
(PapyrusViz 0567j: 126 inliers spread over 0.11, figure 0e) — the inliers lie on the
lines. Wrong references reached 32 inliers at most (64 held-out photos against 35 references;
the same photo matched four times) and shared strips spread 0.02-0.06."""
CONFIRM_BAND_SPREAD = 0.08
"""The spread a match of :data:`CONFIRM_BAND_INLIERS` needs (above every shared strip measured)."""
NEAR_MISS_INLIERS: int | None = 30
"""A hit not confirmed whose match has at least this many inliers spread over at least
:data:`NEAR_MISS_SPREAD` of the reference is a *near miss*: it comes before the other hits that are
not confirmed (most inliers first; :func:`ranked`), and when it leads a search that confirmed
nothing the verdict names it (``Results.verdict``). None: every hit not confirmed in first-stage
order, as before 2026-12-05. Chosen on development photos (seed 77900; 256 photos of indexed
papyri and 64 of held-out ones among 1,035 images: ordinary scenes, 3 % of the frame, *shaky*,
*steep*): of the photos whose own papyrus was not confirmed, 5 of 9 had it at 30-39 inliers spread
over 0.43-0.65, no wrong reference there reaching 12, and ranked it nowhere in the first 5; of the
127 matches of 12 or more inliers that the held-out photos made with wrong references (chance,
the Heidelberg footer, a shared colour chart), one reached this line (39 over 0.40), the rest
stayed under 30 inliers or under the spread (up to 36 inliers over 0.04). On the benchmark's own
photos among 10,035 images (``bench_realphoto.py --fractions 0.03 --variants shaky --trial
first-stage-order``, results.md figure 0c): at 3 % of the frame top-1 0.891 -> 0.922 and top-5
0.938 -> 0.984, *shaky* top-5 0.984 -> 1.000, no photo ranked lower, none of 32 held-out photos
confirmed or led by a near miss."""
NEAR_MISS_SPREAD = 0.3
"""The spread (:data:`CONFIRM_SPREAD`'s measure) a near miss needs (:data:`NEAR_MISS_INLIERS`)."""
CONFIRM_STOP_INLIERS = 60
"""The rounds stop once a confirmed match has at least this many inliers (a weaker confirmation
keeps looking: the right papyrus may come later in the list with much more evidence)."""
CONFIRM_STOP_OFF_CENTRE = 0.35
"""… and, in a photo searched without corners, lies near its middle: its outline's centre within
this fraction of the half-diagonal from the photo's centre. A confirmed papyrus off to the side —
a thumbnail, a sheet at the edge of the desk, perhaps in the collection too — may not be the one
the photo was taken of: it does not end the search. The rounds end soon after it
(:data:`CONFIRM_AFTER_OFF_CENTRE`), and the search takes its second look at the rest of the photo
(:func:`in_the_middle`, :func:`papyrus_widgets.tasks.verify_task`)."""
CONFIRM_AFTER_OFF_CENTRE: int | None = 0
"""How many more candidates the rounds of an aimed :func:`confirm` verify after the round that
confirmed a papyrus strongly (:data:`CONFIRM_STOP_INLIERS`) but only off the photo's middle; None:
on to the limit, looking for one in the middle (the rule before 2026-12-04). 0 since then: the
rounds end with that round, and the search's second look at the rest of the photo lists the
candidates left untried among its own (``tasks.second_look_task``). The same photos both ways
(``bench_realphoto.py --fractions 0.03,0.05 --variants steep --trial off-centre-rounds``, 192
photos of indexed papyri and 48 held-out, and 128 development photos at 4 and 7 %): no answer
lost, two ranked higher at 3 and 5 %; searches that find their papyrus 0.85x, 0.93x, 0.99x, 0.90x
and 0.86x per photo (median); benchmarks/results.md, figure 0c."""
CONFIRM_FIRST = 10
"""Candidates verified in the first round of :func:`confirm` …"""
CONFIRM_STEP = 20
"""… and in each further round, while none is confirmed …"""
CONFIRM_MAX = 70
"""… up to this many in all."""
MATCH_CHECKS = 16
"""How many leaves of the query's k-d forest (:class:`QueryIndex`) a reference keypoint's search
for its two nearest query keypoints visits. 16 since 2026-12-03, 32 before: 14 scene photos of
papyri of the demo collection matched against its 40 scans, a match took 9.9 ms against 21.8 ms
(median; 8 visits: 8.0 ms) and the true matches kept 96-99 % of their inliers (186-674 against
189-696); the wrong ones reached as many as before (p99 30 both). With 32 leaves (and SIFT in
two passes) nearly all of a search that confirms nothing was this matching (about 230 references
through three looks: 4.2 of its 4.6 s of matching, the robust fit 1.5 ms a reference); with 16
and one pass, 41-46 % of its p50 (results.md, figure 0c). Searched both ways among 10,035 images, the
same 64 photos of indexed papyri and 16 of held-out ones at 3, 10 and 25 % of the frame
(``bench_realphoto.py --fractions 0.03,0.1,0.25 --trial checks32``, results.md figure 0c): the
same answers but one more photo at 3 % found and confirmed with 16, nothing held out confirmed
either way, "no confirmed match" 0.75-0.88x the time (p50)."""
MATCH_GATE: tuple[int, int] | None = (3, 4)
"""(stride, inliers): a reference is matched first with every stride-th of its keypoints, and in
full only when those find at least this many inliers (None: always in full, as before 2026-12-06).
A wrong reference, which is nearly every one a search that confirms nothing tries (some 230
through its three looks), then costs about a third of its matching: nearly all of a match's time
is its keypoints' search in the query's forest (9.2 ms of 9.7 ms median, the robust fit 0.4 ms;
100 distractor crops against 4 scene photos, an experiment script, not kept). A reference that
fails the gate keeps what its keypoints found (fewer than ``inliers``: under
:data:`MIN_INLIERS`, so neither confirmed nor a near miss, ranked by its first-stage score as
before). A third of a true match's keypoints kept 0.27-0.8 of its inliers (development photos,
seeds 1-3, not the benchmark's: 110 scenes of 22 papyri — ordinary, at 3 % of the frame,
*lcd+shaky*, *steep*, *lcd+steep* — each matched against its own scan; the fewest 8 of 13, 14 of
52, 15 of 25), and wrong references reached at most 7 (30-40 distractor crops per photo; 5 or more
for about 3 % of them). Through the engine (``bench_realphoto.py --fractions 0.25 --variants
lcd+steep,lcd+shaky --trial ungated``, 2026-12-06; benchmarks/results.md, figure 0d): the same
answers on all 192 photos of indexed papyri and 48 of held-out ones, "no confirmed match" 0.84-0.86x
the time per photo (3.47 against 4.12 s p50 at 25 % of the frame), searches that find their
papyrus 0.96-0.98x."""
MATCH_GATE_MIN_KEYPOINTS = 300
"""References with fewer keypoints than this are matched in full at once (the gate saves little)."""
MATCH_COARSE = True
"""Whether a reference's keypoints from its looks at half resolution and less
(:data:`~.features.COARSE_KEYPOINTS`, :data:`~.features.COARSER_LOOKS`) are matched too; False:
its first look's alone, as before 2026-12-04 (``bench_realphoto.py --trial fine-only``; its visual
words are stored either way)."""
AGREEING = True
"""Whether a match that is not confirmed by its inliers, but holds more than :data:`MIN_INLIERS`
spread over :data:`AGREEING_FIT_SPREAD` of the reference, is counted again with its homography as
the guide (:func:`_agreeing`): every reference keypoint one of whose :data:`AGREEING_NEIGHBOURS`
nearest query keypoints lies where the homography puts it (within the fit's threshold), less as
many as the same count finds with the homography's projections moved aside
(:data:`AGREEING_SHIFT`), which is what chance gives there. Lowe's ratio test, which the inliers
pass, throws away a true pair whose second neighbour is nearly as close: in a smeared or
washed-out photo, and on a papyrus's repetitive fibres, most of them. Not in the tilted look
(``match(agreeing=False)``): its views repeat the photo's structures. False: inliers alone.

Measured on development photos (seed 79300; 32 photos of indexed papyri and 16 of held-out ones
per set, each matched against all 43 scans and 250 distractor crops): the own scan confirmable in
39 of 48 *lcd+shaky* photos by its inliers, 47 counted so; at 3 % of the frame 45 -> 46; ordinary
scenes 48 and 48. The most that a scan which cannot be in the photo reached so was 31.5 beyond
chance (ordinary scenes), 27.5 (3 %), 20 (*lcd+shaky*), against 40 to confirm; without the chance
subtracted such scans reached 41-49 (57-65 after a new fit on the guided pairs).

A first version (2026-12-05 morning) counted any weak match over :data:`CONFIRM_SPREAD` and in
every look, and the quality gate (``tests/test_quality.py``) caught it confirming a held-out
papyrus on a light box (19334_p_g_68) as P.Heid. inv. G 81 with 50 keypoints agreeing beyond
chance: in the tilted look (the photo's keypoints and its tilted views' together), from a first fit
of 32 inliers over 0.23 of the scan on the ruler-and-footer strip every Heidelberg scan shows.
Hence the two gates: not in the tilted look, and a first fit spread over
:data:`AGREEING_FIT_SPREAD`, which a strip's is not. ``bench_realphoto.py --trial inliers-alone``
runs the search without it. With the gates, in the quality gate's set-up the most a wrong scan
reached over 16 held-out scenes was 26; through the engine with the more words of
:data:`~.vocabulary.MORE_WORDS`, against the search with neither (benchmarks/results.md, figure
0d, "Panels: …"): 3 % of the frame confirmed 0.938 against 0.891, *lcd+shaky* 0.906 against 0.844,
*lcd+steep* 0.891 against 0.812, held-out 0 of 64 confirmed (the most evidence of a held-out
photo's hit 36)."""
AGREEING_FIT_SPREAD = 0.3
"""… the first fit's inliers must spread over this much of the reference (:attr:`Verification.spread`,
as :data:`NEAR_MISS_SPREAD`): a fit on a narrow strip (the ruler, colour chart and footer that every
scan of a collection may show) is not counted again. On the development photos above the 9
photos the count confirmed that inliers did not had first fits over 0.33-0.70, one over 0.30
(rounded: on the gate); the false confirmation's was 0.23."""
AGREEING_NEIGHBOURS = 3
"""How many nearest query keypoints (in RootSIFT) of each reference keypoint are looked at."""
AGREEING_SHIFT = 3.0
"""The chance count moves the homography's projections this many fit thresholds right, left, up
and down (their mean): near enough to fall on the same papyrus and clutter, far enough to miss
the true pairs."""
ONE_MATCH_PER_IMAGE = True
"""Whether candidates of one image (:attr:`Candidate.image`: a scan indexed for several records)
are matched once and share the verification (:func:`confirm`; ``tasks._look_closer`` likewise).
False: each record matched on its own, as before 2026-12-05 night (``bench_realphoto.py --trial
per-record`` runs it so, with ``tasks.MERGE_BY_RECORD`` off too: the search before both)."""
VERIFY_THREADS = 2
"""The candidates of a round are matched this many at a time (at most one per CPU): OpenCV's
matching and fitting let go of the GIL, so a search on a worker uses the machine's idle cores
(160 references matched against a photo: 1.2-1.3 s on one thread, 0.65-0.71 s on two, 2 cores)."""


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
    spread: float = 0.0
    """How far the inliers spread over the reference: their narrower 10th-90th percentile extent
    along their principal axes / the reference's short side (see :data:`CONFIRM_SPREAD`)."""
    outline: list[list[float]] | None = None
    """The reference's corners (TL, TR, BR, BL) mapped into the query's pixels by the homography:
    where the papyrus is in the photo."""
    agreeing: int = 0
    """Reference keypoints that agree with the homography beyond chance (:data:`AGREEING`;
    0: not counted, the match being confirmed by its inliers or too weak to count again)."""
    agreeing_spread: float = 0.0
    """How far those spread over the reference (:attr:`spread`'s measure)."""
    narrowest: float | None = None
    """The inliers' narrowest spread over the reference (:func:`_narrowest`: a strip with a few
    chance inliers off it stays a strip); None: not measured (a verification made before it)."""
    edge_depth: float | None = None
    """How far into the reference from its nearest edge the inliers reach (:func:`_edge_depth`: a
    colour chart or ruler laid along the sheet stays near its edge); None: not measured."""

    @property
    def confirmed(self) -> bool:
        return is_confirmed(self)

    @property
    def evidence(self) -> int:
        """The keypoints that confirm it: its inliers, or those agreeing beyond chance when more."""
        return max(self.inliers, self.agreeing)


def is_confirmed(v: Verification | None) -> bool:
    """Whether ``v`` shows the same papyrus: enough inliers, spread over enough of the reference
    (:data:`CONFIRM_INLIERS` over :data:`CONFIRM_SPREAD`, or :data:`CONFIRM_BAND_INLIERS` over
    :data:`CONFIRM_BAND_SPREAD`), or as many keypoints agreeing beyond chance
    (:attr:`Verification.agreeing`) over :data:`CONFIRM_SPREAD`."""
    if v is None:
        return False
    if _on_furniture(v):
        return False
    if v.agreeing >= CONFIRM_INLIERS and v.agreeing_spread >= CONFIRM_SPREAD and v.spread >= CONFIRM_SPREAD:
        return True
    if v.inliers < CONFIRM_INLIERS:
        return False
    return v.spread >= CONFIRM_SPREAD or (v.inliers >= CONFIRM_BAND_INLIERS and v.spread >= CONFIRM_BAND_SPREAD)


def is_near_miss(v: Verification | None) -> bool:
    """Whether ``v`` is not confirmed but nearly (:data:`NEAR_MISS_INLIERS` over
    :data:`NEAR_MISS_SPREAD`): a papyrus the photo may well show, short of the evidence that
    confirms it."""
    if NEAR_MISS_INLIERS is None or v is None or is_confirmed(v) or _on_furniture(v):
        return False
    return v.inliers >= NEAR_MISS_INLIERS and v.spread >= NEAR_MISS_SPREAD


def confirmed_score(shortlist_score: float, v: Verification | None) -> float:
    """0.5 … 1 for a confirmed hit (by its support), else half the first-stage similarity (< 0.5)."""
    if is_confirmed(v):
        return 0.5 + 0.5 * support(v.evidence)  # type: ignore[union-attr]  # is_confirmed: not None
    return 0.5 * min(1.0, max(0.0, float(shortlist_score))) * 0.999


STRIP_CHECK = True
"""Whether a match whose inliers lie on a strip (:attr:`Verification.narrowest` under
:data:`CONFIRM_BAND_SPREAD`) is never confirmed, whatever :attr:`Verification.spread` says. That
spread, the 10th-90th percentile extent along the inliers' principal axes, is widened by a few
chance inliers off the strip: on 2026-12-06 a held-out Heidelberg papyrus photographed on a light
box confirmed another Heidelberg scan with 30 inliers on the footer both scans show and 5 by chance
on the papyrus (14 %; spread 0.43, narrowest 0.03). ``bench_realphoto.py --trial no-strip-check``
searches without it."""
SPREAD_DIRECTIONS = 36
"""The directions (every 180 / this degrees) :func:`_narrowest` looks across."""
SPREAD_IQR_FACTOR = 1.6
""":func:`_narrowest` takes the interquartile extent times this for the 10th-90th percentile one
(their ratio for points spread evenly), so that it keeps :data:`CONFIRM_SPREAD`'s scale."""


EDGE_CHECK = True
"""Whether a match whose inliers keep to a band along one edge of the reference
(:attr:`Verification.edge_depth` under :data:`EDGE_DEPTH`) is never confirmed: what a photographer
lays beside every sheet — a colour chart, a ruler, a grey scale, the footer of a library's scans —
is the same in many scans, and a photo showing it beside a papyrus that is not in the collection
matched it in another scan. On 2026-12-07 the scans of the recto and the verso of P.Mich. 1203 C1 11
(``../shared/data/more/michigan``), each with the same colour chart and ruler down its left side,
confirmed each other in 3 of 68 generated photos (35-67 inliers on the chart in 42 of them; the
chart's band is about a tenth of the sheet wide, so neither :data:`STRIP_CHECK` nor
:data:`CONFIRM_SPREAD` held them all). ``bench_realphoto.py --trial no-edge-check`` searches
without it."""
EDGE_DEPTH = 0.16
"""… the band's depth, as a fraction of the reference's short side. Chosen on 2026-12-07: the
chart matches of 35 inliers or more reached at most 0.128 (42 photos); true matches at least 0.257
(311 whole-photo matches of generated photos of the Heidelberg scans confirmed, plain, *closeup*,
*steep*, *lcd+steep*, *lcd+shaky*, development seed 85000), 0.262 (the Michigan sides, 80 photos)
and 0.209 (an infrared photograph of fragment 0567j against its colour photograph: two lines of
text on a narrow fragment)."""
EDGE_SHARE = 80
"""… the percentile of the inliers' distances from an edge that must lie within it (a few chance
inliers off the band, as on the footer, do not lift it)."""


def _on_furniture(v: Verification) -> bool:
    """Whether ``v``'s inliers lie where scans share what lies beside the papyrus: on a strip
    (:data:`STRIP_CHECK`), however a few chance ones off it widen its :attr:`~Verification.spread`,
    or in a band along an edge (:data:`EDGE_CHECK`). Neither confirmed nor a near miss, whatever
    their number."""
    on_a_strip = STRIP_CHECK and v.narrowest is not None and v.narrowest < CONFIRM_BAND_SPREAD
    along_an_edge = EDGE_CHECK and v.edge_depth is not None and v.edge_depth < EDGE_DEPTH
    return on_a_strip or along_an_edge


def _edge_depth(points: np.ndarray, size: Sequence[int]) -> float:
    """How far into a reference of ``size`` from its nearest edge ``points`` (reference pixels)
    reach, as a fraction of its short side: the smallest, over its four edges, of the
    :data:`EDGE_SHARE` th percentile of their distances from it."""
    if len(points) < 5:
        return 0.0
    w, h = float(size[0]), float(size[1])
    x, y = points[:, 0].astype(np.float64), points[:, 1].astype(np.float64)
    reach = np.percentile(np.stack([x, w - x, y, h - y]), EDGE_SHARE, axis=1)
    return float(reach.min() / max(1.0, min(w, h)))


def _narrowest(points: np.ndarray, size: Sequence[int]) -> float:
    """How narrow ``points`` (reference pixels) lie on a reference of ``size``, as a fraction of its
    short side: the narrowest, over :data:`SPREAD_DIRECTIONS` directions, of their 10th-90th
    percentile extent and :data:`SPREAD_IQR_FACTOR` times their interquartile one, so that a
    strip with up to a quarter of its points strewn off it stays as narrow as the strip."""
    if len(points) < 5:
        return 0.0
    angles = np.pi * np.arange(SPREAD_DIRECTIONS) / SPREAD_DIRECTIONS
    projected = points.astype(np.float64) @ np.stack([np.cos(angles), np.sin(angles)])
    lo, q1, q3, hi = np.percentile(projected, [10, 25, 75, 90], axis=0)
    extent = np.minimum(hi - lo, SPREAD_IQR_FACTOR * (q3 - q1))
    return float(extent.min() / max(1.0, float(min(size))))


def _spread(points: np.ndarray, size: Sequence[int]) -> float:
    if len(points) < 5:
        return 0.0
    centred = points.astype(np.float64) - points.mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ axes.T
    extent = np.percentile(projected, 90, axis=0) - np.percentile(projected, 10, axis=0)
    return float(extent.min() / max(1.0, float(min(size))))


# --- matching ------------------------------------------------------------------------------------


def support(inliers: int, min_inliers: int = MIN_INLIERS, full_inliers: int = FULL_INLIERS) -> float:
    """0 for ``inliers <= min_inliers``, rising linearly to 1 at ``full_inliers``."""
    if inliers <= min_inliers:
        return 0.0
    return float(min(1.0, (inliers - min_inliers) / max(1, full_inliers - min_inliers)))


def blend(embedding_score: float, support_value: float) -> float:
    """``embedding_score + (1 - embedding_score) * support``: stays in [0, 1] for scores in [0, 1]."""
    return float(embedding_score + (1.0 - embedding_score) * support_value)


class QueryIndex:
    """A FLANN k-d forest over one query's RootSIFT descriptors, built once per search: each
    reference then looks up its keypoints' two nearest query keypoints in a few milliseconds,
    instead of a brute-force pass over all query × reference pairs (the query has up to
    :data:`~.features.QUERY_MAX_KEYPOINTS`)."""

    TREES = 4
    SEED = 20261201
    """The forest's random splits are drawn from OpenCV's random generator of the building
    thread, seeded with this first: the same query then gets the same forest, the same pairs and
    the same answer every time. Unseeded, the generator's state is wherever earlier work in that
    thread left it, and one photo matched four times against one reference found 341-348 inliers
    with its own scan, and 0, 27, 29 or 32 with a wrong one: a borderline hit could be confirmed in
    one search and not the next."""

    def __init__(self, query: Features) -> None:
        import cv2

        self.features = query
        self._matcher = cv2.FlannBasedMatcher({"algorithm": 1, "trees": self.TREES}, {"checks": MATCH_CHECKS})
        self._matcher.add([root_sift(query.descriptors)])
        cv2.setRNGSeed(self.SEED)  # the generator is per thread: this thread's build only
        self._matcher.train()

    def pairs(self, reference: Features, ratio: float) -> list[tuple[int, int, float]]:
        """``(query index, reference index, distance)`` of ratio-tested nearest neighbours, each
        reference keypoint looking for its nearest query keypoint."""
        return _reference_pairs(self._matcher.knnMatch(root_sift(reference.descriptors), k=2), ratio)

    def neighbours(self, reference: Features, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(reference indices, query indices): each reference keypoint's ``k`` nearest query
        keypoints in the forest, nearest first."""
        return _pairs_of(self._matcher.knnMatch(root_sift(reference.descriptors), k=k))


def _reference_pairs(found: Sequence[Sequence[Any]], ratio: float) -> list[tuple[int, int, float]]:
    """``(query index, reference index, distance)`` of the ratio-tested two nearest ``found`` for
    each reference keypoint among the query's (OpenCV's ``knnMatch`` with the reference's
    descriptors as its queries)."""
    return [
        (m.trainIdx, m.queryIdx, m.distance)
        for m, *rest in (p for p in found if p)
        if not rest or m.distance < ratio * rest[0].distance
    ]


def match(
    query: Features | QueryIndex,
    reference: Features,
    *,
    ratio: float = RATIO,
    max_evidence: int = MAX_EVIDENCE,
    agreeing: bool = True,
    gate: bool = True,
) -> Verification:
    """Match ``query`` against ``reference``: ratio-tested nearest neighbours, then a RANSAC
    homography (reference → query). Returns the inliers as evidence. ``query`` may be a
    :class:`QueryIndex` (SIFT: built once, then matched against many references).

    SIFT: each reference keypoint looks for its two nearest query keypoints (in the forest, or
    exactly when ``query`` is plain :class:`Features`), so that a reference's keypoints of one
    structure at two resolutions (:func:`~.features.describe_reference`) do not fail each other's
    ratio test; ORB: each query keypoint for its two nearest reference keypoints.

    ``agreeing``: whether a weak match may be counted again with its homography as the guide
    (:data:`AGREEING`, when that is on too); False for a query whose keypoints are not all the
    photo's own (its tilted views', :func:`~.features.tilted_features`, repeat its structures).

    ``gate``: whether a reference is first matched with a part of its keypoints
    (:data:`MATCH_GATE`, SIFT against a :class:`QueryIndex`) and its result kept when that finds
    too few inliers to go on."""
    import cv2

    index = query if isinstance(query, QueryIndex) else None
    q_feats: Features = index.features if index is not None else query  # type: ignore[assignment]

    t0 = time.perf_counter()
    if not MATCH_COARSE:
        reference = reference.fine()
    if (
        gate
        and MATCH_GATE is not None
        and index is not None
        and q_feats.method == "sift"
        and len(reference) >= MATCH_GATE_MIN_KEYPOINTS
    ):
        stride, enough = MATCH_GATE
        part = match(index, reference.every(stride), ratio=ratio, max_evidence=max_evidence, agreeing=False, gate=False)
        if part.inliers < enough:
            part.seconds = time.perf_counter() - t0
            return part
    q_size, r_size = [int(v) for v in q_feats.size], [int(v) for v in reference.size]
    empty = Verification(0, [], None, 0.0, query_size=q_size, reference_size=r_size)
    if q_feats.method != reference.method:
        raise ValueError(f"cannot match {q_feats.method} features against {reference.method} features")
    if len(q_feats) < 4 or len(reference) < 4:
        empty.seconds = time.perf_counter() - t0
        return empty
    if index is not None and q_feats.method == "sift":
        good = index.pairs(reference, ratio)
        key = 0  # each query keypoint may serve one reference keypoint only (keep the closest)
    elif q_feats.method == "sift":  # the same direction as the forest's, searched exactly
        matcher = cv2.BFMatcher(cv2.NORM_L2)
        found = matcher.knnMatch(root_sift(reference.descriptors), root_sift(q_feats.descriptors), k=2)
        good = _reference_pairs(found, ratio)
        key = 0
    else:
        matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
        q, r = q_feats.descriptors, reference.descriptors
        good = [
            (m.queryIdx, m.trainIdx, m.distance)
            for m, *rest in (p for p in matcher.knnMatch(q, r, k=2) if p)
            if not rest or m.distance < ratio * rest[0].distance
        ]
        key = 1  # one reference keypoint may serve one query keypoint only (keep the closest)
    best: dict[int, tuple[int, int, float]] = {}
    for g in good:
        slot = int(g[key])
        if slot not in best or g[2] < best[slot][2]:
            best[slot] = g
    good = sorted(best.values(), key=lambda t: t[2])
    if len(good) < 4:
        empty.seconds = time.perf_counter() - t0
        return empty
    q_idx = np.array([g[0] for g in good])
    r_idx = np.array([g[1] for g in good])
    # fit in work pixels of the query (the threshold is relative to the image size there)
    q_scale, r_scale = q_feats.scale, reference.scale
    src = reference.points[r_idx].astype(np.float64) * r_scale
    dst = q_feats.points[q_idx].astype(np.float64) * q_scale
    threshold = max(1.0, RANSAC_THRESHOLD * q_feats.work_side)
    H, mask = cv2.findHomography(src, dst, ROBUST_METHOD(), threshold, maxIters=2000, confidence=0.995)
    if H is None or mask is None or not _plausible(H):
        empty.seconds = time.perf_counter() - t0
        return empty
    inlier = mask.ravel().astype(bool)
    n = int(inlier.sum())
    evidence = [
        [round(float(x), 1) for x in (*q_feats.points[a], *reference.points[b])]
        for a, b in zip(q_idx[inlier][:max_evidence], r_idx[inlier][:max_evidence])
    ]
    # homography in stored pixels: H_px = S_q^-1 · H · S_r
    Hs = np.diag([1 / q_scale, 1 / q_scale, 1.0]) @ H @ np.diag([r_scale, r_scale, 1.0])
    Hs = Hs / Hs[2, 2] if abs(Hs[2, 2]) > 1e-12 else Hs
    homography = [[float(v) for v in row] for row in Hs]
    region = outline(homography, reference.size)
    if not plausible_outline(region):
        empty.seconds = time.perf_counter() - t0
        return empty
    matched = reference.points[r_idx[inlier]]
    result = Verification(
        inliers=n,
        matches=evidence,
        homography=homography,
        support=support(n),
        query_size=q_size,
        reference_size=r_size,
        spread=_spread(matched, reference.size),
        outline=region,
        narrowest=_narrowest(matched, reference.size),
        edge_depth=_edge_depth(matched, reference.size),
    )
    if (
        AGREEING
        and agreeing
        and q_feats.method == "sift"
        and n > MIN_INLIERS
        and result.spread >= AGREEING_FIT_SPREAD
        and not is_confirmed(result)
    ):
        beyond, kept = _agreeing(query, reference, H, threshold)
        result.agreeing, result.agreeing_spread = beyond, _spread(reference.points[kept], reference.size)
    result.seconds = time.perf_counter() - t0
    return result


def _agreeing(
    query: Features | QueryIndex, reference: Features, H: np.ndarray, threshold: float
) -> tuple[int, np.ndarray]:
    """(count, reference indices): the reference keypoints one of whose :data:`AGREEING_NEIGHBOURS`
    nearest query keypoints lies within ``threshold`` of where ``H`` (reference → query work pixels)
    puts it, each query keypoint serving one, less the mean count with the projections moved
    :data:`AGREEING_SHIFT` thresholds right, left, up and down (what chance gives there; rounded,
    at least 0); the indices are those of the count with ``H`` itself."""
    import cv2

    if isinstance(query, QueryIndex):
        q_feats, (r_idx, q_idx) = query.features, query.neighbours(reference, AGREEING_NEIGHBOURS)
    else:
        q_feats, (r_idx, q_idx) = query, _neighbours(query, reference, AGREEING_NEIGHBOURS)
    projected = cv2.perspectiveTransform((reference.points.astype(np.float64) * reference.scale).reshape(-1, 1, 2), H)
    at = projected.reshape(-1, 2)[r_idx]
    q_pts = q_feats.points[q_idx].astype(np.float64) * q_feats.scale

    def agreeing(offset: np.ndarray) -> np.ndarray:
        near = np.hypot(*(at + offset - q_pts).T) <= threshold
        r, q = r_idx[near], q_idx[near]
        _, first = np.unique(r, return_index=True)  # each reference keypoint once (its nearest)
        r, q = r[first], q[first]
        _, first = np.unique(q, return_index=True)  # each query keypoint once
        return r[first]

    kept = agreeing(np.zeros(2))
    step = AGREEING_SHIFT * threshold
    chance = np.mean([len(agreeing(np.array(o) * step)) for o in ((1, 0), (-1, 0), (0, 1), (0, -1))])
    return max(0, int(round(len(kept) - chance))), kept


def _neighbours(query: Features, reference: Features, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(reference indices, query indices): each reference keypoint's ``k`` nearest query keypoints
    in RootSIFT (exactly), nearest first."""
    import cv2

    found = cv2.BFMatcher(cv2.NORM_L2).knnMatch(root_sift(reference.descriptors), root_sift(query.descriptors), k=k)
    return _pairs_of(found)


def _pairs_of(found: Sequence[Sequence[Any]]) -> tuple[np.ndarray, np.ndarray]:
    r = np.array([m.queryIdx for ms in found for m in ms], dtype=np.int64)
    q = np.array([m.trainIdx for ms in found for m in ms], dtype=np.int64)
    return r, q


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


MAX_SIDE_RATIO = 4.0
"""A flat page photographed from any sensible angle keeps opposite sides within this ratio …"""
MAX_CORNER_AREA_RATIO = 2.5
"""… and the triangles at its four corners (two sides each) within this ratio of areas: 1 for a
head-on view, at most 1.38 over 200 scene photos tilted up to 35°; the degenerate homographies that
crush a wrong reference into a strip of the photo (and so collect chance inliers there) give 3-4."""


def plausible_outline(quad: Sequence[Sequence[float]]) -> bool:
    """Whether a reference's outline mapped into the photo could be a camera's view of a flat
    page: a convex quadrilateral, opposite sides within :data:`MAX_SIDE_RATIO`, corner triangles
    within :data:`MAX_CORNER_AREA_RATIO`."""
    import cv2

    q = np.asarray(quad, dtype=np.float64)
    if q.shape != (4, 2) or not np.all(np.isfinite(q)):
        return False
    if not cv2.isContourConvex(q.astype(np.float32).reshape(-1, 1, 2)):
        return False
    sides = np.linalg.norm(np.roll(q, -1, axis=0) - q, axis=1)
    if sides.min() <= 1e-6:
        return False
    before, after = q - np.roll(q, 1, axis=0), np.roll(q, -1, axis=0) - q
    corners = np.abs(before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]) / 2
    return bool(
        max(sides[0], sides[2]) / min(sides[0], sides[2]) <= MAX_SIDE_RATIO
        and max(sides[1], sides[3]) / min(sides[1], sides[3]) <= MAX_SIDE_RATIO
        and corners.max() / max(corners.min(), 1e-9) <= MAX_CORNER_AREA_RATIO
    )


def _robust_method() -> int:
    """OpenCV's USAC with MAGSAC++ (4.5+: fast when most matches are wrong), else classic RANSAC."""
    import cv2

    return int(getattr(cv2, "USAC_MAGSAC", cv2.RANSAC))


ROBUST_METHOD = _robust_method


# --- confirming -----------------------------------------------------------------------------------


@dataclass
class Candidate:
    """A hit to confirm: its first-stage similarity and a way to get its reference features."""

    score: float
    features: Callable[[], Features] | Features
    payload: Any = None
    image: Hashable | None = None
    """Which reference image it is (its object key), or None: candidates of one image — a scan
    indexed for several records, two texts on one papyrus, the same bytes — are matched once and
    share the verification (:func:`confirm`)."""


@dataclass
class Reranked:
    """A candidate after confirming: its ``score`` (:func:`confirmed_score`), the first-stage
    ``embedding_score`` it came with, its :class:`Verification` (None when it was not verified, or
    its features could not be had) and its payload."""

    score: float
    embedding_score: float
    verification: Verification | None
    payload: Any = None

    @property
    def confirmed(self) -> bool:
        return is_confirmed(self.verification)

    @property
    def near_miss(self) -> bool:
        return is_near_miss(self.verification)


def _verify(query: Features | QueryIndex, c: Candidate, agreeing: bool = True) -> Verification | None:
    try:
        feats = c.features() if callable(c.features) else c.features
        return match(query, feats, agreeing=agreeing)
    except Exception:  # noqa: BLE001 - evidence is a bonus: never lose the hit over it
        return None


class _Verifier:
    """Matches candidates against one query, up to :data:`VERIFY_THREADS` at a time: the calling
    thread and helpers each take every n-th candidate of a round, read its reference's features and
    match it against their own :class:`QueryIndex` (built on first use, kept for the next rounds;
    OpenCV does not promise that one matcher may search from several threads at once)."""

    def __init__(self, query: Features, threads: int, agreeing: bool = True) -> None:
        self.query = query
        self.agreeing = agreeing
        self._sift = query.method == "sift" and len(query) >= 4
        self._indexes: list[Features | QueryIndex | None] = [None] * max(1, min(threads, os.cpu_count() or 1))

    def _share(self, i: int, batch: Sequence[Candidate]) -> list[Verification | None]:
        index = self._indexes[i]
        if index is None:
            index = self._indexes[i] = QueryIndex(self.query) if self._sift else self.query
        return [_verify(index, c, self.agreeing) for c in batch]

    def __call__(self, batch: Sequence[Candidate]) -> list[Verification | None]:
        n = min(len(self._indexes), len(batch))
        if n <= 1:
            return self._share(0, batch)
        out: list[Verification | None] = [None] * len(batch)
        with ThreadPoolExecutor(n - 1, thread_name_prefix="papyrus-verify") as pool:
            helpers = [pool.submit(self._share, i, batch[i::n]) for i in range(1, n)]
            out[0::n] = self._share(0, batch[0::n])
            for i, helper in enumerate(helpers, start=1):
                out[i::n] = helper.result()
        return out


def in_the_middle(v: Verification | None) -> bool:
    """Whether ``v`` is a confirmed match whose outline lies near the photo's middle
    (:data:`CONFIRM_STOP_OFF_CENTRE`; a match without an outline counts as in the middle)."""
    if v is None or not is_confirmed(v):
        return False
    if v.outline is None or v.query_size is None:
        return True
    return off_centre(v.outline, v.query_size) <= CONFIRM_STOP_OFF_CENTRE


def _stops(v: Verification | None, aimed: bool) -> bool:
    """Whether a verification ends the rounds (see :data:`CONFIRM_STOP_INLIERS`)."""
    if v is None or not is_confirmed(v) or v.inliers < CONFIRM_STOP_INLIERS:
        return False
    return not aimed or in_the_middle(v)


def confirm(
    query: Features,
    candidates: Sequence[Candidate],
    *,
    first: int = CONFIRM_FIRST,
    step: int = CONFIRM_STEP,
    limit: int = CONFIRM_MAX,
    aimed: bool = True,
    threads: int = VERIFY_THREADS,
    agreeing: bool = True,
) -> list[Reranked]:
    """Verify ``candidates`` (best first) in rounds — ``first``, then ``step`` more — until a round
    confirms one with :data:`CONFIRM_STOP_INLIERS` (near the photo's middle when ``aimed``: a whole
    photo; pass False for a region the user marked) or ``limit`` were verified; return them all,
    confirmed first (:func:`ranked`), then the rest. A candidate whose features fail keeps its place.
    The candidates of a round are matched ``threads`` at a time; ``agreeing``: as for :func:`match`.
    Candidates of one image (:attr:`Candidate.image`) are matched once, at the first of them, and
    the others get a copy of its verification (so both records of one scan are confirmed, or
    neither); they take no place in the rounds or the ``limit``."""
    verify = _Verifier(query, threads, agreeing)
    checked: list[tuple[int, Candidate, Verification | None]] = []
    matched: dict[Hashable, Verification | None] = {}  # by Candidate.image
    todo = _one_per_image(candidates)
    size = first
    while todo and len(checked) < limit:
        batch, todo = todo[: min(size, limit - len(checked))], todo[min(size, limit - len(checked)) :]
        checked += [(i, c, v) for (i, c), v in zip(batch, verify([c for _, c in batch]))]
        matched.update((c.image, v) for _, c, v in checked if c.image is not None)
        size = step
        if any(_stops(v, aimed) for _, _, v in checked):
            break
        if aimed and CONFIRM_AFTER_OFF_CENTRE is not None and any(_stops(v, False) for _, _, v in checked):
            limit = min(limit, len(checked) + CONFIRM_AFTER_OFF_CENTRE)
    checked += [(i, c, None) for i, c in todo]
    done = {i for i, _, _ in checked}
    checked += [  # the other records of an image matched: its verification
        (i, c, dataclasses.replace(v) if (v := matched.get(c.image)) is not None else None)
        for i, c in enumerate(candidates)
        if i not in done
    ]
    checked.sort(key=lambda t: t[0])
    return ranked(
        [Reranked(score=0.0, embedding_score=float(c.score), verification=v, payload=c.payload) for _, c, v in checked]
    )


def _one_per_image(candidates: Sequence[Candidate]) -> list[tuple[int, Candidate]]:
    """``candidates`` numbered, each image (:attr:`Candidate.image`) once: at its first candidate."""
    images: set[Hashable] = set()
    out = []
    for i, c in enumerate(candidates):
        if c.image is None or c.image not in images or not ONE_MATCH_PER_IMAGE:
            out.append((i, c))
        images.add(c.image)
    return out


def ranked(results: Sequence[Reranked]) -> list[Reranked]:
    """Score (:func:`confirmed_score`) and order results given in first-stage order: confirmed
    first — most inliers first, and when they show several papyri, the one in the middle of the
    photo first (:func:`~.locate.aim_order`) —; then the near misses (:func:`is_near_miss`), most
    inliers first; then the rest by their first-stage score. Scores never rise down the list (a
    confirmed hit shown after a stronger one takes the lower score of the two; a near miss takes
    the higher score of the two when a hit after it scores more, all under 0.5). Call it again
    after a verification changed (a second, closer look)."""
    for r in results:
        r.score = confirmed_score(r.embedding_score, r.verification)

    def key(i: int) -> tuple[int, float, int]:
        v = results[i].verification
        if results[i].confirmed:
            return (0, -v.evidence, i)  # type: ignore[union-attr]  # confirmed: not None
        if results[i].near_miss:
            return (1, -v.inliers, i)  # type: ignore[union-attr]  # a near miss: not None
        return (2, -results[i].embedding_score, i)

    order = sorted(range(len(results)), key=key)
    confirmed = [i for i in order if results[i].confirmed]
    found = [(i, v) for i in confirmed if (v := results[i].verification) and v.outline and v.query_size]
    if len(found) > 1 and len(found) == len(confirmed):
        outlines: list[Sequence[Sequence[float]]] = [v.outline for _, v in found if v.outline]
        aimed = aim_order(outlines, found[0][1].query_size or [1, 1])
        order = [found[k][0] for k in aimed] + order[len(confirmed) :]
    out = [results[i] for i in order]
    for before, r in zip(out, out[1:]):
        if r.confirmed:
            r.score = min(r.score, before.score)
    for r, after in reversed(list(zip(out, out[1:]))):
        if r.near_miss:
            r.score = max(r.score, after.score)
    return out


def rerank(query: Features, candidates: Sequence[Candidate]) -> list[Reranked]:
    """Verify every candidate (:func:`confirm` without stopping early)."""
    n = max(1, len(candidates))
    return confirm(query, candidates, first=n, step=n, limit=n)


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
