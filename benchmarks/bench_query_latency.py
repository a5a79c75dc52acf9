"""Figure 1 — query latency, from Search to hits in the kernel process, on a warm cluster.

Index: the 44 Heidelberg references ingested through ``Engine.ingest`` plus distractor rows
added with ``index.add_images`` (random unit vectors carrying the model fingerprint read from the
database, a unique sha256 each, thumbnails of real references) up to 10,000 papyri.
Queries: references and software re-photographs of them (crop, rotation, brightness, JPEG), as
the widget's view sends them: photos longer than 2048 px (``max_side``) downscaled to a JPEG.

Four ways to get the hits of the same query, interleaved query by query:

- **ours**: ``Engine.submit_search(verify=False)`` → the job's done-callback → ``job.hits()``: the
  package's three stages without the confirming one (results are pushed the moment the last
  future finishes). They do more than the baseline's: preparing also finds the photo's local
  features and visual words, searching also reads the word index and fuses it with the kNN;
- **default**: the same with the package's default pipeline (its local-feature verification
  stage included, when the package has one);
- **widget**: the default pipeline through ``PapyrusSearch``: the view's "search" message →
  results traits set on the kernel's asyncio loop (the browser's part: ``bench_browser_latency.py``,
  figure 1b);
- **baseline** (the original design, re-implemented here): decode, embed, embedding kNN — every
  task opens a new psycopg connection and a new object store, and the kernel picks up the
  result with a poll loop that checks ``future.done()`` every 1.0 s.

Two ratios, reported apart: **compute** (the baseline's last future done vs ours at its
done-callback) and **pick-up** (the baseline's poll vs its last future done: what a 1 s poll adds
over a push).

Floor: one model forward on a pre-decoded input (``model.embed_arrays``) + one kNN
(``index.knn`` on a pooled connection), timed alone in this process with as many torch threads
as a worker uses.

Run alone: ``python benchmarks/bench_query_latency.py [--quick]``.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

NAME = "query_latency"
POLL_SECONDS = 1.0  # the original design's poll period
K = 8
BROWSER_MAX_SIDE = 2048  # PapyrusSearch.max_side: the view downscales larger photos before sending


# --- the baseline: the original design's tasks (new connection and store per call) -----------
# Defined here, so cloudpickle ships them by value to the workers.


def baseline_prepare(settings: Any, query_key: str, name: str) -> np.ndarray:
    from papyrus_widgets import imaging, storage

    store = storage.open_store(settings)  # a new object store per call
    data = store.get(query_key)
    img = imaging.decode_image(
        data,
        max_pixels=settings.max_image_pixels,
        max_bytes=settings.max_upload_bytes,
        max_side=2048,
        name=name,
    )
    return imaging.model_input(img)


def baseline_embed(settings: Any, arrays: np.ndarray) -> np.ndarray:
    from papyrus_widgets import tasks
    from papyrus_widgets.model import embed_arrays

    model, _ = tasks.worker_model(settings.model, settings.model_revision)  # the model stays cached
    return embed_arrays(model, arrays[None])[0]


def baseline_search(settings: Any, vector: np.ndarray, k: int) -> list[Any]:
    from papyrus_widgets import index, storage, tasks
    from papyrus_widgets.errors import ModelError

    _, fingerprint = tasks.worker_model(settings.model, settings.model_revision)
    conn = index.connect(settings.database_url)  # a new psycopg connection per call
    try:
        rows = index.knn(conn, vector, k, None)
    finally:
        conn.close()
    if rows and all(r["model"] != fingerprint for r in rows):
        raise ModelError("the index was built with another model")
    store = storage.open_store(settings)  # a new object store per call
    hits = []
    for rank, row in enumerate(rows, start=1):
        try:
            thumb = store.get(row["thumb_key"])
        except KeyError:
            thumb = None
        hits.append(tasks._hit(row, rank, thumb, 1.0 - float(row["distance"])))  # cosine similarity
    return hits


def run_baseline(engine: Any, name: str, data: bytes) -> tuple[float, float, list[Any]]:
    """(seconds to hits picked up by the 1 s poll, seconds to the last future done, hits)."""
    from papyrus_widgets import imaging, storage, tasks

    settings = engine.resolved_settings()
    client = engine.client
    t0 = time.perf_counter()
    key = storage.object_key(storage.QUERIES, imaging.sha256_hex(data), storage.extension_for(name))
    storage.open_store(settings).put(key, data)
    opts = {"pure": False, "priority": tasks.SEARCH_PRIORITY, "retries": 1}
    prepared = client.submit(baseline_prepare, settings, key, name, **opts)
    vector = client.submit(baseline_embed, settings, prepared, **opts)
    hits_f = client.submit(baseline_search, settings, vector, K, **opts)
    stamp: dict[str, float] = {}
    hits_f.add_done_callback(lambda _f: stamp.setdefault("done", time.perf_counter()))
    while not hits_f.done():  # the original design: look every second
        time.sleep(POLL_SECONDS)
    hits = hits_f.result()
    t1 = time.perf_counter()
    done = stamp.get("done", t1)
    for f in (prepared, vector, hits_f):
        f.release()
    return t1 - t0, done - t0, hits


def _features_of(settings: Any, keys: list[str]) -> int:
    from papyrus_widgets import tasks

    for key in keys:
        tasks.reference_features(settings, key)
    return len(keys)


def warm_reference_features(client: Any, settings: Any, keys: list[str]) -> bool:
    """A warm cluster for the verification stage: every worker has the local features of every real
    reference cached (as after many searches). False when the package has no such cache."""
    from papyrus_widgets import tasks

    if not hasattr(tasks, "reference_features"):
        return False
    client.run(_features_of, settings, keys)
    return True


# --- ours ----------------------------------------------------------------------------------


def supports_verify(engine: Any) -> bool:
    """Whether this version of the package has the optional verification stage."""
    return "verify" in inspect.signature(engine.submit_search).parameters


def run_ours(
    engine: Any, name: str, data: bytes, verify: bool | None = None
) -> tuple[float, float, list[Any]]:
    """(seconds to hits in this process, seconds to the done-callback, hits).
    ``verify``: None = the package's default pipeline; False/True = without/with verification."""
    ready = threading.Event()
    stamp: dict[str, float] = {}

    def on_done(_job: Any) -> None:
        stamp["done"] = time.perf_counter()
        ready.set()

    extra = {} if verify is None else {"verify": verify}
    t0 = time.perf_counter()
    job = engine.submit_search(data, name=name, k=K, **extra)
    job.add_done_callback(on_done)
    if not ready.wait(120):
        raise TimeoutError(f"search {name} did not finish in 120 s")
    hits = job.hits(timeout=60)
    t1 = time.perf_counter()
    return t1 - t0, stamp["done"] - t0, hits


