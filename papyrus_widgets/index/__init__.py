"""The index in PostgreSQL + pgvector: schema, migrations, bulk insert, kNN and the word shortlist.

Tables
- ``papyri``: one row per catalogue record (HGV id when known), with metadata;
- ``images``: one row per (papyrus, image bytes), with the 128-d embedding, the object-store keys
  of the original and the thumbnail, and the fingerprint of the model that made the vector;
- ``image_words``: the visual-word inverted file, a posting per keypoint (word, image, weight, the
  keypoint's 64-bit signature): the first stage of a search from a photo
  (:mod:`papyrus_widgets.retrieval.shortlist`), a B-tree on (word, image) that holds the weight and
  the signature too, so a posting list is read from the index alone;
- ``word_df``: how many images have each word (the idf's df), kept by triggers on ``image_words``;
- ``index_meta``: key/value facts about the index (the model and the visual vocabulary that built it);
- ``schema_version``: migrations applied.

A search shortlists images by their visual words (:func:`word_candidates`) and by cosine distance
of the embeddings (:func:`knn`, HNSW index, ``vector_cosine_ops``).

Modules (each imports only those above it; a pool's first use migrates the schema):

- :mod:`.connection`: pools, single connections, readable connection errors;
- :mod:`.schema`: the tables' migrations and constants (``EMBEDDING_DIM``, the HNSW definition);
- :mod:`.catalogue`: writing papyri and images (COPY), ``index_meta``, counts;
- :mod:`.hnsw`: the HNSW index's upkeep around bulk loads, the postings' B-tree rebuilt on request;
- :mod:`.queries`: kNN, the visual-word shortlist, metadata filters, statistics.

Everything is re-exported here: callers write ``index.knn(...)``.
"""

from __future__ import annotations

from . import catalogue, connection, hnsw, queries, schema
from .catalogue import *  # noqa: F403
from .catalogue import _papyrus_values  # noqa: F401  (benchmarks time the row-wise path with it)
from .connection import *  # noqa: F403
from .connection import _autocommit, _db_message  # noqa: F401
from .hnsw import *  # noqa: F403
from .queries import *  # noqa: F403
from .schema import *  # noqa: F403
from .schema import _schema_ready  # noqa: F401  (tests reset it)

__all__ = [
    "catalogue",
    "connection",
    "hnsw",
    "queries",
    "schema",
    *catalogue.__all__,
    *connection.__all__,
    *hnsw.__all__,
    *queries.__all__,
    *schema.__all__,
]
