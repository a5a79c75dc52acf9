"""Papyrus metadata: HGV EpiDoc XML records, simple CSV files and reference file names.

Everything here turns one of three sources into :class:`PapyrusRecord` objects:

* papyri.info HGV TEI EpiDoc XML (parsed with ``defusedxml``: entity declarations and
  external entities are rejected, so hostile files fail fast with :class:`MetadataError`);
* a CSV file, either a simple layout (``file, hgv, tm, inventory, title, date, ...``) or the
  padoc layout (``tm, date, url_img, url_trn, ...``);
* image file names of the form ``<HGV id>_<inventory>.jpg`` (``19317_p_g_192_c.jpg``).

The inventory key (``p_g_192_c``) is the ground truth for "same papyrus"; HGV ids are not
(one papyrus can carry two HGV ids).
"""

from __future__ import annotations

import csv
import io
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from .errors import PapyrusError
from .imaging import IMAGE_SUFFIXES

__all__ = [
    "MetadataError",
    "PapyrusRecord",
    "holds_hgv_records",
    "inventory_from_key",
    "load_metadata",
    "name_id_unknown",
    "parse_hgv_xml",
    "parse_reference_filename",
    "read_csv_records",
    "record_for_image",
    "records_for_images",
]

PAPYRI_INFO_HGV = "https://papyri.info/hgv/{}"
TRISMEGISTOS_TEXT = "https://www.trismegistos.org/text/{}"

_IMAGE_SUFFIXES = frozenset({*IMAGE_SUFFIXES, ".jp2", ".heic"})
"""Endings stripped from a file name to find its HGV id (also those of images Pillow cannot read)."""
# HGV ids are digits with an optional lower-case letter suffix ("19395a").
_HGV_ID_RE = re.compile(r"^(\d+[a-z]?)$")
# "<HGV id>[.xml]_<inventory>" or a bare "<HGV id>[.xml]". HGV ids are not zero-padded, so a
# name that begins with a zero ("0567a_r_CL", a fragment's own number) is not one.
_REF_NAME_RE = re.compile(r"^([1-9]\d*[a-z]?)(?:\.xml)?(?:_(.+))?$", re.IGNORECASE)
# Heidelberg Greek inventory keys: p_g_192_c, p_g_407_a-c, p_g_1298.
_HEID_KEY_RE = re.compile(r"^p_g_(\d+)((?:_[a-z0-9+-]+)*)$")
# "P.Heid. inv. G 192 c", "P.Heid. Inv. G 652 R", "P. Heid. G 213".
_HEID_INV_RE = re.compile(r"^P\.\s*Heid\.\s*(?:inv\.\s*)?G\.?\s+(\d+.*)$", re.IGNORECASE)
# Collection siglum at the start of an inventory: "P.Heid.", "P.Wash.Univ.", "P. IFAO".
_COLLECTION_RE = re.compile(r"^(P\.\s?[A-Z][A-Za-z]*(?:\.[A-Z][A-Za-z]*)*\.?)(?=\s|$)")
_RECTO_VERSO_RE = re.compile(r"\s+(?:[RV]|recto|verso)$")
_YEAR_RE = re.compile(r"^\s*(-?)(\d{1,4})(?:-\d{2}(?:-\d{2})?)?\s*$")
_RANGE_RE = re.compile(r"^\s*(-?\d{1,4})\s*(?:-|–|to|/)\s*(-?\d{1,4})\s*$")
_PAPYRI_INFO_HGV_RE = re.compile(r"^https?://papyri\.info/hgv/(\d+[a-z]?)(?:/.*)?$")
_WS_RE = re.compile(r"\s+")


class MetadataError(PapyrusError, ValueError):
    """A metadata file is malformed, hostile or lacks what is needed; the message names the file.

    A :class:`~papyrus_widgets.errors.PapyrusError`, so the CLI and the widget show it as one line.
    """


