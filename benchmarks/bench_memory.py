"""Figure 4 — memory: peak RSS of a kernel-like process holding the widget, and of a Dask worker.

- **kernel**: a fresh Python process that builds ``PapyrusSearch`` (engine from ``PAPYRUS_*``
  settings: the embedded PostgreSQL of this run, its own LocalCluster, whose scheduler runs in
  that process as in a notebook kernel), searches one reference on an asyncio loop and reports
  its peak RSS — against a **bare** Python process importing nothing of ours (baseline) and one
  that only imports the package (the share of the imports);
- **worker**: RSS of the LocalCluster's workers when idle (baseline), after ``import torch``,
  after the model and the connection pool are loaded, after an ingest of the references and
  after a search (and each worker's peak RSS).

Peak RSS is the kernel's high-water mark of the process's address space (``VmHWM`` in
``/proc/<pid>/status``). ``resource.getrusage().ru_maxrss`` cannot be used here: on Linux it is
inherited across ``fork`` and kept across ``exec``, so every child of this (large) process, Dask
workers included, would report at least this process's RSS.

Run alone: ``python benchmarks/bench_memory.py [--quick]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

NAME = "memory"
MIB = 2**20

PEAK = r'''
def peak_rss(pid="self"):
    """VmHWM (peak resident set of this address space) in bytes."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
