"""Figure 2 — ingest throughput: images/s of ``Engine.ingest`` on real scans vs the bare model forward.

Images: the 44 Heidelberg references and the photos under ``more/`` (up to 4.5k x 7k px), linked
into a temporary folder (the shared data is never copied), with their HGV EpiDoc records.

- **candidate**: ``Engine.ingest(folder, hgv-epidoc/)`` on a warm LocalCluster of 2 workers
  (model and connection pool already loaded), into an empty index and object store, repeated;
- **limit**: the bare model forward (``embed_arrays``, batches of 8) on pre-decoded tensors, on
  the same 2 workers (the tensors are scattered to them beforehand, one task per worker) — what
  the same cluster can embed at best; the in-process forward with 1 and with all cores' torch
  threads is reported too;
- **upload**: the same ingest with ``upload=True`` (what workers without a shared file system get:
  the client reads each scan and stages it in the object store, the worker reads it from there),
  alternated with the candidate runs; the ratio is its images/s over the candidate's;
- **rewords**: ``Engine.reword(everything=True)`` (``papyrus db rewords --all``, without compacting
  the postings' index) of
  the index each candidate run made, with the stored features current and with them gone (made
  again from the originals); the ratios are their images/s over the candidate's;
- **where the gap goes**: the real ingest task (``tasks.ingest_batch_task``) run in this process
  (one torch thread, as on a worker) with a stopwatch as its ``stage`` timer, so each of its steps
  (``tasks.INGEST_STAGES``: read + sha256, decode, object-store writes, thumbnail, local features,
  visual words, model input, forward, binary COPY) is timed where it runs, plus the catalogue parse
  the client does once per ingest.

Run alone: ``python benchmarks/bench_ingest_throughput.py [--quick]``.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

NAME = "ingest_throughput"
BATCH = 8  # Engine.ingest's default batch_size


def wipe_index(engine: Any) -> None:
    """An empty index and object store (the schema, the model record and the services stay)."""
    from papyrus_widgets import index

    with index.connect(engine.resolved_settings().database_url) as conn:
        conn.execute("TRUNCATE images, papyri RESTART IDENTITY CASCADE")
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE images")
    shutil.rmtree(engine.settings.data_dir / "objects", ignore_errors=True)


def _batches_of(items: Any, batch_size: int, slots: int = 1) -> list[list[Any]]:
    """How the ingest cut its batches before ``tasks.plan_batches``: every ``batch_size`` in order."""
    return [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]


@contextlib.contextmanager
def previous_ingest() -> Iterator[None]:
    """The ingest as it was before it balanced its batches over the workers (``tasks.plan_batches``
    swapped for the old cut); the catalogue is parsed, as it was by every ingest."""
    from papyrus_widgets import tasks

    planner = tasks.plan_batches
    tasks.plan_batches = _batches_of
    try:
        yield
    finally:
        tasks.plan_batches = planner


def measure_ingest(
    engine: Any, folder: Path, repeats: int, upload: bool | None = None, cold_catalogue: bool = False
) -> list[dict[str, Any]]:
    """Runs of Engine.ingest into an empty index, with the workers' task stream of each run;
    ``cold_catalogue``: the HGV records this process keeps are dropped first, so the run parses them."""
    from distributed import get_task_stream

    from papyrus_widgets import metadata

    runs = []
    for r in range(repeats):
        wipe_index(engine)
        if cold_catalogue:
            metadata.forget_parsed_directories()
        with get_task_stream(engine.client) as stream:
            epoch0 = time.time()
            t0 = time.perf_counter()
            report = engine.ingest(folder, C.HGV_DIR, progress=False, upload=upload)
            seconds = time.perf_counter() - t0
        if report.failed:
            raise RuntimeError(f"ingest failed for {report.failed}")
        computes = [
            (ss["start"], ss["stop"])
            for task in stream.data
            if "ingest_batch_task" in str(task.get("key"))
            for ss in task.get("startstops", ())
            if ss.get("action") == "compute"
        ]
        first_start = min((a for a, _ in computes), default=epoch0) - epoch0
        last_stop = max((b for _, b in computes), default=epoch0) - epoch0
        processed = report.added + report.skipped
        runs.append(
            {
                "seconds": seconds,
                "added": report.added,
                "skipped": report.skipped,
                "images_per_s": processed / seconds,
                "uploaded": report.uploaded,
                "batches": len(computes),
                "worker_compute_s": sum(b - a for a, b in computes),
                "before_first_task_s": first_start,
                "after_last_task_s": seconds - last_stop,
            }
        )
        print(f"  ingest run {r + 1}/{repeats}: {report}  → {processed / seconds:.2f} images/s", flush=True)
    return runs


def forward_task(source: str, revision: str | None, arrays: np.ndarray) -> int:
    """The bare forward on a worker (its cached model), nothing else."""
    from papyrus_widgets import tasks
    from papyrus_widgets.model import embed_arrays

    model, _ = tasks.worker_model(source, revision)
    embed_arrays(model, arrays, batch_size=BATCH)
    return len(arrays)


def decode_task(paths: list[str]) -> int:
    """The floor's decode on a worker: read each scan and decode it at the one size the ingest needs."""
    from papyrus_widgets import imaging

    for path in paths:
        imaging.decode_image(Path(path).read_bytes(), max_side=1024, name=Path(path).name)
    return len(paths)


