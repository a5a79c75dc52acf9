"""Credentials never show: not in reprs, ``describe()``, ``papyrus doctor``, error messages from an
unreachable database or object store, nor the engine's repr.

(Parameterised SQL is tested in test_index.py, keys that cannot escape the local store in
test_storage.py, ``weights_only`` checkpoints in test_model.py, widget state in test_widget.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from papyrus_widgets import services
from papyrus_widgets.api import Engine
from papyrus_widgets.config import Settings
from papyrus_widgets.errors import PapyrusError, ServiceError

from .conftest import reference

PASSWORD = "hunter2-Zq9"
ACCESS_KEY = "AKIAPAPYRUSEXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYPAPYRUS"
SECRETS = (PASSWORD, ACCESS_KEY, SECRET_KEY)
PAPYRUS = [sys.executable, "-m", "papyrus_widgets.cli"]


def _assert_clean(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} shows in: {text}"


# URLs a curator might write; each points at a server that is not there (fails in milliseconds)
UNREACHABLE = {
    "url-password": f"postgresql://curator:{PASSWORD}@/papyrus?host=/nonexistent-papyrus",
    "tcp-refused": f"postgresql://curator:{PASSWORD}@127.0.0.1:1/papyrus?connect_timeout=3",
    "query-password": f"postgresql:///papyrus?host=/nonexistent-papyrus&user=curator&password={PASSWORD}",
    "bad-percent-escape": f"postgresql://curator:{PASSWORD}%zz@/papyrus?host=/nonexistent-papyrus",
    "unclosed-ipv6-bracket": f"postgresql://curator:{PASSWORD}@[db.example.org/papyrus",
    "keyword-dsn": f"host=/nonexistent-papyrus user=curator password={PASSWORD} dbname=papyrus",
}


def test_settings_repr_and_describe_mask_credentials(tmp_path):
    s = Settings.from_env(
        env={
            "PAPYRUS_DATABASE_URL": UNREACHABLE["tcp-refused"] + f"&sslpassword={PASSWORD}",
            "PAPYRUS_S3_ENDPOINT": "127.0.0.1:1",
            "PAPYRUS_S3_ACCESS_KEY": ACCESS_KEY,
            "PAPYRUS_S3_SECRET_KEY": SECRET_KEY,
        },
        data_dir=tmp_path,
    )
    assert s.database_url and PASSWORD in s.database_url and s.s3_secret_key == SECRET_KEY  # really set
    described = s.describe()
    _assert_clean(repr(s), str(s), f"{s}", *described.values())
    assert described["database_url"].startswith("postgresql://curator:****@127.0.0.1:1/papyrus")
    assert described["s3_access_key"] == described["s3_secret_key"] == "****"
    engine = Engine(s)
    _assert_clean(repr(engine), str(engine))


def test_keyword_dsn_is_masked_in_describe(tmp_path):
    s = Settings(data_dir=tmp_path, database_url=UNREACHABLE["keyword-dsn"])
    _assert_clean(repr(s), *s.describe().values())


@pytest.mark.parametrize("kind", list(UNREACHABLE))
def test_unreachable_database_errors_hide_the_password(tmp_path, kind):
    engine = Engine(Settings(data_dir=tmp_path, database_url=UNREACHABLE[kind], model="unused"))
    for action in (
        lambda: engine.search(reference("19331_p_g_107.jpg"), k=1),
        engine.stats,
        engine.resolved_settings,
    ):
        with pytest.raises(ServiceError) as info:
            action()
        text = str(info.value)
        _assert_clean(text, repr(info.value), repr(engine))
        assert "PostgreSQL" in text and "\n" not in text


def test_unreachable_object_store_errors_hide_the_keys(settings, tmp_path):
    # a working database (the session's), but an S3 endpoint with keys that nobody answers
    s3 = Settings(
        data_dir=tmp_path,
        database_url=services.database_url(settings),
        model=settings.model,
        s3_endpoint="127.0.0.1:1",
        s3_access_key=ACCESS_KEY,
        s3_secret_key=SECRET_KEY,
        s3_secure=False,
    )
    engine = Engine(s3)
    with pytest.raises(PapyrusError) as info:
        engine.search(reference("19331_p_g_107.jpg"), k=1)
    assert isinstance(info.value, ServiceError)
    _assert_clean(str(info.value), repr(info.value), repr(engine), repr(engine.resolved_settings()))
    assert "\n" not in str(info.value)


def test_doctor_never_prints_credentials(settings, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAPYRUS_")}
    env.update(
        PAPYRUS_DATA_DIR=str(tmp_path),
        PAPYRUS_MODEL=str(settings.model),
        PAPYRUS_DATABASE_URL=UNREACHABLE["query-password"] + "&connect_timeout=2",
        PAPYRUS_S3_ENDPOINT="127.0.0.1:1",
        PAPYRUS_S3_SECURE="false",
        PAPYRUS_S3_ACCESS_KEY=ACCESS_KEY,
        PAPYRUS_S3_SECRET_KEY=SECRET_KEY,
    )
    proc = subprocess.run(
        PAPYRUS + ["doctor", "--no-start"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    _assert_clean(proc.stdout, proc.stderr)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("ERR") and " database " in line for line in lines), proc.stdout
    assert any(line.startswith("ERR") and " object store " in line for line in lines), proc.stdout
    assert any("password=****" in line for line in lines), proc.stdout
    assert any(" s3_secret_key " in line and line.rstrip().endswith("****") for line in lines), proc.stdout
