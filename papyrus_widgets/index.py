"""The vector index: PostgreSQL + pgvector schema, migrations, bulk insert and kNN with filters.

Tables
- ``papyri``: one row per catalogue record (HGV id when known), with metadata;
- ``images``: one row per (papyrus, image bytes), with the 128-d embedding, the object-store keys
  of the original and the thumbnail, and the fingerprint of the model that made the vector;
- ``image_words``: the visual-word inverted file (word, image, weight): the first stage of a search
  from a photo (:mod:`papyrus_widgets.retrieval.shortlist`), a B-tree on (word, image) that holds
  the weight too, so a posting list is read from the index alone;
- ``index_meta``: key/value facts about the index (the model and the visual vocabulary that built it);
- ``schema_version``: migrations applied.

A search shortlists images by their visual words (:func:`word_candidates`) and by cosine distance
of the embeddings (:func:`knn`, HNSW index, ``vector_cosine_ops``).
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from .config import hide_passwords, mask_url
from .errors import QueryError, ServiceError
from .metadata import PapyrusRecord
from .request import EF_SEARCH_MAX, check_ef_search, check_k, clean_filters

EMBEDDING_DIM = 128
MAX_WORD_WINDOWS = 16
"""At most this many windows of a photo in one word search (:func:`word_candidates`)."""
MIN_PGVECTOR = (0, 5, 0)  # HNSW arrived in 0.5.0

HNSW_INDEX = "images_embedding_hnsw"
HNSW_DDL = f"CREATE INDEX IF NOT EXISTS {HNSW_INDEX} ON images USING hnsw (embedding vector_cosine_ops)"
"""The HNSW index as migration 1 defines it (pgvector's defaults m=16, ef_construction=64)."""

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        f"""
        CREATE TABLE papyri (
            id              bigserial PRIMARY KEY,
            key             text NOT NULL UNIQUE,
            hgv_id          text,
            tm_id           text,
            inventory       text,
            inventory_key   text,
            collection      text,
            title           text,
            date_text       text,
            date_from       integer,
            date_to         integer,
            place           text,
            subjects        text[] NOT NULL DEFAULT '{{}}',
            image_urls      text[] NOT NULL DEFAULT '{{}}',
            papyri_info_url text,
            updated_at      timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX papyri_dates ON papyri (date_from, date_to);
        CREATE INDEX papyri_collection ON papyri (collection);
        CREATE TABLE images (
            id          bigserial PRIMARY KEY,
            papyrus_id  bigint NOT NULL REFERENCES papyri(id) ON DELETE CASCADE,
            sha256      text NOT NULL,
            source_name text,
            object_key  text NOT NULL,
            thumb_key   text NOT NULL,
            width       integer,
            height      integer,
            model       text NOT NULL,
            embedding   vector({EMBEDDING_DIM}) NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            UNIQUE (papyrus_id, sha256)
        );
        {HNSW_DDL};
        CREATE TABLE index_meta (key text PRIMARY KEY, value text NOT NULL);
        """,
    ),
    (
        2,
        """
        CREATE TABLE image_words (
            word     integer NOT NULL,
            image_id bigint NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            weight   real NOT NULL,
            PRIMARY KEY (word, image_id)
        );
        CREATE INDEX image_words_image ON image_words (image_id);
        """,
    ),
    (
        3,
        # the weight inside the key's index: a word's posting list is read by an index-only scan
        # (contiguous index pages, no visit to the table), 3-5x faster than migration 2's key
        """
        ALTER TABLE image_words DROP CONSTRAINT image_words_pkey;
        ALTER TABLE image_words ADD PRIMARY KEY (word, image_id) INCLUDE (weight);
        """,
    ),
]

PAPYRUS_COLUMNS = (
    "key",
    "hgv_id",
    "tm_id",
    "inventory",
    "inventory_key",
    "collection",
    "title",
    "date_text",
    "date_from",
    "date_to",
    "place",
    "subjects",
    "image_urls",
    "papyri_info_url",
)


log = logging.getLogger(__name__)

_MIGRATION_LOCK = 7_305_512_001  # pg_advisory_xact_lock key for migrations


