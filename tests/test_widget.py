"""PapyrusSearch: traits, the query setter, the 1 s status poll and the done callback; the view's
messages (search with corners and filters, suggest corners, restore from the history, preview).

The engine tests run against the real engine of the test session (embedded PostgreSQL, a
LocalCluster, a small model; fixtures ``settings`` and ``indexed_engine`` in conftest.py). The
widget's timers run on an asyncio loop, as in a kernel: each test drives one with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import io
import re
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import traitlets
from ipywidgets.widgets.widget import _remove_buffers
from PIL import Image

from papyrus_widgets import imaging
from papyrus_widgets import widget as widget_module
from papyrus_widgets.config import Settings
from papyrus_widgets.errors import ImageError, QueryError, ServiceError
from papyrus_widgets.widget import PapyrusSearch, clean_filters, query_preview_bytes

try:
    from .conftest import REFERENCES
except ImportError:  # tests/ run as a plain folder (no __init__.py)
    from conftest import REFERENCES  # type: ignore[import-not-found, no-redef]

QUERY = REFERENCES / "19331_p_g_107.jpg"
QUERY_INVENTORY = "p_g_107"
TIMEOUT = 180.0
"""Upper bound for one search (the first one loads the model on a worker)."""


# A photographed papyrus: a reference scan warped in perspective onto a dark table.
PHOTO_REFERENCE = "21114_p_g_24.jpg"
PHOTO_INVENTORY = "p_g_24"
PHOTO_SIZE = (2600, 3000)
PHOTO_CORNERS = [[420.0, 380.0], [2150.0, 520.0], [2300.0, 2750.0], [300.0, 2600.0]]
"""Where the scan's corners (TL, TR, BR, BL) land on the photo, in photo pixels."""


def _coefficients(out_pts: list[list[float]], in_pts: list[list[float]]) -> tuple[float, ...]:
    """Pillow PERSPECTIVE coefficients that map output points onto input points."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(out_pts, in_pts):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        rhs += [u, v]
    return tuple(np.linalg.solve(np.array(rows, dtype=float), np.array(rhs, dtype=float)))


def warped_photo(
    reference: str = PHOTO_REFERENCE,
    size: tuple[int, int] = PHOTO_SIZE,
    corners: list[list[float]] = PHOTO_CORNERS,
    max_side: int | None = None,
) -> tuple[bytes, list[list[float]]]:
    """JPEG bytes of the reference "photographed" at an angle on a dark table, and where its corners
    are on that photo (scaled when ``max_side`` shrinks the photo)."""
    scan = Image.open(REFERENCES / reference).convert("RGB")
    w, h = scan.size
    coeffs = _coefficients(corners, [[0, 0], [w, 0], [w, h], [0, h]])
    warped = scan.transform(size, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BICUBIC)
    mask = Image.new("L", scan.size, 255).transform(
        size, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR
    )
    ramp = np.linspace(28, 52, size[1], dtype=np.float32)[:, None, None]  # a table lit from one side
    table = Image.fromarray(
        (ramp * np.array([1.0, 0.9, 0.8], dtype=np.float32) + np.zeros((1, size[0], 1))).astype(np.uint8)
    )
    table.paste(warped, (0, 0), mask)
    points = [list(c) for c in corners]
    if max_side and max(size) > max_side:
        scale = max_side / max(size)
        table = table.resize((round(size[0] * scale), round(size[1] * scale)), Image.Resampling.LANCZOS)
        points = [[x * table.width / size[0], y * table.height / size[1]] for x, y in corners]
    buf = io.BytesIO()
    table.save(buf, "JPEG", quality=90)
    return buf.getvalue(), points


def capture_sends(w: PapyrusSearch) -> list[tuple[dict, list]]:
    """Record the custom messages the kernel sends to the view."""
    sent: list[tuple[dict, list]] = []
    w.send = lambda content, buffers=None: sent.append((content, list(buffers or [])))  # type: ignore[method-assign]
    return sent


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
        assert w._esm.strip().startswith("//") and re.search(r"export (default|\{[^}]*\bas default\b)", w._esm)
        assert ".papyrus-search" in w._css
    finally:
        w.close()


def test_static_widget_js_is_built_from_js_src() -> None:
    """The served ESM is the bundle of js/src/ (make static builds it), one file with no imports."""
    root = Path(__file__).resolve().parents[1]
    built = root / "papyrus_widgets" / "static" / "widget.js"
    assert built.exists(), "papyrus_widgets/static/widget.js is missing: run make static"
    text = built.read_text()
    assert "built by js/build.mjs from js/src" in text.splitlines()[0]
    assert not re.search(r"^import ", text, re.M), "the bundle must not import modules (anywidget loads one file)"
    newest_source = max(p.stat().st_mtime for p in (root / "js" / "src").glob("*.js"))
    assert built.stat().st_mtime >= newest_source, "static/widget.js is older than js/src/: run make static"


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


def test_cancel_brings_back_the_results_on_show_before(indexed_engine: Any) -> None:
    """Cancel ends the new search, not the old results: the previous cards and their history entry
    (pressed in the strip) come back, with the cancelled search's status."""

    async def main() -> None:
        w = PapyrusSearch(k=3, engine=indexed_engine)
        w.search(QUERY)
        assert (await finished(w))["state"] == "done"
        before, entry = list(w.results), w.history_id
        assert before and entry
        job = w.search(QUERY)
        assert job is not None, w.error
        assert w.results == [] and w.history_id == ""  # no old cards under the new search's status
        send_from_view(w, {"type": "cancel"}, [])
        assert w.status["state"] == "cancelled" and w.job is None
        assert w.results == before and w.history_id == entry and w.query_name == QUERY.name
        assert len(w.thumbnails) == len(before)
        await asyncio.sleep(0.3)
        assert w.status["state"] == "cancelled" and w.results == before
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


