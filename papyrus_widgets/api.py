"""The Python API: ``search()``, ``ingest()``, ``Results`` — and the ``Engine`` that the widget and
the CLI share.

An :class:`Engine` resolves the settings once (database URL, model, object store, Dask client) and
submits work to the cluster; :func:`get_engine` keeps one per process and settings.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from . import imaging, index, services, storage, tasks
from .config import DEFAULT_MODEL, Settings
from .errors import ImageError, JobError, PapyrusError
from .metadata import load_metadata, records_for_images
from .request import SearchRequest
from .results import IngestReport, Results, RewordReport

ImageInput = str | os.PathLike | bytes | bytearray | memoryview | Any  # Any: PIL image or numpy array


def query_bytes(image: ImageInput) -> tuple[bytes, str]:
    """Bytes and a display name for a query given as a path, bytes, PIL image or numpy array."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image), "query"
    if isinstance(image, (str, os.PathLike)):
        path = Path(image).expanduser()
        try:
            return path.read_bytes(), path.name
        except FileNotFoundError:
            raise ImageError(f"no such file: {path}") from None
        except IsADirectoryError:
            raise ImageError(f"{path} is a folder, not an image file.") from None
        except OSError as exc:
            raise ImageError(f"cannot read {path}: {exc.strerror}") from None
    from PIL import Image

    if isinstance(image, np.ndarray):
        try:
            arr = image
            if arr.dtype != np.uint8:
                arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
            image = Image.fromarray(arr)
        except (TypeError, ValueError) as exc:
            raise ImageError(f"this array is not an image (shape {arr.shape}, {arr.dtype}): {exc}") from None
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        imaging.to_rgb(image).save(buf, "PNG")
        return buf.getvalue(), "query.png"
    raise ImageError(f"cannot search with a {type(image).__name__}: give a file path, bytes, a PIL image or an array.")


# --- the engine --------------------------------------------------------------------------------


