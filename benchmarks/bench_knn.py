"""Figure 3 — kNN search at 100k (and, with --million, 1M) vectors: HNSW vs exact scans, compared at
equal recall.

Two kinds of vectors, each loaded and indexed on its own:

- **real-like** (the main case): 128-d vectors drawn from a two-level Gaussian fitted to real
  embeddings — the embeddings (seeded untrained ``SiameseResNet18``, as the benchmark's model) of
  the 44 Heidelberg references, the ``more/`` scans and 24 tiles of each of the 41 photographs of
  other papyri (``more/``, ``fragments/``): the mean and covariance *between* papyri (one group per
  inventory or photograph) and the pooled covariance *within* one; each drawn papyrus has
  ``PER_PAPYRUS`` images, and a query is a new image of an indexed papyrus. The real scans'
  embeddings are the first rows;
- **uniform clusters** (a labelled worst case): unit vectors from Gaussian clusters of 50, sigma
  0.15 per dimension (``BENCH_KNN_NOISE``) — nearly uniform on the sphere, the ten nearest are
  near-ties; queries are fresh draws.

For each: HNSW (``index.knn``: join with ``papyri``, cosine distance) swept over ``ef_search``
``EF_SWEEP``, recall@10 against numpy's exact answer; **the smallest ef_search with recall@10 ≥
0.95** and its p50/p95 against the exact scan in PostgreSQL (``index.knn`` inside a transaction
with ``SET LOCAL enable_indexscan = off``; the plan is checked) and numpy brute force in this
process (``X @ q`` + ``argpartition``). Near-duplicates of indexed vectors (a re-photographed
papyrus: noise 0.02 per dimension for the uniform clusters, a tenth of the within-papyrus spread
for the real-like ones) report whether the original is the top hit; the real scans, queried with software
re-photographs of each reference, report top-1 by inventory through HNSW and exact. The rows go
in with binary COPY (the HNSW index dropped), then the index is built as the migration defines it
(m=16, ef_construction=64) and its build time is reported. Up to 100,000 vectors the graph is also
built with m 16/32 x ef_construction 64/128 (``BUILD_SWEEP``) and swept over ``ef_search`` again on
the same queries: build time, size, and the smallest ``ef_search`` reaching recall@10 ≥ 0.95 with
its p50, for each; and the default graph is built :data:`REBUILDS` more times, to show how much
recall@10 varies from one build to the next (``rebuilds``).

Ingest rows/s (``--insert-rows``, default 20,000; 2,000 with --quick): the same synthetic rows (one
papyrus record + one image with its vector each) go into scratch schemas made by the package's
own migration, the HNSW index dropped (as a bulk ingest does), so the figure is the insert path
alone:

- **candidate**: ``index.add_images`` (the ingest's path: catalogue upsert in one pipelined
  batch, binary COPY into a temp table, ``INSERT … SELECT … ON CONFLICT``) in batches of 1,000
  rows, one transaction per batch;
- **best row-wise path**: the same batches of 1,000 as ``executemany`` (psycopg pipelines it) of
  the papyrus upsert and of the image insert, one transaction per batch;
- **one commit per row**: one ``INSERT … RETURNING id`` for the papyrus and one ``INSERT`` for the
  image per row, committed row by row, as the original Django ORM ``save()`` calls did.

Run alone: ``python benchmarks/bench_knn.py [--quick] [--million] [--insert-rows N]``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

NAME = "knn"
K = 10
DIM = 128
PER_CLUSTER = 50
NOISE = float(os.environ.get("BENCH_KNN_NOISE", "0.15"))
"""Per-dimension sigma around a unit cluster centre. 0.15 is a hard case: a query's ten nearest
neighbours are near-ties (cosine ~0.25), so HNSW's approximation shows in recall@10; 0.06 gives
tight clusters where every method finds all ten."""
DUPLICATE_NOISE = 0.02
"""Near-duplicate queries (a re-photographed indexed papyrus) of the uniform clusters: an indexed
vector plus this noise per dimension (the real-like ones: a tenth of the within-papyrus spread)."""


BUILD_SWEEP = ((16, 64), (16, 128), (32, 64), (32, 128))
"""(m, ef_construction) of the HNSW graph, pgvector's defaults first (what migration 1 builds)."""
BUILD_SWEEP_MAX_N = 100_000
"""Sizes up to this also sweep :data:`BUILD_SWEEP` (a build at a million takes minutes each)."""
REBUILDS = 4
"""… and build the default graph (:data:`BUILD_SWEEP`'s first) this many more times on the same
vectors, swept on the same queries: pgvector draws each node's level at random (and a parallel
build inserts in no fixed order), so two builds are two graphs; how far their recall@10 differs
(``rebuilds``: each build's, and the lowest, median and highest per ef_search) is the run-to-run
spread of HNSW results that a search's embedding candidates inherit."""
EF_SWEEP = (40, 64, 100, 200, 400, 800)
"""The ``hnsw.ef_search`` values each kind of vector is searched with."""
TARGET_RECALL = 0.95
PER_PAPYRUS = 5
"""Images per drawn papyrus in the real-like vectors."""
TILES_PER_PHOTO = 24
KINDS = ("real-like", "uniform")


