"""The widget in a real JupyterLab, driven by headless Chromium (Playwright, sync API).

Starts ``jupyter lab`` with this venv's Python on a free port with a random token, opens a
notebook that shows ``PapyrusSearch()`` and drives it as a scholar would: picks, drops and pastes
images, marks the four corners of a photographed papyrus (and lets the worker suggest them),
searches, compares, exports, goes back in the history, cancels, and switches to the dark theme.
The kernel reads the same data directory and model as the test session's ``settings`` (the
embedded PostgreSQL under it is shared between the two processes).

The Notebook 7 test starts ``jupyter notebook`` the same way (one helper,
:func:`tests.realservers.jupyter_server`, which the browser benchmark uses too)
and searches there too. The presigned-URL test opens a second notebook whose widget uses moto's S3
server (``realservers.s3``) with ``presigned_urls=True``.

Needs ``/usr/bin/chromium`` (Debian package ``chromium``; never ``playwright install``).
Screenshots go to ``test-output/browser/``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest

from .conftest import HGV_DIR, REFERENCES
from .realservers import (  # noqa: F401 - the s3 fixture (moto's S3 server on 127.0.0.1)
    CHROMIUM,
    CHROMIUM_ARGS,
    S3Server,
    jupyter_server,
    open_and_run_notebook,
    s3,
    write_notebook,
)
from .test_widget import PHOTO_INVENTORY, PHOTO_SIZE, warped_photo

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "test-output" / "browser"
QUERY = REFERENCES / "19331_p_g_107.jpg"
QUERY_INVENTORY = "p_g_107"
OTHER = REFERENCES / "21114_p_g_24.jpg"
OTHER_INVENTORY = "p_g_24"

RESULTS_TIMEOUT = 60_000  # ms until result cards show (first search starts the kernel's services)

# Browser console messages that are JupyterLab's own noise, not the widget's. Each entry is a
# regular expression matched against the message text; keep this list short and explained.
BENIGN_CONSOLE_ERRORS: list[tuple[str, str]] = []

# Uncaught page errors of a front end's own code, not the widget's: (message regex, regex the
# *first* stack frame must match, why). Keep this list short and explained.
BENIGN_PAGE_ERRORS: list[tuple[str, str, str]] = [
    (
        r"^Cannot read properties of undefined \(reading 'schema'\)$",
        r"/static/notebook/notebook_core\.[0-9a-f]+\.js",
        "Notebook 7.6.5: its shortcuts plugin reads the schema of a plugin it has not registered when the "
        "notebook page loads the settings of @jupyterlab/codemirror-extension:plugin and "
        "@jupyterlab/notebook-extension:panel, before any cell runs (no widget on the page yet)",
    ),
]


def benign_page_error(message: str, stack: str) -> bool:
    frames = [line.strip() for line in stack.splitlines() if line.strip().startswith("at ")]
    return bool(frames) and any(
        re.search(rx, message) is not None and re.search(where, frames[0]) is not None
        for rx, where, _ in BENIGN_PAGE_ERRORS
    )


def test_only_the_listed_front_end_errors_are_benign() -> None:
    """The allowance for Notebook 7's own page error cannot hide an error of the widget."""
    message = "Cannot read properties of undefined (reading 'schema')"
    core = "TypeError: x\n    at http://127.0.0.1:1/static/notebook/notebook_core.c9a6d9df5de5df84.js?v=1:501:207"
    assert benign_page_error(message, core)
    widget_js = "TypeError: x\n    at http://127.0.0.1:1/files/widget.js:12:3\n" + core.split("\n", 1)[1]
    assert not benign_page_error(message, widget_js), "only when the error is thrown in Notebook's own code"
    assert not benign_page_error("Cannot read properties of undefined (reading 'corners')", core)
    assert not benign_page_error(message, "")


def require_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")


@pytest.fixture(scope="session")
def lab(settings: Any, indexed_engine: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A running JupyterLab over the indexed data dir."""
    require_chromium()
    with jupyter_server("lab", settings, tmp_path_factory.mktemp("jupyter")) as server:
        yield server


@pytest.fixture(scope="session")
def notebook7(settings: Any, indexed_engine: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A running Jupyter Notebook 7 over the indexed data dir."""
    require_chromium()
    with jupyter_server("notebook", settings, tmp_path_factory.mktemp("notebook7")) as server:
        yield server


@pytest.fixture()
def page() -> Iterator[Any]:
    """A Chromium page; fails the test on any console error or uncaught page error."""
    from playwright.sync_api import sync_playwright

    require_chromium()
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1100})
            pg = context.new_page()

            def on_console(msg: Any) -> None:
                if msg.type == "error" and not any(re.search(rx, msg.text) for rx, _ in BENIGN_CONSOLE_ERRORS):
                    errors.append(f"console: {msg.text} ({msg.location.get('url', '')})")

            def on_page_error(exc: Any) -> None:
                stack = str(getattr(exc, "stack", "") or "")
                if not benign_page_error(str(exc), stack):
                    errors.append(f"pageerror: {exc}\n{stack}")

            pg.on("console", on_console)
            pg.on("pageerror", on_page_error)
            pg.console_errors = errors  # type: ignore[attr-defined]
            yield pg
        finally:
            browser.close()
    assert not errors, "browser errors:\n" + "\n".join(errors)


