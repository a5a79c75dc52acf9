"""Plain Python scripts and shells on servers: what ``python script.py`` and ``papyrus`` print.

Each case runs a real script (or the ``papyrus`` command) in a subprocess, with a data directory
of its own and ``XDG_RUNTIME_DIR`` unset, as on many servers and in containers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import REFERENCES

SCANS = ["19314_p_g_25_a.jpg", "21114_p_g_24.jpg"]


def _env(data_dir: Path, model_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAPYRUS_") and k != "XDG_RUNTIME_DIR"}
    env.update(PAPYRUS_DATA_DIR=str(data_dir), PAPYRUS_MODEL=str(model_dir), PAPYRUS_DASK_WORKERS="1")
    return env


def _run_script(folder: Path, source: str, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    script = folder / "script.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, str(script)], cwd=folder, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_script_without_main_guard_ingests_and_searches(tmp_path, model_dir):
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in SCANS:
        (scans / name).symlink_to(REFERENCES / name)
    proc = _run_script(
        tmp_path,
        """
        from papyrus_widgets import ingest, search

        print(ingest("scans", progress=False))
        hit = search("scans/21114_p_g_24.jpg", k=1)[0]
        print("HIT", hit.inventory)
        """,
        _env(tmp_path / "data", model_dir),
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 added, 0 skipped" in proc.stdout and "HIT P.Heid. inv. G 24" in proc.stdout, proc.stdout
    assert "Traceback" not in proc.stderr and "Nanny failed" not in proc.stderr, proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr
    # the one line that says what happened and how to get worker processes
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert 'if __name__ == "__main__":' in proc.stderr and "threads" in proc.stderr


@pytest.mark.parametrize(
    "source, unguarded",
    [
        ("print(unguarded_main_script() is not None)", True),
        ("def f():\n    return unguarded_main_script()\nprint(f() is not None)", True),
        ('if __name__ == "__main__":\n    print(unguarded_main_script() is not None)', False),
        ("def main():\n    print(unguarded_main_script() is not None)\nif '__main__' == __name__:\n    main()", False),
        ('if __name__ == "__main__":\n    pass\nelse:\n    pass\nprint(unguarded_main_script() is not None)', True),
        (
            "import dask\ndask.config.set({'distributed.worker.multiprocessing-method': 'fork'})\n"
            "print(unguarded_main_script() is not None)",
            False,
        ),
    ],
    ids=["top-level", "function-at-top-level", "guarded", "guarded-main", "after-guard", "fork"],
)
def test_unguarded_main_script_detection(tmp_path, source, unguarded):
    proc = _run_script(
        tmp_path, "from papyrus_widgets.services import unguarded_main_script\n" + source, dict(os.environ), 120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(unguarded)


def test_unguarded_main_script_is_none_without_a_main_file():
    # python -c, a REPL or a notebook kernel: nothing is re-imported by a worker process
    proc = subprocess.run(
        [sys.executable, "-c", "from papyrus_widgets.services import unguarded_main_script as u; print(u())"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == "None", proc.stderr


def test_doctor_prints_no_warnings_without_xdg_runtime_dir(tmp_path, model_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "papyrus_widgets.cli", "doctor"],
        env=_env(tmp_path / "data", model_dir), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok   database" in proc.stdout and "ok   dask" in proc.stdout, proc.stdout
    assert "Warning" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
