"""``%load_ext papyrus_widgets`` and the ``%papyrus`` line magic in a real IPython shell."""

from __future__ import annotations

import pytest
from IPython.core.interactiveshell import InteractiveShell

from papyrus_widgets import index

from .conftest import reference


@pytest.fixture()
def ip(monkeypatch, settings):
    monkeypatch.setenv("PAPYRUS_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("PAPYRUS_MODEL", str(settings.model))
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "papyrus_widgets")
    yield shell
    InteractiveShell.clear_instance()


def test_papyrus_search_magic_returns_results(ip, indexed_engine):
    results = ip.run_line_magic("papyrus", f"search {reference('21114_p_g_24.jpg')} -k 3")
    assert results.top.inventory_key == "p_g_24" and len(results) == 3


def test_papyrus_magic_errors_are_one_line(ip, indexed_engine, capsys):
    assert ip.run_line_magic("papyrus", "search /no/such/photo.jpg") is None
    out = capsys.readouterr().out
    assert out.strip() == "papyrus search: no such file: /no/such/photo.jpg"


def test_papyrus_db_magic_prints_counts(ip, indexed_engine, capsys):
    ip.run_line_magic("papyrus", "db status")
    assert f"schema version {index.MIGRATIONS[-1][0]}:" in capsys.readouterr().out


def test_papyrus_search_magic_takes_ef_search(ip, indexed_engine, capsys):
    results = ip.run_line_magic("papyrus", f"search {reference('21114_p_g_24.jpg')} -k 2 --ef-search 90")
    assert results.ef_search == 90 and results.top.inventory_key == "p_g_24"
    assert ip.run_line_magic("papyrus", f"search {reference('21114_p_g_24.jpg')} --ef-search 0") is None
    assert capsys.readouterr().out.strip() == "papyrus search: --ef-search must be between 1 and 1000, got 0."
