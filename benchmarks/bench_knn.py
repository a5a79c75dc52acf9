"""Figure 3 — kNN search at 100k (and, with --million, 1M) vectors: HNSW vs exact scans.

Vectors: 128-d unit vectors drawn from a mixture of Gaussian clusters (one cluster per 50
vectors, sigma 0.15 per dimension: a hard case where the ten nearest neighbours are near-ties;
``BENCH_KNN_NOISE`` changes it); queries are fresh draws from the same mixture, plus
near-duplicates of indexed vectors (what a re-photographed papyrus is) for the top-1 hit rate.
The first rows are **real**: the embeddings of the 44 Heidelberg references and the ``more/``
scans by a seeded untrained ``SiameseResNet18``, queried with software re-photographs of each
distinct reference (top-1 by inventory, HNSW against the exact answer). One papyrus row per
vector. They are loaded with binary COPY straight into ``papyri`` and ``images`` (the HNSW index
dropped first), then the index is rebuilt as the migration defines it (m=16,
ef_construction=64) and its build time is reported.

- **candidate**: ``index.knn`` (the package's query: join with ``papyri``, cosine distance,
  HNSW with ``hnsw.ef_search`` = 40, its default) on a pooled connection; also ef_search 100/200;
- **exact in PostgreSQL**: the same ``index.knn`` inside a transaction with
  ``SET LOCAL enable_indexscan = off`` (a sequential scan; the plan is checked);
- **numpy brute force**: ``X @ q`` + ``argpartition`` on the same vectors in this process (also
  the ground truth for recall@10).

Ingest rows/s, COPY against row-by-row (``--insert-rows``, default 20,000; 2,000 with --quick):
the same synthetic rows (one papyrus record + one image with its vector each) go into two scratch
schemas made by the package's own migration, the HNSW index dropped in both (as a bulk ingest
does), so the figure is the insert path alone:

- **candidate**: ``index.add_images`` (the ingest's path: catalogue upsert in one pipelined
  batch, binary COPY into a temp table, ``INSERT … SELECT … ON CONFLICT``) in batches of 1,000
  rows, one transaction per batch;
- **baseline**: one ``INSERT … RETURNING id`` for the papyrus and one ``INSERT`` for the image per
  row, committed row by row, as the original Django ORM ``save()`` calls did.

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
"""Near-duplicate queries (a re-photographed indexed papyrus): an indexed vector plus this noise."""


def make_vectors(n: int, n_queries: int, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
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


REAL_SEED = 1234
"""Seed of the untrained ``SiameseResNet18`` that embeds the real scans (as the tests' model)."""


def real_embeddings(recaptures: int = 1, seed: int = 2024) -> dict[str, Any]:
    """Embeddings of the real scans (the Heidelberg references and ``more/``) and of software
    re-photographs of each distinct reference (the queries), with ground truth by inventory."""
    import torch

    from papyrus_widgets import imaging
    from papyrus_widgets.evaluation import inventory_of, make_queries
    from papyrus_widgets.model import SiameseResNet18, embed_arrays

    torch.manual_seed(REAL_SEED)
    model = SiameseResNet18().eval()
    scans = C.reference_images() + C.more_images()
    arrays = [imaging.model_input(imaging.decode_image(p.read_bytes(), max_side=1024, name=p.name)) for p in scans]
    inventories = [inventory_of(p) if p.parent == C.REFERENCES else f"more:{p.name}" for p in scans]
    queries = make_queries(C.REFERENCES, recaptures, seed=seed)
    q_arrays = [imaging.model_input(img) for img, _ in queries]
    return {
        "vectors": embed_arrays(model, np.stack(arrays)),
        "inventories": inventories,
        "queries": embed_arrays(model, np.stack(q_arrays)),
        "query_inventories": [inv for _, inv in queries],
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


def build_hnsw(conn: Any, n: int, cores: int) -> dict[str, Any]:
    """Rebuild the HNSW index as migration 1 defines it; maintenance_work_mem sized to hold the graph."""
    mem_mb = int(min(8192, max(256, n * 3 / 1024)))  # ~3 KB per 128-d vector: the graph fits in memory
    workers = max(0, cores - 1)
    conn.autocommit = True
    conn.execute(f"SET maintenance_work_mem = '{mem_mb}MB'")
    conn.execute(f"SET max_parallel_maintenance_workers = {workers}")
    t0 = time.perf_counter()
    conn.execute("CREATE INDEX images_embedding_hnsw ON images USING hnsw (embedding vector_cosine_ops)")
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
    for method in ("copy", "row_by_row"):
        schema = f"bench_insert_{method}"
        with index.connect(url) as conn:
            conn.autocommit = True
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.execute(f"CREATE SCHEMA {schema}")
            conn.execute(f"SET search_path = {schema}, public")
            conn.execute(index.MIGRATIONS[0][1])  # papyri, images, index_meta as the package makes them
            index.drop_hnsw(conn)
            conn.autocommit = False
            t0 = time.perf_counter()
            if method == "copy":
                for start in range(0, n, INSERT_BATCH):
                    index.add_images(conn, rows[start : start + INSERT_BATCH])
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


def measure_size(
    url: str, n: int, n_queries: int, n_exact: int, fingerprint: str, cores: int, real: dict[str, Any]
) -> dict[str, Any]:
    from papyrus_widgets import index

    t0 = time.perf_counter()
    vectors, queries = make_vectors(n, n_queries)
    n_real = len(real["vectors"])
    vectors[:n_real] = real["vectors"]  # the real scans' embeddings, among the distractors
    gen_s = time.perf_counter() - t0
    with index.connect(url) as conn:
        loaded = load(conn, vectors, fingerprint)
        print(
            f"  {n:,} vectors: COPY {loaded['copy_images_s']:.1f} s ({loaded['copy_rows_per_s']:,.0f} rows/s)",
            flush=True,
        )
        build = build_hnsw(conn, n, cores)
        print(
            f"  HNSW build {build['seconds']:.1f} s, index {build['index_bytes'] / 2**20:.0f} MiB", flush=True
        )

    # numpy brute force: ground truth and the in-process baseline
    truth = np.stack([numpy_knn(vectors, q) for q in queries])
    np_times = []
    for q in queries:
        t0 = time.perf_counter()
        numpy_knn(vectors, q)
        np_times.append(time.perf_counter() - t0)

    rng = np.random.default_rng(99)
    picks = rng.integers(0, n, size=len(queries))
    dup = vectors[picks] + DUPLICATE_NOISE * rng.standard_normal((len(picks), DIM)).astype(np.float32)
    dup /= np.linalg.norm(dup, axis=1, keepdims=True)
    dup_truth = np.array([numpy_knn(vectors, d)[0] for d in dup])
    pool = index.get_pool(url)
    hnsw: dict[int, dict[str, Any]] = {}
    with pool.connection() as conn:
        for q in queries[:5]:
            index.knn(conn, q, K)  # warm the cache
        for ef in (40, 100, 200):
            times, found = [], []
            for q in queries:
                t0 = time.perf_counter()
                rows = index.knn(conn, q, K, ef_search=ef)
                times.append(time.perf_counter() - t0)
                found.append(keys_to_ids(rows))
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
    numpy_s = C.summary(np_times)
    h = hnsw[40]["seconds"]
    return {
        "vectors": n,
        "queries": n_queries,
        "exact_queries": n_exact,
        "generate_s": gen_s,
        "load": loaded,
        "build": build,
        "hnsw": {str(k): v for k, v in hnsw.items()},
        "exact_postgres": exact,
        "real": real_result,
        "numpy": {
            "seconds": numpy_s,
            "recall_at_10": 1.0,
            "near_duplicate_top1": float(np.mean(dup_truth == picks)),
            "matrix_bytes": int(vectors.nbytes),
        },
        "ratios": {
            "exact_postgres_over_hnsw_p50": C.ratio(exact["seconds"]["p50"], h["p50"]),
            "numpy_over_hnsw_p50": C.ratio(numpy_s["p50"], h["p50"]),
            "hnsw_recall_at_10": hnsw[40]["recall_at_10"],
            "hnsw_near_duplicate_top1": hnsw[40]["near_duplicate_top1"],
            "real_hnsw_top1_over_exact_top1": C.ratio(real_result["hnsw_top1"], real_result["exact_top1"]),
        },
        "noise": NOISE,
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
        for n in sizes:
            n_exact = 10 if n >= 1_000_000 else (10 if args.quick else 30)
            print(f"kNN at {n:,} vectors", flush=True)
            results.append(measure_size(url, n, n_queries, n_exact, fingerprint, cores, real))
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
        "insert": insert,
        "load_average_start": load_start,
        "versions": versions,
    }
    first = results[0]
    result["ratios"] = {**first["ratios"], "copy_over_row_by_row_rows_per_s": insert["copy_over_row_by_row_rows_per_s"]}
    result["headline"] = (
        f"{first['vectors']:,} vectors: HNSW {first['ratios']['exact_postgres_over_hnsw_p50']:.0f}x faster than the "
        f"exact scan, recall@10 {first['ratios']['hnsw_recall_at_10']:.3f}; ingest COPY "
        f"{insert['copy_over_row_by_row_rows_per_s']:.0f}x the rows/s of row-by-row inserts"
    )
    for r in results:
        print()
        print(
            f"kNN at {r['vectors']:,} vectors, k={K}: RATIO exact-PG/HNSW p50 = "
            f"{r['ratios']['exact_postgres_over_hnsw_p50']:.1f}x, "
            f"numpy/HNSW p50 = {r['ratios']['numpy_over_hnsw_p50']:.2f}x, "
            f"HNSW recall@10 = {r['ratios']['hnsw_recall_at_10']:.3f}, "
            f"near-duplicate top-1 = {r['ratios']['hnsw_near_duplicate_top1']:.3f}"
        )
        rows = []
        for ef in ("40", "100", "200"):
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
        f"ingest of {insert['rows']:,} rows: RATIO COPY/row-by-row rows/s = "
        f"{insert['copy_over_row_by_row_rows_per_s']:.1f}x"
    )
    print(
        C.table(
            [
                [f"index.add_images (binary COPY, {insert['batch']:,} rows per transaction)",
                 insert["copy"]["seconds"], insert["copy"]["rows_per_s"]],
                ["row-by-row INSERTs, a commit per row",
                 insert["row_by_row"]["seconds"], insert["row_by_row"]["rows_per_s"]],
            ],
            ["insert path", "seconds", "rows/s"],
        )
    )  # fmt: skip
    C.write_result(args.out, NAME, result)


if __name__ == "__main__":
    main()