@dataclass(frozen=True)
class PapyrusRecord:
    """Metadata of one papyrus text (one HGV record, CSV row or image file name)."""

    key: str
    hgv_id: str | None = None
    tm_id: str | None = None
    inventory: str | None = None
    inventory_key: str | None = None
    collection: str | None = None
    title: str | None = None
    date_text: str | None = None
    date_from: int | None = None
    date_to: int | None = None
    place: str | None = None
    subjects: tuple[str, ...] = ()
    image_urls: tuple[str, ...] = ()
    papyri_info_url: str | None = None

    def __post_init__(self) -> None:
        # Accept lists for the tuple fields but keep the record hashable.
        object.__setattr__(self, "subjects", tuple(self.subjects))
        object.__setattr__(self, "image_urls", tuple(self.image_urls))

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict (tuples become lists)."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


# ---------------------------------------------------------------------------------------------
# small helpers


def _clean(text: str | None) -> str | None:
    """Collapse whitespace; empty -> None."""
    if text is None:
        return None
    text = _WS_RE.sub(" ", text).strip()
    return text or None


def _element_text(el: Element | None) -> str | None:
    return None if el is None else _clean("".join(el.itertext()))


def _year(value: str | None) -> int | None:
    """Year of an ISO-like HGV date ("0061", "-0100", "0123-05-01"); None if not one."""
    if not value:
        return None
    m = _YEAR_RE.match(value)
    if not m:
        return None
    year = int(m.group(2))
    return -year if m.group(1) else year


