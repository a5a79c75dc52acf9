"""The notebook widget: :class:`PapyrusSearch` (anywidget).

The browser view (``static/widget.js``, bundled from ``js/src/`` by ``js/build.mjs``) downscales the chosen image
(long side ``max_side``), lets the user mark four corners, and sends the image as a binary buffer
with the corners, k and the metadata filters; the kernel submits a search job to the engine,
pushes its status every second and pushes the hits, with their thumbnails as binary buffers, as
soon as the job finishes. Every finished search is kept in a short history that the view (or
:meth:`PapyrusSearch.restore`) can bring back without searching again.

Messages from the view (``content`` of the anywidget custom message; buffers in brackets):

- ``{"type": "search", "request", "name", "k", "corners", "filters"}`` [image, crop preview JPEG]
  → ``{"type": "ack", "request", "ok"}`` once the search is submitted (or refused);
- ``{"type": "cancel"}``;
- ``{"type": "suggest_corners", "request", "name"}`` [image]
  → ``{"type": "corners", "request", "corners": [[x, y] × 4] | None, "message"}``;
- ``{"type": "decode", "request", "name"}`` [image the browser cannot decode: HEIC, TIFF]
  → ``{"type": "decoded", "request", "message"}`` [JPEG, long side at most ``max_side``, upright]
  (no buffer and a ``message`` when the kernel cannot decode it either); the view shows that copy,
  marks corners on it and searches with it;
- ``{"type": "restore", "id"}``: show an earlier result set of the history;
- ``{"type": "preview", "request", "key"}`` → ``{"type": "preview", "request", "key", "message"}``
  [JPEG, long side 1024] for the ``image_key`` of a result on show or in the history, or for the
  ``query_image_key`` (the query photo that the evidence ``matches`` of the hits refer to); with
  presigned URLs configured (``Settings.presigned_urls`` and an S3 store) the reply for a
  reference image in a browser format carries ``"url"`` (a presigned GET URL) and no buffer.

After a search (or a restore) the ``verdict`` trait holds one line for a person,
:attr:`Results.verdict <papyrus_widgets.api.Results.verdict>` ("confirmed: …", "no confirmed match in
this collection: …", "not verified: …"; '' while nothing is on show). Each hit dict says whether
it is ``confirmed`` and, when it is, its ``region`` in the query photo (four corners in the pixels
of the photo as stored, which ``query_size`` gives): when a search ran without corners the view
offers the top confirmed hit's region as suggested corners for the next search.

Thumbnails travel as binary buffers in the ``thumbnails`` trait; with presigned URLs configured,
``thumbnail_urls`` holds a presigned URL per result instead (and ``thumbnails`` ``b''``), so the
browser fetches them from the object store itself. Binary buffers are the default because they
work where the browser cannot reach the object store.
"""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import anywidget
import traitlets as t

from . import imaging, storage
from .api import Engine, Results, get_engine, query_bytes
from .config import Settings, mask_urls_in
from .errors import ImageError, PapyrusError, QueryError
from .request import SearchRequest, clean_filters
from .tasks import SearchJob, error_message

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

STATIC = Path(__file__).parent / "static"

POLL_SECONDS = 1.0
"""How often the status line is refreshed while a search runs."""

HISTORY_LIMIT = 12
"""How many finished searches the history strip keeps (oldest dropped first)."""

INTERIM_PREFIX = "so far, a second look running:"
"""How the verdict line begins while the first look's answer is on show (js/src/stages.js reads it)."""

PREVIEW_SIDE = 320
"""Long side (px) of the query crop kept per search for the history strip and the compare view."""

WIDGET_FILTERS = ("date_from", "date_to", "place", "collection")
"""The filters the view has fields for (``filters`` also accepts every name in request.FILTER_FIELDS)."""

PRESIGNED_SECONDS = 3600
"""How long a presigned URL handed to the browser stays valid."""

BROWSER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif")
"""Stored originals with these suffixes are shown from a presigned URL as they are; others (TIFF…)
are always converted to JPEG by a worker."""

