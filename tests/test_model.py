"""Tests for papyrus_widgets.model (SiameseResNet18, loading from every source) and
papyrus_widgets.training (recapture, triplet training) — on CPU, with real reference scans."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from papyrus_widgets.errors import ModelError
from papyrus_widgets.imaging import decode_image, model_input
from papyrus_widgets.model import (
    SiameseResNet18,
    apply_freeze_policy,
    embed_arrays,
    load_model,
    model_fingerprint,
)
from papyrus_widgets.training import batch_hard_triplet_loss, recapture, train_triplets

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REFERENCES = DATA / "heidelberg" / "references"


@pytest.fixture(scope="module")
def model() -> SiameseResNet18:
    torch.manual_seed(7)
    return SiameseResNet18().eval()


@pytest.fixture(scope="module")
def ref_images() -> list[Image.Image]:
    paths = sorted(REFERENCES.glob("*.jpg"))[:6]
    assert len(paths) == 6, f"expected the Heidelberg references under {REFERENCES}"
    return [decode_image(p.read_bytes(), max_side=512, name=p.name) for p in paths]


@pytest.fixture(scope="module")
def inputs(ref_images) -> np.ndarray:
    return np.stack([model_input(img) for img in ref_images[:4]])


@pytest.fixture(scope="module")
def expected(model, inputs) -> np.ndarray:
    return embed_arrays(model, inputs)


def _papyrusnet_state(model: SiameseResNet18) -> dict[str, torch.Tensor]:
    """The published checkpoint's layout: keys ``base_model.*``."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(k.startswith("base_model.") for k in state)
    return state


# --------------------------------------------------------------------------------------------- the network


def test_forward_gives_unit_128d_vectors(model) -> None:
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = model(x)
    assert tuple(out.shape) == (3, 128)
    np.testing.assert_allclose(out.norm(dim=1).numpy(), np.ones(3), atol=1e-5)
    small = SiameseResNet18(embedding_dim=32).eval()
    with torch.inference_mode():
        assert tuple(small(x[:2]).shape) == (2, 32)


def test_freeze_policies() -> None:
    m = SiameseResNet18()
    trainable = {n.split(".")[1] for n, p in m.named_parameters() if p.requires_grad}
    frozen = {n.split(".")[1] for n, p in m.named_parameters() if not p.requires_grad}
    assert trainable == {"layer4", "fc"}
    assert frozen == {"conv1", "bn1", "layer1", "layer2", "layer3"}
    assert m._hub_mixin_config == {"embedding_dim": 128, "trainable": "layer4"}

    apply_freeze_policy(m, "head")
    assert [n for n, p in m.named_parameters() if p.requires_grad] == ["base_model.fc.weight", "base_model.fc.bias"]
    assert m._hub_mixin_config["trainable"] == "head"

    apply_freeze_policy(m, "all")
    assert all(p.requires_grad for p in m.parameters())
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 11_242_176  # resnet18 trunk + 512x128 fc

    with pytest.raises(ModelError, match="layer4, all, head"):
        apply_freeze_policy(m, "everything")


