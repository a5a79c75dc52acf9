"""The Dask side: worker-cached resources, the search chain of futures, the ingest tasks.

A search is three or four futures, each a stage the widget shows:
``prepare`` (decode safely, deskew by corners, model input) → ``embed`` (worker-cached model) →
``search`` (kNN in pgvector, thumbnails attached as bytes) → ``verify`` (optional: re-rank the top
hits by local features, :mod:`papyrus_widgets.verify`, with the inlier matches as evidence).
Tasks receive a :class:`~papyrus_widgets.config.Settings` whose ``database_url`` and ``model``
are already resolved by the engine, so a worker never guesses.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import imaging, index, objects
from .config import Settings
from .errors import ImageError, JobError, ModelError, PapyrusError
from .metadata import PapyrusRecord

SEARCH_PRIORITY = 10  # searches overtake ingest batches on a shared cluster
STAGES = ("queued", "preparing", "embedding", "searching", "verifying", "done")
VERIFY_BY_DEFAULT = True
"""Searches verify their top hits unless asked not to (``verify=False``) or configured not to
(``Settings.verify`` / ``PAPYRUS_VERIFY=0``)."""
VERIFY_CANDIDATES = 10
"""With verification, the search fetches ``max(k, VERIFY_CANDIDATES)`` candidates, re-ranks the
first ``VERIFY_CANDIDATES`` of them by local features, and returns the best ``k``."""


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
def _store_for(settings: Settings) -> objects.ObjectStore:
    return objects.open_store(settings)


def worker_store(settings: Settings) -> objects.ObjectStore:
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


def _require_resolved(settings: Settings) -> tuple[str, str]:
    if not settings.database_url or not settings.model:
        raise JobError("internal error: a task received unresolved settings (no database URL or model).")
    return settings.database_url, settings.model


# --- hits --------------------------------------------------------------------------------------


@dataclass
class Hit:
    """One search result: a reference image of a papyrus, with its catalogue record."""

    rank: int
    score: float
    key: str
    hgv_id: str | None
    tm_id: str | None
    inventory: str | None
    inventory_key: str | None
    collection: str | None
    title: str | None
    date_text: str | None
    date_from: int | None
    date_to: int | None
    place: str | None
    papyri_info_url: str | None
    image_urls: list[str] = field(default_factory=list)
    source_name: str | None = None
    image_key: str | None = None
    thumb_key: str | None = None
    thumbnail: bytes | None = field(default=None, repr=False)
    # set by the verifying stage (None / empty when the search was not verified):
    embedding_score: float | None = None
    """The cosine similarity of the embeddings; ``score`` blends it with the verification."""
    inliers: int | None = None
    """Local-feature matches that agree on one homography (RANSAC inliers)."""
    matches: list[list[float]] = field(default_factory=list, repr=False)
    """Up to 50 inlier pairs ``[qx, qy, rx, ry]``: query pixels (the photo as uploaded, after EXIF
    orientation) and reference pixels (the stored original)."""
    ef_search: int | None = None
    """The ``hnsw.ef_search`` the kNN query ran with, as the server reported it."""
    query_size: list[int] | None = None
    """``[width, height]`` of the query the ``matches`` refer to (the photo as stored, EXIF-upright)."""
    reference_size: list[int] | None = None
    """``[width, height]`` of the stored original of this reference that the ``matches`` refer to."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (everything but the thumbnail bytes and the query's ef_search)."""
        d = asdict(self)
        d.pop("thumbnail")
        d.pop("ef_search")
        return d


