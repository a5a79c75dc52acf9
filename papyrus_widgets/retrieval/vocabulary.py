"""The visual vocabulary: RootSIFT descriptors → visual words (a two-level k-means tree).

A word is ``coarse * fanout + fine``: the nearest of ``coarse`` top-level centroids, then the
nearest of that cell's ``fanout`` centroids. Quantising a photo's few thousand descriptors costs
two small matrix products per descriptor, so a query is assigned in milliseconds, and the index
stores words (integers), not descriptors.

Each keypoint also gets a 64-bit **signature** (:meth:`Vocabulary.signatures`, Hamming embedding
after Jégou, Douze and Schmid 2008): the signs of 64 fixed random ±1 projections of its
descriptor's offset from its word's centroid. Two descriptors in the same word whose signatures
differ in more than :data:`HAMMING_THRESHOLD` bits are not counted as a match by the first stage
(:func:`papyrus_widgets.index.word_candidates`): a word of 65,536 is a coarse cell, and on a
cluttered photo most of a small papyrus's word matches with other papyri are such chance
neighbours.

The package ships a default vocabulary (``data/vocabulary.npz``), trained with
:func:`train_vocabulary` on RootSIFT descriptors of papyrus photographs that are neither queried
nor indexed by the project's tests and benchmarks (the Michigan, Princeton and BnF photographs and
the PapyrusViz fragments of the shared data set: see ``benchmarks/README.md``). A curator may train
one on their own collection (``papyrus vocabulary``) and set ``PAPYRUS_VOCABULARY``; the index
records the fingerprint of the vocabulary that made its words, and refuses to mix two.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .features import root_sift

DEFAULT_VOCABULARY = Path(__file__).resolve().parent.parent / "data" / "vocabulary.npz"
"""The vocabulary that ships with the package (used when ``PAPYRUS_VOCABULARY`` is unset)."""


def _to_u8(centroids: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(centroids) * 255.0), 0, 255).astype(np.uint8)


def _from_u8(data: np.ndarray) -> np.ndarray:
    return data.astype(np.float32) / 255.0


def _nearest(x: np.ndarray, centroids: np.ndarray, norms: np.ndarray, batch: int = 8192) -> np.ndarray:
    out = np.empty(len(x), dtype=np.int64)
    for s in range(0, len(x), batch):
        out[s : s + batch] = np.argmin(norms[None, :] - 2.0 * (x[s : s + batch] @ centroids.T), axis=1)
    return out


def _by_cell(cell: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """``(cell, rows)`` for each distinct value of ``cell`` (an int array), the rows that hold it in order."""
    order = np.argsort(cell, kind="stable")
    for group in np.split(order, np.flatnonzero(np.diff(cell[order])) + 1):
        if len(group):
            yield int(cell[group[0]]), group


def kmeans(x: np.ndarray, k: int, *, iterations: int = 12, seed: int = 0) -> np.ndarray:
    """Lloyd's k-means on the rows of ``x`` (float32), ``k`` centroids; empty cells are re-seeded."""
    rng = np.random.default_rng(seed)
    if len(x) < k:
        raise ValueError(f"k-means needs at least k={k} samples, got {len(x)}")
    centroids = x[rng.choice(len(x), k, replace=False)].astype(np.float32)
    for _ in range(iterations):
        assign = _nearest(x, centroids, (centroids * centroids).sum(1))
        counts = np.bincount(assign, minlength=k).astype(np.float32)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, x)
        empty = counts == 0
        centroids[~empty] = sums[~empty] / counts[~empty, None]
        if empty.any():
            centroids[empty] = x[rng.choice(len(x), int(empty.sum()), replace=False)]
    return centroids


SIGNATURE_BITS = 64
SIGNATURE_SEED = 2026
HAMMING_THRESHOLD = 22
"""Two keypoints of the same word match when their signatures differ in at most this many of
:data:`SIGNATURE_BITS` bits. Chosen on scene photos of development seeds (not the benchmark's),
by the truth's rank among 10,032 images (32 references, 10,000 distractor crops) when only the
keypoints on the papyrus are scored: with the papyrus at 5 % of the frame (32 photos, seed 77200)
words alone put it first-10 for 0.84 and first-50 for 0.91 of the photos, within 22 bits 0.97 and
0.97 (20 bits: 0.97 / 1.00; 26: 0.97 / 0.97); photographed at 45-60° (32 photos, seed 77100)
0.63 / 0.75 → 0.88 / 0.94 (20 bits: 0.84 / 0.84; 26: 0.84 / 0.91)."""