def test_embed_arrays_batches_and_restores_mode(model, inputs, expected) -> None:
    assert expected.shape == (4, 128) and expected.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(expected, axis=1), np.ones(4), atol=1e-5)
    with torch.inference_mode():
        direct = model(torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(embed_arrays(model, inputs, batch_size=3), direct, atol=1e-5)
    # different images give different embeddings
    assert float(expected[0] @ expected[1]) < 0.9999
    model.train()
    try:
        np.testing.assert_allclose(embed_arrays(model, inputs, batch_size=1), expected, atol=1e-5)
        assert model.training  # restored
    finally:
        model.eval()
    assert embed_arrays(model, np.zeros((0, 3, 224, 224), np.float32)).shape == (0, 128)


def test_fingerprint_tracks_weights(model) -> None:
    fp = model_fingerprint(model)
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert model_fingerprint(model) == fp
    other = SiameseResNet18()
    other.load_state_dict(model.state_dict())
    assert model_fingerprint(other) == fp
    with torch.no_grad():
        other.base_model.fc.bias[0] += 1e-3
    assert model_fingerprint(other) != fp


# --------------------------------------------------------------------------------------------- loading


def test_save_pretrained_round_trip(tmp_path, model, inputs, expected) -> None:
    model.save_pretrained(tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "model.safetensors", "README.md"} <= files
    assert json.loads((tmp_path / "m" / "config.json").read_text()) == {"embedding_dim": 128, "trainable": "layer4"}
    assert "library_name: papyrus-widgets" in (tmp_path / "m" / "README.md").read_text()
    loaded = load_model(str(tmp_path / "m"))
    assert not loaded.training
    assert model_fingerprint(loaded) == model_fingerprint(model)
    np.testing.assert_array_equal(embed_arrays(loaded, inputs), expected)


def test_papyrusnet_checkpoint_file_and_directory(tmp_path, model, inputs, expected) -> None:
    ckpt = tmp_path / "resnet18_checkpoint_RUN10.pth"
    torch.save({"model_state_dict": _papyrusnet_state(model), "epoch": 3}, ckpt)
    for source in (str(ckpt), str(tmp_path)):
        loaded = load_model(source)
        assert not loaded.training
        np.testing.assert_array_equal(embed_arrays(loaded, inputs), expected)


def test_checkpoint_variants_and_inferred_size(tmp_path, inputs) -> None:
    torch.manual_seed(3)
    m64 = SiameseResNet18(embedding_dim=64).eval()
    want = embed_arrays(m64, inputs)
    bare = {k[len("base_model.") :]: v for k, v in m64.state_dict().items()}
    variants = {
        "plain_with_prefix.pth": dict(m64.state_dict()),
        "state_dict_bare.pt": {"state_dict": bare},
        "dataparallel.pth": {"model_state_dict": {"module." + k: v for k, v in m64.state_dict().items()}},
        "bare_plain.pth": bare,
    }
    for name, payload in variants.items():
        torch.save(payload, tmp_path / name)
        loaded = load_model(str(tmp_path / name))
        assert loaded.embedding_dim == 64, name
        np.testing.assert_array_equal(embed_arrays(loaded, inputs), want)


class _Payload:
    """A pickled object whose unpickling would run code (creates a marker file)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoint_with_pickled_object_is_refused(tmp_path, model) -> None:
    marker = tmp_path / "unpickled"
    ckpt = tmp_path / "evil.pth"
    torch.save({"model_state_dict": _papyrusnet_state(model), "extra": _Payload(str(marker))}, ckpt)
    assert not marker.exists()
    with pytest.raises(ModelError) as info:
        load_model(str(ckpt))
    message = str(info.value)
    assert "evil.pth" in message and "refused" in message and "\n" not in message
    assert not marker.exists()  # the payload never ran


def test_bad_sources_raise_model_error(tmp_path, model) -> None:
    (tmp_path / "garbage.pth").write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelError, match="garbage.pth"):
        load_model(str(tmp_path / "garbage.pth"))

    partial = {k: v for k, v in _papyrusnet_state(model).items() if not k.startswith("base_model.layer2.")}
    torch.save({"model_state_dict": partial}, tmp_path / "partial.pth")
    with pytest.raises(ModelError, match=r"missing, e\.g\. base_model\.layer2"):
        load_model(str(tmp_path / "partial.pth"))

    torch.save({"model_state_dict": {"weight": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(ModelError, match="not a papyrusNet"):
        load_model(str(tmp_path / "other.pth"))

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="neither model.safetensors nor a .pth"):
        load_model(str(empty))

    with pytest.raises(ModelError, match="PAPYRUS_MODEL"):
        load_model(str(tmp_path / "does-not-exist" / "x"))
    with pytest.raises(ModelError, match="no model given"):
        load_model("")


# --------------------------------------------------------------------------------------------- Hub cache, offline


def _fake_hub_repo(cache: Path, repo_id: str, commit: str, files: dict[str, Path]) -> None:
    owner, name = repo_id.split("/")
    repo = cache / f"models--{owner}--{name}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for fname, src in files.items():
        (snap / fname).write_bytes(src.read_bytes())


def test_hub_repo_id_from_local_cache_offline(tmp_path, monkeypatch, model, inputs, expected) -> None:
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    ckpt = tmp_path / "resnet18_checkpoint_RUN10.pth"
    torch.save({"model_state_dict": _papyrusnet_state(model), "epoch": 3}, ckpt)
    cache = tmp_path / "hf-cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    _fake_hub_repo(
        cache,
        "owner/name",
        commit,
        {"config.json": saved / "config.json", "model.safetensors": saved / "model.safetensors"},
    )
    _fake_hub_repo(cache, "veerav96/papyrusNet", "f" * 40, {"resnet18_checkpoint_RUN10.pth": ckpt})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    np.testing.assert_array_equal(embed_arrays(load_model("owner/name"), inputs), expected)
    np.testing.assert_array_equal(embed_arrays(load_model("owner/name", revision=commit), inputs), expected)
    np.testing.assert_array_equal(embed_arrays(load_model("veerav96/papyrusNet"), inputs), expected)

    started = time.perf_counter()
    with pytest.raises(ModelError) as info:
        load_model("nobody/no-such-model")
    assert time.perf_counter() - started < 10
    message = str(info.value)
    assert "nobody/no-such-model" in message and "HF_HUB_OFFLINE" in message and "\n" not in message

    with pytest.raises(ModelError, match="owner/name@" + "e" * 40):
        load_model("owner/name", revision="e" * 40)


# --------------------------------------------------------------------------------------------- training


def test_recapture_is_deterministic_and_distorts(ref_images) -> None:
    img = ref_images[0]
    a = recapture(img, np.random.default_rng(5))
    b = recapture(img, np.random.default_rng(5))
    c = recapture(img, np.random.default_rng(6))
    assert a.mode == "RGB" and max(a.size) <= 512
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.size != c.size or not np.array_equal(np.asarray(a), np.asarray(c))
    # it really changes the picture (compared at the model's input size)
    diff = np.abs(model_input(a) - model_input(img)).mean()
    assert diff > 0.1
    # ... but stays a picture of the same papyrus: closer to its source than to another scan
    other = np.abs(model_input(a) - model_input(ref_images[3])).mean()
    assert diff < other


def test_batch_hard_triplet_loss_values() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    same_spot = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert float(batch_hard_triplet_loss(same_spot, labels, margin=0.8)) == pytest.approx(0.0)
    collapsed = torch.tensor([[1.0, 0.0]] * 4)
    assert float(batch_hard_triplet_loss(collapsed, labels, margin=0.8)) == pytest.approx(0.8)


def test_train_triplets_tiny_run_saves_loadable_model(tmp_path, ref_images, inputs) -> None:
    out = tmp_path / "trained"
    settings = dict(epochs=2, steps_per_epoch=3, batch_size=6, seed=11, progress=False)
    trained = train_triplets(ref_images, out_dir=out, **settings)
    assert not trained.training
    summary = trained.training_summary
    assert len(summary["losses"]) == 6 and summary["images"] == 6
    assert np.isfinite(summary["losses"]).all() and np.isfinite(summary["final_loss"])
    assert summary["final_loss"] == pytest.approx(np.mean(summary["losses"][3:]))
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "config.json").read_text())["trainable"] == "all"
    card = (out / "README.md").read_text()
    assert "trained from scratch, no pretrained backbone" in card.lower()
    assert "6 images" in card and "2 x 3 steps" in card

    loaded = load_model(str(out))
    assert model_fingerprint(loaded) == model_fingerprint(trained)
    np.testing.assert_array_equal(embed_arrays(loaded, inputs), embed_arrays(trained, inputs))

    # it moved away from its seeded initialisation
    torch.manual_seed(11)
    assert model_fingerprint(SiameseResNet18(trainable="all")) != model_fingerprint(trained)


def test_train_triplets_is_deterministic_per_seed(ref_images) -> None:
    tiny = dict(epochs=1, steps_per_epoch=1, batch_size=4, progress=False)
    a = train_triplets(ref_images[:3], seed=1, **tiny)
    b = train_triplets(ref_images[:3], seed=1, **tiny)
    c = train_triplets(ref_images[:3], seed=2, **tiny)
    assert a.training_summary["losses"] == b.training_summary["losses"]
    assert model_fingerprint(a) == model_fingerprint(b)
    assert model_fingerprint(a) != model_fingerprint(c)
