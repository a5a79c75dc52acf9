"""search() / ingest() / Results end to end on real services (embedded PostgreSQL, LocalCluster)."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from papyrus_widgets import api
from papyrus_widgets.errors import CornersError, ImageError, JobError, QueryError

from .conftest import HGV_DIR, REFERENCES, SHARED_DATA, reference


def test_ingest_indexes_every_reference_once(indexed_engine, ingest_report):
    n_files = len(list(REFERENCES.glob("*.jpg")))
    # 21090.xml_p_g_159.jpg and 21090_p_g_159.jpg are the same bytes and the same HGV record
    assert ingest_report.added == n_files - 1
    assert ingest_report.skipped == 1 and ingest_report.failed == []
    stats = indexed_engine.stats()
    assert stats["images"] == n_files - 1
    assert stats["model_source"] == indexed_engine.settings.model
    # the ingest stores each keypoint's signature with its word: the search uses them
    assert stats["images_with_words"] == n_files - 1 and stats["signed_words"] is True


def test_reingest_is_idempotent(indexed_engine):
    before = indexed_engine.stats()
    again = indexed_engine.ingest(REFERENCES, HGV_DIR, progress=False)
    assert again.added == 0 and again.skipped == before["images"] + 1
    assert indexed_engine.stats()["images"] == before["images"]
    distinct = {hashlib.sha256(p.read_bytes()).hexdigest() for p in REFERENCES.glob("*.jpg")}
    assert indexed_engine.store.count("thumbnails") == len(distinct)  # content-addressed: shared bytes, one object
    assert indexed_engine.store.count("originals") == len(distinct)


@pytest.mark.parametrize("name", ["19331_p_g_107.jpg", "21108_p_g_407_a-c.jpg", "19317_p_g_192_c.jpg"])
def test_search_finds_the_reference_itself(indexed_engine, name):
    results = indexed_engine.search(reference(name), k=5)
    top = results.top
    assert top is not None and top.inventory_key == name.split("_", 1)[1].rsplit(".", 1)[0]
    assert top.score == pytest.approx(1.0, abs=1e-4)
    assert len(results) == 5 and [h.rank for h in results] == [1, 2, 3, 4, 5]
    assert Image.open(io.BytesIO(top.thumbnail)).format == "JPEG"
    assert top.papyri_info_url == f"https://papyri.info/hgv/{top.hgv_id}"


def test_search_accepts_bytes_pil_and_numpy(indexed_engine):
    path = reference("19331_p_g_107.jpg")
    img = Image.open(path).convert("RGB")
    for query in (path.read_bytes(), img, np.asarray(img)):
        assert indexed_engine.search(query, k=1).top.inventory_key == "p_g_107"


def test_search_with_corners_and_metadata(indexed_engine):
    path = reference("19331_p_g_107.jpg")
    w, h = Image.open(path).size
    corners = [[w - 1, h - 1], [0, 0], [w - 1, 0], [0, h - 1]]  # the whole image, any order
    res = indexed_engine.search(path, k=3, corners=corners)
    assert res.top.inventory_key == "p_g_107"
    assert res.top.title == "Erlaß des Statthalters Sulpicius Similis"


def test_corners_whose_region_confirms_nothing_are_a_hint(indexed_engine):
    """Corners marked around a thin band across a papyrus confirm nothing by themselves (a match on
    a strip confirms nothing): the whole photo is searched next, and its papyrus, whose outline
    covers the band, is the answer, and the verdict says where it was found. Corners around a sheet
    that is not in the collection keep "no confirmed match", though the papyrus of the collection
    beside it is confirmed in the whole photo: it is not the one marked."""
    ref = Image.open(reference("19331_p_g_107.jpg")).convert("RGB")
    ref.thumbnail((900, 900))
    other = Image.open(SHARED_DATA / "more" / "princeton-bnf" / "btv1b10538865g.jpg").convert("RGB")
    other.thumbnail((700, 700))
    canvas = Image.new("RGB", (ref.width + other.width + 300, max(ref.height, other.height) + 200), (30, 32, 36))
    canvas.paste(ref, (100, 100))
    canvas.paste(other, (ref.width + 200, 100))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=92)
    w, h = ref.size
    x0, x1, y0, y1 = 100 + 0.1 * w, 100 + 0.9 * w, 100 + 0.45 * h, 100 + 0.48 * h
    band = [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
    res = indexed_engine.search(buf.getvalue(), k=3, corners=band)
    top = res.top
    assert top.inventory_key == "p_g_107" and top.confirmed and top.whole_photo, res.verdict
    assert top.region is not None and top.region[0][0] < x0 and top.region[2][1] > y1  # the sheet's outline
    assert res.verdict.startswith("confirmed: ") and "found in the whole photo" in res.verdict, res.verdict
    assert not any(h.whole_photo for h in res.hits[1:])
    ox, oy = ref.width + 200, 100
    around = [[ox, oy], [ox + other.width, oy], [ox + other.width, oy + other.height], [ox, oy + other.height]]
    res = indexed_engine.search(buf.getvalue(), k=3, corners=around)
    assert not res.confirmed and not any(h.whole_photo for h in res.hits), [(h.inventory_key, h.confirmed) for h in res]
    assert res.verdict.startswith("no confirmed match"), res.verdict


def test_corners_are_in_original_pixels_even_for_big_photos(indexed_engine):
    # a 3000 px photo is decoded at 2048 px on the worker; corners must still mean original pixels
    img = Image.open(reference("21114_p_g_24.jpg")).convert("RGB")
    scale = 3000 / max(img.size)
    big = img.resize((round(img.width * scale), round(img.height * scale)))
    canvas = Image.new("RGB", (big.width + 400, big.height + 400), (20, 20, 20))
    canvas.paste(big, (200, 200))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=92)
    x0, y0, x1, y1 = 200, 200, 200 + big.width, 200 + big.height
    corners = [[x1, y1], [x0, y0], [x1, y0], [x0, y1]]
    res = indexed_engine.search(buf.getvalue(), k=1, corners=corners)
    assert res.top.inventory_key == "p_g_24" and res.top.score > 0.99
    # the deskewed crop is kept under crops/, keyed by the query and its corners
    job = indexed_engine.submit_search(buf.getvalue(), name="photo.jpg", k=1, corners=corners)
    job.hits(timeout=300)
    crop = Image.open(io.BytesIO(indexed_engine.store.get(job.crop_key)))
    assert job.crop_key.startswith("crops/") and crop.format == "JPEG"
    assert abs(crop.width / crop.height - big.width / big.height) < 0.02  # the papyrus, not the canvas
    plain = indexed_engine.submit_search(buf.getvalue(), name="photo.jpg", k=1)
    assert plain.crop_key is None  # no corners, no crop
    plain.hits(timeout=300)


def test_filters_narrow_the_hits(indexed_engine):
    res = indexed_engine.search(reference("19331_p_g_107.jpg"), k=5, filters={"date_to": 0})
    assert all(h.date_from is not None and h.date_from <= 0 for h in res)
    assert all(h.inventory_key != "p_g_107" for h in res)  # P.Heid. G 107 is dated after year 0


def test_results_views(indexed_engine):
    res = api.search(reference("21114_p_g_24.jpg"), k=4, settings=indexed_engine.settings)
    frame = res.frame()
    assert list(frame["rank"]) == [1, 2, 3, 4] and frame.loc[0, "inventory_key"] == "p_g_24"
    payload = json.loads(res.to_json())
    assert payload["hits"][0]["inventory_key"] == "p_g_24" and "thumbnail" not in payload["hits"][0]
    html = res._repr_html_()
    assert html.count("data:image/jpeg;base64,") == 4 and "papyri.info" in html


@pytest.mark.parametrize(
    "query, error, words",
    [
        (b"", ImageError, "empty"),
        (b"GIF89a but not really", ImageError, "not an image"),
        ("/no/such/file.jpg", ImageError, "no such file"),
        (REFERENCES, ImageError, "folder"),
    ],
    ids=["empty", "garbage", "missing", "folder"],
)
def test_bad_queries_are_readable_and_leave_engine_working(indexed_engine, query, error, words):
    with pytest.raises(error, match=words):
        indexed_engine.search(query, k=3)
    assert indexed_engine.search(reference("21114_p_g_24.jpg"), k=1).top.inventory_key == "p_g_24"


def test_bad_parameters_fail_before_any_work(indexed_engine):
    data = reference("21114_p_g_24.jpg").read_bytes()
    with pytest.raises(QueryError):
        indexed_engine.submit_search(data, k=0)
    with pytest.raises(QueryError):
        indexed_engine.submit_search(data, filters={"bogus": 1})
    with pytest.raises(CornersError):
        indexed_engine.submit_search(data, corners=[[0, 0], [1, 1], [2, 2], [3, 3]])
    for ef in (0, 1001, "40", 2.5):
        with pytest.raises(QueryError, match="ef_search must"):
            indexed_engine.submit_search(data, ef_search=ef)


def test_ef_search_reaches_the_knn_query(indexed_engine):
    # Results.ef_search is what the server reported from inside the kNN statement on the worker
    query = reference("21114_p_g_24.jpg")
    assert indexed_engine.search(query, k=3, ef_search=77).ef_search == 77
    wide = indexed_engine.search(query, k=30, verify=False)
    assert wide.ef_search == 100 and wide.top.inventory_key == "p_g_24"  # default max(100, 2k)
    assert json.loads(wide.to_json())["ef_search"] == 100
    assert indexed_engine.search(query, k=3).ef_search == 100  # verifying fetches 10 candidates
    assert indexed_engine.search(query, k=60, verify=False).ef_search == 120  # 2k above the floor


def test_corners_off_the_image_fail_on_the_worker_with_a_message(indexed_engine):
    job = indexed_engine.submit_search(
        reference("21114_p_g_24.jpg").read_bytes(), corners=[[0, 0], [90000, 0], [90000, 90000], [0, 90000]]
    )
    with pytest.raises(Exception, match="outside"):
        job.hits(timeout=60)
    assert job.status()["state"] == "error" and "outside" in job.status()["message"]


def test_job_status_and_done_callback(indexed_engine):
    import threading

    fired = threading.Event()
    job = indexed_engine.submit_search(reference("19331_p_g_107.jpg").read_bytes(), name="q.jpg", k=2)
    assert job.status()["state"] in ("running", "done")
    job.add_done_callback(lambda j: fired.set())
    hits = job.hits(timeout=60)
    assert fired.wait(10)
    st = job.status()
    assert st["state"] == "done" and st["stage"] == "done" and st["elapsed"] > 0
    assert hits[0].inventory_key == "p_g_107"
    late = threading.Event()
    job.add_done_callback(lambda j: late.set())  # registering after the end still fires
    assert late.is_set()


def test_cancel(indexed_engine):
    job = indexed_engine.submit_search(reference("19331_p_g_107.jpg").read_bytes(), k=2)
    job.cancel()
    assert job.done() and job.status()["state"] == "cancelled"
    with pytest.raises(JobError, match="cancelled"):
        job.hits()