MORE_WORDS = 4
"""Multiple assignment (:meth:`Vocabulary.more_words`): up to this many more words per query
keypoint, where they are nearly as near as its own (:data:`MORE_WORDS_RATIO`). A photo shaken or
shot off a laptop panel smears a papyrus's descriptors, and a smeared descriptor often falls into a
word next to the one its scan's keypoint fell into: with one word per keypoint, even the keypoints
on the papyrus alone did not bring its scan into the first 100 of 10,032 images for 7 of 32
development photos (*lcd+shaky*, seed 79500; with 4 more words, 4). The references keep one word
each (the index does not grow); a query's first pass takes as many of its more words as keep it
within :data:`papyrus_widgets.retrieval.features.QUERY_MAX_KEYPOINTS` rows (a photo with fewer
keypoints, a smeared one, gets them; one with a full budget reads no more postings than before),
its second look all of them (:func:`papyrus_widgets.tasks.query_rows`). Chosen on development
photos (seeds 79500-79530, 32 photos per set, the benchmark's 10,032-image index replayed in
memory, not the benchmark's photos): the scan in the first pass's 100 or the second look's 90 for
*lcd+shaky* 26 → 28 of 32, *lcd+steep* 23 → 27, ordinary scenes 32 → 32, papyri at 3 % of the
frame 32 → 32 (in the first 10: 26 → 28). Then the benchmark's photos through the engine among
10,035 images (benchmarks/results.md, figure 0d, "Panels: more words …"; ``bench_realphoto.py
--trial one-word`` is the search without them): *lcd+shaky* top-1 0.906 against 0.859, *lcd+steep*
0.891 against 0.828, 3 % and 25 % of the frame the same answers, nothing held out confirmed; 1.05-1.27x
the time per photo, 1.14-1.49x for a search that confirms nothing (its second look's postings)."""
MORE_WORDS_RATIO = 1.3
"""… a word counts as nearly as near when the descriptor is at most this many times as far from
its centroid as from its own word's."""
MORE_WORDS_CELLS = 3
"""… looked for among the words of the descriptor's this many nearest coarse cells."""


@functools.lru_cache(maxsize=1)
def _projection() -> np.ndarray:
    """(SIGNATURE_BITS, 128) float32 of ±1, the same on every machine (integers of a seeded PCG64)."""
    rng = np.random.default_rng(SIGNATURE_SEED)
    return (rng.integers(0, 2, (SIGNATURE_BITS, 128)) * 2 - 1).astype(np.float32)


