"""Searching: the embedding's nearest neighbours (:func:`knn`, HNSW) and the visual-word shortlist
(:func:`word_candidates`, the inverted file), both with the same metadata filters."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

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
    "WordPairs",
    "word_candidates",
    "word_frequencies",
    "word_pairs",
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


DIVERSE_SHARE: float | None = None
"""Whether each window's list of :func:`word_candidates` is made diverse (None: not, each window's
images in their score order): an image whose matched query keypoints in that window are mostly
those of an image ranked above it (this share of its own or more, and :data:`DIVERSE_SHARED` or
more of them) goes after the window's other images (of its first :data:`DIVERSE_POOL` times
``n``), so that one thing in the photo that the collection shows many times (several photographs
or crops of a papyrus shown as a thumbnail beside the one sought) does not fill the list. An image
indexed twice (the same postings: one scan for two records) stays beside its twin. Only with the
keypoints given (a photo searched without corners). Measured with :data:`MIN_MATCHED` = 3 and
0.3 (results.md, figure 0d, "Diverse windows", 2026-12-06; ``bench_realphoto.py --trial
diverse``): the first stage's lists got better (*lcd+steep* photos' recall@10 / @50 / @100 0.469
/ 0.797 / 0.953 → 0.563 / 0.859 / 0.984), but no answer changed on 208 photos searched both ways,
while a photo took 1.06-1.07x as long and a "no confirmed match" search 1.18x (the second look
ranks 36 windows). So off, an option."""
DIVERSE_SHARED = 5
"""... and this many shared keypoints at least (a few chance matches in common defer nothing)."""
DIVERSE_POOL = 3
"""How many times ``n`` of each window's best images the diverse list is made from."""
MIN_MATCHED = 0
"""In each window, an image that shares fewer than this many of the window's query keypoints
(distinct keypoints with a matching pair) goes after those that share more (0: no such rule): one
or two chance matches of a rare word with a small image (its few keypoints make each match weigh
much) are no evidence, and such an image could not be confirmed. Only with the keypoints given,
as :data:`DIVERSE_SHARE`, and measured with it (3): off, an option."""


COMMON_WORDS: float | None = None
"""Words that more than this share of the collection's images hold are not read by
:func:`word_pairs` (None: every word read). A collection of one library's scans shares what every
scan shows — the library's footer bar, the white ground, a colour strip — and its words are held by
most images: their postings are long and their idf is low (``ln 10`` at a tenth of the images,
against about 4.6 for a word of a hundredth), so a photo of a scan that shows the footer reads
thousands of postings per footer keypoint for a few per cent of any score. Skipped, such a word
still counts in the query's norm, so no image's score gains from it. In figure 0's index (10,000
distractor crops of photographs, no footer) 69 of 65,536 words are held by more than a tenth of
the images, 0.8 % of the postings; with the distractors dressed as the library's scans
(``bench_realphoto.py --dressed 1``), 821 words, 17.9 % of the postings (45 words by more than
half). Measured with 0.1 as ``bench_realphoto.py --trial common-words`` (results.md, figure 0g)."""