def make_vectors(n: int, n_queries: int, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Uniform clusters: ``n`` unit vectors and ``n_queries`` fresh draws (the worst case)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // PER_CLUSTER), DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, DIM), dtype=np.float32)
        step = 200_000
        for s in range(0, m, step):
            c = rng.integers(0, len(centres), size=min(step, m - s))
            x = centres[c] + NOISE * rng.standard_normal((len(c), DIM)).astype(np.float32)
            out[s : s + len(c)] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    return draw(n), draw(n_queries)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def fit_real_like(vectors: np.ndarray, groups: list[str]) -> dict[str, Any]:
    """A two-level Gaussian of real embeddings: the mean and covariance of the groups' means
    (between papyri; shrunk 10 % towards its average variance, as there are fewer groups than
    dimensions) and the pooled covariance of the vectors around their group's mean (within one)."""
    labels = np.unique(np.asarray(groups), return_inverse=True)[1]
    means = np.stack([vectors[labels == g].mean(0) for g in range(labels.max() + 1)])
    within = vectors - means[labels]
    within_cov = within.T @ within / max(1, len(vectors) - len(means))
    between_cov = np.cov(means, rowvar=False)
    between_cov = 0.9 * between_cov + 0.1 * np.trace(between_cov) / DIM * np.eye(DIM)
    eps = 1e-9 * np.eye(DIM)
    return {
        "mean": means.mean(0),
        "between": np.linalg.cholesky(between_cov + eps),
        "within": np.linalg.cholesky(within_cov + eps),
        "vectors": len(vectors),
        "groups": len(means),
        "groups_with_several": int((np.bincount(labels) > 1).sum()),
        "within_over_between_variance": float(np.trace(within_cov) / np.trace(between_cov)),
        "within_rms_per_dimension": float(np.sqrt(np.trace(within_cov) / DIM)),
    }


def make_real_like(fit: dict[str, Any], n: int, n_queries: int, seed: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """``n`` vectors of ``n / PER_PAPYRUS`` drawn papyri, and ``n_queries`` new images of indexed ones."""
    rng = np.random.default_rng(seed)
    papyri = max(1, n // PER_PAPYRUS)
    centres = fit["mean"] + rng.standard_normal((papyri, DIM)) @ fit["between"].T
    out = np.empty((n, DIM), dtype=np.float32)
    step = 100_000
    for s in range(0, n, step):
        idx = np.arange(s, min(n, s + step)) % papyri
        out[s : s + len(idx)] = _unit(centres[idx] + rng.standard_normal((len(idx), DIM)) @ fit["within"].T)
    which = rng.integers(0, papyri, n_queries)
    queries = _unit(centres[which] + rng.standard_normal((n_queries, DIM)) @ fit["within"].T)
    return out, queries


REAL_SEED = 1234
"""Seed of the untrained ``SiameseResNet18`` that embeds the real scans (as the tests' model)."""


def real_embeddings(recaptures: int = 1, seed: int = 2024) -> dict[str, Any]:
    """Embeddings of the real scans (the Heidelberg references and ``more/``), of software
    re-photographs of each distinct reference (the queries, with ground truth by inventory) and of
    ``TILES_PER_PHOTO`` tiles of each photograph of other papyri (what the real-like vectors are
    fitted to, with the scans)."""
    import torch

    from papyrus_widgets import imaging
    from papyrus_widgets.evaluation import distractor_crop, inventory_of, make_queries
    from papyrus_widgets.model import SiameseResNet18, embed_arrays

    torch.manual_seed(REAL_SEED)
    model = SiameseResNet18().eval()
    scans = C.reference_images() + C.more_images()
    arrays = [imaging.model_input(imaging.decode_image(p.read_bytes(), max_side=1024, name=p.name)) for p in scans]
    inventories = [inventory_of(p) if p.parent == C.REFERENCES else f"more:{p.name}" for p in scans]
    queries = make_queries(C.REFERENCES, recaptures, seed=seed)
    q_arrays = [imaging.model_input(img) for img, _ in queries]
    tiles, tile_groups = [], []
    for j, path in enumerate(C.distractor_sources()):
        photo = imaging.decode_image(path.read_bytes(), max_side=1200, max_pixels=400_000_000, name=path.name)
        for i in range(TILES_PER_PHOTO):
            tiles.append(imaging.model_input(distractor_crop([photo], i, seed=j)))
            tile_groups.append(f"photo:{path.name}")
    return {
        "vectors": embed_arrays(model, np.stack(arrays)),
        "inventories": inventories,
        "queries": embed_arrays(model, np.stack(q_arrays)),
        "query_inventories": [inv for _, inv in queries],
        "tiles": embed_arrays(model, np.stack(tiles)),
        "tile_groups": tile_groups,
    }


def load(conn: Any, vectors: np.ndarray, fingerprint: str) -> dict[str, float]:
    """Empty the tables, drop the HNSW index, COPY papyri and images (binary); seconds per step."""
    n = len(vectors)
    out: dict[str, float] = {}
    conn.execute("TRUNCATE images, papyri RESTART IDENTITY CASCADE")
    conn.execute("DROP INDEX IF EXISTS images_embedding_hnsw")
    conn.commit()
    t0 = time.perf_counter()
    with (
        conn.cursor() as cur,
        cur.copy("COPY papyri (key, collection, title) FROM STDIN WITH (FORMAT BINARY)") as copy,
    ):
        copy.set_types(["text", "text", "text"])
        for i in range(n):
            copy.write_row((f"bench:{i}", "bench", f"synthetic papyrus {i}"))
    conn.commit()
    (first_id,) = conn.execute("SELECT min(id) FROM papyri").fetchone()
    out["copy_papyri_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    thumb = "thumbnails/00/" + "0" * 64 + ".jpg"
    original = "originals/00/" + "0" * 64 + ".jpg"
    with (
        conn.cursor() as cur,
        cur.copy(
            "COPY images (papyrus_id, sha256, source_name, object_key, thumb_key, width, height, model, embedding)"
            " FROM STDIN WITH (FORMAT BINARY)"
        ) as copy,
    ):
        copy.set_types(["int8", "text", "text", "text", "text", "int4", "int4", "text", "vector"])
        for i in range(n):
            copy.write_row(
                (
                    first_id + i,
                    f"{i:064x}",
                    f"bench-{i}.jpg",
                    original,
                    thumb,
                    1000,
                    1400,
                    fingerprint,
                    vectors[i],
                )
            )
    conn.commit()
    out["copy_images_s"] = time.perf_counter() - t0
    out["copy_rows_per_s"] = n / out["copy_images_s"]
    conn.autocommit = True
    t0 = time.perf_counter()
    conn.execute("VACUUM ANALYZE papyri")
    conn.execute("VACUUM ANALYZE images")
    out["vacuum_analyze_s"] = time.perf_counter() - t0
    conn.autocommit = False
    return out


def build_hnsw(
    conn: Any, n: int, cores: int, m: int | None = None, ef_construction: int | None = None
) -> dict[str, Any]:
    """Rebuild the HNSW index as migration 1 defines it (or with these ``m`` and ``ef_construction``);
    maintenance_work_mem sized to hold the graph."""
    mem_mb = int(min(8192, max(256, n * 3 / 1024)))  # ~3 KB per 128-d vector: the graph fits in memory
    workers = max(0, cores - 1)
    conn.autocommit = True
    conn.execute(f"SET maintenance_work_mem = '{mem_mb}MB'")
    conn.execute(f"SET max_parallel_maintenance_workers = {workers}")
    t0 = time.perf_counter()
    with_ = f" WITH (m = {int(m)}, ef_construction = {int(ef_construction)})" if m and ef_construction else ""
    conn.execute(f"CREATE INDEX images_embedding_hnsw ON images USING hnsw (embedding vector_cosine_ops){with_}")
    seconds = time.perf_counter() - t0
    conn.execute("RESET maintenance_work_mem")
    conn.execute("RESET max_parallel_maintenance_workers")
    (index_bytes,) = conn.execute("SELECT pg_relation_size('images_embedding_hnsw')").fetchone()
    (heap_bytes,) = conn.execute("SELECT pg_table_size('images')").fetchone()
    (papyri_bytes,) = conn.execute("SELECT pg_total_relation_size('papyri')").fetchone()
    (total_bytes,) = conn.execute("SELECT pg_total_relation_size('images')").fetchone()
    conn.autocommit = False
    return {
        "seconds": seconds,
        "maintenance_work_mem_mb": mem_mb,
        "parallel_workers": workers,
        "index_bytes": index_bytes,
        "images_table_bytes": heap_bytes,
        "images_total_bytes": total_bytes,
        "papyri_total_bytes": papyri_bytes,
        "index_bytes_per_vector": index_bytes / n,
        "images_table_bytes_per_row": heap_bytes / n,
    }


def rebuilt_recalls(
    url: str, n: int, cores: int, queries: np.ndarray, truth: np.ndarray, first: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    """The default graph built :data:`REBUILDS` more times on the vectors loaded (the first build's
    sweep is ``first``), each swept over :data:`EF_SWEEP` on ``queries``: recall@10 of every build
    and the lowest, median and highest per ef_search. Leaves the last build in place (the same
    definition as migration 1's)."""
    from papyrus_widgets import index

    per_build = [{str(ef): first[ef]["recall_at_10"] for ef in EF_SWEEP}]
    with index.connect(url) as conn:
        for _ in range(REBUILDS):
            conn.execute("DROP INDEX IF EXISTS images_embedding_hnsw")
            conn.commit()
            build_hnsw(conn, n, cores)
            per_build.append({str(ef): recall(timed_knn(conn, queries, ef)[1], truth) for ef in EF_SWEEP})
            print("  rebuilt: " + ", ".join(f"ef {ef}: {r:.3f}" for ef, r in per_build[-1].items()), flush=True)
    spread = {
        str(ef): {
            "min": float(np.min([b[str(ef)] for b in per_build])),
            "median": float(np.median([b[str(ef)] for b in per_build])),
            "max": float(np.max([b[str(ef)] for b in per_build])),
        }
        for ef in EF_SWEEP
    }
    return {"builds": len(per_build), "recall_at_10": per_build, "spread": spread}


INSERT_BATCH = 1000
"""Rows per ``index.add_images`` call (one transaction each) in the COPY-vs-row-by-row figure."""


def measure_insert(url: str, n: int, fingerprint: str) -> dict[str, Any]:
    """Ingest rows/s of ``index.add_images`` (binary COPY, batched) and of row-by-row INSERTs
    committed one by one, into fresh scratch schemas; checks that both stored every row."""
    from papyrus_widgets import index

    vectors, _ = make_vectors(n, 1, seed=11)
    thumb = "thumbnails/00/" + "0" * 64 + ".jpg"
    original = "originals/00/" + "0" * 64 + ".jpg"
    rows = [
        C.synthetic_row("ins", i, vectors[i], fingerprint, original, thumb, f"synthetic papyrus {i}") for i in range(n)
    ]
    papyrus_cols = ", ".join(index.PAPYRUS_COLUMNS)
    papyrus_sql = (
        f"INSERT INTO papyri ({papyrus_cols}) VALUES ({', '.join(['%s'] * len(index.PAPYRUS_COLUMNS))})"
        " ON CONFLICT (key) DO UPDATE SET title = EXCLUDED.title RETURNING id"
    )
    image_sql = (
        "INSERT INTO images (papyrus_id, sha256, source_name, object_key, thumb_key, width, height, model, embedding)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
    )
    out: dict[str, Any] = {"rows": n, "batch": INSERT_BATCH}
    for method in ("copy", "executemany", "row_by_row"):
        schema = f"bench_insert_{method}"
        with index.connect(url) as conn:
            conn.autocommit = True
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.execute(f"CREATE SCHEMA {schema}")
            conn.execute(f"SET search_path = {schema}, public")
            for _, migration in index.MIGRATIONS:  # papyri, images, postings as the package makes them
                conn.execute(migration)
            index.drop_hnsw(conn)
            conn.autocommit = False
            t0 = time.perf_counter()
            if method == "copy":
                for start in range(0, n, INSERT_BATCH):
                    index.add_images(conn, rows[start : start + INSERT_BATCH])
                    conn.commit()
            elif method == "executemany":
                papyrus_many = papyrus_sql.replace(" RETURNING id", "")
                image_many = (  # the papyrus id looked up by its key in the same statement
                    "INSERT INTO images (papyrus_id, sha256, source_name, object_key, thumb_key, width, height,"
                    " model, embedding) VALUES ((SELECT id FROM papyri WHERE key = %s), %s, %s, %s, %s, %s, %s, %s, %s)"
                )
                with conn.cursor() as cur:
                    for start in range(0, n, INSERT_BATCH):
                        batch = rows[start : start + INSERT_BATCH]
                        cur.executemany(papyrus_many, [index._papyrus_values(r.record) for r in batch])
                        cur.executemany(
                            image_many,
                            [
                                (r.record.key, r.sha256, r.source_name, r.object_key, r.thumb_key, r.width, r.height,
                                 r.model, r.embedding)
                                for r in batch
                            ],
                        )  # fmt: skip
                        conn.commit()
            else:
                with conn.cursor() as cur:
                    for r in rows:
                        cur.execute(papyrus_sql, index._papyrus_values(r.record))
                        (papyrus_id,) = cur.fetchone()
                        cur.execute(
                            image_sql,
                            (papyrus_id, r.sha256, r.source_name, r.object_key, r.thumb_key, r.width, r.height,
                             r.model, r.embedding),
                        )  # fmt: skip
                        conn.commit()
            seconds = time.perf_counter() - t0
            (stored,) = conn.execute("SELECT count(*) FROM images").fetchone()
            conn.commit()
            conn.autocommit = True
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
        if stored != n:
            raise RuntimeError(f"{method}: {stored} of {n} rows stored")
        out[method] = {"seconds": seconds, "rows_per_s": n / seconds}
        label = method.replace("_", "-")
        print(f"  insert {n:,} rows, {label}: {seconds:.1f} s ({n / seconds:,.0f} rows/s)", flush=True)
    out["copy_over_executemany_rows_per_s"] = C.ratio(out["copy"]["rows_per_s"], out["executemany"]["rows_per_s"])
    out["copy_over_row_by_row_rows_per_s"] = C.ratio(out["copy"]["rows_per_s"], out["row_by_row"]["rows_per_s"])
    return out


def keys_to_ids(rows: list[dict[str, Any]]) -> list[int]:
    return [int(r["key"].split(":", 1)[1]) for r in rows]


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t.tolist())) / K for f, t in zip(found, truth)]))


