"""Shared fixtures: real services started by the test session itself.

- ``settings``: a temporary data dir (embedded PostgreSQL + pgvector, local object store), a
  LocalCluster, and a model saved in Hugging Face Hub format in a temporary directory;
- ``engine`` / ``indexed_engine``: the engine over those services, the latter with the shared
  Heidelberg references ingested with their HGV records.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
REFERENCES = SHARED_DATA / "heidelberg" / "references"
HGV_DIR = SHARED_DATA / "heidelberg" / "hgv-epidoc"
TEST_OUTPUT = REPO / "test-output"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full", action="store_true", help="also run the tests marked full (heavy; `make test-full` passes it)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--full"):
        return
    skip = pytest.mark.skip(reason="heavy: run by `make test-full` (pytest --full)")
    for item in items:
        if "full" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config: pytest.Config) -> None:
    if not REFERENCES.is_dir():
        raise pytest.UsageError(f"the shared test data is missing: expected {REFERENCES} (../shared beside the repo)")
    TEST_OUTPUT.mkdir(exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(Path("/tmp") / f"runtime-{os.getuid()}"))
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, exist_ok=True)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded, untrained SiameseResNet18 in Hub format (the real loading path reads it)."""
    import torch

    from papyrus_widgets.model import SiameseResNet18

    torch.manual_seed(1234)
    out = tmp_path_factory.mktemp("model")
    SiameseResNet18().save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory, model_dir: Path):
    from papyrus_widgets.config import Settings

    data_dir = tmp_path_factory.mktemp("papyrus-data")
    return Settings.from_env(env={}, data_dir=data_dir, model=str(model_dir), dask_workers=2)


@pytest.fixture(scope="session")
def engine(settings):
    from papyrus_widgets.api import get_engine
    from papyrus_widgets.services import close_clients

    eng = get_engine(settings)
    yield eng
    close_clients()


@pytest.fixture(scope="session")
def ingest_report(engine):
    return engine.ingest(REFERENCES, HGV_DIR, progress=False)


@pytest.fixture(scope="session")
def indexed_engine(engine, ingest_report):
    return engine


def reference(name: str) -> Path:
    path = REFERENCES / name
    assert path.is_file(), path
    return path
