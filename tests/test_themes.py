"""The widget's colours follow the front end's theme variables: JupyterLab's (Lab, Notebook 7),
else VS Code's (its notebook webviews define ``--vscode-*``), else fixed light colours.

Runs the packaged ``widget.css`` in headless Chromium on a page that defines one set of theme
variables or none, and reads the computed styles of the widget's elements. (JupyterLab itself is
driven in tests/test_browser.py; VS Code cannot be run here, so its variables are set by hand with
the values of its "Dark Modern" theme.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .realservers import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.browser

CSS = (Path(__file__).resolve().parents[1] / "papyrus_widgets" / "static" / "widget.css").read_text()

VSCODE_DARK = {
    "--vscode-foreground": "#cccccc",
    "--vscode-descriptionForeground": "#9d9d9d",
    "--vscode-editor-background": "#1f1f1f",
    "--vscode-editorWidget-background": "#202020",
    "--vscode-widget-border": "#313131",
    "--vscode-button-background": "#0078d4",
    "--vscode-button-foreground": "#ffffff",
    "--vscode-errorForeground": "#f85149",
    "--vscode-input-background": "#313131",
    "--vscode-font-family": "Consolas",
}
JUPYTERLAB_DARK = {
    "--jp-ui-font-color1": "rgba(255, 255, 255, 0.87)",
    "--jp-layout-color1": "#111111",
    "--jp-brand-color1": "#42a5f5",
    "--jp-input-background": "#212121",
    "--jp-ui-font-family": "Lato",
}

BODY = """
<div class="papyrus-search" id="w">
  <input class="papyrus-input" id="i">
  <div class="papyrus-status" data-state="error" id="s">the image could not be decoded</div>
</div>
"""

PROBE = """() => {
  const s = (id) => getComputedStyle(document.getElementById(id));
  return {
    fg: s("w").color, bg: s("w").backgroundColor, font: s("w").fontFamily,
    input: s("i").backgroundColor, error_border: s("s").borderLeftColor,
  };
}"""


def rgb(hex_colour: str) -> str:
    h = hex_colour.lstrip("#")
    return f"rgb({int(h[0:2], 16)}, {int(h[2:4], 16)}, {int(h[4:6], 16)})"


@pytest.fixture(scope="module")
def page():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser.new_page()
        browser.close()


def styles(page, variables: dict[str, str]) -> dict[str, str]:
    root = "".join(f"{k}: {v};" for k, v in variables.items())
    page.set_content(f"<html><head><style>:root {{{root}}}\n{CSS}</style></head><body>{BODY}</body></html>")
    return page.evaluate(PROBE)


def test_vscode_theme_variables_are_used_without_jupyterlab_ones(page) -> None:
    got = styles(page, VSCODE_DARK)
    assert got["fg"] == rgb("#cccccc") and got["bg"] == rgb("#1f1f1f")
    assert got["input"] == rgb("#313131") and got["error_border"] == rgb("#f85149")
    assert "Consolas" in got["font"]


def test_jupyterlab_variables_win_where_both_are_defined(page) -> None:
    got = styles(page, {**VSCODE_DARK, **JUPYTERLAB_DARK})
    assert got["fg"] == "rgba(255, 255, 255, 0.87)" and got["bg"] == rgb("#111111")
    assert got["input"] == rgb("#212121") and "Lato" in got["font"]


def test_light_fallbacks_without_any_theme(page) -> None:
    got = styles(page, {})
    assert got["fg"] == rgb("#1f1f1f") and got["bg"] == rgb("#ffffff")
    assert got["input"] == rgb("#ffffff") and got["error_border"] == rgb("#d32f2f")
