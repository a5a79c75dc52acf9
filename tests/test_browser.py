"""The widget in a real JupyterLab, driven by headless Chromium (Playwright, sync API).

Starts ``jupyter lab`` with this venv's Python on a free port with a random token, opens a
notebook that shows ``PapyrusSearch()``, picks a reference image, presses Search and checks the
result cards. The kernel reads the same data directory and model as the test session's
``settings`` (the embedded PostgreSQL under it is shared between the two processes).

Needs ``/usr/bin/chromium`` (Debian package ``chromium``; never ``playwright install``).
Screenshots go to ``test-output/browser/``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

try:
    from .conftest import REFERENCES
except ImportError:  # tests/ run as a plain folder (no __init__.py)
    from conftest import REFERENCES  # type: ignore[import-not-found, no-redef]

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "test-output" / "browser"
QUERY = REFERENCES / "19331_p_g_107.jpg"
QUERY_INVENTORY = "p_g_107"

SERVER_START_TIMEOUT = 120  # s until /api/status answers
WIDGET_TIMEOUT = 180_000  # ms until the widget shows (kernel start + imports)
RESULTS_TIMEOUT = 120_000  # ms until result cards show (first search starts the kernel's services)

# Browser console messages that are JupyterLab's own noise, not the widget's. Each entry is a
# regular expression matched against the message text; keep this list short and explained.
BENIGN_CONSOLE_ERRORS: list[tuple[str, str]] = []

NOTEBOOK_SOURCE = "from papyrus_widgets import PapyrusSearch\nw = PapyrusSearch()\nw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kernel_env(settings: Any, home: Path) -> dict[str, str]:
    """Environment for the Jupyter server and its kernels: the session's data dir and model."""
    env = dict(os.environ)
    env.update(
        PAPYRUS_DATA_DIR=str(settings.data_dir),
        PAPYRUS_MODEL=str(settings.model),
        PAPYRUS_DASK_WORKERS=str(settings.dask_workers),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTER_CONFIG_DIR=str(home / "config"),
        IPYTHONDIR=str(home / "ipython"),
        PYTHONUNBUFFERED="1",
    )
    for attr, name in [
        ("database_url", "PAPYRUS_DATABASE_URL"),
        ("model_revision", "PAPYRUS_MODEL_REVISION"),
        ("dask_scheduler", "PAPYRUS_DASK_SCHEDULER"),
    ]:
        value = getattr(settings, attr, None)
        if value:
            env[name] = str(value)
    return env


def write_notebook(path: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(NOTEBOOK_SOURCE)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, path)


def write_user_settings(folder: Path) -> None:
    """JupyterLab user settings for the test: no news toast (it would cover the screenshots)."""
    target = folder / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))


def api(base: str, token: str, path: str, method: str = "GET") -> Any:
    req = urllib.request.Request(
        f"{base}{path}", method=method, headers={"Authorization": f"token {token}"}, data=b"" if method == "POST" else None
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        body = resp.read()
    return json.loads(body) if body else None


@pytest.fixture(scope="session")
def lab(settings: Any, indexed_engine: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A running JupyterLab over the indexed data dir: {"url", "token", "root", "log"}."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    home = tmp_path_factory.mktemp("jupyter")
    root = home / "notebooks"
    root.mkdir()
    write_notebook(root / "widget.ipynb")
    write_user_settings(home / "user-settings")
    port, token = free_port(), secrets.token_hex(24)
    base = f"http://127.0.0.1:{port}"
    log_path = home / "jupyter-lab.log"
    cmd = [
        sys.executable, "-m", "jupyter", "lab",
        "--no-browser",
        f"--port={port}",
        "--port-retries=0",
        f"--IdentityProvider.token={token}",  # ServerApp.token is deprecated since jupyter_server 2
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.root_dir={root}",
        f"--LabApp.user_settings_dir={home / 'user-settings'}",
        f"--LabApp.workspaces_dir={home / 'workspaces'}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
        "--LabApp.expose_app_in_browser=True",
    ]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers and CI runners often run as root
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, env=kernel_env(settings, home), cwd=root, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                api(base, token, "/api/status")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not answer in {SERVER_START_TIMEOUT} s:\n{log_path.read_text()[-4000:]}")
                time.sleep(0.5)
        yield {"url": base, "token": token, "root": root, "log": log_path}
    finally:
        try:  # shuts the kernels down too
            api(base, token, "/api/shutdown", method="POST")
            proc.wait(timeout=30)
        except Exception:  # noqa: BLE001
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log.close()


@pytest.fixture()
def page(lab: dict[str, Any]) -> Iterator[Any]:
    """A Chromium page; fails the test on any console error or uncaught page error."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1100})
            pg = context.new_page()

            def on_console(msg: Any) -> None:
                if msg.type == "error" and not any(re.search(rx, msg.text) for rx, _ in BENIGN_CONSOLE_ERRORS):
                    errors.append(f"console: {msg.text} ({msg.location.get('url', '')})")

            pg.on("console", on_console)
            pg.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
            pg.console_errors = errors  # type: ignore[attr-defined]
            yield pg
        finally:
            browser.close()
    assert not errors, "browser errors:\n" + "\n".join(errors)


def open_and_run_notebook(page: Any, lab: dict[str, Any]) -> Any:
    """Open widget.ipynb, wait for its kernel, run the cell; returns the widget's root locator."""
    page.goto(f"{lab['url']}/lab/tree/widget.ipynb?token={lab['token']}&reset")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    # The kernel is ready when the toolbar's kernel status says idle.
    page.wait_for_function(
        """() => {
            const app = window.jupyterapp;
            const panel = app && app.shell.currentWidget;
            const kernel = panel && panel.sessionContext && panel.sessionContext.session
                && panel.sessionContext.session.kernel;
            return !!kernel && kernel.status === 'idle';
        }""",
        timeout=WIDGET_TIMEOUT,
    )
    page.locator(".jp-Notebook .jp-Cell").first.click()
    page.keyboard.press("Shift+Enter")
    widget = page.locator(".papyrus-search")
    widget.wait_for(timeout=WIDGET_TIMEOUT)
    return widget


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
    widget.scroll_into_view_if_needed()
    page.screenshot(path=str(OUTPUT / "widget-light.png"))

    # The same widget in the dark theme (a theme switch does not reload the page).
    page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})")
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'", timeout=30_000)
    page.wait_for_timeout(500)
    widget.scroll_into_view_if_needed()
    page.screenshot(path=str(OUTPUT / "widget-dark.png"))
    page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Light'})")
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'true'", timeout=30_000)


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