def _dedupe(items: Iterable[str | None]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for item in items:
        item = _clean(item)
        if item and item not in seen:
            seen[item] = None
    return tuple(seen)


def _normalise_key(text: str) -> str:
    """Lower-case; runs of spaces/dots/underscores -> "_"."""
    return re.sub(r"[\s._]+", "_", text.strip().lower()).strip("_")


def _key_from_inventory(inventory: str) -> str | None:
    """Inventory key for a human inventory; Heidelberg Greek maps onto the file-name scheme.

    "P.Heid. inv. G 192 c" -> "p_g_192_c"; a trailing recto/verso mark ("R", "V") is dropped
    so that "P.Heid. Inv. G 652 R" -> "p_g_652". Other collections are only normalised.
    """
    inventory = _clean(inventory) or ""
    m = _HEID_INV_RE.match(inventory)
    if m:
        rest = _RECTO_VERSO_RE.sub("", m.group(1))
        return "p_g_" + _normalise_key(rest)
    return _normalise_key(inventory) or None


def _collection_from_inventory(inventory: str) -> str | None:
    """Leading siglum of an inventory ("P.Vindob. G 11042" -> "P.Vindob."), else None."""
    m = _COLLECTION_RE.match(inventory.strip())
    return m.group(1).replace(" ", "") if m else None


def _papyri_info_url(hgv_id: str | None, tm_id: str | None, given: str | None = None) -> str | None:
    if hgv_id:
        return PAPYRI_INFO_HGV.format(hgv_id)
    if given:
        return given
    if tm_id:
        return TRISMEGISTOS_TEXT.format(tm_id)
    return None


def _record_key(
    hgv_id: str | None, stem: str | None, tm_id: str | None = None, inventory_key: str | None = None
) -> str | None:
    if hgv_id:
        return f"hgv:{hgv_id}"
    if stem:
        return f"file:{stem}"
    if tm_id:
        return f"tm:{tm_id}"
    if inventory_key:
        return f"inv:{inventory_key}"
    return None


def _image_stem(name: str) -> str:
    """Base name without a known image extension ("a/19317_p_g_192_c.jpg" -> "19317_p_g_192_c")."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    root, ext = os.path.splitext(base)
    return root if ext.lower() in _IMAGE_SUFFIXES else base


# ---------------------------------------------------------------------------------------------
# file names and inventories


def parse_reference_filename(name: str) -> tuple[str | None, str | None]:
    """Split ``<HGV id>_<inventory>.jpg`` into (HGV id, inventory key).

    "19317_p_g_192_c.jpg" -> ("19317", "p_g_192_c"); the stray ".xml" in
    "21090.xml_p_g_159.jpg" is dropped; "19317.jpg" -> ("19317", None); a name that is only a
    recognised inventory ("p_g_192_c.jpg") -> (None, "p_g_192_c"); anything else, a name that
    begins with a zero among them ("0567a_r_CL.webp"), -> (None, None).

    The name alone cannot tell an HGV id from another collection's number ("1203_C1_11R.0.jpg",
    Michigan papyrus 1203 C1 11): :func:`record_for_image` trusts it only when the metadata given
    knows that id or holds no HGV records at all.
    """
    stem = _image_stem(name)
    m = _REF_NAME_RE.match(stem)
    if m:
        hgv_id = m.group(1).lower()
        inventory_key = _normalise_key(m.group(2)) if m.group(2) else None
        return hgv_id, inventory_key or None
    key = _normalise_key(stem)
    if key and inventory_from_key(key) is not None:
        return None, key
    return None, None


def inventory_from_key(inventory_key: str) -> tuple[str, str] | None:
    """Human inventory and collection for a key: "p_g_192_c" -> ("P.Heid. inv. G 192 c", "P.Heid.").

    Only the Heidelberg Greek scheme (``p_g_<number>[_<part>...]``) is known; others -> None.
    """
    m = _HEID_KEY_RE.match(_normalise_key(inventory_key))
    if not m:
        return None
    parts = [m.group(1)] + [p for p in m.group(2).split("_") if p]
    return "P.Heid. inv. G " + " ".join(parts), "P.Heid."


# ---------------------------------------------------------------------------------------------
# HGV EpiDoc XML


def _describe(source: str | os.PathLike[str] | bytes) -> str:
    return "<XML bytes>" if isinstance(source, bytes) else os.fspath(source)


def _diglit_inventory_key(urls: Iterable[str]) -> str | None:
    """Inventory key from a single Heidelberg digital-library URL (…/diglit/p_g_25_a)."""
    keys = set()
    for url in urls:
        m = re.match(r"^https?://digi\.ub\.uni-heidelberg\.de/diglit/([^/?#]+)", url)
        if m and inventory_from_key(m.group(1)) is not None:
            keys.add(_normalise_key(m.group(1)))
    return keys.pop() if len(keys) == 1 else None


def parse_hgv_xml(source: str | os.PathLike[str] | bytes) -> PapyrusRecord:
    """Parse one papyri.info HGV EpiDoc record (a path, or the XML as bytes).

    Raises MetadataError for malformed XML, entity declarations / external entities (rejected by
    defusedxml), a non-TEI root, or a record with no identifier at all. A missing file raises
    the usual OSError.
    """
    name = _describe(source)
    try:
        if isinstance(source, bytes):
            root = SafeET.fromstring(source)
        else:
            root = SafeET.parse(os.fspath(source)).getroot()
    except DefusedXmlException as exc:
        raise MetadataError(f"{name}: forbidden XML construct rejected ({type(exc).__name__})") from exc
    except ParseError as exc:
        raise MetadataError(f"{name}: malformed XML ({exc})") from exc
    if root.tag.rsplit("}", 1)[-1] != "TEI":
        raise MetadataError(f"{name}: not a TEI EpiDoc record (root element <{root.tag}>)")
    return _record_from_tei(root, name, None if isinstance(source, bytes) else Path(source).stem)


def _idno(parent: Element | None, kind: str) -> str | None:
    if parent is None:
        return None
    for el in parent.iterfind(f"{{*}}idno[@type='{kind}']"):
        text = _clean(el.text)
        if text:
            return text
    return None


def _record_from_tei(root: Element, name: str, stem: str | None) -> PapyrusRecord:
    pub = root.find(".//{*}publicationStmt")
    hgv_id = _idno(pub, "filename")
    if hgv_id is None:
        xml_id = root.get("{http://www.w3.org/XML/1998/namespace}id") or ""
        if xml_id.lower().startswith("hgv") and _HGV_ID_RE.match(xml_id[3:]):
            hgv_id = xml_id[3:]
    if hgv_id is None and stem and _HGV_ID_RE.match(stem):
        hgv_id = stem
    tm_id = _idno(pub, "TM")

    inventory = _idno(root.find(".//{*}msIdentifier"), "invNo")
    if inventory and inventory.lower() == "unknown":
        inventory = None

    title = _element_text(root.find(".//{*}titleStmt/{*}title"))
    place = _element_text(root.find(".//{*}origPlace"))

    date_el = root.find(".//{*}origDate")
    date_text: str | None = None
    date_from: int | None = None
    date_to: int | None = None
    if date_el is not None:
        date_text = _element_text(date_el)
        when = _year(date_el.get("when"))
        date_from = when if when is not None else _year(date_el.get("notBefore"))
        date_to = when if when is not None else _year(date_el.get("notAfter"))

    subjects = _dedupe(t.text for t in root.iterfind(".//{*}keywords/{*}term"))
    image_urls = _dedupe(g.get("url") for g in root.iterfind(".//{*}graphic"))

    collection: str | None = None
    inventory_key: str | None = None
    if inventory:
        inventory_key = _key_from_inventory(inventory)
        collection = _collection_from_inventory(inventory)
    else:
        inventory_key = _diglit_inventory_key(image_urls)
        if inventory_key:
            inventory, collection = inventory_from_key(inventory_key) or (None, None)
    if collection is None:
        collection = _element_text(root.find(".//{*}msIdentifier/{*}collection"))

    return _record(
        f"{name}: record has no HGV id, file name, TM number or inventory",
        stem,
        hgv_id=hgv_id,
        tm_id=tm_id,
        inventory=inventory,
        inventory_key=inventory_key,
        collection=collection,
        title=title,
        date_text=date_text,
        date_from=date_from,
        date_to=date_to,
        place=place,
        subjects=subjects,
        image_urls=image_urls,
    )


def _record(missing_key: str, stem: str | None, *, url: str | None = None, **fields: Any) -> PapyrusRecord:
    """A :class:`PapyrusRecord` keyed by HGV id, file stem, TM number or inventory (the first
    there is); ``missing_key`` is the MetadataError message when there is none."""
    key = _record_key(fields["hgv_id"], stem, fields["tm_id"], fields["inventory_key"])
    if key is None:
        raise MetadataError(missing_key)
    return PapyrusRecord(key=key, papyri_info_url=_papyri_info_url(fields["hgv_id"], fields["tm_id"], url), **fields)


# ---------------------------------------------------------------------------------------------
# CSV

# Accepted header names (lower-cased) -> canonical field.
_CSV_ALIASES: dict[str, str] = {
    "file": "file",
    "filename": "file",
    "file_name": "file",
    "hgv": "hgv",
    "hgv_id": "hgv",
    "tm": "tm",
    "tm_id": "tm",
    "tm_number": "tm",
    "inventory": "inventory",
    "title": "title",
    "date": "date",
    "date_from": "date_from",
    "date_notbefore": "date_from",
    "date_to": "date_to",
    "date_notafter": "date_to",
    "place": "place",
    "subjects": "subjects",
    "image_url": "image_url",
    "image_urls": "image_url",
    "url_img": "image_url",
    "url": "url",
    "url_trn": "url",
    "transcription_url": "url",
}
_IDENTITY_FIELDS = ("file", "hgv", "tm", "inventory")


def _sniff_delimiter(text: str) -> str:
    header = text.split("\n", 1)[0]
    counts = {d: header.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _padoc_years(value: str) -> int | None:
    """padoc dates are centuries with quarter steps ("5.25" ~ 525, "-2.0" ~ 200 BC)."""
    if not re.match(r"^-?\d+\.\d+$", value):
        return None
    return round(float(value) * 100)


def _parse_date_text(text: str) -> tuple[int | None, int | None]:
    year = _year(text)
    if year is not None:
        return year, year
    m = _RANGE_RE.match(text)
    if m:
        start, end = int(m.group(1)), int(m.group(2))
        if start <= end:
            return start, end
    return None, None


def read_csv_records(path: str | os.PathLike[str]) -> list[PapyrusRecord]:
    """Read papyrus records from a CSV file (one per row).

    Simple layout: a header with any of file/filename, hgv, tm, inventory, title, date,
    date_from, date_to, place, subjects (";"-separated), image_url (whitespace-separated), url.
    padoc layout: tm, date (centuries, "5.25"), url_img, url_trn. Header names are
    case-insensitive; unknown columns are ignored; "," ";" or tab delimiters are accepted.
    Raises MetadataError if no identity column (file, hgv, tm, inventory) exists, a row has
    none filled in, or the file is not readable CSV text.
    """
    return [record for record, _ in _read_csv(path)]


def _read_csv(path: str | os.PathLike[str]) -> list[tuple[PapyrusRecord, str | None]]:
    """Records of a CSV file, each with the base name from its file column (or None)."""
    name = os.fspath(path)
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MetadataError(f"{name}: CSV is not UTF-8 text ({exc.reason})") from exc
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=_sniff_delimiter(text))
        header = next(reader, None)
        if header is None:
            raise MetadataError(f"{name}: empty CSV file, expected a header row")
        columns: dict[str, int] = {}
        for index, column in enumerate(header):
            canonical = _CSV_ALIASES.get(_normalise_key(column))
            if canonical and canonical not in columns:
                columns[canonical] = index
        if not any(f in columns for f in _IDENTITY_FIELDS):
            shown = ", ".join(h.strip() for h in header)[:200]
            raise MetadataError(
                f"{name}: CSV has none of the identity columns file/filename, hgv, tm, inventory (header: {shown})"
            )
        lowered = {_normalise_key(h) for h in header}
        padoc = "url_trn" in lowered or "text_raw" in lowered
        rows: list[tuple[PapyrusRecord, str | None]] = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            values = {f: _clean(row[i]) if i < len(row) else None for f, i in columns.items()}
            file_name = values.get("file")
            if file_name:
                values["file"] = file_name.replace("\\", "/").rsplit("/", 1)[-1] or None
            record = _record_from_row(values, padoc, f"{name}, line {reader.line_num}")
            rows.append((record, values.get("file")))
    except csv.Error as exc:
        raise MetadataError(f"{name}: unreadable CSV ({exc})") from exc
    return rows


def _record_from_row(values: dict[str, str | None], padoc: bool, where: str) -> PapyrusRecord:
    file_name = values.get("file")
    file_hgv, file_inv_key = parse_reference_filename(file_name) if file_name else (None, None)
    url = values.get("url")
    url_hgv = None
    if url:
        m = _PAPYRI_INFO_HGV_RE.match(url)
        url_hgv = m.group(1) if m else None
    hgv_id = values.get("hgv") or file_hgv or url_hgv
    tm_id = values.get("tm")

    inventory = values.get("inventory")
    inventory_key = collection = None
    if inventory:
        derived = inventory_from_key(inventory) if " " not in inventory else None
        if derived:  # the cell holds a key such as "p_g_192_c"
            inventory_key = _normalise_key(inventory)
            inventory, collection = derived
        else:
            inventory_key = _key_from_inventory(inventory)
            collection = _collection_from_inventory(inventory)
    elif file_inv_key:
        inventory_key = file_inv_key
        inventory, collection = inventory_from_key(file_inv_key) or (None, None)

    date_text = values.get("date")
    date_from = date_to = None
    if date_text and padoc:
        date_from = date_to = _padoc_years(date_text)
    if date_text and date_from is None:
        date_from, date_to = _parse_date_text(date_text)
    explicit_from, explicit_to = _year(values.get("date_from")), _year(values.get("date_to"))
    date_from = explicit_from if explicit_from is not None else date_from
    date_to = explicit_to if explicit_to is not None else date_to

    subjects = _dedupe((values.get("subjects") or "").split(";"))
    image_urls = _dedupe((values.get("image_url") or "").split())

    stem = _image_stem(file_name) if file_name else None
    return _record(
        f"{where}: row has no file name, HGV id, TM number or inventory",
        stem,
        url=url,
        hgv_id=hgv_id,
        tm_id=tm_id,
        inventory=inventory,
        inventory_key=inventory_key,
        collection=collection,
        title=values.get("title"),
        date_text=date_text,
        date_from=date_from,
        date_to=date_to,
        place=values.get("place"),
        subjects=subjects,
        image_urls=image_urls,
    )


# ---------------------------------------------------------------------------------------------
# loading and matching


def _is_xml_file(path: Path) -> bool:
    if path.suffix.lower() == ".xml":
        return True
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        return False
    with path.open("rb") as fh:
        return fh.read(512).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<")


def _index_record(out: dict[str, PapyrusRecord], record: PapyrusRecord) -> None:
    key = record.hgv_id or record.key
    out.setdefault(key, record)


_PARSED_DIRS_KEPT = 4
_parsed_dirs: dict[str, tuple[tuple[tuple[str, int, int, int], ...], dict[str, PapyrusRecord]]] = {}
_parsed_lock = threading.Lock()


def forget_parsed_directories() -> None:
    """Drop the records :func:`load_metadata` keeps of parsed directories (the next call parses)."""
    with _parsed_lock:
        _parsed_dirs.clear()


def _signature(files: list[Path]) -> tuple[tuple[str, int, int, int], ...]:
    """What a parsed directory's records depend on: each XML file's path, size, inode and mtime."""
    out = []
    for f in files:
        st = f.stat()
        out.append((os.fspath(f), st.st_size, st.st_ino, st.st_mtime_ns))
    return tuple(out)


def load_metadata(source: str | os.PathLike[str] | None) -> dict[str, PapyrusRecord]:
    """Load records from a directory of HGV XML, one XML file or one CSV file (None -> {}).

    Keys: XML records are keyed by bare HGV id ("19314"), falling back to ``record.key`` when a
    record has none. CSV records are keyed by bare HGV id when known, else by ``record.key``
    ("tm:1017", ...), and additionally by ``"file:" + <file name>`` (base name with extension,
    e.g. "file:19317_p_g_192_c.jpg") when the CSV has a file/filename column. A directory is
    searched recursively for ``*.xml`` (hidden folders skipped); if two files share an HGV id
    the first in sorted path order wins. A bad file raises MetadataError naming it.

    A directory's records are kept in this process (the last few directories) and reused while
    none of its XML files is added, removed or changed (path, size, inode, modification time):
    ingesting folder after folder against the same HGV catalogue parses it once.
    """
    if source is None:
        return {}
    path = Path(source)
    out: dict[str, PapyrusRecord] = {}
    if path.is_dir():
        files: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files.extend(Path(dirpath, f) for f in filenames if f.lower().endswith(".xml"))
        files.sort()
        signature = _signature(files)
        where = os.path.realpath(path)
        with _parsed_lock:
            cached = _parsed_dirs.get(where)
        if cached is not None and cached[0] == signature:
            return dict(cached[1])
        for file in files:
            _index_record(out, parse_hgv_xml(file))
        with _parsed_lock:
            _parsed_dirs.pop(where, None)
            _parsed_dirs[where] = (signature, dict(out))
            while len(_parsed_dirs) > _PARSED_DIRS_KEPT:
                del _parsed_dirs[next(iter(_parsed_dirs))]
        return out
    if _is_xml_file(path):
        _index_record(out, parse_hgv_xml(path))
        return out
    for record, file_name in _read_csv(path):
        _index_record(out, record)
        if file_name:
            out.setdefault(f"file:{file_name}", record)
    return out


def holds_hgv_records(metadata: Mapping[str, PapyrusRecord]) -> bool:
    """Whether ``metadata`` holds any record with an HGV id (an HGV directory, a CSV with ids)."""
    return any(record.hgv_id for record in metadata.values())


def _match_name(
    base: str, metadata: Mapping[str, PapyrusRecord], hgv_given: bool | None
) -> tuple[str | None, str | None, PapyrusRecord | None, str | None]:
    """(HGV id taken from the name, inventory key, metadata record, HGV id the name seems to carry
    but that was not taken) for an image's base name."""
    hgv_id, inventory_key = parse_reference_filename(base)
    record = metadata.get(f"file:{base}")
    if record is not None or not hgv_id:
        return hgv_id, inventory_key, record, None
    record = metadata.get(hgv_id) or metadata.get(f"hgv:{hgv_id}")
    if record is None and (holds_hgv_records(metadata) if hgv_given is None else hgv_given):
        # HGV metadata was given and does not know this id: the name's number is likely another
        # collection's (a link to papyri.info/hgv/<it> would show another papyrus)
        return None, inventory_key, None, hgv_id
    return hgv_id, inventory_key, record, None