def wait_for_cards(page: Any, widget: Any, lab: dict[str, Any], name: str) -> Any:
    """Wait for result cards; on a timeout, fail with the status line, a screenshot and the server log."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    cards = widget.get_by_test_id("result-card")
    try:
        cards.first.wait_for(timeout=RESULTS_TIMEOUT)
    except PlaywrightTimeout:
        OUTPUT.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(OUTPUT / f"failure-{name}.png"))
        status = widget.get_by_test_id("status").inner_text()
        outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
        pytest.fail(
            f"no result cards after {RESULTS_TIMEOUT / 1000:.0f} s; status line: {status!r}; "
            f"cell outputs: {outputs!r}; console errors: {page.console_errors!r}\n"
            f"server log:\n{Path(lab['log']).read_text(errors='replace')[-6000:]}"
        )
    return cards


def test_search_in_jupyterlab(page: Any, lab: dict[str, Any]) -> None:
    widget = open_and_run_notebook(page, lab)
    search = widget.get_by_test_id("search-button")
    cancel = widget.get_by_test_id("cancel-button")
    status = widget.get_by_test_id("status")
    assert search.is_disabled(), "Search must wait for an image"
    assert cancel.is_disabled(), "Cancel is only for a running search"
    assert widget.get_by_label("Papyrus image").count() == 1, "the file input is labelled"
    assert widget.get_by_label("Results").input_value() == "8"

    widget.get_by_test_id("file-input").set_input_files(str(QUERY))
    assert search.is_enabled()
    search.click()

    cards = wait_for_cards(page, widget, lab, "light")
    page.wait_for_function(
        "el => el.dataset.state === 'done'", arg=status.element_handle(), timeout=RESULTS_TIMEOUT
    )
    assert re.fullmatch(r"done in \d+\.\d s", status.inner_text().strip()), status.inner_text()
    assert cards.count() == 8
    first = cards.first
    assert first.get_attribute("data-inventory-key") == QUERY_INVENTORY
    assert first.get_by_test_id("result-inventory").inner_text().strip()
    assert first.get_by_test_id("result-rank").inner_text().strip() == "#1"
    assert re.fullmatch(r"[01]\.\d{3}", first.get_by_test_id("result-score").inner_text().strip())
    # Thumbnails came through the comm as binary buffers and decoded as images.
    thumb = first.get_by_test_id("result-thumbnail")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle(), timeout=10_000)
    assert thumb.get_attribute("src").startswith("blob:")
    links = first.get_by_test_id("result-link")
    if links.count():
        assert links.get_attribute("target") == "_blank" and "noopener" in links.get_attribute("rel")
    assert cancel.is_disabled()
    assert widget.get_by_test_id("query-name").inner_text().strip() == f"Query: {QUERY.name}"

    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1280, "height": 1800})  # tall enough for the photo and the first results
    widget.scroll_into_view_if_needed()
    page.screenshot(path=str(OUTPUT / "widget-light.png"))

    # The same widget in the dark theme (a theme switch does not reload the page).
    page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})")
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'", timeout=30_000)
    page.wait_for_timeout(500)
    widget.scroll_into_view_if_needed()
    page.screenshot(path=str(OUTPUT / "widget-dark.png"))
    # Dark theme: the widget follows JupyterLab's variables (no light panels left behind).
    background = widget.evaluate("el => getComputedStyle(el).backgroundColor")
    assert sum(int(c) for c in re.findall(r"\d+", background)[:3]) < 3 * 100, background
    page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Light'})")
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'true'", timeout=30_000)
    page.set_viewport_size({"width": 1280, "height": 1100})


def test_corrupt_upload_shows_an_alert_and_recovers(page: Any, lab: dict[str, Any], tmp_path: Path) -> None:
    widget = open_and_run_notebook(page, lab)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    widget.get_by_test_id("file-input").set_input_files(str(bad))
    widget.get_by_test_id("search-button").click()
    alert = widget.get_by_role("alert")
    alert.wait_for(timeout=RESULTS_TIMEOUT)
    assert "not an image" in alert.inner_text()
    assert widget.get_by_test_id("result-card").count() == 0

    widget.get_by_test_id("file-input").set_input_files(str(QUERY))
    # Keyboard only: type k, then Enter on the focused Search button (JupyterLab's command-mode
    # shortcuts must not swallow the keys).
    widget.get_by_label("Results").focus()
    page.keyboard.press("Control+A")
    page.keyboard.type("3")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.dataset.testid") == "search-button"
    page.keyboard.press("Enter")
    cards = wait_for_cards(page, widget, lab, "recover")
    assert widget.get_by_role("alert").count() == 0
    assert cards.count() == 3
    assert cards.first.get_attribute("data-inventory-key") == QUERY_INVENTORY


def kernel_execute(page: Any, code: str) -> None:
    """Run ``code`` in the notebook's kernel (as a hidden cell would); fail on a Python error."""
    reply = page.evaluate(
        """async (code) => {
            const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
            const future = kernel.requestExecute({ code, stop_on_error: true, store_history: false });
            let error = null;
            future.onIOPub = (msg) => {
                if (msg.header.msg_type === 'error') error = `${msg.content.ename}: ${msg.content.evalue}`;
            };
            const done = await future.done;
            return { status: done.content.status, error };
        }""",
        code,
    )
    assert reply["status"] == "ok", f"kernel code failed: {reply['error']}\n{code}"