class Engine:
    """Settings resolved into running services; shared by the widget, the API and the CLI.

    ``client``: an existing ``distributed.Client`` to run on (yours: a dask-gateway, dask-jobqueue
    or ``LocalCluster`` client). It replaces ``PAPYRUS_DASK_SCHEDULER`` and the LocalCluster, and
    :meth:`close` leaves it open.
    """

    def __init__(self, settings: Settings | None = None, *, client: Any = None):
        self.settings = settings or Settings.from_env()
        self._lock = threading.Lock()
        self._resolved: Settings | None = None
        self._given_client = client

    # services ----------------------------------------------------------------------------
    @property
    def database_url(self) -> str:
        return services.database_url(self.settings)

    @property
    def store(self) -> storage.ObjectStore:
        return tasks.worker_store(self.settings)

    @property
    def client(self) -> Any:
        """The Dask client: the one passed in, else the process's client for the settings."""
        if self._given_client is not None:
            return self._given_client
        return services.dask_client(self.settings)

    def close(self) -> None:
        """Close the Dask client (and LocalCluster) this engine got from its settings, shared by the
        engines of this process with the same scheduler setting; a client passed in stays open."""
        with _engines_lock:
            for key, engine in list(_engines.items()):
                if engine is self:
                    del _engines[key]
        if self._given_client is None:
            services.close_client(self.settings)

    def resolved_settings(self) -> Settings:
        """Settings with the database URL and the model source filled in (what tasks receive)."""
        with self._lock:
            if self._resolved is None:
                url = self.database_url
                index.ensure_schema(url)
                index.ensure_hnsw(url)  # an interrupted bulk ingest left it missing: build it now
                model = self.settings.model
                vocabulary = self.settings.vocabulary
                with index.connect(url) as conn:
                    model = model or index.get_meta(conn, "model") or DEFAULT_MODEL
                    vocabulary = vocabulary or index.get_meta(conn, "vocabulary_path") or None
                self._resolved = self.settings.replace(database_url=url, model=model, vocabulary=vocabulary)
            return self._resolved

    def _forget_model(self) -> None:
        with self._lock:
            self._resolved = None

    # searching ---------------------------------------------------------------------------
    def _store_query(self, data: bytes, name: str) -> tuple[Settings, str]:
        """Check the size of an uploaded query and store it under ``queries/``; returns the
        resolved settings and the object key that tasks read it from."""
        if not data:
            raise ImageError(f"{name} is empty (0 bytes): choose an image file.")
        limit = self.settings.max_upload_bytes
        if len(data) > limit:
            raise ImageError(
                f"{name} is {len(data):,} bytes, over the limit of {limit:,} bytes ({limit / 2**20:.0f} MiB): "
                "downscale it or raise PAPYRUS_MAX_UPLOAD_BYTES."
            )
        settings = self.resolved_settings()
        key = storage.object_key(storage.QUERIES, imaging.sha256_hex(data), storage.extension_for(name))
        self.store.put(key, data)
        return settings, key

    def submit_search(
        self,
        data: bytes,
        *,
        name: str = "query",
        k: int = 8,
        corners: Sequence[Sequence[float]] | None = None,
        filters: Mapping[str, Any] | None = None,
        verify: bool | None = None,
        ef_search: int | None = None,
    ) -> tasks.SearchJob:
        """Store the query image and submit the search futures; returns a job handle at once.

        ``verify`` (default ``Settings.verify``: on unless ``PAPYRUS_VERIFY=0``): re-rank the top hits by
        local-feature geometric verification, with the inlier matches as evidence on each hit.
        ``ef_search`` (1 … 1000): the HNSW candidate list of this query; higher finds the true
        nearest neighbours more often, a little more slowly. Default ``max(100, 2 × candidates)``
        (candidates = k, or at least 10 with verification), not pgvector's fixed 40, so that a
        large k keeps its recall; a value below the candidates is raised to them."""
        request = SearchRequest.build(k=k, corners=corners, filters=filters, ef_search=ef_search, verify=verify)
        return self.submit_request(data, request, name=name)

    def submit_request(self, data: bytes, request: SearchRequest, *, name: str = "query") -> tasks.SearchJob:
        """Store the query image and submit the search ``request`` (already valid, see
        :meth:`SearchRequest.build`); returns a job handle at once. ``request.verify`` None: ``Settings.verify``."""
        settings, key = self._store_query(data, name)
        if request.verify is None:
            request = replace(request, verify=self.settings.verify)
        return tasks.submit_search(self.client, settings, key, name=name, request=request)

    def search(
        self,
        image: ImageInput,
        *,
        k: int = 8,
        corners: Sequence[Sequence[float]] | None = None,
        filters: Mapping[str, Any] | None = None,
        timeout: float | None = 300,
        verify: bool | None = None,
        ef_search: int | None = None,
    ) -> Results:
        """Search and wait for the hits (arguments as :meth:`submit_search`)."""
        data, name = query_bytes(image)
        request = SearchRequest.build(k=k, corners=corners, filters=filters, ef_search=ef_search, verify=verify)
        return self._wait(self.submit_request(data, request, name=name), name, timeout)

    def run_search(self, image: ImageInput, request: SearchRequest, *, timeout: float | None = 300) -> Results:
        """Search with an already-valid ``request`` (:meth:`SearchRequest.build`) and wait for the hits."""
        data, name = query_bytes(image)
        return self._wait(self.submit_request(data, request, name=name), name, timeout)

    @staticmethod
    def _wait(job: tasks.SearchJob, name: str, timeout: float | None) -> Results:
        try:
            hits = job.hits(timeout=timeout)
        except TimeoutError:
            job.cancel()
            raise JobError(
                f"the search did not finish within {timeout} s: check the workers (papyrus doctor)."
            ) from None
        return Results(query=name, hits=hits, elapsed=job.elapsed(), verified=job.verified)

    def submit_suggest_corners(self, data: bytes, *, name: str = "query") -> Any:
        """Store the image and submit a corner suggestion on a worker; returns the Dask future at once.

        Its result is four corners (TL, TR, BR, BL) in the image's pixels, or None when no papyrus
        region stands out from the background.
        """
        settings, key = self._store_query(data, name)
        return self.client.submit(
            tasks.suggest_corners_task, settings, key, name, pure=False, priority=tasks.SEARCH_PRIORITY, retries=1
        )

    def suggest_corners(self, image: ImageInput, *, timeout: float | None = 120) -> list[list[float]] | None:
        """Suggested corners (TL, TR, BR, BL) of the papyrus in ``image``, or None (see submit_suggest_corners)."""
        data, name = query_bytes(image)
        future = self.submit_suggest_corners(data, name=name)
        try:
            return future.result(timeout=timeout)
        except PapyrusError as exc:
            raise tasks.detach_error(exc) from None
        except Exception as exc:  # noqa: BLE001
            raise JobError(tasks.error_message(exc)) from None
        finally:
            future.release()

    def submit_decode(self, data: bytes, *, name: str = "query", max_side: int = 2048) -> Any:
        """Store an image and submit its decoding on a worker, by the search's own decoder (size
        limits, EXIF orientation, HEIC/HEIF, TIFF, every mode to RGB); returns the Dask future at
        once. Its result is a JPEG (quality 92) whose long side is at most ``max_side`` pixels: what
        the widget shows, marks corners on and searches with when the browser cannot decode the
        file itself (HEIC in most browsers, TIFF)."""
        settings, key = self._store_query(data, name)
        return self.client.submit(
            tasks.preview_task, settings, key, max_side, quality=92, name=name,
            pure=False, priority=tasks.SEARCH_PRIORITY, retries=1,
        )  # fmt: skip

    def submit_preview(self, key: str, *, max_side: int = 1024) -> Any:
        """Submit a JPEG preview (long side at most ``max_side``) of the stored image ``key``; a Dask future."""
        settings = self.resolved_settings()
        return self.client.submit(
            tasks.preview_task, settings, key, max_side, pure=False, priority=tasks.SEARCH_PRIORITY, retries=1
        )

    # ingesting ---------------------------------------------------------------------------
    def ingest(
        self,
        folder: str | os.PathLike,
        metadata: str | os.PathLike | None = None,
        *,
        batch_size: int = 8,
        progress: bool = True,
        bulk: bool | None = None,
        upload: bool | None = None,
    ) -> IngestReport:
        """Index every image under ``folder`` with its catalogue record (HGV XML dir or CSV).

        ``bulk``: drop the HNSW index before the batches and build it once at the end (also if the
        ingest fails or is interrupted; if the process dies, the next engine or ingest builds it).
        Default: when the ingest is a bulk load by :func:`index.bulk_load_wanted` (at least
        ``BULK_MIN_ROWS`` images and half as many as are indexed); otherwise each batch inserts
        into the index as it goes.

        ``upload``: this process reads each scan and stages it in the object store (``uploads/``,
        removed at the end) for the workers, instead of the workers reading ``folder`` themselves;
        scans already indexed are not sent. Default: when a worker cannot see the folder's files
        (workers on other machines without a shared file system). The workers must reach the
        same object store (S3/MinIO, or a shared directory)."""
        import time

        t0 = time.perf_counter()
        paths = list(iter_images(folder))
        records = load_metadata(metadata)
        found, unlinked = records_for_images(paths, records)
        items = [tasks.IngestItem(str(p), record) for p, record in zip(paths, found)]
        settings = self.resolved_settings()
        url = settings.database_url or self.database_url
        if bulk is None:
            with index.connect(url) as conn:
                bulk = index.bulk_load_wanted(index.image_count(conn), len(items))
        if upload is None:
            upload = bool(items) and not self._workers_see(items[0].path)
        if not bulk:
            index.ensure_hnsw(url)  # an earlier bulk ingest may have died before its build
        with index.hnsw_deferred(url) if bulk else contextlib.nullcontext():
            report = self._run_ingest(settings, url, items, batch_size, progress, upload)
        report.unlinked = unlinked
        report.seconds = time.perf_counter() - t0
        return report

    def _workers_see(self, path: str) -> bool:
        """Whether every worker can read ``path`` (False when one cannot; True with no workers yet)."""
        seen = self.client.run(os.path.isfile, path)
        return all(seen.values())

    def _stage_uploads(
        self, url: str, run: str, batch: list[tasks.IngestItem], report: IngestReport, staged: set[str]
    ) -> list[tasks.IngestItem]:
        """Read ``batch`` here and put the scans that are not indexed yet into the object store
        (``storage.upload_key``); returns the items to send, with their ``upload_key``. Unreadable
        files and scans already indexed go into ``report`` at once."""
        import dataclasses

        loaded = tasks.load_scans(batch, report.failed, self.store)
        with index.pooled_connection(url) as conn:
            present = index.existing_images(conn, [(it.record.key, sha) for it, _, sha in loaded])
        send: list[tasks.IngestItem] = []
        for item, data, sha in loaded:
            if (item.record.key, sha) in present:
                report.skipped += 1
                continue
            key = storage.upload_key(run, sha, item.path)
            if key not in staged:
                self.store.put(key, data)
                staged.add(key)
                report.uploaded += 1
            send.append(dataclasses.replace(item, upload_key=key))
        return send

    def _run_ingest(
        self,
        settings: Settings,
        url: str,
        items: list[tasks.IngestItem],
        batch_size: int,
        progress: bool,
        upload: bool = False,
    ) -> IngestReport:
        import uuid

        from tqdm.auto import tqdm

        client = self.client
        report = IngestReport()
        run = uuid.uuid4().hex
        staged: set[str] = set()
        futures: list[Any] = []
        sizes: dict[str, int] = {}
        bar = tqdm(total=len(items), unit="img", desc="ingest", disable=not progress)
        try:
            # Batch by batch, so that the workers embed one batch while this process sends the next;
            # as many batches for each worker thread, so that they finish together.
            slots = sum(client.nthreads().values())
            for batch in tasks.plan_batches(items, batch_size, slots):
                if upload:
                    done = report.total
                    batch = self._stage_uploads(url, run, batch, report, staged)
                    bar.update(report.total - done)  # unreadable or already indexed: settled here
                    if not batch:
                        continue
                fut = client.submit(tasks.ingest_batch_task, settings, batch, pure=False, retries=1)
                futures.append(fut)
                sizes[fut.key] = len(batch)

            def took(result: tasks.BatchReport) -> None:
                report.added += result.added
                report.skipped += result.skipped
                report.failed.extend(result.failed)

            def stopped() -> str:
                rest = len(items) - report.added - report.skipped - len(report.failed)
                return (
                    f"The ingest stopped: {report.added} image{'' if report.added == 1 else 's'} added, "
                    f"{report.skipped} already indexed, {rest} not done; run it again once this is fixed "
                    "(images already indexed are skipped)."
                )

            _gather(client, futures, sizes, bar, took, report.failed, stopped)
        except BaseException:
            client.cancel(futures)  # e.g. Ctrl-C: stop the batches before the index is built
            raise
        finally:
            bar.close()
            for key in staged:  # the staged copies have served (or the ingest is over): remove them
                with contextlib.suppress(Exception):
                    self.store.delete(key)
        return report

    # upkeep ------------------------------------------------------------------------------
    def reword(
        self, *, everything: bool = False, batch_size: int = 32, progress: bool = True, compact: bool = True
    ) -> RewordReport:
        """Make the indexed images' visual words (the first stage's inverted file) again from their
        features as this version makes them (``papyrus db rewords``): those whose words were made
        from other features (an upgrade that changed how references are described,
        :func:`~papyrus_widgets.retrieval.features.reference_params`; an index from before
        2026-12-06, whose words' params were not recorded, or whose words lack the keypoints'
        signatures), or ``everything``. Runs as batches on the workers; each batch's images get
        their new words, and the params they were made from, in one transaction, so searches go on
        meanwhile (a search sees each image's old words or its new ones) and an interrupted run goes
        on where it stopped. Features stored as this version makes them are read, others are made
        from the original and stored. An image that fails keeps its old words and is reported;
        then (``compact``) the postings' index is rebuilt with its pages full
        (:func:`index.compact_postings`)."""
        import time

        from tqdm.auto import tqdm

        from .retrieval.features import reference_params

        t0 = time.perf_counter()
        settings = self.resolved_settings()
        url = settings.database_url or self.database_url
        params = reference_params()
        with index.connect(url) as conn:
            images = index.image_keys(conn, not_made_from=None if everything else params)
            indexed = index.image_count(conn)
        report = RewordReport(images=len(images), current=indexed - len(images), params=params)
        client = self.client
        futures: list[Any] = []
        sizes: dict[str, int] = {}
        bar = tqdm(total=len(images), unit="img", desc="rewords", disable=not progress)

        def took(result: tasks.RewordBatch) -> None:
            report.rewritten += result.rewritten
            report.failed.extend(result.failed)

        def stopped() -> str:
            return (
                f"The rewording stopped: {report.rewritten} image{'' if report.rewritten == 1 else 's'} "
                "given new words, the others keep theirs; run it again once this is fixed (it goes on "
                "with those)."
            )

        try:
            slots = sum(client.nthreads().values())
            for batch in tasks.plan_batches(images, batch_size, slots):
                fut = client.submit(tasks.reword_batch_task, settings, batch, pure=False, retries=1)
                futures.append(fut)
                sizes[fut.key] = len(batch)
            _gather(client, futures, sizes, bar, took, report.failed, stopped)
        except BaseException:
            client.cancel(futures)
            raise
        finally:
            bar.close()
        if report.rewritten:
            with index.connect(url) as conn:
                conn.autocommit = True  # REINDEX CONCURRENTLY runs outside a transaction
                index.recheck_signed_words(conn)
                if compact:
                    try:
                        report.compacted = index.compact_postings(conn)
                    except PapyrusError as exc:
                        report.note = str(exc)
        report.seconds = time.perf_counter() - t0
        return report

    def stats(self) -> dict[str, Any]:
        with index.connect(self.database_url) as conn:
            return index.stats(conn)