def _hit(row: Mapping[str, Any], rank: int, thumbnail: bytes | None) -> Hit:
    return Hit(
        rank=rank,
        score=round(1.0 - float(row["distance"]), 6),
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


def prepare_task(
    settings: Settings, query_key: str, name: str, corners: Sequence[Sequence[float]] | None
) -> np.ndarray:
    """Stage 1: fetch the stored query, decode it safely, deskew by corners, make model input."""
    data = worker_store(settings).get(query_key)
    img = imaging.decode_image(
        data, max_pixels=settings.max_image_pixels, max_bytes=settings.max_upload_bytes, max_side=2048, name=name
    )
    if corners is not None:
        # corners are in the pixels of the original (EXIF-upright) image; the decode may be smaller
        ow, oh = img.info.get("original_size", img.size)
        sx, sy = img.width / ow, img.height / oh
        img = imaging.deskew(img, [[float(x) * sx, float(y) * sy] for x, y in corners])
        try:  # kept for the record (history, audit); the search goes on without it
            worker_store(settings).put(objects.crop_key(query_key, corners), imaging.jpeg_bytes(img, 90), "image/jpeg")
        except PapyrusError:
            pass
    return imaging.model_input(img)


def embed_task(settings: Settings, arrays: np.ndarray) -> np.ndarray:
    """Stage 2: embed with the model cached on this worker."""
    from .model import embed_arrays

    _, source = _require_resolved(settings)
    model, _ = worker_model(source, settings.model_revision)
    batch = arrays[None] if arrays.ndim == 3 else arrays
    return embed_arrays(model, batch)[0]


def search_task(
    settings: Settings,
    vector: np.ndarray,
    k: int,
    filters: Mapping[str, Any] | None,
    ef_search: int | None = None,
) -> list[Hit]:
    """Stage 3: kNN in pgvector (``ef_search``: see :func:`index.knn`), then the thumbnails of
    the hits as bytes."""
    url, source = _require_resolved(settings)
    _, fingerprint = worker_model(source, settings.model_revision)
    with index.pooled_connection(url) as conn:
        rows = index.knn(conn, vector, k, filters, ef_search=ef_search)
    if rows and all(r["model"] != fingerprint for r in rows):
        raise ModelError(
            f"the index was built with another model than {source}: search with the model that built it "
            "(unset PAPYRUS_MODEL) or re-ingest the collection with this one."
        )
    store = worker_store(settings)
    hits = []
    for rank, row in enumerate(rows, start=1):
        try:
            thumb: bytes | None = store.get(row["thumb_key"])
        except (KeyError, PapyrusError):
            thumb = None  # a missing thumbnail must not lose the result
        hits.append(_hit(row, rank, thumb))
    return hits


def _reference_features_cache() -> Any:
    global _FEATURES
    if _FEATURES is None:
        from .verify import FeatureCache

        _FEATURES = FeatureCache()
    return _FEATURES


_FEATURES: Any = None


def reference_features(settings: Settings, image_key: str) -> Any:
    """Local features of the stored reference ``image_key``: kept in this process's LRU, read from
    the object store where ingest put them (``features/…npz``), else computed from the original and
    stored for next time (collections ingested before features were stored, or made with other
    bounds). Keys are content-addressed, so an entry never goes stale."""
    from .verify import MAX_SIDE, Features, extract_features, feature_params

    store = worker_store(settings)
    fkey = objects.features_key(image_key)

    def compute() -> Any:
        try:
            stored = Features.from_bytes(store.get(fkey))
            if stored.params == feature_params():
                return stored
        except Exception:  # noqa: BLE001 - not stored (yet), the store failing, an unreadable .npz: recompute
            pass
        data = store.get(image_key)
        img = imaging.decode_image(data, max_pixels=settings.max_image_pixels, max_side=MAX_SIDE, name=image_key)
        features = extract_features(img, size=img.info.get("original_size"))
        try:
            store.put(fkey, features.to_bytes())
        except PapyrusError:
            pass  # a cache fill: the search goes on without it
        return features

    return _reference_features_cache().get((store.describe(), image_key), compute)


def verify_task(settings: Settings, query_key: str, name: str, hits: list[Hit], k: int) -> list[Hit]:
    """Stage 4: re-rank the first :data:`VERIFY_CANDIDATES` hits by local-feature geometric
    verification, blend the scores, attach the inlier matches, return the best ``k``.

    Evidence is a bonus: a reference whose features cannot be had keeps its embedding score, and
    a query that cannot be decoded here (it was decoded by ``prepare``) returns the hits as found.
    """
    from .verify import MAX_SIDE, Candidate, extract_features, rerank

    if not hits:
        return hits
    # copies: the search future's own result may be this very list (same worker), and a retried
    # task must not blend twice
    hits = [dataclasses.replace(h, matches=list(h.matches)) for h in hits]
    head, tail = hits[:VERIFY_CANDIDATES], hits[VERIFY_CANDIDATES:]
    try:
        data = worker_store(settings).get(query_key)
        img = imaging.decode_image(
            data,
            max_pixels=settings.max_image_pixels,
            max_bytes=settings.max_upload_bytes,
            max_side=MAX_SIDE,
            name=name,
        )
        query = extract_features(img, size=img.info.get("original_size"))
    except PapyrusError:
        return hits[:k]
    candidates = [
        Candidate(h.score, functools.partial(reference_features, settings, h.image_key), h) for h in head if h.image_key
    ]
    ordered: list[Hit] = []
    for r in rerank(query, candidates):
        hit: Hit = r.payload
        hit.embedding_score = r.embedding_score
        hit.score = round(r.score, 6)
        if r.verification is not None:
            hit.inliers = r.verification.inliers
            hit.matches = r.verification.matches
            hit.query_size = r.verification.query_size
            hit.reference_size = r.verification.reference_size
        ordered.append(hit)
    ordered += [h for h in head if not h.image_key] + tail
    for h in tail:
        h.embedding_score = h.score
    out = ordered[:k]
    for rank, h in enumerate(out, start=1):
        h.rank = rank
    return out


# --- small tasks for the widget ------------------------------------------------------------------


def suggest_corners_task(settings: Settings, query_key: str, name: str) -> list[list[float]] | None:
    """Corners of the papyrus region of a stored query (TL, TR, BR, BL) in the pixels of the image
    as stored (after EXIF orientation), or None when no separate region stands out."""
    data = worker_store(settings).get(query_key)
    img = imaging.decode_image(
        data, max_pixels=settings.max_image_pixels, max_bytes=settings.max_upload_bytes, max_side=1024, name=name
    )
    corners = imaging.suggest_corners(img)
    if corners is None:
        return None
    width, height = img.info.get("original_size", img.size)
    sx, sy = width / img.size[0], height / img.size[1]
    return [[round(x * sx, 1), round(y * sy, 1)] for x, y in corners]


def preview_task(settings: Settings, key: str, max_side: int = 1024) -> bytes:
    """A JPEG of the stored image ``key`` whose long side is at most ``max_side`` pixels."""
    data = worker_store(settings).get(key)
    img = imaging.decode_image(data, max_pixels=settings.max_image_pixels, max_side=max_side, name=key)
    return imaging.jpeg_bytes(img, quality=85)


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


def submit_search(
    client: Any,
    settings: Settings,
    query_key: str,
    *,
    name: str,
    k: int,
    corners: Sequence[Sequence[float]] | None,
    filters: Mapping[str, Any] | None,
    verify: bool = False,
    ef_search: int | None = None,
) -> SearchJob:
    """Submit prepare → embed → search (→ verify) as three (four) futures; returns at once."""
    tag = uuid.uuid4().hex[:8]
    opts = dict(pure=False, priority=SEARCH_PRIORITY, retries=1)
    prepared = client.submit(prepare_task, settings, query_key, name, corners, key=f"papyrus-prepare-{tag}", **opts)
    vector = client.submit(embed_task, settings, prepared, key=f"papyrus-embed-{tag}", **opts)
    n = max(k, VERIFY_CANDIDATES) if verify else k
    hits = client.submit(search_task, settings, vector, n, filters, ef_search, key=f"papyrus-search-{tag}", **opts)
    stages = [("preparing", prepared), ("embedding", vector), ("searching", hits)]
    if verify:
        checked = client.submit(verify_task, settings, query_key, name, hits, k, key=f"papyrus-verify-{tag}", **opts)
        stages.append(("verifying", checked))
    crop = objects.crop_key(query_key, corners) if corners is not None else None
    return SearchJob(client, stages, name, query_key=query_key, crop_key=crop)


# --- ingest ------------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif")


@dataclass
class IngestItem:
    path: str
    record: PapyrusRecord
    upload_key: str | None = None
    """Where the client staged the scan's bytes in the object store (``objects.upload_key``) for
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
    store: objects.ObjectStore,
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


def ingest_batch_task(settings: Settings, items: Sequence[IngestItem]) -> BatchReport:
    """Read, store (original, thumbnail, local features), embed and COPY one batch of images; skips
    what is indexed."""
    from .model import embed_arrays
    from .verify import extract_features

    url, source = _require_resolved(settings)
    model, fingerprint = worker_model(source, settings.model_revision)
    store = worker_store(settings)
    index.get_pool(url)  # a server that is down fails the first batch here, before any work
    report = BatchReport()
    loaded = load_scans(items, report.failed, store, missing=NOT_ON_WORKER)
    with index.pooled_connection(url) as conn:
        other = conn.execute("SELECT model FROM images WHERE model <> %s LIMIT 1", (fingerprint,)).fetchone()
        if other:
            raise ModelError(
                f"the index holds vectors of another model ({other[0]}); {source} would mix them: "
                "ingest into a new database (PAPYRUS_DATABASE_URL / PAPYRUS_DATA_DIR) or use the index's model."
            )
        present = index.existing_images(conn, [(it.record.key, sha) for it, _, sha in loaded])
    rows: list[index.ImageRow] = []
    arrays: list[np.ndarray] = []
    for item, data, sha in loaded:
        if (item.record.key, sha) in present:
            report.skipped += 1
            continue
        name = Path(item.path).name
        try:
            img = imaging.decode_image(data, max_pixels=settings.max_image_pixels, max_side=1024, name=name)
            width, height = img.info.get("original_size", img.size)
            ext = objects.extension_for(name, img.info.get("format"))
            key = objects.object_key(objects.ORIGINALS, sha, ext)
            thumb_key = objects.object_key(objects.THUMBNAILS, sha, ".jpg")
            store.put(key, data, "image/jpeg" if ext == ".jpg" else "application/octet-stream")
            store.put(thumb_key, imaging.thumbnail_bytes(img, settings.thumbnail_size), "image/jpeg")
            if settings.verify:  # the searches' verifying stage reads them instead of decoding the scan
                features = extract_features(img, size=(int(width), int(height)))
                store.put(objects.features_key(key), features.to_bytes())
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
            )
        )
    if rows:
        vectors = embed_arrays(model, np.stack(arrays))
        for row, vec in zip(rows, vectors):
            row.embedding = vec
        with index.pooled_connection(url) as conn:
            added, skipped = index.add_images(conn, rows)
            index.set_meta(conn, "model", source)
        report.added += added
        report.skipped += skipped
    return report
