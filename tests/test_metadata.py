"""Tests for papyrus_widgets.metadata against the real HGV / padoc data in ../shared/data."""

from __future__ import annotations

import csv
import hashlib
import json
import time
from pathlib import Path

import pytest

from papyrus_widgets import metadata
from papyrus_widgets.metadata import (
    MetadataError,
    PapyrusRecord,
    inventory_from_key,
    load_metadata,
    name_id_unknown,
    parse_hgv_xml,
    parse_reference_filename,
    read_csv_records,
    record_for_image,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HGV_DIR = DATA / "heidelberg" / "hgv-epidoc"
REFS = DATA / "heidelberg" / "references"
PADOC = DATA / "padoc" / "padoc389.csv"


def reference_files() -> list[Path]:
    files = sorted(REFS.glob("*.jpg"))
    assert len(files) == 44, f"expected 44 reference scans in {REFS}"
    return files


def file_name_parts(name: str) -> tuple[str, str]:
    """Independent reading of '<HGV id>[.xml]_<inventory>.jpg' for cross-checking."""
    stem = name[: -len(".jpg")]
    head, _, inventory = stem.partition("_")
    return head.removesuffix(".xml"), inventory


@pytest.fixture(scope="module")
def hgv() -> dict[str, PapyrusRecord]:
    return load_metadata(HGV_DIR)


# --- HGV XML ----------------------------------------------------------------------------------


def test_parse_19314() -> None:
    rec = parse_hgv_xml(HGV_DIR / "HGV20" / "19314.xml")
    assert rec.key == "hgv:19314"
    assert rec.hgv_id == "19314"
    assert rec.title == "Ackerpacht"
    assert rec.tm_id == "19314"
    assert (rec.date_from, rec.date_to) == (61, 62)
    assert rec.date_text == "61 - 62"
    assert rec.place == "Hermopolis (?)"
    assert rec.subjects == ("Vertrag", "Pacht (Acker, Land)")
    assert "https://digi.ub.uni-heidelberg.de/diglit/p_g_25_a" in rec.image_urls
    assert len(rec.image_urls) == 2
    assert rec.papyri_info_url == "https://papyri.info/hgv/19314"
    # no invNo in this record: the inventory comes from its single Heidelberg diglit URL
    assert rec.inventory == "P.Heid. inv. G 25 a"
    assert rec.inventory_key == "p_g_25_a"
    assert rec.collection == "P.Heid."


def test_parse_from_bytes_matches_path() -> None:
    path = HGV_DIR / "HGV20" / "19314.xml"
    from_bytes = parse_hgv_xml(path.read_bytes())
    assert from_bytes == parse_hgv_xml(str(path))


def test_bc_dates() -> None:
    when = parse_hgv_xml(HGV_DIR / "HGV22" / "21161.xml")  # when="-0023-07-03"
    assert (when.date_from, when.date_to) == (-23, -23)
    assert when.date_text == "3. Juli 23 v.Chr."
    rng = parse_hgv_xml(HGV_DIR / "HGV875" / "874358.xml")  # notBefore="-0159" notAfter="-0151"
    assert (rng.date_from, rng.date_to) == (-159, -151)
    assert rng.place == "Herakleopolites, Ägypten"


def test_first_of_several_orig_dates() -> None:
    rec = parse_hgv_xml(HGV_DIR / "HGV875" / "874404.xml")  # dateAlternativeX 390, Y 391
    assert (rec.date_from, rec.date_to, rec.date_text) == (390, 390, "390")


def test_record_with_inventory_number() -> None:
    a = parse_hgv_xml(HGV_DIR / "HGV22" / "21720a.xml")
    b = parse_hgv_xml(HGV_DIR / "HGV22" / "21720b.xml")
    assert a.hgv_id == "21720a" and a.key == "hgv:21720a"
    assert a.inventory == "P.Vindob. G 11042"
    assert a.collection == "P.Vindob."
    assert a.inventory_key == "p_vindob_g_11042"
    assert b.inventory_key == a.inventory_key  # two HGV records, one papyrus
    heid = parse_hgv_xml(HGV_DIR / "HGV22" / "21091.xml")  # invNo "P.Heid. Inv. G 652 R"
    assert heid.inventory == "P.Heid. Inv. G 652 R"
    assert heid.inventory_key == "p_g_652"
    assert heid.collection == "P.Heid."


def test_unknown_inventory_is_ignored() -> None:
    rec = parse_hgv_xml(HGV_DIR / "HGV22" / "21312.xml")  # <idno type="invNo">unknown </idno>
    assert rec.inventory is None
    assert rec.inventory_key is None
    assert rec.collection == "Chester Beatty Library"


def test_to_dict_is_json_ready() -> None:
    rec = parse_hgv_xml(HGV_DIR / "HGV20" / "19314.xml")
    d = json.loads(json.dumps(rec.to_dict()))
    assert d["key"] == "hgv:19314"
    assert d["subjects"] == ["Vertrag", "Pacht (Acker, Land)"]
    assert d["date_from"] == 61
    assert set(d) == {
        "key", "hgv_id", "tm_id", "inventory", "inventory_key", "collection", "title", "date_text",
        "date_from", "date_to", "place", "subjects", "image_urls", "papyri_info_url",
    }  # fmt: skip


# --- file names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("19317_p_g_192_c.jpg", ("19317", "p_g_192_c")),
        ("21090.xml_p_g_159.jpg", ("21090", "p_g_159")),
        ("21108_p_g_407_a-c.jpg", ("21108", "p_g_407_a-c")),
        ("some/dir/19314_p_g_25_a.JPG", ("19314", "p_g_25_a")),
        ("19395a_p_g_10.png", ("19395a", "p_g_10")),
        ("19317.jpg", ("19317", None)),
        ("p_g_192_c.jpg", (None, "p_g_192_c")),
        ("foo.jpg", (None, None)),
        ("IMG_0001.jpg", (None, None)),
        ("0567a_r_CL.webp", (None, None)),  # a PapyrusViz fragment's number: HGV ids have no leading zero
        ("0_papyri_sample.jpg", (None, None)),
    ],
)
def test_parse_reference_filename(name: str, expected: tuple[str | None, str | None]) -> None:
    assert parse_reference_filename(name) == expected


def test_inventory_from_key() -> None:
    assert inventory_from_key("p_g_192_c") == ("P.Heid. inv. G 192 c", "P.Heid.")
    assert inventory_from_key("p_g_407_a-c") == ("P.Heid. inv. G 407 a-c", "P.Heid.")
    assert inventory_from_key("p_g_1298") == ("P.Heid. inv. G 1298", "P.Heid.")
    assert inventory_from_key("p_vindob_g_11042") is None
    assert inventory_from_key("foo") is None


# --- the whole HGV directory and the references -------------------------------------------------


def test_load_metadata_directory(hgv: dict[str, PapyrusRecord]) -> None:
    assert len(hgv) >= 2700
    assert all(key == rec.hgv_id for key, rec in hgv.items())
    ref_ids = {file_name_parts(f.name)[0] for f in reference_files()}
    assert len(ref_ids) == 43  # 44 scans, 21090 twice
    assert ref_ids <= set(hgv)
    assert hgv["19314"].title == "Ackerpacht"
    assert hgv["19395a"].hgv_id == "19395a"


def test_load_metadata_directory_is_fast() -> None:
    metadata.forget_parsed_directories()  # parse it, not the copy kept by an earlier test
    start = time.perf_counter()
    records = load_metadata(HGV_DIR)
    elapsed = time.perf_counter() - start
    assert len(records) >= 2700
    assert elapsed < 15, f"parsing the HGV directory took {elapsed:.1f} s"


