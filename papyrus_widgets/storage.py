"""Object storage for originals, query images, deskewed query crops, thumbnails and local features.

One protocol, :class:`ObjectStore`; the default :class:`LocalStore` keeps objects in a directory
under the user data dir, :class:`S3Store` in a bucket of MinIO or any S3-compatible server
(``PAPYRUS_S3_ENDPOINT``). Keys are content-addressed (sha256), so storing the same bytes twice is
a no-op.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable
from urllib.parse import urlsplit

from .config import Settings
from .errors import ServiceError

ORIGINALS = "originals"
QUERIES = "queries"
THUMBNAILS = "thumbnails"
CROPS = "crops"
"""Deskewed query crops (JPEG), as the model saw them, keyed by the query and its corners."""
FEATURES = "features"
"""Local features of each original (``verify.Features`` as ``.npz``), made at ingest."""
UPLOADS = "uploads"
"""Scans an ingest sent through the store because its workers cannot read the client's files
(``Engine.ingest(upload=...)``); removed when that ingest ends."""

_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "TIFF": ".tif", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}


def object_key(prefix: str, sha256: str, ext: str = "") -> str:
    """``originals/ab/abcdef….jpg`` — the one way keys are made."""
    if prefix not in (ORIGINALS, QUERIES, THUMBNAILS, CROPS, FEATURES, UPLOADS):
        raise ValueError(f"unknown object prefix {prefix!r}")
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError("object keys are made from a sha256 hex digest")
    if ext and not (ext.startswith(".") and ext[1:].isalnum() and len(ext) <= 6):
        raise ValueError(f"bad file extension {ext!r}")
    return f"{prefix}/{sha256[:2]}/{sha256}{ext.lower()}"


def features_key(original_key: str) -> str:
    """``features/ab/abcdef….npz`` for ``originals/ab/abcdef….jpg``: the local features of an original."""
    sha = check_key(original_key).rsplit("/", 1)[-1].split(".", 1)[0]
    return object_key(FEATURES, sha, ".npz")


def crop_key(query_key: str, corners: Sequence[Sequence[float]]) -> str:
    """``crops/ab/<sha256>.jpg``: the deskewed crop of the stored query ``query_key`` by ``corners``
    (the same query and corners give the same key, so a repeated search stores it once)."""
    text = check_key(query_key) + "|" + ";".join(f"{float(x):.2f},{float(y):.2f}" for x, y in corners)
    return object_key(CROPS, hashlib.sha256(text.encode()).hexdigest(), ".jpg")


def extension_for(name: str | None, fmt: str | None = None) -> str:
    """A safe extension from a Pillow format or a file name (``''`` when unknown)."""
    if fmt and fmt.upper() in _EXTENSIONS:
        return _EXTENSIONS[fmt.upper()]
    suffix = Path(name or "").suffix.lower()
    return suffix if suffix[1:].isalnum() and 1 < len(suffix) <= 6 else ""


def check_key(key: str) -> str:
    """``key`` if it is a relative path of plain segments (no ``..``, no leading ``/``), else ValueError."""
    if not key or key.startswith(("/", "\\")) or "\\" in key or "\x00" in key:
        raise ValueError(f"invalid object key {key!r}")
    if any(p in ("", ".", "..") for p in key.split("/")):
        raise ValueError(f"invalid object key {key!r}")
    return key


@runtime_checkable
class ObjectStore(Protocol):
    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def count(self, prefix: str = "") -> int: ...

    def describe(self) -> str: ...


def upload_key(run: str, sha256: str, name: str) -> str:
    """``uploads/ab/<sha256>.jpg``: where ingest ``run`` stages the scan with content ``sha256``
    (named ``name``) for its workers. Keyed by run and content, so two ingests of the same scan at
    once never remove each other's copy, and a scan listed twice in one run is sent once."""
    digest = hashlib.sha256(f"{run}|{sha256}".encode()).hexdigest()
    return object_key(UPLOADS, digest, extension_for(name))


