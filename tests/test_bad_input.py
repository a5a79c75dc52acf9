"""Whatever a scholar drops in: a generated corpus of bad and odd inputs through the real engine.

Every case goes through ``Engine.search`` (or ``Engine.ingest`` for metadata) on the shared
services: each either works (valid odd formats, with the right top hit where the photo is a
re-encoding of a reference) or fails with the documented exception type and one readable line.
After the whole corpus a normal search still finds the right papyrus and the index is intact.
A handful of cases also go through the ``papyrus`` command in subprocesses.
"""

from __future__ import annotations

import gc
import io
import math
import os
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from papyrus_widgets.errors import CornersError, ImageError, JobError, PapyrusError, QueryError
from papyrus_widgets.metadata import MetadataError

from .conftest import reference

REF_NAME = "19331_p_g_107.jpg"
REF_KEY = "p_g_107"
OTHER_NAME = "21114_p_g_24.jpg"
OTHER_KEY = "p_g_24"
PAPYRUS = [sys.executable, "-m", "papyrus_widgets.cli"]


# --- building the corpus -------------------------------------------------------------------------


def _ref() -> Image.Image:
    return Image.open(reference(REF_NAME)).convert("RGB")


def _encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_bomb(width: int, height: int, *, palette: bool = False) -> bytes:
    """A valid one-bit PNG (grey or palette) of ``width`` x ``height`` zero pixels, streamed through
    zlib so it costs a fraction of a second and a few hundred kB instead of gigabytes."""
    row = b"\0" * ((width + 7) // 8 + 1)
    comp = zlib.compressobj(9)
    parts = [comp.compress(row * 64) for _ in range(height // 64)]
    parts += [comp.compress(row * (height % 64)), comp.flush()]
    header = struct.pack(">IIBBBBB", width, height, 1, 3 if palette else 0, 0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
    if palette:
        out += _png_chunk(b"PLTE", b"\x00\x00\x00\xff\xff\xff")
    return out + _png_chunk(b"IDAT", b"".join(parts)) + _png_chunk(b"IEND", b"")


def photo_of_megapixels(mp: float) -> bytes:
    """The reference scaled up to ``mp`` megapixels, as a real JPEG."""
    img = _ref()
    s = math.sqrt(mp * 1e6 / (img.width * img.height))
    return _encode(
        img.resize((int(img.width * s), int(img.height * s)), Image.Resampling.BILINEAR), "JPEG", quality=80
    )


def cmyk_jpeg() -> bytes:
    return _encode(_ref().convert("CMYK"), "JPEG", quality=92)


def png_16bit() -> bytes:
    grey = np.asarray(_ref().convert("L"), dtype=np.uint16) * 257
    img = Image.fromarray(grey.astype(np.uint16))
    data = _encode(img, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really 16 bits per sample
    return data


def palette_png_with_alpha() -> bytes:
    img = _ref().quantize(colors=128)
    img.info["transparency"] = 0  # palette entry 0 is transparent
    data = _encode(img, "PNG", transparency=0)
    opened = Image.open(io.BytesIO(data))
    assert opened.mode == "P" and "transparency" in opened.info
    return data


def animated_gif() -> bytes:
    frames = [
        _ref().quantize(colors=255),
        Image.open(reference(OTHER_NAME)).convert("RGB").resize((1086, 1882)).quantize(colors=255),
    ]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=200, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    return data


def exif_rotated() -> bytes:
    """Stored lying on its side with EXIF orientation 6 ("rotate 90 degrees clockwise to show")."""
    stored = _ref().transpose(Image.Transpose.ROTATE_90)  # counter-clockwise by 90
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(stored, "JPEG", quality=92, exif=exif)


def heic_bytes() -> bytes:
    """The start of an ISO-BMFF HEIC file and nothing of its image: a truncated upload."""
    ftyp = b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic"
    return struct.pack(">I", len(ftyp) + 4) + ftyp + b"\x00\x00\x00\x08free" + b"\x00" * 512


def heic_iphone() -> bytes:
    """As an iPhone saves a photo: HEIC, stored lying on its side, orientation 6."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(_ref().transpose(Image.Transpose.ROTATE_90), "HEIF", quality=85, exif=exif.tobytes())


def png_bad_crc() -> bytes:
    data = bytearray(_encode(_ref().resize((120, 200)), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 40] ^= 0xFF  # damage the compressed pixels; the CRC no longer matches
    return bytes(data)


def corners_of_ref(*order: int) -> list[list[float]]:
    w, h = Image.open(reference(REF_NAME)).size
    square = [[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]]
    return [square[i] for i in order]


@dataclass
class Case:
    """One input. ``error`` set: the search must raise it with ``words`` in the message; else it
    must work, and ``top`` (when set) is the inventory key of the expected first hit."""

    data: Callable[[], bytes] | None = None  # the photo; None: the reference scan itself
    name: str = "photo.jpg"
    k: Any = 3
    corners: Any = None
    filters: Any = None
    error: type[BaseException] | None = None
    words: str = ""
    top: str | None = None
    no_hits: bool = False
    query: Callable[[Path], Any] | None = None  # a non-path query (array, object, folder …)


def _bytes(b: bytes) -> Callable[[], bytes]:
    return lambda: b


def truncated_jpeg() -> bytes:
    data = reference(REF_NAME).read_bytes()
    return data[: len(data) // 2]


CASES: dict[str, Case] = {
    # --- files that are not (whole) images ---
    "zero-byte": Case(_bytes(b""), error=ImageError, words="empty"),
    "text-renamed-jpg": Case(
        _bytes(b"Dear colleague, the photograph follows.\n" * 40), error=ImageError, words="not an image"
    ),
    "truncated-jpeg": Case(truncated_jpeg, error=ImageError, words="truncated"),
    "jpeg-header-only": Case(
        lambda: reference(REF_NAME).read_bytes()[:300], error=ImageError, words="photo.jpg"
    ),
    "png-bad-crc": Case(png_bad_crc, name="photo.png", error=ImageError, words="could not be decoded"),
    "random-bytes": Case(
        lambda: np.random.default_rng(7).bytes(8192), error=ImageError, words="not an image"
    ),
    "svg": Case(
        _bytes(b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>'),
        name="x.svg",
        error=ImageError,
        words="not an image",
    ),
    "pdf": Case(
        _bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n"),
        name="scan.pdf",
        error=ImageError,
        words="not an image",
    ),
    "heic-truncated": Case(heic_bytes, name="IMG_0001.HEIC", error=ImageError, words="truncated or corrupt"),
    # --- too big ---
    "bomb-1bit-40000px": Case(
        lambda: png_bomb(40_000, 40_000), name="bomb.png", error=ImageError, words="too large"
    ),
    "bomb-palette-40000px": Case(
        lambda: png_bomb(40_000, 40_000, palette=True), name="bomb.png", error=ImageError, words="too large"
    ),
    "photo-100mp": Case(
        lambda: photo_of_megapixels(100.5), error=ImageError, words="over the limit of 60 MP"
    ),
    "upload-over-64mb": Case(
        lambda: b"\xff\xd8\xff\xe0" + bytes(64 * 1024 * 1024), error=ImageError,
        words="is 67,108,868 bytes, over the limit of 67,108,864 bytes (64 MiB)",
    ),
    # --- odd but valid: must work, and find the reference they were made from ---
    "photo-55mp-under-limit": Case(lambda: photo_of_megapixels(55), top=REF_KEY),
    "cmyk-jpeg": Case(cmyk_jpeg, top=REF_KEY),
    "png-16bit-grey": Case(png_16bit, name="photo.png"),
    "palette-png-with-alpha": Case(palette_png_with_alpha, name="photo.png", top=REF_KEY),
    "animated-gif-first-frame": Case(animated_gif, name="photo.gif", top=REF_KEY),
    "tiff": Case(lambda: _encode(_ref(), "TIFF", compression="tiff_lzw"), name="photo.tif", top=REF_KEY),
    "webp": Case(lambda: _encode(_ref(), "WEBP", quality=90), name="photo.webp", top=REF_KEY),
    "heic-iphone": Case(heic_iphone, name="IMG_0002.HEIC", top=REF_KEY),
    "avif": Case(lambda: _encode(_ref(), "AVIF", quality=80), name="photo.avif", top=REF_KEY),
    "exif-rotated": Case(exif_rotated, top=REF_KEY),
    "grayscale-jpeg": Case(lambda: _encode(_ref().convert("L"), "JPEG", quality=90)),
    "one-pixel": Case(lambda: _encode(Image.new("RGB", (1, 1), (180, 150, 110)), "PNG"), name="dot.png"),
    "jpeg-named-png": Case(lambda: reference(REF_NAME).read_bytes(), name="photo.png", top=REF_KEY),
    "bmp": Case(lambda: _encode(_ref(), "BMP"), name="photo.bmp", top=REF_KEY),
    # --- corners ---
    "corners-collinear": Case(
        corners=[[0, 0], [100, 100], [200, 200], [300, 300]], error=CornersError, words="one line"
    ),
    "corners-self-intersecting-order": Case(corners=corners_of_ref(0, 2, 1, 3), top=REF_KEY),
    "corners-concave": Case(
        corners=[[0, 0], [800, 0], [800, 800], [700, 100]], error=CornersError, words="convex"
    ),
    "corners-outside": Case(
        corners=[[0, 0], [90_000, 0], [90_000, 90_000], [0, 90_000]], error=CornersError, words="outside"
    ),
    "corners-nan": Case(
        corners=[[0, 0], [500, 0], [float("nan"), 500], [0, 500]], error=CornersError, words="NaN"
    ),
    "corners-inf": Case(
        corners=[[0, 0], [float("inf"), 0], [500, 500], [0, 500]], error=CornersError, words="infinite"
    ),
    "corners-three-points": Case(corners=[[0, 0], [500, 0], [500, 500]], error=CornersError, words="four"),
    "corners-not-numbers": Case(
        corners=[["a", "b"], ["c", "d"], ["e", "f"], ["g", "h"]], error=CornersError, words="four"
    ),
    "corners-tiny-area": Case(
        corners=[[10, 10], [15, 10], [15, 15], [10, 15]], error=CornersError, words="too small"
    ),
    # --- k ---
    "k-zero": Case(k=0, error=QueryError, words="between 1 and"),
    "k-negative": Case(k=-3, error=QueryError, words="between 1 and"),
    "k-huge": Case(k=10**12, error=QueryError, words="between 1 and"),
    "k-float": Case(k=2.5, error=QueryError, words="whole number"),
    "k-string": Case(k="5", error=QueryError, words="whole number"),
    "k-none": Case(k=None, error=QueryError, words="whole number"),
    "k-bool": Case(k=True, error=QueryError, words="whole number"),
    # --- filters with SQL metacharacters: values are parameters, never SQL ---
    "filter-place-drop-table": Case(filters={"place": "'; DROP TABLE images; --"}, no_hits=True),
    "filter-collection-or-true": Case(filters={"collection": "P.Heid.' OR '1'='1"}, no_hits=True),
    "filter-text-percent-wildcard": Case(filters={"text": "%"}, no_hits=True),
    "filter-text-underscore-wildcard": Case(filters={"text": "_"}, no_hits=True),
    "filter-text-backslash-quote": Case(filters={"text": "\\' OR 1=1 --"}, no_hits=True),
    "filter-date-sql": Case(
        filters={"date_from": "1; DROP TABLE papyri"}, error=QueryError, words="must be a year"
    ),
    "filter-unknown-field": Case(filters={"place) OR (1=1": "x"}, error=QueryError, words="unknown filter"),
    "filter-nul-byte": Case(
        filters={"place": "Arsinoe\x00'; DROP TABLE papyri; --"}, error=QueryError, words="NUL"
    ),
    "filter-not-a-mapping": Case(filters=["place"], error=QueryError, words="mapping"),
    "filter-huge-year": Case(filters={"date_to": 10**30}, top=REF_KEY),
    # --- queries that are not files ---
    "query-folder": Case(query=lambda tmp: tmp, error=ImageError, words="folder"),
    "query-missing-file": Case(query=lambda tmp: tmp / "nope.jpg", error=ImageError, words="no such file"),
    "query-object": Case(
        query=lambda tmp: {"image": "photo.jpg"}, error=ImageError, words="cannot search with a dict"
    ),
    "query-array-wrong-shape": Case(
        query=lambda tmp: np.zeros((2, 3, 4, 5)), error=ImageError, words="not an image"
    ),
}


def _check_message(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text, repr(text)
    assert len(text) < 400, text
    return text


@pytest.fixture(scope="module")
def baseline(indexed_engine):
    """The index (and the client's futures) as they were before the corpus ran."""
    gc.collect()
    return {**indexed_engine.stats(), "futures": len(indexed_engine.client.futures)}


@pytest.mark.parametrize("case_id", list(CASES))
def test_bad_input_corpus(indexed_engine, baseline, tmp_path, case_id):
    case = CASES[case_id]
    if case.query is not None:
        query: Any = case.query(tmp_path)
    else:
        query = tmp_path / case.name
        query.write_bytes(case.data() if case.data is not None else reference(REF_NAME).read_bytes())
    kwargs = {"k": case.k, "corners": case.corners, "filters": case.filters, "timeout": 120}
    if case.error is not None:
        with pytest.raises(case.error) as info:
            indexed_engine.search(query, **kwargs)
        assert isinstance(info.value, PapyrusError)
        text = _check_message(info.value)
        assert case.words in text, text
        return
    res = indexed_engine.search(query, **kwargs)
    if case.no_hits:
        assert len(res) == 0, [h.inventory for h in res]
        return
    assert len(res) == case.k and all(np.isfinite(h.score) for h in res)
    assert [h.rank for h in res] == list(range(1, case.k + 1))
    if case.top is not None:
        assert res.top.inventory_key == case.top, [h.inventory_key for h in res]


def test_corpus_is_big_enough():
    errors = sum(1 for c in CASES.values() if c.error is not None)
    works = len(CASES) - errors
    assert len(CASES) >= 30 and errors >= 20 and works >= 10


# --- metadata: malformed and hostile XML through Engine.ingest ---------------------------------

HOSTILE_XML = {
    "malformed": b"<TEI xmlns='http://www.tei-c.org/ns/1.0'><teiHeader><fileDesc></teiHeader>",
    "empty": b"",
    "not-tei": b"<?xml version='1.0'?><html><body>papyrus</body></html>",
    "binary": bytes(range(256)) * 4,
    "billion-laughs": (
        b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
        + b"".join(
            b' <!ENTITY lol%d "%s">\n' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
            for i in range(1, 10)
        )
        + b"]>\n<TEI xmlns='http://www.tei-c.org/ns/1.0'>&lol9;</TEI>"
    ),
    "quadratic-blowup": (
        b'<?xml version="1.0"?>\n<!DOCTYPE TEI [<!ENTITY a "' + b"A" * 50_000 + b'">]>\n'
        b"<TEI xmlns='http://www.tei-c.org/ns/1.0'>" + b"&a;" * 5_000 + b"</TEI>"
    ),
    "external-entity": (
        b'<?xml version="1.0"?>\n<!DOCTYPE TEI [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
        b"<TEI xmlns='http://www.tei-c.org/ns/1.0'><teiHeader><fileDesc><titleStmt><title>&xxe;</title>"
        b"</titleStmt></fileDesc></teiHeader></TEI>"
    ),
    "external-parameter-entity": (
        b'<?xml version="1.0"?>\n'
        b'<!DOCTYPE TEI [<!ENTITY % ext SYSTEM "http://127.0.0.1:9/evil.dtd"> %ext;]>\n'
        b"<TEI xmlns='http://www.tei-c.org/ns/1.0'/>"
    ),
}
METADATA_WORDS = {
    "malformed": "malformed XML",
    "empty": "malformed XML",
    "not-tei": "not a TEI EpiDoc record",
    "binary": "malformed XML",
    "billion-laughs": "forbidden XML construct",
    "quadratic-blowup": "forbidden XML construct",
    "external-entity": "forbidden XML construct",
    "external-parameter-entity": "forbidden XML construct",
}


@pytest.mark.parametrize("kind", list(HOSTILE_XML))
def test_hostile_metadata_through_ingest(indexed_engine, baseline, tmp_path, kind):
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / REF_NAME).symlink_to(reference(REF_NAME))  # already indexed: nothing could change anyway
    meta = tmp_path / "hgv"
    (meta / "HGV20").mkdir(parents=True)
    (meta / "HGV20" / "19331.xml").write_bytes(HOSTILE_XML[kind])
    with pytest.raises(MetadataError) as info:
        indexed_engine.ingest(scans, meta, progress=False)
    assert isinstance(info.value, PapyrusError)  # shown as one line by the CLI and the widget
    text = _check_message(info.value)
    assert METADATA_WORDS[kind] in text and "19331.xml" in text, text
    assert "root:" not in text  # /etc/passwd was never read into anything
    assert indexed_engine.stats()["images"] == baseline["images"]


# --- after the corpus: the system still works ----------------------------------------------------


def test_a_search_that_times_out_is_cancelled(indexed_engine, baseline):
    with pytest.raises(JobError, match="did not finish within 0.001 s") as info:
        indexed_engine.search(reference(REF_NAME), k=3, timeout=0.001)
    _check_message(info.value)


def test_engine_still_works_after_the_corpus(indexed_engine, baseline):
    stats = indexed_engine.stats()
    assert stats["images"] == baseline["images"] and stats["papyri"] == baseline["papyri"]
    client = indexed_engine.client
    deadline = time.monotonic() + 30
    while True:  # failed, cancelled and timed-out jobs leave no futures behind
        gc.collect()
        left = len(client.futures)
        if left <= baseline["futures"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert left <= baseline["futures"], (
        f"{left - baseline['futures']} futures of finished searches are still held"
    )
    for name, key in ((REF_NAME, REF_KEY), (OTHER_NAME, OTHER_KEY)):
        res = indexed_engine.search(reference(name), k=3)
        assert res.top.inventory_key == key and res.top.score == pytest.approx(1.0, abs=1e-4)
    res = indexed_engine.search(reference(REF_NAME), k=5, filters={"collection": "P.Heid."})
    assert len(res) == 5 and res.top.inventory_key == REF_KEY


# --- the same through the ``papyrus`` command ----------------------------------------------------


def _cli(args: list[str], settings: Any, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAPYRUS_")}
    env.update(
        PAPYRUS_DATA_DIR=str(settings.data_dir), PAPYRUS_MODEL=str(settings.model), PAPYRUS_DASK_WORKERS="1"
    )
    return subprocess.run(
        PAPYRUS + args, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _one_line_error(proc: subprocess.CompletedProcess, command: str) -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith(f"papyrus {command}:")]
    assert len(ours) == 1, proc.stderr
    return ours[0]


@pytest.mark.parametrize(
    "case_id, extra, words",
    [
        ("bomb-1bit-40000px", [], "too large"),
        ("heic-truncated", [], "truncated or corrupt"),
        ("k-negative", ["-k", "-3"], "k must be between"),
        ("corners-nan", ["--corners", "0,0,500,0,nan,500,0,500"], "NaN"),
    ],
)
def test_cli_bad_input_is_one_line(indexed_engine, settings, tmp_path, case_id, extra, words):
    case = CASES[case_id]
    photo = tmp_path / case.name
    photo.write_bytes(case.data() if case.data is not None else reference(REF_NAME).read_bytes())
    proc = _cli(["search", str(photo), *extra], settings)
    assert proc.returncode == 1, proc.stderr
    assert words in _one_line_error(proc, "search")


def test_cli_sql_metacharacters_in_a_filter_are_just_text(indexed_engine, settings):
    proc = _cli(["search", str(reference(REF_NAME)), "--place", "'; DROP TABLE images; --"], settings)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("0 hits for 19331_p_g_107.jpg")
    assert indexed_engine.stats()["images"] > 0


def test_cli_bad_k_is_a_usage_error(settings):
    proc = _cli(["search", str(reference(REF_NAME)), "-k", "many"], settings, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "invalid int value: 'many'" in proc.stderr.strip().splitlines()[-1]


def test_cli_hostile_metadata_is_one_line(settings, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / REF_NAME).symlink_to(reference(REF_NAME))
    meta = tmp_path / "hgv"
    meta.mkdir()
    (meta / "19331.xml").write_bytes(HOSTILE_XML["billion-laughs"])
    proc = _cli(
        ["ingest", str(scans), "--metadata", str(meta), "--quiet", "--data-dir", str(tmp_path / "data")],
        settings,
        timeout=120,
    )
    assert proc.returncode == 1
    line = _one_line_error(proc, "ingest")
    assert "forbidden XML construct" in line and "19331.xml" in line