def _readable(exc: BaseException) -> str:
    """One readable line for an exception: PapyrusErrors speak for themselves."""
    if isinstance(exc, PapyrusError):
        text = str(exc) or type(exc).__name__
    else:
        detail = str(exc).strip()
        text = f"Unexpected {type(exc).__name__}" + (f": {detail}" if detail else "")
        text += " (this is a bug in papyrus-widgets; please report it)."
    return mask_urls_in(text)


class PapyrusSearch(anywidget.AnyWidget):
    """Find the reference papyri nearest to a photo, inside a notebook.

    >>> w = PapyrusSearch(k=8)
    >>> w                      # drop, paste or pick an image, mark its corners, press Search; or:
    >>> w.search("photo.jpg", corners=[[120, 80], [1900, 60], [1950, 2400], [90, 2450]])
    >>> w.results_frame()      # the hits as a pandas DataFrame

    In the browser the image can be dropped onto the widget, pasted (Ctrl+V while the widget has
    the focus) or picked with the file input; photos larger than ``max_side`` pixels are
    downscaled in the browser before they are sent. Four corners clicked on the photo (in any
    order; "Suggest corners" asks a worker to find the papyrus) deskew the query before it is
    embedded; without corners the whole image is searched. ``filters`` restrict the hits by
    date (years, negative = BC), place and collection.

    The engine (database, object store, Dask cluster, model) is started lazily on the first
    search, with ``get_engine(settings)``; constructing or displaying the widget starts nothing.

    While a search runs the status line is refreshed every second from the kernel's event loop,
    and the results are pushed as soon as the job finishes. **Only one search runs at a time:
    a new search (from the browser or from Python) cancels the one still running.** Errors (an
    unreadable image, a ``k`` out of range, a service down) are shown in the widget's status line
    and ``error`` trait; they are never raised from the browser's messages, and the widget stays
    usable. :meth:`close` cancels a running search.

    Every finished search goes into ``history`` (the last :data:`HISTORY_LIMIT`); the strip in
    the view, or :meth:`restore`, shows an earlier result set again without searching.

    ``verdict`` says in one line whether the same papyrus was confirmed in the photo or that the
    collection holds no confirmed match (the hits are then only similar, or nearly: a near miss);
    each card says "Confirmed", "Nearly" or "Similar". A search without corners finds where the
    papyrus is: :attr:`region` (the top confirmed hit's outline in the photo), which the view
    offers as corners to adjust before searching again.

    Clicking a result compares it with the query; when the search verified it by local features
    (``inliers``, ``matches``, ``query_size``, ``reference_size`` of the hit) the view draws the
    matched keypoints between the query photo (asked for by ``query_image_key``) and the large
    reference image. ``dashboard_link`` links the Dask dashboard once the cluster runs. With
    ``Settings.presigned_urls`` and an S3 store, thumbnails and large reference images reach the
    browser as presigned URLs instead of bytes through the kernel.
    """

    _esm = STATIC / "widget.js"
    _css = STATIC / "widget.css"

    k = t.Int(8, help="number of results").tag(sync=True)
    ef_search = t.Int(
        0,
        help="HNSW candidate list of each search (1 … 1000; 0: automatic, max(100, 2k)); kernel-side only, "
        "for large collections: higher finds the true neighbours more often, a little more slowly",
    )
    max_side = t.Int(
        2048, help="long side (px) to which the browser downscales larger photos before sending them"
    ).tag(sync=True)
    filters = t.Dict(
        help="metadata filters for the next search: date_from, date_to (years, negative = BC), place, collection"
    ).tag(sync=True)
    status = t.Dict(help="state, stage, elapsed (s) and message of the current or last search").tag(sync=True)
    results = t.List(t.Dict(), help="hits of the last search as dicts (see tasks.Hit.to_dict)").tag(sync=True)
    thumbnails = t.List(t.Bytes(), help="JPEG thumbnail per result (b'' when missing or sent as a URL)").tag(sync=True)
    thumbnail_urls = t.List(
        t.Unicode(), help="presigned URL of the thumbnail per result when presigned URLs are configured, else []"
    ).tag(sync=True)
    query_image_key = t.Unicode(
        "", help="object key of the stored query photo of the results on show (what the hits' matches refer to)"
    ).tag(sync=True)
    dashboard_link = t.Unicode("", help="URL of the Dask dashboard of the engine's cluster ('' until it runs)").tag(
        sync=True
    )
    query_name = t.Unicode("", help="name of the query image").tag(sync=True)
    query_preview = t.Bytes(b"", help="JPEG of the query as searched (the deskewed crop) for the results shown").tag(
        sync=True
    )
    error = t.Unicode("", help="message of the last error, '' when the last search did not fail").tag(sync=True)
    verdict = t.Unicode(
        "", help="one line on the results on show (api.Results.verdict): confirmed, or no confirmed match; '' when none"
    ).tag(sync=True)
    history = t.List(
        t.Dict(), help="finished searches, oldest first: id, name, k, filters, corners, count, elapsed, top"
    ).tag(sync=True)
    history_previews = t.List(t.Bytes(), help="query preview JPEG per history entry (b'' when none)").tag(sync=True)
    history_id = t.Unicode("", help="id of the history entry whose results are shown ('' when none)").tag(sync=True)

    def __init__(
        self,
        k: int = 8,
        settings: Settings | None = None,
        engine: Engine | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(k=k, **kwargs)
        self._settings = settings
        self._engine = engine
        self._query: bytes | None = None
        self._corners: list[list[float]] | None = None
        self._job: SearchJob | None = None
        self._pending: dict[str, Any] = {}
        self._results = Results(query="", hits=[])
        self._entries: list[dict[str, Any]] = []  # history: {"id", "results", "preview", "info"}
        self._shown_before = ""  # history id on show when the running search began
        self._interim_of = ""  # the job whose first look's answer is on show (SearchJob.interim_hits)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._side_futures: dict[str, Any] = {}  # suggest / decode / preview futures by kind
        self.on_msg(self._on_view_msg)

    @t.validate("max_side")
    def _valid_max_side(self, proposal: Any) -> int:
        value = int(proposal["value"])
        if not 256 <= value <= 16384:
            raise t.TraitError(f"max_side must be between 256 and 16384 pixels, got {value}.")
        return value

    @t.validate("filters")
    def _valid_filters(self, proposal: Any) -> dict:
        try:
            return clean_filters(proposal["value"])
        except QueryError as exc:
            raise t.TraitError(str(exc)) from None

    # ------------------------------------------------------------------ query and search

    @property
    def query(self) -> bytes | None:
        """The query image as bytes. Set it to a path, bytes, a PIL image or a numpy array."""
        return self._query

    @query.setter
    def query(self, value: Any) -> None:
        self._corners = None
        if value is None:
            self._query = None
            self.query_name = ""
            return
        data, name = query_bytes(value)
        self._query = data
        self.query_name = name

    @property
    def corners(self) -> list[list[float]] | None:
        """The four corners (TL, TR, BR, BL, image pixels) of the last search, None for the whole image."""
        return None if self._corners is None else [list(c) for c in self._corners]

    @property
    def region(self) -> list[list[float]] | None:
        """Where the top confirmed hit of the results on show is in the query photo: four corners
        (TL, TR, BR, BL) in the pixels of the photo as searched (after EXIF orientation), to pass
        back as ``search(corners=w.region)``; None when no hit is confirmed."""
        region = self._results.region
        return None if region is None else [list(c) for c in region]

    @property
    def job(self) -> SearchJob | None:
        """The search job still running, or None."""
        return self._job

    def search(
        self,
        query: Any = None,
        k: int | None = None,
        *,
        corners: Sequence[Sequence[float]] | None = None,
        filters: Mapping[str, Any] | None = None,
        ef_search: int | None = None,
    ) -> SearchJob | None:
        """Search with ``query`` (or the current :attr:`query`) and show the results.

        ``corners``: four (x, y) points in the image's pixels, in any order, to deskew the papyrus
        before searching (None: the whole image). ``filters``: replaces :attr:`filters` first, and
        ``ef_search`` replaces :attr:`ef_search` (0: automatic).
        Returns the submitted job, or None when the search could not start; the reason is then
        shown in the widget (``status`` / ``error``). A search still running is cancelled first.
        """
        try:
            if query is not None:
                self.query = query
            if k is not None:
                self.k = int(k)
            if filters is not None:
                self.filters = clean_filters(filters)
            if ef_search is not None:
                self.ef_search = int(ef_search)
            if self._query is None:
                raise ImageError("no query image: choose an image file, or call search('photo.jpg').")
            preview = query_preview_bytes(self._query, corners)
            return self._submit(self._query, self.query_name or "query", corners=corners, preview=preview)
        except Exception as exc:  # shown in the widget, never raised
            self._show_error(exc)
            return None

    def suggest_corners(self, query: Any = None, timeout: float | None = 120) -> list[list[float]] | None:
        """Corners (TL, TR, BR, BL) of the papyrus in ``query`` (or the current :attr:`query`), found
        on a worker; None when no region stands out from the background. Blocks; raises on errors."""
        if query is not None:
            self.query = query
        if self._query is None:
            raise ImageError("no query image: choose an image file, or call suggest_corners('photo.jpg').")
        return self._get_engine().suggest_corners(self._query, timeout=timeout)

    def cancel(self) -> None:
        """Cancel the running search, if any; the results on show before it (an entry of the
        history) come back, with the cancelled search's status."""
        self._cancel(show_previous=True)

    def _cancel(self, show_previous: bool) -> None:
        job = self._job
        self._stop_polling()
        self._job = None
        self._pending = {}
        if job is None:
            return
        try:
            job.cancel()
            status = dict(job.status())
        except Exception as exc:
            self._show_error(exc)
            return
        if status.get("state") == "running":
            status.update(state="cancelled", stage="cancelled")
        previous = next((e for e in self._entries if e["id"] == self._shown_before), None) if show_previous else None
        if previous is not None:
            self._show_entry(previous, status)
        else:
            self._end_interim(job, "cancelled during a second look")
            self.status = self._public_status(status)

    def restore(self, entry: int | str) -> None:
        """Show the results of an earlier search again: ``entry`` is a history id or an index into
        :attr:`history` (negative counts from the newest). A search still running is cancelled."""
        found = None
        if isinstance(entry, int) and not isinstance(entry, bool):
            try:
                found = self._entries[entry]
            except IndexError:
                raise QueryError(
                    f"the history holds {len(self._entries)} searches; there is no entry {entry}."
                ) from None
        else:
            found = next((e for e in self._entries if e["id"] == str(entry)), None)
            if found is None:
                raise QueryError(
                    f"no search {entry!r} in the history (it keeps the last {HISTORY_LIMIT}): search again."
                )
        if self._job is not None:
            self._cancel(show_previous=False)
        results: Results = found["results"]
        self._show_entry(found, {"state": "done", "stage": "done", "elapsed": results.elapsed, "message": ""})

    def _show_entry(self, found: dict[str, Any], status: dict) -> None:
        """Show the results of history entry ``found`` with ``status``."""
        results: Results = found["results"]
        with self.hold_sync():
            self._put_results(results, found.get("query_key") or "")
            self.query_name = results.query
            self.query_preview = found["preview"]
            self.error = ""
            self.status = self._public_status(status)
            self.history_id = found["id"]

    def _put_results(self, results: Results, query_key: str, verdict: str | None = None) -> None:
        """Put ``results`` on show (inside ``hold_sync``): the hits, their thumbnails, the key of
        the query they refer to, and the verdict (``results.verdict`` unless given)."""
        self._results = results
        thumbnails, urls = self._thumbnail_payload(results.hits)
        self.results = results.to_dicts()
        self.thumbnails = thumbnails
        self.thumbnail_urls = urls
        self.query_image_key = query_key
        self.verdict = results.verdict if verdict is None else verdict

    def close(self) -> None:
        """Cancel a running search, stop the status poll and close the widget."""
        job = getattr(self, "_job", None)
        if getattr(self, "_timer", None) is not None:
            self._stop_polling()
        self._job = None
        if job is not None:
            try:
                job.cancel()
            except Exception:  # closing must not fail
                pass
        for future in list(getattr(self, "_side_futures", {}).values()):
            try:
                future.cancel()
            except Exception:  # closing must not fail
                pass
        if hasattr(self, "_side_futures"):
            self._side_futures.clear()
        super().close()

    def results_frame(self) -> "pd.DataFrame":
        """The results of the last search as a pandas DataFrame (one row per hit, no thumbnails)."""
        return self._results.frame()

    @property
    def last_results(self) -> Results:
        """The results of the last search as :class:`~papyrus_widgets.api.Results` (with thumbnails)."""
        return self._results

    def history_results(self) -> list[Results]:
        """The results of every search in :attr:`history`, oldest first."""
        return [e["results"] for e in self._entries]

    # ------------------------------------------------------------------ engine and jobs

    def _get_engine(self) -> Engine:
        if self._engine is None:
            self._engine = get_engine(self._settings)
        return self._engine

    def _update_dashboard_link(self, engine: Engine) -> None:
        """Show the Dask dashboard of the engine's cluster (its client exists once a job ran)."""
        try:
            link = str(getattr(engine.client, "dashboard_link", "") or "")
        except Exception:  # noqa: BLE001 - a link is a courtesy, never a failure
            link = ""
        if link != self.dashboard_link:
            self.dashboard_link = link

    def _signing_store(self) -> storage.S3Store | None:
        """The S3 store to presign URLs with when ``presigned_urls`` is configured, else None."""
        engine = self._engine
        if engine is None or not engine.settings.presigned_urls:
            return None
        store = engine.store
        return store if isinstance(store, storage.S3Store) else None

    def _thumbnail_payload(self, hits: Sequence[Any]) -> tuple[list[bytes], list[str]]:
        """(thumbnails, thumbnail_urls) for the view: bytes by default; presigned URLs when
        configured (a hit whose URL cannot be signed keeps its bytes)."""
        store = self._signing_store()
        if store is None:
            return [hit.thumbnail or b"" for hit in hits], []
        thumbnails: list[bytes] = []
        urls: list[str] = []
        for hit in hits:
            url = ""
            if hit.thumb_key:
                try:
                    url = store.presigned_url(hit.thumb_key, expires=PRESIGNED_SECONDS)
                except PapyrusError:
                    url = ""
            urls.append(url)
            thumbnails.append(b"" if url else (hit.thumbnail or b""))
        return thumbnails, urls

    def _submit(
        self,
        data: bytes,
        name: str,
        corners: Any = None,
        preview: bytes = b"",
    ) -> SearchJob:
        """Cancel the search running, clear the results and submit a new search with ``corners``
        (as given: the SearchRequest checks them) and the widget's k, filters and ef_search."""
        if self._job is not None:
            self._cancel(show_previous=False)
        self._shown_before = self.history_id  # shown again if this search is cancelled
        self._results = Results(query=name, hits=[])
        with self.hold_sync():  # old results must not stand under a new query's status
            self.results = []
            self.thumbnails = []
            self.thumbnail_urls = []
            self.query_image_key = ""
            self.query_preview = preview
            self.history_id = ""
            self.error = ""
            self.verdict = ""
            # The first search starts the services (database, cluster) before it returns.
            self.status = {"state": "running", "stage": "submitting", "elapsed": 0.0, "message": ""}
        engine = self._get_engine()
        loop = _current_loop()  # the loop of the thread that handles this kernel message
        request = SearchRequest.build(
            k=self.k, corners=corners, filters=self.filters, ef_search=int(self.ef_search) or None
        )
        job = engine.submit_request(data, request, name=name)
        self._loop = loop
        self._job = job
        self._corners = request.corner_list  # ordered TL, TR, BR, BL
        self._pending = {
            "preview": preview,
            "corners": request.corner_list,
            "filters": request.filter_dict,
            "k": request.k,
            "query_key": job.query_key or "",
        }
        self._update_dashboard_link(engine)
        with self.hold_sync():
            self.error = ""
            self.status = self._public_status(job.status())
        def on_done(j: Any) -> None:  # on a Dask thread: hop onto the kernel's loop
            _call_soon(loop, self._finish, j)

        job.add_done_callback(on_done)
        if self._job is job and not job.done():
            self._timer = loop.call_later(POLL_SECONDS, self._tick, job)
        return job

    def _tick(self, job: SearchJob) -> None:
        """One status poll (on the kernel's event loop)."""
        self._timer = None
        if job is not self._job:
            return
        try:
            status = job.status()
        except Exception as exc:
            self._job = None
            self._show_error(exc)
            return
        if status.get("state") != "running":
            self._finish(job)
            return
        if status.get("stage") == "verifying" and self._interim_of != job.id:
            interim = job.interim_hits()  # the first look's answer while a second look runs
            if interim:
                self._interim_of = job.id
                self._show_interim(job, interim, status)
        self.status = self._public_status(status)
        if self._loop is not None:
            self._timer = self._loop.call_later(POLL_SECONDS, self._tick, job)

    def _show_interim(self, job: SearchJob, hits: list[Any], status: dict[str, Any]) -> None:
        """Show the first look's answer while the second look runs; the job's end replaces it."""
        results = Results(query=job.name, hits=hits, elapsed=float(status.get("elapsed") or 0.0), verified=True)
        with self.hold_sync():
            self._put_results(results, self._pending.get("query_key") or "", f"{INTERIM_PREFIX} {results.verdict}")

    def _end_interim(self, job: SearchJob, how: str) -> None:
        """The job ended without its final answer (``how``): the first look's answer, if on show,
        stays, and its verdict says so instead of "so far"."""
        if self._interim_of == job.id and self.verdict.startswith(INTERIM_PREFIX):
            self.verdict = f"{how}; the first look's answer:{self.verdict[len(INTERIM_PREFIX) :]}"

    def _finish(self, job: SearchJob) -> None:
        """Push the outcome of ``job`` (on the kernel's event loop; called once it is done)."""
        if job is not self._job:
            return  # superseded, cancelled or closed
        try:
            status = dict(job.status())
            state = status.get("state")
            if state == "running":  # told too early: keep polling
                if self._timer is None and self._loop is not None:
                    self._timer = self._loop.call_later(POLL_SECONDS, self._tick, job)
                return
            self._stop_polling()
            self._job = None
            pending, self._pending = self._pending, {}
            if state == "done":
                results = Results(
                    query=job.name, hits=job.hits(), elapsed=float(status.get("elapsed") or 0.0), verified=job.verified
                )
                with self.hold_sync():
                    self._put_results(results, pending.get("query_key") or "")
                    self.error = ""
                    self._remember(job.id, results, pending)
                    self.status = self._public_status(status)
            elif state == "error":
                message = status.get("message") or "The search failed."
                self._end_interim(job, "the second look failed")
                self._show_error(message, status)
            else:
                self._end_interim(job, "cancelled during a second look")
                self.status = self._public_status(status)
        except Exception as exc:
            self._stop_polling()
            self._job = None
            self._show_error(exc)

    def _remember(self, entry_id: str, results: Results, pending: dict[str, Any]) -> None:
        """Add a finished search to the history (call inside hold_sync)."""
        top = results.top
        info = {
            "id": entry_id,
            "name": results.query,
            "k": pending.get("k", int(self.k)),
            "filters": dict(pending.get("filters") or {}),
            "corners": pending.get("corners"),
            "count": len(results.hits),
            "elapsed": round(results.elapsed, 3),
            "top": (top.inventory or top.inventory_key or top.key) if top else "",
            "top_score": round(top.score, 6) if top else None,
        }
        self._entries.append(
            {
                "id": entry_id,
                "results": results,
                "preview": pending.get("preview") or b"",
                "query_key": pending.get("query_key") or "",
                "info": info,
            }
        )
        del self._entries[:-HISTORY_LIMIT]
        self.history = [e["info"] for e in self._entries]
        self.history_previews = [e["preview"] for e in self._entries]
        self.history_id = entry_id

    def _stop_polling(self) -> None:
        timer, self._timer = self._timer, None
        if timer is None:
            return
        loop = self._loop
        if loop is not None and _running_loop() is not loop:
            # JupyterLab may deliver widget messages on a kernel subshell (another thread with its
            # own loop); a timer is cancelled on the loop that owns it.
            _call_soon(loop, timer.cancel)
        else:
            timer.cancel()

    def _show_error(self, exc: BaseException | str, status: dict | None = None) -> None:
        message = mask_urls_in(exc) if isinstance(exc, str) else _readable(exc)
        base = dict(status or {})
        base.setdefault("elapsed", 0.0)
        base.update(state="error", stage="error", message=message)
        with self.hold_sync():
            self.error = message
            self.status = self._public_status(base)

    @staticmethod
    def _public_status(status: dict) -> dict:
        out = {
            "state": status.get("state", ""),
            "stage": status.get("stage", ""),
            "elapsed": round(float(status.get("elapsed") or 0.0), 3),
            "message": mask_urls_in(str(status.get("message") or "")),
        }
        return out

    # ------------------------------------------------------------------ side requests (suggest, preview)

    def _side_request(self, kind: str, request: Any, future: Any, reply: dict[str, Any]) -> None:
        """Track ``future`` (replacing an older one of the same kind) and answer the view when it ends."""
        old = self._side_futures.pop(kind, None)
        if old is not None:
            old.cancel()
        self._side_futures[kind] = future
        loop = _current_loop()
        future.add_done_callback(
            lambda f, loop=loop: _call_soon(loop, self._side_done, kind, request, f, reply)
        )

    def _side_done(self, kind: str, request: Any, future: Any, reply: dict[str, Any]) -> None:
        current: Any = self._side_futures.get(kind)
        if current is not future:
            return  # superseded or closed
        del self._side_futures[kind]
        content = dict(reply, request=request, message="")
        buffers: list[bytes] = []
        try:
            if future.status == "cancelled":
                content["message"] = "cancelled"
            else:
                exc = future.exception() if future.status == "error" else None
                if exc is not None:
                    content["message"] = mask_urls_in(error_message(exc))
                else:
                    value = future.result()
                    if kind == "suggest":
                        content["corners"] = value
                        if value is None:
                            content["message"] = (
                                "no papyrus region stands out from the background: click its four corners, "
                                "or search the whole image."
                            )
                    else:
                        buffers = [value]
        except Exception as exc:  # noqa: BLE001 - the view gets one readable line
            content["message"] = mask_urls_in(error_message(exc))
        finally:
            future.release()
        self.send(content, buffers or None)

    # ------------------------------------------------------------------ browser messages

    def _on_view_msg(self, _widget: Any, content: Any, buffers: list) -> None:
        """Messages from the view. Never raises: errors go to the status line (or the reply)."""
        if not isinstance(content, dict):
            return
        kind = content.get("type")
        request = content.get("request")
        try:
            if kind == "search":
                ok = False
                try:
                    if not buffers:
                        raise ImageError("the browser sent no image data: choose the file again.")
                    data = bytes(buffers[0])
                    name = str(content.get("name") or "query")
                    if content.get("k") is not None:
                        self.k = int(content["k"])
                    filters = content.get("filters")
                    if filters is not None:
                        self.filters = clean_filters(filters)
                    self._query = data
                    self.query_name = name
                    corners = content.get("corners")
                    preview = bytes(buffers[1]) if len(buffers) > 1 else b""
                    if not preview:
                        preview = query_preview_bytes(data, corners)
                    self._submit(data, name, corners=corners, preview=preview)
                    ok = True
                finally:
                    if request is not None:
                        self.send({"type": "ack", "request": request, "ok": ok})
            elif kind == "cancel":
                self.cancel()
            elif kind == "restore":
                self.restore(str(content.get("id") or ""))
            elif kind == "suggest_corners":
                reply = {"type": "corners", "corners": None}
                try:
                    if not buffers:
                        raise ImageError("the browser sent no image data: choose the file again.")
                    name = str(content.get("name") or "query")
                    future = self._get_engine().submit_suggest_corners(bytes(buffers[0]), name=name)
                except Exception as exc:
                    self.send(dict(reply, request=request, message=_readable(exc)))
                    return
                self._side_request("suggest", request, future, reply)
            elif kind == "decode":
                reply = {"type": "decoded"}
                try:
                    if not buffers:
                        raise ImageError("the browser sent no image data: choose the file again.")
                    name = str(content.get("name") or "query")
                    future = self._get_engine().submit_decode(bytes(buffers[0]), name=name, max_side=self.max_side)
                except Exception as exc:
                    self.send(dict(reply, request=request, message=_readable(exc)))
                    return
                self._side_request("decode", request, future, reply)
            elif kind == "preview":
                key = str(content.get("key") or "")
                reply = {"type": "preview", "key": key}
                try:
                    is_query = key in self._query_image_keys()
                    if not is_query and key not in self._known_image_keys():
                        raise QueryError("that image is not among the results on show: search again.")
                    url = None if is_query else self._presigned_image_url(key)
                    if url is not None:
                        self.send(dict(reply, request=request, message="", url=url))
                        return
                    future = self._get_engine().submit_preview(key)
                except Exception as exc:
                    self.send(dict(reply, request=request, message=_readable(exc)))
                    return
                # the query photo and a reference image are asked for together (evidence drawing)
                self._side_request("preview-query" if is_query else "preview", request, future, reply)
        except Exception as exc:
            self._show_error(exc)

    def _known_image_keys(self) -> set[str]:
        keys = {h.image_key for h in self._results.hits if h.image_key}
        for entry in self._entries:
            keys.update(h.image_key for h in entry["results"].hits if h.image_key)
        return keys

    def _query_image_keys(self) -> set[str]:
        keys = {e["query_key"] for e in self._entries if e.get("query_key")}
        if self.query_image_key:
            keys.add(self.query_image_key)
        return keys

    def _presigned_image_url(self, key: str) -> str | None:
        """A presigned URL of the stored reference ``key`` when configured and the browser can show
        its format as it is; None: send the bytes (a JPEG made by a worker)."""
        store = self._signing_store()
        if store is None or not key.lower().endswith(BROWSER_IMAGE_SUFFIXES):
            return None
        return store.presigned_url(key, expires=PRESIGNED_SECONDS)

    # ------------------------------------------------------------------ repr

    def __repr__(self) -> str:  # never shows settings or credentials
        state = (self.status or {}).get("state") or "idle"
        parts = [f"k={self.k}", f"state={state!r}"]
        if self.query_name:
            parts.append(f"query={self.query_name!r}")
        if self.results:
            parts.append(f"results={len(self.results)}")
        if self.error:
            parts.append(f"error={self.error!r}")
        return f"PapyrusSearch({', '.join(parts)})"


def query_preview_bytes(data: bytes, corners: Any, size: int = PREVIEW_SIDE) -> bytes:
    """A small JPEG of the query as it is searched (deskewed by ``corners``), b'' when it cannot be made.

    ``corners`` are in the pixels of the image (after EXIF orientation); the image is decoded at
    a reduced size, so they are scaled to it.
    """
    try:
        img = imaging.decode_image(data, max_side=4 * size, name="query")
        if corners is not None:
            width, height = img.info.get("original_size", img.size)
            sx, sy = img.size[0] / width, img.size[1] / height
            img = imaging.deskew(img, [[float(x) * sx, float(y) * sy] for x, y in corners])
        return imaging.thumbnail_bytes(img, size)
    except Exception:  # noqa: BLE001 - the search itself reports what is wrong with the image
        return b""


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _current_loop() -> asyncio.AbstractEventLoop:
    """The kernel's event loop (the running one; else the thread's current loop)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return asyncio.get_event_loop()


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Any, *args: Any) -> None:
    """Run ``fn(*args)`` on ``loop`` from any thread; a closed loop means the kernel is gone."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass
