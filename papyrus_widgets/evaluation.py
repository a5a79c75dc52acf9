"""Retrieval evaluation: top-1/top-5 accuracy, mAP and recall@k, with plots for notebooks.

Ground truth is the *inventory* (``p_g_213``), not the HGV id: one papyrus can carry two HGV ids
(see the data README), and both of its images are right answers. A query is ``(image,
inventory_key)``; :func:`make_queries` makes them by re-photographing references in software
(:func:`papyrus_widgets.training.recapture`), :func:`load_queries` reads a folder of real photos
named like the references.

:func:`evaluate` runs the queries against anything with ``search(image, k=…)`` returning hits
that carry ``inventory_key`` and ``score``: the engine (:class:`papyrus_widgets.api.Engine`, the
real search chain on the index) or a :class:`MemoryIndex` (embeddings in memory, for notebooks and
benchmarks that compare models without a database).
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from . import retrieval as verification
from .errors import ImageError
from .imaging import decode_image, image_files, model_input
from .metadata import parse_reference_filename
from .retrieval.confirm import CONFIRM_FIRST

QUERY_MAX_SIDE = 1024
"""Queries and references are decoded at most this long side here (as the search chain does)."""
VERIFY_CANDIDATES = CONFIRM_FIRST
""":class:`MemoryIndex` verifies the top ``max(k, VERIFY_CANDIDATES)`` hits (the confirming stage's first round)."""

ImageLike = "Image.Image | str | os.PathLike | bytes"


# --------------------------------------------------------------------------------------------- queries


def inventory_of(path: str | os.PathLike) -> str | None:
    """The inventory key a query or reference file stands for: from its name
    (``<HGV id>_<inventory>.jpg`` or ``<inventory>.jpg``), else its folder's name when that is an
    inventory (labelled folders: ``p_g_213/photo1.jpg``)."""
    p = Path(path)
    _, key = parse_reference_filename(p.name)
    if key:
        return key
    _, key = parse_reference_filename(p.parent.name + ".jpg")
    return key


def load_queries(folder: str | os.PathLike) -> list[tuple[Path, str]]:
    """``(path, inventory_key)`` for every image under ``folder`` whose inventory is known
    (:func:`inventory_of`); raises :class:`ImageError` when there is none."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ImageError(f"no such folder of queries: {root}")
    out = [(p, key) for p in image_files(root) if (key := inventory_of(p))]
    if not out:
        raise ImageError(
            f"no query images with a known inventory in {root}: name them like the references "
            "(<HGV id>_<inventory>.jpg, e.g. 19317_p_g_192_c.jpg) or put them in a folder named by inventory."
        )
    return out


def make_queries(
    references_dir: str | os.PathLike,
    n_per_ref: int = 1,
    seed: int = 0,
    *,
    strength: float = 1.0,
    limit: int | None = None,
    out_dir: str | os.PathLike | None = None,
) -> list[tuple[Image.Image, str]]:
    """Re-photograph every distinct reference image ``n_per_ref`` times (:func:`recapture`).

    Returns ``(image, inventory_key)`` pairs; each image's ``info["source"]`` names its reference.
    Byte-identical files (two HGV ids, one scan) give one set of queries. The same ``seed`` gives
    the same queries. ``limit``: only the first ``limit`` distinct references (sorted by name).
    ``out_dir``: also write them as ``out_dir/r<j>/<reference name>`` JPEGs, a folder that
    :func:`load_queries` and ``papyrus evaluate --queries`` read back.
    """
    from .training import recapture

    root = Path(references_dir).expanduser()
    if not root.is_dir():
        raise ImageError(f"no such folder of references: {root}")
    if n_per_ref < 1:
        raise ValueError(f"n_per_ref must be at least 1, got {n_per_ref}")
    distinct: dict[str, tuple[Path, str]] = {}
    for path in image_files(root):
        key = inventory_of(path)
        if key is None:
            continue
        distinct.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), (path, key))
    refs = sorted(distinct.values())[: limit or None]
    out: list[tuple[Image.Image, str]] = []
    for i, (path, key) in enumerate(refs):
        scan = decode_image(path.read_bytes(), max_side=QUERY_MAX_SIDE, name=path.name)
        for j in range(n_per_ref):
            rng = np.random.default_rng([seed, i, j])
            img = recapture(scan, rng, strength=strength)
            img.info["source"] = path.name
            if out_dir is not None:
                target = Path(out_dir) / f"r{j}" / (path.stem + ".jpg")
                target.parent.mkdir(parents=True, exist_ok=True)
                img.save(target, "JPEG", quality=92)
            out.append((img, key))
    return out


@dataclass
class SceneQuery:
    """A query photo composed by :mod:`papyrus_widgets.scenes` around a reference, with its truth."""

    data: bytes = field(repr=False)
    """The photo as JPEG bytes (what a user uploads)."""
    truth: str | None
    """The inventory key of the papyrus in it."""
    name: str
    """The reference file it shows."""
    kind: str
    fraction: float
    """Area of the papyrus / area of the photo."""
    corners: list[list[float]]
    """Where the reference's corners are in the photo (TL, TR, BR, BL)."""


def scene_queries(
    targets: Sequence[str | os.PathLike],
    others: Sequence[Image.Image] | Mapping[str, Image.Image],
    per_target: int = 1,
    seed: int = 0,
    *,
    quality: int = 92,
    fraction: float | None = None,
    variant: str | None = None,
) -> list[SceneQuery]:
    """Photos that look like real use (:func:`papyrus_widgets.scenes.make_scene`: a screen among
    windows and thumbnails, a desk, a light box) of each reference in ``targets``, with ``others``
    (other papyri) around it; scene ``j`` of target ``i`` uses the seed ``[seed, i, j]``.
    ``others`` given as a mapping of file name → image leaves out the target's own file.
    ``fraction``: the papyrus's share of the frame (default: drawn from ``scenes.FRACTION_RANGE``);
    ``variant``: one of ``scenes.VARIANTS``, photos outside that range (close-ups, steep angles,
    12-megapixel portrait photos with EXIF orientation, turned frames, dim photos), or several
    joined by ``+`` (``scenes.COMBINED``).
    Independent of the training generator :func:`papyrus_widgets.training.recapture`."""
    from .scenes import encode, make_scene

    out = []
    for i, target in enumerate(targets):
        path = Path(target)
        img = decode_image(path.read_bytes(), max_side=1600, name=path.name)
        around = [im for name, im in others.items() if name != path.name] if isinstance(others, Mapping) else others
        for j in range(per_target):
            rng = np.random.default_rng([seed, i, j])
            scene = make_scene(img, list(around), rng, fraction=fraction, variant=variant)
            out.append(
                SceneQuery(
                    encode(scene, quality), inventory_of(path), path.name, scene.kind, float(scene.target_fraction),
                    np.asarray(scene.corners, dtype=float).tolist(),
                )
            )  # fmt: skip
    return out


def distinct_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """``paths`` without byte-identical duplicates (one file per content, the first name sorted)."""
    seen: dict[str, Path] = {}
    for p in sorted(Path(p) for p in paths):
        seen.setdefault(hashlib.sha256(p.read_bytes()).hexdigest(), p)
    return sorted(seen.values())


def held_out_split(paths: Sequence[str | os.PathLike], n: int, seed: int) -> tuple[list[Path], list[Path]]:
    """(indexed, held out): ``n`` papyri (by inventory, a seeded choice) held out of ``paths``, so
    that queries of them test "not in the collection"."""
    files = [Path(p) for p in paths]
    inventories = sorted({key for p in files if (key := inventory_of(p))})
    held = set(np.random.default_rng(seed).choice(inventories, n, replace=False).tolist())
    return [p for p in files if inventory_of(p) not in held], [p for p in files if inventory_of(p) in held]


def cut_out(path: str | os.PathLike, max_side: int = 1600) -> Image.Image:
    """A photograph with transparency (a segmented fragment, PapyrusViz's WebPs) as RGBA, long side
    at most ``max_side``: a scene's target keeps its outline (:func:`~papyrus_widgets.imaging.decode_image`
    would lay it on white)."""
    with Image.open(path) as img:
        out = img.convert("RGBA")
    out.thumbnail((max_side, max_side))
    return out


def _distractor_draws(i: int, seed: int, n_sources: int) -> tuple[np.random.Generator, int]:
    """The random generator of distractor ``i`` and which of ``n_sources`` sources it is cut from."""
    rng = np.random.default_rng([seed, 7, i])
    return rng, int(rng.integers(n_sources))


def distractor_source(i: int, n_sources: int, seed: int = 0) -> int:
    """Which of ``n_sources`` sources :func:`distractor_crop` cuts distractor ``i`` from (without
    decoding any: to tell which distractors show a given photograph)."""
    return _distractor_draws(i, seed, n_sources)[1]


def distractor_crop(sources: Sequence[Image.Image], i: int, seed: int = 0, max_side: int = 1024) -> Image.Image:
    """Distractor ``i``: a seeded crop of one of ``sources`` (real photographs of other papyri) —
    15-80 % of its short side, aspect 0.6-1.6, a quarter turn, a colour shift, long side ≤ ``max_side``."""
    rng, which = _distractor_draws(i, seed, len(sources))
    src = sources[which]
    w, h = src.size
    side = rng.uniform(0.15, 0.8) * min(w, h)
    aspect = rng.uniform(0.6, 1.6)
    cw, ch = min(w, side * aspect**0.5), min(h, side / aspect**0.5)
    x, y = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    crop = src.crop((int(x), int(y), int(x + cw), int(y + ch)))
    turns = int(rng.integers(4))
    if turns:
        crop = crop.transpose(
            [Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270][turns - 1]
        )
    arr = np.asarray(crop, dtype=np.float32) * rng.uniform(0.85, 1.15, 3)
    crop = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    crop.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return crop


FOOTER_GREY = 206
"""The grey (0-255) of a Heidelberg scan's footer bar, its ground between the library's logo, the
scan's address and the seal (all 44 references of ``heidelberg/references``)."""
FOOTER_HEIGHT = (0.04, 0.12)
"""A footer bar is this high as a share of the scan's width (Heidelberg's: 0.070-0.072 on all 44)."""


def scan_footer(scan: Image.Image) -> Image.Image | None:
    """The footer bar across the foot of a library's scan (Heidelberg's: grey, with the library's
    logo, the scan's address and a seal): the last rows of which at least a quarter are the bar's
    plain grey (:data:`FOOTER_GREY`); None when they are not :data:`FOOTER_HEIGHT` high (no such bar)."""
    scan = scan.convert("RGB")
    rgb = np.asarray(scan, dtype=np.int16)
    plain = (np.abs(rgb.mean(-1) - FOOTER_GREY) <= 10) & (rgb.max(-1) - rgb.min(-1) <= 8)
    bar = plain.mean(axis=1) >= 0.25
    n = len(bar) if bar.all() else int(np.argmin(bar[::-1]))  # the bar's rows at the foot
    lo, hi = FOOTER_HEIGHT
    if not lo * scan.width <= n <= hi * scan.width:
        return None
    return scan.crop((0, scan.height - n, scan.width, scan.height))


def dressed_as_scan(
    crop: Image.Image, footers: Sequence[Image.Image], i: int, seed: int = 0, max_side: int = 1024
) -> Image.Image:
    """``crop`` (a distractor) as a library's scan shows a papyrus: on a white ground (margins of
    3-10 % of its long side) above one of ``footers`` (:func:`scan_footer`'s bars; seeded by ``i``
    and ``seed``), scaled to the ground's width; long side ≤ ``max_side``. In a collection of one
    library's scans every image carries its footer, so the footer's visual words weigh little and
    match every scan; distractors without it flatter a search for that library's papyri."""
    rng = np.random.default_rng([seed, 11, i])
    footer = footers[int(rng.integers(len(footers)))]
    w, h = crop.size
    left, top, right, bottom = (int(rng.uniform(0.03, 0.10) * max(w, h)) for _ in range(4))
    width = w + left + right
    bar = footer.resize((width, max(1, round(footer.height * width / footer.width))), Image.Resampling.LANCZOS)
    out = Image.new("RGB", (width, h + top + bottom + bar.height), "white")
    out.paste(crop.convert("RGB"), (left, top))
    out.paste(bar, (0, h + top + bottom))
    out.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return out


def quad_iou(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> float:
    """Intersection over union of two convex quadrilaterals (e.g. a region found and the truth)."""
    from .imaging import polygon_area
    from .retrieval.locate import intersection_area

    inter = intersection_area(a, b)
    union = polygon_area(np.asarray(a, dtype=np.float64)) + polygon_area(np.asarray(b, dtype=np.float64)) - inter
    return float(inter / union) if union > 0 else 0.0


def _as_image(image: Any, max_side: int = QUERY_MAX_SIDE) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(bytes(image), max_side=max_side)
    path = Path(image)
    img = decode_image(path.read_bytes(), max_side=max_side, name=path.name)
    img.info["source"] = path.name
    return img


def _name(image: Any, i: int) -> str:
    if isinstance(image, Image.Image):
        return str(image.info.get("source") or f"query {i}")
    if isinstance(image, (str, os.PathLike)):
        return Path(image).name
    return f"query {i}"


# --------------------------------------------------------------------------------------------- in-memory index


@dataclass
class RankedHit:
    """One hit of a :class:`MemoryIndex` search (the fields :func:`evaluate` reads, as on ``tasks.Hit``)."""

    rank: int
    score: float
    inventory_key: str
    name: str
    embedding_score: float
    inliers: int | None = None
    matches: list[list[float]] = field(default_factory=list, repr=False)
    thumbnail: Image.Image | None = field(default=None, repr=False)


class MemoryIndex:
    """Reference images embedded with ``model`` and kept in memory: exact cosine kNN, and with
    ``verify`` the top ``max(k, VERIFY_CANDIDATES)`` re-ranked by :mod:`papyrus_widgets.retrieval.confirm`
    (reference features computed on first use and cached), as the search chain does."""

    def __init__(
        self,
        model: Any,
        references: Sequence[tuple[Any, str]],
        *,
        verify: bool = False,
        batch_size: int = 16,
    ) -> None:
        from .model import embed_arrays

        if not references:
            raise ValueError("a MemoryIndex needs at least one reference image")
        self.model = model
        self.verify = verify
        self.names: list[str] = []
        self.keys: list[str] = []
        self.thumbnails: list[Image.Image] = []
        self._images: list[Image.Image] = []
        arrays = []
        for i, (image, key) in enumerate(references):
            img = _as_image(image)
            self._images.append(img)
            self.names.append(_name(image, i))
            self.keys.append(str(key))
            thumb = img.copy()
            thumb.thumbnail((160, 160))
            self.thumbnails.append(thumb)
            arrays.append(model_input(img))
        self.vectors = embed_arrays(model, np.stack(arrays), batch_size=batch_size)
        self._features: dict[int, verification.Features] = {}
        self.relevant_counts = {k: self.keys.count(k) for k in set(self.keys)}

    @classmethod
    def from_folder(cls, model: Any, folder: str | os.PathLike, *, verify: bool = False) -> "MemoryIndex":
        """Every image under ``folder`` whose inventory is known from its name (as ``papyrus ingest`` indexes them)."""
        refs = load_queries(folder)
        return cls(model, [(p, k) for p, k in refs], verify=verify)

    def __len__(self) -> int:
        return len(self.keys)

    def reference_features(self, i: int) -> verification.Features:
        if i not in self._features:
            self._features[i] = verification.describe_reference(self._images[i])
        return self._features[i]

    def embed(self, images: Sequence[Any]) -> np.ndarray:
        from .model import embed_arrays

        return embed_arrays(self.model, np.stack([model_input(_as_image(im)) for im in images]))

    def search(
        self,
        image: Any,
        k: int = 5,
        *,
        verify: bool | None = None,
        vector: np.ndarray | None = None,
        query_features: verification.Features | None = None,
    ) -> list[RankedHit]:
        """The ``k`` nearest references to ``image`` (PIL image, path or bytes), best first."""
        img = _as_image(image)
        vec = self.embed([img])[0] if vector is None else np.asarray(vector, dtype=np.float32)
        scores = self.vectors @ vec
        do_verify = self.verify if verify is None else verify
        n = min(len(self), max(k, VERIFY_CANDIDATES) if do_verify else k)
        top = np.argsort(-scores, kind="stable")[:n]
        if not do_verify:
            return [self._hit(r, int(i), float(scores[i])) for r, i in enumerate(top, start=1)]
        qf = query_features if query_features is not None else verification.extract_features(img)
        candidates = [
            verification.Candidate(float(scores[i]), functools.partial(self.reference_features, int(i)), int(i))
            for i in top
        ]
        hits = []
        for rank, r in enumerate(verification.rerank(qf, candidates)[:k], start=1):
            v = r.verification
            hit = self._hit(rank, r.payload, r.score, r.embedding_score)
            hit.inliers = v.inliers if v is not None else None
            hit.matches = v.matches if v is not None else []
            hits.append(hit)
        return hits

    def _hit(self, rank: int, i: int, score: float, embedding_score: float | None = None) -> RankedHit:
        return RankedHit(
            rank=rank,
            score=round(score, 6),
            inventory_key=self.keys[i],
            name=self.names[i],
            embedding_score=round(score if embedding_score is None else embedding_score, 6),
            thumbnail=self.thumbnails[i],
        )


# --------------------------------------------------------------------------------------------- metrics


@dataclass
class QueryOutcome:
    """What one query got: ``rank`` of the first right hit (None: not in the top k)."""

    name: str
    inventory_key: str
    rank: int | None
    average_precision: float
    hit_keys: list[str]
    hit_scores: list[float]
    seconds: float
    thumbnail: Image.Image | None = field(default=None, repr=False)
    hit_thumbnails: list[Any] = field(default_factory=list, repr=False)
    hit_inliers: list[int | None] = field(default_factory=list)


@dataclass
class EvaluationResult:
    """Metrics over a set of queries (fractions in [0, 1]) and the outcome of each query."""

    k: int
    top1: float
    top5: float
    mean_average_precision: float
    recall_at_k: float
    mean_rank: float
    seconds_per_query: float
    outcomes: list[QueryOutcome] = field(repr=False)
    label: str = ""

    @property
    def n(self) -> int:
        return len(self.outcomes)

    def metrics(self) -> dict[str, float | int | None]:
        """Plain numbers (JSON-able), e.g. for a model card or a benchmark result."""
        return {
            "queries": self.n,
            "top1": round(self.top1, 4),
            "top5": round(self.top5, 4),
            "mAP": round(self.mean_average_precision, 4),
            f"recall@{self.k}": round(self.recall_at_k, 4),
            "mean_rank_found": round(self.mean_rank, 3) if math.isfinite(self.mean_rank) else None,
            "seconds_per_query": round(self.seconds_per_query, 4),
        }

    def frame(self):  # type: ignore[no-untyped-def]
        """One row per query: name, inventory, rank of the right answer, AP, top hit, seconds."""
        import pandas as pd

        return pd.DataFrame(
            [
                {
                    "query": o.name,
                    "inventory": o.inventory_key,
                    "rank": o.rank,
                    "AP": round(o.average_precision, 4),
                    "top hit": o.hit_keys[0] if o.hit_keys else None,
                    "top score": o.hit_scores[0] if o.hit_scores else None,
                    "seconds": round(o.seconds, 4),
                }
                for o in self.outcomes
            ]
        )

    def __str__(self) -> str:
        m = self.metrics()
        head = f"{self.label}: " if self.label else ""
        return (
            f"{head}{m['queries']} queries: top-1 {m['top1']:.3f}, top-5 {m['top5']:.3f}, mAP {m['mAP']:.3f}, "
            f"recall@{self.k} {m[f'recall@{self.k}']:.3f} ({self.seconds_per_query * 1000:.0f} ms/query)"
        )


def average_precision(hit_keys: Sequence[str], truth: str, n_relevant: int | None = None) -> float:
    """AP of one ranked list: mean of precision@i over the ranks i holding ``truth``, divided by
    ``min(n_relevant, len(hit_keys))`` (all right answers the list could hold); with
    ``n_relevant`` unknown, by the number of right answers it holds."""
    found = 0
    total = 0.0
    for i, key in enumerate(hit_keys, start=1):
        if key == truth:
            found += 1
            total += found / i
    denominator = min(n_relevant, len(hit_keys)) if n_relevant else found
    return total / denominator if denominator else 0.0


def summarise(outcomes: Sequence[QueryOutcome], k: int, label: str = "") -> EvaluationResult:
    """Metrics from per-query outcomes."""
    n = len(outcomes)
    if n == 0:
        raise ValueError("no queries to evaluate")
    ranks = [o.rank for o in outcomes]
    found = [r for r in ranks if r is not None]
    return EvaluationResult(
        k=k,
        top1=sum(r == 1 for r in found) / n,
        top5=sum(r <= 5 for r in found) / n,
        mean_average_precision=float(np.mean([o.average_precision for o in outcomes])),
        recall_at_k=len(found) / n,
        mean_rank=float(np.mean(found)) if found else float("nan"),
        seconds_per_query=float(np.mean([o.seconds for o in outcomes])),
        outcomes=list(outcomes),
        label=label,
    )


def evaluate(
    engine_or_index: Any,
    queries: Sequence[tuple[Any, str]],
    k: int = 10,
    *,
    verify: bool | None = None,
    label: str = "",
    progress: bool = False,
    relevant_counts: Mapping[str, int] | None = None,
) -> EvaluationResult:
    """Run ``queries`` (``(image, inventory_key)``; image: PIL image, path or bytes) against
    ``engine_or_index`` and measure top-1, top-5, mAP@k and recall@k by inventory.

    ``engine_or_index``: an :class:`~papyrus_widgets.api.Engine` (the real search chain) or a
    :class:`MemoryIndex`; ``verify`` is passed on when given. ``relevant_counts`` (inventory →
    images of it in the index) sets the AP denominators; it is read from the index when omitted.
    """
    if k < 5:
        raise ValueError(f"k must be at least 5 (top-5 accuracy is reported), got {k}")
    counts = dict(relevant_counts) if relevant_counts is not None else _relevant_counts(engine_or_index)
    kwargs: dict[str, Any] = {} if verify is None else {"verify": verify}
    iterator: Iterable[tuple[int, tuple[Any, str]]] = enumerate(queries)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=len(queries), desc=label or "evaluate", unit="query")
    outcomes: list[QueryOutcome] = []
    batched = isinstance(engine_or_index, MemoryIndex)
    vectors: dict[int, np.ndarray] = {}
    share = 0.0
    for i, (image, truth) in iterator:
        if batched and i not in vectors:  # embed the next 16 queries at once; each is charged its share
            chunk = list(range(i, min(len(queries), i + 16)))
            t0 = time.perf_counter()
            for j, vec in zip(chunk, engine_or_index.embed([queries[j][0] for j in chunk])):
                vectors[j] = vec
            share = (time.perf_counter() - t0) / len(chunk)
        t0 = time.perf_counter()
        if batched:
            hits = list(engine_or_index.search(image, k=k, vector=vectors.pop(i), **kwargs))
        else:
            hits = list(engine_or_index.search(image, k=k, **kwargs))
        seconds = time.perf_counter() - t0 + (share if batched else 0.0)
        keys = [str(h.inventory_key) for h in hits]
        rank = next((j for j, key in enumerate(keys, start=1) if key == truth), None)
        outcomes.append(
            QueryOutcome(
                name=_name(image, i),
                inventory_key=truth,
                rank=rank,
                average_precision=average_precision(keys, truth, counts.get(truth)),
                hit_keys=keys,
                hit_scores=[float(h.score) for h in hits],
                seconds=seconds,
                thumbnail=_thumb(image),
                hit_thumbnails=[getattr(h, "thumbnail", None) for h in hits],
                hit_inliers=[getattr(h, "inliers", None) for h in hits],
            )
        )
    return summarise(outcomes, k, label)


def _relevant_counts(engine_or_index: Any) -> dict[str, int]:
    counts = getattr(engine_or_index, "relevant_counts", None)
    if isinstance(counts, Mapping):
        return dict(counts)
    url = getattr(engine_or_index, "database_url", None)
    if not url:
        return {}
    from . import index

    with index.connect(url) as conn:
        return index.images_per_inventory(conn)


def _thumb(image: Any, side: int = 160) -> Image.Image | None:
    try:
        img = _as_image(image, max_side=512)
    except Exception:  # noqa: BLE001 - a thumbnail is decoration
        return None
    thumb = img.copy()
    thumb.thumbnail((side, side))
    return thumb


# --------------------------------------------------------------------------------------------- plots


def rank_histogram(results: EvaluationResult | Sequence[EvaluationResult], *, title: str | None = None) -> Any:
    """A matplotlib Figure: how many queries found their papyrus at rank 1, 2, …, k, or not at all
    (one group of bars per result, side by side)."""
    import matplotlib.pyplot as plt

    group = [results] if isinstance(results, EvaluationResult) else list(results)
    k = max(r.k for r in group)
    fig, ax = plt.subplots(figsize=(min(12, 1.5 + 0.45 * (k + 1) * max(1, len(group)) ** 0.5), 3.2))
    width = 0.8 / len(group)
    xs = np.arange(k + 1)
    for j, res in enumerate(group):
        counts = np.zeros(k + 1)
        for o in res.outcomes:
            counts[(o.rank - 1) if o.rank is not None else k] += 1
        ax.bar(xs + (j - (len(group) - 1) / 2) * width, counts, width, label=res.label or f"result {j + 1}")
    ax.set_xticks(xs, [str(i) for i in range(1, k + 1)] + ["miss"])
    ax.set_xlabel("rank of the right papyrus")
    ax.set_ylabel("queries")
    ax.set_title(title or "Where the right papyrus ranked")
    if len(group) > 1 or group[0].label:
        ax.legend()
    fig.tight_layout()
    return fig


def _to_pil(thumb: Any) -> Image.Image | None:
    if thumb is None:
        return None
    if isinstance(thumb, Image.Image):
        return thumb
    try:
        return Image.open(io.BytesIO(thumb)).convert("RGB")
    except Exception:  # noqa: BLE001
        return None


def query_strips(
    result: EvaluationResult,
    *,
    n: int = 6,
    k: int = 5,
    which: str = "first",
    title: str | None = None,
) -> Any:
    """A matplotlib Figure: one row per query — the query, then its top ``k`` hits framed green
    (right papyrus) or red, with score (and inliers when verified). ``which``: ``first`` queries,
    ``failures`` (right papyrus not first) or ``successes``."""
    import matplotlib.pyplot as plt

    outcomes = result.outcomes
    if which == "failures":
        outcomes = [o for o in outcomes if o.rank != 1]
    elif which == "successes":
        outcomes = [o for o in outcomes if o.rank == 1]
    elif which != "first":
        raise ValueError("which must be 'first', 'failures' or 'successes'")
    rows = outcomes[:n]
    cols = k + 1
    fig, axes = plt.subplots(max(1, len(rows)), cols, figsize=(1.6 * cols, 1.9 * max(1, len(rows))), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for r, o in enumerate(rows):
        ax = axes[r][0]
        if o.thumbnail is not None:
            ax.imshow(o.thumbnail)
        ax.set_title(f"query\n{o.inventory_key}", fontsize=7)
        for c in range(min(k, len(o.hit_keys))):
            ax = axes[r][c + 1]
            thumb = _to_pil(o.hit_thumbnails[c] if c < len(o.hit_thumbnails) else None)
            if thumb is not None:
                ax.imshow(thumb)
            else:
                ax.text(0.5, 0.5, o.hit_keys[c], ha="center", va="center", fontsize=7)
            right = o.hit_keys[c] == o.inventory_key
            ax.set_axis_on()
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_color("#2a2" if right else "#c33")
                spine.set_linewidth(3 if right else 1)
            inl = o.hit_inliers[c] if c < len(o.hit_inliers) else None
            extra = f" · {inl} inl." if inl is not None else ""
            ax.set_title(f"#{c + 1} {o.hit_scores[c]:.3f}{extra}\n{o.hit_keys[c]}", fontsize=7)
    if title or result.label:
        fig.suptitle(title or result.label, fontsize=9)
    fig.tight_layout()
    return fig
