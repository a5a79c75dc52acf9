"""The notebooks, executed for real by nbclient in a fresh kernel (which starts its own LocalCluster)."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import REPO, SHARED_DATA, TEST_OUTPUT

NOTEBOOKS = REPO / "notebooks"


def execute(name: str, monkeypatch, **env: str) -> nbformat.NotebookNode:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PAPYRUS_DASK_WORKERS", "1")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}})
    try:
        client.execute()
    finally:
        out = TEST_OUTPUT / "notebooks"
        out.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out / name)
    return nb


def outputs(nb, kind="text/plain") -> list[str]:
    found = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                found.append(o["text"])
            elif kind in o.get("data", {}):
                found.append(o["data"][kind])
    return found


@pytest.mark.slow
def test_build_index_notebook_from_an_empty_data_dir(monkeypatch, tmp_path, settings):
    nb = execute(
        "build-index.ipynb",
        monkeypatch,
        PAPYRUS_DATA_DIR=str(tmp_path / "data"),
        PAPYRUS_MODEL=str(settings.model),
        PAPYRUS_GALLERY=str(SHARED_DATA / "heidelberg"),
        PAPYRUS_QUERY=str(SHARED_DATA / "heidelberg" / "references" / "19331_p_g_107.jpg"),
    )
    text = "\n".join(outputs(nb))
    assert "43 added, 1 skipped" in text
    assert "0 added" in text
    html = "\n".join(outputs(nb, "text/html"))
    assert "P.Heid. inv. G 107" in html  # the last cell's result grid for 19331_p_g_107.jpg


@pytest.mark.slow
def test_quickstart_notebook(monkeypatch, indexed_engine, settings):
    nb = execute(
        "quickstart.ipynb",
        monkeypatch,
        PAPYRUS_DATA_DIR=str(settings.data_dir),
        PAPYRUS_MODEL=str(settings.model),
        PAPYRUS_GALLERY=str(SHARED_DATA / "heidelberg"),
        PAPYRUS_QUERY=str(SHARED_DATA / "heidelberg" / "references" / "19331_p_g_107.jpg"),
    )
    widget_views = [
        o for c in nb.cells for o in c.get("outputs", []) if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    assert len(widget_views) == 1
    html = "\n".join(outputs(nb, "text/html"))
    assert html.count("P.Heid. inv. G 107") >= 2  # the search grid and the frame with corners
    frame_cell = nb.cells[5]
    assert frame_cell.source == "w.results_frame()"
    assert "rank" in frame_cell.outputs[0]["data"]["text/plain"]  # an empty frame with the result columns
