"""papyrus-widgets: papyrus image retrieval inside Jupyter.

>>> from papyrus_widgets import PapyrusSearch, search
>>> PapyrusSearch()                      # the widget
>>> search("photo.jpg", k=5).frame()     # the same search from a cell
"""

from __future__ import annotations

from typing import Any

from .api import Engine, IngestReport, Results, RewordReport, get_engine, ingest, search
from .config import Settings
from .errors import CornersError, ImageError, JobError, ModelError, PapyrusError, QueryError, ServiceError

__version__ = "0.1.0"

__all__ = [
    "PapyrusSearch",
    "search",
    "ingest",
    "get_engine",
    "Engine",
    "Results",
    "IngestReport",
    "RewordReport",
    "Settings",
    "PapyrusError",
    "ImageError",
    "CornersError",
    "QueryError",
    "ServiceError",
    "ModelError",
    "JobError",
]


def __getattr__(name: str) -> Any:
    # the widget (anywidget, ipywidgets) loads only when asked for, so the CLI and workers stay lean
    if name == "PapyrusSearch":
        from .widget import PapyrusSearch

        return PapyrusSearch
    raise AttributeError(f"module 'papyrus_widgets' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext papyrus_widgets`` registers the ``%papyrus`` line magic."""
    from .magic import load_ipython_extension as load

    load(ipython)