def word_candidates(
    conn: psycopg.Connection,
    words: np.ndarray,
    weights: np.ndarray,
    n: int,
    filters: Mapping[str, Any] | None = None,
    vector: np.ndarray | None = None,
    signatures: np.ndarray | None = None,
    pairs: WordPairs | None = None,
    keypoints: np.ndarray | None = None,
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
    collection as it grows; a word no image has counts for nothing). With every pair matching (no
    signatures: a query, or an index with words stored before signatures,
    :func:`~papyrus_widgets.index.catalogue.signed_words`) this is the cosine of the ``√count``
    histograms. The windows rank the images each on their own (an image that matches anything is
    ranked in every window, at 0 where it matches nothing). The list takes every window's first,
    then every window's second, … (ties: the higher score first, then the lower image id). Each
    row's ``words_score`` is its best score in any window and ``words_window`` the (0-based) window
    that gave it. ``vector``: also return each row's embedding ``distance`` to it (cosine), else
    None.

    The database finds the matching pairs (:func:`word_pairs`, the postings read once) and the
    scores and ranks are summed here; ``pairs``: those of these very ``words``, ``signatures`` and
    ``filters`` found before (e.g. :meth:`WordPairs.subset` of a larger set), not read again.
    ``keypoints``: each row's query keypoint (rows of one keypoint's several words share it), which
    the diverse lists need (:data:`DIVERSE_SHARE`, :data:`MIN_MATCHED`; without it they are off).
    """
    n = check_k(n)
    words = np.asarray(words, dtype=np.int32).reshape(-1)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim == 1:
        weights = weights[:, None]
    if (
        weights.ndim != 2
        or len(words) != len(weights)
        or not 1 <= weights.shape[1] <= MAX_WORD_WINDOWS
        or not np.all(np.isfinite(weights))
        or (signatures is not None and len(signatures) != len(words))
        or (pairs is not None and pairs.keypoints != len(words))
    ):
        raise QueryError(
            "the query's visual words, weights and signatures must be lists of the same length "
            f"(weights: one column per window, at most {MAX_WORD_WINDOWS})."
        )
    if not len(words):
        return []
    if pairs is None:
        pairs = word_pairs(conn, words, signatures, filters)
    ids, scores, windows = _rank_pairs(words, weights, pairs, n, keypoints)
    if not len(ids):
        return []
    cols = ", ".join(f"p.{c}" for c in PAPYRUS_COLUMNS)
    distance = "i.embedding <=> %s" if vector is not None else "NULL::float8"
    sql = (
        f"SELECT i.id AS image_id, {distance} AS distance, i.object_key, i.thumb_key, i.source_name, i.model,"
        f" NULL::int AS ef_search, {cols}"
        " FROM images i JOIN papyri p ON p.id = i.papyrus_id WHERE i.id = ANY(%s)"
    )
    args: list[Any] = ([_query_vector(vector)] if vector is not None else []) + [ids.tolist()]
    with conn.cursor(row_factory=dict_row) as cur:
        found = {r["image_id"]: r for r in cur.execute(sql, args).fetchall()}
    out = []
    for image_id, score, window in zip(ids.tolist(), scores.tolist(), windows.tolist()):
        row = found.get(image_id)  # None: the image was deleted since its pairs were read
        if row is not None:
            out.append({"image_id": image_id, "words_score": score, "words_window": window, **row})
    return out


@dataclass(frozen=True)
class WordPairs:
    """The matching pairs of a query's keypoints and the index's postings (:func:`word_pairs`): what
    :func:`word_candidates` scores, kept so that the same keypoints can be scored over other windows
    without reading the postings again (:meth:`subset`)."""

    keypoints: int
    """How many query keypoints were asked for (rows of their ``words``)."""
    image_ids: np.ndarray = field(repr=False)
    """A pair's image (int64), a row per pair."""
    rows: np.ndarray = field(repr=False)
    """A pair's query keypoint: its row in the words asked for (int64)."""
    weights: np.ndarray = field(repr=False)
    """A pair's posting weight ``d`` (float64)."""
    words: np.ndarray = field(repr=False)
    """The query's words the index has (sorted, int64), and beside them ..."""
    idf: np.ndarray = field(repr=False)
    """... each one's ``idf`` as the index holds it now."""

    def subset(self, kept: np.ndarray) -> WordPairs:
        """The pairs of the keypoints ``kept`` (a mask over the keypoints, or their rows in order),
        their rows renumbered as in ``words[kept]``."""
        rows = np.arange(self.keypoints)[np.asarray(kept)]
        where = np.full(self.keypoints, -1, np.int64)
        where[rows] = np.arange(len(rows))
        new = where[self.rows]
        keep = new >= 0
        return replace(
            self, keypoints=len(rows), image_ids=self.image_ids[keep], rows=new[keep], weights=self.weights[keep]
        )

    def joined(self, after: WordPairs) -> WordPairs:
        """These pairs and ``after``'s, the pairs of keypoints asked for after these (its rows follow
        theirs): the pairs of the two runs of words asked for as one."""
        words, at = np.unique(np.concatenate([self.words, after.words]), return_index=True)
        return WordPairs(
            self.keypoints + after.keypoints,
            np.concatenate([self.image_ids, after.image_ids]),
            np.concatenate([self.rows, after.rows + self.keypoints]),
            np.concatenate([self.weights, after.weights]),
            words,
            np.concatenate([self.idf, after.idf])[at],
        )