def test_ef_search_trait_reaches_the_knn_query(indexed_engine: Any) -> None:
    async def main() -> None:
        w = PapyrusSearch(k=3, engine=indexed_engine)
        assert w.search(QUERY) is not None, w.error
        assert (await finished(w))["state"] == "done"
        assert w.last_results.ef_search == 100  # automatic: max(100, 2 x candidates)

        w.ef_search = 150
        assert w.search(QUERY) is not None, w.error
        assert (await finished(w))["state"] == "done"
        assert w.last_results.ef_search == 150  # as the server reported it
        assert w.results[0]["inventory_key"] == QUERY_INVENTORY

        assert w.search(QUERY, ef_search=5000) is None  # out of pgvector's range
        assert w.status["state"] == "error" and "ef_search" in w.error and "1000" in w.error
        assert w.job is None and w._timer is None
        assert w.search(QUERY, ef_search=0) is not None, w.error  # back to automatic
        assert (await finished(w))["state"] == "done" and w.last_results.ef_search == 100
        w.close()

    asyncio.run(main())


def test_search_from_a_kernel_cell(
    settings: Any, indexed_engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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


# --- corners, filters, suggestions, history, previews --------------------------------------------


def test_filters_trait_is_cleaned_and_checked() -> None:
    w = PapyrusSearch()
    try:
        assert w.filters == {}
        w.filters = {"date_from": "-50", "date_to": 300.0, "place": " Hermopolis ", "collection": ""}
        assert w.filters == {"date_from": -50, "date_to": 300, "place": "Hermopolis"}
        with pytest.raises(traitlets.TraitError, match="unknown filter"):
            w.filters = {"city": "Hermopolis"}
        with pytest.raises(traitlets.TraitError, match="year"):
            w.filters = {"date_from": "3rd century"}
        assert w.filters == {"date_from": -50, "date_to": 300, "place": "Hermopolis"}
        assert clean_filters(None) == {}
        with pytest.raises(QueryError, match="dict"):
            clean_filters(["place"])
    finally:
        w.close()


def test_max_side_trait() -> None:
    w = PapyrusSearch()
    try:
        assert w.max_side == 2048 and w.get_state(["max_side"]) == {"max_side": 2048}
        w.max_side = 1024
        with pytest.raises(traitlets.TraitError, match="between"):
            w.max_side = 100
        assert w.max_side == 1024
    finally:
        w.close()


def test_suggest_corners_finds_a_photographed_papyrus() -> None:
    data, truth = warped_photo(max_side=2048)
    img = imaging.decode_image(data)
    corners = imaging.suggest_corners(img)
    assert corners is not None
    tolerance = 0.02 * max(img.size)
    for got, want in zip(corners, truth):
        assert abs(got[0] - want[0]) < tolerance and abs(got[1] - want[1]) < tolerance, (corners, truth)
    # Nothing stands out: no suggestion (the whole image is searched).
    assert imaging.suggest_corners(Image.new("RGB", (400, 300), (200, 190, 170))) is None
    assert imaging.suggest_corners(Image.new("RGB", (8, 8))) is None


def test_query_preview_is_the_deskewed_crop() -> None:
    data, truth = warped_photo(max_side=2048)
    preview = Image.open(io.BytesIO(query_preview_bytes(data, truth)))
    tl, tr, br, bl = np.array(truth)
    width = max(np.linalg.norm(tr - tl), np.linalg.norm(br - bl))
    height = max(np.linalg.norm(bl - tl), np.linalg.norm(br - tr))
    assert max(preview.size) == widget_module.PREVIEW_SIDE
    assert abs(preview.width / preview.height - width / height) < 0.01  # the shape imaging.deskew gives
    # Upright: the scan's white margins are at the crop's corners, not the dark table.
    arr = np.asarray(preview.convert("L"), dtype=np.float32)
    assert min(arr[:8, :8].mean(), arr[:8, -8:].mean(), arr[-8:, :8].mean(), arr[-8:, -8:].mean()) > 150
    whole = Image.open(io.BytesIO(query_preview_bytes(data, None)))
    assert abs(whole.width / whole.height - 2600 / 3000) < 0.02
    assert query_preview_bytes(b"not an image", None) == b""


def test_search_message_with_corners_and_filters(indexed_engine: Any) -> None:
    data, corners = warped_photo(max_side=2048)
    shuffled = [corners[2], corners[0], corners[3], corners[1]]

    async def main() -> None:
        w = PapyrusSearch(engine=indexed_engine)
        sent = capture_sends(w)
        content = {
            "type": "search",
            "request": "r1",
            "name": "photo.jpg",
            "k": 3,
            "corners": shuffled,
            "filters": {"collection": "P.Heid.", "date_from": "", "place": None},
        }
        send_from_view(w, content, [memoryview(data)])
        assert sent[0] == ({"type": "ack", "request": "r1", "ok": True}, [])
        assert w.filters == {"collection": "P.Heid."}
        final = await finished(w)
        assert final["state"] == "done", final
        assert w.results[0]["inventory_key"] == PHOTO_INVENTORY
        assert np.allclose(w.corners, corners), "ordered TL, TR, BR, BL"
        assert w.query_preview.startswith(b"\xff\xd8\xff"), "made in the kernel when the view sends none"
        assert len(w.history) == 1 and w.history[0]["corners"] is not None
        assert w.history[0]["filters"] == {"collection": "P.Heid."} and w.history_id == w.history[0]["id"]

        # Without corners the same photo is searched whole (and with this untrained model it misses).
        send_from_view(
            w, dict(content, request="r2", corners=None), [memoryview(data), memoryview(b"\xff\xd8\xffpreview")]
        )
        final = await finished(w)
        assert final["state"] == "done", final
        assert w.corners is None and w.query_preview == b"\xff\xd8\xffpreview", "the view's crop is kept"
        assert len(w.history) == 2 and w.history[1]["corners"] is None
        w.close()

    asyncio.run(main())


def test_filters_restrict_the_hits(indexed_engine: Any) -> None:
    async def main() -> None:
        w = PapyrusSearch(k=20, engine=indexed_engine)
        w.filters = {"place": "hermopolis"}
        assert w.search(QUERY) is not None, w.error
        final = await finished(w)
        assert final["state"] == "done", final
        assert w.results and all("hermopolis" in (r["place"] or "").lower() for r in w.results)

        assert w.search(QUERY, filters={"date_from": 300, "date_to": 400}) is not None, w.error
        final = await finished(w)
        assert final["state"] == "done", final
        assert w.filters == {"date_from": 300, "date_to": 400}
        for r in w.results:
            low = r["date_from"] if r["date_from"] is not None else r["date_to"]
            high = r["date_to"] if r["date_to"] is not None else r["date_from"]
            assert high >= 300 and low <= 400, r

        # A filter that nothing matches: done, no hits, no error.
        assert w.search(QUERY, filters={"collection": "P.Nowhere"}) is not None, w.error
        final = await finished(w)
        assert final["state"] == "done" and w.results == [] and w.error == ""
        w.close()

    asyncio.run(main())


def test_bad_corners_and_filters_from_the_view_are_readable_errors(indexed_engine: Any) -> None:
    async def main() -> None:
        w = PapyrusSearch(engine=indexed_engine)
        sent = capture_sends(w)
        line = [[0, 0], [100, 100], [200, 200], [300, 300]]
        send_from_view(w, {"type": "search", "request": "a", "name": "x.jpg", "corners": line}, [QUERY.read_bytes()])
        assert sent[-1][0] == {"type": "ack", "request": "a", "ok": False}
        assert w.status["state"] == "error" and "one line" in w.error and w.job is None
        send_from_view(
            w, {"type": "search", "request": "b", "name": "x.jpg", "corners": [["a", 1]]}, [QUERY.read_bytes()]
        )
        assert sent[-1][0]["ok"] is False and "four (x, y) points" in w.error
        send_from_view(
            w, {"type": "search", "request": "c", "name": "x.jpg", "filters": {"city": "x"}}, [QUERY.read_bytes()]
        )
        assert sent[-1][0]["ok"] is False and "unknown filter" in w.error
        assert "Traceback" not in w.error and "bug" not in w.error
        w.close()

    asyncio.run(main())


async def next_message(sent: list, kind: str, timeout: float = TIMEOUT) -> tuple[dict, list]:
    await wait_for(lambda: any(c.get("type") == kind for c, _ in sent), timeout, f"a {kind!r} message")
    return next((c, b) for c, b in sent if c.get("type") == kind)


def test_suggest_corners_message(indexed_engine: Any) -> None:
    data, truth = warped_photo(max_side=2048)

    async def main() -> None:
        w = PapyrusSearch(engine=indexed_engine)
        sent = capture_sends(w)
        send_from_view(w, {"type": "suggest_corners", "request": "s1", "name": "photo.jpg"}, [memoryview(data)])
        content, _ = await next_message(sent, "corners")
        assert content["request"] == "s1" and content["message"] == ""
        tolerance = 0.02 * 2048
        for got, want in zip(content["corners"], truth):
            assert abs(got[0] - want[0]) < tolerance and abs(got[1] - want[1]) < tolerance, (content, truth)
        assert w._side_futures == {}

        # A plain image: no corners, and a message that says what to do.
        sent.clear()
        blank = io.BytesIO()
        Image.new("RGB", (300, 200), (210, 200, 180)).save(blank, "PNG")
        send_from_view(w, {"type": "suggest_corners", "request": "s2", "name": "blank.png"}, [blank.getvalue()])
        content, _ = await next_message(sent, "corners")
        assert content["request"] == "s2" and content["corners"] is None and "four corners" in content["message"]

        # Not an image: the worker's readable error comes back in the reply.
        sent.clear()
        send_from_view(w, {"type": "suggest_corners", "request": "s3", "name": "bad.jpg"}, [b"not an image"])
        content, _ = await next_message(sent, "corners")
        assert content["corners"] is None and "not an image" in content["message"]
        # No image at all: answered at once.
        sent.clear()
        send_from_view(w, {"type": "suggest_corners", "request": "s4"}, [])
        assert sent[0][0]["request"] == "s4" and "no image data" in sent[0][0]["message"]
        assert w.status == {}, "a suggestion never touches the search status"
        w.close()

    asyncio.run(main())


def test_decode_message_turns_a_photo_the_browser_cannot_show_into_an_upright_jpeg(indexed_engine: Any) -> None:
    """HEIC (iPhones) and TIFF do not decode in most browsers: the view sends the file and gets
    back what the search's decoder makes of it, as a JPEG of at most ``max_side`` turned upright,
    to show, mark corners on and search with. A file the kernel cannot decode either says why."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    upright, _ = warped_photo(max_side=2600)
    img = Image.open(io.BytesIO(upright))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored lying on its side, as an iPhone does
    heic = io.BytesIO()
    img.transpose(Image.Transpose.ROTATE_90).save(heic, "HEIF", quality=85, exif=exif.tobytes())

    async def main() -> None:
        w = PapyrusSearch(engine=indexed_engine, max_side=1024)
        sent = capture_sends(w)
        send_from_view(w, {"type": "decode", "request": "d1", "name": "IMG_0002.HEIC"}, [memoryview(heic.getvalue())])
        content, buffers = await next_message(sent, "decoded")
        assert content["request"] == "d1" and content["message"] == ""
        shown = Image.open(io.BytesIO(bytes(buffers[0])))
        assert shown.format == "JPEG"
        want = (
            (round(1024 * img.width / img.height), 1024)
            if img.height > img.width
            else (1024, round(1024 * img.height / img.width))
        )
        assert abs(shown.width - want[0]) <= 1 and abs(shown.height - want[1]) <= 1, (shown.size, img.size)
        # upright: the same picture as the photo seen upright, not its stored, turned pixels
        small = np.asarray(img.convert("L").resize(shown.size), dtype=np.float64)
        got = np.asarray(shown.convert("L"), dtype=np.float64)
        assert np.abs(got - small).mean() < 12, np.abs(got - small).mean()
        assert w._side_futures == {}

        sent.clear()
        send_from_view(w, {"type": "decode", "request": "d2", "name": "scan.tif"}, [b"II*\x00 not a tiff"])
        content, buffers = await next_message(sent, "decoded")
        assert content["request"] == "d2" and "scan.tif" in content["message"] and not buffers
        sent.clear()
        send_from_view(w, {"type": "decode", "request": "d3", "name": "x.heic"}, [])
        assert sent[0][0]["request"] == "d3" and "no image data" in sent[0][0]["message"]
        assert w.status == {}, "decoding never touches the search status"
        w.close()

    asyncio.run(main())


def test_suggest_corners_from_python(indexed_engine: Any) -> None:
    data, truth = warped_photo(max_side=2048)
    w = PapyrusSearch(engine=indexed_engine)
    try:
        corners = w.suggest_corners(data)
        assert corners is not None and len(corners) == 4
        assert abs(corners[0][0] - truth[0][0]) < 40 and abs(corners[2][1] - truth[2][1]) < 40
    finally:
        w.close()


def test_history_restores_earlier_results_without_searching(indexed_engine: Any) -> None:
    other, other_inventory = other_reference(indexed_engine)

    async def main() -> None:
        w = PapyrusSearch(k=3, engine=indexed_engine)
        assert w.search(QUERY) is not None, w.error
        assert (await finished(w))["state"] == "done"
        assert w.search(other) is not None, w.error
        assert (await finished(w))["state"] == "done"
        assert [e["name"] for e in w.history] == [QUERY.name, other.name]
        assert len(w.history_previews) == 2 and all(p.startswith(b"\xff\xd8\xff") for p in w.history_previews)
        first, second = (e["id"] for e in w.history)
        assert w.history_id == second and w.results[0]["inventory_key"] == other_inventory

        seen = record_states(w)
        send_from_view(w, {"type": "restore", "id": first})
        assert w.history_id == first and w.query_name == QUERY.name and w.job is None
        assert w.results[0]["inventory_key"] == QUERY_INVENTORY and len(w.thumbnails) == 3
        # restored, not searched again: no running stage seen (two searches of equal elapsed time,
        # at the status's 10 ms resolution, leave the status as it was: no change to see at all)
        assert w.status["state"] == "done" and set(seen) <= {("done", "done")}, "restored, not searched again"
        assert w.results_frame().iloc[0]["inventory_key"] == QUERY_INVENTORY
        assert [r.query for r in w.history_results()] == [QUERY.name, other.name]

        w.restore(-1)
        assert w.history_id == second and w.results[0]["inventory_key"] == other_inventory
        send_from_view(w, {"type": "restore", "id": "no-such-search"})
        assert w.status["state"] == "error" and "history" in w.error
        with pytest.raises(QueryError):
            w.restore(7)
        w.close()

    asyncio.run(main())


def test_history_keeps_the_last_searches(indexed_engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(widget_module, "HISTORY_LIMIT", 2)

    async def main() -> None:
        w = PapyrusSearch(k=1, engine=indexed_engine)
        for _ in range(3):
            assert w.search(QUERY) is not None, w.error
            assert (await finished(w))["state"] == "done"
        assert len(w.history) == 2 and len(w.history_previews) == 2 and len(w.history_results()) == 2
        w.close()

    asyncio.run(main())


def test_preview_message_sends_a_larger_image_of_a_result(indexed_engine: Any) -> None:
    async def main() -> None:
        w = PapyrusSearch(k=2, engine=indexed_engine)
        assert w.search(QUERY) is not None, w.error
        assert (await finished(w))["state"] == "done"
        sent = capture_sends(w)
        key = w.results[0]["image_key"]
        send_from_view(w, {"type": "preview", "request": "p1", "key": key})
        content, buffers = await next_message(sent, "preview")
        assert content == {"type": "preview", "key": key, "request": "p1", "message": ""}
        image = Image.open(io.BytesIO(bytes(buffers[0])))
        assert image.format == "JPEG" and max(image.size) == min(1024, max(Image.open(QUERY).size))

        # Only images of results on show (or in the history) can be asked for.
        sent.clear()
        send_from_view(w, {"type": "preview", "request": "p2", "key": "queries/../../etc/passwd"})
        content, buffers = sent[0]
        assert content["request"] == "p2" and "not among the results" in content["message"] and buffers == []
        w.close()

    asyncio.run(main())


def test_closing_cancels_a_pending_suggestion(indexed_engine: Any) -> None:
    data, _ = warped_photo(max_side=1024)

    async def main() -> None:
        w = PapyrusSearch(engine=indexed_engine)
        sent = capture_sends(w)
        send_from_view(w, {"type": "suggest_corners", "request": "s1", "name": "photo.jpg"}, [data])
        future = w._side_futures.get("suggest")
        assert future is not None
        w.close()
        assert w._side_futures == {}
        await asyncio.sleep(0.5)
        assert not [c for c, _ in sent if c.get("type") == "corners"], "no reply after close"

    asyncio.run(main())


# --- evidence, dashboard -----------------------------------------------------------------------


def test_verified_hits_carry_their_evidence_with_the_sizes_it_refers_to(indexed_engine: Any) -> None:
    """The top hit of a photographed papyrus carries inlier matches in the pixels of the photo as
    stored and of the stored scan, with both sizes; mapped through the true perspective of the
    photo, every reference point lands on its query point. The query photo they refer to can be
    asked for by the view (query_image_key)."""
    data, corners = warped_photo(max_side=1024)
    scan = Image.open(REFERENCES / PHOTO_REFERENCE)
    w_scan, h_scan = scan.size
    scan_corners = [[0, 0], [w_scan, 0], [w_scan, h_scan], [0, h_scan]]
    truth = np.array(_coefficients(scan_corners, corners) + (1.0,)).reshape(3, 3)  # scan → photo

    async def main() -> None:
        w = PapyrusSearch(k=3, engine=indexed_engine)
        assert w.search(data, corners=corners) is not None, w.error
        assert (await finished(w))["state"] == "done", w.status
        top = w.results[0]
        assert top["inventory_key"] == PHOTO_INVENTORY
        assert top["query_size"] == list(Image.open(io.BytesIO(data)).size)
        assert top["reference_size"] == [w_scan, h_scan]
        assert top["inliers"] > 12 and len(top["matches"]) == min(top["inliers"], 50)
        tolerance = 0.02 * max(top["query_size"])
        for qx, qy, rx, ry in top["matches"]:
            assert 0 <= qx < top["query_size"][0] and 0 <= qy < top["query_size"][1]
            assert 0 <= rx < w_scan and 0 <= ry < h_scan
            u, v, s = truth @ np.array([rx + 0.5, ry + 0.5, 1.0])
            assert abs(u / s - 0.5 - qx) < tolerance and abs(v / s - 0.5 - qy) < tolerance, (qx, qy, rx, ry)
        for hit in w.results:  # every verified hit: sizes with its matches; never matches without sizes
            if hit["matches"]:
                assert hit["query_size"] == top["query_size"] and hit["reference_size"]

        # The query photo the matches refer to: stored by the search, sent on request, upright.
        assert w.query_image_key.startswith("queries/")
        assert w.history[-1]["id"] == w.history_id
        sent = capture_sends(w)
        send_from_view(w, {"type": "preview", "request": "q1", "key": w.query_image_key})
        content, buffers = await next_message(sent, "preview")
        assert content == {"type": "preview", "key": w.query_image_key, "request": "q1", "message": ""}
        photo = Image.open(io.BytesIO(bytes(buffers[0])))
        assert photo.size == tuple(top["query_size"]), "a photo of at most 1024 px comes as it is"

        # Restoring an earlier search brings back its query photo's key too.
        first_key = w.query_image_key
        assert w.search(QUERY) is not None, w.error
        assert w.query_image_key == "", "no photo key while another search runs"
        assert (await finished(w))["state"] == "done"
        assert w.query_image_key not in ("", first_key)
        w.restore(0)
        assert w.query_image_key == first_key and w.results[0]["inventory_key"] == PHOTO_INVENTORY
        w.close()

    asyncio.run(main())


def test_dashboard_link_shows_once_the_cluster_runs(indexed_engine: Any) -> None:
    async def main() -> None:
        w = PapyrusSearch(k=2, engine=indexed_engine)
        assert w.dashboard_link == "", "constructing the widget starts nothing"
        assert w.search(QUERY) is not None, w.error
        link = indexed_engine.client.dashboard_link
        assert link.startswith("http") and w.dashboard_link == link
        assert (await finished(w))["state"] == "done"
        w.close()

    asyncio.run(main())


def test_verdict_and_region_of_a_search_without_corners(indexed_engine: Any) -> None:
    """A reference scan searched as it is (no corners): the top hit is confirmed, the widget's
    ``verdict`` says so and ``region`` is where the scan lies in itself (its whole outline);
    searching again with those corners finds it again. A photo of nothing in the collection says
    plainly that no match is confirmed. The verdict is cleared while a search runs and comes back
    with a restored entry."""
    size = Image.open(QUERY).size
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(7).integers(0, 255, (600, 800, 3), dtype=np.uint8)).save(noise, "JPEG")

    async def main() -> None:
        w = PapyrusSearch(k=3, engine=indexed_engine)
        assert w.verdict == "" and w.region is None
        assert w.search(QUERY) is not None, w.error
        assert w.verdict == "", "no verdict while the search runs"
        assert (await finished(w))["state"] == "done", w.status
        top = w.results[0]
        assert top["inventory_key"] == QUERY_INVENTORY and top["confirmed"] is True and top["score"] >= 0.5
        assert w.verdict == w.last_results.verdict
        assert w.verdict.startswith("confirmed: ") and f"{top['inliers']} keypoints agree" in w.verdict, w.verdict
        assert top["query_size"] == list(size)
        region = w.region
        assert region is not None and region == top["region"] and len(region) == 4
        whole = [[0, 0], [size[0], 0], [size[0], size[1]], [0, size[1]]]
        tolerance = 0.02 * max(size)
        for (x, y), (u, v) in zip(region, whole):
            assert abs(x - u) < tolerance and abs(y - v) < tolerance, region
        first_verdict = w.verdict

        # The region as corners (what the view offers to adjust): the same papyrus again.
        assert w.search(corners=region) is not None, w.error
        assert (await finished(w))["state"] == "done", w.status
        assert w.results[0]["inventory_key"] == QUERY_INVENTORY and w.results[0]["confirmed"] is True
        assert w.history[-1]["corners"] is not None

        # Nothing of the collection on the photo: plainly no confirmed match.
        assert w.search(noise.getvalue()) is not None, w.error
        assert (await finished(w))["state"] == "done", w.status
        assert w.results and not any(h["confirmed"] for h in w.results)
        assert all(h["score"] < 0.5 and h["region"] is None for h in w.results)
        assert w.verdict.startswith("no confirmed match in this collection"), w.verdict
        assert w.region is None

        w.restore(0)
        assert w.verdict == first_verdict and w.region == region
        w.close()

    asyncio.run(main())


def test_the_first_looks_answer_is_shown_while_a_second_look_runs(indexed_engine: Any) -> None:
    """A search whose first look confirms nothing near the photo's middle gets a second look; while
    that runs (held here on a Dask event), the job hands out the first look's answer
    (``SearchJob.interim_hits``) and the widget's poll shows it with a verdict that says it is
    provisional; the job's end replaces it. Real futures on the test cluster."""
    from distributed import Event

    from papyrus_widgets import tasks

    engine = indexed_engine
    client = engine.client
    settings = engine.resolved_settings()
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(11).integers(0, 255, (900, 1200, 3), dtype=np.uint8)).save(noise, "JPEG")
    _, key = engine._store_query(noise.getvalue(), "noise.jpg")
    prep = tasks.prepare_task(settings, key, "noise.jpg", None)
    vec = tasks.embed_task(settings, prep)
    hits = tasks.search_task(settings, vec, 3, None, None, prep, 10)
    gate = f"papyrus-test-gate-{time.monotonic_ns()}"

    def held(look: Any, gate: str) -> Any:  # the second look, held until the test lets it go
        from distributed import Event as WorkerEvent

        WorkerEvent(gate).wait(timeout=120)
        return look.hits

    look = client.submit(tasks.first_look_task, settings, key, "noise.jpg", hits, 3, prep, pure=False)
    final = client.submit(held, look, gate, pure=False)
    job = tasks.SearchJob(client, [("verifying", look), ("verifying", final)], "noise.jpg", query_key=key)
    w = PapyrusSearch(k=3, engine=engine)
    try:
        deadline = time.monotonic() + TIMEOUT
        while look.status != "finished" and time.monotonic() < deadline:
            time.sleep(0.05)
        interim = job.interim_hits()
        assert interim is not None and len(interim) == 3 and not any(h.confirmed for h in interim)
        assert job.status()["stage"] == "verifying" and not job.done()
        w._job, w._pending = job, {"query_key": key}
        w._tick(job)  # one poll, as the kernel's loop runs it every POLL_SECONDS
        assert [r["image_key"] for r in w.results] == [h.image_key for h in interim]
        assert len(w.thumbnails) == 3
        assert w.verdict.startswith(widget_module.INTERIM_PREFIX + " no confirmed match in this collection"), w.verdict
        assert w.status["state"] == "running"
        Event(gate, client=client).set()
        final.result(timeout=TIMEOUT)
        assert job.interim_hits() is None  # done: the job's hits are the answer now
        w._finish(job)
        assert w.status["state"] == "done" and w.verdict.startswith("no confirmed match in this collection")
        assert w.history and w.history[-1]["count"] == 3

        # cancelled while the second look runs: the first look's answer stays, and says what it is
        again = client.submit(held, look, gate + "-2", pure=False)
        job2 = tasks.SearchJob(client, [("verifying", look), ("verifying", again)], "noise.jpg", query_key=key)
        w._job, w._pending = job2, {"query_key": key}
        w._tick(job2)
        assert w.verdict.startswith(widget_module.INTERIM_PREFIX), w.verdict
        w.cancel()
        assert w.status["state"] == "cancelled"
        assert w.verdict.startswith("cancelled during a second look; the first look's answer: no confirmed match")
        assert [r["image_key"] for r in w.results] == [h.image_key for h in interim]

        # a second look that fails: the error, and the first look's answer said for what it is
        def failing(look: Any, gate: str) -> Any:
            from distributed import Event as WorkerEvent

            WorkerEvent(gate).wait(timeout=120)
            raise RuntimeError("the second look broke")

        look3 = client.submit(tasks.first_look_task, settings, key, "noise.jpg", hits, 3, prep, pure=False)
        broken = client.submit(failing, look3, gate + "-3", pure=False)
        job3 = tasks.SearchJob(client, [("verifying", look3), ("verifying", broken)], "noise.jpg", query_key=key)
        look3.result(timeout=TIMEOUT)  # the cancel above took the first look's future with it
        w._job, w._pending = job3, {"query_key": key}
        w._tick(job3)
        assert w.verdict.startswith(widget_module.INTERIM_PREFIX), w.verdict
        Event(gate + "-3", client=client).set()
        with pytest.raises(RuntimeError):
            broken.result(timeout=TIMEOUT)
        w._finish(job3)
        assert w.status["state"] == "error" and "second look broke" in w.error
        assert w.verdict.startswith("the second look failed; the first look's answer: no confirmed match"), w.verdict
    finally:
        for g in (gate, gate + "-2", gate + "-3"):
            Event(g, client=client).set()
        w.close()
