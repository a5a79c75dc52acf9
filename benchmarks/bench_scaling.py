"""Figure 5 — scaling: ingest throughput with 1 vs 2 LocalCluster workers on the same images,
and the paper model of a 1,000,000-image collection (docs/scaling.md) from measured inputs.

- **baseline**: ``Engine.ingest`` on a warm LocalCluster of 1 worker (1 thread);
- **candidate**: the same on a warm LocalCluster of 2 workers (1 thread each), same images,
  runs alternated (1, 2, 1, 2, …) into an emptied index and object store.

The paper model multiplies the measured cost per image on one worker by 1,000,000 and divides
by the number of workers, and sizes storage and memory from the measured bytes per vector (HNSW
index and table, from ``knn.json``), per thumbnail and per original (from this run's ingest) and
per worker (``memory.json``). Figures from the other scripts are used when their JSON results
are present in the output folder (``run_all.py`` runs this script last).

Run alone: ``python benchmarks/bench_scaling.py [--quick]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
from bench_ingest_throughput import measure_ingest

NAME = "scaling"
COLLECTION = 1_000_000
WORKER_COUNTS_ON_PAPER = (2, 8, 32, 128)


def store_sizes(data_dir: Path) -> dict[str, float]:
    out = {}
    for prefix in ("originals", "thumbnails"):
        files = [p for p in (data_dir / "objects" / prefix).rglob("*") if p.is_file()]
        out[f"{prefix}_count"] = len(files)
        out[f"{prefix}_mean_bytes"] = sum(p.stat().st_size for p in files) / max(1, len(files))
    return out


def read_json(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / f"{name}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def paper_model(rate_1: float, efficiency_2: float, sizes: dict[str, float], out_dir: Path) -> dict[str, Any]:
    """What 1,000,000 images cost, from measured inputs (see docs/scaling.md)."""
    seconds_per_image_per_worker = 1.0 / rate_1
    knn = read_json(out_dir, "knn")
    memory = read_json(out_dir, "memory")
    inputs: dict[str, Any] = {
        "seconds_per_image_per_worker": seconds_per_image_per_worker,
        "parallel_efficiency_at_2_workers": efficiency_2,
        "original_mean_bytes": sizes["originals_mean_bytes"],
        "thumbnail_mean_bytes": sizes["thumbnails_mean_bytes"],
    }
    model: dict[str, Any] = {"images": COLLECTION, "inputs": inputs}
    model["embedding_hours"] = {
        str(w): COLLECTION * seconds_per_image_per_worker / w / 3600 for w in WORKER_COUNTS_ON_PAPER
    }
    model["embedding_hours_at_measured_efficiency"] = {
        str(w): COLLECTION * seconds_per_image_per_worker / (w * min(1.0, efficiency_2)) / 3600
        for w in WORKER_COUNTS_ON_PAPER
    }
    storage = {
        "originals_gb": COLLECTION * sizes["originals_mean_bytes"] / 1e9,
        "thumbnails_gb": COLLECTION * sizes["thumbnails_mean_bytes"] / 1e9,
    }
    if knn:
        big = max(knn["sizes"], key=lambda s: s["vectors"])
        b = big["build"]
        inputs["measured_at_vectors"] = big["vectors"]
        inputs["hnsw_index_bytes_per_vector"] = b["index_bytes_per_vector"]
        inputs["images_table_bytes_per_row"] = b["images_table_bytes_per_row"]
        inputs["papyri_bytes_per_row"] = b["papyri_total_bytes"] / big["vectors"]
        inputs["hnsw_build_seconds"] = b["seconds"]
        inputs["copy_rows_per_s"] = big["load"]["copy_rows_per_s"]
        inputs["hnsw_p50_ms"] = big["hnsw"]["40"]["seconds"]["p50"] * 1000
        storage["hnsw_index_gb"] = COLLECTION * b["index_bytes_per_vector"] / 1e9
        storage["images_table_gb"] = COLLECTION * b["images_table_bytes_per_row"] / 1e9
        storage["papyri_table_gb"] = COLLECTION * inputs["papyri_bytes_per_row"] / 1e9
        scale = COLLECTION / big["vectors"]
        # HNSW build cost grows a little faster than linearly (n log n): a lower bound by scaling
        model["hnsw_build_hours_lower_bound"] = b["seconds"] * scale / 3600
        model["copy_minutes"] = COLLECTION / big["load"]["copy_rows_per_s"] / 60
        model["postgres_ram_gb_for_hnsw"] = storage["hnsw_index_gb"]
        model["maintenance_work_mem_gb_for_build"] = storage["hnsw_index_gb"] * 1.2
    if memory:
        w = memory["workers"]
        inputs["worker_rss_with_model_bytes"] = w["model loaded"]["rss_median_bytes"]
        inputs["worker_peak_rss_bytes"] = w["after ingest of the references"]["peak_rss_median_bytes"]
        model["worker_ram_gb"] = {
            str(n): n * inputs["worker_peak_rss_bytes"] / 1e9 for n in WORKER_COUNTS_ON_PAPER
        }
    model["storage_gb"] = storage
    model["storage_total_gb"] = sum(storage.values())
    return model


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0])
    C.setup_environment()
    load_start = C.load_average()
    repeats = 1 if args.quick else 2

    from papyrus_widgets.api import Engine

    paths = C.ingest_images(args.quick)
    with C.workspace("scaling") as ws:
        folder = C.link_folder(paths, ws.root / "scans")
        engines = {n: Engine(ws.settings(workers=n)) for n in (1, 2)}
        for n, engine in engines.items():
            C.warm_workers(engine.client, engine.resolved_settings())
            got = len(engine.client.scheduler_info()["workers"])
            assert got == n, f"expected {n} workers, found {got}"
        runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
        for r in range(repeats):
            for n in (1, 2) if r % 2 == 0 else (2, 1):
                print(f"{n} worker(s):", flush=True)
                runs[n] += measure_ingest(engines[n], folder, 1)
        sizes = store_sizes(ws.data_dir)
        versions = C.db_versions(engines[2].resolved_settings().database_url)

    rate = {n: C.median([r["images_per_s"] for r in runs[n]]) for n in (1, 2)}
    speedup = C.ratio(rate[2], rate[1])
    result = {
        "title": "Scaling: ingest with 1 vs 2 LocalCluster workers",
        "quick": args.quick,
        "images": len(paths),
        "runs": {str(n): v for n, v in runs.items()},
        "images_per_s": {str(n): v for n, v in rate.items()},
        "object_store": sizes,
        "ratios": {"two_over_one_worker": speedup, "parallel_efficiency": speedup / 2},
        "headline": f"2 workers ingest {speedup:.2f}x as fast as 1 (parallel efficiency {speedup / 2:.0%})",
        "load_average_start": load_start,
        "versions": versions,
    }
    result["paper_model"] = paper_model(rate[1], speedup / 2, sizes, args.out)
    print()
    print(f"Ingest of {len(paths)} scans, median of {repeats} run(s) each")
    print(f"RATIO 2 workers / 1 worker = {speedup:.2f}x (parallel efficiency {speedup / 2:.0%})")
    print(
        C.table(
            [[f"{n} worker(s) x 1 thread", rate[n], 1.0 / rate[n] * n] for n in (1, 2)],
            ["cluster", "images/s", "worker-s per image"],
        )
    )
    pm = result["paper_model"]
    print()
    print(f"Paper model, {COLLECTION:,} images (docs/scaling.md):")
    print(
        C.table(
            [
                [w, pm["embedding_hours"][str(w)], pm["embedding_hours_at_measured_efficiency"][str(w)]]
                for w in WORKER_COUNTS_ON_PAPER
            ],
            ["workers (1 core each)", "embedding hours (linear)", f"at {speedup / 2:.0%} efficiency"],
        )
    )
    print(
        C.table(
            [[k, v] for k, v in pm["storage_gb"].items()] + [["total", pm["storage_total_gb"]]],
            ["storage", "GB"],
        )
    )
    C.write_result(args.out, NAME, result)


if __name__ == "__main__":
    main()
