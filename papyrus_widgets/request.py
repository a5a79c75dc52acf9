"""One search request, validated once: :class:`SearchRequest` and its checks of k, corners, filters,
``ef_search`` and ``verify``.

The Python API, the widget, the CLI and the ``%papyrus`` magic all build a :class:`SearchRequest`
with :meth:`SearchRequest.build` and hand it on; the index only turns already-valid filters into SQL.
The errors are the readable ones a person sees: :class:`~papyrus_widgets.errors.QueryError` for k,
filters and ``ef_search``, :class:`~papyrus_widgets.errors.CornersError` for corners.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import QueryError
from .imaging import order_corners

K_MAX = 1000
"""The most hits one search returns."""

EF_SEARCH_MAX = 1000
"""pgvector's upper limit for ``hnsw.ef_search``."""

FILTER_FIELDS = ("date_from", "date_to", "place", "collection", "text")
"""Allowed search filters: papyri dated (partly) after ``date_from`` / before ``date_to`` (years,
negative = BC), ``place`` and ``text`` (case-insensitive substring of place / title), ``collection``."""

YEAR_FILTERS = ("date_from", "date_to")


def check_k(k: Any, maximum: int = K_MAX) -> int:
    """k as a validated int (1 … maximum)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise QueryError(f"k must be a whole number between 1 and {maximum}, got {k!r}.")
    if not 1 <= int(k) <= maximum:
        raise QueryError(f"k must be between 1 and {maximum}, got {k}.")
    return int(k)


def check_ef_search(ef_search: Any) -> int | None:
    """``ef_search`` as a validated int (1 … 1000, pgvector's range), or None for the default."""
    if ef_search is None:
        return None
    if isinstance(ef_search, bool) or not isinstance(ef_search, (int, np.integer)):
        raise QueryError(f"ef_search must be a whole number between 1 and {EF_SEARCH_MAX}, got {ef_search!r}.")
    if not 1 <= int(ef_search) <= EF_SEARCH_MAX:
        raise QueryError(f"ef_search must be between 1 and {EF_SEARCH_MAX}, got {ef_search}.")
    return int(ef_search)


def _year(name: str, value: Any) -> int:
    if isinstance(value, (int, np.integer)):  # exact, however large (True counts as 1, as in int())
        return int(value)
    try:
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        number = float(value)
        if not number.is_integer():
            raise ValueError
        return int(number)
    except (TypeError, ValueError, OverflowError):
        raise QueryError(f"filter {name} must be a year (negative for BC), got {value!r}.") from None


def clean_filters(filters: Any) -> dict[str, Any]:
    """``filters`` as a dict in :data:`FILTER_FIELDS` order, without empty values (None, blank text);
    years as ints, text stripped. Raises :class:`QueryError` for anything else: not a mapping, an
    unknown name, a year that is not a whole number, text with a NUL character."""
    if filters is None:
        return {}
    if not isinstance(filters, Mapping):
        raise QueryError(
            f"filters must be a mapping of field to value, got a {type(filters).__name__}: "
            f"use a dict with {', '.join(FILTER_FIELDS)}."
        )
    unknown = sorted(set(filters) - set(FILTER_FIELDS), key=str)
    if unknown:
        raise QueryError(f"unknown filter(s) {unknown}: use {', '.join(FILTER_FIELDS)}.")
    out: dict[str, Any] = {}
    for name in FILTER_FIELDS:
        value = filters.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if name in YEAR_FILTERS:
            out[name] = _year(name, value)
            continue
        text = str(value).strip()
        if "\x00" in text:  # PostgreSQL text cannot hold NUL: refuse it here, as one line
            raise QueryError(f"filter {name} contains a NUL character (\\x00): remove it and search again.")
        if text:
            out[name] = text
    return out


def check_corners(corners: Any) -> tuple[tuple[float, float], ...] | None:
    """Four corners (any order) as ((x, y) × 4) ordered TL, TR, BR, BL, or None for the whole image.

    Only their shape is checked here (the image's size is known on the worker, which checks that
    they lie on it); raises :class:`~papyrus_widgets.errors.CornersError`."""
    if corners is None:
        return None
    ordered = order_corners(corners)
    return tuple((float(x), float(y)) for x, y in ordered)


@dataclass(frozen=True)
class SearchRequest:
    """What one search asks for, already valid: make one with :meth:`build`.

    ``corners``: ordered TL, TR, BR, BL in the query's pixels, or None; ``filters``: the cleaned
    (name, value) pairs in :data:`FILTER_FIELDS` order (:attr:`filter_dict` as a dict);
    ``ef_search``: None for the default; ``verify``: None for ``Settings.verify``."""

    k: int = 8
    corners: tuple[tuple[float, float], ...] | None = None
    filters: tuple[tuple[str, Any], ...] = ()
    ef_search: int | None = None
    verify: bool | None = None

    @classmethod
    def build(
        cls,
        *,
        k: Any = 8,
        corners: Sequence[Sequence[float]] | None = None,
        filters: Mapping[str, Any] | None = None,
        ef_search: Any = None,
        verify: bool | None = None,
    ) -> SearchRequest:
        """The one place a search's parameters are checked; raises ``QueryError`` / ``CornersError``."""
        return cls(
            k=check_k(k),
            corners=check_corners(corners),
            filters=tuple(clean_filters(filters).items()),
            ef_search=check_ef_search(ef_search),
            verify=None if verify is None else bool(verify),
        )

    @property
    def filter_dict(self) -> dict[str, Any]:
        """The filters as a new dict (empty when there are none)."""
        return dict(self.filters)

    @property
    def corner_list(self) -> list[list[float]] | None:
        """The corners as a list of [x, y] lists, or None."""
        return None if self.corners is None else [[x, y] for x, y in self.corners]