class LocalStore:
    """Objects as files under ``root``. Keys cannot escape the root."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser().resolve()

    def _path(self, key: str) -> Path:
        check_key(key)
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


class S3Store:
    """Objects in a bucket of MinIO or any S3-compatible server, through the official ``minio`` client.

    The bucket is created on first use. One client (and its HTTP connection pool) per store; the
    worker cache (``tasks.worker_store``) keeps one store per process. Large payloads go up as a
    multipart upload of :attr:`PART_SIZE` parts. Every failure to reach the server is a
    :class:`ServiceError` naming the endpoint, never the secret key.

    ``timeout`` (``PAPYRUS_S3_TIMEOUT``) bounds each wait: for a connection (at most 10 s) and for
    each answer. A request is tried again once after a refused connection or a timeout (three times
    after an HTTP 5xx answer), so a server that is down fails a call within about twice the timeout
    instead of hanging the widget or the kernel.
    """

    PART_SIZE = 16 * 1024 * 1024
    """Multipart part size: payloads larger than this are uploaded in parts (S3 minimum: 5 MiB)."""

    def __init__(
        self,
        endpoint: str,
        access_key: str | None,
        secret_key: str | None,
        bucket: str,
        *,
        secure: bool = True,
        region: str | None = None,
        timeout: float = 30.0,
    ):
        import urllib3
        from minio import Minio

        self.host, self.secure = parse_endpoint(endpoint, secure)
        self.endpoint = f"{'https' if self.secure else 'http'}://{self.host}"
        self.bucket = bucket
        self.access_key = access_key  # an id, not a secret; the secret lives only in the client
        if bool(access_key) != bool(secret_key):
            raise ServiceError(
                "PAPYRUS_S3_ACCESS_KEY and PAPYRUS_S3_SECRET_KEY go together: set both (or neither for "
                "anonymous access)."
            )
        self.timeout = float(timeout)
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(10.0, self.timeout), read=self.timeout),
            maxsize=8,
            retries=urllib3.Retry(
                total=3, connect=1, read=1, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
        )
        try:
            self._client = Minio(
                self.host,
                access_key=access_key or None,
                secret_key=secret_key or None,
                secure=self.secure,
                region=region,
                http_client=http,
            )
        except ValueError as exc:
            raise ServiceError(
                f"PAPYRUS_S3_ENDPOINT={endpoint!r} is not usable ({exc}): "
                "give host:port or http(s)://host:port."
            ) from None
        self._bucket_ready = False
        self._lock = threading.Lock()

    # errors -------------------------------------------------------------------------------
    def _error(self, exc: BaseException, doing: str) -> ServiceError:
        """One readable line for a failure of the client (never the secret key)."""
        from minio.error import S3Error

        where = f"the object store at {self.endpoint} (bucket {self.bucket})"
        if isinstance(exc, S3Error):
            if exc.code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return ServiceError(
                    f"{where} refused to {doing} ({exc.code}): check PAPYRUS_S3_ACCESS_KEY, "
                    "PAPYRUS_S3_SECRET_KEY and the bucket policy."
                )
            return ServiceError(f"{where} could not {doing} ({exc.code}: {exc.message}).")
        if isinstance(exc, ValueError):  # the client's own checks (bucket name)
            return ServiceError(f"{where}: cannot {doing} ({exc}): check PAPYRUS_S3_BUCKET.")
        reason = _reason(exc)
        if any(word in reason.lower() for word in ("ssl", "certificate", "wrong_version")):
            hint = "check PAPYRUS_S3_SECURE (false for a plain-HTTP server) or the server's certificate."
        elif "timed out" in reason.lower():  # a hung server or a network that drops packets
            hint = (
                f"it did not answer within {self.timeout:g} s: check that it runs and PAPYRUS_S3_ENDPOINT is "
                "right, or raise PAPYRUS_S3_TIMEOUT for a slow link."
            )
        elif "error responses" in reason:  # urllib3 gave up retrying HTTP 5xx answers
            hint = "the server answers with errors: see its log, and check the keys and PAPYRUS_S3_ENDPOINT."
        else:
            hint = "check that it runs and PAPYRUS_S3_ENDPOINT is right, or unset it for the local store."
        return ServiceError(f"cannot reach the object store at {self.endpoint} to {doing} ({reason}): {hint}")

    def _call(self, doing: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _failures() as exc:
            raise self._error(exc, doing) from None

    def _ready(self) -> None:
        """Create the bucket on first use (once per store)."""
        if self._bucket_ready:
            return
        from minio.error import S3Error

        with self._lock:
            if self._bucket_ready:
                return
            try:
                if not self._client.bucket_exists(self.bucket):
                    try:
                        self._client.make_bucket(self.bucket)
                    except S3Error as exc:
                        if exc.code != "BucketAlreadyOwnedByYou":  # another worker made it first: fine
                            raise
            except _failures() as exc:
                raise self._error(exc, "open the bucket") from None
            self._bucket_ready = True

    @staticmethod
    def _is_missing(exc: BaseException) -> bool:
        from minio.error import S3Error

        return isinstance(exc, S3Error) and exc.code in ("NoSuchKey", "NoSuchObject", "NotFound")

    # the protocol -------------------------------------------------------------------------
    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        check_key(key)
        self._ready()
        size = self._size(key)
        if size == len(data):
            return  # content-addressed: same key, same bytes
        self._call(
            f"write {key}",
            self._client.put_object,
            self.bucket,
            key,
            io.BytesIO(data),
            length=len(data),
            content_type=content_type,
            part_size=self.PART_SIZE,
        )

    def _size(self, key: str) -> int | None:
        try:
            return self._client.stat_object(self.bucket, key).size
        except _failures() as exc:
            if self._is_missing(exc):
                return None
            raise self._error(exc, f"look up {key}") from None

    def get(self, key: str) -> bytes:
        check_key(key)
        self._ready()
        try:
            response = self._client.get_object(self.bucket, key)
        except _failures() as exc:
            if self._is_missing(exc):
                raise KeyError(key) from None
            raise self._error(exc, f"read {key}") from None
        try:
            return self._call(f"read {key}", response.read)
        finally:
            response.close()
            response.release_conn()

    def exists(self, key: str) -> bool:
        check_key(key)
        self._ready()
        return self._size(key) is not None

    def delete(self, key: str) -> None:
        check_key(key)
        self._ready()
        self._call(f"delete {key}", self._client.remove_object, self.bucket, key)

    def count(self, prefix: str = "") -> int:
        if prefix:
            prefix = check_key(prefix) + "/"  # a folder, as in LocalStore ("thumbnails2/" is not in it)
        self._ready()
        listing = self._client.list_objects(self.bucket, prefix=prefix or None, recursive=True)
        return self._call(f"list {prefix or 'the bucket'}", lambda: sum(1 for _ in listing))

    def describe(self) -> str:
        return f"S3 bucket {self.bucket} at {self.endpoint}"

    def presigned_url(self, key: str, expires: int | timedelta = 3600) -> str:
        """A GET URL for ``key`` that works without credentials for ``expires`` (seconds, max 7 days)."""
        check_key(key)
        self._ready()
        if not isinstance(expires, timedelta):
            expires = timedelta(seconds=int(expires))
        return self._call(
            f"sign a URL for {key}", self._client.presigned_get_object, self.bucket, key, expires=expires
        )


def parse_endpoint(endpoint: str, secure: bool = True) -> tuple[str, bool]:
    """``host:port`` or ``http(s)://host:port`` → (host:port, TLS?); without a scheme ``secure`` decides."""
    text = endpoint.strip()
    if "@" in text:  # never echo it: it may hold a secret
        raise ServiceError(
            "PAPYRUS_S3_ENDPOINT must not hold credentials: use PAPYRUS_S3_ACCESS_KEY and _SECRET_KEY."
        )
    bad = ServiceError(f"PAPYRUS_S3_ENDPOINT={endpoint!r} is not host:port or http(s)://host:port (no path).")
    try:
        parts = urlsplit(text.rstrip("/") if "://" in text else f"{'https' if secure else 'http'}://{text}")
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise bad from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/"):
        raise bad
    if parts.query or parts.fragment or parts.netloc.endswith(":"):
        raise bad
    return parts.netloc, parts.scheme == "https"


def _failures() -> tuple[type[BaseException], ...]:
    """What the minio client raises when the server cannot be used (mapped to ServiceError)."""
    import urllib3
    from minio.error import MinioException

    return (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError)


def _reason(exc: BaseException) -> str:
    inner = getattr(exc, "reason", None) or exc
    text = str(inner).strip()
    first = text.splitlines()[0] if text else type(inner).__name__
    return first.split("): ", 1)[-1]  # drop urllib3's "HTTPConnection(host=…, port=…)" prefix


def open_store(settings: Settings) -> ObjectStore:
    """The object store the settings name: S3/MinIO when ``s3_endpoint`` is set, else a local directory."""
    if settings.s3_endpoint:
        return S3Store(
            settings.s3_endpoint,
            settings.s3_access_key,
            settings.s3_secret_key,
            settings.s3_bucket,
            secure=settings.s3_secure,
            timeout=settings.s3_timeout,
        )
    return LocalStore(settings.data_dir / "objects")
