"""Retrieval from real photos, in three parts that are each measurable on their own.

1. **find** the papyrus in the photo: :mod:`.locate` (the confirmed reference's outline mapped
   into the photo, offered as corners; a background/foreground fallback for "Suggest corners");
2. **shortlist** candidates from the index: :mod:`.shortlist` (visual words in PostgreSQL, fused
   with the embedding kNN), over :mod:`.features` quantised by :mod:`.vocabulary`;
3. **confirm** the best candidates geometrically: :mod:`.confirm` (evidence, the region, and
   "no confirmed match" when nothing is confirmed).

The Dask tasks that run them are in :mod:`papyrus_widgets.tasks`; the SQL in :mod:`papyrus_widgets.index`.
"""

from .confirm import (
    CONFIRM_INLIERS,
    CONFIRM_SPREAD,
    FULL_INLIERS,
    MAX_EVIDENCE,
    MIN_INLIERS,
    Candidate,
    Reranked,
    Verification,
    blend,
    confirm,
    confirmed_score,
    draw_matches,
    is_confirmed,
    is_near_miss,
    match,
    ranked,
    rerank,
    support,
)
from .features import (
    COARSE_KEYPOINTS,
    COARSER_LOOKS,
    MAX_KEYPOINTS,
    MAX_SIDE,
    QUERY_MAX_KEYPOINTS,
    QUERY_MAX_SIDE,
    FeatureCache,
    Features,
    describe_reference,
    extract_features,
    feature_method,
    feature_params,
    reference_params,
    root_sift,
)
from .locate import area_fraction, clip, needs_closer_look, outline

__all__ = [
    "CONFIRM_INLIERS",
    "CONFIRM_SPREAD",
    "FULL_INLIERS",
    "MAX_EVIDENCE",
    "MIN_INLIERS",
    "COARSE_KEYPOINTS",
    "COARSER_LOOKS",
    "MAX_KEYPOINTS",
    "MAX_SIDE",
    "QUERY_MAX_KEYPOINTS",
    "QUERY_MAX_SIDE",
    "Candidate",
    "FeatureCache",
    "Features",
    "Reranked",
    "Verification",
    "blend",
    "confirm",
    "confirmed_score",
    "draw_matches",
    "describe_reference",
    "extract_features",
    "feature_method",
    "feature_params",
    "is_confirmed",
    "is_near_miss",
    "match",
    "outline",
    "area_fraction",
    "clip",
    "needs_closer_look",
    "ranked",
    "reference_params",
    "rerank",
    "root_sift",
    "support",
]
