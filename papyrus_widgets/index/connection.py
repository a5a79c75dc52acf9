"""Connections to PostgreSQL: one pool per process and URL (checked, with a direct connection as
fallback), single connections for tools, and the one-line messages a scholar sees when the server
cannot be reached."""

from __future__ import annotations

import logging
import threading
from contextlib import ExitStack, contextmanager
from typing import Any, Iterator, Sequence

import psycopg
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool, PoolTimeout

from ..config import hide_passwords, mask_url
from ..errors import ServiceError

__all__ = [
    "POOL_TIMEOUT",
    "POOL_WAIT",
    "SPARE_WAIT",
    "get_pool",
    "pooled_connection",
    "spare_connections",
    "close_pools",
    "connect",
    "scalar",
]

log = logging.getLogger(__name__)


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
            from .schema import ensure_schema  # the pool's first use migrates the schema

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


SPARE_WAIT = 0.2
"""Seconds :func:`spare_connections` waits for each further connection of the pool (a new one is
made in the background the first time) before it makes do with those it has."""


@contextmanager
def spare_connections(url: str, n: int) -> Iterator[list[psycopg.Connection]]:
    """Up to ``n`` more connections from this process's pool for ``url`` besides the one a task
    holds, to read parts of one query side by side (:func:`~papyrus_widgets.index.queries.word_pairs`):
    as many as the pool gives within :data:`SPARE_WAIT` each, perhaps none (a busy pool, or one
    reconnecting), never a direct connection and never an error for want of one. Each is committed
    (or rolled back) and returned at the end; a server gone mid-query is a :class:`ServiceError`."""
    pool = get_pool(url) if n > 0 else None
    got: list[psycopg.Connection] = []
    with ExitStack() as stack:
        while pool is not None and len(got) < n:
            try:
                conn = pool.getconn(timeout=SPARE_WAIT)
            except PoolTimeout:
                break
            stack.callback(pool.putconn, conn)
            stack.enter_context(conn)  # commit, or roll back on an error (before it goes back)
            got.append(conn)
        try:
            yield got
        except psycopg.OperationalError as exc:  # the server went away mid-query
            raise ServiceError(_db_message(url, exc)) from None


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


def scalar(conn: psycopg.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    """The single value of a query that returns one row (an aggregate, a SHOW, a function call)."""
    row = conn.execute(sql, params).fetchone()  # type: ignore[arg-type]  # sql is a package constant
    if row is None:
        raise ServiceError(f"the database returned no row for {sql.split()[0]} …")
    return row[0]



def _autocommit(url: str) -> psycopg.Connection:
    conn = connect(url)
    conn.autocommit = True
    return conn