def test_record_for_image_every_reference(hgv: dict[str, PapyrusRecord]) -> None:
    by_digest: dict[str, set[str]] = {}
    for path in reference_files():
        hgv_id, inventory = file_name_parts(path.name)
        rec = record_for_image(path, hgv)
        assert rec.inventory_key == inventory, path.name
        assert rec.hgv_id == hgv_id and rec.key == f"hgv:{hgv_id}", path.name
        assert rec.title is not None and rec.title == hgv[hgv_id].title, path.name
        assert rec.collection == "P.Heid.", path.name
        assert rec.inventory is not None and rec.inventory.startswith("P.Heid. "), path.name
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        by_digest.setdefault(digest, set()).add(rec.inventory_key)
    # byte-identical scans (19322/19324, 21457/21458, 21662/21663, 21090/21090.xml) agree
    assert len(by_digest) == 40
    assert all(len(keys) == 1 for keys in by_digest.values())
    assert record_for_image(REFS / "19322_p_g_213.jpg", hgv).inventory_key == "p_g_213"
    assert record_for_image(REFS / "19324_p_g_213.jpg", hgv).inventory_key == "p_g_213"


def test_record_for_image_fills_and_keeps_inventory(hgv: dict[str, PapyrusRecord]) -> None:
    rec = record_for_image("21105_p_g_654.jpg", hgv)  # XML has two diglit URLs, no invNo
    assert hgv["21105"].inventory is None
    assert (rec.inventory, rec.inventory_key, rec.collection) == ("P.Heid. inv. G 654", "p_g_654", "P.Heid.")
    kept = record_for_image("21091_p_g_652.jpg", hgv)  # XML inventory agrees with the file name
    assert kept.inventory == "P.Heid. Inv. G 652 R"
    assert kept.inventory_key == "p_g_652"


def test_record_for_image_without_metadata() -> None:
    rec = record_for_image(REFS / "21090.xml_p_g_159.jpg", {})
    assert rec == PapyrusRecord(
        key="hgv:21090",
        hgv_id="21090",
        inventory="P.Heid. inv. G 159",
        inventory_key="p_g_159",
        collection="P.Heid.",
        papyri_info_url="https://papyri.info/hgv/21090",
    )
    plain = record_for_image("/tmp/holiday/foo.jpg", {})
    assert plain.key == "file:foo"
    assert (plain.hgv_id, plain.inventory_key, plain.title, plain.papyri_info_url) == (None, None, None, None)


def test_a_number_the_hgv_metadata_does_not_know_is_not_an_hgv_id(hgv: dict[str, PapyrusRecord]) -> None:
    # Michigan papyrus 1203 C1 11, recto: "1203" is not its HGV id; papyri.info/hgv/1203 is another papyrus
    name = "1203_C1_11R.0.jpg"
    assert "1203" not in hgv
    rec = record_for_image(name, hgv)
    assert (rec.key, rec.hgv_id, rec.papyri_info_url, rec.title) == ("file:1203_C1_11R.0", None, None, None)
    assert name_id_unknown(name, hgv) == "1203"
    assert name_id_unknown("19314_p_g_25_a.jpg", hgv) is None  # known: taken, with its record
    assert record_for_image("19314_p_g_25_a.jpg", hgv, hgv_given=True).title == "Ackerpacht"
    # metadata that holds no HGV ids (a CSV of file names) cannot tell, nor can no metadata: the
    # documented <HGV id>_<inventory> convention holds
    by_file = {"file:other.jpg": PapyrusRecord(key="file:other", title="Other")}
    for given in ({}, by_file):
        assert record_for_image(name, given).key == "hgv:1203"
        assert name_id_unknown(name, given) is None
    # the same image named in the metadata is that record, whatever its name's number
    named = {**hgv, f"file:{name}": PapyrusRecord(key="tm:1", title="P.Mich. inv. 1203")}
    assert record_for_image(name, named).title == "P.Mich. inv. 1203"
    assert name_id_unknown(name, named) is None


def test_load_metadata_none_and_single_file() -> None:
    assert load_metadata(None) == {}
    single = load_metadata(HGV_DIR / "HGV20" / "19314.xml")
    assert list(single) == ["19314"]
    assert single["19314"].title == "Ackerpacht"


