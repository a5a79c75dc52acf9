"""The notebook widget: :class:`PapyrusSearch` (anywidget).

The browser view (``static/widget.js``, built from ``js/widget.js``) sends the chosen image as a
binary buffer; the kernel submits a search job to the engine, pushes its status every second and
pushes the hits, with their thumbnails as binary buffers, as soon as the job finishes.
"""

from __future__ import annotations

import asyncio
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anywidget
import traitlets as t

from .api import Engine, Results, get_engine, query_bytes
from .config import Settings, mask_url
from .errors import ImageError, PapyrusError
from .jobs import SearchJob

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

STATIC = Path(__file__).parent / "static"

POLL_SECONDS = 1.0
"""How often the status line is refreshed while a search runs."""

_URL_WITH_USERINFO = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/@'\"<>]+@[^\s'\"<>]*")


def _scrub(message: str) -> str:
    """Mask passwords of any connection URL inside a message shown to a person."""
    return _URL_WITH_USERINFO.sub(lambda m: mask_url(m.group(0)), message)


def _readable(exc: BaseException) -> str:
    """One readable line for an exception: PapyrusErrors speak for themselves."""
    if isinstance(exc, PapyrusError):
        text = str(exc) or type(exc).__name__
    else:
        detail = str(exc).strip()
        text = f"Unexpected {type(exc).__name__}" + (f": {detail}" if detail else "")
        text += " (this is a bug in papyrus-widgets; please report it)."
    return _scrub(text)