def features_task(images: list[Any]) -> int:
    """The floor's local features on a worker: SIFT of each pre-decoded scan, as the ingest calls it."""
    from papyrus_widgets.retrieval.features import describe_reference

    for img, size in images:
        describe_reference(img, size=size)
    return len(images)


class OnWorkers:
    """``items`` split evenly over the workers and placed on them (so that no transfer is timed);
    :meth:`rate` runs a task on every worker's share at once and gives images/s."""

    def __init__(self, client: Any, items: Any) -> None:
        self.client = client
        self.workers = sorted(client.scheduler_info()["workers"])
        chunks = [items[i :: len(self.workers)] for i in range(len(self.workers))]
        self.placed = [client.scatter(c, workers=[w], broadcast=False) for c, w in zip(chunks, self.workers)]
        self.warm: set[Any] = set()

    def rate(self, task: Any, *args: Any) -> float:
        client = self.client
        for _ in range(1 if task in self.warm else 2):  # a first round warms up (model, OpenCV, page cache)
            t0 = time.perf_counter()
            futures = [
                client.submit(task, *args, p, workers=[w], pure=False) for p, w in zip(self.placed, self.workers)
            ]
            done = sum(client.gather(futures))
            self.warm.add(task)
        return done / (time.perf_counter() - t0)


FLOOR_STEPS = (
    "decode (max_side 1024, from the file)",
    "local features (SIFT at 768 px, pre-decoded)",
    "forward (batches of 8, pre-made inputs)",
)


def floor_of(rates: dict[str, float]) -> float:
    """images/s of the steps one after the other: their per-image times add up."""
    return 1.0 / sum(1.0 / r for r in rates.values())


def measure_limit(model: Any, inputs: np.ndarray, threads: int, repeats: int) -> dict[str, Any]:
    import torch

    from papyrus_widgets.model import embed_arrays

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        embed_arrays(model, inputs[:BATCH], batch_size=BATCH)  # warm-up
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            embed_arrays(model, inputs, batch_size=BATCH)
            rates.append(len(inputs) / (time.perf_counter() - t0))
    finally:
        torch.set_num_threads(before)
    return {"torch_threads": threads, "images_per_s_runs": rates, "images_per_s": C.median(rates)}


def measure_stages(engine: Any, paths: list[Path]) -> dict[str, Any]:
    """Per-image seconds of each step of the real ``tasks.ingest_batch_task`` (its ``stage`` timer,
    :data:`papyrus_widgets.tasks.INGEST_STAGES`), run in this process on batches of 8 with 1 torch
    thread and one OpenCV thread, into an emptied index; plus the catalogue parse the client does once."""
    import cv2
    import torch

    from papyrus_widgets import metadata, tasks
    from papyrus_widgets.metadata import load_metadata, record_for_image

    settings = engine.resolved_settings()
    sw = C.Stopwatch()
    metadata.forget_parsed_directories()  # the parse itself, not the records kept from the runs before
    with sw("catalogue parse (once per ingest)"):
        records = load_metadata(C.HGV_DIR)
    items = [tasks.IngestItem(str(p), record_for_image(p, records)) for p in paths]
    before, cv_before = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)  # OpenCV's SIFT would use every core: one core per step, as the sum assumes
    wipe_index(engine)
    tasks.worker_model(settings.model, settings.model_revision)  # loaded before the clock runs, as on a warm worker
    tasks.worker_vocabulary(settings)
    added = 0
    try:
        for start in range(0, len(items), BATCH):
            report = tasks.ingest_batch_task(settings, items[start : start + BATCH], stage=sw)
            if report.failed:
                raise RuntimeError(f"the ingest task failed on {report.failed}")
            added += report.added
    finally:
        torch.set_num_threads(before)
        cv2.setNumThreads(cv_before)
    if not added:
        raise RuntimeError("the ingest task added nothing: the stages were not timed")
    per_image = {name: sum(v) / len(items) for name, v in sw.times.items()}
    return {"images": len(items), "added": added, "seconds_per_image": per_image}


