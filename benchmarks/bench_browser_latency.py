"""Figure 1b — query latency in the browser, from the Search click to the result cards rendered.

The browser leg of figure 1: ``PapyrusSearch`` in a real JupyterLab (the server helper of the
browser tests, ``tests.realservers.jupyter_server``) driven by headless Chromium (Playwright, sync
API), on a warm cluster and a warm page.

Index: as figure 1 (``bench_query_latency``): the 44 Heidelberg references ingested through
``Engine.ingest`` plus distractor rows up to 10,000 papyri. The notebook's kernel connects to the
LocalCluster of this process (``PAPYRUS_DASK_SCHEDULER``), so both sides use the same warm workers,
model and reference-feature caches. Queries: the same mix as figure 1 (half references, half
software re-photographs), chosen through the widget's file input: a reference as its original scan
(the view downscales it to 2048 px itself, as for a user's upload), a re-photograph as its JPEG.

For every query, the same search read on two clocks:

- **browser** (candidate): ``performance.now()`` in the page from the Search button's click event
  to the first animation frame after the new query's result cards are in the DOM. "New" is
  checked, not assumed: the status line (``data-state``) must have left ``done`` after the click
  and be ``done`` again, the cards must be there, and the history strip's pressed entry must be an
  id that did not exist before the click (the kernel adds it with the results, in one message).
- **kernel** (baseline): ``time.perf_counter()`` in the kernel, from the widget taking the view's
  "search" message (its status turns to ``submitting``) to the results traits set (status
  ``done``), read by an observer on the widget's ``status`` trait — the widget row of figure 1,
  for the very same search. The job's own elapsed (submit → last future done, 10 ms resolution)
  is reported too.

browser / kernel is what the browser adds: reading and downscaling the file, the comm both ways
(image up, results and thumbnails down) and rendering. The widget pushes results from the job's
done-callback; its 1 s timer only ticks the status line, so no poll sits in this path.

Every console error and uncaught page error is counted and reported in the result (none is
filtered out); the script exits non-zero, after writing its result, when there was any.

Needs ``/usr/bin/chromium`` (Debian package ``chromium``); exits with one line when it is missing.
Run alone: ``python benchmarks/bench_browser_latency.py [--quick]``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
import bench_query_latency as Q

if str(C.REPO) not in sys.path:
    sys.path.insert(0, str(C.REPO))  # tests.realservers: the Jupyter server helper of the browser tests

NAME = "browser_latency"
K = Q.K
WARMUP = 3
RESULTS_TIMEOUT_MS = 120_000

# Kernel side: stamp the widget's status changes (on the kernel's own clock).
KERNEL_SETUP = """
import json as _bench_json, time as _bench_time
_bench = []
def _bench_on_status(change):
    s = change["new"] or {}
    if s.get("stage") == "submitting":
        _bench.append({"start": _bench_time.perf_counter()})
    elif s.get("state") in ("done", "error", "cancelled") and _bench and "end" not in _bench[-1]:
        _bench[-1].update(end=_bench_time.perf_counter(), state=s.get("state"), job_elapsed=s.get("elapsed"))
w.observe(_bench_on_status, "status")
"""

KERNEL_READ = """
_b = dict(_bench[-1]) if _bench else {}
_b["history"] = w.history[-1] if w.history else None
_b["top_inventory_key"] = w.results[0]["inventory_key"] if w.results else None
_b["count"] = len(w.results)
print(_bench_json.dumps(_b))
"""

# Page side: arm before each click; the stamps land in window.__paplat.
ARM = """(root) => {
  const status = root.querySelector('[data-testid="status"]');
  const results = root.querySelector('[data-testid="results"]');
  const history = root.querySelector('[data-testid="history"]');
  const button = root.querySelector('[data-testid="search-button"]');
  const ids = () => [...history.querySelectorAll('[data-testid="history-item"]')].map((b) => b.dataset.id);
  const before = new Set(ids());
  const b = { t0: null, ack: null, dom: null, frame: null, left: false, cards: 0, top: null, id: null, error: null };
  window.__paplat = b;
  let observer = null;
  const check = () => {
    if (b.t0 === null || b.dom !== null || b.error !== null) return;
    const state = status.dataset.state;
    if (state !== 'done') b.left = true;
    const kernelStage = state === 'running' && status.dataset.stage !== 'uploading';
    if (b.ack === null && b.left && kernelStage) b.ack = performance.now();
    if (state === 'error' || state === 'cancelled') {
      b.error = `${state}: ${status.textContent}`;
      observer.disconnect();
      return;
    }
    const cards = results.querySelectorAll('[data-testid="result-card"]');
    const pressed = history.querySelector('[data-testid="history-item"][aria-pressed="true"]');
    if (b.left && state === 'done' && cards.length > 0 && pressed && !before.has(pressed.dataset.id)) {
      b.dom = performance.now();
      b.cards = cards.length;
      b.top = cards[0].dataset.inventoryKey || null;
      b.id = pressed.dataset.id;
      observer.disconnect();
      requestAnimationFrame(() => { b.frame = performance.now(); });
    }
  };
  observer = new MutationObserver(check);
  observer.observe(root, { subtree: true, childList: true, attributes: true, attributeFilter: ['data-state'] });
  button.addEventListener('click', () => { b.t0 = performance.now(); check(); }, { capture: true, once: true });
}"""

KERNEL_EXECUTE = """async (code) => {
  const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  const future = kernel.requestExecute({ code, stop_on_error: true, store_history: false });
  let out = '';
  let error = null;
  future.onIOPub = (msg) => {
    if (msg.header.msg_type === 'stream') out += msg.content.text;
    if (msg.header.msg_type === 'error') error = `${msg.content.ename}: ${msg.content.evalue}`;
  };
  const done = await future.done;
  return { status: done.content.status, out, error };
}"""


def kernel_run(page: Any, code: str) -> str:
    """Run ``code`` in the notebook's kernel; its stdout. Raises on a Python error."""
    reply = page.evaluate(KERNEL_EXECUTE, code)
    if reply["status"] != "ok":
        raise RuntimeError(f"kernel code failed: {reply['error']}\n{code}")
    return reply["out"]