class PapyrusSearch(anywidget.AnyWidget):
    """Find the reference papyri nearest to a photo, inside a notebook.

    >>> w = PapyrusSearch(k=8)
    >>> w                      # pick an image and press Search in the widget, or:
    >>> w.search("photo.jpg")  # path, bytes, PIL image or numpy array
    >>> w.results_frame()      # the hits as a pandas DataFrame

    The engine (database, object store, Dask cluster, model) is started lazily on the first
    search, with ``get_engine(settings)``; constructing or displaying the widget starts nothing.

    While a search runs the status line is refreshed every second from the kernel's event loop,
    and the results are pushed as soon as the job finishes. **Only one search runs at a time:
    a new search (from the browser or from Python) cancels the one still running.** Errors (an
    unreadable image, a ``k`` out of range, a service down) are shown in the widget's status line
    and ``error`` trait; they are never raised from the browser's messages, and the widget stays
    usable. :meth:`close` cancels a running search.
    """

    _esm = STATIC / "widget.js"
    _css = STATIC / "widget.css"

    k = t.Int(8, help="number of results").tag(sync=True)
    status = t.Dict(help="state, stage, elapsed (s) and message of the current or last search").tag(sync=True)
    results = t.List(t.Dict(), help="hits of the last search as dicts (see jobs.Hit.to_dict)").tag(sync=True)
    thumbnails = t.List(t.Bytes(), help="JPEG thumbnail per result (b'' when missing)").tag(sync=True)
    query_name = t.Unicode("", help="name of the query image").tag(sync=True)
    error = t.Unicode("", help="message of the last error, '' when the last search did not fail").tag(sync=True)

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
        self._job: SearchJob | None = None
        self._results = Results(query="", hits=[])
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.on_msg(self._on_view_msg)

    # ------------------------------------------------------------------ query and search

    @property
    def query(self) -> bytes | None:
        """The query image as bytes. Set it to a path, bytes, a PIL image or a numpy array."""
        return self._query

    @query.setter
    def query(self, value: Any) -> None:
        if value is None:
            self._query = None
            self.query_name = ""
            return
        data, name = query_bytes(value)
        self._query = data
        self.query_name = name

    @property
    def job(self) -> SearchJob | None:
        """The search job still running, or None."""
        return self._job

    def search(self, query: Any = None, k: int | None = None) -> SearchJob | None:
        """Search with ``query`` (or the current :attr:`query`) and show the results.

        Returns the submitted job, or None when the search could not start; the reason is then
        shown in the widget (``status`` / ``error``). A search still running is cancelled first.
        """
        try:
            if query is not None:
                self.query = query
            if k is not None:
                self.k = int(k)
            if self._query is None:
                raise ImageError("no query image: choose an image file, or call search('photo.jpg').")
            return self._submit(self._query, self.query_name or "query")
        except Exception as exc:  # shown in the widget, never raised
            self._show_error(exc)
            return None

    def cancel(self) -> None:
        """Cancel the running search, if any."""
        job = self._job
        self._stop_polling()
        self._job = None
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
        self.status = self._public_status(status)

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
        super().close()

    def results_frame(self) -> "pd.DataFrame":
        """The results of the last search as a pandas DataFrame (one row per hit, no thumbnails)."""
        return self._results.frame()

    @property
    def last_results(self) -> Results:
        """The results of the last search as :class:`~papyrus_widgets.api.Results` (with thumbnails)."""
        return self._results

    # ------------------------------------------------------------------ engine and jobs

    def _get_engine(self) -> Engine:
        if self._engine is None:
            self._engine = get_engine(self._settings)
        return self._engine

    def _submit(
        self,
        data: bytes,
        name: str,
        corners: list[list[float]] | None = None,
        filters: dict | None = None,
    ) -> SearchJob:
        if self._job is not None:
            self.cancel()
        self._results = Results(query=name, hits=[])
        with self.hold_sync():  # old results must not stand under a new query's status
            self.results = []
            self.thumbnails = []
            self.error = ""
            # The first search starts the services (database, cluster) before it returns.
            self.status = {"state": "running", "stage": "submitting", "elapsed": 0.0, "message": ""}
        engine = self._get_engine()
        loop = _current_loop()  # the loop of the thread that handles this kernel message
        job = engine.submit_search(data, name=name, k=int(self.k), corners=corners, filters=filters)
        self._loop = loop
        self._job = job
        with self.hold_sync():
            self.error = ""
            self.status = self._public_status(job.status())
        job.add_done_callback(lambda j, loop=loop: _call_soon(loop, self._finish, j))
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
        self.status = self._public_status(status)
        if self._loop is not None:
            self._timer = self._loop.call_later(POLL_SECONDS, self._tick, job)

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
            if state == "done":
                hits = job.hits()
                self._results = Results(query=job.name, hits=hits, elapsed=float(status.get("elapsed") or 0.0))
                with self.hold_sync():
                    self.results = [hit.to_dict() for hit in hits]
                    self.thumbnails = [hit.thumbnail or b"" for hit in hits]
                    self.error = ""
                    self.status = self._public_status(status)
            elif state == "error":
                message = status.get("message") or "The search failed."
                self._show_error(message, status)
            else:
                self.status = self._public_status(status)
        except Exception as exc:
            self._stop_polling()
            self._job = None
            self._show_error(exc)

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
        message = _scrub(exc) if isinstance(exc, str) else _readable(exc)
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
            "message": _scrub(str(status.get("message") or "")),
        }
        return out

    # ------------------------------------------------------------------ browser messages

    def _on_view_msg(self, _widget: Any, content: Any, buffers: list) -> None:
        """Messages from the view. Never raises: errors go to the status line."""
        if not isinstance(content, dict):
            return
        kind = content.get("type")
        try:
            if kind == "search":
                if not buffers:
                    raise ImageError("the browser sent no image data: choose the file again.")
                data = bytes(buffers[0])
                name = str(content.get("name") or "query")
                if content.get("k") is not None:
                    self.k = int(content["k"])
                self._query = data
                self.query_name = name
                self._submit(data, name, corners=content.get("corners"), filters=content.get("filters"))
            elif kind == "cancel":
                self.cancel()
        except Exception as exc:
            self._show_error(exc)

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
