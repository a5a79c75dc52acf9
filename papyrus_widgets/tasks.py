"""The Dask side: worker-cached resources, the search chain of futures, the ingest tasks.

A search is three or five futures, each a stage the widget shows (the last two one stage):
``prepare`` (decode safely; the photo's local features and visual words — of the corners' region
when given; model input) → ``embed`` (worker-cached model) → ``search`` (the first stage: visual
words in PostgreSQL fused with the embedding kNN, :mod:`papyrus_widgets.retrieval.shortlist`) →
``verify`` (optional: the first look confirms candidates geometrically until one is confirmed,
finds the region, attaches evidence and thumbnails, :mod:`papyrus_widgets.retrieval.confirm`; the
second look, a future of its own, runs when the first confirmed nothing near the photo's middle,
and meanwhile :meth:`SearchJob.interim_hits` hands out the first look's answer).
Tasks receive a :class:`~papyrus_widgets.config.Settings` whose ``database_url`` and ``model``
are already resolved by the engine, so a worker never guesses.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

import numpy as np

from . import imaging, index, storage
from .config import Settings
from .errors import ImageError, JobError, ModelError, PapyrusError
from .metadata import PapyrusRecord
from .request import SearchRequest
from .results import Hit

SEARCH_PRIORITY = 10  # searches overtake ingest batches on a shared cluster
STAGES = ("queued", "preparing", "embedding", "searching", "verifying", "done")
"""The stages a :class:`SearchJob` reports, in order (``verifying`` only when it verifies); the
widget shows one chip per stage after ``queued`` (js/test/stages.test.mjs reads this line)."""
PHOTO_MAX_SIDE = 3200
"""A query photo is decoded with a long side of at most this many pixels: the region where the
papyrus is (corners given, or found) is looked at in this detail."""
REFINE_CANDIDATES = 3
"""How many of the best candidates the closer look at a small region (in full detail,
:func:`papyrus_widgets.retrieval.needs_closer_look`) re-matches."""
SECOND_LOOK_CANDIDATES = 90
"""How many more references the second look (:func:`_second_look`) confirms at most when the
first stage's candidates confirmed nothing near the middle of the photo (0: no second look); in
rounds, like the first ones, it stops at a confirmed match."""
SECOND_LOOK_MAX_ROWS: int | None = 12000
"""At most this many rows in the second look's word list (:func:`second_look_rows`: a photo's own
words, then its more words, the nearest first, as :func:`query_rows` orders them), never fewer
than the first pass's (whose matching pairs it reuses); None: all of them, as before 2026-12-06.
A photo with a full 4,000 keypoints has 16,000-19,600 such rows, three to four times the first
pass's, and reading the more words' postings grows with the collection (0.68 s of a "no confirmed
match" search at 10,035 images). Chosen on the lists of 64 development photos (seed 77123) in a
small in-memory index: 12,000 lost none of them, 8,000 one, 6,000 two. Through the engine
(benchmarks/results.md, figure 0d; ``bench_realphoto.py --trial uncapped-rows`` compares): the
same answers on the benchmark's photos, "no confirmed match" 0.89x per photo with the papyrus at
25 % of the frame, 0.95x on laptop panels photographed steeply; photos with fewer rows than this
are searched as before."""
LATER_LOOK_POSTINGS: int | None = None
"""Off (None) by default since 2026-12-07 (evening): a collection of 100,000 images or more that
would rather answer "no confirmed match" sooner than find the steepest photos may set it.
At most this many postings read for the rows a later look adds to the first pass's: the second
look's more words (:func:`second_look_rows`) and the tilted look's words of its views
(:func:`_tilted_look`), each on its own; the rarest words first (:func:`_rarest_within`: a row of a
word that few images have reads few postings and weighs most in the scores). A row reads as many
postings as its word has images, so these looks' cost grew with the collection: with this budget it
stops growing once the collection fills it. None: every row, as before 2026-12-07.

At 10,035 images no photo's later rows reach it (8,000 more-word rows read some 1.3 million
postings). At 100,035 (the benchmark's index and 90,000 derived items with their features) a
photo of a papyrus not in the collection read 26 million postings, 13 million of them for its
second look's more words and 7 million for its tilted views' words; the postings are spread evenly
over the words (the commonest tenth of the rows read a quarter of them), so 6 million keeps about
three quarters of the more-word rows (median of 16 photos) and 95 % of the tilted ones. Measured
in one process on that index, alternated with no budget (development photos, not the benchmark's;
2026-12-07): 16 photos of held-out papyri (seed 82301) 18.6 million postings instead of 26.3,
0.78x the time per photo (4.69 s p50 against 6.02 s), none confirmed either way; 96 photos of
indexed papyri on laptop panels shaken or photographed steeply, or at 3 % of the frame (32 each,
seeds 79700-79720), and their 24 held-out ones: the same answers, photo for photo. 3 million (0.63x
on the 16) lost 2 of the 32 steep ones, 3 million for the more words alone (with 6 for the tilted
views) 1. So it was on at 6 million from then until the same day's run of the benchmark's own
photos through the engine at 100,035 images (``bench_realphoto.py --derived 90000 --variants
lcd+steep,steep,lcd+shaky --per-ref 1 --trial unbudgeted``, alternated; benchmarks/results.md,
figure 0d at 100,035 images): with 6 million 30 of 32 steep laptop-panel photos and 29 of 32
steep photos first, with none 32 and 31; a search that confirms nothing 0.79x the time with it
(figure 0b). The answers come first: off."""
SECOND_LOOK_AFTER_OFF_CENTRE = 40
"""How many of those the second look confirms at most when the first look did confirm papyri, but
only off the middle of the photo (:data:`~papyrus_widgets.retrieval.confirm.CONFIRM_STOP_OFF_CENTRE`):
the first of the same list of :data:`SECOND_LOOK_CANDIDATES` (its order does not change), so a
papyrus it finds within them is found as before. Such a look is for a neighbouring sheet of the
collection confirmed instead of the one photographed; more often the papyrus confirmed is the one
photographed and the look finds nothing new (96 of 256 benchmark photos and 69 of 160 development
photos took it on 2026-12-03, and it changed no answer; the one development photo it rescued stood
35th of its list). 40 since 2026-12-03 (90 before): the same answers photo for photo on 192 photos
at 3 % and 10 % of the frame and at 45-60° (``bench_realphoto.py --fractions 0.03,0.1 --variants
steep --trial off-centre90``; benchmarks/results.md, figure 0c). Since 2026-12-04 the first look's
rounds end with the one that confirmed such a papyrus
(:data:`~papyrus_widgets.retrieval.confirm.CONFIRM_AFTER_OFF_CENTRE`), and the candidates of its
list it left untried may come up again in this one."""
PHOTO_CACHE = 2
"""Decoded query photos each process keeps (an LRU by object key and decode bounds): a search's
stages — preparing, the first look's closer look, the second look — run one after another,
mostly on one worker, and decode the photo once instead of up to three times (a 12-megapixel
phone JPEG: about 0.19 s each on the 2-core box). Each entry holds at most
:data:`PHOTO_MAX_SIDE` squared pixels (≤ 31 MB). 0: decode every time."""
PAIRS_CACHE = 4
"""The first pass's matching pairs of keypoints and postings (:class:`index.WordPairs`) each
process keeps (an LRU by database, the photo's words and signatures, and the filters): the second
look scores the same keypoints over its smaller windows from them (:func:`second_look_list`)
instead of reading their postings again, when it runs in the process that ran the first pass
(mostly: it follows the first look's data). About 24 bytes a pair (some 50,000 pairs for a photo
of 4,000 keypoints among 10,000 images). 0: read them again."""
PAIR_CONNECTIONS = 2
"""Connections that read one photo's postings at the same time (:func:`index.word_pairs`, its
keypoints cut into as many runs): PostgreSQL runs a statement on one core, and while a search
waits for its postings the worker's other core is idle. The connections beyond the task's own come
from the process's pool when it has them free (:func:`index.spare_connections`), else the
statement runs alone. 1: one statement, as before 2026-12-05."""


# --- per-process caches on workers (and in the client process when it runs tasks itself) -------


@functools.lru_cache(maxsize=4)
def worker_model(source: str, revision: str | None) -> tuple[Any, str]:
    """(model, fingerprint), loaded once per worker process and reused by every task."""
    import torch

    from .model import load_model, model_fingerprint

    threads = int(os.environ.get("PAPYRUS_TORCH_THREADS", "0") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    model = load_model(source, revision=revision)
    return model, model_fingerprint(model)


@functools.lru_cache(maxsize=8)
def _store_for(settings: Settings) -> storage.ObjectStore:
    return storage.open_store(settings)


def worker_store(settings: Settings) -> storage.ObjectStore:
    """The object store of this process for these settings (created once; keys and TLS included)."""
    return _store_for(
        Settings(
            data_dir=settings.data_dir,
            s3_endpoint=settings.s3_endpoint,
            s3_access_key=settings.s3_access_key,
            s3_secret_key=settings.s3_secret_key,
            s3_bucket=settings.s3_bucket,
            s3_secure=settings.s3_secure,
            s3_timeout=settings.s3_timeout,
        )
    )


def worker_vocabulary(settings: Settings) -> Any:
    """The visual vocabulary of these settings (``Settings.vocabulary``, resolved by the engine;
    None: the shipped one), loaded once per process."""
    from .retrieval.vocabulary import load_vocabulary

    return load_vocabulary(settings.vocabulary)


def _require_resolved(settings: Settings) -> tuple[str, str]:
    if not settings.database_url or not settings.model:
        raise JobError("internal error: a task received unresolved settings (no database URL or model).")
    return settings.database_url, settings.model


def _hit(row: Mapping[str, Any], rank: int, thumbnail: bytes | None, score: float) -> Hit:
    return Hit(
        rank=rank,
        score=round(score, 6),
        key=row["key"],
        hgv_id=row["hgv_id"],
        tm_id=row["tm_id"],
        inventory=row["inventory"],
        inventory_key=row["inventory_key"],
        collection=row["collection"],
        title=row["title"],
        date_text=row["date_text"],
        date_from=row["date_from"],
        date_to=row["date_to"],
        place=row["place"],
        papyri_info_url=row["papyri_info_url"],
        image_urls=list(row["image_urls"] or []),
        source_name=row["source_name"],
        image_key=row["object_key"],
        thumb_key=row["thumb_key"],
        thumbnail=thumbnail,
        ef_search=row.get("ef_search"),
    )


# --- search tasks ------------------------------------------------------------------------------


@dataclass
class PreparedQuery:
    """What the preparing stage hands on: the model input, the photo's local features (of the
    corners' region when given) and their visual words."""

    model_input: np.ndarray = field(repr=False)
    features: Any = field(repr=False)
    """:class:`~papyrus_widgets.retrieval.Features`, points in the photo's stored pixels."""
    words: np.ndarray = field(repr=False)
    size: tuple[int, int] = (0, 0)
    """(width, height) of the photo as stored (EXIF-upright)."""
    region: list[list[float]] | None = None
    """The corners given (TL, TR, BR, BL, in the photo's stored pixels), None without."""
    signatures: np.ndarray | None = field(default=None, repr=False)
    """The 64-bit signature of each keypoint in its word (None: words alone)."""

    @property
    def region_given(self) -> bool:
        """Whether corners were given (:attr:`region`)."""
        return self.region is not None


def _photo_cache() -> Any:
    global _PHOTOS
    if _PHOTOS is None:
        from .retrieval.features import FeatureCache

        _PHOTOS = FeatureCache(PHOTO_CACHE)
    _PHOTOS.maxsize = PHOTO_CACHE  # a switch set on a running worker (the benchmark's trials) holds at once
    return _PHOTOS


_PHOTOS: Any = None


def _decode_stored(settings: Settings, key: str, name: str, max_side: int, max_bytes: int | None = None) -> Any:
    """The stored image ``key`` read from this process's object store and decoded safely
    (:func:`imaging.decode_image`: ``settings.max_image_pixels``, ``max_bytes``), with a long side
    of at most ``max_side``; ``name`` is what a failure calls it."""
    data = worker_store(settings).get(key)
    return imaging.decode_image(
        data, max_pixels=settings.max_image_pixels, max_bytes=max_bytes, max_side=max_side, name=name
    )


def _decode_query(settings: Settings, query_key: str, name: str, max_side: int) -> Any:
    """The stored query ``query_key`` decoded safely (:func:`_decode_stored`, uploads' byte limit)
    with a long side of at most ``max_side``: from this process's :data:`PHOTO_CACHE` when a stage
    before decoded it (query keys are content-addressed, so an entry never goes stale), as a copy
    of its own (the caller may change it)."""

    def decode() -> Any:
        return _decode_stored(settings, query_key, name, max_side, settings.max_upload_bytes)

    if PHOTO_CACHE <= 0:
        return decode()
    limits = (settings.max_image_pixels, settings.max_upload_bytes)
    key = (worker_store(settings).describe(), query_key, max_side, limits)
    return _photo_cache().get(key, decode).copy()


def _query_features(
    img: Any, region: Sequence[Sequence[float]] | None, rectify: bool = False, aspect: float | None = None
) -> Any:
    """A photo's local features as a search makes them (of ``region`` when given; ``rectify`` and
    ``aspect``: as :func:`papyrus_widgets.retrieval.features.extract_features` has them, for the
    corners a user marks or a match's outline)."""
    from .retrieval import features as F  # read at call time: a benchmark's trial may switch them

    return F.extract_features(
        img,
        size=img.info.get("original_size", img.size),
        max_side=F.QUERY_MAX_SIDE,
        max_keypoints=F.QUERY_MAX_KEYPOINTS,
        region=region,
        lift_dark=True,
        min_side=F.QUERY_MIN_SIDE,
        deband=F.DEBAND,
        contrast=F.QUERY_CONTRAST,
        rectify=rectify,
        aspect=aspect,
    )


def query_rows(
    settings: Settings, prepared: PreparedQuery, budget: int | None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """A photo's rows for its word lists, ``(words, signatures, points)``: each keypoint's own word
    (``prepared.words``, at its point), then more words of its keypoints, the nearest first
    (multiple assignment, :meth:`~papyrus_widgets.retrieval.vocabulary.Vocabulary.more_words`), as
    many as keep the rows within ``budget`` (the first pass:
    :data:`~papyrus_widgets.retrieval.features.QUERY_MAX_KEYPOINTS`, so that a photo with a full
    budget of keypoints reads no more postings than with one word each), or all of them (``budget``
    None: the second look, which so scores the first pass's rows and more)."""
    features, words, signatures = prepared.features, prepared.words, prepared.signatures
    full = budget is not None and len(words) >= budget  # no room for more words in this list
    if signatures is None or features.method != "sift" or not len(words) or full:
        return words, signatures, features.points
    rows, more, more_signatures = worker_vocabulary(settings).more_words(features.descriptors, words)
    out = (
        np.concatenate([words, more]),
        np.concatenate([signatures, more_signatures]),
        np.concatenate([features.points, features.points[rows]]),
    )
    if budget is None:
        return out
    n = _within_budget(len(words), len(out[0]), budget)
    return out[0][:n], out[1][:n], out[2][:n]


def _within_budget(own: int, rows: int, budget: int) -> int:
    """How many of a photo's ``rows`` (its ``own`` keypoints' words first, then their more words)
    a list with this ``budget`` takes (:func:`query_rows`): all its own, then more while within it."""
    return max(own, min(rows, budget))


def prepare_task(
    settings: Settings, query_key: str, name: str, corners: Sequence[Sequence[float]] | None
) -> PreparedQuery:
    """Stage 1: fetch the stored query, decode it safely; the local features and visual words of
    the photo (of the corners' region when given, in full detail); deskew by corners for the model
    input."""
    img = _decode_query(settings, query_key, name, PHOTO_MAX_SIDE)
    size = tuple(int(v) for v in img.info.get("original_size", img.size))
    region = None
    crop = img
    if corners is not None:
        region = imaging.order_corners(corners, size).tolist()  # type: ignore[arg-type]
        # corners are in the pixels of the original (EXIF-upright) image; the decode may be smaller
        sx, sy = img.width / size[0], img.height / size[1]
        crop = imaging.deskew(img, [[float(x) * sx, float(y) * sy] for x, y in corners])
        try:  # kept for the record (history, audit); the search goes on without it
            worker_store(settings).put(storage.crop_key(query_key, corners), imaging.jpeg_bytes(crop, 90), "image/jpeg")
        except PapyrusError:
            pass
    features = _query_features(img, region, rectify=True)  # the corners marked: the sheet seen square-on
    words, signatures = (
        worker_vocabulary(settings).words_and_signatures(features.descriptors)
        if features.method == "sift"
        else (np.zeros(0, dtype=np.int64), None)
    )
    return PreparedQuery(
        imaging.model_input(crop), features, words, size, region, signatures  # type: ignore[arg-type]
    )


def embed_task(settings: Settings, prepared: PreparedQuery | np.ndarray) -> np.ndarray:
    """Stage 2: embed with the model cached on this worker."""
    from .model import embed_arrays

    _, source = _require_resolved(settings)
    model, _ = worker_model(source, settings.model_revision)
    arrays = prepared.model_input if isinstance(prepared, PreparedQuery) else prepared
    batch = arrays[None] if arrays.ndim == 3 else arrays
    return embed_arrays(model, batch)[0]


def _attach_thumbnails(settings: Settings, hits: list[Hit]) -> list[Hit]:
    store = worker_store(settings)
    for hit in hits:
        if hit.thumbnail is None and hit.thumb_key:
            try:
                hit.thumbnail = store.get(hit.thumb_key)
            except (KeyError, PapyrusError):
                hit.thumbnail = None  # a missing thumbnail must not lose the result
    return hits


def _first_stage_hits(candidates: Sequence[Any], ef: int | None) -> list[Hit]:
    """Hits of first-stage :class:`~papyrus_widgets.retrieval.shortlist.Candidate` s, in their order."""
    hits = []
    for rank, c in enumerate(candidates, start=1):
        first = c.words_score if c.words_score is not None else max(0.0, c.embedding_score or 0.0)
        hit = _hit(c.row, rank, None, first)
        hit.ef_search = ef
        hit.words_score = None if c.words_score is None else round(c.words_score, 6)
        hit.embedding_score = None if c.embedding_score is None else round(c.embedding_score, 6)
        hit.shortlist_score = hit.score
        hit.found_by = c.found_by
        hits.append(hit)
    return hits


def first_pass_list(
    conn: Any,
    words: np.ndarray,
    points: np.ndarray | None,
    size: Sequence[int],
    signatures: np.ndarray | None,
    n: int,
    filters: Mapping[str, Any] | None = None,
    vector: np.ndarray | None = None,
    url: str | None = None,
) -> list[dict[str, Any]]:
    """The first pass's word rows (:func:`index.word_candidates`), up to ``n`` but never fewer than
    :data:`~papyrus_widgets.retrieval.shortlist.WORD_CANDIDATES` asked for: the keypoints' ``words``
    scored per window of :data:`~papyrus_widgets.retrieval.shortlist.WINDOWS` of a photo of
    ``size`` (``points`` None: the query is one window, a region the user gave). ``url``: the
    database of ``conn``, under which this process keeps the matching pairs of all the keypoints
    for the photo's second look (:data:`PAIRS_CACHE`); None, or a region given: not kept."""
    from .retrieval import shortlist

    pairs = _word_pairs(conn, url, words, signatures, filters)
    if url is not None and points is not None:  # a region given is one window: it gets no second look
        _remember_pairs(url, words, signatures, filters, pairs)
    n = max(n, shortlist.WORD_CANDIDATES)
    return _windowed_list(conn, words, points, size, signatures, n, shortlist.WINDOWS, filters, vector, pairs)


def _windowed_list(
    conn: Any,
    words: np.ndarray,
    points: np.ndarray | None,
    size: Sequence[int],
    signatures: np.ndarray | None,
    n: int,
    windows: Sequence[Sequence[float]],
    filters: Mapping[str, Any] | None,
    vector: np.ndarray | None,
    pairs: index.WordPairs | None = None,
    url: str | None = None,
) -> list[dict[str, Any]]:
    """:func:`index.word_candidates` of the keypoints' ``words`` scored per window of ``windows``
    (:func:`~papyrus_widgets.retrieval.shortlist.query_windows`), ``n`` long; ``pairs``: these
    keypoints' matching pairs found before (:class:`index.WordPairs`), else the postings are read
    (on :data:`PAIR_CONNECTIONS` connections when ``url``, the database of ``conn``, is given)."""
    from .retrieval import shortlist

    kept, weights = shortlist.query_windows(words, points, size, windows=windows)
    keypoints = None  # each row's keypoint (its more words' rows share its point), for the diverse lists' option
    if points is not None and (index.queries.DIVERSE_SHARE is not None or index.queries.MIN_MATCHED):
        keypoints = np.unique(np.asarray(points), axis=0, return_inverse=True)[1].reshape(-1)[kept]
    words, signatures = words[kept], None if signatures is None else signatures[kept]
    found = pairs.subset(kept) if pairs is not None else _word_pairs(conn, url, words, signatures, filters)
    return index.word_candidates(conn, words, weights, n, filters, vector, signatures, found, keypoints)


def _word_pairs(
    conn: Any,
    url: str | None,
    words: np.ndarray,
    signatures: np.ndarray | None,
    filters: Mapping[str, Any] | None,
) -> index.WordPairs:
    """:func:`index.word_pairs` on ``conn`` and, when ``url`` (its database) is given, as many more
    of the pool's connections as :data:`PAIR_CONNECTIONS` asks for and are free."""
    spare = PAIR_CONNECTIONS - 1 if url is not None else 0
    with index.spare_connections(url or "", spare) as more:
        return index.word_pairs(conn, words, signatures, filters, more)


_PAIRS: dict[str, index.WordPairs] = {}
_PAIRS_LOCK = threading.Lock()


def _pairs_key(url: str, words: np.ndarray, signatures: np.ndarray | None, filters: Mapping[str, Any] | None) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(url.encode())
    digest.update(json.dumps(dict(filters or {}), sort_keys=True, default=str).encode())
    digest.update(np.ascontiguousarray(words, np.int32).tobytes())
    if signatures is not None:
        digest.update(np.ascontiguousarray(signatures, np.int64).tobytes())
    return digest.hexdigest()


def _remember_pairs(
    url: str,
    words: np.ndarray,
    signatures: np.ndarray | None,
    filters: Mapping[str, Any] | None,
    pairs: index.WordPairs,
) -> None:
    """Keep a photo's first-pass ``pairs`` for its second look (:data:`PAIRS_CACHE`)."""
    if PAIRS_CACHE <= 0:
        return
    key = _pairs_key(url, words, signatures, filters)
    with _PAIRS_LOCK:
        _PAIRS.pop(key, None)
        _PAIRS[key] = pairs
        while len(_PAIRS) > PAIRS_CACHE:
            _PAIRS.pop(next(iter(_PAIRS)))


def _remembered_pairs(
    url: str, words: np.ndarray, signatures: np.ndarray | None, filters: Mapping[str, Any] | None
) -> index.WordPairs | None:
    """The pairs :func:`first_pass_list` found for these very words in this process, or None."""
    if PAIRS_CACHE <= 0:
        return None
    with _PAIRS_LOCK:
        return _PAIRS.get(_pairs_key(url, words, signatures, filters))


def search_task(
    settings: Settings,
    vector: np.ndarray,
    k: int,
    filters: Mapping[str, Any] | None,
    ef_search: int | None = None,
    prepared: PreparedQuery | None = None,
    candidates: int | None = None,
) -> list[Hit]:
    """Stage 3, the first stage of retrieval: the references that share the most visual words with
    the query (``prepared``; :func:`index.word_candidates`), then the embedding's kNN
    (``ef_search``: see :func:`index.knn`) for those the words missed, fused
    (:func:`papyrus_widgets.retrieval.shortlist.fuse`). Returns ``candidates`` hits (default ``k``),
    ranked by the first stage; when no more than ``k`` are asked for they carry their thumbnails as
    bytes (with more, the confirming stage reorders them and fetches those of its best ``k``)."""
    from .retrieval import shortlist

    url, source = _require_resolved(settings)
    _, fingerprint = worker_model(source, settings.model_revision)
    n = max(k, candidates or k)
    with index.pooled_connection(url) as conn:
        knn_rows = index.knn(conn, vector, min(n, max(k, shortlist.EMBEDDING_CANDIDATES)), filters, ef_search=ef_search)
        word_rows: list[dict[str, Any]] = []
        recorded = index.get_meta(conn, "vocabulary")
        if prepared is not None and len(prepared.words) and recorded:
            fingerprint_words = worker_vocabulary(settings).fingerprint
            if recorded != fingerprint_words:
                raise ModelError(
                    f"the index's visual words were made with another vocabulary ({recorded}) than this search's "
                    f"({fingerprint_words}): set PAPYRUS_VOCABULARY to the one that built the index, or unset it."
                )
            from .retrieval.features import QUERY_MAX_KEYPOINTS

            words, signatures, points = query_rows(settings, prepared, QUERY_MAX_KEYPOINTS)
            word_rows = first_pass_list(
                conn,
                words,
                None if prepared.region_given else points,  # the region is the one window
                prepared.features.size,
                signatures,
                n,
                filters,
                vector,
                url,
            )
    if knn_rows and all(r["model"] != fingerprint for r in knn_rows):
        raise ModelError(
            f"the index was built with another model than {source}: search with the model that built it "
            "(unset PAPYRUS_MODEL) or re-ingest the collection with this one."
        )
    ef = knn_rows[0]["ef_search"] if knn_rows else None
    hits = _first_stage_hits(shortlist.fuse(word_rows, knn_rows)[:n], ef)
    if n == k:  # no confirming stage follows: these are the results (it fetches its own k's thumbnails)
        # chosen in the first stage's order (each window's best in turn), shown by score
        hits.sort(key=lambda h: -h.score)
        for rank, hit in enumerate(hits, start=1):
            hit.rank = rank
        _attach_thumbnails(settings, hits)
    return hits


def _reference_features_cache() -> Any:
    global _FEATURES
    if _FEATURES is None:
        from .retrieval.features import FeatureCache

        _FEATURES = FeatureCache()
    return _FEATURES


_FEATURES: Any = None


def reference_features(settings: Settings, image_key: str) -> Any:
    """Local features of the stored reference ``image_key``: kept in this process's LRU, read from
    the object store where ingest put them (``features/…npz``), else computed from the original and
    stored for next time (collections ingested before features were stored, or made with other
    bounds). Keys are content-addressed, so an entry never goes stale."""
    store = worker_store(settings)
    return _reference_features_cache().get((store.describe(), image_key), lambda: _stored_features(settings, image_key))


def _stored_features(settings: Settings, image_key: str) -> Any:
    """:func:`reference_features` without this process's LRU (``papyrus db rewords`` reads every
    reference once, which would only push out those the searches use)."""
    from .retrieval.features import Features, describe_reference, reference_params

    store = worker_store(settings)
    fkey = storage.features_key(image_key)
    try:
        stored = Features.from_bytes(store.get(fkey))
        if stored.params == reference_params():
            return stored
    except Exception:  # noqa: BLE001 - not stored (yet), the store failing, an unreadable .npz: recompute
        pass
    img = _decode_stored(settings, image_key, image_key, INGEST_SIDE)
    features = describe_reference(img, size=img.info.get("original_size", img.size))
    try:
        store.put(fkey, features.to_bytes())
    except PapyrusError:
        pass  # a cache fill: the search goes on without it
    return features


def _apply(hit: Hit, r: Any) -> Hit:
    """Copy one confirming result (a :class:`~papyrus_widgets.retrieval.Reranked`) onto its hit."""
    from .retrieval import clip

    hit.score = round(r.score, 6)
    v = r.verification
    hit.confirmed = bool(r.confirmed)
    hit.near_miss = bool(r.near_miss)
    if v is not None:
        hit.inliers = v.evidence  # its inliers, or the keypoints agreeing beyond chance when more
        hit.matches = v.matches
        hit.query_size = v.query_size
        hit.reference_size = v.reference_size
        if hit.confirmed and v.outline is not None and v.query_size is not None:
            hit.region = clip(v.outline, v.query_size)  # usable as corners: on the photo
    return hit


def _candidates(settings: Settings, hits: Sequence[Hit]) -> list[Any]:
    """What the confirming stage verifies: each hit with its reference's features to be read when needed."""
    from .retrieval import Candidate

    return [
        Candidate(h.score, functools.partial(reference_features, settings, h.image_key), h, h.image_key)
        for h in hits
        if h.image_key
    ]


RECTIFY_CLOSER_LOOK = True
"""Whether the closer look (:func:`_look_closer`) sees the region of its best match square-on: the
match's outline (the reference's corners in the photo) warped to the reference's own proportions
before SIFT (``features.extract_features``' ``rectify``), when the whole outline lies in the photo.
False: in the photo's own perspective, as before 2026-12-06 night (``bench_realphoto.py --trial
closer-unrectified``)."""


def _look_closer(settings: Settings, photo: Callable[[], Any], results: list[Any]) -> list[Any]:
    """When the strongest plausible match of ``results`` (confirmed or not) covers a small part of
    the photo, match its region again in full detail against it and the first
    :data:`REFINE_CANDIDATES`, keep the better evidence and re-rank; the region seen square-on
    (:data:`RECTIFY_CLOSER_LOOK`). ``photo``: the decoded query (decoded on first call, then kept)."""
    from .retrieval import clip, match, needs_closer_look, ranked
    from .retrieval.confirm import QueryIndex

    verified = [r.verification for r in results if r.verification is not None and r.verification.outline]
    best = max(verified, key=lambda v: v.inliers) if verified else None
    if best is None or not needs_closer_look(best):
        return results
    region = clip(best.outline, best.query_size)  # type: ignore[arg-type]
    aspect = None  # the reference's own proportions, when its whole outline lies in the photo
    inside = np.allclose(region, np.asarray(best.outline, dtype=np.float64))
    if RECTIFY_CLOSER_LOOK and inside and best.reference_size and min(best.reference_size) > 0:
        aspect = best.reference_size[0] / best.reference_size[1]
    try:
        detail = _query_features(photo(), region, rectify=aspect is not None, aspect=aspect)
    except (PapyrusError, ValueError):
        return results
    if len(detail) < 4:
        return results
    closer = QueryIndex(detail) if detail.method == "sift" else detail
    from .retrieval.confirm import ONE_MATCH_PER_IMAGE

    def scan(r: Any) -> Any:  # each scan once, for all its records (or each result on its own)
        return r.payload.image_key if ONE_MATCH_PER_IMAGE else id(r)

    again_for = results[:REFINE_CANDIDATES] + [r for r in results if r.verification is best]
    for key, image in {scan(r): r.payload.image_key for r in again_for}.items():
        try:
            again = match(closer, reference_features(settings, image))
        except Exception:  # noqa: BLE001 - evidence is a bonus
            continue
        for r in results:
            if scan(r) == key and (r.verification is None or again.evidence > r.verification.evidence):
                r.verification = dataclasses.replace(again)
    return ranked(results)


def second_look_list(
    url: str,
    words: np.ndarray,
    points: np.ndarray,
    size: Sequence[int],
    signatures: np.ndarray | None,
    seen: set[str],
    filters: Mapping[str, Any] | None = None,
    vector: np.ndarray | None = None,
    pairs: index.WordPairs | None = None,
) -> list[Any]:
    """The second look's candidates (:func:`_second_look`): the keypoints' ``words`` scored per window
    of :data:`~papyrus_widgets.retrieval.shortlist.SECOND_LOOK_WINDOWS`, up to
    :data:`SECOND_LOOK_CANDIDATES` references whose object keys are not in ``seen``, best first
    (:class:`~papyrus_widgets.retrieval.shortlist.Candidate` s). ``pairs``: the first pass's
    matching pairs of these very keypoints (:class:`index.WordPairs`), else their postings are read."""
    from .retrieval import shortlist

    n = len(seen) + SECOND_LOOK_CANDIDATES
    with index.pooled_connection(url) as conn:
        rows = _windowed_list(
            conn, words, points, size, signatures, n, shortlist.SECOND_LOOK_WINDOWS, filters, vector, pairs, url
        )
    return [c for c in shortlist.fuse(rows, []) if c.row["object_key"] not in seen][:SECOND_LOOK_CANDIDATES]


def _rarest_within(conn: Any, words: np.ndarray, budget: int | None) -> np.ndarray:
    """Which rows of ``words`` a list reads within ``budget`` postings
    (:data:`LATER_LOOK_POSTINGS`): a mask over the rows, the rows of the rarest words
    (:func:`index.word_frequencies`) taken first, a tie by their order, while the postings they read
    stay within it; every row when ``budget`` is None or they all fit."""
    if budget is None or not len(words):
        return np.ones(len(words), bool)
    df = index.word_frequencies(conn, words)
    order = np.argsort(df, kind="stable")
    kept = np.zeros(len(words), bool)
    kept[order[np.cumsum(df[order]) <= budget]] = True
    return kept


def second_look_rows(
    settings: Settings, url: str, prepared: PreparedQuery, filters: Mapping[str, Any] | None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, index.WordPairs | None]:
    """The second look's rows, ``(words, signatures, points, pairs)``: every keypoint's own word and
    all its more words (:func:`query_rows`; up to :data:`SECOND_LOOK_MAX_ROWS` rows when set, the
    rows after the first pass's within :data:`LATER_LOOK_POSTINGS`), and their matching pairs when
    the first pass ran in this process (its rows are the start of these; their pairs are kept,
    :data:`PAIRS_CACHE`, and only the rest's postings are read now), else None
    (:func:`second_look_list` reads them all)."""
    from .retrieval.features import QUERY_MAX_KEYPOINTS

    cap = SECOND_LOOK_MAX_ROWS
    words, signatures, points = query_rows(settings, prepared, None if cap is None else max(cap, QUERY_MAX_KEYPOINTS))
    first = _within_budget(len(prepared.words), len(words), QUERY_MAX_KEYPOINTS)  # the first pass's rows
    pairs = _remembered_pairs(url, words[:first], None if signatures is None else signatures[:first], filters)
    if first == len(words) or (pairs is None and LATER_LOOK_POSTINGS is None):  # nothing to read here
        return words, signatures, points, pairs
    with index.pooled_connection(url) as conn:
        kept = np.concatenate([np.ones(first, bool), _rarest_within(conn, words[first:], LATER_LOOK_POSTINGS)])
        words, points = words[kept], points[kept]
        signatures = None if signatures is None else signatures[kept]
        if pairs is not None and first < len(words):
            later = _word_pairs(conn, url, words[first:], None if signatures is None else signatures[first:], filters)
            pairs = pairs.joined(later)
    return words, signatures, points, pairs


def _second_look(
    settings: Settings,
    photo: Callable[[], Any],
    prepared: PreparedQuery,
    seen: set[str],
    filters: Mapping[str, Any] | None,
    vector: np.ndarray | None,
    found: Sequence[Sequence[Sequence[float]]] = (),
) -> list[Any]:
    """The second look at a photo searched without corners whose candidates confirmed nothing near
    its middle (a papyrus that fills a small part of a cluttered photo, perhaps beside another
    papyrus of the collection that was found instead; or one not in the collection): the photo's
    visual words scored per window of :data:`~papyrus_widgets.retrieval.shortlist.SECOND_LOOK_WINDOWS`
    (smaller than the first pass's), leaving out the keypoints inside the outlines ``found``
    already (their papyri explain them), up to :data:`SECOND_LOOK_CANDIDATES` references not
    ``seen`` yet (the first :data:`SECOND_LOOK_AFTER_OFF_CENTRE` of them when papyri were
    ``found``), confirmed like the first ones (and looked at closer). Returns their confirming
    results."""
    from .retrieval import confirm, shortlist
    from .retrieval.locate import outside

    url, _ = _require_resolved(settings)
    features = prepared.features
    if features.method != "sift" or not len(prepared.words):
        return []
    words, signatures, points, pairs = second_look_rows(settings, url, prepared, filters)
    if found:  # the papyri found already explain their keypoints: look at the rest
        rest = outside(points, found)
        if rest.sum() < shortlist.MIN_WINDOW_KEYPOINTS:
            return []
        words, points = words[rest], points[rest]
        signatures = None if signatures is None else signatures[rest]
        pairs = None if pairs is None else pairs.subset(rest)
    fresh = second_look_list(url, words, points, features.size, signatures, seen, filters, vector, pairs)
    if found:  # the first look confirmed papyri off the middle: a shorter look for one beside them
        fresh = fresh[:SECOND_LOOK_AFTER_OFF_CENTRE]
    candidates = _candidates(settings, _first_stage_hits(fresh, None))
    # stops at a confirmed match wherever it lies: the first look found nothing in the middle
    results = confirm(features, candidates, limit=len(candidates), aimed=False)
    return _look_closer(settings, photo, results)


TILTED_LOOK = True
"""Whether a photo searched without corners that neither look confirmed gets a third, tilted look
(:func:`_tilted_look`: a papyrus photographed at a steep angle). On since 2026-12-01 (evening): with Hamming
embedding, on 64 photos taken with the camera tilted 45-60° among 10,035 images (figure 0d's
trial of 2026-12-01, the benchmark's seeds) it found 3 more papyri (top-1 0.906 -> 0.953, top-5
0.922 -> 0.969), confirmed none of 16 photos of papyri not in the collection, and made such a
search ("no confirmed match") slower: 2.51 s p50 against 1.35 s. The first look's answer is shown
meanwhile (:meth:`SearchJob.interim_hits`), and searches that confirm a papyrus do not pay it.
With words alone (before signatures) it had found 2 more of 32 development photos (seed 77100)
and none more of figure 0d's, so it was off until then. Where a papyrus is still missed at such
angles its visual words do not find it even in a window drawn around it by hand, though its
keypoints match it: the words, not the confirming, are the limit there. Set it to False for the
search without it (``bench_realphoto.py --variants steep`` compares both)."""
TILTED_LOOK_CANDIDATES = 60
"""The tilted look confirms the first this many references of its own word list that are not among
its retries (:data:`TILTED_RETRIES`)."""
TILTED_LIST_PAST_RETRIES = True
"""Whether the tilted look's word list runs :data:`TILTED_LOOK_CANDIDATES` past the retries it sets
aside. Until 2026-12-05 it was cut at that many before they were set aside, so each retry in it
cost a fresh candidate (``bench_realphoto.py --trial tilted-cut`` runs it so)."""
TILTED_RETRIES = 10
"""… and the first look's first this many again (the photo's keypoints did not confirm them; its
tilted views' may)."""


def _tilted_look(
    settings: Settings,
    photo: Callable[[], Any],
    prepared: PreparedQuery,
    first: Sequence[Hit],
    filters: Mapping[str, Any] | None,
    vector: np.ndarray | None,
) -> list[Any]:
    """The third look at a photo searched without corners that the first two confirmed nothing in
    (:data:`TILTED_LOOK`): the photo seen through its tilted views
    (:func:`papyrus_widgets.retrieval.features.tilted_features`, as a square-on camera would show
    a sheet photographed at about 60°); the views' own visual words, scored per window of
    :data:`~papyrus_widgets.retrieval.shortlist.SECOND_LOOK_WINDOWS` (those within
    :data:`LATER_LOOK_POSTINGS`), list up to
    :data:`TILTED_LOOK_CANDIDATES` references, which with the first :data:`TILTED_RETRIES` of the
    first look's ``first`` are confirmed with the photo's keypoints and the views' together.
    Returns their confirming results (a reference tried before may come back with more inliers:
    :func:`_merged`)."""
    from .retrieval import confirm, shortlist
    from .retrieval.features import tilted_features

    url, _ = _require_resolved(settings)
    base = prepared.features
    if base.method != "sift" or not len(prepared.words):
        return []
    tilted = tilted_features(photo(), base)
    n = len(base)
    if len(tilted) == n:
        return []
    words, signatures = worker_vocabulary(settings).words_and_signatures(tilted.descriptors[n:])
    again = [h for h in first if h.image_key][:TILTED_RETRIES]
    tried = {h.image_key for h in again}
    with index.pooled_connection(url) as conn:
        kept = _rarest_within(conn, words, LATER_LOOK_POSTINGS)
        rows = _windowed_list(
            conn,
            words[kept],
            tilted.points[n:][kept],
            tilted.size,
            None if signatures is None else signatures[kept],
            TILTED_LOOK_CANDIDATES + (len(tried) if TILTED_LIST_PAST_RETRIES else 0),
            shortlist.SECOND_LOOK_WINDOWS,
            filters,
            vector,
            url=url,
        )
    listed = [h for h in _first_stage_hits(shortlist.fuse(rows, []), None) if h.image_key not in tried]
    candidates = _candidates(settings, again + listed[:TILTED_LOOK_CANDIDATES])
    # its views repeat the photo's structures: inliers alone confirm here (confirm.AGREEING)
    return confirm(tilted, candidates, limit=len(candidates), aimed=False, agreeing=False)


def _merged(first: list[Any], second: list[Any]) -> list[Any]:
    """The results of two looks, one per reference image of a record: where both tried one (a
    retry with the tilted views, :func:`_tilted_look`), the one with more evidence
    (``Verification.evidence``). A reference image is its object key and its record's key
    (:func:`_reference`): one scan may be indexed for two records (two texts on one papyrus, the
    same bytes), and both records come from each look. Until 2026-12-05 results were told apart by
    object key alone and a look matched such a scan once per record, stopping after the first
    confirmed, so the second stayed unverified and replaced the confirmed one; a look now matches
    the scan once and both records share its verification (:attr:`retrieval.Candidate.image`)."""

    def evidence(r: Any) -> int:
        return r.verification.evidence if r.verification is not None else -1

    again: dict[tuple[str | None, str | None], Any] = {}
    for r in second:
        other = again.get(_reference(r))
        if other is None or evidence(r) > evidence(other):
            again[_reference(r)] = r
    out = []
    for r in first:
        other = again.get(_reference(r))
        if other is not None and evidence(other) < evidence(r):
            again.pop(_reference(r))
            out.append(r)
        elif other is None:
            out.append(r)
    return out + [r for r in second if again.get(_reference(r)) is r]


MERGE_BY_RECORD = True
"""Whether :func:`_merged` tells results apart by record as well as by object key (False: by object
key alone, as before 2026-12-05 evening; ``bench_realphoto.py --trial one-key`` runs it so)."""


def _reference(result: Any) -> tuple[str | None, str | None]:
    """Which reference image of which record a confirming result is about: (object key, record key)."""
    return result.payload.image_key, result.payload.key if MERGE_BY_RECORD else None


@dataclass
class FirstLook:
    """What the confirming stage's first look found (:func:`first_look_task`), for the second
    (:func:`second_look_task`) and, while that runs, for the widget
    (:meth:`SearchJob.interim_hits`)."""

    hits: list[Hit]
    """Its best ``k``, ranked, with thumbnails: the answer if no second look is due."""
    results: list[Any] = field(default_factory=list, repr=False)
    """The confirming result of every candidate tried (:class:`~papyrus_widgets.retrieval.Reranked`)."""
    first: list[Hit] = field(default_factory=list, repr=False)
    """The first stage's candidates."""
    more: bool = False
    """Whether a second look is due (a photo without corners, nothing confirmed near its middle)."""
    whole: bool = False
    """Whether the whole photo is searched next (:func:`_whole_photo`: corners were given and their
    region confirmed nothing)."""


def first_look_task(
    settings: Settings,
    query_key: str,
    name: str,
    hits: list[Hit],
    k: int,
    prepared: PreparedQuery | None = None,
) -> FirstLook:
    """Stage 4, confirming, its first look: verify the first stage's candidates geometrically in
    rounds until one is confirmed (:func:`papyrus_widgets.retrieval.confirm`), then — when the
    papyrus found covers a small part of the photo — look at that region again in full detail and
    keep the better evidence (:func:`_look_closer`). A photo searched without corners whose
    candidates confirmed nothing near its middle
    (:func:`~papyrus_widgets.retrieval.confirm.in_the_middle`) is due a second look
    (:func:`second_look_task`); a search with corners whose region confirmed nothing, a search of
    the whole photo (:func:`_whole_photo`, :data:`WHOLE_PHOTO_AFTER_REGION`).

    Evidence is a bonus: a reference whose features cannot be had keeps its first-stage place, and
    a query whose features cannot be had (e.g. a search submitted without ``prepared``) is decoded
    here.
    """
    from .retrieval import confirm
    from .retrieval.confirm import in_the_middle

    if not hits:
        return FirstLook(hits)
    # copies: the search future's own result may be this very list (same worker), and a retried
    # task must not confirm twice
    hits = [dataclasses.replace(h, matches=list(h.matches)) for h in hits]
    try:
        query = (
            prepared.features
            if prepared is not None
            else _query_features(_decode_query(settings, query_key, name, PHOTO_MAX_SIDE), None)
        )
    except PapyrusError:
        return FirstLook(_attach_thumbnails(settings, hits[:k]))

    candidates = _candidates(settings, hits)
    whole_photo = prepared is None or not prepared.region_given
    results = confirm(query, candidates, aimed=whole_photo)
    if whole_photo:
        photo = functools.cache(lambda: _decode_query(settings, query_key, name, PHOTO_MAX_SIDE))
        results = _look_closer(settings, photo, results)
    aimed_at = any(in_the_middle(r.verification) for r in results)
    more = whole_photo and prepared is not None and SECOND_LOOK_CANDIDATES > 0 and not aimed_at
    first = [dataclasses.replace(h, matches=list(h.matches)) for h in hits] if more else []  # before _best edits them
    whole = not whole_photo and WHOLE_PHOTO_AFTER_REGION and not any(r.confirmed for r in results)
    return FirstLook(_best(settings, results, hits, k), results if more else [], first, more, whole)


def second_look_task(
    settings: Settings,
    query_key: str,
    name: str,
    look: FirstLook,
    k: int,
    prepared: PreparedQuery | None = None,
    filters: Mapping[str, Any] | None = None,
    vector: np.ndarray | None = None,
) -> list[Hit]:
    """Stage 4, confirming, its end: the whole photo searched when corners were given and their
    region confirmed nothing (:func:`_whole_photo`); the first look's answer when no second look is
    due; else the second look (:func:`_second_look`: smaller windows, more candidates, the keypoints outside the
    papyri found; ``filters`` as the search's, ``vector`` its embedding), and with
    :data:`TILTED_LOOK` a third (:func:`_tilted_look`) when nothing is confirmed at all. Returns the
    best ``k``: confirmed hits first (the one nearest the middle of the photo first), each with its
    region in the photo."""
    from .retrieval import clip, ranked
    from .retrieval.confirm import CONFIRM_AFTER_OFF_CENTRE

    if look.whole and prepared is not None and prepared.region is not None:
        return _whole_photo(settings, query_key, name, look, k, prepared.region, filters)
    if not look.more or prepared is None:
        return look.hits
    # a copy: the first look's result is what the widget shows meanwhile, and stays as it was
    look = copy.deepcopy(look)
    results, hits = look.results, look.first
    photo = functools.cache(lambda: _decode_query(settings, query_key, name, PHOTO_MAX_SIDE))
    found = [
        clip(v.outline, v.query_size)
        for r in results
        if r.confirmed and (v := r.verification) and v.outline and v.query_size
    ]
    try:
        seen = {h.image_key for h in hits if h.image_key}
        if found and CONFIRM_AFTER_OFF_CENTRE is not None:  # the first look's rounds ended early
            seen -= {r.payload.image_key for r in results if r.verification is None}  # may come again
        more = _second_look(settings, photo, prepared, seen, filters, vector, found)
    except PapyrusError:
        more = []  # the first look's answer stands
    results = ranked(results + more)
    if TILTED_LOOK and not any(r.confirmed for r in results):
        try:
            more = _tilted_look(settings, photo, prepared, hits, filters, vector)
        except PapyrusError:
            more = []
        results = ranked(_merged(results, more))
    return _best(settings, results, hits, k)


WHOLE_PHOTO_AFTER_REGION = True
"""Whether a search with corners whose region confirmed nothing searches the whole photo next, as
a search without corners does (first stage, then each look), and answers with a papyrus confirmed
there whose outline covers at least :data:`REGION_COVERED` of the corners' region
(:func:`_whole_photo`). The corners a person marks are a hint, not the truth: a few pixels off,
drawn around a fragment inside its scan, or a steep sheet whose proportions they do not give
(``features.RECTIFY_REGIONS``). A papyrus confirmed elsewhere in the photo is not taken for the
one marked. Costs only a search whose region confirmed nothing: about the time of a search without
corners more. False: the region's answer stands, as before 2026-12-07."""
REGION_COVERED = 0.5
"""How much of the corners' region a papyrus confirmed in the whole photo must cover to be the
answer (:func:`papyrus_widgets.retrieval.locate.covered`)."""


def _whole_photo(
    settings: Settings,
    query_key: str,
    name: str,
    look: FirstLook,
    k: int,
    region: Sequence[Sequence[float]],
    filters: Mapping[str, Any] | None,
) -> list[Hit]:
    """The corners' region confirmed nothing (``look``): the whole photo searched as without corners
    (:func:`prepare_task` to :func:`verify_task`, in this task); its confirmed papyri whose outline
    covers :data:`REGION_COVERED` of ``region`` come first, marked ``Hit.whole_photo``, then its
    other hits. Where it confirms none there, the region's answer (``look.hits``) stands."""
    from .retrieval.confirm import CONFIRM_MAX
    from .retrieval.locate import covered

    try:
        whole = prepare_task(settings, query_key, name, None)
        vector = embed_task(settings, whole)
        hits = search_task(settings, vector, k, filters, None, whole, max(k, CONFIRM_MAX))
        found = verify_task(settings, query_key, name, hits, k, whole, filters, vector)
    except PapyrusError:
        return look.hits
    there = [h for h in found if h.confirmed and h.region and covered(region, h.region) >= REGION_COVERED]
    if not there:
        return look.hits
    taken = {id(h) for h in there}
    out = there + [h for h in found if id(h) not in taken]
    for rank, h in enumerate(out, start=1):
        h.rank = rank
        h.whole_photo = id(h) in taken
    return out


def _best(settings: Settings, results: list[Any], hits: list[Hit], k: int) -> list[Hit]:
    """The best ``k`` of confirming ``results`` (then the hits that had nothing to confirm
    against), ranked from 1, with their thumbnails."""
    ordered = [_apply(r.payload, r) for r in results]
    ordered += [h for h in hits if not h.image_key]
    out = ordered[:k]
    for rank, h in enumerate(out, start=1):
        h.rank = rank
    return _attach_thumbnails(settings, out)


def verify_task(
    settings: Settings,
    query_key: str,
    name: str,
    hits: list[Hit],
    k: int,
    prepared: PreparedQuery | None = None,
    filters: Mapping[str, Any] | None = None,
    vector: np.ndarray | None = None,
) -> list[Hit]:
    """Stage 4, confirming, in one call: :func:`first_look_task`, then :func:`second_look_task`
    (a search submits them as two futures, so that the first look's answer can be shown while
    the second runs)."""
    look = first_look_task(settings, query_key, name, hits, k, prepared)
    return second_look_task(settings, query_key, name, look, k, prepared, filters, vector)


# --- small tasks for the widget ------------------------------------------------------------------


def suggest_corners_task(settings: Settings, query_key: str, name: str) -> list[list[float]] | None:
    """Corners of the papyrus region of a stored query (TL, TR, BR, BL) in the pixels of the image
    as stored (after EXIF orientation), or None when no separate region stands out."""
    img = _decode_stored(settings, query_key, name, 1024, settings.max_upload_bytes)
    corners = imaging.suggest_corners(img)
    if corners is None:
        return None
    width, height = img.info.get("original_size", img.size)
    sx, sy = width / img.size[0], height / img.size[1]
    return [[round(x * sx, 1), round(y * sy, 1)] for x, y in corners]


def preview_task(
    settings: Settings, key: str, max_side: int = 1024, quality: int = 85, name: str | None = None
) -> bytes:
    """A JPEG (``quality``) of the stored image ``key`` whose long side is at most ``max_side``
    pixels, turned upright as its EXIF orientation says; ``name`` is what a failure calls it."""
    return imaging.jpeg_bytes(_decode_stored(settings, key, name or key, max_side), quality=quality)


# --- the job handle ----------------------------------------------------------------------------


def error_message(exc: BaseException) -> str:
    """One readable line for any failure of a job."""
    if isinstance(exc, PapyrusError):
        return str(exc)
    name = type(exc).__name__
    if name == "KilledWorker":
        return (
            "a Dask worker died while running this job (out of memory or killed) and the retries were used "
            "up: try again; if it repeats, check the workers' memory."
        )
    if name in ("CancelledError", "FutureCancelledError"):
        return "the job was cancelled."
    if isinstance(exc, TimeoutError):
        return "the job timed out: check that the Dask workers are running (papyrus doctor)."
    return f"the job failed ({name}: {exc})."


def detach_error(exc: BaseException) -> BaseException:
    """A copy of the error a failed future raised, to raise on; the original loses its traceback.

    ``Future.result()`` raises the very exception object the client keeps for the future. Raising
    it hangs the caller's frames on it, and through them the job and its futures: the client then
    never releases a failed job's futures (zombie tasks in the scheduler). Raise the copy instead.
    """
    exc.__traceback__ = None
    exc.__context__ = None
    try:
        clone = copy.copy(exc)
    except Exception:  # noqa: BLE001 - an exception class that cannot be copied
        return JobError(error_message(exc))
    return clone if isinstance(clone, BaseException) else JobError(error_message(exc))


class SearchJob:
    """Handle of one search running on the cluster as a chain of futures."""

    def __init__(
        self,
        client: Any,
        futures: list[tuple[str, Any]],
        name: str,
        query_key: str | None = None,
        crop_key: str | None = None,
    ):
        self.id = uuid.uuid4().hex[:12]
        self.name = name
        self.query_key = query_key
        """Object key of the stored query image (what ``Hit.matches`` query pixels refer to)."""
        self.crop_key = crop_key
        """Where the deskewed crop is stored once the preparing stage ran (searches with corners)."""
        self._client = client
        self._futures = futures  # [(stage, future)] in order
        self._started = time.monotonic()
        self._finished: float | None = None
        self._cancelled = False
        self._lock = threading.Lock()
        self._callbacks: list[Callable[["SearchJob"], None]] = []
        self._fired = False
        self.verified = any(stage == "verifying" for stage, _ in futures)
        """Whether the job has a confirming stage."""
        self._interim: list[Hit] | None = None
        futures[-1][1].add_done_callback(self._on_last_done)

    def _on_last_done(self, _future: Any) -> None:
        with self._lock:
            if self._finished is None:
                self._finished = time.monotonic()
            if self._fired:
                return
            self._fired = True
            callbacks = list(self._callbacks)
        for fn in callbacks:
            fn(self)

    def add_done_callback(self, fn: Callable[["SearchJob"], None]) -> None:
        """Call ``fn(job)`` once when the job ends (from the client's thread), or now if it has."""
        with self._lock:
            if not self._fired:
                self._callbacks.append(fn)
                return
        fn(self)

    def elapsed(self) -> float:
        end = self._finished if self._finished is not None else time.monotonic()
        return end - self._started

    def done(self) -> bool:
        return self._cancelled or self._futures[-1][1].done()

    def _failure(self) -> BaseException | None:
        for _stage, fut in self._futures:
            if fut.status in ("error", "lost"):
                try:
                    return fut.exception(timeout=5) or JobError("the job failed.")
                except Exception as exc:  # noqa: BLE001
                    return exc
        return None

    def status(self) -> dict[str, Any]:
        """``{"state", "stage", "elapsed", "message"}`` without blocking."""
        elapsed = round(self.elapsed(), 2)
        if self._cancelled or any(f.status == "cancelled" for _, f in self._futures):
            return {"state": "cancelled", "stage": "cancelled", "elapsed": elapsed, "message": "cancelled"}
        failure = self._failure()
        if failure is not None:
            return {"state": "error", "stage": "error", "elapsed": elapsed, "message": error_message(failure)}
        for stage, fut in self._futures:
            if fut.status == "pending":
                return {"state": "running", "stage": stage, "elapsed": elapsed, "message": ""}
        return {"state": "done", "stage": "done", "elapsed": elapsed, "message": ""}

    def interim_hits(self) -> list[Hit] | None:
        """While a second look runs (:func:`second_look_task`), the first look's answer: its best
        ``k`` as confirmed so far (``Results.verdict`` of them says whether any is); None before
        the first look ends, when no second look is due, and once the job is done (then
        :meth:`hits`). Fetches them once, then answers from memory."""
        if not self.verified or len(self._futures) < 2 or self.done() or self._cancelled:
            return None
        first = self._futures[-2][1]
        if first.status != "finished":
            return None
        if self._interim is None:
            try:
                look = first.result(timeout=5)
            except Exception:  # noqa: BLE001 - the job's own status reports a failure
                return None
            self._interim = list(look.hits) if isinstance(look, FirstLook) and (look.more or look.whole) else []
        return list(self._interim) or None

    def hits(self, timeout: float | None = None) -> list[Hit]:
        """The hits (waits up to ``timeout`` s); raises a :class:`PapyrusError` if the job failed and
        :class:`TimeoutError` if it is still running after ``timeout`` s (it keeps running)."""
        if self._cancelled:
            raise JobError("the search was cancelled.")
        last = self._futures[-1][1]
        try:
            return last.result(timeout=timeout)
        except Exception as exc:  # noqa: BLE001
            if isinstance(exc, TimeoutError) and not last.done():
                raise TimeoutError(f"the search is still running after {timeout} s.") from None
            if isinstance(exc, PapyrusError):
                raise detach_error(exc) from None
            detach_error(exc)
            failure = self._failure()
            raise JobError(error_message(failure or exc)) from None

    def cancel(self) -> None:
        self._cancelled = True
        self._client.cancel([f for _, f in self._futures])
        self._on_last_done(None)

    def __repr__(self) -> str:
        s = self.status()
        return f"<SearchJob {self.id} {self.name!r} {s['stage']} {s['elapsed']:.1f}s>"


def submit_search(client: Any, settings: Settings, query_key: str, *, name: str, request: SearchRequest) -> SearchJob:
    """Submit prepare → embed → search (→ verify: first look → second look) as three (five)
    futures for the already-valid ``request`` (``request.verify`` None counts as off); returns at
    once. With verification the search stage hands up to
    :data:`~papyrus_widgets.retrieval.confirm.CONFIRM_MAX` candidates to the confirming stage."""
    from .retrieval.confirm import CONFIRM_MAX

    k, corners, filters, ef_search = request.k, request.corner_list, request.filter_dict, request.ef_search
    verify = bool(request.verify)
    tag = uuid.uuid4().hex[:8]
    opts = dict(pure=False, priority=SEARCH_PRIORITY, retries=1)
    prepared = client.submit(prepare_task, settings, query_key, name, corners, key=f"papyrus-prepare-{tag}", **opts)
    vector = client.submit(embed_task, settings, prepared, key=f"papyrus-embed-{tag}", **opts)
    n = max(k, CONFIRM_MAX) if verify else k
    hits = client.submit(
        search_task, settings, vector, k, filters, ef_search, prepared, n, key=f"papyrus-search-{tag}", **opts
    )
    stages = list(zip(STAGES[1:4], (prepared, vector, hits)))
    if verify:  # two futures, one stage: the first look's answer is there while the second runs
        look = client.submit(
            first_look_task, settings, query_key, name, hits, k, prepared, key=f"papyrus-verify-{tag}", **opts
        )
        checked = client.submit(
            second_look_task, settings, query_key, name, look, k, prepared, filters, vector,
            key=f"papyrus-look-again-{tag}", **opts
        )
        stages += [(STAGES[4], look), (STAGES[4], checked)]
    crop = storage.crop_key(query_key, corners) if corners is not None else None
    return SearchJob(client, stages, name, query_key=query_key, crop_key=crop)


# --- ingest ------------------------------------------------------------------------------------


@dataclass
class IngestItem:
    path: str
    record: PapyrusRecord
    upload_key: str | None = None
    """Where the client staged the scan's bytes in the object store (``storage.upload_key``) for
    workers that cannot read ``path``; None: the worker reads ``path`` itself."""


@dataclass
class BatchReport:
    added: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


NOT_ON_WORKER = (
    "not found on the worker: a worker on another machine needs the files on a shared file system, "
    "or an ingest with upload (papyrus ingest --upload)"
)


def load_scans(
    items: Sequence[IngestItem],
    failed: list[tuple[str, str]],
    store: storage.ObjectStore,
    missing: str | None = None,
) -> list[tuple[IngestItem, bytes, str]]:
    """``(item, bytes, sha256)`` of each scan, read from its upload in ``store`` or else from its
    path; what cannot be read goes into ``failed`` with the reason (``missing``: the reason for a
    file that is not there, when it should say more than the OS does)."""
    loaded: list[tuple[IngestItem, bytes, str]] = []
    for item in items:
        try:
            data = store.get(item.upload_key) if item.upload_key else Path(item.path).read_bytes()
        except KeyError:
            failed.append((item.path, "its upload is gone from the object store: run the ingest again"))
            continue
        except OSError as exc:
            why = missing if missing and isinstance(exc, FileNotFoundError) else f"cannot read the file: {exc.strerror}"
            failed.append((item.path, why))
            continue
        loaded.append((item, data, imaging.sha256_hex(data)))
    return loaded


_Item = TypeVar("_Item")


def plan_batches(items: Sequence[_Item], batch_size: int, slots: int = 1) -> list[list[_Item]]:
    """``items`` cut into batches of at most ``batch_size``, in order, their number a multiple of
    ``slots`` (the worker threads that run them side by side) where there are items enough, and
    their sizes differing by one at most: the workers then finish together instead of one waiting
    on the last full batch of another (56 scans in batches of 8 on 2 workers: 8 of 7, not 4 + 3
    of 8)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    n = len(items)
    count = -(-n // batch_size)
    slots = max(1, slots)
    count = min(n, -(-count // slots) * slots)
    bounds = [n * i // count for i in range(count + 1)] if count else [0]
    return [list(items[a:b]) for a, b in zip(bounds, bounds[1:])]


INGEST_SIDE = 1024
"""Long side (px) at which ingest decodes a scan (thumbnail, model input, local features); the
features a search makes again for a stored reference (:func:`reference_features`) decode it so
too, so that they are the ones ingest makes (decoded at the features' own 768 px they share
under half their visual words)."""

INGEST_STAGES = (
    "read + sha256",
    f"decode (max_side {INGEST_SIDE})",
    "object store writes",
    "thumbnail (256 px JPEG)",
    "local features (SIFT at 768 px)",
    "visual words (quantise + weights)",
    "model input (resize 224, normalise)",
    "forward (batch)",
    "binary COPY (index.add_images)",
)
"""The steps of :func:`ingest_batch_task`, by the names its ``stage`` timer is called with."""


def _check_vocabulary(conn: Any, settings: Settings, vocabulary: Any, instead: str) -> None:
    """Refuse to add words of ``vocabulary`` to an index whose words another one made (the search
    would compare words of two vocabularies); ``instead``: what the message offers to do."""
    recorded = index.get_meta(conn, "vocabulary")
    if recorded and recorded != vocabulary.fingerprint and index.has_words(conn):
        raise ModelError(
            f"the index's visual words were made with another vocabulary ({recorded}) than "
            f"{settings.vocabulary or 'the shipped one'} ({vocabulary.fingerprint}): {instead}, "
            "or unset PAPYRUS_VOCABULARY to use the index's."
        )


def _postings(vocabulary: Any, features: Any) -> tuple[Any, Any, Any]:
    """A reference's postings for the word index, ``(words, weights, signatures)``
    (:func:`~papyrus_widgets.retrieval.shortlist.document_postings` of its features' words); Nones
    for features other than SIFT, which have no visual words."""
    from .retrieval.shortlist import document_postings

    if features.method != "sift":
        return None, None, None
    return document_postings(*vocabulary.words_and_signatures(features.descriptors))


def _no_stage(name: str) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


@contextlib.contextmanager
def one_opencv_thread() -> Any:
    """OpenCV on one thread while the block runs (as a decorator: while the function runs), then as
    it was. For tasks planned one per worker slot (ingest and rewording batches, :func:`plan_batches`):
    every core already runs a batch, and OpenCV's own threads (a thread per core in each worker
    process, its default) would only compete with the other batches. Searches keep them: a search's
    features are made while the other slots are mostly idle. Measured (2026-12-06, 56 Heidelberg
    scans into an emptied index on a warm 2-worker LocalCluster, 2 cores, two alternated pairs of
    processes, median of each process's last 3 of 4 runs): ingest 4.19 and 4.17 images/s against
    3.90 and 3.91 with OpenCV's default, 1.07x. The features are the same: OpenCV's SIFT gives the
    same keypoints and descriptors on any number of threads."""
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


@one_opencv_thread()
def ingest_batch_task(
    settings: Settings,
    items: Sequence[IngestItem],
    stage: Callable[[str], contextlib.AbstractContextManager[Any]] | None = None,
) -> BatchReport:
    """Read, store (original, thumbnail, local features), embed, find the visual words and COPY one
    batch of images; skips what is indexed.

    ``stage``: called with each step's name (:data:`INGEST_STAGES`) around that step, as a context
    manager; the ingest benchmark passes a stopwatch to time the real steps."""
    from .model import embed_arrays
    from .retrieval.features import describe_reference

    step = stage or _no_stage
    reading, decoding, writing, thumbnailing, describing, quantising, inputting, forwarding, copying = INGEST_STAGES
    url, source = _require_resolved(settings)
    model, fingerprint = worker_model(source, settings.model_revision)
    vocabulary = worker_vocabulary(settings)
    store = worker_store(settings)
    index.get_pool(url)  # a server that is down fails the first batch here, before any work
    report = BatchReport()
    with step(reading):
        loaded = load_scans(items, report.failed, store, missing=NOT_ON_WORKER)
    with index.pooled_connection(url) as conn:
        other = index.other_model(conn, fingerprint)
        if other:
            raise ModelError(
                f"the index holds vectors of another model ({other}); {source} would mix them: "
                "ingest into a new database (PAPYRUS_DATABASE_URL / PAPYRUS_DATA_DIR) or use the index's model."
            )
        present = index.existing_images(conn, [(it.record.key, sha) for it, _, sha in loaded])
        _check_vocabulary(conn, settings, vocabulary, "ingest into a new database")
    rows: list[index.ImageRow] = []
    arrays: list[np.ndarray] = []
    for item, data, sha in loaded:
        if (item.record.key, sha) in present:
            report.skipped += 1
            continue
        name = Path(item.path).name
        try:
            with step(decoding):
                img = imaging.decode_image(
                    data, max_pixels=settings.max_image_pixels, max_side=INGEST_SIDE, name=name
                )
            width, height = img.info.get("original_size", img.size)
            ext = storage.extension_for(name, img.info.get("format"))
            key = storage.object_key(storage.ORIGINALS, sha, ext)
            thumb_key = storage.object_key(storage.THUMBNAILS, sha, ".jpg")
            with step(writing):
                store.put(key, data, "image/jpeg" if ext == ".jpg" else "application/octet-stream")
            with step(thumbnailing):
                thumb = imaging.thumbnail_bytes(img, settings.thumbnail_size)
            with step(writing):
                store.put(thumb_key, thumb, "image/jpeg")
            # the words index the scan for the first stage; the confirming stage reads the stored
            # features instead of decoding the scan
            with step(describing):
                features = describe_reference(img, size=(int(width), int(height)))
            with step(writing):
                store.put(storage.features_key(key), features.to_bytes())
            with step(quantising):
                words, word_weights, word_signatures = _postings(vocabulary, features)
            with step(inputting):
                arrays.append(imaging.model_input(img))
        except ImageError as exc:
            report.failed.append((item.path, str(exc)))
            continue
        rows.append(
            index.ImageRow(
                record=item.record,
                sha256=sha,
                source_name=name,
                object_key=key,
                thumb_key=thumb_key,
                width=int(width),
                height=int(height),
                model=fingerprint,
                embedding=np.zeros(index.EMBEDDING_DIM, dtype=np.float32),
                words=words,
                word_weights=word_weights,
                word_signatures=word_signatures,
                words_params=features.params,
            )
        )
    if rows:
        with step(forwarding):
            vectors = embed_arrays(model, np.stack(arrays))
        for row, vec in zip(rows, vectors):
            row.embedding = vec
        with step(copying), index.pooled_connection(url) as conn:
            added, skipped = index.add_images(conn, rows)
            index.set_meta(conn, "model", source)
            index.set_meta(conn, "vocabulary", vocabulary.fingerprint)
            index.set_meta(conn, "vocabulary_path", settings.vocabulary or "")
        report.added += added
        report.skipped += skipped
    return report


# --- rewording: the visual words made again from the references' current features ---------------


@dataclass
class RewordBatch:
    rewritten: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(object key, why) of images whose words stay as they were."""


@one_opencv_thread()
def reword_batch_task(settings: Settings, images: Sequence[tuple[int, str]]) -> RewordBatch:
    """Make the visual words of indexed ``images`` ((image id, object key of the original)) again
    from their current features (:func:`_stored_features`: the stored ones when made as this
    version makes them, else made from the original and stored) and put them in place of the old
    ones with their params, in one transaction for the batch. An image whose original cannot be
    read or decoded keeps its words and is reported."""
    url, _ = _require_resolved(settings)
    vocabulary = worker_vocabulary(settings)
    with index.pooled_connection(url) as conn:
        _check_vocabulary(conn, settings, vocabulary, "rewording cannot mix them")
    report = RewordBatch()
    worded: list[index.ImageWords] = []
    for image_id, key in images:
        try:
            features = _stored_features(settings, key)
        except KeyError:
            report.failed.append((key, "its original is gone from the object store: its words stay as they were"))
            continue
        except ImageError as exc:
            report.failed.append((key, f"{exc}: its words stay as they were"))
            continue
        words, weights, signatures = _postings(vocabulary, features)
        if words is None:
            report.failed.append((key, f"its features are {features.method}, which have no visual words"))
            continue
        worded.append(index.ImageWords(image_id, key, words, weights, signatures, features.params))
    with index.pooled_connection(url) as conn:
        report.rewritten = index.replace_words(conn, worded)
    return report