def wait_state(page: Any, widget: Any, state: str, timeout: float = RESULTS_TIMEOUT) -> str:
    """Wait until the status line is in ``state`` (idle, running, done, error, cancelled); its text."""
    status = widget.get_by_test_id("status")
    page.wait_for_function("([el, s]) => el.dataset.state === s", arg=[status.element_handle(), state], timeout=timeout)
    return status.inner_text().strip()


def wait_history(page: Any, widget: Any, lab: dict[str, Any], count: int, name: str) -> None:
    """Wait until the history strip holds ``count`` searches; on a timeout, fail with what shows."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            "([el, n]) => el.children.length === n",
            arg=[widget.get_by_test_id("history").element_handle(), count],
            timeout=RESULTS_TIMEOUT,
        )
    except PlaywrightTimeout:
        OUTPUT.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(OUTPUT / f"failure-{name}.png"))
        pytest.fail(
            f"the history did not reach {count} searches; status line: "
            f"{widget.get_by_test_id('status').inner_text()!r}; console errors: {page.console_errors!r}\n"
            f"server log:\n{Path(lab['log']).read_text(errors='replace')[-4000:]}"
        )


def step_states(widget: Any) -> dict[str, str]:
    items = widget.get_by_test_id("stages").locator("li")
    return {
        items.nth(i).get_attribute("data-step"): items.nth(i).get_attribute("data-state") for i in range(items.count())
    }


def file_payload(path: Path) -> dict[str, str]:
    import base64

    return {"b64": base64.b64encode(path.read_bytes()).decode(), "name": path.name, "type": "image/jpeg"}


def drop_file(widget: Any, path: Path) -> None:
    """Drop ``path`` onto the widget's drop zone: dragenter, dragover, drop with a real DataTransfer."""
    widget.get_by_test_id("drop-zone").evaluate(
        """(zone, f) => {
            const bytes = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], f.name, { type: f.type }));
            for (const type of ['dragenter', 'dragover', 'drop']) {
                zone.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: dt }));
            }
        }""",
        file_payload(path),
    )


def paste_file(widget: Any, path: Path) -> None:
    """Paste ``path`` as an image on the clipboard while the widget has the focus."""
    widget.get_by_test_id("k-input").focus()
    widget.get_by_test_id("k-input").evaluate(
        """(input, f) => {
            const bytes = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], 'image.png', { type: f.type }));
            input.dispatchEvent(new ClipboardEvent('paste', { bubbles: true, cancelable: true, clipboardData: dt }));
        }""",
        file_payload(path),
    )