'''

BARE = (
    PEAK
    + r"""
import json
print("RESULT " + json.dumps({"peak_rss": peak_rss()}))
"""
)

IMPORT_ONLY = (
    PEAK
    + r"""
import json
import papyrus_widgets
from papyrus_widgets.widget import PapyrusSearch
print("RESULT " + json.dumps({"peak_rss": peak_rss()}))
"""
)

KERNEL = (
    PEAK
    + r"""
import asyncio, json, os, time
from pathlib import Path

import psutil


def main():
    from papyrus_widgets import services
    from papyrus_widgets.widget import PapyrusSearch

    w = PapyrusSearch(k=8)

    async def go():
        w.search(Path(os.environ["BENCH_QUERY"]))
        deadline = time.monotonic() + 300
        while (w.status or {}).get("state") not in ("done", "error"):
            if time.monotonic() > deadline:
                raise TimeoutError("the search did not finish")
            await asyncio.sleep(0.05)

    asyncio.run(go())
    me = psutil.Process()
    children = me.children(recursive=True)
    out = {
        "peak_rss": peak_rss(),
        "rss": me.memory_info().rss,
        "hits": len(w.results),
        "error": w.error,
        "children": len(children),
        "children_rss": sum(c.memory_info().rss for c in children if c.is_running()),
    }
    w.close()
    services.close_clients()
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
"""
)


def run_child(code: str, folder: Path, name: str, env: dict[str, str]) -> dict[str, Any]:
    script = folder / f"{name}.py"
    script.write_text(code, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(
        f"{name} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )


def worker_memory(client: Any) -> dict[str, dict[str, int]]:
    def probe() -> dict[str, int]:
        import psutil

        peak = 0
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
        return {"rss": psutil.Process().memory_info().rss, "peak_rss": peak}

    return client.run(probe)


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0])
    C.setup_environment()
    load_start = C.load_average()
    repeats = 1 if args.quick else 2

    from papyrus_widgets.api import Engine

    query = C.REFERENCES / "19331_p_g_107.jpg"
    with C.workspace("memory") as ws:
        settings = ws.settings(workers=2)
        engine = Engine(settings)
        resolved = engine.resolved_settings()  # starts the embedded PostgreSQL
        client = engine.client
        stages: dict[str, dict[str, dict[str, int]]] = {}
        time.sleep(1.0)
        stages["idle"] = worker_memory(client)
        client.run(lambda: bool(__import__("torch")))
        stages["import torch"] = worker_memory(client)
        C.warm_workers(client, resolved)
        stages["model loaded"] = worker_memory(client)
        report = engine.ingest(C.REFERENCES, C.HGV_DIR, progress=False)
        stages["after ingest of the references"] = worker_memory(client)
        engine.search(query, k=8)
        stages["after a search"] = worker_memory(client)
        versions = C.db_versions(resolved.database_url)
        C.close_services()  # the children start their own clusters; PostgreSQL stays up

        env = dict(os.environ)
        env.update(
            PAPYRUS_DATA_DIR=str(ws.data_dir),
            PAPYRUS_MODEL=str(ws.model_dir),
            PAPYRUS_DASK_WORKERS="2",
            BENCH_QUERY=str(query),
            PYTHONUNBUFFERED="1",
        )
        bare = [run_child(BARE, ws.root, "bare", env)["peak_rss"] for _ in range(repeats)]
        imports = [run_child(IMPORT_ONLY, ws.root, "import_only", env)["peak_rss"] for _ in range(repeats)]
        kernels = [run_child(KERNEL, ws.root, "kernel", env) for _ in range(repeats)]
        if any(k["error"] or not k["hits"] for k in kernels):
            raise RuntimeError(f"the kernel's search failed: {kernels}")

    bare_peak = C.median(bare)
    import_peak = C.median(imports)
    kernel_peak = C.median([k["peak_rss"] for k in kernels])
    kernel_children = C.median([k["children_rss"] for k in kernels])

    def per_worker(stage: str, key: str) -> float:
        return C.median([v[key] for v in stages[stage].values()])

    idle = per_worker("idle", "rss")
    loaded = per_worker("model loaded", "rss")
    result = {
        "title": "Memory: peak RSS of the kernel with the widget, of a worker with the model",
        "quick": args.quick,
        "ingest": str(report),
        "kernel": {
            "bare_python_peak_bytes": bare_peak,
            "import_only_peak_bytes": import_peak,
            "kernel_with_widget_after_search_peak_bytes": kernel_peak,
            "kernel_children_rss_bytes": kernel_children,
            "runs": kernels,
        },
        "workers": {
            stage: {
                "rss_median_bytes": per_worker(stage, "rss"),
                "peak_rss_median_bytes": per_worker(stage, "peak_rss"),
                "per_worker": v,
            }
            for stage, v in stages.items()
        },
        "ratios": {
            "kernel_over_bare_python": C.ratio(kernel_peak, bare_peak),
            "kernel_over_import_only": C.ratio(kernel_peak, import_peak),
            "worker_model_loaded_over_idle": C.ratio(loaded, idle),
            "worker_peak_after_ingest_over_idle": C.ratio(
                per_worker("after ingest of the references", "peak_rss"), idle
            ),
        },
        "load_average_start": load_start,
        "versions": versions,
    }
    result["headline"] = (
        f"kernel with the widget {kernel_peak / MIB:.0f} MiB peak = "
        f"{result['ratios']['kernel_over_bare_python']:.0f}x a bare Python; a worker with the model "
        f"{loaded / MIB:.0f} MiB = {result['ratios']['worker_model_loaded_over_idle']:.2f}x an idle one"
    )
    print()
    print(
        f"RATIO kernel/bare = {result['ratios']['kernel_over_bare_python']:.1f}x   "
        f"worker loaded/idle = {result['ratios']['worker_model_loaded_over_idle']:.2f}x"
    )
    print(
        C.table(
            [
                ["bare Python (baseline)", bare_peak / MIB],
                ["import papyrus_widgets + widget", import_peak / MIB],
                [
                    "kernel: PapyrusSearch after a search (LocalCluster scheduler in-process)",
                    kernel_peak / MIB,
                ],
                ["  its 2 worker processes (RSS, not in the figure above)", kernel_children / MIB],
            ],
            ["process", "peak RSS MiB"],
        )
    )
    print()
    print(
        C.table(
            [
                [stage, per_worker(stage, "rss") / MIB, per_worker(stage, "peak_rss") / MIB]
                for stage in stages
            ],
            ["Dask worker (median of 2)", "RSS MiB", "peak RSS MiB"],
        )
    )
    C.write_result(args.out, NAME, result)


if __name__ == "__main__":
    main()
