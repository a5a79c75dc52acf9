"""PapyrusSearch: traits, the query setter, the 1 s status poll and the done callback.

The engine tests run against the real engine of the test session (embedded PostgreSQL, a
LocalCluster, a small model; fixtures ``settings`` and ``indexed_engine`` in conftest.py). The
widget's timers run on an asyncio loop, as in a kernel: each test drives one with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from ipywidgets.widgets.widget import _remove_buffers
from PIL import Image

from papyrus_widgets import widget as widget_module
from papyrus_widgets.config import Settings
from papyrus_widgets.errors import ImageError, ServiceError
from papyrus_widgets.widget import PapyrusSearch

try:
    from .conftest import REFERENCES
except ImportError:  # tests/ run as a plain folder (no __init__.py)
    from conftest import REFERENCES  # type: ignore[import-not-found, no-redef]

QUERY = REFERENCES / "19331_p_g_107.jpg"
QUERY_INVENTORY = "p_g_107"
TIMEOUT = 180.0
"""Upper bound for one search (the first one loads the model on a worker)."""


def other_reference(engine: Any) -> tuple[Path, str]:
    """An indexed reference other than QUERY (a file in REFERENCES), with its inventory key."""
    for hit in engine.search(QUERY, k=8):
        if hit.inventory_key != QUERY_INVENTORY and hit.source_name and (REFERENCES / hit.source_name).is_file():
            return REFERENCES / hit.source_name, hit.inventory_key
    pytest.fail("the index holds no reference file besides p_g_107")


async def wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


async def finished(w: PapyrusSearch, timeout: float = TIMEOUT) -> dict:
    """Wait until the widget's search is over; returns the final status."""
    await wait_for(lambda: w.status.get("state") not in (None, "running"), timeout, "the search to end")
    return dict(w.status)


def send_from_view(w: PapyrusSearch, content: Any, buffers: list | None = None) -> None:
    """Deliver a custom message as the browser's view does: through ipywidgets' comm handler."""
    w._handle_msg({"content": {"data": {"method": "custom", "content": content}}, "buffers": buffers or []})


def record_states(w: PapyrusSearch) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    w.observe(lambda change: seen.append((change["new"].get("state"), change["new"].get("stage"))), "status")
    return seen


# --- without services --------------------------------------------------------------------------