@dataclass
class ImageRow:
    """One image ready for the index."""

    record: PapyrusRecord
    sha256: str
    source_name: str
    object_key: str
    thumb_key: str
    width: int
    height: int
    model: str
    embedding: np.ndarray = field(repr=False)
    words: np.ndarray | None = field(default=None, repr=False)
    """Distinct visual words of the image (int) …"""
    word_weights: np.ndarray | None = field(default=None, repr=False)
    """… and their weights (:func:`papyrus_widgets.retrieval.shortlist.document_weights`); None: no words."""


# --- connections -------------------------------------------------------------------------------

POOL_TIMEOUT = 10.0
"""Seconds to wait for the first connections when a process opens its pool."""
POOL_WAIT = 2.0
"""Seconds a task waits for a pooled connection before it tries one direct connection instead
(after an outage the pool reconnects with a growing back-off, even once the server is back)."""

_pools: dict[str, ConnectionPool] = {}
_pools_lock = threading.Lock()


def _configure(conn: psycopg.Connection) -> None:
    register_vector(conn)


def get_pool(url: str) -> ConnectionPool:
    """The connection pool of this process for ``url`` (created once, reused by every task)."""
    with _pools_lock:
        pool = _pools.get(url)
        if pool is None or pool.closed:
            ensure_schema(url)
            # check: a pooled connection is tested (an empty query) before it is handed out, so
            # connections broken by a server restart are replaced instead of failing a search
            pool = ConnectionPool(
                url,
                min_size=1,
                max_size=4,
                configure=_configure,
                check=ConnectionPool.check_connection,
                open=False,
                name="papyrus",
                timeout=POOL_TIMEOUT,
            )
            try:
                pool.open(wait=True, timeout=POOL_TIMEOUT)
            except psycopg.Error as exc:
                raise ServiceError(_db_message(url, exc)) from None
            _pools[url] = pool
        return pool


@contextmanager
def pooled_connection(url: str) -> Iterator[psycopg.Connection]:
    """A connection from this process's pool for ``url``, committed (or rolled back) and returned
    at the end. A server that is down or went away mid-query is a :class:`ServiceError` (one
    readable line) within seconds, never a raw driver error or a long wait."""
    pool = get_pool(url)
    try:
        conn = pool.getconn(timeout=POOL_WAIT)
    except PoolTimeout:
        # none free, or the pool is waiting out its reconnect back-off although the server may be
        # back: one direct connection (a ServiceError at once if the server is still down)
        with connect(url) as direct:
            try:
                yield direct
            except psycopg.OperationalError as exc:
                raise ServiceError(_db_message(url, exc)) from None
        return
    try:
        with conn:  # commit, or roll back on an error
            yield conn
    except psycopg.OperationalError as exc:  # the server went away mid-query
        raise ServiceError(_db_message(url, exc)) from None
    finally:
        pool.putconn(conn)


def close_pools() -> None:
    with _pools_lock:
        for pool in _pools.values():
            pool.close()
        _pools.clear()


