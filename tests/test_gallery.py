"""Demo gallery download against a real HTTP server on 127.0.0.1 serving the shared scans."""

from __future__ import annotations

import csv
import hashlib
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from papyrus_widgets.gallery import GalleryError, fetch_gallery, read_manifest
from papyrus_widgets.metadata import load_metadata, record_for_image

from .conftest import REFERENCES

NAMES = ["19331_p_g_107.jpg", "21114_p_g_24.jpg", "19317_p_g_192_c.jpg"]


class _Handler(http.server.SimpleHTTPRequestHandler):
    hits: dict[str, int] = {}

    def __init__(self, *a, **kw):
        super().__init__(*a, directory=str(REFERENCES), **kw)

    def do_GET(self):  # noqa: N802
        _Handler.hits[self.path] = _Handler.hits.get(self.path, 0) + 1
        if self.path.startswith("/flaky/") and _Handler.hits[self.path] == 1:
            self.send_error(503, "try again")
            return
        self.path = self.path.replace("/flaky/", "/")
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "image_url", "sha256", "hgv", "title"])
        w.writeheader()
        w.writerows(rows)
    return path


def _sha(name: str) -> str:
    return hashlib.sha256((REFERENCES / name).read_bytes()).hexdigest()


def test_shipped_manifest_is_well_formed():
    rows = read_manifest()
    assert 40 <= len(rows) <= 60
    assert len({r["file"] for r in rows}) == len(rows)
    assert all(r["image_url"].startswith(("http://", "https://")) for r in rows)
    assert all(r["url"].startswith("https://papyri.info/") for r in rows)


def test_download_checksums_retries_and_cache(server, tmp_path):
    _Handler.hits.clear()
    rows = [
        {"file": NAMES[0], "image_url": f"{server}/{NAMES[0]}", "sha256": _sha(NAMES[0]), "hgv": "19331", "title": "A"},
        {"file": NAMES[1], "image_url": f"{server}/flaky/{NAMES[1]}", "sha256": "", "hgv": "21114", "title": "B"},
        {"file": "wrong.jpg", "image_url": f"{server}/{NAMES[2]}", "sha256": "0" * 64, "hgv": "1", "title": "C"},
        {"file": "gone.jpg", "image_url": f"{server}/missing.jpg", "sha256": "", "hgv": "2", "title": "D"},
    ]
    manifest = _manifest(tmp_path / "m.csv", rows)
    dest = tmp_path / "gallery"
    report = fetch_gallery(dest, manifest, progress=False, backoff=0.01)
    assert report.downloaded == 2 and report.cached == 0
    assert {name for name, _ in report.failed} == {"wrong.jpg", "gone.jpg"}
    assert "checksum mismatch" in dict(report.failed)["wrong.jpg"]
    assert "HTTP 404" in dict(report.failed)["gone.jpg"]
    assert _Handler.hits[f"/flaky/{NAMES[1]}"] == 2  # one 503, one retry
    assert _Handler.hits["/missing.jpg"] == 1  # a 404 is not retried
    assert (dest / "references" / NAMES[1]).read_bytes() == (REFERENCES / NAMES[1]).read_bytes()
    assert not (dest / "references" / "wrong.jpg").exists()
    assert not list((dest / "references").glob(".part-*"))

    # second run: everything good comes from the cache; a corrupted cache entry is fetched again
    (dest / "references" / NAMES[1]).write_bytes(b"corrupted")
    again = fetch_gallery(dest, manifest, progress=False, backoff=0.01)
    assert again.cached == 1 and again.downloaded == 1
    assert (dest / "references" / NAMES[1]).read_bytes() == (REFERENCES / NAMES[1]).read_bytes()

    # the metadata written beside the images gives each image its record
    records = load_metadata(report.metadata)
    rec = record_for_image(dest / "references" / NAMES[0], records)
    assert rec.hgv_id == "19331" and rec.title == "A" and rec.inventory_key == "p_g_107"


def test_nothing_downloadable_is_a_clear_error(server, tmp_path):
    manifest = _manifest(tmp_path / "m.csv", [{"file": "x.jpg", "image_url": f"{server}/nope.jpg", "sha256": "",
                                               "hgv": "", "title": ""}])
    with pytest.raises(GalleryError, match="no image of the gallery could be downloaded"):
        fetch_gallery(tmp_path / "g", manifest, progress=False)


@pytest.mark.parametrize("bad", ["../evil.jpg", ".hidden", "a/b.jpg"])
def test_manifest_file_names_cannot_escape(tmp_path, bad):
    manifest = _manifest(tmp_path / "m.csv", [{"file": bad, "image_url": "http://127.0.0.1/x", "sha256": "",
                                               "hgv": "", "title": ""}])
    with pytest.raises(GalleryError, match="bad file name"):
        read_manifest(manifest)


@pytest.mark.slow
def test_papyrus_demo_downloads_and_indexes_a_gallery(server, tmp_path, settings):
    """``papyrus demo --manifest URL`` as a user runs it: download, ingest, search, no JupyterLab."""
    rows = [{"file": n, "image_url": f"{server}/{n}", "sha256": _sha(n), "hgv": n.split("_")[0], "title": n}
            for n in NAMES]
    manifest = _manifest(tmp_path / "m.csv", rows)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAPYRUS_")}
    env.update(PAPYRUS_DATA_DIR=str(tmp_path / "data"), PAPYRUS_MODEL=str(settings.model), PAPYRUS_DASK_WORKERS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "papyrus_widgets.cli", "demo", "--manifest", str(manifest), "--no-lab", "--quiet"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "3 downloaded, 0 cached, 0 failed" in proc.stdout
    assert "3 added" in proc.stdout
    table = proc.stdout[proc.stdout.index("hits for"):].splitlines()
    assert "search: " in proc.stdout and proc.stdout.split("search: ")[1].split()[0].endswith("19317_p_g_192_c.jpg")
    assert table[1].startswith("confirmed: P.Heid. inv. G 192 c"), table[1]  # the verdict
    assert "1.000" in table[3] and "P.Heid. inv. G 192 c" in table[3]  # the first reference finds itself