def test_constructing_starts_nothing(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", model=str(tmp_path / "no-model"))
    w = PapyrusSearch(k=5, settings=settings)
    try:
        assert w._engine is None
        assert not (tmp_path / "data").exists()  # no database, no object store created
        assert w.k == 5
        assert w.status == {} and w.results == [] and w.thumbnails == [] and w.error == ""
        assert w._esm.strip().startswith("//") and "export default" in w._esm
        assert ".papyrus-search" in w._css
    finally:
        w.close()


def test_static_files_are_copies_of_js() -> None:
    root = Path(__file__).resolve().parents[1]
    for name in ("widget.js", "widget.css"):
        assert (root / "papyrus_widgets" / "static" / name).read_bytes() == (root / "js" / name).read_bytes(), (
            f"papyrus_widgets/static/{name} is stale: run node js/build.mjs"
        )


def test_query_setter_accepts_path_bytes_pil_numpy(tmp_path: Path) -> None:
    w = PapyrusSearch()
    try:
        w.query = QUERY
        assert w.query == QUERY.read_bytes() and w.query_name == QUERY.name
        w.query = str(QUERY)
        assert w.query_name == QUERY.name
        w.query = b"\xff\xd8\xff raw"
        assert w.query == b"\xff\xd8\xff raw" and w.query_name == "query"
        w.query = Image.new("RGB", (20, 10), "white")
        assert Image.open(io.BytesIO(w.query)).size == (20, 10)
        w.query = np.zeros((12, 7, 3), dtype=np.uint8)
        assert Image.open(io.BytesIO(w.query)).size == (7, 12)
        with pytest.raises(ImageError):
            w.query = tmp_path / "missing.jpg"
        w.query = None
        assert w.query is None and w.query_name == ""
    finally:
        w.close()


def test_search_without_query_shows_error_and_does_not_raise() -> None:
    w = PapyrusSearch()
    try:
        assert w.search() is None
        assert w.status["state"] == "error"
        assert "no query image" in w.status["message"] and w.error == w.status["message"]
        assert w.search(Path("/nonexistent/photo.jpg")) is None
        assert w.status["state"] == "error" and "photo.jpg" in w.error
    finally:
        w.close()


def test_browser_messages_never_raise() -> None:
    w = PapyrusSearch()
    try:
        send_from_view(w, {"type": "search", "name": "x.jpg", "k": 3}, [])
        assert w.status["state"] == "error" and "no image data" in w.error
        send_from_view(w, {"type": "something-else"}, [])
        send_from_view(w, ["not", "a", "dict"], [])
        send_from_view(w, {"type": "cancel"}, [])  # nothing running: a no-op
        assert w.status["state"] == "error"
    finally:
        w.close()


def test_thumbnails_travel_as_binary_buffers() -> None:
    w = PapyrusSearch()
    try:
        w.thumbnails = [b"\xff\xd8\xff\xe0jpeg", b""]
        state, paths, buffers = _remove_buffers(w.get_state(["thumbnails"]))
        assert state["thumbnails"] == [None, None]
        assert paths == [["thumbnails", 0], ["thumbnails", 1]]
        assert [bytes(b) for b in buffers] == [b"\xff\xd8\xff\xe0jpeg", b""]
    finally:
        w.close()


def test_repr_and_errors_never_show_credentials(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url="postgresql://papyrus:hunter2@db.example.org/papyrus",
        s3_access_key="AKIASECRET",
        s3_secret_key="s3cr3t",
    )
    w = PapyrusSearch(settings=settings)
    try:
        w._show_error(ServiceError("cannot reach postgresql://papyrus:hunter2@db.example.org/papyrus: start it"))
        texts = [repr(w), w._repr_mimebundle_()[0]["text/plain"], w.error, str(w.status), str(w.get_state())]
        for text in texts:
            for secret in ("hunter2", "AKIASECRET", "s3cr3t"):
                assert secret not in text
        assert "papyrus:****@db.example.org" in w.error
    finally:
        w.close()


def test_results_frame_when_empty() -> None:
    w = PapyrusSearch()
    try:
        frame = w.results_frame()
        assert len(frame) == 0 and "inventory" in frame.columns and "score" in frame.columns
    finally:
        w.close()


# --- against the real engine -------------------------------------------------------------------


def test_search_pushes_status_results_and_thumbnails(indexed_engine: Any) -> None:
    async def main() -> None:
        w = PapyrusSearch(k=5, engine=indexed_engine)
        seen = record_states(w)
        job = w.search(QUERY)
        assert job is not None, w.error
        assert w.job is job and w._timer is not None  # polling
        assert w.status["state"] == "running"
        final = await finished(w)
        assert final["state"] == "done", final
        assert final["elapsed"] > 0

        assert 1 <= len(w.results) <= 5
        assert w.results[0]["inventory_key"] == QUERY_INVENTORY
        assert w.results[0]["rank"] == 1 and 0.0 <= w.results[0]["score"] <= 1.0 + 1e-6
        assert len(w.thumbnails) == len(w.results)
        assert all(t.startswith(b"\xff\xd8\xff") for t in w.thumbnails), "thumbnails are JPEG bytes"

        states = [s for s, _ in seen]
        assert "running" in states and states[-1] == "done"
        assert states.index("running") < states.index("done")

        # The poll stopped: no pending timer, no job, and no status update afterwards.
        assert w._timer is None and w.job is None
        n = len(seen)
        await asyncio.sleep(1.5)
        assert len(seen) == n

        frame = w.results_frame()
        assert len(frame) == len(w.results) and frame.iloc[0]["inventory_key"] == QUERY_INVENTORY
        assert w.last_results.top is not None and w.last_results.top.thumbnail == w.thumbnails[0]
        w.close()

    asyncio.run(main())


def test_results_arrive_by_done_callback_not_by_poll(indexed_engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the poll made very slow, results still arrive as soon as the job ends."""
    monkeypatch.setattr(widget_module, "POLL_SECONDS", 3600.0)

    async def main() -> None:
        w = PapyrusSearch(k=3, engine=indexed_engine)
        assert w.search(QUERY) is not None, w.error
        final = await finished(w, timeout=120)
        assert final["state"] == "done", final
        assert w.results[0]["inventory_key"] == QUERY_INVENTORY
        assert w._timer is None
        w.close()

    asyncio.run(main())


def test_engine_is_taken_lazily_from_settings(settings: Any, indexed_engine: Any) -> None:
    from papyrus_widgets.api import get_engine

    async def main() -> None:
        w = PapyrusSearch(k=2, settings=settings)
        assert w._engine is None
        assert w.search(QUERY) is not None, w.error
        assert w._engine is get_engine(settings)
        final = await finished(w)
        assert final["state"] == "done", final
        assert len(w.results) == 2
        w.close()

    asyncio.run(main())


def test_search_message_from_the_browser(indexed_engine: Any) -> None:
    async def main() -> None:
        w = PapyrusSearch(engine=indexed_engine)
        send_from_view(w, {"type": "search", "name": "photo.jpg", "k": 3}, [memoryview(QUERY.read_bytes())])
        assert w.k == 3 and w.query_name == "photo.jpg"
        final = await finished(w)
        assert final["state"] == "done", final
        assert len(w.results) == 3 and w.results[0]["inventory_key"] == QUERY_INVENTORY
        w.close()

    asyncio.run(main())


def test_closing_mid_search_cancels_the_job(indexed_engine: Any) -> None:
    async def main() -> None:
        w = PapyrusSearch(engine=indexed_engine)
        job = w.search(QUERY)
        assert job is not None, w.error
        w.close()
        assert job.status()["state"] == "cancelled"
        assert w._timer is None and w.job is None
        await asyncio.sleep(0.3)  # the done callback of the cancelled job runs and is ignored
        assert w.results == []

    asyncio.run(main())


def test_second_search_cancels_the_first(indexed_engine: Any) -> None:
    other, other_inventory = other_reference(indexed_engine)

    async def main() -> None:
        w = PapyrusSearch(k=3, engine=indexed_engine)
        first = w.search(QUERY)
        second = w.search(other)
        assert first is not None and second is not None, w.error
        assert first.status()["state"] == "cancelled"
        final = await finished(w)
        assert final["state"] == "done", final
        assert w.results[0]["inventory_key"] == other_inventory
        w.close()

    asyncio.run(main())


def test_cancel_shows_cancelled(indexed_engine: Any) -> None:
    async def main() -> None:
        w = PapyrusSearch(engine=indexed_engine)
        job = w.search(QUERY)
        assert job is not None, w.error
        send_from_view(w, {"type": "cancel"}, [])
        assert w.status["state"] == "cancelled" and w.job is None and w._timer is None
        await asyncio.sleep(0.3)
        assert w.status["state"] == "cancelled" and w.results == []
        w.close()

    asyncio.run(main())


def test_corrupt_image_shows_error_then_a_good_search_works(indexed_engine: Any) -> None:
    async def main() -> None:
        w = PapyrusSearch(k=3, engine=indexed_engine)
        w.search(b"not an image")
        final = await finished(w)
        assert final["state"] == "error", final
        message = final["message"]
        assert "not an image" in message and "Traceback" not in message
        assert w.error == message and w.results == [] and w._timer is None

        job = w.search(QUERY)
        assert job is not None, w.error
        final = await finished(w)
        assert final["state"] == "done", final
        assert w.error == "" and w.results[0]["inventory_key"] == QUERY_INVENTORY
        w.close()

    asyncio.run(main())


def test_k_out_of_range_is_a_readable_error(indexed_engine: Any) -> None:
    async def main() -> None:
        w = PapyrusSearch(engine=indexed_engine)
        assert w.search(QUERY, k=0) is None
        assert w.status["state"] == "error" and w.error and "Traceback" not in w.error
        assert w.job is None and w._timer is None
        assert w.search(QUERY, k=2) is not None, w.error
        final = await finished(w)
        assert final["state"] == "done" and len(w.results) == 2
        w.close()

    asyncio.run(main())


def test_search_from_a_kernel_cell(settings: Any, indexed_engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a real ipykernel, the poll and the done callback run on the kernel's own event loop."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("PAPYRUS_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("PAPYRUS_MODEL", str(settings.model))
    monkeypatch.setenv("PAPYRUS_DASK_WORKERS", "1")
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "from papyrus_widgets import PapyrusSearch\n"
            "w = PapyrusSearch(k=3)\n"
            f"job = w.search({str(QUERY)!r})\n"
            "assert job is not None, w.error\n"
            "seen = []\n"
            "w.observe(lambda change: seen.append(change['new'].get('state')), 'status')"
        ),
        nbformat.v4.new_code_cell(
            "import asyncio\n"
            "for _ in range(1800):\n"
            "    if w.status.get('state') != 'running':\n"
            "        break\n"
            "    await asyncio.sleep(0.1)\n"
            "print(w.status['state'], w.results[0]['inventory_key'], len(w.thumbnails), w._timer is None,\n"
            "      seen.count('running') >= 1, seen[-1])\n"
            "w.close()"
        ),
    ]
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    out = "".join(o.get("text", "") for o in nb.cells[1].outputs if o.get("output_type") == "stream")
    assert out.split() == ["done", QUERY_INVENTORY, "3", "True", "True", "done"], out
