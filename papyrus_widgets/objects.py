"""Object storage for originals, query images and thumbnails.

One protocol, :class:`ObjectStore`; the default :class:`LocalStore` keeps objects in a directory
under the user data dir. Keys are content-addressed (sha256), so storing the same bytes twice is
a no-op.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Protocol, runtime_checkable

from .config import Settings
from .errors import ServiceError

ORIGINALS = "originals"
QUERIES = "queries"
THUMBNAILS = "thumbnails"

_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "TIFF": ".tif", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}


def object_key(prefix: str, sha256: str, ext: str = "") -> str:
    """``originals/ab/abcdef….jpg`` — the one way keys are made."""
    if prefix not in (ORIGINALS, QUERIES, THUMBNAILS):
        raise ValueError(f"unknown object prefix {prefix!r}")
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError("object keys are made from a sha256 hex digest")
    if ext and not (ext.startswith(".") and ext[1:].isalnum() and len(ext) <= 6):
        raise ValueError(f"bad file extension {ext!r}")
    return f"{prefix}/{sha256[:2]}/{sha256}{ext.lower()}"


def extension_for(name: str | None, fmt: str | None = None) -> str:
    """A safe extension from a Pillow format or a file name (``''`` when unknown)."""
    if fmt and fmt.upper() in _EXTENSIONS:
        return _EXTENSIONS[fmt.upper()]
    suffix = Path(name or "").suffix.lower()
    return suffix if suffix[1:].isalnum() and 1 < len(suffix) <= 6 else ""


@runtime_checkable
class ObjectStore(Protocol):
    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def count(self, prefix: str = "") -> int: ...

    def describe(self) -> str: ...


class LocalStore:
    """Objects as files under ``root``. Keys cannot escape the root."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser().resolve()

    def _path(self, key: str) -> Path:
        if not key or key.startswith(("/", "\\")) or "\\" in key or "\x00" in key:
            raise ValueError(f"invalid object key {key!r}")
        parts = key.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"invalid object key {key!r}")
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"object key {key!r} escapes the store")
        return path

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        if path.exists() and path.stat().st_size == len(data):
            return  # content-addressed: same key, same bytes
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)  # atomic: readers never see half a file
        except OSError as exc:
            raise ServiceError(f"cannot write to the object store at {self.root}: {exc.strerror}") from None

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None
        except OSError as exc:
            raise ServiceError(f"cannot read {key} from the object store at {self.root}: {exc.strerror}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def count(self, prefix: str = "") -> int:
        base = self.root / prefix if prefix else self.root
        if prefix:
            self._path(prefix)
        return sum(1 for p in base.rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))

    def describe(self) -> str:
        return f"local directory {self.root}"


def open_store(settings: Settings) -> ObjectStore:
    """The object store the settings name (local directory by default)."""
    if settings.s3_endpoint:
        raise ServiceError(
            "PAPYRUS_S3_ENDPOINT is set, but the S3/MinIO store is not part of this release yet: "
            "unset it to use the local directory store."
        )
    return LocalStore(settings.data_dir / "objects")