def name_id_unknown(
    path: str | os.PathLike[str], metadata: Mapping[str, PapyrusRecord], *, hgv_given: bool | None = None
) -> str | None:
    """The HGV id an image's name seems to carry when :func:`record_for_image` does not take it
    (HGV metadata given, with no record for that id or for the file); else None. Ingest lists
    these, so that a curator sees which images got no papyri.info link and why."""
    return _match_name(_base_name(path), metadata, hgv_given)[3]


def _base_name(path: str | os.PathLike[str]) -> str:
    return os.fspath(path).replace("\\", "/").rsplit("/", 1)[-1]


def record_for_image(
    path: str | os.PathLike[str], metadata: Mapping[str, PapyrusRecord], *, hgv_given: bool | None = None
) -> PapyrusRecord:
    """Record for an image file: its metadata record (if any) completed from the file name.

    Looks up ``"file:" + <base name>``, then the HGV id parsed from the name (bare, then
    ``"hgv:<id>"``). When ``metadata`` holds HGV records (``hgv_given``; worked out from
    ``metadata`` when None) but none for that id, the name's number is not taken as one
    (:func:`name_id_unknown`). The file name's inventory key always wins (it is the ground
    truth for "same papyrus"); inventory text and collection are kept from the record when its
    key agrees, else derived from the file name. Without a match a minimal record is built from
    the name alone (key "hgv:<id>" or "file:<stem>").
    """
    return _record_and_unknown(path, metadata, hgv_given)[0]


