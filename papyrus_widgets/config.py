"""Settings: read once from the environment (or keyword arguments) into one frozen object.

Every setting has one name and is read here only. ``Settings.describe()`` shows them with
credentials masked (used by ``papyrus doctor`` and reprs).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit, urlunsplit

import platformdirs

DEFAULT_MODEL = "veerav96/papyrusNet"
"""Hub repo id of the published papyrusNet model (Siamese ResNet18, 128-d)."""

DEFAULT_EPOCHS = 15
"""Default epochs of :func:`papyrus_widgets.training.train_triplets`: 44 images x 15 epochs = 90
steps of 16 views, about 2 minutes on 2 idle CPU cores (about 8.5 s per epoch; measured on the
development machine)."""

CPU_RECIPE: Mapping[str, Any] = MappingProxyType(
    {"trainable": "head", "cache_views": 16, "epochs": 40, "steps_per_epoch": 50, "batch_size": 16}
)
"""What ``papyrus train`` and ``papyrus demo`` train by default
(:func:`papyrus_widgets.training.recipe_options`): the network's head on cached trunk features of
16 re-photographs per papyrus, 40 epochs x 50 steps of 16 views (about a minute on a CPU).
Training the whole network from random weights on a CPU for minutes collapses (all papyri look
alike); this recipe beats the untrained network (benchmarks/bench_retrieval.py: top-1 0.24 → 0.51
on the Heidelberg references)."""

ENV_PREFIX = "PAPYRUS_"


def _env_bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    """All configuration of papyrus-widgets. Build with :meth:`from_env`."""

    data_dir: Path = field(default_factory=lambda: Path(platformdirs.user_data_dir("papyrus-widgets")))
    database_url: str | None = None
    """PostgreSQL with pgvector. None: an embedded server under ``data_dir/postgres``."""
    s3_endpoint: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_bucket: str = "papyrus"
    s3_secure: bool = True
    s3_timeout: float = 30.0
    """Seconds the S3 client waits for the server to accept a connection (at most 10) and for
    each answer; a request that times out is tried once more, so a hung server fails a call with
    a ServiceError after about twice this."""
    dask_scheduler: str | None = None
    """Address of a Dask scheduler. None: a LocalCluster created once per process."""
    dask_workers: int = 2
    model: str | None = None
    """Hugging Face Hub repo id or a local directory / checkpoint file. None: the model that built
    the index (recorded at ingest), else :data:`DEFAULT_MODEL`."""
    model_revision: str | None = None
    max_image_pixels: int = 60_000_000
    """Images larger than this (width x height) are refused before decoding."""
    max_upload_bytes: int = 64 * 1024 * 1024
    thumbnail_size: int = 256
    verify: bool = True
    """Searches confirm their candidates by local-feature geometric verification (evidence, the
    region found, confirmed or not) unless asked not to. ``PAPYRUS_VERIFY=0``: return the first
    stage's ranking (visual words and embedding) without the confirming stage."""
    vocabulary: str | None = None
    """The visual vocabulary (a ``.npz`` of :mod:`papyrus_widgets.retrieval.vocabulary`) that turns
    local features into the words of the first stage. None: the vocabulary that built the index
    (recorded at ingest), else the one that ships with the package."""
    presigned_urls: bool = False
    """The widget hands the browser presigned GET URLs of the S3 store for thumbnails and large
    reference images instead of sending the bytes through the kernel (only with ``s3_endpoint``,
    and only where the browser can reach that endpoint)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Settings from ``PAPYRUS_*`` environment variables, then keyword overrides."""
        e = os.environ if env is None else env
        values: dict[str, Any] = {}

        def get(name: str) -> str | None:
            v = e.get(ENV_PREFIX + name)
            return v if v not in (None, "") else None

        if get("DATA_DIR"):
            values["data_dir"] = Path(get("DATA_DIR")).expanduser()  # type: ignore[arg-type]
        for attr, name in [
            ("database_url", "DATABASE_URL"),
            ("s3_endpoint", "S3_ENDPOINT"),
            ("s3_access_key", "S3_ACCESS_KEY"),
            ("s3_secret_key", "S3_SECRET_KEY"),
            ("dask_scheduler", "DASK_SCHEDULER"),
            ("model_revision", "MODEL_REVISION"),
            ("vocabulary", "VOCABULARY"),
        ]:
            if get(name):
                values[attr] = get(name)
        if get("S3_BUCKET"):
            values["s3_bucket"] = get("S3_BUCKET")
        if get("MODEL"):
            values["model"] = get("MODEL")
        values["s3_secure"] = _env_bool(get("S3_SECURE"), True)
        values["verify"] = _env_bool(get("VERIFY"), True)
        values["presigned_urls"] = _env_bool(get("PRESIGNED_URLS"), False)
        raw = get("S3_TIMEOUT")
        if raw:
            try:
                values["s3_timeout"] = float(raw)
            except ValueError:
                raise ValueError(f"{ENV_PREFIX}S3_TIMEOUT={raw!r} is not a number of seconds") from None
            if not 0 < values["s3_timeout"] < float("inf"):
                raise ValueError(f"{ENV_PREFIX}S3_TIMEOUT={raw!r} must be a positive number of seconds")
        for attr, name in [
            ("dask_workers", "DASK_WORKERS"),
            ("max_image_pixels", "MAX_IMAGE_PIXELS"),
            ("max_upload_bytes", "MAX_UPLOAD_BYTES"),
        ]:
            raw = get(name)
            if raw:
                try:
                    values[attr] = int(raw)
                except ValueError:
                    raise ValueError(f"{ENV_PREFIX}{name}={raw!r} is not a whole number") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "data_dir" in values:
            values["data_dir"] = Path(values["data_dir"]).expanduser()
        return cls(**values)

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict[str, str]:
        """Every setting as text, credentials masked, for ``papyrus doctor`` and reprs."""
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in {"s3_access_key", "s3_secret_key"}:
                text = mask(value)
            elif f.name == "database_url":
                text = mask_url(value) if value else "(embedded PostgreSQL under data_dir/postgres)"
            elif f.name == "dask_scheduler" and not value:
                text = "(LocalCluster in this process)"
            elif f.name == "model" and not value:
                text = f"(the model that built the index, else {DEFAULT_MODEL})"
            elif f.name == "vocabulary" and not value:
                text = "(the vocabulary that built the index, else the one shipped with the package)"
            elif f.name == "s3_endpoint" and not value:
                text = "(local directory store under data_dir/objects)"
            else:
                text = "" if value is None else str(value)
            out[f.name] = text
        return out

    def __repr__(self) -> str:  # never print credentials
        inner = ", ".join(f"{k}={v!r}" for k, v in self.describe().items())
        return f"Settings({inner})"


