"""The pgvector index on a real embedded PostgreSQL: migrations, COPY, kNN, filters, errors."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest

from papyrus_widgets import index, services
from papyrus_widgets.errors import QueryError, ServiceError
from papyrus_widgets.metadata import PapyrusRecord


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    return services.start_embedded_postgres(tmp_path_factory.mktemp("pg-index") / "postgres")


@pytest.fixture()
def conn(url):
    index.ensure_schema(url)
    with index.connect(url) as c:
        c.execute("TRUNCATE images, papyri RESTART IDENTITY CASCADE")
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
    rows = [_row(i, date_from=100 + i, date_to=100 + i, place="Oxyrhynchos" if i % 10 == 0 else "Hermopolis")
            for i in range(300)]
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
