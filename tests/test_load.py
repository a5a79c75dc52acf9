"""Load: 20 searches at once (as from 20 widgets or kernels sharing one cluster and one database).
Every search completes with the right top hit, nothing is lost, and no futures are left behind.
Latencies are printed (p50 / p95), never asserted: they depend on the machine.

Threads of one engine, jobs submitted at once, and (``make test-full``) 20 separate Python
processes, each its own engine on one shared ``dask scheduler`` with two workers and one
PostgreSQL reached by URL.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from .conftest import REFERENCES, REPO
from .realservers import DaskCluster, dask_cluster  # noqa: F401 - the dask_cluster fixture

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


# One kernel: its own Engine (and Dask client) on the shared scheduler, the index by URL. It prints
# "ready" once connected, waits for the start file, searches once and prints what it saw.
KERNEL = r"""
import gc, json, sys, time
from pathlib import Path


def peak_rss_mb():  # VmHWM: this process image's own peak (ru_maxrss would include the forking parent's)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


from papyrus_widgets.api import Engine

query, start = Path(sys.argv[1]), Path(sys.argv[2])
engine = Engine()  # settings from PAPYRUS_* like a kernel's
client = engine.client
engine.resolved_settings()  # schema checked, model recorded: what a kernel's first search does
print("ready", flush=True)
while not start.exists():
    time.sleep(0.005)
t0 = time.perf_counter()
res = engine.search(query, k=3, timeout=600)
seconds = time.perf_counter() - t0
del res.hits[1:]
gc.collect()
# a future is released on the client's event loop (Future.release -> loop.add_callback), so a
# busy process may count it for a moment after the search returned; a leak stays
deadline = time.monotonic() + 10
while client.futures and time.monotonic() < deadline:
    time.sleep(0.05)
print(json.dumps({
    "query": query.name,
    "top": res.top.inventory_key if res.top else None,
    "score": res.top.score if res.top else None,
    "seconds": seconds,
    "futures_left": len(client.futures),
    "torch_loaded": "torch" in sys.modules,
    "peak_rss_mb": peak_rss_mb(),
}), flush=True)
client.close()
"""


def _clients(probe) -> int:
    return probe.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.clients))


@pytest.mark.full
def test_20_concurrent_searches_from_20_processes(indexed_engine, dask_cluster, tmp_path):
    from distributed import Client

    from papyrus_widgets import tasks

    settings = indexed_engine.resolved_settings()
    queries = DISTINCT[:N]
    with Client(dask_cluster.address, timeout=30, set_as_default=False) as probe:
        # the model loaded on both workers first, as after a kernel's earlier searches
        probe.run(tasks.worker_model, settings.model, settings.model_revision)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PAPYRUS_")}
        env.update(
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            PAPYRUS_DATA_DIR=str(settings.data_dir),  # the local object store the workers read
            PAPYRUS_DATABASE_URL=settings.database_url,
            PAPYRUS_MODEL=settings.model,
            PAPYRUS_DASK_SCHEDULER=dask_cluster.address,
        )
        start = tmp_path / "start"
        clients_before = _clients(probe)
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", KERNEL, str(q), str(start)],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            for q in queries
        ]
        try:
            for proc in procs:
                line = proc.stdout.readline().strip()
                assert line == "ready", (line, proc.stderr.read() if proc.poll() is not None else "")
            ready = time.perf_counter() - t0
            assert _clients(probe) == clients_before + N  # 20 kernels, each its own client of one scheduler
            start.touch()
            t1 = time.perf_counter()
            outputs = [proc.communicate(timeout=600) for proc in procs]
            wall = time.perf_counter() - t1
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        failed = [(q.name, p.returncode, e[-2000:]) for q, p, (_, e) in zip(queries, procs, outputs) if p.returncode]
        assert not failed, failed
        seen = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
        assert [(r["query"], r["top"]) for r in seen] == [(q.name, _key(q)) for q in queries]
        assert all(r["score"] > 0.999 for r in seen)  # each reference finds itself
        assert all(r["futures_left"] == 0 for r in seen)
        assert not any(r["torch_loaded"] for r in seen)  # the model runs on the workers only
        # nothing left behind on the shared scheduler once the 20 kernels are gone
        deadline = time.monotonic() + 30
        while probe.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert probe.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) == 0
    p50, p95 = _percentiles([r["seconds"] for r in seen])
    rss = max(r["peak_rss_mb"] for r in seen)
    print(
        f"\n{N} processes (own Engine each, one scheduler with 2 workers, one PostgreSQL): "
        f"p50 {p50:.2f} s, p95 {p95:.2f} s, all done in {wall:.2f} s; "
        f"{ready:.1f} s to start and connect them; peak RSS per process {rss:.0f} MB (torch not loaded)"
    )
