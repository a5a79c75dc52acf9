"""Errors a person sees. Each message says what happened and what to do."""

from __future__ import annotations


class PapyrusError(Exception):
    """Base class of every error papyrus-widgets raises on purpose (shown as one readable line)."""


class ImageError(PapyrusError, ValueError):
    """The image cannot be used: empty, not an image, truncated, too large, unsupported."""


class CornersError(PapyrusError, ValueError):
    """The four corners do not describe a usable quadrilateral."""


class QueryError(PapyrusError, ValueError):
    """A search parameter is out of range (k, filters)."""


class ServiceError(PapyrusError, RuntimeError):
    """A service (database, object store, Dask cluster) is unreachable or misconfigured."""


class ModelError(PapyrusError, RuntimeError):
    """The embedding model cannot be found or loaded."""


class JobError(PapyrusError, RuntimeError):
    """A background job failed or was cancelled."""