def query_files(queries: list[tuple[str, bytes]], folder: Path) -> list[Path]:
    """The files the browser chooses: a reference as its original scan (the view downscales it),
    a re-photograph as the JPEG made for it."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, data in queries:
        original = C.REFERENCES / name
        if original.is_file():
            out.append(original)
        else:
            path = folder / name
            path.write_bytes(data)
            out.append(path)
    return out


def choose(page: Any, widget: Any, path: Path) -> None:
    """Choose ``path`` in the file input; wait until the view has decoded it (editor shown, size known)."""
    widget.get_by_test_id("file-input").set_input_files(str(path))
    page.wait_for_function(
        "([el, name]) => el.textContent.startsWith(name + ':') && el.textContent.includes(' px')",
        arg=[widget.get_by_test_id("chosen-name").element_handle(), path.name],
        timeout=30_000,
    )


def search_once(page: Any, widget: Any) -> dict[str, Any]:
    """Click Search; the page's stamps (ms on the page clock) once the new cards are rendered."""
    widget.evaluate(ARM)
    widget.get_by_test_id("search-button").click()
    page.wait_for_function(
        "() => window.__paplat && (window.__paplat.frame !== null || window.__paplat.error !== null)",
        timeout=RESULTS_TIMEOUT_MS,
    )
    stamps = page.evaluate("() => window.__paplat")
    if stamps["error"]:
        raise RuntimeError(f"the search ended in {stamps['error']}")
    return stamps