def word_frequencies(conn: psycopg.Connection, words: np.ndarray) -> np.ndarray:
    """How many images have each of ``words`` (their ``df``, table ``word_df``; 0 for a word no
    image has), an int64 array beside ``words``: how many postings a row of that word reads."""
    words = np.asarray(words, dtype=np.int64).reshape(-1)
    distinct = np.unique(words)
    if not len(distinct):
        return np.zeros(len(words), np.int64)
    known = conn.execute(
        "SELECT word, df FROM word_df WHERE word = ANY(%s::int4[]) ORDER BY word", [distinct.tolist()]
    ).fetchall()
    df = np.zeros(len(distinct), np.int64)
    if known:
        found = np.asarray([w for w, _ in known], np.int64)
        df[np.searchsorted(distinct, found)] = [d for _, d in known]
    return df[np.searchsorted(distinct, words)]


def word_pairs(
    conn: psycopg.Connection,
    words: np.ndarray,
    signatures: np.ndarray | None = None,
    filters: Mapping[str, Any] | None = None,
    more: Sequence[psycopg.Connection] = (),
) -> WordPairs:
    """The pairs of the query keypoints ``words`` (a row per keypoint, with their 64-bit
    ``signatures`` or None) and the postings of the images ``filters`` allow that *match* them
    (:func:`word_candidates`), with the idf of the query's words: a statement that reads the
    words' postings (index-only scans of the postings' B-tree) and returns the pairs as three arrays.

    ``more``: further connections to the same database (:func:`~.connection.spare_connections`);
    the keypoints are then cut into as many runs as there are connections, each run's postings
    read on its own connection at the same time (a statement runs on one core of the server: this
    puts the others to work for one search). The pairs are the same either way, in the same order
    when the server returns each run's in the order of the keypoints.

    With :data:`COMMON_WORDS` set, the postings of the words that more than that share of the
    images hold are not read (no pairs of theirs); their idf is returned all the same."""
    from ..retrieval.vocabulary import HAMMING_THRESHOLD, SIGNATURE_BITS

    words = np.asarray(words, dtype=np.int32).reshape(-1)
    if signatures is not None and len(signatures) != len(words):
        raise QueryError("the query's visual words and signatures must be lists of the same length.")
    if not len(words):
        empty = np.zeros(0, np.int64)
        return WordPairs(0, empty, empty, np.zeros(0), empty, np.zeros(0))
    hamming = HAMMING_THRESHOLD if signatures is not None and signed_words(conn) else SIGNATURE_BITS
    sigs = np.zeros(len(words), np.int64) if signatures is None else np.asarray(signatures, dtype=np.int64)
    distinct = np.unique(words)
    known = conn.execute(
        "SELECT d.word, ln((n.n + 1.0) / (d.df + 1.0)), d.df, n.n FROM word_df d"
        " CROSS JOIN (SELECT count(*)::float8 AS n FROM images) n WHERE d.word = ANY(%s::int4[]) ORDER BY d.word",
        [distinct.tolist()],
    ).fetchall()
    common = [w for w, _, df, n in known if COMMON_WORDS is not None and df > COMMON_WORDS * n]
    read_rows = np.flatnonzero(~np.isin(words, common))  # the rows whose postings are read
    where, params = filter_sql(filters)
    allowed = " JOIN images i ON i.id = w.image_id JOIN papyri p ON p.id = i.papyrus_id" if where else ""
    match = "(w.signature IS NULL OR bit_count((w.signature # qk.sig)::bit(64)) <= %s)"
    sql = (
        "SELECT array_agg(w.image_id), array_agg(qk.row), array_agg(w.weight)"
        " FROM unnest(%s::int4[], %s::int8[]) WITH ORDINALITY AS qk(word, sig, row)"
        f" JOIN image_words w ON w.word = qk.word{allowed}" + (f"{where} AND {match}" if where else f" WHERE {match}")
    )

    def read(c: psycopg.Connection, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        at = read_rows[start:stop]
        with c.cursor(binary=True) as cur:
            got = cur.execute(sql, [words[at].tolist(), sigs[at].tolist(), *params, hamming]).fetchone()
        images, rows, weights = got if got is not None else (None, None, None)
        return (
            np.asarray(images or [], np.int64),
            at[np.asarray(rows or [], np.int64) - 1],
            np.asarray(weights or [], np.float64),
        )

    cuts = np.linspace(0, len(read_rows), min(len(more) + 1, len(read_rows)) + 1).round().astype(int).tolist()
    runs = list(zip(cuts, cuts[1:]))
    if len(runs) > 1:
        with ThreadPoolExecutor(len(runs) - 1, thread_name_prefix="papyrus-pairs") as pool:
            others = [pool.submit(read, c, a, b) for c, (a, b) in zip(more, runs[1:])]
            parts = [read(conn, *runs[0])] + [f.result() for f in others]
    else:
        parts = [read(conn, 0, len(read_rows))]
    return WordPairs(
        len(words),
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
        np.asarray([w for w, *_ in known], np.int64),
        np.asarray([v for _, v, *_ in known], np.float64),
    )


def _rank_pairs(
    words: np.ndarray, weights: np.ndarray, pairs: WordPairs, n: int, keypoints: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``n`` best images of :func:`word_candidates` from its ``pairs``: (image ids, score,
    window), in the list's order."""
    distinct, word_of = np.unique(words.astype(np.int64), return_inverse=True)
    at = np.searchsorted(pairs.words, distinct)
    at = np.minimum(at, max(len(pairs.words) - 1, 0))
    known = (pairs.words[at] == distinct) if len(pairs.words) else np.zeros(len(distinct), bool)
    idf = np.where(known, pairs.idf[at] if len(pairs.idf) else 0.0, 0.0)
    windows = weights.shape[1]
    # the query's side: q_w = √(its weighted count), one column per window, and its norm per window
    q = np.zeros((len(distinct), windows))
    np.add.at(q, word_of, weights)
    qnorm = np.maximum(np.sqrt(((np.sqrt(q) * idf[:, None])[known] ** 2).sum(axis=0)), 1e-9)
    keep = known[word_of[pairs.rows]]
    images, rows, d = pairs.image_ids[keep], pairs.rows[keep], pairs.weights[keep]
    if not len(images):
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
    # per (image, word) group: the posting weight d, its pairs taken group by group (in their order)
    group_key = images * len(distinct) + word_of[rows]
    by_group = _stable_order(group_key)
    sorted_key = group_key[by_group]
    new_group = _run_starts(sorted_key)
    groups = sorted_key[new_group]
    group_of = np.empty(len(by_group), np.int64)
    group_of[by_group] = np.cumsum(new_group) - 1
    d_group = np.maximum(np.maximum.reduceat(d[by_group], np.flatnonzero(new_group)), 0.0)  # as from 0
    word_idf = idf[groups % len(distinct)]
    coefficient = d_group * word_idf * word_idf
    # per image (the groups are in image order): a sum per window
    image_key = groups // len(distinct)
    new_image = _run_starts(image_key)
    ids = image_key[new_image]
    image_of = np.cumsum(new_image) - 1
    pair_image = image_of[group_of]  # each pair's image, as a row of ``ids``
    if np.count_nonzero(weights) * SPARSE_WINDOWS < weights.size:
        s = _cell_sums(weights, rows[by_group], group_of[by_group], coefficient, image_of, len(ids))
    else:  # window by window: the matching pairs m of each group, then the images' sums
        s = np.zeros((len(ids), windows))
        for j in range(windows):
            m = np.bincount(group_of, weights=weights[rows, j], minlength=len(groups))
            s[:, j] = np.bincount(image_of, weights=np.sqrt(m) * coefficient, minlength=len(ids))
    # each window's n best (higher sum, then lower id), ranked; an image's best rank in any window
    none = np.iinfo(np.int64).max
    best_rank = np.full(len(ids), none)
    few = None
    if MIN_MATCHED and keypoints is not None:
        few = _few_matched(pair_image, rows, weights, keypoints, len(ids))
    for j in range(windows):
        inside = None if DIVERSE_SHARE is None or keypoints is None else (pair_image, rows, weights[:, j], keypoints)
        first = _window_first(s[:, j], ids, n, None if few is None else few[:, j], inside)
        best_rank[first] = np.minimum(best_rank[first], np.arange(1, len(first) + 1))
    chosen = np.flatnonzero(best_rank != none)
    normed = s[chosen] / qnorm
    score, window = normed.max(axis=1), normed.argmax(axis=1)
    order = np.lexsort((ids[chosen], -score, best_rank[chosen]))[:n]
    return ids[chosen][order], score[order], window[order]


SPARSE_WINDOWS = 4
""":func:`_rank_pairs` sums the pairs cell by cell (:func:`_cell_sums`) when the query rows lie in
fewer than 1 in this many of the windows (the second and tilted looks' 36 small windows, where a
keypoint lies in at most 4), else window by window (the first pass's few large ones): the same sums
either way, bit for bit. On recorded calls of figure 0's searches (results.md, figure 0) cell by
cell took 0.50x the time of window by window in the second and tilted looks, 1.43x in the first
pass."""


def _cell_sums(
    weights: np.ndarray,
    rows: np.ndarray,
    group_of: np.ndarray,
    coefficient: np.ndarray,
    image_of: np.ndarray,
    images: int,
) -> np.ndarray:
    """(images, windows): each image's ``Σ √m · coefficient`` over its (image, word) groups, per window,
    ``m`` a group's pairs' summed ``weights`` in the window; the pairs (their query ``rows``, their
    groups ``group_of``) given group by group. Every pair counts once for each window its row lies
    in (the row's non-zero weights), summed per (group, window) cell in the pairs' order, then per
    image in the groups' order: the window-by-window sums, bit for bit."""
    windows = weights.shape[1]
    in_row, in_window = np.nonzero(weights)
    value = weights[in_row, in_window].astype(np.float64)
    per_row = np.bincount(in_row, minlength=len(weights))
    row_start = np.cumsum(per_row) - per_row
    count = per_row[rows]
    pair_of = np.repeat(np.arange(len(rows)), count)
    entry = np.repeat(row_start[rows] - (np.cumsum(count) - count), count) + np.arange(len(pair_of))
    cell = group_of[pair_of] * windows + in_window[entry]
    by_cell = _stable_order(cell)
    sorted_cell = cell[by_cell]
    new_cell = _run_starts(sorted_cell)
    m = np.bincount(np.cumsum(new_cell) - 1, weights=value[entry][by_cell])
    cell_group, cell_window = np.divmod(sorted_cell[new_cell], windows)
    part = np.sqrt(m) * coefficient[cell_group]
    s = np.bincount(image_of[cell_group] * windows + cell_window, weights=part, minlength=images * windows)
    return s.reshape(images, windows)


def _run_starts(sorted_key: np.ndarray) -> np.ndarray:
    """Where each run of equal values begins in ``sorted_key`` (bool, its length; empty for an empty key)."""
    if not len(sorted_key):
        return np.zeros(0, bool)
    return np.r_[True, sorted_key[1:] != sorted_key[:-1]]


def _stable_order(key: np.ndarray) -> np.ndarray:
    """``np.argsort(key, kind="stable")`` of non-negative int64 keys, as radix passes over 16 bits at a
    time (NumPy sorts 16-bit keys by radix): the same order, in about half the time on a search's
    pairs."""
    order = np.arange(len(key))
    top = int(key.max()) if len(key) else 0
    shift = 0
    while True:
        digit = ((key[order] >> shift) & 0xFFFF).astype(np.uint16)
        order = order[np.argsort(digit, kind="stable")]
        shift += 16
        if top >> shift == 0:
            return order


def _few_matched(
    pair_image: np.ndarray, rows: np.ndarray, weights: np.ndarray, keypoints: np.ndarray, images: int
) -> np.ndarray:
    """(images, windows) bool: whether an image matches fewer than :data:`MIN_MATCHED` of the
    photo's keypoints inside each window (each (image, keypoint) once, its more words' rows with it)."""
    n_kp = int(keypoints.max()) + 1
    _, once = np.unique(pair_image * n_kp + keypoints[rows], return_index=True)
    inside = weights[rows[once]] > 0
    counts = [np.bincount(pair_image[once], weights=inside[:, j], minlength=images) for j in range(weights.shape[1])]
    return np.stack(counts, 1) < MIN_MATCHED


def _window_first(
    col: np.ndarray,
    ids: np.ndarray,
    n: int,
    few: np.ndarray | None,
    inside: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None,
) -> np.ndarray:
    """One window's list: the ``n`` best of its images (rows of ``ids``) by their sums ``col``, then
    the lower id; an image that matches too ``few`` keypoints after all the others; with
    ``inside`` (each pair's image, its row, the window's row weights, each row's keypoint), the
    others in :func:`_diverse`'s order, from the best ``n`` x :data:`DIVERSE_POOL`."""
    wide = n * DIVERSE_POOL if inside is not None else n
    key = col if few is None else np.where(few, col - col.max() - 1.0, col)
    some = (
        np.arange(len(ids))
        if len(ids) <= wide
        else np.flatnonzero(key >= np.partition(key, len(ids) - wide)[len(ids) - wide])
    )
    pool = some[np.lexsort((ids[some], -key[some]))][:wide]
    if inside is None:
        return pool[:n]
    weak = np.zeros(len(pool), bool) if few is None else few[pool]  # after the rest either way
    strong = _diverse(pool[~weak], col[pool[~weak]], *inside)
    return np.concatenate([strong, pool[weak]])[:n]


def _diverse(
    pool: np.ndarray,
    scores: np.ndarray,
    pair_image: np.ndarray,
    rows: np.ndarray,
    inside: np.ndarray,
    keypoints: np.ndarray,
) -> np.ndarray:
    """``pool`` (rows of the images, best first, with their ``scores``) with each image whose
    matched keypoints (those ``inside`` the window) are mostly those of one image before it moved
    after the rest; a twin of that image (the same keypoints and score: one scan indexed for two
    records) stays beside it."""
    inside_pair = inside[rows] > 0
    where = np.full(int(pair_image.max()) + 1 if len(pair_image) else 0, -1, np.int64)
    where[pool] = np.arange(len(pool))
    at = where[pair_image]
    keep = (at >= 0) & inside_pair
    kp, inverse = np.unique(keypoints[rows[keep]], return_inverse=True)
    member = np.zeros((len(pool), len(kp)), np.float32)
    member[at[keep], inverse] = 1.0
    sizes = member.sum(axis=1)
    shared = member @ member.T
    accepted: list[int] = []
    deferred: list[int] = []
    for c in range(len(pool)):
        if accepted and sizes[c]:
            common = shared[c, accepted]
            best = int(np.argmax(common))
            a = accepted[best]
            twin = common[best] == sizes[c] == sizes[a] and scores[c] == scores[a]
            if not twin and common[best] >= DIVERSE_SHARED and common[best] >= DIVERSE_SHARE * sizes[c]:  # type: ignore[operator]
                deferred.append(c)
                continue
        accepted.append(c)
    return pool[np.asarray(accepted + deferred, np.int64)]


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
