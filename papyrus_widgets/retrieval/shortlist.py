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
(:func:`document_weights`, stored at ingest, independent of the rest of the collection); a query
keeps ``sqrt(count)``; the idf of each word is counted at query time from its posting list, so
nothing stored goes stale as the collection grows. The square root damps "bursts" (the same word
many times over a repetitive texture, such as papyrus fibres).
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


def query_weights(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(distinct words, weights)`` of a query: ``sqrt(count)`` (the idf comes from the index)."""
    unique, counts = _counts(words)
    return unique, np.sqrt(counts)


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