# --- hostile and malformed XML ------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<TEI xmlns="http://www.tei-c.org/ns/1.0"><teiHeader><fileDesc><titleStmt>
<title>&lol9;</title></titleStmt></fileDesc></teiHeader></TEI>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE TEI [ <!ENTITY xxe SYSTEM "file:///etc/passwd"> ]>
<TEI xmlns="http://www.tei-c.org/ns/1.0"><teiHeader><fileDesc><titleStmt>
<title>&xxe;</title></titleStmt><publicationStmt><idno type="filename">1</idno></publicationStmt>
</fileDesc></teiHeader></TEI>
"""

MALFORMED = b"""<?xml version="1.0"?>
<TEI xmlns="http://www.tei-c.org/ns/1.0"><teiHeader><fileDesc><titleStmt><title>Ackerpacht</titleStmt>
"""

NOT_TEI = b'<?xml version="1.0"?><html><body>hello</body></html>'


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("content", "words"),
    [
        (BILLION_LAUGHS, "forbidden"),
        (EXTERNAL_ENTITY, "forbidden"),
        (MALFORMED, "malformed"),
        (NOT_TEI, "not a TEI"),
        (b"", "malformed"),
    ],
    ids=["billion-laughs", "external-entity", "malformed", "not-tei", "empty"],
)
def test_hostile_or_malformed_xml(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "evil.xml"
    path.write_bytes(content)
    start = time.perf_counter()
    with pytest.raises(MetadataError) as info:
        parse_hgv_xml(path)
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert str(path) in message
    assert words in message
    assert "\n" not in message
    assert "root:" not in message  # nothing of /etc/passwd leaked
    with pytest.raises(MetadataError, match="<XML bytes>"):
        parse_hgv_xml(content)


def test_a_parsed_directory_is_reused_until_its_files_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "hgv" / "HGV20"
    folder.mkdir(parents=True)
    for name in ("19314.xml", "19315.xml"):
        (folder / name).write_bytes((HGV_DIR / "HGV20" / name).read_bytes())
    parsed: list[Path] = []
    real = metadata.parse_hgv_xml
    monkeypatch.setattr(metadata, "parse_hgv_xml", lambda f: parsed.append(Path(f)) or real(f))

    first = load_metadata(tmp_path / "hgv")
    assert sorted(first) == ["19314", "19315"] and len(parsed) == 2
    first.pop("19315")  # the caller's dict is its own: the kept copy is untouched
    assert sorted(load_metadata(tmp_path / "hgv")) == ["19314", "19315"] and len(parsed) == 2

    xml = folder / "19314.xml"  # a record corrected in place (same size would not matter: mtime)
    xml.write_bytes(xml.read_bytes().replace(b"Ackerpacht", b"Ackerpachtvertrag"))
    assert load_metadata(tmp_path / "hgv")["19314"].title == "Ackerpachtvertrag" and len(parsed) == 4
    (folder / "19316.xml").write_bytes((HGV_DIR / "HGV20" / "19316.xml").read_bytes())
    assert sorted(load_metadata(tmp_path / "hgv")) == ["19314", "19315", "19316"] and len(parsed) == 7
    (folder / "19315.xml").unlink()
    assert sorted(load_metadata(tmp_path / "hgv")) == ["19314", "19316"]


@pytest.mark.timeout(30)
def test_load_metadata_names_the_bad_file(tmp_path: Path) -> None:
    good = tmp_path / "HGV20"
    good.mkdir()
    (good / "19314.xml").write_bytes((HGV_DIR / "HGV20" / "19314.xml").read_bytes())
    (tmp_path / "bad.xml").write_bytes(BILLION_LAUGHS)
    with pytest.raises(MetadataError, match="bad.xml"):
        load_metadata(tmp_path)
    (tmp_path / "bad.xml").unlink()
    assert list(load_metadata(tmp_path)) == ["19314"]


# --- CSV ----------------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    return path


def test_simple_csv(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "meta.csv",
        [
            ["filename", "hgv", "TM", "inventory", "title", "date", "place", "image_url", "notes"],
            ["19317_p_g_192_c.jpg", "19317", "19317", "", "Steuerquittungen", "135", "Hermopolis",
             "https://example.org/a.jpg https://example.org/b.jpg", "ignored"],
            ["scans/mine.png", "", "12345", "P.Heid. inv. G 7 b", "Brief", "61 - 62", "", "", ""],
            ["other.jpg", "", "", "", "Fragment", "-0100", "", "", ""],
        ],
    )  # fmt: skip
    records = read_csv_records(path)
    assert [r.key for r in records] == ["hgv:19317", "file:mine", "file:other"]
    first, second, third = records
    assert (first.inventory_key, first.inventory, first.collection) == (
        "p_g_192_c", "P.Heid. inv. G 192 c", "P.Heid.",
    )  # fmt: skip
    assert first.image_urls == ("https://example.org/a.jpg", "https://example.org/b.jpg")
    assert (first.date_from, first.date_to, first.place) == (135, 135, "Hermopolis")
    assert first.papyri_info_url == "https://papyri.info/hgv/19317"
    assert (second.tm_id, second.inventory_key, second.collection) == ("12345", "p_g_7_b", "P.Heid.")
    assert (second.date_from, second.date_to) == (61, 62)
    assert second.papyri_info_url == "https://www.trismegistos.org/text/12345"
    assert (third.date_from, third.date_to, third.papyri_info_url) == (-100, -100, None)

    mapping = load_metadata(path)
    assert set(mapping) == {"19317", "file:19317_p_g_192_c.jpg", "file:mine", "file:mine.png",
                            "file:other", "file:other.jpg"}  # fmt: skip
    found = record_for_image("/anywhere/mine.png", mapping)
    assert found.title == "Brief" and found.inventory_key == "p_g_7_b"
    by_id = record_for_image(REFS / "19317_p_g_192_c.jpg", mapping)
    assert by_id.title == "Steuerquittungen"


def test_padoc_layout_csv(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "padoc.csv",
        [
            ["tm", "date", "text_raw", "url_img", "url_trn", "text"],
            ["1017", "-2.0", "ἔτους ιϛ", "http://example.org/img.jpg ",
             "https://papyri.info/ddbdp/p.cair.zen;3;59374/source", "ετουσ"],
            ["19344", "5.25", "x", "", "https://papyri.info/ddbdp/p.lond;5;1690/source", "x"],
        ],
    )  # fmt: skip
    first, second = read_csv_records(path)
    assert first.key == "tm:1017" and first.tm_id == "1017" and first.hgv_id is None
    assert (first.date_text, first.date_from, first.date_to) == ("-2.0", -200, -200)
    assert first.image_urls == ("http://example.org/img.jpg",)
    assert first.papyri_info_url == "https://papyri.info/ddbdp/p.cair.zen;3;59374/source"
    assert (second.date_from, second.image_urls) == (525, ())
    assert set(load_metadata(path)) == {"tm:1017", "tm:19344"}


def test_real_padoc_csv() -> None:
    records = read_csv_records(PADOC)
    assert len(records) == 389
    assert records[0].tm_id == "1017"
    assert records[0].papyri_info_url == "https://papyri.info/ddbdp/p.cair.zen;3;59374/source"
    assert all(r.key == f"tm:{r.tm_id}" for r in records)
    assert sum(1 for r in records if r.image_urls) == 383
    assert all(r.papyri_info_url and r.papyri_info_url.startswith("https://papyri.info/") for r in records)
    assert all(r.date_from is not None and -300 <= r.date_from <= 800 for r in records)
    assert len(load_metadata(PADOC)) == len({r.tm_id for r in records})


def test_csv_without_identity_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "bad.csv", [["title", "date", "place"], ["Brief", "61", "Hermopolis"]])
    with pytest.raises(MetadataError, match="bad.csv.*identity"):
        read_csv_records(path)
    with pytest.raises(MetadataError, match="bad.csv"):
        load_metadata(path)


def test_csv_row_without_identity_and_empty_file(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "rows.csv", [["file", "tm", "title"], ["a.jpg", "", "A"], ["", "", "B"]])
    with pytest.raises(MetadataError, match=r"rows.csv, line 3"):
        read_csv_records(path)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(MetadataError, match="empty.csv"):
        read_csv_records(empty)