async def run_widget(w: Any, name: str, data: bytes, preview: bytes) -> tuple[float, list[Any]]:
    """Seconds from the view's "search" message to the results traits set (on this asyncio loop)."""
    finished = asyncio.Event()

    def on_status(change: Any) -> None:
        if (change["new"] or {}).get("state") in ("done", "error"):
            finished.set()

    w.observe(on_status, "status")
    try:
        t0 = time.perf_counter()
        w._on_view_msg(w, {"type": "search", "request": name, "name": name, "k": K}, [data, preview])
        await asyncio.wait_for(finished.wait(), 120)
        t1 = time.perf_counter()
    finally:
        w.unobserve(on_status, "status")
    if w.error:
        raise RuntimeError(f"widget search {name} failed: {w.error}")
    return t1 - t0, list(w.last_results.hits)


# --- data ----------------------------------------------------------------------------------


def rephotograph(path: Path, rng: random.Random) -> bytes:
    """A software re-photograph: crop 80-95 %, rotate 2-8 degrees on a background, light change,
    long side at most 2048 px (what the widget sends), JPEG quality 80."""
    from PIL import Image, ImageEnhance

    img = Image.open(path).convert("RGB")
    w, h = img.size
    fw, fh = rng.uniform(0.80, 0.95), rng.uniform(0.80, 0.95)
    x0, y0 = rng.uniform(0, 1 - fw) * w, rng.uniform(0, 1 - fh) * h
    img = img.crop((int(x0), int(y0), int(x0 + fw * w), int(y0 + fh * h)))
    angle = rng.choice([-1, 1]) * rng.uniform(2, 8)
    bg = tuple(rng.randrange(20, 80) for _ in range(3))
    img = img.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=bg)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.8, 1.2))
    if max(img.size) > 2048:
        img.thumbnail((2048, 2048), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return buf.getvalue()


def as_uploaded(path: Path, max_side: int = BROWSER_MAX_SIDE) -> bytes:
    """The bytes the widget's view sends for ``path``: the file itself, or, when its long side is
    over ``max_side``, a JPEG (quality 0.92) downscaled to it (js/src/editor.js does this in the browser)."""
    from PIL import Image

    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        if max(img.size) <= max_side:
            return data
        img = img.convert("RGB")
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=92)
        return buf.getvalue()


