"""Searching: the embedding's nearest neighbours (:func:`knn`, HNSW) and the visual-word shortlist
(:func:`word_candidates`, the inverted file), both with the same metadata filters."""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np
import psycopg
from psycopg.rows import dict_row

from ..errors import QueryError
from ..request import EF_SEARCH_MAX, check_ef_search, check_k, clean_filters
from .catalogue import PAPYRUS_COLUMNS, get_meta, signed_words
from .connection import scalar
from .hnsw import hnsw_state
from .schema import EMBEDDING_DIM, MAX_WORD_WINDOWS

__all__ = [
    "EF_SEARCH_MIN_DEFAULT",
    "effective_ef_search",
    "filter_sql",
    "knn",
    "word_candidates",
    "stats",
]


log = logging.getLogger(__name__)

# --- searching ---------------------------------------------------------------------------------


EF_SEARCH_MIN_DEFAULT = 100
"""The least ``hnsw.ef_search`` a kNN query runs with when none is given. pgvector's own default
is 40; figure 3 of ``benchmarks/results.md`` (real-like embeddings, recall@10 against the exact
answer) measured 0.876 at 40 and 0.969 at 100 among 1,000,000 vectors, for 5.6 vs 10.3 ms p50:
a cost no search from a photo notices."""


def effective_ef_search(ef_search: int | None, k: int) -> int:
    """The ``hnsw.ef_search`` a kNN query for ``k`` hits runs with.

    Given: that value, raised to ``k`` (an HNSW scan returns at most ef_search rows). Not given:
    ``max(100, 2 * k)`` (at most 1000; :data:`EF_SEARCH_MIN_DEFAULT`), not pgvector's fixed 40: the
    candidate list should be well above the number of hits asked for, else recall drops as k and
    the collection grow.
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
    slower), default ``max(100, 2 * k)``, see :func:`effective_ef_search`. Each row carries the
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
    signatures: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """The ``n`` images that share the most (idf-weighted) visual words with a query, best first,
    with their papyrus metadata: the first stage of a search from a photo.

    ``words``: the query's words, a row per keypoint (repeats allowed); ``weights``: how many of
    the query's keypoints each row stands for in each window of the photo, one column per window
    (:func:`papyrus_widgets.retrieval.shortlist.query_windows`: 1 or 0; a 1-D array is one
    window); ``signatures``: each row's 64-bit signature
    (:meth:`~papyrus_widgets.retrieval.vocabulary.Vocabulary.signatures`), or None.

    A query keypoint and an indexed one *match* when they share a word and, where both have
    signatures, these differ in at most :data:`~papyrus_widgets.retrieval.vocabulary.HAMMING_THRESHOLD`
    bits (Hamming embedding). In each window an image scores ``Σ idf(w)² · √m_w · d_w / ‖q · idf‖``
    over its words, ``m_w`` the matching pairs of keypoints of word ``w`` (the query's weighted),
    ``d_w = 1 / ‖√count‖`` of the image's keypoint counts, ``q_w = √(the query's count)``, and
    ``idf(w) = ln((N + 1) / (df(w) + 1))``, ``df(w)`` the images with the word as the index holds
    them now (table ``word_df``, kept by triggers as postings come and go: it follows the
    collection as it grows). With every pair matching (no signatures: a query, or an
    index with words stored before signatures, :func:`~papyrus_widgets.index.catalogue.signed_words`)
    this is the cosine of the ``√count`` histograms. The windows rank the images each on their own.
    The list takes every window's first, then every window's second, … (ties: the higher score
    first). Each row's ``words_score`` is its best score in any window and ``words_window`` the
    (0-based) window that gave it. ``vector``: also return each row's embedding ``distance`` to it
    (cosine), else NULL.
    """
    from ..retrieval.vocabulary import HAMMING_THRESHOLD, SIGNATURE_BITS

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
        or (signatures is not None and len(signatures) != len(words))
    ):
        raise QueryError(
            "the query's visual words, weights and signatures must be lists of the same length "
            f"(weights: one column per window, at most {MAX_WORD_WINDOWS})."
        )
    if not len(words):
        return []
    hamming = HAMMING_THRESHOLD if signatures is not None and signed_words(conn) else SIGNATURE_BITS
    sigs = np.zeros(len(words), np.int64) if signatures is None else np.asarray(signatures, dtype=np.int64)
    k = range(weights.shape[1])
    cols = ", ".join(f"p.{c}" for c in PAPYRUS_COLUMNS)
    distance = "i.embedding <=> %s" if vector is not None else "NULL::float8"
    qw = ", ".join(f"in{j}" for j in k)
    # qk: the query's keypoints (word, signature, weight in each window); q: its distinct words
    # with their weight in each window and their idf (df: how many images of the index have the
    # word, kept in word_df by triggers on image_words, migration 5); pairs: per
    # image and word, the matching pairs of keypoints in each window (a posting per indexed
    # keypoint, its weight d = 1 / ‖√count‖; a posting stored without a signature is one per
    # image and word, weight √count / ‖√count‖, and matches every query keypoint of its word:
    # words alone, √m · weight); scored: a sum per window; allowed: those the filters allow;
    # firsts: each window's n best (a bounded sort each, not a full one: an image among the n
    # best of the interleaved list is among the n best of some window) with their rank there;
    # top: the n best by their best rank (ties: the higher score), joined to their metadata only then
    filtered = (
        f"SELECT s.* FROM scored s JOIN images i ON i.id = s.image_id JOIN papyri p ON p.id = i.papyrus_id{where}"
        if where
        else "SELECT * FROM scored"
    )
    best = f"greatest({', '.join(f'a.s{j} / qnorm.v{j}' for j in k)})" if len(k) > 1 else "a.s0 / qnorm.v0"
    firsts = " UNION ALL ".join(
        f"SELECT image_id, row_number() OVER (ORDER BY s DESC, image_id) AS r"
        f" FROM (SELECT image_id, s{j} AS s FROM allowed ORDER BY s{j} DESC, image_id LIMIT %s) w{j}"
        for j in k
    )
    sql = (
        f"WITH qk AS MATERIALIZED (SELECT * FROM unnest(%s::int4[], %s::int8[], {', '.join('%s::float4[]' for _ in k)})"
        f"   AS qk(word, sig, {qw})),"
        f" q AS MATERIALIZED (SELECT g.word, {', '.join(f'g.qw{j}' for j in k)}, ln((n.n + 1.0) / (d.df + 1.0)) AS idf"
        f"   FROM (SELECT word, {', '.join(f'sqrt(sum(in{j})) AS qw{j}' for j in k)} FROM qk GROUP BY word) g"
        "   CROSS JOIN (SELECT count(*)::float8 AS n FROM images) n"
        "   JOIN word_df d ON d.word = g.word),"
        " qnorm AS (SELECT "
        + ", ".join(f"greatest(sqrt(sum((q.qw{j} * q.idf) ^ 2)), 1e-9) AS v{j}" for j in k)
        + " FROM q),"
        " pairs AS (SELECT w.image_id, w.word, max(w.weight) AS d, "
        + ", ".join(f"sum(qk.in{j}) AS m{j}" for j in k)
        + "   FROM qk JOIN image_words w ON w.word = qk.word"
        "   WHERE w.signature IS NULL OR bit_count((w.signature # qk.sig)::bit(64)) <= %s"
        "   GROUP BY w.image_id, w.word),"
        " scored AS (SELECT p.image_id, "
        + ", ".join(f"sum(sqrt(p.m{j}) * p.d * q.idf * q.idf) AS s{j}" for j in k)
        + " FROM pairs p JOIN q ON q.word = p.word GROUP BY p.image_id),"
        f" allowed AS MATERIALIZED ({filtered}),"
        f" firsts AS (SELECT image_id, min(r) AS best_rank FROM ({firsts}) f GROUP BY image_id),"
        f" top AS (SELECT f.image_id, f.best_rank, {best} AS score,"
        + " CASE "
        + " ".join(f"WHEN a.s{j} / qnorm.v{j} = {best} THEN {j}" for j in k)
        + " END AS window_"
        " FROM firsts f JOIN allowed a ON a.image_id = f.image_id CROSS JOIN qnorm"
        " ORDER BY f.best_rank, score DESC, f.image_id LIMIT %s)"
        f" SELECT i.id AS image_id, top.score AS words_score, top.window_ AS words_window, {distance} AS distance,"
        f" i.object_key, i.thumb_key, i.source_name, i.model, NULL::int AS ef_search, {cols}"
        " FROM top JOIN images i ON i.id = top.image_id JOIN papyri p ON p.id = i.papyrus_id"
        " ORDER BY top.best_rank, top.score DESC, i.id"
    )
    args: list[Any] = [
        words.tolist(),
        sigs.tolist(),
        *(weights[:, j].tolist() for j in k),
        hamming,
        *params,
        *([n] * len(k)),
        n,
    ]
    if vector is not None:
        args.append(_query_vector(vector))
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, args).fetchall()


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
        "signed_words": signed_words(conn),
        "hnsw": hnsw_state(conn),
    }

