"""The first stage of a search: which references are worth confirming.

Two lists, fused:

- **visual words** (the main one): the query photo's local features, quantised by the
  vocabulary (:mod:`.vocabulary`), are looked up in the inverted file ``image_words`` in
  PostgreSQL (:func:`papyrus_widgets.index.word_candidates`). Words are local, so a papyrus that
  fills a tenth of a cluttered photo still shares hundreds of words with its scan, while a global
  embedding of the whole photo mostly describes the clutter;
- **embedding** kNN (pgvector HNSW): what a model like the published papyrusNet adds, where it is
  present and good.

Weights: a document (reference) keeps ``sqrt(count)`` of each distinct word, L2-normalised
(:func:`document_weights`, stored at ingest, independent of the rest of the collection), and the
64-bit signatures of its keypoints of each word (:func:`document_postings`); a query keeps
``sqrt(count)``, and a pair of keypoints of one word counts only when their signatures are close
(Hamming embedding: :mod:`.vocabulary`); the idf of each word is counted at query time from its
posting list, so nothing stored goes stale as the collection grows. The square root damps
"bursts" (the same word many times over a repetitive texture, such as papyrus fibres).

**Windows.** A photo of a whole desk or screen holds more than the papyrus sought: other papyri
(thumbnails, sheets beside it), each of which may be in the collection too, sometimes many times
over. Scored as one bag of words, the photo's best references are then those of the clutter, and
the papyrus sought can fall out of the list. So a photo searched without corners is scored as
several bags (:data:`WINDOWS`: the whole photo, its four overlapping quarters and its centre), each
ranks the references on its own, and the list takes each window's first, then each one's second,
… (:func:`query_windows`, :func:`papyrus_widgets.index.word_candidates`): whatever the window the
papyrus is in, its references come early. A search with corners has one window, the region.

**Diverse windows** (an option, off: measured on 2026-12-06, the same answers at 1.06-1.18x the
time). Within a window, one thing in the photo that the collection shows many times (several
photographs or crops of a papyrus shown as a thumbnail beside the one sought) takes many places in
a row; with :data:`papyrus_widgets.index.queries.DIVERSE_SHARE` set, an image whose matched
keypoints are mostly those of an image ranked above it goes after the window's others, and with
:data:`~papyrus_widgets.index.queries.MIN_MATCHED` an image that shares fewer keypoints than that
with the window (one chance match of a rare word weighs much in a small image) after those.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

WORD_CANDIDATES = 100
"""How many references the visual-word list brings to the confirming stage at most."""
EMBEDDING_CANDIDATES = 10
"""How many references the embedding kNN adds (those not already in the word list)."""


def _counts(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    unique, counts = np.unique(np.asarray(words, dtype=np.int64), return_counts=True)
    return unique.astype(np.int32), counts.astype(np.float32)


def document_weights(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(distinct words, weights)`` of a reference: ``sqrt(count)``, L2-normalised."""
    unique, counts = _counts(words)
    weights = np.sqrt(counts)
    return unique, weights / max(float(np.linalg.norm(weights)), 1e-9)


def document_postings(words: np.ndarray, signatures: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """``(distinct words, weights, signatures)`` of a reference: :func:`document_weights`, and for
    each distinct word the signatures of its keypoints of that word (the word index's postings)."""
    words = np.asarray(words, dtype=np.int64).reshape(-1)
    signatures = np.asarray(signatures, dtype=np.int64).reshape(-1)
    if len(words) != len(signatures):
        raise ValueError(f"{len(words)} words but {len(signatures)} signatures")
    unique, weights = document_weights(words)
    order = np.argsort(words, kind="stable")
    bounds = np.flatnonzero(np.diff(words[order])) + 1
    return unique, weights, np.split(signatures[order], bounds) if len(words) else []


WINDOWS: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 0.0, 1.0, 1.0),
    (0.0, 0.0, 0.6, 0.6),
    (0.4, 0.0, 1.0, 0.6),
    (0.0, 0.4, 0.6, 1.0),
    (0.4, 0.4, 1.0, 1.0),
    (0.2, 0.2, 0.8, 0.8),
)
"""Parts of a photo scored on their own, as (left, top, right, bottom) fractions of its width and
height: the whole, four quarters overlapping by a fifth, the centre. Chosen on scene photos of a
development seed, not the benchmark's: recall@10 of the word list 0.89 → 0.94 (64 photos, 10,035
images); see benchmarks/results.md for the benchmark's own figures."""