def _gather(
    client: Any,
    futures: Sequence[Any],
    sizes: Mapping[str, int],
    bar: Any,
    took: Callable[[Any], None],
    failed: list[tuple[str, str]],
    stopped: Callable[[], str],
) -> None:
    """Wait for the batch ``futures`` as they finish: ``took`` each result, advance ``bar`` by each
    batch's size (``sizes`` by key). A lost batch (its worker died twice, an unexpected error) goes
    into ``failed`` and the rest goes on; a :class:`PapyrusError` (the same for every batch: a
    service, the model) cancels them all and is raised with ``stopped()`` after its message."""
    from distributed import as_completed

    for fut in as_completed(futures, loop=client.loop):
        try:
            result = fut.result()
        except PapyrusError as exc:  # the same for every batch: stop
            client.cancel(futures)
            error = tasks.detach_error(exc)
            said = str(error).rstrip()
            error.args = (f"{said}{'' if said.endswith('.') else '.'} {stopped()}",)
            raise error from None
        except Exception as exc:  # noqa: BLE001 - a lost batch is reported, the rest goes on
            tasks.detach_error(exc)  # else the failed future is never released
            failed.append((f"batch {fut.key}", tasks.error_message(exc)))
            bar.update(sizes[fut.key])
            continue
        took(result)
        bar.update(sizes[fut.key])