def records_for_images(
    paths: Iterable[str | os.PathLike[str]], metadata: Mapping[str, PapyrusRecord]
) -> tuple[list[PapyrusRecord], list[tuple[str, str]]]:
    """:func:`record_for_image` of each path, and ``(path, number)`` of those :func:`name_id_unknown`
    names (what an ingest reports), each name read once."""
    hgv_given = holds_hgv_records(metadata)
    records: list[PapyrusRecord] = []
    unlinked: list[tuple[str, str]] = []
    for path in paths:
        record, unknown = _record_and_unknown(path, metadata, hgv_given)
        records.append(record)
        if unknown:
            unlinked.append((os.fspath(path), unknown))
    return records, unlinked


def _record_and_unknown(
    path: str | os.PathLike[str], metadata: Mapping[str, PapyrusRecord], hgv_given: bool | None
) -> tuple[PapyrusRecord, str | None]:
    base = _base_name(path)
    hgv_id, inventory_key, record, unknown = _match_name(base, metadata, hgv_given)
    return _complete(base, hgv_id, inventory_key, record), unknown


def _complete(base: str, hgv_id: str | None, inventory_key: str | None, record: PapyrusRecord | None) -> PapyrusRecord:
    """The record of an image named ``base``: ``record`` completed from the name's parts."""
    derived = inventory_from_key(inventory_key) if inventory_key else None
    if record is None:
        return PapyrusRecord(
            key=_record_key(hgv_id, _image_stem(base)) or f"file:{base}",
            hgv_id=hgv_id,
            inventory=derived[0] if derived else None,
            inventory_key=inventory_key,
            collection=derived[1] if derived else None,
            papyri_info_url=_papyri_info_url(hgv_id, None),
        )
    if inventory_key is None:
        return record
    if derived is None:
        return replace(record, inventory_key=inventory_key)
    same = record.inventory_key == inventory_key
    return replace(
        record,
        inventory_key=inventory_key,
        inventory=record.inventory if same and record.inventory else derived[0],
        collection=record.collection if same and record.collection else derived[1],
    )