def numpy_knn(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    scores = x @ q
    top = np.argpartition(-scores, K)[:K]
    return top[np.argsort(-scores[top])]


def timed_knn(conn: Any, queries: np.ndarray, ef: int) -> tuple[list[float], list[list[int]]]:
    """Each query through ``index.knn`` at ``ef_search`` = ``ef``: its seconds and the ids found."""
    from papyrus_widgets import index

    times, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        rows = index.knn(conn, q, K, ef_search=ef)
        times.append(time.perf_counter() - t0)
        found.append(keys_to_ids(rows))
    return times, found


def measure_size(
    url: str,
    n: int,
    kind: str,
    n_queries: int,
    n_exact: int,
    fingerprint: str,
    cores: int,
    real: dict[str, Any],
    fit: dict[str, Any],
) -> dict[str, Any]:
    """One size and kind of vectors (``real-like`` or ``uniform``): load, build, sweep ef_search,
    exact scan and numpy at the same queries."""
    from papyrus_widgets import index

    t0 = time.perf_counter()
    vectors, queries = make_real_like(fit, n, n_queries) if kind == "real-like" else make_vectors(n, n_queries)
    n_real = len(real["vectors"])
    vectors[:n_real] = real["vectors"]  # the real scans' embeddings, among the others
    gen_s = time.perf_counter() - t0
    with index.connect(url) as conn:
        loaded = load(conn, vectors, fingerprint)
        print(f"  {n:,} {kind} vectors: COPY {loaded['copy_images_s']:.1f} s", flush=True)
        build = build_hnsw(conn, n, cores)
        print(f"  HNSW build {build['seconds']:.1f} s, index {build['index_bytes'] / 2**20:.0f} MiB", flush=True)

    # numpy brute force: ground truth and the in-process baseline
    truth = np.stack([numpy_knn(vectors, q) for q in queries])
    np_times = []
    for q in queries:
        t0 = time.perf_counter()
        numpy_knn(vectors, q)
        np_times.append(time.perf_counter() - t0)

    rng = np.random.default_rng(99)
    picks = rng.integers(0, n, size=len(queries))
    # a tenth of how much two images of one papyrus differ (real-like), or DUPLICATE_NOISE (uniform)
    dup_noise = DUPLICATE_NOISE if kind == "uniform" else 0.1 * fit["within_rms_per_dimension"]
    dup = vectors[picks] + dup_noise * rng.standard_normal((len(picks), DIM)).astype(np.float32)
    dup /= np.linalg.norm(dup, axis=1, keepdims=True)
    dup_truth = np.array([numpy_knn(vectors, d)[0] for d in dup])
    pool = index.get_pool(url)
    hnsw: dict[int, dict[str, Any]] = {}
    with pool.connection() as conn:
        for q in queries[:5]:
            index.knn(conn, q, K)  # warm the cache
        for ef in EF_SWEEP:
            times, found = timed_knn(conn, queries, ef)
            hnsw[ef] = {"seconds": C.summary(times), "recall_at_10": recall(found, truth)}
            # near-duplicates of indexed vectors (a re-photographed papyrus): is the original the top hit?
            top1 = [keys_to_ids(index.knn(conn, d, K, ef_search=ef))[0] == int(i) for d, i in zip(dup, picks)]
            hnsw[ef]["near_duplicate_top1"] = float(np.mean(top1))
            print(
                f"  HNSW ef_search={ef}: p50 {C.ms(hnsw[ef]['seconds']['p50']):.2f} ms, recall@10 "
                f"{hnsw[ef]['recall_at_10']:.3f}, near-duplicate top-1 {hnsw[ef]['near_duplicate_top1']:.3f}",
                flush=True,
            )

        # real re-photographs of the references: is a scan of the same papyrus the top hit?
        def right(ids: list[int] | np.ndarray, inventory: str) -> bool:
            return len(ids) > 0 and int(ids[0]) < n_real and real["inventories"][int(ids[0])] == inventory

        real_q = list(zip(real["queries"], real["query_inventories"]))
        real_hnsw = [right(keys_to_ids(index.knn(conn, q, K)), inv) for q, inv in real_q]
        real_exact = [right(numpy_knn(vectors, q), inv) for q, inv in real_q]
        real_recall = recall(
            [keys_to_ids(index.knn(conn, q, K)) for q, _ in real_q],
            np.stack([numpy_knn(vectors, q) for q, _ in real_q]),
        )
        real_result = {
            "scans": n_real,
            "queries": len(real_q),
            "hnsw_top1": float(np.mean(real_hnsw)),
            "exact_top1": float(np.mean(real_exact)),
            "hnsw_recall_at_10": real_recall,
        }
        print(
            f"  real re-photographs ({len(real_q)}): top-1 HNSW {real_result['hnsw_top1']:.3f} vs exact "
            f"{real_result['exact_top1']:.3f}, recall@10 vs exact {real_recall:.3f}",
            flush=True,
        )

        # exact scan in PostgreSQL: the same query with index scans off
        exact_times, exact_found = [], []
        with conn.transaction():
            conn.execute("SET LOCAL enable_indexscan = off")
            plan = "\n".join(
                r[0]
                for r in conn.execute(
                    "EXPLAIN SELECT i.id FROM images i JOIN papyri p ON p.id = i.papyrus_id"
                    " ORDER BY i.embedding <=> %s LIMIT 10",
                    (queries[0],),
                ).fetchall()
            )
            for q in queries[:n_exact]:
                t0 = time.perf_counter()
                rows = index.knn(conn, q, K)
                exact_times.append(time.perf_counter() - t0)
                exact_found.append(keys_to_ids(rows))
    uses_hnsw = "images_embedding_hnsw" in plan
    exact = {
        "seconds": C.summary(exact_times),
        "recall_at_10": recall(exact_found, truth[:n_exact]),
        "plan_uses_hnsw": uses_hnsw,
        "plan": plan,
    }
    print(
        f"  exact scan in PostgreSQL: p50 {C.ms(exact['seconds']['p50']):.1f} ms (plan uses HNSW: {uses_hnsw})",
        flush=True,
    )
    builds = [
        {
            "m": BUILD_SWEEP[0][0],
            "ef_construction": BUILD_SWEEP[0][1],
            "build": build,
            "hnsw": {str(k): {"p50": v["seconds"]["p50"], "recall_at_10": v["recall_at_10"]} for k, v in hnsw.items()},
        }
    ]
    if n <= BUILD_SWEEP_MAX_N:
        with index.connect(url) as conn:
            for m, efc in BUILD_SWEEP[1:]:
                conn.execute("DROP INDEX IF EXISTS images_embedding_hnsw")
                conn.commit()
                built = build_hnsw(conn, n, cores, m, efc)
                sweep: dict[str, dict[str, float]] = {}
                for ef in EF_SWEEP:
                    times, found = timed_knn(conn, queries, ef)
                    sweep[str(ef)] = {"p50": C.summary(times)["p50"], "recall_at_10": recall(found, truth)}
                builds.append({"m": m, "ef_construction": efc, "build": built, "hnsw": sweep})
                print(
                    f"  m={m}, ef_construction={efc}: build {built['seconds']:.1f} s, "
                    + ", ".join(
                        f"ef {ef}: {v['recall_at_10']:.3f} / {C.ms(v['p50']):.2f} ms" for ef, v in sweep.items()
                    ),
                    flush=True,
                )
    for b in builds:
        ok = [ef for ef in EF_SWEEP if b["hnsw"][str(ef)]["recall_at_10"] >= TARGET_RECALL]
        b["ef_search_for_target"] = ok[0] if ok else None
    rebuilds = rebuilt_recalls(url, n, cores, queries, truth, hnsw) if n <= BUILD_SWEEP_MAX_N else None
    numpy_s = C.summary(np_times)
    reached = [ef for ef in EF_SWEEP if hnsw[ef]["recall_at_10"] >= TARGET_RECALL]
    ef_target = reached[0] if reached else None
    at = hnsw[ef_target if ef_target is not None else EF_SWEEP[-1]]["seconds"]
    return {
        "vectors": n,
        "kind": kind,
        "queries": n_queries,
        "exact_queries": n_exact,
        "generate_s": gen_s,
        "load": loaded,
        "build": build,
        "hnsw": {str(k): v for k, v in hnsw.items()},
        "build_sweep": builds,
        "rebuilds": rebuilds,
        "ef_search_for_target": ef_target,
        "target_recall_at_10": TARGET_RECALL,
        "exact_postgres": exact,
        "real": real_result,
        "numpy": {
            "seconds": numpy_s,
            "recall_at_10": 1.0,
            "near_duplicate_top1": float(np.mean(dup_truth == picks)),
            "matrix_bytes": int(vectors.nbytes),
        },
        "ratios": {
            # at the smallest ef_search that reaches the target recall (or the largest swept, if none does)
            "exact_postgres_over_hnsw_p50": C.ratio(exact["seconds"]["p50"], at["p50"]),
            "numpy_over_hnsw_p50": C.ratio(numpy_s["p50"], at["p50"]),
            "hnsw_recall_at_10": hnsw[ef_target or EF_SWEEP[-1]]["recall_at_10"],
            "exact_postgres_over_hnsw_p50_at_ef40": C.ratio(exact["seconds"]["p50"], hnsw[40]["seconds"]["p50"]),
            "hnsw_recall_at_10_at_ef40": hnsw[40]["recall_at_10"],
            "hnsw_near_duplicate_top1": hnsw[40]["near_duplicate_top1"],
            "real_hnsw_top1_over_exact_top1": C.ratio(real_result["hnsw_top1"], real_result["exact_top1"]),
        },
        "noise": NOISE if kind == "uniform" else None,
        "near_duplicate_noise": dup_noise,
    }


def main() -> None:
    def options(p: Any) -> None:
        p.add_argument("--million", action="store_true", help="also 1,000,000 vectors (slow: HNSW build)")
        p.add_argument(
            "--insert-rows", type=int, help="rows for COPY vs row-by-row inserts (default 20,000; 2,000 with --quick)"
        )

    args = C.parse_args(__doc__.splitlines()[0], options)
    C.setup_environment()
    load_start = C.load_average()
    sizes = [20_000] if args.quick else [100_000]
    if args.million:
        sizes.append(1_000_000)
    n_queries = 50 if args.quick else 200
    cores = C.machine()["usable_cores"] or 1

    from papyrus_widgets import index, services

    results = []
    with C.workspace("knn") as ws:
        settings = ws.settings()
        url = services.database_url(settings)
        index.ensure_schema(url)
        versions = C.db_versions(url)
        with index.connect(url) as conn:
            (shared_buffers,) = conn.execute("SHOW shared_buffers").fetchone()
            (workers_per_gather,) = conn.execute("SHOW max_parallel_workers_per_gather").fetchone()
        fingerprint = "benchmark-vectors"
        t0 = time.perf_counter()
        real = real_embeddings()
        print(
            f"real embeddings: {len(real['vectors'])} scans, {len(real['queries'])} re-photographs "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        fit = fit_real_like(
            np.concatenate([real["vectors"], real["tiles"]]), [*real["inventories"], *real["tile_groups"]]
        )
        print(
            f"real-like model: fitted to {fit['vectors']} real embeddings in {fit['groups']} papyri or photographs "
            f"(within / between variance {fit['within_over_between_variance']:.2f})",
            flush=True,
        )
        for n in sizes:
            n_exact = 10 if n >= 1_000_000 else (10 if args.quick else 30)
            for kind in KINDS:
                print(f"kNN at {n:,} {kind} vectors", flush=True)
                results.append(measure_size(url, n, kind, n_queries, n_exact, fingerprint, cores, real, fit))
        insert_rows = args.insert_rows or (2_000 if args.quick else 20_000)
        print(f"ingest rows/s: COPY vs row-by-row, {insert_rows:,} rows", flush=True)
        insert = measure_insert(url, insert_rows, fingerprint)
        index.close_pools()

    result = {
        "title": "kNN: HNSW vs exact scan in PostgreSQL vs numpy brute force",
        "quick": args.quick,
        "k": K,
        "postgres_settings": {
            "shared_buffers": shared_buffers,
            "max_parallel_workers_per_gather": workers_per_gather,
        },
        "sizes": results,
        "real_like_fit": {k: v for k, v in fit.items() if not isinstance(v, np.ndarray)},
        "insert": insert,
        "load_average_start": load_start,
        "versions": versions,
    }
    first = results[0]
    result["ratios"] = {
        **first["ratios"],
        "copy_over_executemany_rows_per_s": insert["copy_over_executemany_rows_per_s"],
        "copy_over_row_by_row_rows_per_s": insert["copy_over_row_by_row_rows_per_s"],
    }
    result["headline"] = (
        f"{first['vectors']:,} {first['kind']} vectors: at ef_search {first['ef_search_for_target']} (recall@10 "
        f"{first['ratios']['hnsw_recall_at_10']:.3f}) HNSW is {first['ratios']['exact_postgres_over_hnsw_p50']:.0f}x "
        f"faster than the exact scan; ingest COPY {insert['copy_over_executemany_rows_per_s']:.1f}x the rows/s of "
        "executemany in one transaction per batch"
    )
    for r in results:
        print()
        print(
            f"kNN at {r['vectors']:,} {r['kind']} vectors, k={K}: smallest ef_search with recall@10 >= "
            f"{TARGET_RECALL}: {r['ef_search_for_target']}; there RATIO exact-PG/HNSW p50 = "
            f"{r['ratios']['exact_postgres_over_hnsw_p50']:.1f}x, "
            f"numpy/HNSW p50 = {r['ratios']['numpy_over_hnsw_p50']:.2f}x"
        )
        rows = []
        for ef in map(str, EF_SWEEP):
            s = r["hnsw"][ef]
            rows.append(
                [
                    f"HNSW index.knn, ef_search={ef}",
                    C.ms(s["seconds"]["p50"]),
                    C.ms(s["seconds"]["p95"]),
                    s["recall_at_10"],
                    s["near_duplicate_top1"],
                ]
            )
        e = r["exact_postgres"]
        rows.append(
            [
                f"exact scan in PostgreSQL ({r['exact_queries']} q)",
                C.ms(e["seconds"]["p50"]),
                C.ms(e["seconds"]["p95"]),
                e["recall_at_10"],
                "–",
            ]
        )
        rows.append(
            [
                "numpy brute force (in process)",
                C.ms(r["numpy"]["seconds"]["p50"]),
                C.ms(r["numpy"]["seconds"]["p95"]),
                1.0,
                r["numpy"]["near_duplicate_top1"],
            ]
        )
        print(C.table(rows, ["method", "p50 ms", "p95 ms", "recall@10", "near-dup top-1"]))
        b = r["build"]
        print(
            f"HNSW build {b['seconds']:.1f} s (maintenance_work_mem {b['maintenance_work_mem_mb']} MB, "
            f"{b['parallel_workers']} parallel worker), index {b['index_bytes'] / 2**20:.1f} MiB "
            f"({b['index_bytes_per_vector']:.0f} B/vector), images table {b['images_table_bytes'] / 2**20:.1f} MiB; "
            f"COPY {r['load']['copy_rows_per_s']:,.0f} rows/s"
        )
    print()
    print(
        f"ingest of {insert['rows']:,} rows: RATIO COPY/executemany rows/s = "
        f"{insert['copy_over_executemany_rows_per_s']:.1f}x, COPY/row-by-row = "
        f"{insert['copy_over_row_by_row_rows_per_s']:.1f}x"
    )
    print(
        C.table(
            [
                [f"index.add_images (binary COPY, {insert['batch']:,} rows per transaction)",
                 insert["copy"]["seconds"], insert["copy"]["rows_per_s"]],
                [f"executemany (pipelined), {insert['batch']:,} rows per transaction",
                 insert["executemany"]["seconds"], insert["executemany"]["rows_per_s"]],
                ["row-by-row INSERTs, a commit per row",
                 insert["row_by_row"]["seconds"], insert["row_by_row"]["rows_per_s"]],
            ],
            ["insert path", "seconds", "rows/s"],
        )
    )  # fmt: skip
    C.write_result(args.out, NAME, result)


if __name__ == "__main__":
    main()