def _db_message(url: str, exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return hide_passwords(
        f"cannot reach PostgreSQL at {mask_url(url)} ({first}): check that the server runs and "
        "PAPYRUS_DATABASE_URL is right, or unset it to use the embedded server.",
        url,
    )


def connect(url: str) -> psycopg.Connection:
    """A single new connection with the vector type registered (for migrations and tools)."""
    try:
        conn = psycopg.connect(url, connect_timeout=10)
    except psycopg.Error as exc:
        raise ServiceError(_db_message(url, exc)) from None
    try:
        register_vector(conn)
    except psycopg.ProgrammingError:
        pass  # the extension is not created yet; ensure_schema creates it
    return conn


# --- schema ------------------------------------------------------------------------------------

_schema_ready: set[str] = set()


def ensure_schema(url: str) -> int:
    """Create the vector extension and apply pending migrations; returns the schema version."""
    if url in _schema_ready:
        return MIGRATIONS[-1][0]
    with connect(url) as conn:
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except psycopg.errors.FeatureNotSupported as exc:
            raise ServiceError(
                f"PostgreSQL at {mask_url(url)} has no pgvector extension ({exc}): install pgvector on the "
                "server, then run CREATE EXTENSION vector."
            ) from None
        except psycopg.errors.InsufficientPrivilege:
            conn.rollback()
            exists = conn.execute("SELECT 1 FROM pg_extension WHERE extname='vector'").fetchone()
            if not exists:
                raise ServiceError(
                    f"PostgreSQL at {mask_url(url)}: the vector extension is missing and this user may not "
                    "create it: ask an administrator to run CREATE EXTENSION vector."
                ) from None
        conn.commit()
        version = scalar(conn, "SELECT extversion FROM pg_extension WHERE extname='vector'")
        if _version_tuple(version) < MIN_PGVECTOR:
            raise ServiceError(
                f"pgvector {version} at {mask_url(url)} is too old: papyrus-widgets needs "
                f"{'.'.join(map(str, MIN_PGVECTOR))} or newer (ALTER EXTENSION vector UPDATE)."
            )
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            current = scalar(conn, "SELECT coalesce(max(version), 0) FROM schema_version")
            if current > MIGRATIONS[-1][0]:
                raise ServiceError(
                    f"the index schema (version {current}) is newer than this papyrus-widgets "
                    f"(version {MIGRATIONS[-1][0]}): upgrade the package."
                )
            for number, sql in MIGRATIONS:
                if number > current:
                    conn.execute(sql)
                    conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))
    _schema_ready.add(url)
    return MIGRATIONS[-1][0]


def scalar(conn: psycopg.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    """The single value of a query that returns one row (an aggregate, a SHOW, a function call)."""
    row = conn.execute(sql, params).fetchone()  # type: ignore[arg-type]  # sql is a package constant
    if row is None:
        raise ServiceError(f"the database returned no row for {sql.split()[0]} …")
    return row[0]


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:3] if p.isdigit())


# --- writing -----------------------------------------------------------------------------------


