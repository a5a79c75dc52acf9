"""The ``papyrus`` command in real subprocesses, sharing the test session's services."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import HGV_DIR, REFERENCES, reference

PAPYRUS = [sys.executable, "-m", "papyrus_widgets.cli"]


def run(args, settings, extra_env=None, timeout=300):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAPYRUS_")}
    env.update(PAPYRUS_DATA_DIR=str(settings.data_dir), PAPYRUS_MODEL=str(settings.model), PAPYRUS_DASK_WORKERS="1")
    env.update(extra_env or {})
    return subprocess.run(PAPYRUS + list(args), env=env, capture_output=True, text=True, timeout=timeout)


def test_search_json_names_the_papyrus(indexed_engine, settings):
    proc = run(["search", str(reference("19331_p_g_107.jpg")), "--json", "-k", "3"], settings)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["hits"][0]["inventory"] == "P.Heid. inv. G 107"
    assert payload["hits"][0]["inventory_key"] == "p_g_107" and len(payload["hits"]) == 3
    assert payload["hits"][0]["inliers"] > 0  # verified by default


@pytest.mark.parametrize(
    "args, env",
    [(["--no-verify"], {}), ([], {"PAPYRUS_VERIFY": "0"})],
    ids=["flag", "setting"],
)
def test_search_without_verification(indexed_engine, settings, args, env):
    proc = run(["search", str(reference("19331_p_g_107.jpg")), "--json", "-k", "2", *args], settings, env)
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)["hits"]
    assert hits[0]["inventory_key"] == "p_g_107" and all(h["inliers"] is None for h in hits)


def test_search_table_and_model_from_index(indexed_engine, settings):
    # without PAPYRUS_MODEL the index's own model is used
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAPYRUS_")}
    env.update(PAPYRUS_DATA_DIR=str(settings.data_dir), PAPYRUS_DASK_WORKERS="1")
    proc = subprocess.run(PAPYRUS + ["search", str(reference("21114_p_g_24.jpg")), "-k", "2"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[1].startswith("confirmed: P.Heid. inv. G 24"), out[1]  # the verdict, under the count
    first = out[3]
    assert "P.Heid. inv. G 24" in first and "1.000" in first and "confirmed" in first


@pytest.mark.parametrize(
    "args, words",
    [
        (["search", "/no/such.jpg"], "no such file"),
        (["search", str(REFERENCES / "19331_p_g_107.jpg"), "-k", "0"], "k must be between"),
        (["search", str(REFERENCES / "19331_p_g_107.jpg"), "--corners", "1,2,3"], "8 numbers"),
    ],
)
def test_errors_are_one_readable_line(indexed_engine, settings, args, words):
    proc = run(args, settings)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("papyrus ")]
    assert lines and words in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr


def test_search_with_ef_search(indexed_engine, settings):
    proc = run(["search", str(reference("19331_p_g_107.jpg")), "--json", "-k", "2", "--ef-search", "150"], settings)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["ef_search"] == 150 and payload["hits"][0]["inventory_key"] == "p_g_107"


@pytest.mark.parametrize("value", ["0", "1001", "-3", "abc", "2.5"])
def test_bad_ef_search_is_a_usage_error_in_one_line(settings, value):
    proc = run(["search", str(reference("19331_p_g_107.jpg")), "--ef-search", value], settings, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr  # one line
    assert proc.stderr.startswith("papyrus search: --ef-search ") and "1000" in proc.stderr, proc.stderr
    assert value in proc.stderr


def test_corrupt_image_file(indexed_engine, settings, tmp_path):
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(reference("19331_p_g_107.jpg").read_bytes()[:1500])
    proc = run(["search", str(bad)], settings)
    assert proc.returncode == 1 and "photo.jpg could not be decoded" in proc.stderr and "Traceback" not in proc.stderr


def test_doctor_masks_credentials(settings, tmp_path):
    proc = run(
        ["doctor", "--no-start"],
        settings,
        {"PAPYRUS_DATABASE_URL": f"postgresql://curator:hunter2@/papyrus?host={tmp_path}&connect_timeout=2"},
        timeout=120,
    )
    assert "hunter2" not in proc.stdout + proc.stderr
    assert "curator:****@" in proc.stdout
    assert proc.returncode == 1 and "ERR  database" in proc.stdout


def test_doctor_all_ok(indexed_engine, settings):
    proc = run(["doctor"], settings)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("database", "object store", "dask", "model"):
        assert any(line.startswith("ok ") and f" {name} " in line for line in proc.stdout.splitlines()), proc.stdout
    assert "pgvector" in proc.stdout


def test_ingest_cli_reports_summary(settings, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for name in ("19314_p_g_25_a.jpg", "21114_p_g_24.jpg"):
        (folder / name).symlink_to(REFERENCES / name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff nothing")
    proc = run(["ingest", str(folder), "--quiet", "--data-dir", str(tmp_path / "data")], settings)
    assert proc.returncode == 0, proc.stderr
    assert "2 added, 0 skipped (already indexed), 1 failed" in proc.stdout
    assert "broken.jpg" in proc.stdout
    assert "index: 2 papyri, 2 images" in proc.stdout

    # --upload: this process sends the scans not yet indexed (and the broken one) through the store
    (folder / "19331_p_g_107.jpg").symlink_to(REFERENCES / "19331_p_g_107.jpg")
    proc = run(["ingest", str(folder), "--quiet", "--upload", "--data-dir", str(tmp_path / "data")], settings)
    assert proc.returncode == 0, proc.stderr
    assert "1 added, 2 skipped (already indexed), 1 failed" in proc.stdout
    assert "; 2 sent to the workers through the object store" in proc.stdout
    assert "index: 3 papyri, 3 images" in proc.stdout
    assert not [p for p in (tmp_path / "data").rglob("uploads/*/*") if p.is_file()]  # staged copies removed

    # a name that begins like "<HGV id>_" with a number the HGV metadata does not know (Michigan's
    # "1203 C1 11") is indexed under its file name, without a link to another papyrus, and listed
    (folder / "1203_C1_11R.0.jpg").symlink_to(REFERENCES / "21108_p_g_407_a-c.jpg")
    proc = run(
        ["ingest", str(folder), "--quiet", "--metadata", str(HGV_DIR), "--data-dir", str(tmp_path / "data")], settings
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 added, 3 skipped (already indexed), 1 failed" in proc.stdout
    assert "1 name(s) begin with a number the HGV metadata does not know" in proc.stdout
    assert "1203_C1_11R.0.jpg (1203)" in proc.stdout
    assert "index: 4 papyri, 4 images" in proc.stdout