def make_queries(n: int, seed: int = 7) -> list[tuple[str, bytes]]:
    """Half references as uploaded from the widget, half re-photographs, in a fixed shuffled order."""
    rng = random.Random(seed)
    refs = C.reference_images()
    n_orig = n // 2
    queries: list[tuple[str, bytes]] = []
    for i in range(n_orig):
        p = refs[i % len(refs)]
        queries.append((p.name, as_uploaded(p)))
    for i in range(n - n_orig):
        p = refs[(i * 7 + 3) % len(refs)]
        queries.append((f"photo-{i}-{p.stem}.jpg", rephotograph(p, rng)))
    rng.shuffle(queries)
    return queries


def add_distractors(url: str, n: int, fingerprint: str, refs: list[tuple[str, str]], seed: int = 11) -> float:
    """Add ``n`` distractor papyri (one image each) with binary COPY; returns seconds."""
    from papyrus_widgets import index

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    pool = index.get_pool(url)
    batch = 2000
    for start in range(0, n, batch):
        count = min(batch, n - start)
        vecs = rng.standard_normal((count, index.EMBEDDING_DIM)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        rows = []
        for j in range(count):
            i = start + j
            object_key, thumb_key = refs[i % len(refs)]
            rows.append(C.synthetic_row("distractor", i, vecs[j], fingerprint, object_key, thumb_key))
        with pool.connection() as conn:
            added, _ = index.add_images(conn, rows)
            assert added == count, (added, count)
    with pool.connection() as conn:
        conn.execute("ANALYZE images")
        conn.execute("ANALYZE papyri")
        conn.commit()
    return time.perf_counter() - t0


def build_index(engine: Any, n_index: int) -> dict[str, Any]:
    """Ingest the references through ``engine`` and pad the index with distractors to ``n_index``
    papyri; returns what the figures report (counts, seconds, the references' object keys)."""
    from papyrus_widgets import index

    t0 = time.perf_counter()
    report = engine.ingest(C.REFERENCES, C.HGV_DIR, progress=False)
    ingest_s = time.perf_counter() - t0
    url = engine.resolved_settings().database_url
    with index.connect(url) as conn:
        fingerprint = index.scalar(conn, "SELECT DISTINCT model FROM images")
        refs = conn.execute("SELECT object_key, thumb_key FROM images ORDER BY id").fetchall()
        real = index.scalar(conn, "SELECT count(*) FROM images")
    distract_s = add_distractors(url, max(0, n_index - real), fingerprint, refs)
    with index.connect(url) as conn:
        papyri = index.scalar(conn, "SELECT count(*) FROM papyri")
        images = index.scalar(conn, "SELECT count(*) FROM images")
    print(
        f"index: {real} references ingested ({report}) + {images - real} distractors in {distract_s:.1f} s "
        f"→ {papyri} papyri, {images} images"
    )
    return {
        "papyri": papyri,
        "images": images,
        "references": real,
        "distractors_s": distract_s,
        "ingest_s": ingest_s,
        "reference_keys": sorted({key for key, _ in refs}),
    }


# --- the floor -----------------------------------------------------------------------------


def measure_floor(settings: Any, queries: list[tuple[str, bytes]], threads: int, reps: int) -> dict[str, Any]:
    import torch

    from papyrus_widgets import imaging, index
    from papyrus_widgets.model import embed_arrays, load_model

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = load_model(settings.model)
        inputs = [
            imaging.model_input(imaging.decode_image(d, max_side=2048, name=n))
            for n, d in queries[: min(8, len(queries))]
        ]
        decode_times = []
        for n, d in queries[: min(8, len(queries))]:
            t0 = time.perf_counter()
            imaging.model_input(imaging.decode_image(d, max_side=2048, name=n))
            decode_times.append(time.perf_counter() - t0)
        for x in inputs[:3]:
            embed_arrays(model, x[None])  # warm-up
        forward = []
        vectors = []
        for i in range(reps):
            x = inputs[i % len(inputs)][None]
            t0 = time.perf_counter()
            v = embed_arrays(model, x)[0]
            forward.append(time.perf_counter() - t0)
            vectors.append(v)
        pool = index.get_pool(settings.database_url)
        knn = []
        with pool.connection() as conn:
            for v in vectors[:3]:
                index.knn(conn, v, K)  # warm-up
            for i in range(reps):
                t0 = time.perf_counter()
                index.knn(conn, vectors[i % len(vectors)], K)
                knn.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    f, q = C.summary(forward), C.summary(knn)
    return {
        "torch_threads": threads,
        "forward_s": f,
        "knn_s": q,
        "decode_and_model_input_s": C.summary(decode_times),
        "floor_p50_s": f["p50"] + q["p50"],
    }


# --- main ----------------------------------------------------------------------------------


def main() -> None:
    args = C.parse_args(
        __doc__.splitlines()[0],
        lambda p: (
            p.add_argument(
                "--papyri", type=int, default=None, help="index size (default 10000; --quick 2000)"
            ),
            p.add_argument(
                "--queries", type=int, default=None, help="queries per path (default 50; --quick 10)"
            ),
        ),
    )
    C.setup_environment()
    n_index = args.papyri or (2000 if args.quick else 10_000)
    n_queries = args.queries or (10 if args.quick else 50)
    floor_reps = 15 if args.quick else 50
    load_start = C.load_average()

    from papyrus_widgets.api import Engine
    from papyrus_widgets.widget import PapyrusSearch, query_preview_bytes

    with C.workspace("latency") as ws:
        engine = Engine(ws.settings(workers=2))
        built = build_index(engine, n_index)
        papyri = built["papyri"]
        settings = engine.resolved_settings()
        url = settings.database_url

        queries = make_queries(n_queries)
        client = engine.client
        C.warm_workers(client, settings)
        warmed = warm_reference_features(client, settings, built["reference_keys"])
        worker_threads = max(client.run(lambda: __import__("torch").get_num_threads()).values())
        previews = {
            name: query_preview_bytes(data, None) for name, data in queries
        }  # the browser's crop preview
        widget = PapyrusSearch(k=K, engine=engine)

        # "ours": the same three stages as the baseline (no verification); "default": the package's
        # default search pipeline (with its verification stage when it has one); "widget": the
        # default pipeline driven through PapyrusSearch; "baseline": the original design.
        has_verify = supports_verify(engine)
        paths = ["ours", "baseline", "widget"] + (["default"] if has_verify else [])
        rows: dict[str, list[float]] = {p: [] for p in paths}
        rows.update(ours_callback=[], baseline_done=[])
        same = {"ours_vs_baseline": 0, "widget_vs_default": 0}

        async def one(path: str, name: str, data: bytes) -> list[Any]:
            if path == "ours":
                total, cb, hits = run_ours(engine, name, data, verify=False if has_verify else None)
                rows["ours_callback"].append(cb)
            elif path == "default":
                total, _cb, hits = run_ours(engine, name, data)
            elif path == "baseline":
                total, done, hits = run_baseline(engine, name, data)
                rows["baseline_done"].append(done)
            else:
                total, hits = await run_widget(widget, name, data, previews[name])
            rows[path].append(total)
            return [h.key for h in hits]

        async def session() -> None:
            for name, data in queries[:4]:  # warm-up: every path, untimed
                for path in paths:
                    await one(path, name, data)
                for v in rows.values():
                    v.clear()
            for i, (name, data) in enumerate(queries):
                order = paths[i % len(paths) :] + paths[: i % len(paths)]  # rotate who goes first
                keys = {path: await one(path, name, data) for path in order}
                same["ours_vs_baseline"] += keys["ours"] == keys["baseline"]
                same["widget_vs_default"] += keys["widget"] == keys.get("default", keys["ours"])
                print(
                    f"  {i + 1:>3}/{len(queries)} {name[:34]:<34}"
                    + "".join(f" {p} {C.ms(rows[p][-1]):6.0f}" for p in paths)
                    + " ms",
                    flush=True,
                )

        asyncio.run(session())
        widget.close()
        floor = measure_floor(settings, queries, worker_threads, floor_reps)
        floor_all_threads = measure_floor(
            settings, queries, C.machine()["usable_cores"] or 1, max(10, floor_reps // 3)
        )
        versions = C.db_versions(url)

    s = {k: C.summary(v) for k, v in rows.items()}
    speedup = C.ratio(s["baseline"]["p50"], s["ours"]["p50"])
    result = {
        "title": "Query latency: Search → hits in the kernel (warm cluster)",
        "quick": args.quick,
        "index": {k: v for k, v in built.items() if k != "reference_keys"},
        "queries": len(queries),
        "k": K,
        "poll_seconds": POLL_SECONDS,
        "workers": 2,
        "seconds": s,
        "floor": floor,
        "floor_all_threads": floor_all_threads,
        "verification_stage": has_verify,
        "reference_features_warmed": warmed,
        "hits_identical": same,
        "ratios": {
            "baseline_over_ours_p50": speedup,
            "baseline_over_ours_p95": C.ratio(s["baseline"]["p95"], s["ours"]["p95"]),
            "baseline_over_widget_p50": C.ratio(s["baseline"]["p50"], s["widget"]["p50"]),
            "ours_over_floor_p50": C.ratio(s["ours"]["p50"], floor["floor_p50_s"]),
            "baseline_compute_over_ours_p50": C.ratio(s["baseline_done"]["p50"], s["ours_callback"]["p50"]),
            **(
                {
                    "baseline_over_default_p50": C.ratio(s["baseline"]["p50"], s["default"]["p50"]),
                    "default_over_ours_p50": C.ratio(s["default"]["p50"], s["ours"]["p50"]),
                }
                if has_verify
                else {}
            ),
        },
        "headline": f"ours {speedup:.1f}x faster than the 1 s-poll baseline (p50)",
        "browser": "measured by bench_browser_latency.py (figure 1b, browser_latency.json)",
        "load_average_start": load_start,
        "versions": versions,
    }
    print()
    print(f"Query latency, index of {papyri} papyri, {len(queries)} queries per path, k={K}, 2 workers")
    print(
        f"RATIO baseline/ours p50 = {speedup:.2f}x   ours/floor p50 = {result['ratios']['ours_over_floor_p50']:.2f}x"
    )
    if has_verify:
        print(
            f"      baseline/default (with verification) p50 = {result['ratios']['baseline_over_default_p50']:.2f}x"
        )
    print(
        C.table(
            [
                [
                    "ours: submit_search(verify=False) → done-callback → hits",
                    C.ms(s["ours"]["p50"]),
                    C.ms(s["ours"]["p95"]),
                ],
                ["  (done-callback fired)", C.ms(s["ours_callback"]["p50"]), C.ms(s["ours_callback"]["p95"])],
                *(
                    [
                        [
                            "ours, default pipeline (with verification)",
                            C.ms(s["default"]["p50"]),
                            C.ms(s["default"]["p95"]),
                        ]
                    ]
                    if has_verify
                    else []
                ),
                [
                    "widget (default pipeline): view message → results traits",
                    C.ms(s["widget"]["p50"]),
                    C.ms(s["widget"]["p95"]),
                ],
                [
                    "baseline: new conn+store per task, 1 s poll",
                    C.ms(s["baseline"]["p50"]),
                    C.ms(s["baseline"]["p95"]),
                ],
                [
                    "  (baseline's last future done)",
                    C.ms(s["baseline_done"]["p50"]),
                    C.ms(s["baseline_done"]["p95"]),
                ],
                [f"floor: forward ({worker_threads} thread) + kNN", C.ms(floor["floor_p50_s"]), "–"],
                ["  forward alone", C.ms(floor["forward_s"]["p50"]), C.ms(floor["forward_s"]["p95"])],
                ["  kNN alone (pooled connection)", C.ms(floor["knn_s"]["p50"]), C.ms(floor["knn_s"]["p95"])],
                [
                    "  (not in the floor) decode + model input of a query",
                    C.ms(floor["decode_and_model_input_s"]["p50"]),
                    C.ms(floor["decode_and_model_input_s"]["p95"]),
                ],
                [
                    f"  forward with {floor_all_threads['torch_threads']} threads",
                    C.ms(floor_all_threads["forward_s"]["p50"]),
                    C.ms(floor_all_threads["forward_s"]["p95"]),
                ],
            ],
            ["path", "p50 ms", "p95 ms"],
        )
    )
    C.write_result(args.out, NAME, result)


if __name__ == "__main__":
    main()