def canvas_point(canvas: Any, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of image pixel (x, y) on the corner canvas (which shows the whole photo)."""
    box = canvas.bounding_box()
    width, height = int(canvas.get_attribute("data-image-width")), int(canvas.get_attribute("data-image-height"))
    return box["x"] + x * box["width"] / width, box["y"] + y * box["height"] / height


def canvas_corners(canvas: Any) -> list[list[float]]:
    return json.loads(canvas.get_attribute("data-corners") or "[]")


def assert_near(got: list[list[float]], want: list[list[float]], tolerance: float) -> None:
    assert len(got) == len(want) == 4, got
    for g, w in zip(got, want):
        assert abs(g[0] - w[0]) <= tolerance and abs(g[1] - w[1]) <= tolerance, (got, want, tolerance)


def test_compare_export_and_keyboard(page: Any, lab: dict[str, Any], tmp_path: Path) -> None:
    widget = open_and_run_notebook(page, lab)
    widget.get_by_test_id("file-input").set_input_files(str(QUERY))
    widget.get_by_test_id("search-button").click()
    cards = wait_for_cards(page, widget, lab, "compare")
    wait_state(page, widget, "done")
    assert set(step_states(widget).values()) == {"done"}
    assert widget.get_by_test_id("history-item").count() == 1

    # Click a result: query (as searched) and result side by side; a larger image replaces the thumbnail.
    cards.first.get_by_test_id("result-open").click()
    compare = widget.get_by_test_id("compare")
    compare.wait_for(state="visible", timeout=10_000)
    for name in ("compare-query", "compare-result"):
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0",
            arg=widget.get_by_test_id(name).element_handle(),
            timeout=10_000,
        )
    result_img = widget.get_by_test_id("compare-result")
    page.wait_for_function("img => img.dataset.size === 'large'", arg=result_img.element_handle(), timeout=60_000)
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 256", arg=result_img.element_handle(), timeout=10_000
    )
    assert "#1" in widget.get_by_test_id("compare").inner_text()

    # The verification evidence: query photo and reference side by side, one line per inlier pair
    # the kernel sent, drawn over the large reference image.
    evidence = widget.get_by_test_id("evidence-canvas")
    drawn = "c => c.dataset.state === 'drawn' && c.dataset.reference === 'large'"
    page.wait_for_function(drawn, arg=evidence.element_handle(), timeout=60_000)
    lines = int(evidence.get_attribute("data-lines"))
    inliers = int(evidence.get_attribute("data-inliers"))
    assert 12 < inliers and 0 < lines == min(inliers, 50), (lines, inliers)
    kernel_execute(
        page,
        f"top = w.results[0]\nassert len(top['matches']) == {lines} and top['inliers'] == {inliers}, top['inliers']\n"
        "assert top['query_size'] and top['reference_size']",
    )
    caption = widget.get_by_test_id("evidence-caption").inner_text().strip()
    assert caption.startswith(f"Confirmed: {inliers} matching keypoints agree on one geometry"), caption
    box = evidence.bounding_box()
    assert box["width"] > 300 and box["height"] > 100, box
    # The canvas shows pixels (both images drawn), not an empty surface.
    assert evidence.evaluate(
        "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n / (d.length / 4); }"
    ) > 0.5
    OUTPUT.mkdir(parents=True, exist_ok=True)
    compare.scroll_into_view_if_needed()
    page.screenshot(path=str(OUTPUT / "widget-compare.png"))
    evidence.screenshot(path=str(OUTPUT / "widget-evidence.png"))

    # The Dask dashboard of the kernel's cluster is one click away.
    dashboard = widget.get_by_test_id("dashboard-link")
    assert dashboard.is_visible() and re.match(r"https?://", dashboard.get_attribute("href") or "")
    assert dashboard.get_attribute("target") == "_blank" and "noopener" in dashboard.get_attribute("rel")
    kernel_execute(page, f"assert w.dashboard_link == {dashboard.get_attribute('href')!r}, w.dashboard_link")
    page.keyboard.press("Escape")
    compare.wait_for(state="hidden", timeout=5_000)
    assert page.evaluate("() => document.activeElement.dataset.testid") == "result-open", "focus returns to the card"

    # Export: CSV and JSON built in the browser from the results.
    with page.expect_download() as info:
        widget.get_by_test_id("export-csv").click()
    csv_path = tmp_path / info.value.suggested_filename
    info.value.save_as(csv_path)
    assert csv_path.name == "papyrus-results-19331_p_g_107.csv"
    lines = csv_path.read_text(encoding="utf-8-sig").splitlines()
    assert lines[0].startswith("rank,score,inventory,") and len(lines) == 1 + cards.count()
    assert ",p_g_107," in lines[1]
    with page.expect_download() as info:
        widget.get_by_test_id("export-json").click()
    exported = json.loads(Path(info.value.path()).read_text(encoding="utf-8"))
    assert exported["query"] == QUERY.name and exported["hits"][0]["inventory_key"] == QUERY_INVENTORY

    # Filters: Enter in a filter field searches with them.
    widget.get_by_test_id("filters-toggle").click()
    widget.get_by_label("Place").fill("Hermopolis")
    widget.get_by_label("Place").press("Enter")
    wait_history(page, widget, lab, 2, "filters")
    wait_state(page, widget, "done")
    places = widget.get_by_test_id("result-meta").all_inner_texts()
    assert places and all("hermopolis" in p.lower() for p in places), places
    assert widget.get_by_test_id("filters-toggle").inner_text().strip() == "Filters (1)"
    kernel_execute(page, "assert w.filters == {'place': 'Hermopolis'}, w.filters")


CHOSEN_FILE_NAME = "() => document.querySelector('.papyrus-search [data-testid=\"file-input\"]').files[0].name"


def test_drop_paste_and_history(page: Any, lab: dict[str, Any]) -> None:
    widget = open_and_run_notebook(page, lab)
    drop_file(widget, QUERY)
    widget.get_by_test_id("editor").wait_for(state="visible", timeout=10_000)
    assert widget.get_by_test_id("chosen-name").inner_text().startswith(QUERY.name)
    assert page.evaluate(CHOSEN_FILE_NAME) == QUERY.name
    widget.get_by_test_id("search-button").click()
    cards = wait_for_cards(page, widget, lab, "drop")
    wait_state(page, widget, "done")
    assert cards.first.get_attribute("data-inventory-key") == QUERY_INVENTORY

    paste_file(widget, OTHER)
    page.wait_for_function(
        "el => el.textContent.startsWith('pasted-image.jpg')", arg=widget.get_by_test_id("chosen-name").element_handle()
    )
    assert page.evaluate(CHOSEN_FILE_NAME) == "pasted-image.jpg"
    widget.get_by_test_id("search-button").click()
    history = widget.get_by_test_id("history-item")
    wait_history(page, widget, lab, 2, "paste")
    wait_state(page, widget, "done")
    assert widget.get_by_test_id("query-name").inner_text().strip() == "Query: pasted-image.jpg"
    assert cards.first.get_attribute("data-inventory-key") == OTHER_INVENTORY
    assert history.nth(1).get_attribute("aria-pressed") == "true"

    # Back to the first result set, without searching again.
    history.nth(0).click()
    page.wait_for_function(
        "([el, key]) => el.querySelector('[data-testid=result-card]')?.dataset.inventoryKey === key",
        arg=[widget.get_by_test_id("results").element_handle(), QUERY_INVENTORY],
        timeout=10_000,
    )
    assert history.nth(0).get_attribute("aria-pressed") == "true"
    assert widget.get_by_test_id("query-name").inner_text().strip() == f"Query: {QUERY.name}"
    assert re.fullmatch(r"done in \d+\.\d s", wait_state(page, widget, "done"))
    kernel_execute(page, f"assert w.results[0]['inventory_key'] == {QUERY_INVENTORY!r}, w.results[0]")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    widget.get_by_test_id("history").scroll_into_view_if_needed()
    page.screenshot(path=str(OUTPUT / "widget-history.png"))


def search_until_the_region_is_offered(page: Any, widget: Any, canvas: Any) -> Any:
    """Search the chosen photo without corners until the region found is offered as corners on
    ``canvas`` and the search is done; the top card must be the photo's papyrus, confirmed.
    Returns the result cards."""
    widget.get_by_test_id("search-button").click()
    page.wait_for_function(
        "c => c.dataset.count === '4' && c.dataset.source === 'region'",
        arg=canvas.element_handle(),
        timeout=RESULTS_TIMEOUT,
    )
    wait_state(page, widget, "done")
    cards = widget.get_by_test_id("result-card")
    assert cards.first.get_attribute("data-inventory-key") == PHOTO_INVENTORY
    assert cards.first.get_by_test_id("result-badge").inner_text().strip() == "✓ Confirmed"
    return cards


def test_four_corner_crop_of_a_photographed_papyrus(page: Any, lab: dict[str, Any], tmp_path: Path) -> None:
    # 2600 x 3000 as seen, stored on its side with EXIF orientation 6 (as phones do): the browser
    # shows it upright and sends it upright, downscaled to 2048.
    import io

    from PIL import Image

    data, truth = warped_photo()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    photo = tmp_path / "photo.jpg"
    upright = Image.open(io.BytesIO(data)).transpose(Image.Transpose.ROTATE_90)
    upright.save(photo, "JPEG", quality=90, exif=exif.tobytes())
    assert Image.open(photo).size == (PHOTO_SIZE[1], PHOTO_SIZE[0])
    widget = open_and_run_notebook(page, lab)
    widget.get_by_test_id("file-input").set_input_files(str(photo))
    canvas = widget.get_by_test_id("corner-canvas")
    canvas.wait_for(state="visible", timeout=10_000)
    page.wait_for_function("c => c.dataset.imageWidth === '2600'", arg=canvas.element_handle(), timeout=10_000)
    assert "sent as 1775 × 2048" in widget.get_by_test_id("chosen-name").inner_text()
    canvas.scroll_into_view_if_needed()
    tolerance = 1.5 * PHOTO_SIZE[1] / canvas.bounding_box()["height"]  # 1.5 display pixels in photo pixels

    # The worker suggests the corners (in the downscaled copy's pixels; shown in the photo's).
    widget.get_by_test_id("suggest-button").click()
    page.wait_for_function(
        "c => c.dataset.count === '4' && c.dataset.suggested === 'true'",
        arg=canvas.element_handle(),
        timeout=RESULTS_TIMEOUT,
    )
    assert_near(canvas_corners(canvas), truth, 0.02 * max(PHOTO_SIZE))
    widget.get_by_test_id("reset-button").click()
    assert canvas.get_attribute("data-count") == "0"

    # Click the four corners in a scrambled order, the first one off target, then drag it there.
    order = [2, 0, 3, 1]
    off = canvas_point(canvas, truth[2][0] - 60, truth[2][1] - 90)
    page.mouse.click(*off)
    for i in order[1:]:
        page.mouse.click(*canvas_point(canvas, *truth[i]))
    assert canvas.get_attribute("data-count") == "4"
    page.mouse.move(*canvas_point(canvas, truth[2][0] - 60, truth[2][1] - 90))
    page.mouse.down()
    page.mouse.move(*canvas_point(canvas, *truth[2]), steps=6)
    page.mouse.up()
    assert_near(canvas_corners(canvas), truth, tolerance)  # ordered TL, TR, BR, BL
    assert widget.get_by_test_id("preview-canvas").get_attribute("data-mode") == "deskewed"
    assert "Four corners marked" in widget.get_by_test_id("corner-hint").inner_text()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / "widget-corners.png"))

    widget.get_by_test_id("search-button").click()
    cards = wait_for_cards(page, widget, lab, "corners")
    wait_state(page, widget, "done")
    assert cards.first.get_attribute("data-inventory-key") == PHOTO_INVENTORY
    # The kernel confirmed it: the card says so in words, and so does the verdict line.
    assert cards.first.get_by_test_id("result-badge").inner_text().strip() == "✓ Confirmed"
    assert widget.get_by_test_id("verdict").inner_text().startswith("Confirmed: ")
    # The kernel got the downscaled copy and the corners in its pixels.
    scale = 2048 / PHOTO_SIZE[1]
    kernel_execute(
        page,
        "import io\nfrom PIL import Image\n"
        "assert Image.open(io.BytesIO(w.query)).size == (1775, 2048), Image.open(io.BytesIO(w.query)).size\n"
        f"want = {[[x * scale, y * scale] for x, y in truth]!r}\n"
        f"assert all(abs(a - b) <= {tolerance * scale + 1:.2f}\n"
        "           for p, q in zip(w.corners, want) for a, b in zip(p, q)), w.corners\n"
        "assert w.history[-1]['corners'] is not None",
    )
    widget.scroll_into_view_if_needed()
    page.screenshot(path=str(OUTPUT / "widget-corners-results.png"))

    # The evidence on the photo: the whole photo as sent (upright), the scan, and the keypoints
    # that agree on one perspective.
    cards.first.get_by_test_id("result-open").click()
    evidence = widget.get_by_test_id("evidence-canvas")
    drawn = "c => c.dataset.state === 'drawn' && c.dataset.reference === 'large'"
    page.wait_for_function(drawn, arg=evidence.element_handle(), timeout=60_000)
    lines = int(evidence.get_attribute("data-lines"))
    kernel_execute(
        page, f"top = w.results[0]\nassert len(top['matches']) == {lines} > 0 and top['query_size'] == [1775, 2048]"
    )
    assert evidence.get_attribute("data-region") == "true", "the region found is outlined on the photo"
    assert widget.get_by_test_id("evidence-caption").inner_text().startswith("Confirmed: ")
    evidence.scroll_into_view_if_needed()
    widget.get_by_test_id("evidence").screenshot(path=str(OUTPUT / "widget-evidence-photo.png"))

    # Without corners the search finds where the papyrus is: its region comes back as suggested
    # corners (from the downscaled copy's pixels to the photo's), ready to adjust and search again.
    widget.get_by_test_id("compare-close").click()
    widget.get_by_test_id("reset-button").click()
    assert canvas.get_attribute("data-count") == "0"
    search_until_the_region_is_offered(page, widget, canvas)
    kernel_execute(page, "assert w.history[-1]['corners'] is None and w.region is not None, w.verdict")
    assert_near(canvas_corners(canvas), truth, 0.02 * max(PHOTO_SIZE))
    assert widget.get_by_test_id("corner-hint").inner_text().startswith("Region found: drag the corners to adjust")
    widget.scroll_into_view_if_needed()
    page.screenshot(path=str(OUTPUT / "widget-region.png"))


def test_an_iphone_heic_photo_is_shown_and_its_region_found(page: Any, lab: dict[str, Any], tmp_path: Path) -> None:
    """Chromium cannot decode HEIC, what iPhones save: the kernel decodes it (upright, as its EXIF
    orientation says) and the view shows that JPEG, marks corners on it and searches with it; a
    search without corners then offers the region found as corners on it."""
    import io

    import pillow_heif
    from PIL import Image

    pillow_heif.register_heif_opener()
    data, truth = warped_photo()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored lying on its side
    photo = tmp_path / "IMG_0002.HEIC"
    Image.open(io.BytesIO(data)).transpose(Image.Transpose.ROTATE_90).save(
        photo, "HEIF", quality=85, exif=exif.tobytes()
    )
    widget = open_and_run_notebook(page, lab)
    widget.get_by_test_id("file-input").set_input_files(str(photo))
    canvas = widget.get_by_test_id("corner-canvas")
    canvas.wait_for(state="visible", timeout=RESULTS_TIMEOUT)
    # the kernel's copy, upright: 2600 x 3000 seen, at most 2048 (the view's max_side)
    page.wait_for_function("c => c.dataset.imageWidth === '1775'", arg=canvas.element_handle(), timeout=10_000)
    assert canvas.get_attribute("data-image-height") == "2048"
    chosen = widget.get_by_test_id("chosen-name").inner_text()
    assert chosen == "IMG_0002.jpg: 1775 × 2048 px (IMG_0002.HEIC, decoded by the kernel)", chosen

    search_until_the_region_is_offered(page, widget, canvas)
    scale = 2048 / PHOTO_SIZE[1]
    assert_near(canvas_corners(canvas), [[x * scale, y * scale] for x, y in truth], 0.02 * 2048)
    kernel_execute(
        page,
        "import io\nfrom PIL import Image\n"
        "assert Image.open(io.BytesIO(w.query)).format == 'JPEG' and w.query_name == 'IMG_0002.jpg', w.query_name\n"
        "assert Image.open(io.BytesIO(w.query)).size == (1775, 2048)",
    )


BLOCK_WORKERS = """
import time
from distributed import Event
_client = w._get_engine().client
_block = Event("papyrus-test-block", client=_client)
_block.clear()
def _papyrus_blocker(name):
    from distributed import Event
    Event(name).wait(60)
_threads = sum(_client.nthreads().values())
_blockers = [_client.submit(_papyrus_blocker, "papyrus-test-block", pure=False, priority=1000) for _ in range(_threads)]
_deadline = time.monotonic() + 30
while sum(len(v) for v in _client.processing().values()) < _threads and time.monotonic() < _deadline:
    time.sleep(0.05)
"""

RELEASE_WORKERS = """
_block.set()
_client.gather(_blockers)
del _blockers
"""


def test_cancel_a_running_search(page: Any, lab: dict[str, Any]) -> None:
    widget = open_and_run_notebook(page, lab)
    kernel_execute(page, BLOCK_WORKERS)  # every worker busy: a search waits in "preparing"
    try:
        widget.get_by_test_id("file-input").set_input_files(str(QUERY))
        search, cancel = widget.get_by_test_id("search-button"), widget.get_by_test_id("cancel-button")
        search.click()
        status = widget.get_by_test_id("status")
        page.wait_for_function(
            "el => el.dataset.state === 'running' && el.dataset.stage === 'preparing'",
            arg=status.element_handle(),
            timeout=RESULTS_TIMEOUT,
        )
        page.wait_for_timeout(1200)  # the seconds tick while it waits
        assert re.fullmatch(r"preparing image… [1-9]\d*\.\d s", status.inner_text().strip()), status.inner_text()
        steps = step_states(widget)
        assert steps["uploading"] == "done" and steps["preparing"] == "current" and steps["done"] == "todo"
        assert cancel.is_enabled()
        OUTPUT.mkdir(parents=True, exist_ok=True)
        widget.scroll_into_view_if_needed()
        page.screenshot(path=str(OUTPUT / "widget-running.png"))
        cancel.click()
        assert re.fullmatch(r"cancelled after \d+\.\d s", wait_state(page, widget, "cancelled", 10_000))
        assert cancel.is_disabled() and widget.get_by_test_id("result-card").count() == 0

        # Escape cancels too.
        search.click()
        wait_state(page, widget, "running", 10_000)
        search.focus()
        page.keyboard.press("Escape")
        wait_state(page, widget, "cancelled", 10_000)
        kernel_execute(page, "assert w.job is None and w._timer is None and w.status['state'] == 'cancelled'")
    finally:
        kernel_execute(page, RELEASE_WORKERS)
    # The workers are free again: the next search runs to the end.
    search.click()
    cards = wait_for_cards(page, widget, lab, "after-cancel")
    assert cards.first.get_attribute("data-inventory-key") == QUERY_INVENTORY


HOLD_SECOND_LOOK = """
from distributed import Event
from papyrus_widgets import tasks as _tasks
_real_second_look = _tasks.second_look_task
_look_gate = Event("papyrus-test-second-look", client=w._get_engine().client)
_look_gate.clear()
def _held_second_look(*args, **kwargs):
    from distributed import Event
    Event("papyrus-test-second-look").wait(60)
    return _real_second_look(*args, **kwargs)
_tasks.second_look_task = _held_second_look
"""

LET_SECOND_LOOK_GO = """
_tasks.second_look_task = _real_second_look
_look_gate.set()
"""


def test_the_first_looks_answer_shows_while_a_second_look_runs(page: Any, lab: dict[str, Any], tmp_path: Path) -> None:
    """A photo with no papyrus of the collection in it (noise): the first look confirms nothing in
    the middle, so a second look is due. The kernel holds that second look on a Dask event (the
    search itself is the widget's own: upload, Search, futures, the one-second poll). Meanwhile
    the cards show the first look's answer under a dashed verdict that says it is provisional;
    when the second look ends the final answer replaces it and the verdict is the plain one."""
    import numpy as np
    from PIL import Image

    noise = tmp_path / "noise.jpg"
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (900, 1200, 3), dtype=np.uint8)).save(noise, "JPEG")
    widget = open_and_run_notebook(page, lab)
    kernel_execute(page, HOLD_SECOND_LOOK)
    try:
        widget.get_by_test_id("file-input").set_input_files(str(noise))
        widget.get_by_test_id("search-button").click()
        status, verdict = widget.get_by_test_id("status"), widget.get_by_test_id("verdict")
        page.wait_for_function(
            "([s, v]) => s.dataset.state === 'running' && s.dataset.stage === 'verifying'"
            " && v.dataset.kind === 'interim'",
            arg=[status.element_handle(), verdict.element_handle()],
            timeout=RESULTS_TIMEOUT,
        )
        said = verdict.inner_text().strip()
        assert said.lower().startswith("so far, a second look running: no confirmed match in this collection"), said
        assert verdict.is_visible()
        assert widget.get_by_test_id("result-card").count() == 8, "the first look's 8 hits are on show"
        assert widget.get_by_test_id("cancel-button").is_enabled(), "the search is still running"
        assert step_states(widget)["verifying"] == "current"
        OUTPUT.mkdir(parents=True, exist_ok=True)
        widget.scroll_into_view_if_needed()
        page.screenshot(path=str(OUTPUT / "widget-second-look.png"))
    finally:
        kernel_execute(page, LET_SECOND_LOOK_GO)
    assert re.fullmatch(r"done in \d+\.\d s", wait_state(page, widget, "done"))
    final = verdict.inner_text().strip()
    assert final.lower().startswith("no confirmed match in this collection"), final
    assert verdict.get_attribute("data-kind") == "none"
    assert widget.get_by_test_id("result-card").count() == 8
    wait_history(page, widget, lab, 1, "second-look")


def test_search_in_notebook7(page: Any, notebook7: dict[str, Any]) -> None:
    """Jupyter Notebook 7 renders the widget, takes an upload and shows the results (no console errors)."""
    widget = open_and_run_notebook(page, notebook7)
    assert widget.get_by_test_id("search-button").is_disabled()
    widget.get_by_test_id("file-input").set_input_files(str(QUERY))
    widget.get_by_test_id("editor").wait_for(state="visible", timeout=10_000)
    widget.get_by_test_id("search-button").click()
    cards = wait_for_cards(page, widget, notebook7, "notebook7")
    assert re.fullmatch(r"done in \d+\.\d s", wait_state(page, widget, "done"))
    assert cards.count() == 8 and cards.first.get_attribute("data-inventory-key") == QUERY_INVENTORY
    thumb = cards.first.get_by_test_id("result-thumbnail")
    thumb.scroll_into_view_if_needed()  # thumbnails load lazily: a person scrolls to the results
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle(), timeout=10_000)
    kernel_execute(page, f"assert w.results[0]['inventory_key'] == {QUERY_INVENTORY!r}, w.results[0]")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1280, "height": 1800})
    widget.scroll_into_view_if_needed()
    page.screenshot(path=str(OUTPUT / "widget-notebook7.png"))


PRESIGNED_SOURCE = """\
from papyrus_widgets import PapyrusSearch
from papyrus_widgets.api import get_engine
from papyrus_widgets.config import Settings

settings = Settings.from_env(
    data_dir={data_dir!r}, s3_endpoint={endpoint!r}, s3_access_key={access_key!r}, s3_secret_key={secret_key!r},
    s3_bucket={bucket!r}, s3_secure={secure!r}, presigned_urls=True, dask_workers=1,
)
report = get_engine(settings).ingest({folder!r}, {hgv!r}, progress=False)
assert (report.added, report.failed) == (4, []), report
w = PapyrusSearch(settings=settings)
w
"""


def test_presigned_urls_in_the_browser(
    page: Any, lab: dict[str, Any], s3: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With PAPYRUS_PRESIGNED_URLS and an S3 store, the browser shows thumbnails and the large image
    straight from the store (presigned GET URLs) and draws the evidence over them; no bytes of
    them cross the comm, and no request fails (a failed image load is a console error)."""
    import shutil
    import uuid

    folder = tmp_path_factory.mktemp("presigned-references")
    names = ["19331_p_g_107.jpg", "21108_p_g_407_a-c.jpg", "19317_p_g_192_c.jpg", "21114_p_g_24.jpg"]
    for name in names:
        shutil.copy(REFERENCES / name, folder / name)
    bucket = f"papyrus-browser-{uuid.uuid4().hex[:8]}"
    source = PRESIGNED_SOURCE.format(
        data_dir=str(tmp_path_factory.mktemp("presigned-data")),
        endpoint=s3.endpoint,
        access_key=s3.access_key,
        secret_key=s3.secret_key,
        bucket=bucket,
        secure=s3.secure,
        folder=str(folder),
        hgv=str(HGV_DIR),
    )
    write_notebook(lab["root"] / "presigned.ipynb", source)
    endpoint = ("https://" if s3.secure else "http://") + s3.endpoint.split("://")[-1] + f"/{bucket}/"
    with s3.presigned_requests_allowed():  # moto checks no presigned signatures while IAM auth is on
        widget = open_and_run_notebook(page, lab, "presigned.ipynb")
        try:
            widget.get_by_test_id("file-input").set_input_files(str(folder / "21108_p_g_407_a-c.jpg"))
            widget.get_by_test_id("search-button").click()
            cards = wait_for_cards(page, widget, lab, "presigned")
            wait_state(page, widget, "done")
            assert cards.count() == 4 and cards.first.get_attribute("data-inventory-key") == "p_g_407_a-c"
            for i in range(cards.count()):
                thumb = cards.nth(i).get_by_test_id("result-thumbnail")
                assert thumb.get_attribute("src").startswith(endpoint), thumb.get_attribute("src")
                thumb.scroll_into_view_if_needed()  # thumbnails load lazily
                page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle())
            kernel_execute(page, "assert w.thumbnails == [b''] * len(w.results) and all(w.thumbnail_urls)")

            cards.first.get_by_test_id("result-open").click()
            result_img = widget.get_by_test_id("compare-result")
            page.wait_for_function(
                "img => img.dataset.size === 'large' && img.complete && img.naturalWidth > 256",
                arg=result_img.element_handle(),
                timeout=60_000,
            )
            assert result_img.get_attribute("src").startswith(endpoint + "originals/")
            evidence = widget.get_by_test_id("evidence-canvas")
            drawn = "c => c.dataset.state === 'drawn' && c.dataset.reference === 'large'"
            page.wait_for_function(drawn, arg=evidence.element_handle(), timeout=60_000)
            assert int(evidence.get_attribute("data-lines")) > 0
            OUTPUT.mkdir(parents=True, exist_ok=True)
            widget.get_by_test_id("compare").screenshot(path=str(OUTPUT / "widget-presigned-compare.png"))
        finally:
            kernel_execute(page, "w.close()\nfrom papyrus_widgets.services import close_clients\nclose_clients()")
