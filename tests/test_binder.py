"""The Binder steps (binder/postBuild, binder/start) in a fresh venv, then the quickstart notebook."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from .conftest import REPO, SHARED_DATA


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_binder_steps_in_a_fresh_venv(tmp_path, model_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAPYRUS_", "VIRTUAL_ENV"))}
    env.update(
        BINDER_CHECK_DIR=str(tmp_path),
        PAPYRUS_DEMO_GALLERY=str(SHARED_DATA / "heidelberg"),
        PAPYRUS_MODEL=str(model_dir),  # the Hub is out of reach here: a local stand-in model
        PAPYRUS_DASK_WORKERS="1",
        PATH=":".join(p for p in env["PATH"].split(":") if ".venv" not in p),
    )
    try:
        proc = subprocess.run(["bash", str(REPO / "binder" / "check.sh")], env=env, capture_output=True, text=True,
                              timeout=1400)  # fmt: skip
        venv_built = (tmp_path / "venv" / "bin" / "papyrus").exists()
    finally:
        # The fresh venv holds a CUDA build of torch (about 6 GB): never leave it on disk, pass or fail.
        shutil.rmtree(tmp_path / "venv", ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "binder check passed" in proc.stdout
    assert venv_built
    nb = json.loads((tmp_path / "quickstart.out.ipynb").read_text())
    html = "".join(
        "".join(o.get("data", {}).get("text/html", ""))
        for c in nb["cells"] for o in c.get("outputs", [])
    )  # fmt: skip
    assert "papyrus-results" in html and "data:image/jpeg;base64," in html  # the search grid, with thumbnails
