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
from typing import Iterable

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
        order = np.argsort(cell, kind="stable")
        bounds = np.flatnonzero(np.diff(cell[order])) + 1
        for group in np.split(order, bounds):
            c = int(cell[group[0]])
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
        centroids = self.fine_centroids.reshape(-1, self.fine_centroids.shape[-1])
        bits = ((x - centroids[np.asarray(words, dtype=np.int64)]) @ _projection().T) > 0
        packed = np.packbits(bits, axis=1, bitorder="little")  # (N, 8) bytes, bit i of the signature = projection i
        return packed.view("<u8").reshape(-1).view(np.int64)

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
