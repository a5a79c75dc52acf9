"""The local object store: content-addressed keys, atomic writes, no escape from the root."""

from __future__ import annotations

import pytest

from papyrus_widgets import storage
from papyrus_widgets.config import Settings
from papyrus_widgets.errors import ServiceError

SHA = "ab" * 32


def test_keys_are_content_addressed():
    assert storage.object_key(storage.ORIGINALS, SHA, ".JPG") == f"originals/ab/{SHA}.jpg"
    with pytest.raises(ValueError):
        storage.object_key("../etc", SHA)
    with pytest.raises(ValueError):
        storage.object_key(storage.ORIGINALS, "../../x")
    with pytest.raises(ValueError):
        storage.object_key(storage.ORIGINALS, SHA, "./../x")


def test_put_get_idempotent(tmp_path):
    store = storage.LocalStore(tmp_path)
    key = storage.object_key(storage.THUMBNAILS, SHA, ".jpg")
    store.put(key, b"hello")
    store.put(key, b"hello")
    assert store.get(key) == b"hello"
    assert store.exists(key) and store.count() == 1 and store.count("thumbnails") == 1
    store.delete(key)
    assert not store.exists(key)
    with pytest.raises(KeyError):
        store.get(key)


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "a//b", "a\\..\\b", "", "a/./b", "x\x00y"])
def test_keys_cannot_escape_root(tmp_path, key):
    store = storage.LocalStore(tmp_path / "root")
    with pytest.raises(ValueError):
        store.put(key, b"x")
    with pytest.raises(ValueError):
        store.get(key)
    assert not (tmp_path / "x").exists()


def test_unwritable_store_gives_service_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = storage.LocalStore(blocker)
    with pytest.raises(ServiceError, match="cannot write"):
        store.put(storage.object_key(storage.ORIGINALS, SHA), b"x")


def test_open_store_defaults_to_local(tmp_path):
    store = storage.open_store(Settings(data_dir=tmp_path))
    assert isinstance(store, storage.LocalStore)
    assert store.root == (tmp_path / "objects").resolve()


def test_upload_keys_are_per_run_and_content():
    sha = "ab" * 32
    key = storage.upload_key("run-1", sha, "scan.JPG")
    assert key.startswith("uploads/") and key.endswith(".jpg") and storage.check_key(key) == key
    assert storage.upload_key("run-1", sha, "other-name.jpg") == key  # one copy per content in a run
    assert storage.upload_key("run-2", sha, "scan.jpg") != key  # two ingests never share a copy
    assert storage.upload_key("run-1", "cd" * 32, "scan.jpg") != key