def core_budget(runs: list[dict[str, Any]], n: int, workers: int = 2) -> dict[str, float]:
    """Where the workers' time went in the median run, in core-ms per image."""
    med = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
    total = workers * med["seconds"] / n
    compute = med["worker_compute_s"] / n
    before = workers * med["before_first_task_s"] / n
    after = workers * med["after_last_task_s"] / n
    return {
        "total": 1e3 * total,
        "in tasks": 1e3 * compute,
        "waiting for the client": 1e3 * before,
        "idle between tasks": 1e3 * (total - compute - before - after),
        "after the last task": 1e3 * after,
    }


def measure_reword(engine: Any, stale: bool) -> dict[str, Any]:
    """One ``Engine.reword(everything=True)`` of the index the last ingest made (``papyrus db
    rewords --all``, the postings' index not compacted): with the stored features current (read,
    quantised, postings replaced) or, ``stale``, with them gone (each made again from its original
    as the ingest made it, and stored)."""
    from papyrus_widgets import index, storage

    settings = engine.resolved_settings()
    if stale:
        with index.connect(settings.database_url) as conn:
            keys = [k for _, k in index.image_keys(conn)]
        for key in set(keys):
            engine.store.delete(storage.features_key(key))
    t0 = time.perf_counter()
    report = engine.reword(everything=True, progress=False, compact=False)
    seconds = time.perf_counter() - t0
    if report.failed or report.rewritten != report.images:
        raise RuntimeError(f"rewording failed: {report}")
    print(f"  rewords ({'features made again' if stale else 'stored features'}): {report}", flush=True)
    return {"seconds": seconds, "images": report.images, "images_per_s": report.images / seconds, "stale": stale}


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0])
    C.setup_environment()
    load_start = C.load_average()
    repeats = 1 if args.quick else 3

    from papyrus_widgets import imaging
    from papyrus_widgets.api import Engine
    from papyrus_widgets.model import load_model

    paths = C.ingest_images(args.quick)
    with C.workspace("ingest") as ws:
        folder = C.link_folder(paths, ws.root / "scans")
        pixels = []
        for p in paths:
            from PIL import Image

            with Image.open(p) as im:
                pixels.append(im.size[0] * im.size[1])
        engine = Engine(ws.settings(workers=2))
        settings = engine.resolved_settings()
        client = engine.client
        C.warm_workers(client, settings)
        print(
            f"{len(paths)} scans, {sum(p.stat().st_size for p in paths) / 1e6:.1f} MB, "
            f"median {np.median(pixels) / 1e6:.1f} MP; 2 workers (1 thread each)",
            flush=True,
        )

        model = load_model(settings.model)
        decoded = [imaging.decode_image(p.read_bytes(), max_side=1024, name=p.name) for p in paths]
        inputs = np.stack([imaging.model_input(img) for img in decoded])
        # the ingest, the limit and the floor's steps alternate, so that all see the same moments of a
        # shared machine; the floor's inputs are placed on the workers once
        paths_on = OnWorkers(client, [str(p) for p in paths])
        decoded_on = OnWorkers(client, [(img, img.info["original_size"]) for img in decoded])
        inputs_on = OnWorkers(client, inputs)
        del decoded
        runs, upload_runs, limit_runs, floor_runs, before_runs, cold_runs = [], [], [], [], [], []
        reword_runs: list[dict[str, Any]] = []
        reword_stale_runs: list[dict[str, Any]] = []
        for _ in range(repeats):
            with previous_ingest():
                before_runs += measure_ingest(engine, folder, 1, cold_catalogue=True)
            cold_runs += measure_ingest(engine, folder, 1, cold_catalogue=True)
            runs += measure_ingest(engine, folder, 1)
            reword_runs.append(measure_reword(engine, stale=False))  # of the index that run made
            reword_stale_runs.append(measure_reword(engine, stale=True))
            upload_runs += measure_ingest(engine, folder, 1, upload=True)
            steps = dict(
                zip(
                    FLOOR_STEPS,
                    (
                        paths_on.rate(decode_task),
                        decoded_on.rate(features_task),
                        inputs_on.rate(forward_task, settings.model, settings.model_revision),
                    ),
                )
            )
            limit_runs.append(steps[FLOOR_STEPS[2]])
            floor_runs.append({"steps_images_per_s": steps, "images_per_s": floor_of(steps)})
            print(f"  floor {floor_runs[-1]['images_per_s']:.2f} images/s: {steps}", flush=True)
        del paths_on, decoded_on, inputs_on
        contents = len({imaging.sha256_hex(p.read_bytes()) for p in paths})  # identical scans are sent once
        if any(r["uploaded"] != contents for r in upload_runs) or any(r["uploaded"] for r in runs):
            raise RuntimeError("the upload runs must send every distinct scan and the others none")
        ingest_rate = C.median([r["images_per_s"] for r in runs])
        upload_rate = C.median([r["images_per_s"] for r in upload_runs])
        reword_rate = C.median([r["images_per_s"] for r in reword_runs])
        reword_stale_rate = C.median([r["images_per_s"] for r in reword_stale_runs])
        limit = {"workers": 2, "images_per_s_runs": limit_runs, "images_per_s": C.median(limit_runs)}
        floor = {
            "runs": floor_runs,
            "steps_images_per_s": {k: C.median([f["steps_images_per_s"][k] for f in floor_runs]) for k in FLOOR_STEPS},
            "images_per_s": C.median([f["images_per_s"] for f in floor_runs]),
            "ingest_over_floor_by_repeat": [r["images_per_s"] / f["images_per_s"] for r, f in zip(runs, floor_runs)],
        }
        previous = {
            "before": {"label": "before: batches of 8 in order, catalogue parsed", "runs": before_runs},
            "cold": {"label": "now, the catalogue parsed (a first ingest in the process)", "runs": cold_runs},
            "now": {"label": "now, the catalogue's records kept from an earlier ingest", "runs": runs},
        }
        for entry in previous.values():
            entry["images_per_s"] = C.median([r["images_per_s"] for r in entry["runs"]])
            entry["over_floor"] = entry["images_per_s"] / floor["images_per_s"]
            entry["over_floor_by_repeat"] = [
                r["images_per_s"] / f["images_per_s"] for r, f in zip(entry["runs"], floor_runs)
            ]
            entry["core_ms_per_image"] = core_budget(entry["runs"], len(paths))
        cores = C.machine()["usable_cores"] or 1
        in_process_all = measure_limit(model, inputs, cores, repeats)
        in_process_1 = measure_limit(model, inputs, 1, repeats)
        stages = measure_stages(engine, paths)
        versions = C.db_versions(settings.database_url)

    workers = 2
    n = len(paths)
    per_image = stages["seconds_per_image"]
    task_stages = {k: v for k, v in per_image.items() if not k.startswith("catalogue")}
    serial = sum(task_stages.values())
    med_run = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
    ingest_core_s = workers * med_run["seconds"] / n  # core-seconds each image costs in the real ingest
    compute_core_s = med_run["worker_compute_s"] / n
    before_core_s = workers * med_run["before_first_task_s"] / n
    after_core_s = workers * med_run["after_last_task_s"] / n
    idle_core_s = ingest_core_s - compute_core_s - before_core_s - after_core_s
    result = {
        "title": "Ingest throughput: Engine.ingest vs the bare model forward",
        "quick": args.quick,
        "images": len(paths),
        "megapixels_median": float(np.median(pixels) / 1e6),
        "workers": workers,
        "ingest_runs": runs,
        "ingest_images_per_s": ingest_rate,
        "upload_runs": upload_runs,
        "upload_images_per_s": upload_rate,
        "reword_runs": reword_runs,
        "reword_images_per_s": reword_rate,
        "reword_stale_runs": reword_stale_runs,
        "reword_stale_images_per_s": reword_stale_rate,
        "limit": limit,
        "floor": floor,
        "before_after": previous,
        "in_process_forward_all_threads": in_process_all,
        "in_process_forward_one_thread": in_process_1,
        "stages": stages,
        "core_seconds_per_image": {
            "ingest: workers x wall / images (median run)": ingest_core_s,
            "in tasks (worker compute)": compute_core_s,
            "workers waiting before the first task (client: list files, parse catalogue, submit)": before_core_s,
            "workers idle between tasks (uneven batches, scheduling)": idle_core_s,
            "after the last task (result to the client)": after_core_s,
            "sum of the task's stages timed alone in-process": serial,
            "catalogue parse timed alone (once per ingest, per image)": per_image.get(
                "catalogue parse (once per ingest)", 0.0
            ),
        },
        "ratios": {
            "ingest_over_limit": C.ratio(ingest_rate, limit["images_per_s"]),
            "ingest_over_floor": C.ratio(ingest_rate, floor["images_per_s"]),
            "upload_over_shared_files": C.ratio(upload_rate, ingest_rate),
            "reword_over_ingest": C.ratio(reword_rate, ingest_rate),
            "reword_stale_over_ingest": C.ratio(reword_stale_rate, ingest_rate),
            "forward_share_of_stages": C.ratio(
                task_stages.get("forward (batch)", 0.0), serial
            ),
        },
        "load_average_start": load_start,
        "versions": versions,
    }
    result["headline"] = (
        f"ingest {ingest_rate:.2f} images/s = {result['ratios']['ingest_over_floor']:.2f}x its floor "
        f"({floor['images_per_s']:.2f} images/s: decode + local features + forward, each alone on the same workers)"
    )
    print()
    print(f"Ingest of {len(paths)} real scans, 2 workers; median of {repeats} run(s)")
    print(f"RATIO ingest/floor = {result['ratios']['ingest_over_floor']:.3f}")
    for entry in previous.values():
        budget = ", ".join(f"{k} {v:.0f}" for k, v in entry["core_ms_per_image"].items())
        print(
            f"  {entry['label']}: {entry['images_per_s']:.2f} images/s = {entry['over_floor']:.3f}x the floor; "
            f"core-ms per image: {budget}"
        )
    print(f"RATIO ingest/limit = {result['ratios']['ingest_over_limit']:.3f}")
    print(f"RATIO ingest with upload/ingest = {result['ratios']['upload_over_shared_files']:.3f}")
    print(f"RATIO rewords (stored features)/ingest = {result['ratios']['reword_over_ingest']:.3f}")
    print(f"RATIO rewords (features made again)/ingest = {result['ratios']['reword_stale_over_ingest']:.3f}")
    print(
        C.table(
            [
                ["Engine.ingest (warm, 2 workers x 1 thread)", ingest_rate],
                ["Engine.ingest(upload=True): scans sent through the object store", upload_rate],
                ["Engine.reword (papyrus db rewords --all), the stored features current", reword_rate],
                ["Engine.reword, every reference's features made again from its original", reword_stale_rate],
                ["floor: decode + local features + forward, each alone on the same 2 workers", floor["images_per_s"]],
                *[[f"  {k}", v] for k, v in floor["steps_images_per_s"].items()],
                ["limit: bare forward on the same 2 workers, batch 8", limit["images_per_s"]],
                [
                    f"bare forward in-process, {in_process_all['torch_threads']} threads",
                    in_process_all["images_per_s"],
                ],
                ["bare forward in-process, 1 thread", in_process_1["images_per_s"]],
            ],
            ["path", "images/s"],
        )
    )
    print()
    rows = [
        [k, C.ms(v), f"{100 * v / serial:.0f} %"]
        for k, v in sorted(task_stages.items(), key=lambda kv: -kv[1])
    ]
    rows.append(["sum of the task's stages (1 core)", C.ms(serial), "100 %"])
    rows.append(
        [
            "catalogue parse alone (client, once; per image)",
            C.ms(per_image.get("catalogue parse (once per ingest)", 0.0)),
            "",
        ]
    )
    print(C.table(rows, ["stage timed alone (per image, in-process)", "ms", "share"]))
    print()
    budget = [
        ["ingest: 2 workers x wall / images", C.ms(ingest_core_s), "100 %"],
        [
            "  in ingest tasks (worker compute)",
            C.ms(compute_core_s),
            f"{100 * compute_core_s / ingest_core_s:.0f} %",
        ],
        [
            "  waiting for the client (list, parse catalogue, submit)",
            C.ms(before_core_s),
            f"{100 * before_core_s / ingest_core_s:.0f} %",
        ],
        [
            "  idle between tasks (uneven batches, scheduling)",
            C.ms(idle_core_s),
            f"{100 * idle_core_s / ingest_core_s:.0f} %",
        ],
        ["  after the last task", C.ms(after_core_s), f"{100 * after_core_s / ingest_core_s:.0f} %"],
    ]
    print(C.table(budget, ["core-ms per image in the real ingest (median run)", "ms", "share"]))
    C.write_result(args.out, NAME, result)


if __name__ == "__main__":
    main()
