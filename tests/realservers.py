"""Helpers for tests that start real servers as subprocesses on 127.0.0.1 (and always stop them)."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, TypeVar

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