@dataclass(frozen=True)
class Vocabulary:
    """A two-level visual vocabulary of ``coarse * fanout`` words over RootSIFT descriptors."""

    coarse_centroids: np.ndarray = field(repr=False)
    """(coarse, 128) float32."""
    fine_centroids: np.ndarray = field(repr=False)
    """(coarse, fanout, 128) float32."""
    source: str = ""
    """What it was trained on (shown by ``papyrus doctor``)."""

    @property
    def size(self) -> int:
        return int(self.fine_centroids.shape[0] * self.fine_centroids.shape[1])

    @functools.cached_property
    def fingerprint(self) -> str:
        """``vocab-<12 hex>``: a hash of the centroids; the index records it with its words."""
        h = hashlib.sha256(_to_u8(self.coarse_centroids).tobytes())
        h.update(_to_u8(self.fine_centroids).tobytes())
        return f"vocab-{h.hexdigest()[:12]}"

    @functools.cached_property
    def _norms(self) -> tuple[np.ndarray, np.ndarray]:
        c, f = self.coarse_centroids, self.fine_centroids
        return (c * c).sum(1), (f * f).sum(2)

    @functools.cached_property
    def _flat_fine(self) -> np.ndarray:
        """(coarse * fanout, 128) float32: word ``w``'s centroid is row ``w``."""
        return self.fine_centroids.reshape(-1, self.fine_centroids.shape[-1])

    @functools.cached_property
    def _fine_t(self) -> np.ndarray:
        """(coarse, 128, fanout) float32, contiguous: each cell's fine centroids as columns."""
        return np.ascontiguousarray(self.fine_centroids.transpose(0, 2, 1))

    def words(self, descriptors: np.ndarray) -> np.ndarray:
        """The word (int64) of each SIFT descriptor row (raw SIFT values; RootSIFT is applied here)."""
        if len(descriptors) == 0:
            return np.zeros(0, dtype=np.int64)
        return self._words(root_sift(descriptors))

    def words_and_signatures(self, descriptors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`words` and :meth:`signatures` of SIFT descriptor rows, RootSIFT taken once."""
        if len(descriptors) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        x = root_sift(descriptors)
        words = self._words(x)
        return words, self._signatures(x, words)

    def _words(self, x: np.ndarray) -> np.ndarray:
        coarse_norms, fine_norms = self._norms
        cell = _nearest(x, self.coarse_centroids, coarse_norms)
        fanout = self.fine_centroids.shape[1]
        out = np.empty(len(x), dtype=np.int64)
        for c, group in _by_cell(cell):
            out[group] = c * fanout + _nearest(x[group], self.fine_centroids[c], fine_norms[c])
        return out

    def signatures(self, descriptors: np.ndarray, words: np.ndarray) -> np.ndarray:
        """The 64-bit signature (int64, as PostgreSQL's ``bigint`` stores it) of each SIFT descriptor
        row in its word ``words`` (:meth:`words`): bit ``i`` is set when the descriptor lies on the
        positive side of projection ``i`` through its word's centroid."""
        if len(descriptors) == 0:
            return np.zeros(0, dtype=np.int64)
        return self._signatures(root_sift(descriptors), words)

    def _signatures(self, x: np.ndarray, words: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32)
        bits = ((x - self._flat_fine[np.asarray(words, dtype=np.int64)]) @ _projection().T) > 0
        packed = np.packbits(bits, axis=1, bitorder="little")  # (N, 8) bytes, bit i of the signature = projection i
        return packed.view("<u8").reshape(-1).view(np.int64)

    def more_words(
        self,
        descriptors: np.ndarray,
        words: np.ndarray,
        k: int | None = None,
        ratio: float | None = None,
        cells: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Multiple assignment of SIFT descriptor rows (a query's; Jégou, Douze and Schmid 2010):
        ``(rows, words, signatures)`` of up to ``k`` more words per row besides its own ``words``
        (:meth:`words`), each of them among the nearest of the fine words of the row's ``cells``
        nearest coarse cells and no further from the descriptor than ``ratio`` times its own word.
        Ordered by that ratio (the nearest seconds first, then by row), so that a prefix of them is
        the best that many; each with its signature in that word (:meth:`signatures`). Defaults:
        :data:`MORE_WORDS`, :data:`MORE_WORDS_RATIO`, :data:`MORE_WORDS_CELLS` (read at call time)."""
        k = MORE_WORDS if k is None else k
        ratio = MORE_WORDS_RATIO if ratio is None else ratio
        cells = MORE_WORDS_CELLS if cells is None else cells
        words = np.asarray(words, dtype=np.int64).reshape(-1)
        empty = np.zeros(0, dtype=np.int64)
        if len(descriptors) == 0 or k <= 0:
            return empty, empty, empty
        x = root_sift(descriptors).astype(np.float32)
        coarse_norms, fine_norms = self._norms
        fanout = self.fine_centroids.shape[1]
        cells = min(cells, len(self.coarse_centroids))
        keep = min(k + 1, fanout)  # per cell: the own word may be among them
        near = np.argsort(coarse_norms[None, :] - 2.0 * (x @ self.coarse_centroids.T), axis=1)[:, :cells]
        # every (row, cell) pair, grouped by cell: one product per cell for all the rows that need it
        pair_row = np.repeat(np.arange(len(x)), cells)
        pair_cell = near.reshape(-1)
        cand_words = np.empty((len(pair_row), keep), dtype=np.int64)
        cand_dist = np.empty((len(pair_row), keep), dtype=np.float32)
        for c, group in _by_cell(pair_cell):
            d = fine_norms[c][None, :] - 2.0 * (x[pair_row[group]] @ self._fine_t[c])
            best = np.argpartition(d, keep - 1, axis=1)[:, :keep] if keep < fanout else np.argsort(d, axis=1)
            cand_words[group] = c * fanout + best
            cand_dist[group] = np.take_along_axis(d, best, axis=1)
        cand_words = cand_words.reshape(len(x), cells * keep)
        cand_dist = cand_dist.reshape(len(x), cells * keep)
        squared = (x * x).sum(axis=1)
        own = np.sqrt(np.maximum(((x - self._flat_fine[words]) ** 2).sum(axis=1), 1e-12))
        dist = np.sqrt(np.maximum(cand_dist + squared[:, None], 0.0))
        dist[cand_words == words[:, None]] = np.inf  # its own word is not a "more"
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        chosen = np.take_along_axis(cand_words, order, axis=1)
        rel = np.take_along_axis(dist, order, axis=1) / own[:, None]
        rows = np.repeat(np.arange(len(x))[:, None], k, axis=1)
        ok = rel <= ratio
        rows, chosen, rel = rows[ok], chosen[ok], rel[ok]
        by = np.lexsort((rows, rel))
        rows, chosen = rows[by], chosen[by]
        return rows.astype(np.int64), chosen, self._signatures(x[rows], chosen)

    def to_bytes(self) -> bytes:
        """A compact ``.npz``: centroids as bytes (RootSIFT values lie in [0, 1]; 1/255 steps)."""
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            coarse=_to_u8(self.coarse_centroids),
            fine=_to_u8(self.fine_centroids),
            source=np.asarray(self.source),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Vocabulary":
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls(_from_u8(z["coarse"]), _from_u8(z["fine"]), str(z["source"]) if "source" in z else "")

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.to_bytes())
        return path


def train_vocabulary(
    descriptors: Iterable[np.ndarray],
    *,
    coarse: int = 128,
    fanout: int = 128,
    max_samples: int = 400_000,
    seed: int = 0,
    source: str = "",
) -> Vocabulary:
    """Train a two-level vocabulary on SIFT descriptors (arrays of raw SIFT rows, any number).

    At most ``max_samples`` descriptors (a seeded random sample) are clustered: ``coarse`` cells,
    then ``fanout`` words within each cell."""
    x = np.concatenate([np.asarray(d) for d in descriptors if len(d)])
    rng = np.random.default_rng(seed)
    if len(x) > max_samples:
        x = x[rng.choice(len(x), max_samples, replace=False)]
    x = root_sift(x)
    top = kmeans(x, coarse, seed=seed)
    cell = _nearest(x, top, (top * top).sum(1))
    fine = np.zeros((coarse, fanout, x.shape[1]), dtype=np.float32)
    for c in range(coarse):
        members = x[cell == c]
        if len(members) < fanout:  # a thin cell: pad with random samples (its extra words stay rare)
            members = np.concatenate([members, x[rng.choice(len(x), fanout - len(members), replace=False)]])
        fine[c] = kmeans(members, fanout, iterations=8, seed=seed + 1 + c)
    return Vocabulary(top, fine, source=source)


@functools.lru_cache(maxsize=4)
def load_vocabulary(path: str | None = None) -> Vocabulary:
    """The vocabulary at ``path`` (a ``.npz`` from :meth:`Vocabulary.save`), default the shipped one;
    loaded once per process."""
    from ..errors import ModelError

    target = Path(path).expanduser() if path else DEFAULT_VOCABULARY
    try:
        return Vocabulary.from_bytes(target.read_bytes())
    except FileNotFoundError:
        raise ModelError(
            f"no visual vocabulary at {target}: unset PAPYRUS_VOCABULARY for the shipped one, "
            "or make one with papyrus vocabulary FOLDER --out FILE."
        ) from None
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"the visual vocabulary at {target} cannot be read ({exc}).") from None