def main() -> None:
    args = C.parse_args(
        __doc__.splitlines()[0],
        lambda p: (
            p.add_argument("--papyri", type=int, default=None, help="index size (default 10000; --quick 2000)"),
            p.add_argument("--queries", type=int, default=None, help="timed queries (default 20; --quick 5)"),
        ),
    )
    from tests.realservers import CHROMIUM, CHROMIUM_ARGS, jupyter_server, open_and_run_notebook

    if not CHROMIUM.exists():
        sys.exit(f"bench_browser_latency: {CHROMIUM} is missing (apt-get install -y chromium); nothing measured")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sys.exit("bench_browser_latency: the Python package playwright is missing (pip install .[test])")
    C.setup_environment()
    n_index = args.papyri or (2000 if args.quick else 10_000)
    n_queries = args.queries or (5 if args.quick else 20)
    load_start = C.load_average()

    from papyrus_widgets.api import Engine

    errors: list[str] = []
    rows: list[dict[str, Any]] = []
    with C.workspace("browser") as ws:
        engine = Engine(ws.settings(workers=2))
        built = Q.build_index(engine, n_index)
        papyri = built["papyri"]
        settings = engine.resolved_settings()
        url = settings.database_url

        client = engine.client
        C.warm_workers(client, settings)
        warmed = Q.warm_reference_features(client, settings, built["reference_keys"])
        queries = Q.make_queries(WARMUP + n_queries)
        files = query_files(queries, ws.root / "queries")
        # The kernel uses this process's cluster: the same warm workers for every search.
        kernel_settings = settings.replace(dask_scheduler=client.scheduler.address)
        home = Path(tempfile.mkdtemp(prefix="jupyter-", dir=ws.root))
        with jupyter_server("lab", kernel_settings, home) as server, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_context(viewport={"width": 1280, "height": 1100}).new_page()
                page.on("console", lambda msg: on_console(msg, errors))
                page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
                t_open = time.perf_counter()
                widget = open_and_run_notebook(page, server)
                kernel_run(page, KERNEL_SETUP)
                print(f"JupyterLab up, widget shown in {time.perf_counter() - t_open:.1f} s", flush=True)
                for i, path in enumerate(files):
                    choose(page, widget, path)
                    stamps = search_once(page, widget)
                    kernel = json.loads(kernel_run(page, KERNEL_READ).strip().splitlines()[-1])
                    if i < WARMUP:  # the first search connects the kernel to the cluster and the database
                        print(f"  warm-up {i + 1}/{WARMUP}: {stamps['frame'] - stamps['t0']:6.0f} ms", flush=True)
                        continue
                    history = kernel.get("history") or {}
                    row = {
                        "query": path.name,
                        "browser_s": (stamps["frame"] - stamps["t0"]) / 1000,
                        "browser_dom_s": (stamps["dom"] - stamps["t0"]) / 1000,
                        "ack_s": (stamps["ack"] - stamps["t0"]) / 1000 if stamps["ack"] is not None else None,
                        "kernel_s": kernel["end"] - kernel["start"],
                        "job_s": float(kernel.get("job_elapsed") or 0.0),
                        "cards": stamps["cards"],
                        "same_search": history.get("id") == stamps["id"],
                        "same_top": stamps["top"] == kernel.get("top_inventory_key")
                        and stamps["cards"] == kernel.get("count"),
                    }
                    rows.append(row)
                    print(
                        f"  {len(rows):>3}/{n_queries} {path.name[:34]:<34} browser {C.ms(row['browser_s']):6.0f}"
                        f"  kernel {C.ms(row['kernel_s']):6.0f}  job {C.ms(row['job_s']):6.0f} ms",
                        flush=True,
                    )
            finally:
                browser.close()
        versions = C.db_versions(url)

    col = {key: [r[key] for r in rows if r[key] is not None] for key in ("browser_s", "browser_dom_s", "ack_s")}
    col.update(
        kernel_s=[r["kernel_s"] for r in rows],
        job_s=[r["job_s"] for r in rows],
        added_s=[r["browser_s"] - r["kernel_s"] for r in rows],
    )
    s = {key.removesuffix("_s"): C.summary(v) for key, v in col.items()}
    ratio_p50 = C.ratio(s["browser"]["p50"], s["kernel"]["p50"])
    result = {
        "title": "Query latency in the browser: Search click → result cards rendered (warm cluster, warm page)",
        "quick": args.quick,
        "index": {k: v for k, v in built.items() if k != "reference_keys"},
        "queries": len(rows),
        "warmup": WARMUP,
        "k": K,
        "workers": 2,
        "front_end": "JupyterLab",
        "browser": f"headless Chromium ({CHROMIUM})",
        "reference_features_warmed": warmed,
        "seconds": s,
        "ratios": {
            "browser_over_kernel_p50": ratio_p50,
            "browser_over_kernel_p95": C.ratio(s["browser"]["p95"], s["kernel"]["p95"]),
            "browser_over_job_p50": C.ratio(s["browser"]["p50"], s["job"]["p50"]),
        },
        "same_search": sum(r["same_search"] for r in rows),
        "same_results": sum(r["same_top"] for r in rows),
        "console_errors": len(errors),
        "console_error_messages": errors[:20],
        "per_query": rows,
        "headline": f"the browser adds {C.ms(s['added']['p50']):.0f} ms p50 to the kernel's part "
        f"(browser/kernel {ratio_p50:.2f}x)",
        "load_average_start": load_start,
        "versions": versions,
    }
    print()
    print(f"Query latency in the browser, index of {papyri} papyri, {len(rows)} queries, k={K}, 2 workers")
    print(f"RATIO browser/kernel p50 = {ratio_p50:.2f}x   p95 = {result['ratios']['browser_over_kernel_p95']:.2f}x")
    print(
        C.table(
            [
                ["browser: Search click → new result cards, next frame", *_p(s["browser"])],
                ["  (cards in the DOM)", *_p(s["browser_dom"])],
                ["  (click → first kernel status in the page)", *_p(s["ack"])],
                ["kernel: search message taken → results traits set", *_p(s["kernel"])],
                ["  (the job: submit → last future done)", *_p(s["job"])],
                ["added by the browser (per query: browser − kernel)", *_p(s["added"])],
            ],
            ["path", "p50 ms", "p95 ms"],
        )
    )
    print(
        f"same search on both clocks: {result['same_search']}/{len(rows)}; "
        f"cards = kernel's results: {result['same_results']}/{len(rows)}; console errors: {len(errors)}"
    )
    for message in errors[:20]:
        print(f"  {message}")
    C.write_result(args.out, NAME, result)
    if errors:
        sys.exit(f"bench_browser_latency: {len(errors)} console/page error(s) in the browser (listed above)")
    if result["same_search"] != len(rows) or result["same_results"] != len(rows):
        sys.exit("bench_browser_latency: the cards did not always show the kernel's results of the timed search")


def on_console(msg: Any, errors: list[str]) -> None:
    """Every console error counts (none is filtered out as a front end's noise)."""
    if msg.type == "error":
        errors.append(f"console: {msg.text} ({msg.location.get('url', '')})")


def _p(summary: dict[str, float]) -> list[float]:
    return [C.ms(summary["p50"]), C.ms(summary["p95"])]


if __name__ == "__main__":
    main()