def grid(per_side: int, side: float) -> tuple[tuple[float, float, float, float], ...]:
    """``per_side`` x ``per_side`` windows of ``side`` (a fraction of each side of the photo), evenly
    spaced from one edge to the other, row by row."""
    if per_side < 1 or not 0.0 < side <= 1.0:
        raise ValueError("a grid needs at least one window per side, each 0 < side <= 1")
    starts = [0.0] if per_side == 1 else [i * (1.0 - side) / (per_side - 1) for i in range(per_side)]
    return tuple((x, y, x + side, y + side) for y in starts for x in starts)


SECOND_LOOK_WINDOWS: tuple[tuple[float, float, float, float], ...] = grid(6, 0.25)
"""The windows of the second look (:func:`papyrus_widgets.tasks.verify_task`), when the first
stage's candidates confirmed nothing: a 6 x 6 grid of windows a quarter of the photo's width and
height (stride 0.15), so that a papyrus up to a tenth of each side lies wholly inside one of them,
and one of a fifth of each side (4 % of the frame) fills at least a fifth of some window. Chosen on
scene photos of a development seed with the papyrus at 5 % of the frame (not the benchmark's): of
11 papyri the first stage missed (not in its 70), 3 x 3 windows of half the side brought 0 into
their first 30, 4 x 4 of 0.35 one, this grid 7 into its first 90. Not part of the first pass:
scored with :data:`WINDOWS` on every search, smaller windows dilute the interleaved list for papyri
at 10-40 % of the frame (benchmarks/results.md, figure 0c)."""
MIN_WINDOW_KEYPOINTS = 50
"""A window with fewer keypoints than this is left out (a blank wall, the sky)."""


def query_windows(
    words: np.ndarray,
    points: np.ndarray | None = None,
    size: Sequence[float] | None = None,
    windows: Sequence[Sequence[float]] = WINDOWS,
) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, weights)`` of a query scored per window: ``kept`` a mask of the keypoints that lie
    in some window kept, ``weights`` one row per kept keypoint and one column per window kept (the
    whole photo first), 1 where the keypoint lies inside the window
    (:func:`papyrus_widgets.index.word_candidates` takes ``words[kept]``, ``weights``).

    ``points``: the keypoints' ``(x, y)`` (one per word, in the pixels of ``size`` = (width,
    height)); without them the query has one window, the whole."""
    words = np.asarray(words, dtype=np.int64).reshape(-1)
    everything = np.ones(len(words), dtype=bool)
    if points is None or size is None or not len(words):
        return everything, np.ones((len(words), 1), dtype=np.float32)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) != len(words):
        raise ValueError(f"{len(words)} words but {len(pts)} keypoints")
    w, h = float(size[0]), float(size[1])
    columns: list[np.ndarray] = []
    for left, top, right, bottom in windows:
        inside = (pts[:, 0] >= left * w) & (pts[:, 0] <= right * w) & (pts[:, 1] >= top * h) & (pts[:, 1] <= bottom * h)
        if inside.sum() < MIN_WINDOW_KEYPOINTS and columns:
            continue
        columns.append(inside)
    member = np.stack(columns, axis=1)
    kept = np.asarray(member.any(axis=1), dtype=bool)
    return kept, member[kept].astype(np.float32)


@dataclass
class Candidate:
    """One reference image the first stage proposes, with what each list said of it."""

    row: dict[str, Any]
    """The index row (image id, keys, papyrus metadata)."""
    words_score: float | None
    """Cosine of the idf-weighted word histograms (None: not in the word list)."""
    words_rank: int | None
    embedding_score: float | None
    """Cosine similarity of the embeddings (None: not known)."""
    embedding_rank: int | None

    @property
    def found_by(self) -> str:
        return "both" if self.words_rank and self.embedding_rank else ("words" if self.words_rank else "embedding")


def fuse(word_rows: Sequence[dict[str, Any]], knn_rows: Sequence[dict[str, Any]]) -> list[Candidate]:
    """One candidate list: the word list in its order, then the embedding's candidates that the
    word list does not hold, in theirs. Words lead because on real photos they rank the right
    papyrus near the top where a global embedding is at chance (benchmarks/results.md); the
    embedding's candidates are still confirmed, so a good model can only add."""
    out: dict[int, Candidate] = {}
    for rank, row in enumerate(word_rows, start=1):
        dist = row.get("distance")
        out[row["image_id"]] = Candidate(
            row, float(row["words_score"]), rank, None if dist is None else 1.0 - float(dist), None
        )
    for rank, row in enumerate(knn_rows, start=1):
        seen = out.get(row["image_id"])
        if seen is not None:
            seen.embedding_rank = rank
            seen.embedding_score = 1.0 - float(row["distance"])
            continue
        out[row["image_id"]] = Candidate(row, None, None, 1.0 - float(row["distance"]), rank)
    return list(out.values())
