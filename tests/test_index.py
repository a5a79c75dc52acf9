"""The pgvector index on a real embedded PostgreSQL: migrations, COPY, kNN, filters, errors."""

from __future__ import annotations

import time

import numpy as np
import psycopg
import pytest

from papyrus_widgets import index, services
from papyrus_widgets.errors import QueryError, ServiceError
from papyrus_widgets.metadata import PapyrusRecord

from .conftest import reference


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    return services.start_embedded_postgres(tmp_path_factory.mktemp("pg-index") / "postgres")


@pytest.fixture()
def conn(url):
    index.ensure_schema(url)
    with index.connect(url) as c:
        c.execute("TRUNCATE images, papyri RESTART IDENTITY CASCADE")
        c.execute("DELETE FROM index_meta WHERE key = 'unsigned_words'")
        c.commit()
        yield c


def _vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=index.EMBEDDING_DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def _row(i: int, *, key=None, sha=None, vec=None, **meta) -> index.ImageRow:
    record = PapyrusRecord(key=key or f"hgv:{i}", hgv_id=str(i), inventory=f"P.Test {i}", **meta)
    return index.ImageRow(
        record=record,
        sha256=sha or f"{i:064x}",
        source_name=f"{i}.jpg",
        object_key=f"originals/00/{i}",
        thumb_key=f"thumbnails/00/{i}",
        width=10,
        height=10,
        model="m1",
        embedding=_vec(i) if vec is None else vec,
    )


def test_schema_is_versioned_and_idempotent(url):
    assert index.ensure_schema(url) == index.MIGRATIONS[-1][0]
    index._schema_ready.clear()
    assert index.ensure_schema(url) == index.MIGRATIONS[-1][0]
    with index.connect(url) as c:
        versions = [v for (v,) in c.execute("SELECT version FROM schema_version ORDER BY 1")]
        assert versions == [n for n, _ in index.MIGRATIONS]
        (method,) = c.execute(
            "SELECT am.amname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_am am ON am.oid = c.relam WHERE c.relname = 'images_embedding_hnsw'"
        ).fetchone()
        assert method == "hnsw"


def test_copy_insert_skips_duplicates_and_knn_finds_exact(conn):
    rows = [_row(i) for i in range(50)]
    assert index.add_images(conn, rows) == (50, 0)
    assert index.add_images(conn, rows[:10] + [_row(50)]) == (1, 10)
    hits = index.knn(conn, _vec(7), 3)
    assert hits[0]["hgv_id"] == "7" and hits[0]["distance"] == pytest.approx(0.0, abs=1e-5)
    assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)
    assert index.stats(conn)["images"] == 51
    assert index.existing_images(conn, [("hgv:3", f"{3:064x}"), ("hgv:3", "f" * 64)]) == {("hgv:3", f"{3:064x}")}


def test_same_papyrus_metadata_is_updated_not_duplicated(conn):
    index.add_images(conn, [_row(1, title=None)])
    index.add_images(conn, [_row(1, sha="e" * 64, title="Quittung")])
    assert conn.execute("SELECT count(*), max(title) FROM papyri").fetchone() == (1, "Quittung")
    assert conn.execute("SELECT count(*) FROM images").fetchone() == (2,)


def test_filters_return_k_when_enough_rows_match(conn):
    rows = [
        _row(i, date_from=100 + i, date_to=100 + i, place="Oxyrhynchos" if i % 10 == 0 else "Hermopolis")
        for i in range(300)
    ]
    index.add_images(conn, rows)
    hits = index.knn(conn, _vec(1), 5, {"place": "oxyrhyn"})
    assert len(hits) == 5 and all(h["place"] == "Oxyrhynchos" for h in hits)
    dated = index.knn(conn, _vec(1), 5, {"date_from": 350, "date_to": 360})
    assert len(dated) == 5 and all(350 <= h["date_from"] <= 360 for h in dated)


@pytest.mark.parametrize("value", ["'; DROP TABLE papyri; --", "100%", "a_b", "\\", "' OR 1=1 --"])
def test_filter_values_are_parameters_not_sql(conn, value):
    index.add_images(conn, [_row(1, place="Hermopolis"), _row(2, place="100% sure a_b \\")])
    hits = index.knn(conn, _vec(1), 5, {"place": value, "text": value})
    assert all(h["title"] is None for h in hits)
    assert conn.execute("SELECT count(*) FROM papyri").fetchone() == (2,)  # nothing dropped
    like = index.knn(conn, _vec(1), 5, {"place": "100%"})
    assert [h["hgv_id"] for h in like] == ["2"]


@pytest.mark.parametrize("k", [0, -1, 10_000, 2.5, "5", True, None])
def test_bad_k(conn, k):
    with pytest.raises(QueryError, match="k must"):
        index.knn(conn, _vec(1), k)


def test_unknown_filter_field(conn):
    with pytest.raises(QueryError, match="unknown filter"):
        index.knn(conn, _vec(1), 3, {"title; drop": "x"})
    with pytest.raises(QueryError, match="year"):
        index.knn(conn, _vec(1), 3, {"date_from": "second century"})


def test_unreachable_server_is_a_readable_error(tmp_path):
    bad = f"postgresql://nobody:secret@/papyrus?host={tmp_path}&connect_timeout=2"
    with pytest.raises(ServiceError) as info:
        index.ensure_schema(bad)
    assert "cannot reach PostgreSQL" in str(info.value) and "secret" not in str(info.value)


def test_server_without_pgvector_is_explained(url):
    # a fresh database without the extension, reached by a role that may not create it
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS noext")
        c.execute("CREATE DATABASE noext")
    noext = url.replace("/papyrus?", "/noext?")
    with psycopg.connect(noext, autocommit=True) as c:
        if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = 'plain'").fetchone():
            c.execute("CREATE ROLE plain LOGIN")
        c.execute("REVOKE CREATE ON DATABASE noext FROM PUBLIC")
    plain = noext.replace("postgres:@", "plain:@")
    with pytest.raises(ServiceError, match="CREATE EXTENSION vector"):
        index.ensure_schema(plain)


# --- ef_search per query -----------------------------------------------------------------------