def existing_images(conn: psycopg.Connection, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which (papyrus key, sha256) pairs the index already holds."""
    pairs = list(pairs)
    if not pairs:
        return set()
    rows = conn.execute(
        "SELECT p.key, i.sha256 FROM images i JOIN papyri p ON p.id = i.papyrus_id"
        " WHERE (p.key, i.sha256) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
        ([k for k, _ in pairs], [s for _, s in pairs]),
    ).fetchall()
    return {(k, s) for k, s in rows}


def upsert_papyri(conn: psycopg.Connection, records: Sequence[PapyrusRecord]) -> dict[str, int]:
    """Insert or update catalogue records; returns key → id.

    One statement per record (the last record of a key wins; a field that is None keeps the stored
    value), sent as one batch: ``executemany`` in pipeline mode, so a batch of records costs one
    round trip to the server, not one per record."""
    unique = {r.key: r for r in records}
    if not unique:
        return {}
    cols = ", ".join(PAPYRUS_COLUMNS)
    placeholders = ", ".join(["%s"] * len(PAPYRUS_COLUMNS))
    updates = ", ".join(f"{c} = coalesce(EXCLUDED.{c}, papyri.{c})" for c in PAPYRUS_COLUMNS[1:])
    ids: dict[str, int] = {}
    with conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO papyri ({cols}) VALUES ({placeholders})"
            f" ON CONFLICT (key) DO UPDATE SET {updates}, updated_at = now() RETURNING key, id",
            [_papyrus_values(record) for record in unique.values()],
            returning=True,
        )
        while True:
            for key, id_ in cur.fetchall():
                ids[key] = id_
            if not cur.nextset():
                break
    return ids


def _papyrus_values(r: PapyrusRecord) -> list[Any]:
    return [
        r.key,
        r.hgv_id,
        r.tm_id,
        r.inventory,
        r.inventory_key,
        r.collection,
        r.title,
        r.date_text,
        r.date_from,
        r.date_to,
        r.place,
        list(r.subjects),
        list(r.image_urls),
        r.papyri_info_url,
    ]


def add_images(conn: psycopg.Connection, rows: Sequence[ImageRow]) -> tuple[int, int]:
    """Bulk-add images with binary COPY in one transaction; returns (added, skipped duplicates)."""
    if not rows:
        return 0, 0
    with conn.transaction():
        ids = upsert_papyri(conn, [r.record for r in rows])
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS images_load (LIKE images INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        with conn.cursor() as cur:
            with cur.copy(
                "COPY images_load (papyrus_id, sha256, source_name, object_key, thumb_key, width, height,"
                " model, embedding) FROM STDIN WITH (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["int8", "text", "text", "text", "text", "int4", "int4", "text", "vector"])
                for r in rows:
                    copy.write_row(
                        (
                            ids[r.record.key],
                            r.sha256,
                            r.source_name,
                            r.object_key,
                            r.thumb_key,
                            r.width,
                            r.height,
                            r.model,
                            np.asarray(r.embedding, dtype=np.float32),
                        )
                    )
            cur.execute(
                "INSERT INTO images (papyrus_id, sha256, source_name, object_key, thumb_key, width, height,"
                " model, embedding)"
                " SELECT DISTINCT ON (papyrus_id, sha256) papyrus_id, sha256, source_name, object_key,"
                " thumb_key, width, height, model, embedding FROM images_load"
                " ON CONFLICT (papyrus_id, sha256) DO NOTHING RETURNING id, papyrus_id, sha256"
            )
            inserted = {(pid, sha): iid for iid, pid, sha in cur.fetchall()}
            added = len(inserted)
            with cur.copy("COPY image_words (word, image_id, weight) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["int4", "int8", "float4"])
                for r in rows:
                    image_id = inserted.pop((ids[r.record.key], r.sha256), None)
                    if image_id is None or r.words is None or r.word_weights is None:
                        continue
                    for word, weight in zip(r.words.tolist(), r.word_weights.tolist()):
                        copy.write_row((word, image_id, weight))
    return added, len(rows) - added


def set_meta(conn: psycopg.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO index_meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        (key, value),
    )


def get_meta(conn: psycopg.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM index_meta WHERE key = %s", (key,)).fetchone()
    return row[0] if row else None


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


def image_count(conn: psycopg.Connection) -> int:
    return int(scalar(conn, "SELECT count(*) FROM images"))


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


def _autocommit(url: str) -> psycopg.Connection:
    conn = connect(url)
    conn.autocommit = True
    return conn


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


# --- searching ---------------------------------------------------------------------------------


EF_SEARCH_MIN_DEFAULT = 40
"""pgvector's own default of ``hnsw.ef_search``."""


def effective_ef_search(ef_search: int | None, k: int) -> int:
    """The ``hnsw.ef_search`` a kNN query for ``k`` hits runs with.

    Given: that value, raised to ``k`` (an HNSW scan returns at most ef_search rows). Not given:
    ``max(40, 2 * k)`` (at most 1000), not pgvector's fixed 40: the candidate list should be well
    above the number of hits asked for, else recall drops as k grows.
    """
    ef = check_ef_search(ef_search)
    if ef is None:
        ef = max(EF_SEARCH_MIN_DEFAULT, 2 * k)
    return min(EF_SEARCH_MAX, max(ef, k))


def filter_sql(filters: Mapping[str, Any] | None) -> tuple[str, list[Any]]:
    """Allow-listed, parameterised WHERE clause for metadata filters.

    The filters are checked (and cleaned) by :func:`papyrus_widgets.request.clean_filters`, the one
    place that does it; a search's filters already are, and cleaning them again changes nothing."""
    clauses: list[str] = []
    params: list[Any] = []
    for name, value in clean_filters(filters).items():
        if name == "date_from":
            clauses.append("coalesce(p.date_to, p.date_from) >= %s")
            params.append(value)
        elif name == "date_to":
            clauses.append("coalesce(p.date_from, p.date_to) <= %s")
            params.append(value)
        elif name == "collection":
            clauses.append("p.collection = %s")
            params.append(value)
        else:
            column = "p.place" if name == "place" else "p.title"
            clauses.append(f"{column} ILIKE %s ESCAPE '\\'")
            params.append("%" + _escape_like(value) + "%")
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _query_vector(vector: np.ndarray) -> np.ndarray:
    vec = np.asarray(vector, dtype=np.float32).reshape(-1)
    if vec.shape != (EMBEDDING_DIM,) or not np.all(np.isfinite(vec)):
        raise QueryError(f"the query vector must be {EMBEDDING_DIM} finite numbers.")
    return vec


def knn(
    conn: psycopg.Connection,
    vector: np.ndarray,
    k: int,
    filters: Mapping[str, Any] | None = None,
    ef_search: int | None = None,
) -> list[dict[str, Any]]:
    """The k nearest images by cosine similarity, with their papyrus metadata, best first.

    ``ef_search``: the HNSW candidate list size for this query (1 … 1000; higher = better recall,
    slower), default ``max(40, 2 * k)``, see :func:`effective_ef_search`. Each row carries the
    value the query ran with as ``ef_search`` (read back from the server in the same statement).
    """
    k = check_k(k)
    ef = effective_ef_search(ef_search, k)
    where, params = filter_sql(filters)
    vec = _query_vector(vector)
    cols = ", ".join(f"p.{c}" for c in PAPYRUS_COLUMNS)
    sql = (
        f"SELECT i.id AS image_id, i.embedding <=> %s AS distance, i.object_key, i.thumb_key,"
        f" i.source_name, i.model, current_setting('hnsw.ef_search')::int AS ef_search, {cols}"
        f" FROM images i JOIN papyri p ON p.id = i.papyrus_id{where}"
        f" ORDER BY i.embedding <=> %s LIMIT %s"
    )
    with conn.transaction():
        conn.execute(f"SET LOCAL hnsw.ef_search = {ef:d}")
        if where:
            # pgvector >= 0.8 keeps scanning the HNSW graph until k rows pass the filter
            try:
                with conn.transaction():
                    conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
            except psycopg.Error:
                pass
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(sql, [vec, *params, vec, k]).fetchall()
    # relaxed_order may return near-ties out of order: order exactly by distance
    rows.sort(key=lambda r: r["distance"])
    return rows


def word_candidates(
    conn: psycopg.Connection,
    words: np.ndarray,
    weights: np.ndarray,
    n: int,
    filters: Mapping[str, Any] | None = None,
    vector: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """The ``n`` images that share the most (idf-weighted) visual words with a query, best first,
    with their papyrus metadata: the first stage of a search from a photo.

    ``words``: the query's distinct words; ``weights``: their weights, one column per window of
    the photo (:func:`papyrus_widgets.retrieval.shortlist.query_windows`; a 1-D array is one
    window). In each window an image scores ``Σ idf(w)² · q_w · d_w / ‖q · idf‖`` over the shared
    words, with ``idf(w) = ln((N + 1) / (df(w) + 1))`` counted from the posting lists at query time
    (so it follows the collection as it grows), and the windows rank the images each on their own.
    The list takes every window's first, then every window's second, … (ties: the higher score
    first). Each row's ``words_score`` is its best score in any window and ``words_window`` the
    (0-based) window that gave it. ``vector``: also return each row's embedding ``distance`` to it
    (cosine), else NULL.
    """
    n = check_k(n)
    where, params = filter_sql(filters)
    words = np.asarray(words, dtype=np.int32).reshape(-1)
    weights = np.asarray(weights, dtype=np.float32)
    if weights.ndim == 1:
        weights = weights[:, None]
    if (
        weights.ndim != 2
        or len(words) != len(weights)
        or not 1 <= weights.shape[1] <= MAX_WORD_WINDOWS
        or not np.all(np.isfinite(weights))
    ):
        raise QueryError(
            "the query's visual words and weights must be two lists of the same length "
            f"(weights: one column per window, at most {MAX_WORD_WINDOWS})."
        )
    if not len(words):
        return []
    k = range(weights.shape[1])
    cols = ", ".join(f"p.{c}" for c in PAPYRUS_COLUMNS)
    distance = "i.embedding <=> %s" if vector is not None else "NULL::float8"
    qw = ", ".join(f"qw{j}" for j in k)
    # q: each query word with its weight in each window and its idf (df counted on the index
    # alone); scored: one pass over the posting lists, a sum per window; ranked: each window's
    # order (with filters, among the images they allow); top: the n best by their best window
    # rank, joined to their metadata only then
    filtered = (
        f"SELECT s.* FROM scored s JOIN images i ON i.id = s.image_id JOIN papyri p ON p.id = i.papyrus_id{where}"
        if where
        else "SELECT * FROM scored"
    )
    sql = (
        f"WITH q AS MATERIALIZED (SELECT q.word, {', '.join(f'q.qw{j}' for j in k)},"
        "   ln((n.n + 1.0) / (d.df + 1.0)) AS idf"
        f"   FROM unnest(%s::int4[], {', '.join('%s::float4[]' for _ in k)}) AS q(word, {qw})"
        "   CROSS JOIN (SELECT count(*)::float8 AS n FROM images) n"
        "   CROSS JOIN LATERAL (SELECT count(*) AS df FROM image_words c WHERE c.word = q.word) d"
        "   WHERE d.df > 0),"
        " qnorm AS (SELECT "
        + ", ".join(f"greatest(sqrt(sum((q.qw{j} * q.idf) ^ 2)), 1e-9) AS v{j}" for j in k)
        + " FROM q),"
        " scored AS (SELECT w.image_id, "
        + ", ".join(f"sum(w.weight * q.qw{j} * q.idf * q.idf) AS s{j}" for j in k)
        + " FROM q JOIN image_words w ON w.word = q.word GROUP BY w.image_id),"
        f" allowed AS ({filtered}),"
        " ranked AS (SELECT a.image_id, "
        + ", ".join(
            f"a.s{j} / qnorm.v{j} AS c{j}, row_number() OVER (ORDER BY a.s{j} DESC, a.image_id) AS r{j}" for j in k
        )
        + " FROM allowed a CROSS JOIN qnorm),"
        " top AS (SELECT image_id, "
        + (f"least({', '.join(f'r{j}' for j in k)})" if len(k) > 1 else "r0")
        + " AS best_rank, "
        + (f"greatest({', '.join(f'c{j}' for j in k)})" if len(k) > 1 else "c0")
        + " AS score, "
        + "CASE "
        + " ".join(
            f"WHEN c{j} = " + (f"greatest({', '.join(f'c{i}' for i in k)})" if len(k) > 1 else "c0") + f" THEN {j}"
            for j in k
        )
        + " END"
        + " AS window_ FROM ranked ORDER BY best_rank, score DESC, image_id LIMIT %s)"
        f" SELECT i.id AS image_id, top.score AS words_score, top.window_ AS words_window, {distance} AS distance,"
        f" i.object_key, i.thumb_key, i.source_name, i.model, NULL::int AS ef_search, {cols}"
        " FROM top JOIN images i ON i.id = top.image_id JOIN papyri p ON p.id = i.papyrus_id"
        " ORDER BY top.best_rank, top.score DESC, i.id"
    )
    args: list[Any] = [words.tolist(), *(weights[:, j].tolist() for j in k), *params, n]
    if vector is not None:
        args.append(_query_vector(vector))
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, args).fetchall()


def has_words(conn: psycopg.Connection) -> bool:
    """Whether the visual-word index holds anything (not for an index built before it existed)."""
    return conn.execute("SELECT 1 FROM image_words LIMIT 1").fetchone() is not None


def stats(conn: psycopg.Connection) -> dict[str, Any]:
    papyri = scalar(conn, "SELECT count(*) FROM papyri")
    images = scalar(conn, "SELECT count(*) FROM images")
    models: dict[str, int] = dict(conn.execute("SELECT model, count(*) FROM images GROUP BY model").fetchall())
    return {
        "papyri": papyri,
        "images": images,
        "models": models,
        "model_source": get_meta(conn, "model"),
        "vocabulary": get_meta(conn, "vocabulary"),
        "images_with_words": int(scalar(conn, "SELECT count(DISTINCT image_id) FROM image_words")),
        "hnsw": hnsw_state(conn),
    }
