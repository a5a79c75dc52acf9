"""The demo gallery: download a curated list of papyrus images into a cache, with checksums.

A gallery manifest is a CSV (``file, image_url, sha256`` plus any metadata columns that
:func:`papyrus_widgets.metadata.read_csv_records` understands, e.g. ``tm, url``). The package
ships one (``data/demo_gallery.csv``: 48 documentary papyri from the padoc list, images at their
holding institutions). :func:`fetch_gallery` downloads what is missing into
``<dest>/references/``, retries transient failures, checks sha256 sums (a manifest without sums
records them on first download and checks the cache against them afterwards), and copies the
manifest to ``<dest>/metadata.csv`` so that ``papyrus ingest <dest>/references --metadata
<dest>/metadata.csv`` (or ``papyrus demo``) indexes the gallery with its records.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

from .errors import PapyrusError

DEFAULT_MANIFEST = "demo_gallery.csv"
MAX_DOWNLOAD_BYTES = 100 * 1024 * 1024
USER_AGENT = "papyrus-widgets (demo gallery; https://papyri.info)"


class GalleryError(PapyrusError, RuntimeError):
    """The gallery manifest cannot be read, or nothing could be downloaded."""


@dataclass
class GalleryReport:
    folder: Path
    metadata: Path
    downloaded: int = 0
    cached: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"gallery {self.folder}: {self.downloaded} downloaded, {self.cached} cached, {len(self.failed)} failed"
        return text + "".join(f"\n  failed: {name}: {why}" for name, why in self.failed)


def _read_text(source: str | os.PathLike[str] | None, timeout: float) -> str:
    if source is None:
        return resources.files("papyrus_widgets").joinpath("data", DEFAULT_MANIFEST).read_text("utf-8")
    text = str(source)
    if text.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(_request(text), timeout=timeout) as resp:
                return resp.read(MAX_DOWNLOAD_BYTES).decode("utf-8")
        except (urllib.error.URLError, OSError) as exc:
            raise GalleryError(f"cannot fetch the gallery manifest {text}: {exc}") from None
    try:
        return Path(text).expanduser().read_text("utf-8")
    except OSError as exc:
        raise GalleryError(f"cannot read the gallery manifest {text}: {exc.strerror}") from None


def read_manifest(source: str | os.PathLike[str] | None = None, timeout: float = 30) -> list[dict[str, str]]:
    """Rows of a manifest (path, URL, or None for the shipped demo gallery)."""
    text = _read_text(source, timeout)
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or not {"file", "image_url"} <= set(rows[0]):
        raise GalleryError("a gallery manifest is a CSV with at least the columns file and image_url.")
    for row in rows:
        name = row["file"]
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise GalleryError(f"bad file name {name!r} in the gallery manifest: plain file names only.")
        if not row["image_url"].startswith(("http://", "https://", "file://")):
            raise GalleryError(f"{name}: image_url must be an http(s) or file URL.")
    return rows


def _request(url: str) -> urllib.request.Request:
    return urllib.request.Request(url, headers={"User-Agent": USER_AGENT})


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: Path, *, retries: int = 3, timeout: float = 30, backoff: float = 1.0) -> None:
    """Download ``url`` to ``dest`` atomically; retries on network errors and 5xx/429 answers."""
    last: str = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            with urllib.request.urlopen(_request(url), timeout=timeout) as resp:
                fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
                size = 0
                try:
                    with os.fdopen(fd, "wb") as out:
                        while chunk := resp.read(1 << 20):
                            size += len(chunk)
                            if size > MAX_DOWNLOAD_BYTES:
                                raise GalleryError(f"larger than {MAX_DOWNLOAD_BYTES // 2**20} MB")
                            out.write(chunk)
                    os.replace(tmp, dest)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
            return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
            if exc.code < 500 and exc.code != 429:
                break  # 404 and friends do not get better by retrying
        except (urllib.error.URLError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
    raise GalleryError(last or "download failed")


def fetch_gallery(
    dest: str | os.PathLike[str],
    manifest: str | os.PathLike[str] | None = None,
    *,
    retries: int = 3,
    timeout: float = 30,
    progress: bool = True,
    backoff: float = 1.0,
    on_item: Callable[[str], None] | None = None,
) -> GalleryReport:
    """Download the gallery of ``manifest`` (default: the shipped demo gallery) into ``dest``."""
    from tqdm.auto import tqdm

    rows = read_manifest(manifest, timeout)
    root = Path(dest).expanduser()
    folder = root / "references"
    folder.mkdir(parents=True, exist_ok=True)
    sums_path = root / "checksums.json"
    try:
        known: dict[str, str] = json.loads(sums_path.read_text()) if sums_path.exists() else {}
    except (OSError, ValueError):
        known = {}
    report = GalleryReport(folder=folder, metadata=root / "metadata.csv")
    for row in tqdm(rows, desc="gallery", unit="img", disable=not progress):
        name = row["file"]
        target = folder / name
        expected = (row.get("sha256") or "").strip().lower() or known.get(name)
        if on_item:
            on_item(name)
        if target.exists():
            if not expected or _sha256(target) == expected:
                known.setdefault(name, _sha256(target))
                report.cached += 1
                continue
            target.unlink()  # a corrupt or changed cache entry is fetched again
        try:
            download(row["image_url"], target, retries=retries, timeout=timeout, backoff=backoff)
        except GalleryError as exc:
            report.failed.append((name, f"{row['image_url']}: {exc}"))
            continue
        got = _sha256(target)
        if expected and got != expected:
            target.unlink()
            report.failed.append((name, f"checksum mismatch (expected {expected[:12]}…, got {got[:12]}…)"))
            continue
        known[name] = got
        report.downloaded += 1
    sums_path.write_text(json.dumps(known, indent=1, sort_keys=True))
    with report.metadata.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if not report.downloaded and not report.cached:
        raise GalleryError(
            f"no image of the gallery could be downloaded ({report.failed[0][1] if report.failed else 'empty'}): "
            "check the network, or give a local folder with papyrus demo --gallery DIR."
        )
    return report
