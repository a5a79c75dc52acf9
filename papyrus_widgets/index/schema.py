"""The tables and their migrations (see the package's docstring), applied once per process and
URL under an advisory lock."""

from __future__ import annotations

import psycopg

from ..config import mask_url
from ..errors import ServiceError
from .connection import connect, scalar

__all__ = [
    "EMBEDDING_DIM",
    "MAX_WORD_WINDOWS",
    "MIN_PGVECTOR",
    "HNSW_INDEX",
    "HNSW_DDL",
    "POSTINGS_INDEX",
    "MIGRATIONS",
    "ensure_schema",
]


EMBEDDING_DIM = 128
MAX_WORD_WINDOWS = 40
"""At most this many windows of a photo in one word search (:func:`word_candidates`): the first
pass scores 6, the second look 36 (:data:`papyrus_widgets.retrieval.shortlist.SECOND_LOOK_WINDOWS`)."""
MIN_PGVECTOR = (0, 5, 0)  # HNSW arrived in 0.5.0

POSTINGS_INDEX = "image_words_postings"
"""The B-tree the word search reads its posting lists from (migration 4)."""
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
    (
        4,
        # a posting per keypoint: (word, image, 1 / the image's norm, the keypoint's 64-bit
        # signature: Hamming embedding), read by an index-only scan of (word, image) with the rest
        # included (a scalar per row: an array per (word, image) cost 3-4x the statement in its
        # unnest). Words stored before are one row per (word, image) with its weight and no
        # signature, and the index says so (index_meta "unsigned_words": words alone then)
        """
        ALTER TABLE image_words ADD COLUMN signature bigint;
        ALTER TABLE image_words DROP CONSTRAINT image_words_pkey;
        CREATE INDEX image_words_postings ON image_words (word, image_id) INCLUDE (weight, signature);
        INSERT INTO index_meta (key, value) SELECT 'unsigned_words', 'true' WHERE EXISTS (SELECT 1 FROM image_words)
          ON CONFLICT (key) DO NOTHING;
        """,
    ),
    (
        5,
        # each word's document frequency (how many images have it), kept by statement triggers on
        # image_words, so that a search reads a word's idf from one row instead of counting its
        # posting list (at 100,000 images, 40 % of the word statement's time). Postings are added
        # and removed an image at a time (one COPY per batch of images; ON DELETE CASCADE), which is
        # what the triggers count: the images of each word among the rows a statement adds or removes
        """
        CREATE TABLE word_df (word integer PRIMARY KEY, df integer NOT NULL CHECK (df > 0));
        INSERT INTO word_df (word, df) SELECT word, count(DISTINCT image_id) FROM image_words GROUP BY word;
        CREATE FUNCTION papyrus_word_df_added() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          INSERT INTO word_df AS d (word, df)
            SELECT word, count(DISTINCT image_id) FROM added_postings GROUP BY word ORDER BY word
            ON CONFLICT (word) DO UPDATE SET df = d.df + EXCLUDED.df;
          RETURN NULL;
        END $$;
        CREATE FUNCTION papyrus_word_df_removed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          WITH gone AS (SELECT word, count(DISTINCT image_id) AS n FROM removed_postings GROUP BY word),
          emptied AS (DELETE FROM word_df d USING gone g WHERE d.word = g.word AND d.df <= g.n RETURNING d.word)
          UPDATE word_df d SET df = d.df - g.n FROM gone g WHERE d.word = g.word AND d.df > g.n;
          RETURN NULL;
        END $$;
        CREATE FUNCTION papyrus_word_df_cleared() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          DELETE FROM word_df;
          RETURN NULL;
        END $$;
        CREATE TRIGGER image_words_df_added AFTER INSERT ON image_words
          REFERENCING NEW TABLE AS added_postings FOR EACH STATEMENT EXECUTE FUNCTION papyrus_word_df_added();
        CREATE TRIGGER image_words_df_removed AFTER DELETE ON image_words
          REFERENCING OLD TABLE AS removed_postings FOR EACH STATEMENT EXECUTE FUNCTION papyrus_word_df_removed();
        CREATE TRIGGER image_words_df_cleared AFTER TRUNCATE ON image_words
          FOR EACH STATEMENT EXECUTE FUNCTION papyrus_word_df_cleared();
        """,
    ),
    (
        6,
        # the params of the reference features each image's visual words were made from
        # (features.reference_params), so that `papyrus db rewords` makes again only the words of
        # images described otherwise (NULL: words stored before, or none) and can be resumed
        """
        ALTER TABLE images ADD COLUMN words_params text;
        """,
    ),
]

_MIGRATION_LOCK = 7_305_512_001  # pg_advisory_xact_lock key for migrations


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


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:3] if p.isdigit())

