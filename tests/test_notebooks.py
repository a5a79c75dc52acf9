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
        o
        for c in nb.cells
        for o in c.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    assert len(widget_views) == 1
    html = "\n".join(outputs(nb, "text/html"))
    assert html.count("P.Heid. inv. G 107") >= 2  # the search grid and the frame with corners
    frame_cell = nb.cells[5]
    assert frame_cell.source == "w.results_frame()"
    assert "rank" in frame_cell.outputs[0]["data"]["text/plain"]  # an empty frame with the result columns


# --- training and evaluation notebooks (tiny settings: a few training steps on 4 papyri) ----------


@pytest.fixture(scope="module")
def train_notebook(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "model"
    with pytest.MonkeyPatch.context() as mp:
        nb = execute(
            "train.ipynb",
            mp,
            PAPYRUS_GALLERY=str(SHARED_DATA / "heidelberg"),
            PAPYRUS_TRAIN_OUT=str(out),
            PAPYRUS_TRAIN_LIMIT="4",
            PAPYRUS_TRAIN_EPOCHS="2",
            PAPYRUS_TRAIN_STEPS="1",
            PAPYRUS_TRAIN_BATCH="4",
            PAPYRUS_TRAIN_PRETRAINED="0",
            PAPYRUS_TRAIN_CACHE_VIEWS="2",
            PAPYRUS_TRAIN_EVAL_QUERIES="3",
        )
    return nb, out


@pytest.mark.slow
def test_train_notebook_checkpoints_resumes_and_saves(train_notebook):
    nb, out = train_notebook
    text = "\n".join(outputs(nb))
    assert "4 papyri, 4 images" in text
    assert "stopped after epoch 1" in text
    assert "resumed from epoch 1, 2 epochs in all" in text
    assert "3 queries: top-1" in text
    assert "loads back: fingerprint" in text
    plots = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(plots) >= 3  # the re-photographs and the live loss plot of each training cell
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in out.iterdir()}
    card = (out / "README.md").read_text()
    assert "4 images of 4 papyri" in card and "2 x 1 steps, batch 4" in card and "| top1 |" in card
    assert (out.parent / "model-checkpoints" / "checkpoint.pt").is_file()


@pytest.mark.slow
def test_evaluate_notebook_compares_three_searches(monkeypatch, train_notebook):
    _, model = train_notebook
    nb = execute(
        "evaluate.ipynb",
        monkeypatch,
        PAPYRUS_GALLERY=str(SHARED_DATA / "heidelberg"),
        PAPYRUS_EVAL_MODEL=str(model),
        PAPYRUS_EVAL_RECAPTURES="1",
        PAPYRUS_EVAL_LIMIT="3",
        PAPYRUS_EVAL_INDEX_LIMIT="6",
        PAPYRUS_EVAL_K="5",
    )
    text = "\n".join(outputs(nb))
    assert "index: 6 reference images; 3 queries" in text
    for label in ("untrained", "trained", "trained + verification"):
        assert f"{label}: 3 queries: top-1" in text
    assert "trained + verification: 3 queries: top-1 1.000" in text  # verification finds every papyrus
    html = "\n".join(outputs(nb, "text/html"))
    assert "trained + verification" in html and "mAP" in html  # the metrics table
    plots = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(plots) >= 5  # queries, rank histogram, two strips, the matches