def iter_images(folder: str | os.PathLike) -> Iterable[Path]:
    """The image files an ingest of ``folder`` reads (:func:`imaging.image_files`)."""
    yield from imaging.image_files(folder)


_engines: dict[tuple[Settings, int | None], Engine] = {}
_engines_lock = threading.Lock()


def get_engine(settings: Settings | None = None, *, client: Any = None) -> Engine:
    """The engine of this process for ``settings`` (default: from the environment) and, if given,
    an existing Dask ``client`` to run on (see :class:`Engine`)."""
    settings = settings or Settings.from_env()
    key = (settings, None if client is None else id(client))  # the engine keeps the client alive
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = Engine(settings, client=client)
        return engine


def search(
    image: ImageInput,
    k: int = 8,
    *,
    corners: Sequence[Sequence[float]] | None = None,
    filters: Mapping[str, Any] | None = None,
    settings: Settings | None = None,
    verify: bool | None = None,
    ef_search: int | None = None,
) -> Results:
    """Find the k reference papyri nearest to ``image`` (path, bytes, PIL image or array);
    ``verify=False`` skips the re-ranking by local features (on by default); ``ef_search``
    (1 … 1000) trades speed for recall in the HNSW index (see :meth:`Engine.submit_search`)."""
    return get_engine(settings).search(
        image, k=k, corners=corners, filters=filters, verify=verify, ef_search=ef_search
    )


def ingest(
    folder: str | os.PathLike,
    metadata: str | os.PathLike | None = None,
    *,
    settings: Settings | None = None,
    progress: bool = True,
) -> IngestReport:
    """Add the images under ``folder`` (with HGV EpiDoc XML or CSV ``metadata``) to the index."""
    return get_engine(settings).ingest(folder, metadata, progress=progress)
