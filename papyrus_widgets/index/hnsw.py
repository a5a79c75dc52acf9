"""The index structures' upkeep around bulk loads. The HNSW index on the embeddings: dropped before
a bulk load and built once at its end, repaired when an interrupted load left it missing, rebuilt
on request (``papyrus db reindex``). The B-tree of the word postings: kept during a load (searches
read it), rebuilt compactly on request (``papyrus db reindex``, :func:`compact_postings`)."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

import psycopg

from ..errors import ServiceError
from .catalogue import image_count
from .connection import _autocommit, scalar
from .schema import HNSW_DDL, HNSW_INDEX, POSTINGS_INDEX

__all__ = [
    "BULK_MIN_ROWS",
    "BULK_RATIO",
    "HNSW_BUILD_MEMORY_MB_MAX",
    "bulk_load_wanted",
    "hnsw_state",
    "drop_hnsw",
    "build_hnsw",
    "hnsw_deferred",
    "compact_postings",
    "COMPACT_WAIT_S",
    "ensure_hnsw",
    "rebuild_hnsw",
]


log = logging.getLogger(__name__)

# --- the HNSW index: built once after a bulk load, maintained on small inserts -------------------

BULK_MIN_ROWS = 1000
"""An ingest of at least this many images …"""
BULK_RATIO = 0.5
"""… that adds at least this fraction of the rows already indexed is a bulk load: the HNSW index
is dropped before its COPY batches and built once at the end (one build over all rows is much
faster than inserting each vector into the graph). Smaller ingests maintain the index row by row."""
HNSW_BUILD_MEMORY_MB_MAX = 2048
"""The most ``maintenance_work_mem`` an index build asks for (about 3 KB per vector keeps the
graph of up to ~700,000 vectors in memory; beyond, the build still works, more slowly)."""
_BULK_LOCK = 7_305_512_002  # advisory lock: bulk loads hold it shared, a repair build exclusively


def bulk_load_wanted(existing: int, incoming: int) -> bool:
    """Whether adding ``incoming`` images to ``existing`` ones should defer the HNSW index."""
    return incoming >= BULK_MIN_ROWS and incoming >= BULK_RATIO * existing


def hnsw_state(conn: psycopg.Connection) -> str:
    """``"valid"``, ``"missing"`` (dropped for a bulk load that did not finish) or ``"invalid"``."""
    row = conn.execute(
        "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)", (HNSW_INDEX,)
    ).fetchone()
    if row is None:
        return "missing"
    return "valid" if row[0] else "invalid"


def drop_hnsw(conn: psycopg.Connection) -> None:
    conn.execute(f"DROP INDEX IF EXISTS {HNSW_INDEX}")


def build_hnsw(conn: psycopg.Connection) -> float:
    """Create the HNSW index if it does not exist, with ``maintenance_work_mem`` raised (for this
    build only) to hold the graph in memory; returns the seconds it took."""
    import time

    rows = image_count(conn)
    wanted_kb = int(min(HNSW_BUILD_MEMORY_MB_MAX, max(64, rows * 3 / 1024))) * 1024
    t0 = time.perf_counter()
    with conn.transaction():
        current_kb = scalar(conn, "SELECT setting::bigint FROM pg_settings WHERE name = 'maintenance_work_mem'")
        if wanted_kb > int(current_kb):  # only ever raise it
            conn.execute(f"SET LOCAL maintenance_work_mem = '{wanted_kb:d}kB'")
        try:
            with conn.transaction():
                conn.execute(HNSW_DDL)
        except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
            pass  # another process built it at the same moment
    return time.perf_counter() - t0


@contextmanager
def hnsw_deferred(url: str) -> Iterator[None]:
    """For a bulk load: drop the HNSW index now, build it once when the block ends (also when it
    ends with an error). If the process dies in between, the index stays missing and
    :func:`ensure_hnsw` (the next ingest or engine) or ``papyrus db reindex`` builds it."""
    conn = _autocommit(url)
    try:
        # shared: several bulk loads may run at once; a repair build waits for all of them
        conn.execute("SELECT pg_advisory_lock_shared(%s)", (_BULK_LOCK,))
        try:
            drop_hnsw(conn)
        except psycopg.errors.InsufficientPrivilege:  # not the table's owner: insert into the index
            log.warning("cannot drop the HNSW index for a bulk load (not the owner of images): keeping it")
            conn.execute("SELECT pg_advisory_unlock_shared(%s)", (_BULK_LOCK,))
            yield
            return
        try:
            yield
        finally:
            build_hnsw(conn)
            # planner statistics for the new row counts, and the visibility map that lets a search
            # read the posting lists from the index alone (index-only scans)
            conn.execute("VACUUM (ANALYZE) papyri, images, image_words")
            conn.execute("SELECT pg_advisory_unlock_shared(%s)", (_BULK_LOCK,))
    finally:
        conn.close()


COMPACT_WAIT_S = 30
"""How long :func:`compact_postings` waits, at each of its steps, for transactions that use
``image_words`` (an ingest's batch, a session left open in a transaction) before it gives up."""


def compact_postings(conn: psycopg.Connection, wait_s: float = COMPACT_WAIT_S) -> float | None:
    """Rebuild the postings' B-tree (:data:`~papyrus_widgets.index.schema.POSTINGS_INDEX`) with its
    pages full, without blocking searches or ingests (``REINDEX … CONCURRENTLY``; ``conn`` in
    autocommit); ``papyrus db reindex`` runs it. Returns the seconds it took, or None when this
    role may not (not the owner of ``image_words``). A rebuild waits for the transactions that use
    the table to end; when one lasts more than ``wait_s`` at a step it gives up, drops its
    half-built copy and raises :class:`ServiceError` (the index stays as it was).

    Postings arrive image by image but are ordered by word, so every batch inserts all over the
    tree and its pages end about half full: at 100,035 images 3.2 GB for 40 million postings,
    1.9 GB rebuilt (docs/scaling.md)."""
    import time

    t0 = time.perf_counter()
    conn.execute(f"SET lock_timeout = '{int(wait_s * 1000):d}ms'")
    try:
        _drop_unfinished_copies(conn)
        conn.execute(f"REINDEX INDEX CONCURRENTLY {POSTINGS_INDEX}")
    except psycopg.errors.InsufficientPrivilege:
        log.warning("cannot rebuild %s (not the owner of image_words): it stays as it is", POSTINGS_INDEX)
        return None
    except psycopg.errors.LockNotAvailable:
        try:
            _drop_unfinished_copies(conn)
            left = ""
        except psycopg.errors.LockNotAvailable:
            left = " (its half-built copy is dropped then)"
        raise ServiceError(
            f"could not rebuild the word postings index: a transaction used image_words for more than "
            f"{wait_s:g} s (an ingest, or a session left open in a transaction); it stays as it was: "
            f"run papyrus db reindex again when that has ended{left}."
        ) from None
    finally:
        conn.execute("RESET lock_timeout")
    return time.perf_counter() - t0


def _drop_unfinished_copies(conn: psycopg.Connection) -> None:
    """Drop what an interrupted rebuild leaves: an invalid copy that every insert still updates."""
    for (name,) in conn.execute(
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = 'image_words'::regclass AND NOT i.indisvalid AND c.relname LIKE %s",
        (f"{POSTINGS_INDEX}_ccnew%",),
    ).fetchall():
        conn.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')


def ensure_hnsw(url: str) -> bool:
    """Build the HNSW index if it is missing (an interrupted bulk load) or invalid, unless a bulk
    load is running now (it builds the index at its end); returns whether it built it."""
    with _autocommit(url) as conn:
        if hnsw_state(conn) == "valid":
            return False
        locked = scalar(conn, "SELECT pg_try_advisory_lock(%s)", (_BULK_LOCK,))
        if not locked:
            return False
        state = "missing"
        try:
            state = hnsw_state(conn)
            if state == "valid":
                return False
            # until it is built, searches are exact scans: correct, but slow on a large index
            log.warning("the HNSW index is %s (an interrupted bulk ingest?): building it now", state)
            if state == "invalid":
                drop_hnsw(conn)
            build_hnsw(conn)
            return True
        except psycopg.errors.InsufficientPrivilege:  # e.g. a search-only role: searches still work
            log.warning("the HNSW index is %s and this role may not build it: run papyrus db reindex as owner", state)
            return False
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_BULK_LOCK,))


def rebuild_hnsw(url: str) -> tuple[int, float]:
    """Drop and build the HNSW index afresh (``papyrus db reindex``); returns (vectors, seconds)."""
    with _autocommit(url) as conn:
        locked = scalar(conn, "SELECT pg_try_advisory_lock(%s)", (_BULK_LOCK,))
        if not locked:
            raise ServiceError(
                "a bulk ingest is running on this index and builds the HNSW index when it ends: "
                "wait for it, then run papyrus db reindex again if needed."
            )
        try:
            drop_hnsw(conn)
            seconds = build_hnsw(conn)
            return image_count(conn), seconds
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_BULK_LOCK,))

