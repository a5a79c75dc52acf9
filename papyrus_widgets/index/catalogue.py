"""Writing and reading the catalogue: papyri and images (binary COPY with their visual words),
facts about the index (``index_meta``) and its statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import psycopg

from ..metadata import PapyrusRecord
from .connection import scalar

__all__ = [
    "PAPYRUS_COLUMNS",
    "ImageRow",
    "existing_images",
    "upsert_papyri",
    "add_images",
    "image_keys",
    "replace_words",
    "ImageWords",
    "stale_word_images",
    "recheck_signed_words",
    "set_meta",
    "get_meta",
    "image_count",
    "has_words",
    "signed_words",
    "other_model",
    "images_per_inventory",
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
    word_signatures: Sequence[np.ndarray] | None = field(default=None, repr=False)
    """… and for each word the 64-bit signatures (int64) of the image's keypoints of that word
    (:meth:`papyrus_widgets.retrieval.vocabulary.Vocabulary.signatures`); None: words alone (the
    index then counts words alone for every image: :func:`signed_words`)."""
    words_params: str | None = None
    """The params of the reference features the words were made from
    (:func:`papyrus_widgets.retrieval.features.reference_params`; :func:`stale_word_images`)."""



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
                " model, embedding, words_params) FROM STDIN WITH (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["int8", "text", "text", "text", "text", "int4", "int4", "text", "vector", "text"])
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
                            r.words_params if r.words is not None else None,
                        )
                    )
            cur.execute(
                "INSERT INTO images (papyrus_id, sha256, source_name, object_key, thumb_key, width, height,"
                " model, embedding, words_params)"
                " SELECT DISTINCT ON (papyrus_id, sha256) papyrus_id, sha256, source_name, object_key,"
                " thumb_key, width, height, model, embedding, words_params FROM images_load"
                " ON CONFLICT (papyrus_id, sha256) DO NOTHING RETURNING id, papyrus_id, sha256"
            )
            inserted = {(pid, sha): iid for iid, pid, sha in cur.fetchall()}
            added = len(inserted)
            worded = [
                ImageWords(image_id, r.source_name, r.words, r.word_weights, r.word_signatures)
                for r in rows
                if (image_id := inserted.pop((ids[r.record.key], r.sha256), None)) is not None
                and r.words is not None
                and r.word_weights is not None
            ]
            if worded:
                _copy_words(cur, worded)
    return added, len(rows) - added


@dataclass
class ImageWords:
    """The postings of one indexed image: as :class:`ImageRow`'s ``words``, ``word_weights`` and
    ``word_signatures`` (None: words alone), made from reference features of ``params``; ``name``
    is what an error calls it."""

    image_id: int
    name: str
    words: np.ndarray = field(repr=False)
    weights: np.ndarray = field(repr=False)
    signatures: Sequence[np.ndarray] | None = field(default=None, repr=False)
    params: str | None = None


def image_keys(conn: psycopg.Connection, *, not_made_from: str | None = None) -> list[tuple[int, str]]:
    """``(image id, object key of its original)`` of the indexed images, in id order: all, or those
    whose visual words were not made from reference features of ``not_made_from``."""
    if not_made_from is None:
        rows = conn.execute("SELECT id, object_key FROM images ORDER BY id")
    else:
        rows = conn.execute(
            "SELECT id, object_key FROM images WHERE words_params IS DISTINCT FROM %s ORDER BY id", (not_made_from,)
        )
    return [(int(i), str(k)) for i, k in rows]


def stale_word_images(conn: psycopg.Connection, params: str) -> int:
    """How many indexed images have visual words not made from reference features of ``params``
    (made by an earlier version, before 2026-12-06 not recorded, or none): ``papyrus db rewords``
    makes them again."""
    return int(scalar(conn, "SELECT count(*) FROM images WHERE words_params IS DISTINCT FROM %s", (params,)))


def replace_words(conn: psycopg.Connection, worded: Sequence[ImageWords]) -> int:
    """Put the postings ``worded`` in place of those the images have, and record their params, in
    one transaction (a search meanwhile reads each image's old postings or its new ones;
    ``word_df`` follows by its triggers); returns how many images got them (those no longer
    indexed are left out)."""
    if not worded:
        return 0
    with conn.transaction(), conn.cursor() as cur:
        ids = [w.image_id for w in worded]
        present = {r[0] for r in cur.execute("SELECT id FROM images WHERE id = ANY(%s) FOR UPDATE", (ids,))}
        kept = [w for w in worded if w.image_id in present]
        cur.execute("DELETE FROM image_words WHERE image_id = ANY(%s)", (sorted(present),))
        if kept:
            _copy_words(cur, kept)
            cur.execute(
                "UPDATE images SET words_params = v.params FROM unnest(%s::bigint[], %s::text[]) AS v(id, params)"
                " WHERE images.id = v.id",
                ([w.image_id for w in kept], [w.params for w in kept]),
            )
    return len(kept)


def recheck_signed_words(conn: psycopg.Connection) -> bool:
    """Drop the mark that some postings lack their signatures (:func:`signed_words`) when none
    does any more (after ``papyrus db rewords``); returns :func:`signed_words`. Reads every posting."""
    if get_meta(conn, "unsigned_words") is not None:
        if conn.execute("SELECT 1 FROM image_words WHERE signature IS NULL LIMIT 1").fetchone() is None:
            conn.execute("DELETE FROM index_meta WHERE key = 'unsigned_words'")
    return signed_words(conn)


def _copy_words(cur: psycopg.Cursor[Any], worded: Sequence[ImageWords]) -> None:
    """COPY the postings ``worded``; an image without signatures marks the index as counting words
    alone (:func:`signed_words`)."""
    unsigned = False
    with cur.copy("COPY image_words (word, image_id, weight, signature) FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(["int4", "int8", "float4", "int8"])
        for w in worded:
            image_id = w.image_id
            if w.signatures is None:  # a row per word, its weight
                unsigned = True
                for word, weight in zip(w.words.tolist(), w.weights.tolist()):
                    copy.write_row((word, image_id, weight, None))
                continue
            if len(w.signatures) != len(w.words):
                raise ValueError(f"{w.name}: {len(w.words)} words, {len(w.signatures)} signature lists")
            for word, weight, sigs in zip(w.words.tolist(), w.weights.tolist(), w.signatures):
                # a row per keypoint: weight / √count = 1 / the image's norm, the same for all its rows
                per = weight / max(len(sigs), 1) ** 0.5
                for sig in np.asarray(sigs, dtype=np.int64).tolist():
                    copy.write_row((word, image_id, per, sig))
    if unsigned:
        cur.execute(
            "INSERT INTO index_meta (key, value) VALUES ('unsigned_words', 'true') ON CONFLICT (key) DO NOTHING"
        )


def set_meta(conn: psycopg.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO index_meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        (key, value),
    )


def get_meta(conn: psycopg.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM index_meta WHERE key = %s", (key,)).fetchone()
    return row[0] if row else None


def image_count(conn: psycopg.Connection) -> int:
    return int(scalar(conn, "SELECT count(*) FROM images"))



def signed_words(conn: psycopg.Connection) -> bool:
    """Whether every posting of the word index carries its keypoints' signatures (words stored by
    an older version, or without signatures, have none: the search then counts words alone for
    every image, so that those are not favoured over the others). Re-ingesting into a new index
    brings the signatures."""
    return get_meta(conn, "unsigned_words") is None


def has_words(conn: psycopg.Connection) -> bool:
    """Whether the visual-word index holds anything (not for an index built before it existed)."""
    return conn.execute("SELECT 1 FROM image_words LIMIT 1").fetchone() is not None


def other_model(conn: psycopg.Connection, fingerprint: str) -> str | None:
    """The fingerprint of a model other than ``fingerprint`` whose vectors the index holds, if any."""
    row = conn.execute("SELECT model FROM images WHERE model <> %s LIMIT 1", (fingerprint,)).fetchone()
    return None if row is None else str(row[0])


def images_per_inventory(conn: psycopg.Connection) -> dict[str, int]:
    """How many images the index holds of each papyrus (by inventory key; those without one left out)."""
    rows = conn.execute(
        "SELECT p.inventory_key, count(*) FROM images i JOIN papyri p ON p.id = i.papyrus_id"
        " WHERE p.inventory_key IS NOT NULL GROUP BY p.inventory_key"
    ).fetchall()
    return {str(key): int(n) for key, n in rows}