def mask(secret: str | None) -> str:
    """``'abcd…'`` → ``'****'``; None → ``''``."""
    return "" if not secret else "****"


_DSN_PASSWORD = re.compile(r"((?:^|\s)(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S*)", re.IGNORECASE)


def mask_url(url: str) -> str:
    """Hide the password (and query secrets) of a connection URL or a ``key=value`` DSN."""
    if "://" not in url:
        return _DSN_PASSWORD.sub(lambda m: m.group(1) + "****", url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return "****"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:****@{host}" if ":" in userinfo else f"{user}@{host}"
    query = "&".join(
        (p.split("=", 1)[0] + "=****") if p.lower().startswith(("password=", "sslpassword=")) else p
        for p in parts.query.split("&")
        if p
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_PASSWORD_PARAM = re.compile(
    r"(?:^|[\s&?;])(?:ssl)?password\s*=\s*('(?:[^'\\]|\\.)*'|[^\s&;]*)", re.IGNORECASE
)


def hide_passwords(text: str, url: str) -> str:
    """``text`` with every password of the connection string ``url`` replaced by ``****``.

    libpq's own messages can quote parts of the string it could not parse (a bad percent-escape in
    the password, an unclosed ``[``), and a ``key=value`` string is not a URL ``mask_url`` knows.
    """
    secrets: set[str] = set()
    authority = re.split(r"[/?#]", url.split("://", 1)[1], maxsplit=1)[0] if "://" in url else ""
    for userinfo in {authority.split("@", 1)[0], authority.rsplit("@", 1)[0]} if "@" in authority else ():
        if ":" in userinfo:  # user:password@host; libpq ends it at the first '@', urlsplit at the last
            secrets.add(userinfo.split(":", 1)[1])
    for m in _PASSWORD_PARAM.finditer(url):  # ?password=… and password=… in key=value strings
        value = m.group(1)
        secrets.add(value)
        if len(value) >= 2 and value[0] == value[-1] == "'":
            secrets.add(value[1:-1])
    secrets |= {unquote(s) for s in secrets}
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "****")
    return text


_URL_WITH_USERINFO = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/@'\"<>]+@[^\s'\"<>]*")


def mask_urls_in(message: str) -> str:
    """Mask passwords of any connection URL inside a message shown to a person."""
    return _URL_WITH_USERINFO.sub(lambda m: mask_url(m.group(0)), message)
