"""Load: 20 searches at once against one engine (as from 20 widgets sharing one cluster and one
database). Every search completes with the right top hit, nothing is lost, and no futures are left
behind. Latencies are printed (p50 / p95), never asserted: they depend on the machine.
"""

from __future__ import annotations

import gc
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from .conftest import REFERENCES

pytestmark = pytest.mark.slow

N = 20
# distinct papyri (no byte-identical pairs), so the top hit of each query is one known inventory
DISTINCT = sorted({p.read_bytes(): p for p in sorted(REFERENCES.glob("*.jpg"))}.values())


def _key(path: Path) -> str:
    return path.name.split("_", 1)[1].rsplit(".", 1)[0]


def _percentiles(seconds: list[float]) -> tuple[float, float]:
    p50, p95 = np.percentile(np.asarray(seconds), [50, 95])
    return float(p50), float(p95)


def _futures_settle(client, before: int) -> int:
    deadline = time.monotonic() + 30
    while True:
        gc.collect()
        left = len(client.futures)
        if left <= before or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def test_20_concurrent_searches_from_threads(indexed_engine):
    queries = DISTINCT[:N]
    assert len(queries) == N
    client = indexed_engine.client
    gc.collect()
    before = len(client.futures)
    start = threading.Barrier(N)

    def one(path: Path) -> tuple[str, str | None, int, float]:
        start.wait()  # all 20 submit together
        t0 = time.perf_counter()
        res = indexed_engine.search(path, k=3, timeout=300)
        return path.name, res.top.inventory_key if res.top else None, len(res), time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=N) as pool:
        outcomes = list(pool.map(one, queries))
    wall = time.perf_counter() - t0
    assert [(name, top, n) for name, top, n, _ in outcomes] == [(q.name, _key(q), 3) for q in queries]
    p50, p95 = _percentiles([s for *_, s in outcomes])
    print(
        f"\n{N} concurrent Engine.search calls (threads): "
        f"p50 {p50:.2f} s, p95 {p95:.2f} s, all done in {wall:.2f} s"
    )
    assert _futures_settle(client, before) <= before


def test_20_jobs_submitted_at_once(indexed_engine):
    # ten papyri, each searched twice at the same moment: identical uploads share one stored query
    queries = [p for p in DISTINCT[N : N + 10] or DISTINCT[:10] for _ in range(2)]
    assert len(queries) == N
    client = indexed_engine.client
    gc.collect()
    before = len(client.futures)
    stored_before = indexed_engine.store.count("queries")

    def run() -> list[tuple[str, str, str | None, float]]:
        finished = threading.Semaphore(0)
        jobs = [indexed_engine.submit_search(q.read_bytes(), name=q.name, k=3) for q in queries]
        for job in jobs:
            job.add_done_callback(lambda _job: finished.release())
        for _ in jobs:
            assert finished.acquire(timeout=300), "a search never finished"
        return [
            (job.name, job.status()["state"], job.hits(timeout=10)[0].inventory_key, job.elapsed())
            for job in jobs
        ]

    outcomes = run()
    assert [(name, state, top) for name, state, top, _ in outcomes] == [
        (q.name, "done", _key(q)) for q in queries
    ]
    p50, p95 = _percentiles([s for *_, s in outcomes])
    print(
        f"\n{N} SearchJobs submitted at once: p50 {p50:.2f} s, p95 {p95:.2f} s (submit to last future done)"
    )
    assert indexed_engine.store.count("queries") - stored_before <= len(set(queries))
    assert _futures_settle(client, before) <= before