def _uniform(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, index.EMBEDDING_DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_ef_search_is_the_one_the_query_runs_with(conn):
    index.add_images(conn, [_row(i) for i in range(100)])
    # each row reports current_setting('hnsw.ef_search') of its own statement
    assert {h["ef_search"] for h in index.knn(conn, _vec(1), 5, ef_search=123)} == {123}
    assert {h["ef_search"] for h in index.knn(conn, _vec(1), 5)} == {100}  # max(100, 2k)
    assert {h["ef_search"] for h in index.knn(conn, _vec(1), 60)} == {120}
    assert {h["ef_search"] for h in index.knn(conn, _vec(1), 10, ef_search=3)} == {10}  # raised to k
    assert {h["ef_search"] for h in index.knn(conn, _vec(1), 600)} == {1000}  # pgvector's ceiling
    # SET LOCAL: nothing leaks into the connection's later statements
    assert conn.execute("SELECT current_setting('hnsw.ef_search', true)").fetchone()[0] in (None, "", "40")


def test_ef_search_changes_what_the_hnsw_scan_finds(conn):
    # uniform random 128-d vectors are HNSW's hard case: a 1-candidate scan rarely ends at the true
    # nearest neighbour, a 400-candidate one always does
    x, queries = _uniform(2000, 1), _uniform(25, 2)
    index.add_images(conn, [_row(i, vec=x[i]) for i in range(len(x))])
    truth = [int(np.argmax(x @ q)) for q in queries]

    def top1_rate(ef: int) -> float:
        found = [int(index.knn(conn, q, 1, ef_search=ef)[0]["hgv_id"]) for q in queries]
        return float(np.mean([f == t for f, t in zip(found, truth)]))

    narrow, wide = top1_rate(1), top1_rate(400)
    assert wide >= 0.95 and narrow <= 0.6, (narrow, wide)


@pytest.mark.parametrize("ef", [0, -1, 1001, 2.5, "40", True])
def test_bad_ef_search(conn, ef):
    with pytest.raises(QueryError, match="ef_search must"):
        index.knn(conn, _vec(1), 5, ef_search=ef)


# --- HNSW after a bulk load ----------------------------------------------------------------------


def _hnsw_oid(c) -> int | None:
    return c.execute("SELECT to_regclass(%s)::oid", (index.HNSW_INDEX,)).fetchone()[0]


def _plan(c, vec) -> str:
    rows = c.execute(
        "EXPLAIN SELECT i.id FROM images i JOIN papyri p ON p.id = i.papyrus_id ORDER BY i.embedding <=> %s LIMIT 5",
        (vec,),
    ).fetchall()  # the shape of index.knn's query
    return "\n".join(r[0] for r in rows)


def _postings_oid(c) -> int | None:
    return c.execute("SELECT to_regclass(%s)::oid", (index.POSTINGS_INDEX,)).fetchone()[0]


def test_bulk_load_drops_the_index_and_builds_it_once_at_the_end(url, conn):
    before, postings = _hnsw_oid(conn), _postings_oid(conn)
    assert before is not None and postings is not None
    x = _uniform(1500, 3)
    with index.hnsw_deferred(url):
        assert index.hnsw_state(conn) == "missing"
        for start in range(0, len(x), 500):  # COPY batches, one transaction each, as ingest does
            assert index.add_images(conn, [_row(i, vec=x[i]) for i in range(start, start + 500)]) == (500, 0)
            conn.commit()
        assert not index.ensure_hnsw(url)  # a repair does not build while a bulk load runs
        with pytest.raises(ServiceError, match="bulk ingest is running"):
            index.rebuild_hnsw(url)
        assert index.hnsw_state(conn) == "missing"
    assert index.hnsw_state(conn) == "valid" and _hnsw_oid(conn) != before
    assert _postings_oid(conn) == postings  # searches keep reading the postings' B-tree
    assert "Index Scan using images_embedding_hnsw" in _plan(conn, x[7])
    hits = index.knn(conn, x[7], 3, ef_search=200)
    assert hits[0]["hgv_id"] == "7" and hits[0]["distance"] == pytest.approx(0.0, abs=1e-5)


def test_small_inserts_keep_the_index(url, conn):
    before = _hnsw_oid(conn)
    index.add_images(conn, [_row(i) for i in range(20)])
    conn.commit()
    assert not index.ensure_hnsw(url)
    assert _hnsw_oid(conn) == before and index.hnsw_state(conn) == "valid"


def test_a_bulk_load_that_fails_still_builds_the_index(url, conn):
    with pytest.raises(RuntimeError), index.hnsw_deferred(url):
        index.add_images(conn, [_row(i) for i in range(10)])
        conn.commit()
        raise RuntimeError("the ingest failed half way")
    assert index.hnsw_state(conn) == "valid"


def test_a_missing_index_is_rebuilt_by_repair_and_by_reindex(url, conn):
    index.add_images(conn, [_row(i) for i in range(30)])
    index.drop_hnsw(conn)  # what a bulk ingest killed before its build leaves behind
    conn.commit()
    assert index.stats(conn)["hnsw"] == "missing"
    assert index.ensure_hnsw(url) and index.hnsw_state(conn) == "valid"
    assert not index.ensure_hnsw(url)  # nothing to do now
    before = _hnsw_oid(conn)
    conn.commit()
    assert index.rebuild_hnsw(url)[0] == 30
    assert _hnsw_oid(conn) != before and index.hnsw_state(conn) == "valid"


def test_compacting_the_postings_index_shrinks_it_and_changes_no_answer(url, conn):
    """Batches of images insert their postings all over the (word, image) B-tree, as an ingest
    does; rebuilt, it is smaller and a search gives the same list; an invalid copy left by an
    interrupted rebuild is dropped first."""
    rng = np.random.default_rng(11)
    for start in range(0, 400, 20):
        rows = [_signed(i, {int(w): rng.integers(-(2**62), 2**62, 3).tolist() for w in rng.choice(3000, 60)})
                for i in range(start, start + 20)]
        index.add_images(conn, rows)
        conn.commit()
    words = rng.choice(3000, 200).astype(np.int32)
    sigs = rng.integers(-(2**62), 2**62, 200)
    before = index.word_candidates(conn, words, np.ones(200, np.float32), 20, signatures=sigs)
    conn.commit()

    def size() -> int:
        return conn.execute("SELECT pg_relation_size(%s)", (index.POSTINGS_INDEX,)).fetchone()[0]

    bloated = size()
    conn.commit()  # a transaction that read the index holds a lock on it until it ends
    with index.connect(url) as c:
        c.autocommit = True
        # a concurrent build that fails half way leaves its index behind, invalid
        with pytest.raises(psycopg.errors.UniqueViolation):
            c.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {index.POSTINGS_INDEX}_ccnew ON image_words (word)")
        assert index.compact_postings(c) is not None
        left = c.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 'image_words'").fetchone()[0]
        assert left == 2  # the postings and the image's index, nothing left over
        conn.commit()
        assert size() < 0.8 * bloated
        # a transaction that keeps adding to image_words: the rebuild gives up, the index stays
        shrunk, oid = size(), _postings_oid(conn)
        conn.commit()
        conn.execute("INSERT INTO image_words (word, image_id, weight, signature) SELECT 5, min(id), 1, 0 FROM images")
        with pytest.raises(ServiceError, match=r"more than 0.5 s.*half-built copy is dropped then"):
            index.compact_postings(c, wait_s=0.5)
        conn.rollback()
        assert _postings_oid(conn) == oid and size() == shrunk
        conn.commit()
        # its half-built copy could not be dropped while that transaction lasted: the next run does
        assert index.compact_postings(c) is not None
        names = c.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'image_words'").fetchall()
        assert sorted(names) == [("image_words_image",), (index.POSTINGS_INDEX,)]
    after = index.word_candidates(conn, words, np.ones(200, np.float32), 20, signatures=sigs)
    assert [r["image_id"] for r in after] == [r["image_id"] for r in before] and before


def test_a_role_that_may_not_drop_or_build_the_index_still_ingests_and_searches(url, conn):
    with psycopg.connect(url, autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = 'curator'").fetchone():
            admin.execute("CREATE ROLE curator LOGIN")
        admin.execute("GRANT SELECT, INSERT, UPDATE ON papyri, images, image_words TO curator")
        admin.execute("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO curator")
    curator = url.replace("postgres:@", "curator:@")
    assert curator != url
    kept = _hnsw_oid(conn)
    conn.commit()
    with index.hnsw_deferred(curator):  # may not drop it: the load inserts into it instead
        with index.connect(curator) as c:
            assert index.add_images(c, [_row(i) for i in range(5)]) == (5, 0)
    assert _hnsw_oid(conn) == kept
    index.drop_hnsw(conn)
    conn.commit()
    assert not index.ensure_hnsw(curator)  # may not build it: a warning, not a failed search
    with index.connect(curator) as c:
        assert index.knn(c, _vec(3), 1)[0]["hgv_id"] == "3"
    assert index.ensure_hnsw(url)  # the owner can


@pytest.mark.parametrize(
    "existing, incoming, bulk",
    [(0, 999, False), (0, 1000, True), (1_000_000, 1000, False), (1_000_000, 500_000, True), (4000, 1999, False)],
)
def test_bulk_load_rule(existing, incoming, bulk):
    assert index.bulk_load_wanted(existing, incoming) is bulk


# --- upsert of catalogue records in one batch ------------------------------------------------------


def test_upsert_papyri_batch_inserts_updates_and_keeps_known_fields(conn):
    records = [PapyrusRecord(key=f"hgv:{i}", title=f"T{i}", place="Theben") for i in range(300)]
    first = index.upsert_papyri(conn, records)
    assert len(first) == 300
    again = index.upsert_papyri(
        conn,
        [PapyrusRecord(key="hgv:5", title=None, place="Hermopolis"), PapyrusRecord(key="new", title="N")]
        + [PapyrusRecord(key="hgv:6", title="old"), PapyrusRecord(key="hgv:6", title="last wins")],
    )
    assert set(again) == {"hgv:5", "hgv:6", "new"}
    assert again["hgv:5"] == first["hgv:5"] and again["hgv:6"] == first["hgv:6"]
    stored = dict(conn.execute("SELECT key, id FROM papyri").fetchall())
    assert {k: stored[k] for k in first} == first and stored["new"] == again["new"]
    assert conn.execute("SELECT title, place FROM papyri WHERE key = 'hgv:5'").fetchone() == ("T5", "Hermopolis")
    assert conn.execute("SELECT title FROM papyri WHERE key = 'hgv:6'").fetchone() == ("last wins",)
    assert index.upsert_papyri(conn, []) == {}


def _worded(i: int, words: dict[int, float], **meta) -> index.ImageRow:
    row = _row(i, **meta)
    row.words = np.array(sorted(words), dtype=np.int32)
    row.word_weights = np.array([words[w] for w in sorted(words)], dtype=np.float32)
    return row


def _expected_scores(docs: dict[int, dict[int, float]], query: dict[int, float]) -> dict[int, float]:
    """The documented score of words alone, by hand: Σ idf² q d / ‖q idf‖ with q = √(the query's
    count), idf = ln((N+1)/(df+1))."""
    n = len(docs)
    df = {w: sum(w in d for d in docs.values()) for w in query}
    idf = {w: np.log((n + 1) / (df[w] + 1)) for w in query if df[w]}
    q = {w: np.sqrt(query[w]) for w in query}
    norm = np.sqrt(sum((q[w] * idf[w]) ** 2 for w in idf))
    return {
        i: sum(idf[w] ** 2 * q[w] * d[w] for w in idf if w in d) / norm
        for i, d in docs.items()
        if any(w in d for w in idf)
    }


def test_word_candidates_score_rank_and_filter_as_documented(conn):
    rng = np.random.default_rng(5)
    docs = {i: {int(w): float(rng.uniform(0.1, 1)) for w in rng.choice(60, 12, replace=False)} for i in range(30)}
    index.add_images(conn, [_worded(i, d, collection="odd" if i % 2 else "even") for i, d in docs.items()])
    query = {int(w): float(rng.uniform(0.5, 2)) for w in rng.choice(80, 20, replace=False)}  # some words unseen
    words = np.array(list(query), dtype=np.int32)
    weights = np.array(list(query.values()), dtype=np.float32)

    rows = index.word_candidates(conn, words, weights, 30, vector=_vec(3))
    expected = _expected_scores(docs, query)
    got = {int(r["hgv_id"]): r["words_score"] for r in rows}
    assert got.keys() == expected.keys()
    for i, score in expected.items():
        assert got[i] == pytest.approx(score, rel=1e-4)
    assert [r["words_score"] for r in rows] == sorted(got.values(), reverse=True)
    assert rows[0]["distance"] is not None and rows[0]["inventory"].startswith("P.Test")

    top3 = index.word_candidates(conn, words, weights, 3)
    assert [r["hgv_id"] for r in top3] == [r["hgv_id"] for r in rows[:3]]
    odd = index.word_candidates(conn, words, weights, 5, filters={"collection": "odd"})
    best_odd = sorted((i for i in expected if i % 2), key=lambda i: -expected[i])[:5]
    assert [int(r["hgv_id"]) for r in odd] == best_odd
    assert index.word_candidates(conn, np.array([999], np.int32), np.ones(1, np.float32), 5) == []


def test_word_df_counts_the_images_of_each_word_as_they_come_and_go(conn):
    """``word_df`` (the idf's df, kept by triggers on image_words) is each word's number of images
    after COPYs of batches (words repeated in an image and across batches), a deleted image (the
    cascade), and TRUNCATE; a word no image has any more has no row."""

    def kept() -> dict[int, int]:
        return dict(conn.execute("SELECT word, df FROM word_df").fetchall())

    def counted() -> dict[int, int]:
        return dict(conn.execute("SELECT word, count(DISTINCT image_id) FROM image_words GROUP BY word").fetchall())

    index.add_images(conn, [_signed(0, {5: [1, 2, 3], 6: [4]}), _signed(1, {5: [7]})])
    index.add_images(conn, [_signed(2, {5: [8, 9], 7: [10]}), _worded(3, {6: 0.5, 8: 0.5})])
    conn.commit()
    assert kept() == counted() == {5: 3, 6: 2, 7: 1, 8: 1}
    conn.execute("DELETE FROM images WHERE source_name IN ('2.jpg', '3.jpg')")
    conn.commit()
    assert kept() == counted() == {5: 2, 6: 1}
    # the score's idf follows: word 5 is in both images left (idf 0), word 6 in one of two; image 0
    # has 3 keypoints of word 5 and 1 of word 6 (d = 1 / ‖(√3, 1)‖ = 0.5)
    rows = index.word_candidates(conn, np.array([5, 6], np.int32), np.ones(2, np.float32), 5)
    assert [r["hgv_id"] for r in rows] == ["0", "1"]
    assert rows[0]["words_score"] == pytest.approx(0.5 * np.log(3 / 2), rel=1e-5)
    assert rows[1]["words_score"] == pytest.approx(0.0, abs=1e-9)
    conn.execute("TRUNCATE images, papyri RESTART IDENTITY CASCADE")
    conn.commit()
    assert kept() == {}


def test_a_later_looks_rows_are_the_rarest_words_within_its_postings_budget(conn):
    """``index.word_frequencies`` is each row's word's df (a repeated word each time, a word no image
    has 0), and ``tasks._rarest_within`` keeps the rows of the rarest words while the postings they
    read stay within the budget (ties in their order), every row with no budget or when all fit."""
    from papyrus_widgets import tasks

    postings = [{5: [1], 6: [2], 7: [3]}, {5: [1], 6: [2]}, {5: [1]}, {5: [1]}]
    index.add_images(conn, [_signed(i, p) for i, p in enumerate(postings)])
    conn.commit()
    words = np.array([6, 5, 9, 7, 6, 7], np.int32)  # df 2, 4, 0, 1, 2, 1
    assert index.word_frequencies(conn, words).tolist() == [2, 4, 0, 1, 2, 1]
    assert index.word_frequencies(conn, np.zeros(0, np.int32)).tolist() == []
    assert tasks._rarest_within(conn, words, None).all()
    assert tasks._rarest_within(conn, words, 10).all()  # 2 + 4 + 0 + 1 + 2 + 1 = 10
    # rarest first: 9 (0), 7 (1), 7 (1), 6 (2), 6 (2) = 6 postings, then 5 (4) would make 10
    assert tasks._rarest_within(conn, words, 9).tolist() == [True, False, True, True, True, True]
    assert tasks._rarest_within(conn, words, 5).tolist() == [True, False, True, True, False, True]
    assert tasks._rarest_within(conn, words, 0).tolist() == [False, False, True, False, False, False]


def test_the_second_look_reads_the_rarest_more_words_within_its_postings_budget(conn, url, tmp_path, monkeypatch):
    """``tasks.second_look_rows`` with ``tasks.LATER_LOOK_POSTINGS``: every row of the first pass
    kept, of the more words' rows after them those of the rarest words within the budget (the df
    the index holds), in their order; no budget: every row."""
    from papyrus_widgets import tasks
    from papyrus_widgets.config import Settings
    from papyrus_widgets.retrieval import Features
    from papyrus_widgets.retrieval import features as F

    settings = Settings(data_dir=tmp_path)
    rng = np.random.default_rng(9)
    desc = rng.integers(0, 90, (300, 128)).astype(np.uint8)
    points = rng.uniform(0, 800, (300, 2)).astype(np.float32)
    words, sigs = tasks.worker_vocabulary(settings).words_and_signatures(desc)
    feats = Features(points, desc, (800, 800), "sift", 800)
    prepared = tasks.PreparedQuery(np.zeros(0), feats, words, (800, 800), None, sigs)
    every, _, every_points = tasks.query_rows(settings, prepared, None)
    monkeypatch.setattr(F, "QUERY_MAX_KEYPOINTS", 400)  # the first pass's rows: the first 400
    monkeypatch.setattr(tasks, "SECOND_LOOK_MAX_ROWS", None)
    assert len(every) > 700
    later = np.unique(every[400:])
    df = {int(w): 1 + int(w) % 4 for w in later}  # 1-4 images each
    index.add_images(conn, [_signed(i, {w: [w] for w, d in df.items() if d > i}) for i in range(4)])
    conn.commit()
    postings = sum(df[int(w)] for w in every[400:])
    for budget in (None, postings, postings // 2, 0):
        monkeypatch.setattr(tasks, "LATER_LOOK_POSTINGS", budget)
        w, s, p, pairs = tasks.second_look_rows(settings, url, prepared, None)
        kept = np.concatenate([np.ones(400, bool), tasks._rarest_within(conn, every[400:], budget)])
        assert pairs is None and len(w) == len(p) == len(s) == kept.sum()
        assert w.tolist() == every[kept].tolist() and p.tolist() == every_points[kept].tolist()
        read = sum(df[int(x)] for x in w[400:])
        if budget is None or budget >= postings:
            assert read == postings
        else:  # within it, and the rarest row left out would not have fitted
            assert read <= budget < read + min(df[int(x)] for x in every[~kept])
    assert len(w) == 400  # a budget of none: the first pass's rows alone


def _signed(i: int, postings: dict[int, list[int]], **meta) -> index.ImageRow:
    from papyrus_widgets.retrieval.shortlist import document_postings

    words = np.array([w for w, sigs in postings.items() for _ in sigs])
    sigs = np.array([s for ss in postings.values() for s in ss], dtype=np.int64)
    row = _row(i, **meta)
    row.words, row.word_weights, row.word_signatures = document_postings(words, sigs)
    return row


def test_words_most_images_hold_are_not_read_and_weigh_in_the_querys_norm_alone(conn, url, monkeypatch):
    """With ``COMMON_WORDS`` set, ``word_pairs`` reads no posting of a word that more than that
    share of the images hold (a library's footer on every scan): the pairs are the rest's, at the
    query's rows they came from, on one connection or several; the word's idf is still returned, so
    the scores are the documented ones less that word's pairs, over the same norm."""
    from papyrus_widgets.index import queries

    docs = {
        i: {**({1: 1.0} if i < 9 else {}), **({2: 0.5} if i < 3 else {}), **({3: 0.7} if i == 0 else {}), 10 + i: 0.4}
        for i in range(10)
    }
    index.add_images(conn, [_worded(i, d) for i, d in docs.items()])
    conn.commit()
    words = np.array([1, 2, 11, 1, 3, 1], np.int32)  # word 1 in 9 of 10 images, 2 in three, 3 and 11 in one
    everything = index.word_pairs(conn, words)
    assert sorted(set(words[everything.rows].tolist())) == [1, 2, 3, 11]
    monkeypatch.setattr(queries, "COMMON_WORDS", 0.5)
    with index.connect(url) as other:
        for more in ((), (other,)):
            pairs = index.word_pairs(conn, words, more=more)
            keep = words[everything.rows] != 1
            assert sorted(zip(pairs.rows.tolist(), pairs.image_ids.tolist())) == sorted(
                zip(everything.rows[keep].tolist(), everything.image_ids[keep].tolist())
            )
            assert pairs.words.tolist() == everything.words.tolist() == [1, 2, 3, 11]
            assert pairs.idf.tolist() == pytest.approx(everything.idf.tolist())
    query = {1: 3.0, 2: 1.0, 3: 1.0, 11: 1.0}
    weights = np.ones(len(words), np.float32)
    got = {int(r["hgv_id"]): r["words_score"] for r in index.word_candidates(conn, words, weights, 10)}
    n = len(docs)
    idf = {1: np.log((n + 1) / 10), 2: np.log((n + 1) / 4), 3: np.log((n + 1) / 2), 11: np.log((n + 1) / 2)}
    norm = np.sqrt(sum(query[w] * idf[w] ** 2 for w in query))
    expected = {
        i: sum(idf[w] ** 2 * np.sqrt(query[w]) * d[w] for w in query if w in d and w != 1) / norm
        for i, d in docs.items()
        if any(w in d for w in (2, 3, 11))
    }
    assert got.keys() == expected.keys() == {0, 1, 2}  # the images with nothing but the common word are not listed
    for i, score in expected.items():
        assert got[i] == pytest.approx(score, rel=1e-4)
    monkeypatch.setattr(queries, "COMMON_WORDS", 1.0)  # no word is held by more than all images
    assert len(index.word_pairs(conn, words).rows) == len(everything.rows)
    monkeypatch.setattr(queries, "COMMON_WORDS", 0.0)  # every word held by any image: nothing read
    nothing = index.word_pairs(conn, words)
    assert len(nothing.rows) == 0 and nothing.words.tolist() == [1, 2, 3, 11]


def test_word_candidates_count_only_keypoints_whose_signatures_agree(conn):
    """Hamming embedding, by hand: a query keypoint and an indexed one of the same word match only
    when their signatures differ in at most HAMMING_THRESHOLD bits; m_w counts the matching pairs,
    and an image scores Σ idf² √m_w / ‖√count‖ / ‖q idf‖. An image that shares every word of the
    query by chance (signatures far off) falls below one that shares fewer words truly."""
    from papyrus_widgets.retrieval.vocabulary import HAMMING_THRESHOLD

    rng = np.random.default_rng(11)
    near = lambda s, bits: int(np.int64(np.uint64(int(s) % 2**64) ^ np.uint64(2**bits - 1)))  # noqa: E731
    query_words = np.array([1, 1, 2, 3, 4, 5], dtype=np.int32)
    query_sigs = rng.integers(-(2**63), 2**63 - 1, len(query_words), dtype=np.int64)
    query_sigs[1] = near(query_sigs[0], 2)  # two keypoints of word 1, alike
    far = [int(~s) for s in query_sigs]  # every bit differs
    docs = {
        # truly: words 1 (both query keypoints within the threshold of its one), 2 and 3
        0: {
            1: [near(query_sigs[0], 3)],
            2: [near(query_sigs[2], HAMMING_THRESHOLD)],
            3: [near(query_sigs[3], 5)],
            9: [7],
        },
        # by chance: every query word, signatures far off (and one at the threshold + 1)
        1: {
            1: [far[0]],
            2: [far[2]],
            3: [near(query_sigs[3], HAMMING_THRESHOLD + 1)],
            4: [far[4]],
            5: [far[5], far[5]],
        },
        # one true match (word 4), one word shared by chance
        2: {4: [near(query_sigs[4], 0)], 5: [far[5]], 8: [1, 2, 3]},
    }
    docs.update({i: {10 + i: [i]} for i in range(3, 12)})  # others, no query word: idf > 0 for all
    index.add_images(conn, [_signed(i, p) for i, p in docs.items()])
    assert index.signed_words(conn)
    rows = index.word_candidates(conn, query_words, np.ones(6, np.float32), 5, signatures=query_sigs)

    n = len(docs)
    df = {w: sum(w in d for d in docs.values()) for w in range(1, 6)}
    idf = {w: np.log((n + 1) / (df[w] + 1)) for w in df}
    qnorm = np.sqrt(sum((np.sqrt((query_words == w).sum()) * idf[w]) ** 2 for w in df))

    def norm(p: dict[int, list[int]]) -> float:
        return float(np.sqrt(sum(len(s) for s in p.values())))

    expected = {
        0: (idf[1] ** 2 * np.sqrt(2) + idf[2] ** 2 + idf[3] ** 2) / norm(docs[0]) / qnorm,
        2: idf[4] ** 2 / norm(docs[2]) / qnorm,
    }
    got = {int(r["hgv_id"]): r["words_score"] for r in rows}
    assert got.keys() == expected.keys()  # image 1 shares every word, and matches none
    for i, score in expected.items():
        assert got[i] == pytest.approx(score, rel=1e-4)
    # without the query's signatures every pair of a word matches: words alone
    alone = index.word_candidates(conn, query_words, np.ones(6, np.float32), 5)
    assert int(alone[0]["hgv_id"]) == 1
    counts = {w: float((query_words == w).sum()) for w in range(1, 6)}
    weights = {i: {w: np.sqrt(len(s)) / norm(p) for w, s in p.items()} for i, p in docs.items()}
    by_hand = _expected_scores(weights, counts)
    assert {int(r["hgv_id"]): r["words_score"] for r in alone} == pytest.approx(
        {i: by_hand[i] for i in (0, 1, 2)}, rel=1e-4
    )
    # an image stored without signatures: the index counts words alone for every image
    index.add_images(conn, [_worded(40, {99: 1.0})])
    assert not index.signed_words(conn)
    unsigned = index.word_candidates(conn, query_words, np.ones(6, np.float32), 5, signatures=query_sigs)
    assert int(unsigned[0]["hgv_id"]) == 1
    with pytest.raises(QueryError):
        index.word_candidates(conn, query_words, np.ones(6, np.float32), 5, signatures=query_sigs[:3])


def test_schema_2_upgrades_and_posting_lists_are_read_from_the_index_alone(url):
    """An index made before migration 3 keeps its words; after VACUUM (as a bulk load ends) the
    search reads each posting list by an index-only scan, never visiting the table."""
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS upgrade")
        admin.execute("CREATE DATABASE upgrade")
    old = url.replace("/papyrus?", "/upgrade?")
    assert old != url
    with psycopg.connect(old, autocommit=True) as c:
        c.execute("CREATE EXTENSION vector")
    with index.connect(old) as c:
        c.execute("CREATE TABLE schema_version (version integer PRIMARY KEY, applied_at timestamptz DEFAULT now())")
        for number, sql in index.MIGRATIONS[:2]:
            c.execute(sql)
            c.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))
        c.commit()
        # images and words as that version wrote them (no signatures, no words' params)
        rows = [_row(i) for i in range(200)]
        ids = index.upsert_papyri(c, [r.record for r in rows])
        c.cursor().executemany(
            "INSERT INTO images (papyrus_id, sha256, source_name, object_key, thumb_key, width, height, model,"
            " embedding) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (ids[r.record.key], r.sha256, r.source_name, r.object_key, r.thumb_key, r.width, r.height, r.model,
                 r.embedding)
                for r in rows
            ],
        )  # fmt: skip
        c.execute(
            "INSERT INTO image_words (word, image_id, weight) SELECT w, i.id, CASE WHEN w = 1000 THEN 0.5 ELSE 1.0 END"
            " FROM images i JOIN papyri p ON p.id = i.papyrus_id"
            " CROSS JOIN LATERAL (VALUES (p.hgv_id::int), (1000)) v(w)"
        )
        c.commit()
    assert index.ensure_schema(old) == index.MIGRATIONS[-1][0] >= 4
    with psycopg.connect(old, autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM image_words").fetchone() == (400,)
        # migration 5 counted each word's images from the postings already there
        assert dict(c.execute("SELECT word, df FROM word_df").fetchall()) == {**{i: 1 for i in range(200)}, 1000: 200}
        # words stored before signatures: the index says so, and the search counts words alone
        assert c.execute("SELECT value FROM index_meta WHERE key = 'unsigned_words'").fetchone() == ("true",)
        c.execute("VACUUM (ANALYZE) image_words")
        c.execute("SET enable_seqscan = off")  # a tiny table: ask for the plan a large one gets
        plan = "\n".join(
            r[0]
            for r in c.execute(
                "EXPLAIN (ANALYZE, COSTS OFF)"
                " SELECT image_id, weight, signature FROM image_words WHERE word = ANY(%s)",
                [[7, 1000]],
            ).fetchall()
        )
    assert "Index Only Scan using image_words_postings" in plan and "Heap Fetches: 0" in plan, plan
    with index.connect(old) as c:
        rows = index.word_candidates(c, np.array([7, 1000], np.int32), np.ones(2, np.float32), 3)
        assert rows[0]["hgv_id"] == "7"
        st = index.stats(c)
        assert st["images_with_words"] == 200 and st["signed_words"] is False
        # migration 6: the words' params were not recorded, so `papyrus db rewords` takes up every image
        assert index.stale_word_images(c, "sift/anything") == 200 == len(index.image_keys(c, not_made_from="x"))


def test_word_candidates_take_each_windows_best_in_turn(conn):
    """Two windows of a photo: each ranks the images on its own, the list takes their firsts,
    then their seconds, …; an image's score is its best window's."""
    rng = np.random.default_rng(9)
    docs = {i: {int(w): float(rng.uniform(0.1, 1)) for w in rng.choice(40, 10, replace=False)} for i in range(20)}
    index.add_images(conn, [_worded(i, d) for i, d in docs.items()])
    words = np.arange(40, dtype=np.int32)
    clutter, papyrus = np.zeros(40, np.float32), np.zeros(40, np.float32)
    clutter[:30], papyrus[30:] = 1.0, 1.0
    weights = np.stack([clutter + papyrus, papyrus], axis=1)  # the whole photo; the window the papyrus is in
    per_window = [_expected_scores(docs, dict(zip(words.tolist(), weights[:, j].tolist()))) for j in range(2)]
    orders = [sorted(s, key=lambda i: (-s[i], i)) for s in per_window]
    best = {i: max(per_window[0].get(i, 0), per_window[1].get(i, 0)) for i in docs}
    expected: list[int] = []
    for pair in zip(*orders):  # each window's k-th; within a turn, the higher score first
        expected += sorted({i for i in pair if i not in expected}, key=lambda i: (-best[i], i))

    rows = index.word_candidates(conn, words, weights, 6)
    assert [int(r["hgv_id"]) for r in rows] == expected[:6]
    assert orders[1][0] != orders[0][0] and orders[1][0] in [int(r["hgv_id"]) for r in rows[:2]]
    assert expected[:6] != orders[0][:6]  # the papyrus's window changes the list
    for r in rows:
        i = int(r["hgv_id"])
        assert r["words_score"] == pytest.approx(best[i], rel=1e-4)
        assert per_window[r["words_window"]].get(i, 0) == pytest.approx(best[i], rel=1e-4)
    with pytest.raises(QueryError):
        index.word_candidates(conn, words, np.ones((40, index.MAX_WORD_WINDOWS + 1), np.float32), 6)


def test_word_candidates_of_many_windows_are_the_full_rankings_interleaved(conn):
    """Each window's order is found by a bounded sort of its ``n`` best (not a rank of every image
    in every window): the list must still be exactly the full rankings interleaved, with each
    image's score its best in any window, even when that window ranks it far below ``n``."""
    rng = np.random.default_rng(4)  # a draw where such an image is among the first 3
    docs = {i: {int(w): float(rng.uniform(0.1, 1)) for w in rng.choice(50, 8, replace=False)} for i in range(40)}
    index.add_images(conn, [_worded(i, d) for i, d in docs.items()])
    words = np.arange(50, dtype=np.int32)
    weights = (rng.uniform(0, 1, (50, 7)) * (rng.uniform(0, 1, (50, 7)) < 0.4)).astype(np.float32)
    weights[:, 0] = 1.0  # the whole photo
    per_window = [_expected_scores(docs, dict(zip(words.tolist(), weights[:, j].tolist()))) for j in range(7)]
    ranks = [{i: r for r, i in enumerate(sorted(s, key=lambda i: (-s[i], i)), start=1)} for s in per_window]
    best = {i: max(s.get(i, 0.0) for s in per_window) for i in docs}
    full = sorted(best, key=lambda i: (min(r.get(i, 10**6) for r in ranks), -best[i], i))
    for n in (3, 5, 12):
        rows = index.word_candidates(conn, words, weights, n)
        assert [int(r["hgv_id"]) for r in rows] == full[:n]
        for r in rows:
            i = int(r["hgv_id"])
            assert r["words_score"] == pytest.approx(best[i], rel=1e-4)
            assert per_window[r["words_window"]][i] == pytest.approx(best[i], rel=1e-4)
    # the case this is about: an image of the first 3 whose best window ranks it below 3
    assert any(ranks[max(range(7), key=lambda j: per_window[j].get(i, 0.0))][i] > 3 for i in full[:3])


def _signed_collection(conn, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """40 images (odd ones in collection "odd") of 10 of 30 words, with signatures near each word's
    own; returns a query's 120 keypoints (words 30-33: none of the images has them) and signatures."""
    from papyrus_widgets.retrieval.vocabulary import HAMMING_THRESHOLD

    base = {w: int(rng.integers(0, 2**62)) for w in range(30)}

    def near(sig: int, bits: int) -> int:
        for b in rng.choice(64, bits, replace=False):
            sig ^= 1 << int(b)
        return sig - (1 << 64) if sig >= 1 << 63 else sig

    docs = {
        i: {int(w): [near(base[int(w)], int(rng.integers(0, 40))) for _ in range(int(rng.integers(1, 4)))]
            for w in rng.choice(30, 10, replace=False)}
        for i in range(40)
    }  # fmt: skip
    index.add_images(conn, [_signed(i, d, collection="odd" if i % 2 else "even") for i, d in docs.items()])
    conn.commit()
    words = rng.integers(0, 34, 120).astype(np.int32)
    sigs = np.array([near(base.get(int(w), 0), int(rng.integers(0, 2 * HAMMING_THRESHOLD))) for w in words], np.int64)
    return words, sigs


def test_the_pairs_read_once_give_the_lists_of_the_postings_read_again(conn, url):
    """The second look scores the first pass's matching pairs over its own windows instead of
    reading the postings again (``index.WordPairs.subset``, ``tasks.PAIRS_CACHE``): for any subset of
    the keypoints, any windows and filters, the list is the one the postings read again give; the
    process keeps a photo's pairs under its database, words, signatures and filters only."""
    from papyrus_widgets import tasks

    rng = np.random.default_rng(21)
    words, sigs = _signed_collection(conn, rng)
    weights = (rng.uniform(0, 1, (120, 5)) < 0.5).astype(np.float32)
    kept = np.flatnonzero(weights.any(axis=1))
    for filters in (None, {"collection": "odd"}):
        pairs = index.word_pairs(conn, words, sigs, filters)
        assert pairs.keypoints == 120 and len(pairs.image_ids) > 0
        for mask in (kept, kept[::2], kept[rng.random(len(kept)) < 0.3]):
            again = index.word_candidates(conn, words[mask], weights[mask], 12, filters, _vec(1), sigs[mask])
            reused = index.word_candidates(
                conn, words[mask], weights[mask], 12, filters, _vec(1), sigs[mask], pairs.subset(mask)
            )
            assert again and reused == again
            if filters:
                assert all(int(r["hgv_id"]) % 2 for r in reused)
    with pytest.raises(QueryError):
        index.word_candidates(conn, words[kept], weights[kept], 12, signatures=sigs[kept], pairs=pairs)
    # the pairs of two runs of keypoints, joined, are those of the runs read as one (the second
    # look reads only the rows the first pass did not ask for)
    whole = index.word_pairs(conn, words, sigs)
    joined = index.word_pairs(conn, words[:70], sigs[:70]).joined(index.word_pairs(conn, words[70:], sigs[70:]))
    assert joined.keypoints == whole.keypoints == 120
    for a, b in ((joined, whole),):
        assert sorted(zip(a.rows.tolist(), a.image_ids.tolist())) == sorted(zip(b.rows.tolist(), b.image_ids.tolist()))
        assert a.words.tolist() == b.words.tolist() and a.idf.tolist() == pytest.approx(b.idf.tolist())
    assert index.word_candidates(conn, words, weights, 12, None, _vec(1), sigs, joined) == index.word_candidates(
        conn, words, weights, 12, None, _vec(1), sigs, whole
    )

    # the process keeps the first pass's pairs of a photo for its second look, and only for the same question
    size = (400, 300)
    points = rng.uniform(0, 1, (120, 2)) * size
    first = tasks.first_pass_list(conn, words, points, size, sigs, 10, url=url)
    assert first and (kept_pairs := tasks._remembered_pairs(url, words, sigs, None)) is not None
    assert tasks._remembered_pairs(url, words, sigs, {"collection": "odd"}) is None
    assert tasks._remembered_pairs(url + "&x=1", words, sigs, None) is None
    assert tasks._remembered_pairs(url, words, sigs[::-1].copy(), None) is None
    seen: set[str] = set()
    looked = tasks.second_look_list(url, words, points, size, sigs, seen, pairs=kept_pairs)
    read_again = tasks.second_look_list(url, words, points, size, sigs, seen)
    assert looked and [c.row for c in looked] == [c.row for c in read_again]
    for i in range(1, tasks.PAIRS_CACHE + 1):  # other photos' pairs push it out
        tasks.first_pass_list(conn, words[i:], points[i:], size, sigs[i:], 10, url=url)
    assert tasks._remembered_pairs(url, words, sigs, None) is None
    # a region the user gave is one window and gets no second look: its pairs are not kept
    region = tasks.first_pass_list(conn, words, None, size, sigs, 10, url=url)
    assert region and tasks._remembered_pairs(url, words, sigs, None) is None


def test_the_postings_read_on_several_connections_give_the_pairs_of_one_statement(conn, url, monkeypatch):
    """A photo's keypoints cut into runs whose postings are read side by side, a connection each
    (``index.spare_connections``, ``tasks.PAIR_CONNECTIONS``), give the very pairs one statement
    gives, with and without filters, and the same lists; with the pool's connections all taken
    the spares are none and the one statement reads them all."""
    from papyrus_widgets import tasks

    words, sigs = _signed_collection(conn, np.random.default_rng(22))

    def triples(p: index.WordPairs) -> np.ndarray:
        t = np.stack([p.rows, p.image_ids, (p.weights * 1e6).round()], axis=1)
        return t[np.lexsort(t.T[::-1])]

    for filters in (None, {"collection": "odd"}):
        one = index.word_pairs(conn, words, sigs, filters)
        assert len(one.image_ids) > 0
        for spare in (1, 2, 3):
            with index.spare_connections(url, spare) as more:
                assert len(more) == spare and all(c is not conn for c in more)
                split = index.word_pairs(conn, words, sigs, filters, more)
            assert split.keypoints == one.keypoints == len(words)
            assert np.array_equal(triples(split), triples(one))
            assert np.array_equal(split.words, one.words) and np.allclose(split.idf, one.idf)
        weights = np.ones((len(words), 1), np.float32)
        monkeypatch.setattr(tasks, "PAIR_CONNECTIONS", 3)
        listed = tasks._windowed_list(conn, words, None, (400, 300), sigs, 12, [], filters, None, url=url)
        monkeypatch.setattr(tasks, "PAIR_CONNECTIONS", 1)
        assert listed == index.word_candidates(conn, words, weights, 12, filters, None, sigs)

    pool = index.get_pool(url)
    taken = [pool.getconn(timeout=5) for _ in range(pool.max_size)]
    try:
        started = time.perf_counter()
        with index.spare_connections(url, 2) as more:
            assert more == []
            alone = index.word_pairs(conn, words, sigs, None, more)
        assert time.perf_counter() - started < 5 * index.SPARE_WAIT + 2
    finally:
        for c in taken:
            pool.putconn(c)
    assert np.array_equal(triples(alone), triples(index.word_pairs(conn, words, sigs)))


def test_the_ingest_task_names_each_step_to_its_timer(url, conn, tmp_path, model_dir):
    """The ingest benchmark times the real task through its ``stage`` hook: every step of
    ``tasks.INGEST_STAGES`` is announced, and the batch is indexed as without the hook."""
    import contextlib

    from papyrus_widgets import tasks
    from papyrus_widgets.config import Settings

    settings = Settings(data_dir=tmp_path / "data", database_url=url, model=str(model_dir))
    seen: list[str] = []

    @contextlib.contextmanager
    def stage(name: str):
        seen.append(name)
        yield

    items = [
        tasks.IngestItem(str(reference(name)), PapyrusRecord(key=f"stage:{i}", collection="stages", title=name))
        for i, name in enumerate(["19331_p_g_107.jpg", "21114_p_g_24.jpg"])
    ]
    report = tasks.ingest_batch_task(settings, items, stage=stage)
    assert report.added == 2 and not report.failed
    assert set(seen) == set(tasks.INGEST_STAGES)
    assert seen.count("decode (max_side 1024)") == 2 and seen.count("forward (batch)") == 1
    assert index.image_count(conn) == 2 and index.has_words(conn)


def test_word_candidates_diverse_window_lists(conn, monkeypatch):
    """With the option on, each window's list (a photo searched without corners: its keypoints given) defers an image
    whose matched keypoints are mostly those of an image ranked above it (here B and C, two more
    crops of what A shows), keeps a twin (A2: the same scan indexed again) beside its image, and
    puts an image with fewer than MIN_MATCHED matched keypoints (X: one rare word, a tiny image)
    after the rest; so the papyrus sought (S, matched by other keypoints) comes second, where in
    score order it comes last. Without the keypoints (corners given) the list is in score order."""
    from papyrus_widgets.index import queries

    assert queries.DIVERSE_SHARE is None and queries.MIN_MATCHED == 0  # an option, off by default

    def image(i: int, shared: range, extra: int, weight: float) -> index.ImageRow:
        words = list(shared) + list(range(100 + 200 * i, 100 + 200 * i + extra))
        return _worded(i, {w: weight for w in words})

    index.add_images(
        conn,
        [
            image(0, range(20), 5, 0.2),  # A
            image(1, range(20), 5, 0.2),  # A2: A's twin (other words of its own, the same weights)
            image(2, range(20), 5, 0.19),  # B
            image(3, range(20), 5, 0.18),  # C
            image(4, range(20, 28), 98, 0.09),  # S
            image(5, range(28, 29), 0, 0.8),  # X
            *[image(i, range(0), 5, 0.4) for i in range(6, 11)],  # the rest of the collection
        ],
    )
    words = np.arange(29, dtype=np.int32)
    ones = np.ones(29, np.float32)

    def listed(keypoints):
        return [r["hgv_id"] for r in index.word_candidates(conn, words, ones, 6, keypoints=keypoints)]

    assert listed(np.arange(29)) == ["0", "1", "2", "3", "5", "4"]  # off: score order
    monkeypatch.setattr(queries, "DIVERSE_SHARE", 0.3)
    monkeypatch.setattr(queries, "MIN_MATCHED", 3)
    assert listed(None) == ["0", "1", "2", "3", "5", "4"]  # no keypoints: score order still
    assert listed(np.arange(29)) == ["0", "1", "4", "2", "3", "5"]
    # through the search's first pass: a photo's 29 keypoints, each row's keypoint found from its point
    from papyrus_widgets import tasks

    points = np.c_[np.arange(29) + 150.0, np.full(29, 150.0)]
    first = tasks.first_pass_list(conn, words, points, (400, 300), None, 6)
    assert [r["hgv_id"] for r in first] == ["0", "1", "4", "2", "3", "5"]
    monkeypatch.setattr(queries, "DIVERSE_SHARE", None)
    assert listed(np.arange(29)) == ["0", "1", "2", "3", "4", "5"]  # the weak image alone put last


def test_the_pairs_stable_order_is_numpy_s_stable_argsort():
    """``_stable_order`` (radix passes of 16 bits, for the word lists' sums) orders keys as
    ``np.argsort(kind="stable")`` does: ties in their first order, keys of one to four 16-bit digits."""
    from papyrus_widgets.index.queries import _stable_order

    rng = np.random.default_rng(7)
    for top in (1, 2**16 - 1, 2**16, 2**31, 2**40, 2**62):
        key = rng.integers(0, top, 5_000, dtype=np.int64, endpoint=True)
        key[::7] = key[3]  # many ties
        assert np.array_equal(_stable_order(key), np.argsort(key, kind="stable"))
    assert len(_stable_order(np.zeros(0, np.int64))) == 0
    assert np.array_equal(_stable_order(np.zeros(5, np.int64)), np.arange(5))


@pytest.mark.parametrize("windows", [1, 6, 36])
def test_the_word_lists_sums_are_the_same_cell_by_cell_and_window_by_window(monkeypatch, windows):
    """``_rank_pairs`` sums the pairs cell by cell where the query rows lie in few windows and window
    by window otherwise (``SPARSE_WINDOWS``): the same ids, scores and windows bit for bit either way,
    and the scores as the documented formula gives them (repeated words, several pairs per image
    and word, weights other than 0 and 1)."""
    from papyrus_widgets.index import queries

    rng = np.random.default_rng(windows)
    rows_n = 400
    words = rng.integers(0, 120, rows_n)
    weights = rng.uniform(0.2, 2.0, (rows_n, windows)) * (rng.uniform(0, 1, (rows_n, windows)) < 0.15)
    weights[:, 0] = 1.0
    n_pairs = 3_000
    pair_rows = np.sort(rng.integers(0, rows_n, n_pairs))
    image_ids = rng.integers(1, 60, n_pairs)
    doc_weight = rng.uniform(0.05, 0.5, 60)  # d: one per image
    known = np.unique(words)[::2]  # half the query's words are in the index
    keep = np.isin(words[pair_rows], known)
    pairs = queries.WordPairs(
        rows_n, image_ids[keep], pair_rows[keep], doc_weight[image_ids[keep]], known, rng.uniform(0.5, 3.0, len(known))
    )
    got = {}
    for name, factor in (("cells", 0), ("windows", 10**9)):
        monkeypatch.setattr(queries, "SPARSE_WINDOWS", factor)
        got[name] = queries._rank_pairs(words, weights, pairs, 25)
    for a, b in zip(got["cells"], got["windows"]):
        assert np.array_equal(a, b)
    # the formula: per window, Σ_w idf² · √m_w · d / ‖√q · idf‖
    idf = dict(zip(known.tolist(), pairs.idf.tolist()))
    ids, scores, best_window = got["cells"]
    for image, score, j in zip(ids.tolist(), scores.tolist(), best_window.tolist()):
        q = {}
        for w, wt in zip(words.tolist(), weights[:, j].tolist()):
            q[w] = q.get(w, 0.0) + wt
        qnorm = np.sqrt(sum(v * idf[w] ** 2 for w, v in q.items() if w in idf))
        m = {}
        for img, r in zip(pairs.image_ids.tolist(), pairs.rows.tolist()):
            if img == image:
                m[int(words[r])] = m.get(int(words[r]), 0.0) + weights[r, j]
        expected = sum(idf[w] ** 2 * np.sqrt(v) * doc_weight[image] for w, v in m.items()) / qnorm
        assert score == pytest.approx(expected, rel=1e-9)
