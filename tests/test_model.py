"""Tests for papyrus_widgets.model (SiameseResNet18, loading from every source) and
papyrus_widgets.training (recapture, triplet training) — on CPU, with real reference scans."""

from __future__ import annotations

import base64
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
from papyrus_widgets.training import (
    LiveLossPlot,
    batch_hard_triplet_loss,
    load_checkpoint,
    load_labelled_folders,
    load_references,
    load_training_data,
    recapture,
    train_triplets,
    triplet_loss,
)

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
    assert m._hub_mixin_config == {"embedding_dim": 128, "trainable": "layer4", "pretrained": False}

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
    assert json.loads((tmp_path / "m" / "config.json").read_text()) == {
        "embedding_dim": 128,
        "trainable": "layer4",
        "pretrained": False,
    }
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


def test_train_from_identities_with_callback_and_mining(ref_images) -> None:
    identities = {"a": ref_images[:2], "b": ref_images[2:3], "c": ref_images[3:4]}  # "a": two photos
    seen = []
    plot = LiveLossPlot()

    def callback(info):
        seen.append((info["epoch"], info["epochs"], len(info["losses"]), round(info["loss"], 6)))
        plot(info)

    m = train_triplets(identities, epochs=2, steps_per_epoch=1, batch_size=4, seed=3, mining="random",
                       progress=False, callback=callback)
    s = m.training_summary
    assert s["identities"] == 3 and s["images"] == 4 and s["mining"] == "random"
    assert "several photographs" in s["positives"]
    assert seen == [(1, 2, 1, round(s["epoch_losses"][0], 6)), (2, 2, 2, round(s["epoch_losses"][1], 6))]
    assert plot.figure is not None and len(plot.figure.axes[0].lines) == 2
    with pytest.raises(ModelError, match="batch_hard, semi_hard, random"):
        train_triplets(identities, epochs=1, batch_size=4, mining="hardest", progress=False)
    with pytest.raises(ModelError, match="at least 2 papyri"):
        train_triplets({"a": ref_images[:3]}, epochs=1, batch_size=4, progress=False)


# --------------------------------------------------------------------------------------------- losses


def test_triplet_loss_mining_variants() -> None:
    # anchors 0/1 (label 0) and 2/3 (label 1) on a line: distances are plain differences
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.5, 0.0], [4.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    m = 1.0
    # batch-hard: anchor 0: pos 1, closest neg 1.5 → relu(1 - 1.5 + 1) = .5; anchor 1: pos 1, neg .5 → 1.5;
    # anchor 2: pos 2.5, neg .5 → 3; anchor 3: pos 2.5, neg 3 → .5
    assert float(triplet_loss(emb, labels, m, "batch_hard")) == pytest.approx((0.5 + 1.5 + 3 + 0.5) / 4)
    assert float(batch_hard_triplet_loss(emb, labels, m)) == pytest.approx((0.5 + 1.5 + 3 + 0.5) / 4)
    # semi-hard: the closest negative farther than the positive, else the closest
    # anchor 0: pos 1, negs 1.5/4 → 1.5 → .5; anchor 1: pos 1, negs .5/3 → 3 → 0; anchor 2: pos 2.5, negs 1.5/.5 → none
    # farther → closest .5 → 3; anchor 3: pos 2.5, negs 4/3 → 3 → .5
    assert float(triplet_loss(emb, labels, m, "semi_hard")) == pytest.approx((0.5 + 0 + 3 + 0.5) / 4)
    # random: one positive each here, negatives drawn from the generator; reproducible per seed
    a = triplet_loss(emb, labels, m, "random", torch.Generator().manual_seed(0))
    b = triplet_loss(emb, labels, m, "random", torch.Generator().manual_seed(0))
    assert float(a) == float(b)
    options = set()
    for seed in range(20):
        options.add(round(float(triplet_loss(emb, labels, m, "random", torch.Generator().manual_seed(seed))), 4))
    assert len(options) > 1  # the negatives really vary
    # each anchor has two negatives: anchor 0 → .5 or 0, 1 → 1.5 or 0, 2 → 3 or 2, 3 → .5 or 0
    import itertools

    possible = {round(sum(c) / 4, 4) for c in itertools.product((0.5, 0), (1.5, 0), (3, 2), (0.5, 0))}
    assert options <= possible
    with pytest.raises(ModelError, match="unknown negative mining"):
        triplet_loss(emb, labels, m, "hardest")


# --------------------------------------------------------------------------------------------- data sources


def _link(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).symlink_to(REFERENCES / name)


def test_load_references_groups_by_inventory_and_bytes(tmp_path) -> None:
    _link(tmp_path / "refs", ["19322_p_g_213.jpg", "19324_p_g_213.jpg", "21090.xml_p_g_159.jpg",
                              "21090_p_g_159.jpg", "19331_p_g_107.jpg"])
    ids = load_references(tmp_path / "refs", max_side=128)
    assert sorted(ids) == ["p_g_107", "p_g_159", "p_g_213"]
    assert all(len(v) == 1 for v in ids.values())  # byte-identical pairs are one image of one papyrus
    assert all(max(img.size) <= 128 for v in ids.values() for img in v)
    assert list(load_references(tmp_path / "refs", max_side=64, limit=2)) == ["p_g_107", "p_g_159"]
    assert sorted(load_training_data(tmp_path / "refs", max_side=64)) == sorted(ids)
    with pytest.raises(ModelError, match="no such folder"):
        load_references(tmp_path / "missing")


def test_labelled_folders_and_the_anchor_train_layout(tmp_path) -> None:
    flat = tmp_path / "flat"
    _link(flat / "papyrus A", ["19331_p_g_107.jpg", "21105_p_g_654.jpg"])
    _link(flat / "papyrus B", ["19314_p_g_25_a.jpg"])
    ids = load_labelled_folders(flat, max_side=64)
    assert {k: len(v) for k, v in ids.items()} == {"papyrus A": 2, "papyrus B": 1}
    assert {k: len(v) for k, v in load_training_data(flat, max_side=64).items()} == {"papyrus A": 2, "papyrus B": 1}

    layout = tmp_path / "papyrusnet"
    _link(layout / "anchor" / "p1", ["19331_p_g_107.jpg"])
    _link(layout / "train" / "p1", ["21105_p_g_654.jpg", "19314_p_g_25_a.jpg"])
    _link(layout / "anchor" / "p2", ["21114_p_g_24.jpg"])
    _link(layout / "train" / "p2", ["21119_p_g_771.jpg"])
    ids = load_labelled_folders(layout, max_side=64)
    assert {k: len(v) for k, v in ids.items()} == {"p1": 3, "p2": 2}
    with pytest.raises(ModelError, match="at least two"):
        load_labelled_folders(flat / "papyrus B")


# --------------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_resume_ends_where_an_uninterrupted_run_ends(tmp_path, ref_images) -> None:
    tiny = dict(steps_per_epoch=1, batch_size=4, seed=9, progress=False, trainable="head", lr=1e-2)
    whole = train_triplets(ref_images[:3], epochs=3, **tiny)

    ckpt = tmp_path / "ckpt"
    first = train_triplets(ref_images[:3], epochs=1, checkpoint_dir=ckpt, **tiny)
    state = load_checkpoint(ckpt / "checkpoint.pt")  # weights_only=True: plain data only
    assert state["epoch"] == 1 and len(state["losses"]) == 1 and "optimizer" in state
    assert model_fingerprint(first) != model_fingerprint(whole)
    resumed = train_triplets(ref_images[:3], epochs=3, checkpoint_dir=ckpt, resume=True, **tiny)
    assert resumed.training_summary["resumed_from_epoch"] == 1
    assert resumed.training_summary["losses"] == whole.training_summary["losses"]
    assert model_fingerprint(resumed) == model_fingerprint(whole)
    assert load_checkpoint(ckpt / "checkpoint.pt")["epoch"] == 3

    # a checkpoint of another run is refused, and so is a file that is not one
    with pytest.raises(ModelError, match="different run"):
        train_triplets(ref_images[:4], epochs=3, checkpoint_dir=ckpt, resume=True, **tiny)
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="not a papyrus-widgets training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    marker = tmp_path / "unpickled"
    torch.save({"format": "x", "payload": _Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(ModelError, match="cannot resume"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ pretrained backbone, card


def test_pretrained_falls_back_to_random_weights_offline(tmp_path, monkeypatch, inputs) -> None:
    # no cached weights and no network: every download attempt meets a closed port at once
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    started = time.perf_counter()
    with pytest.warns(UserWarning, match="could not get the pretrained ResNet18 weights.*random weights"):
        m = SiameseResNet18(pretrained=True)
    assert time.perf_counter() - started < 30
    assert m.backbone_weights is None and m._hub_mixin_config["pretrained"] is False
    assert m.trainable == "layer4"
    out = embed_arrays(m.eval(), inputs[:2])
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    m.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["pretrained"] is False
    assert "trained from scratch, no pretrained backbone" in (tmp_path / "m" / "README.md").read_text().lower()
    # training with pretrained=True offline trains from scratch (all layers), with the same warning
    with pytest.warns(UserWarning, match="random weights"):
        t = train_triplets(load_references_small(), epochs=1, steps_per_epoch=1, batch_size=4, pretrained=True,
                           progress=False)
    assert t.training_summary["pretrained"] is False and t.training_summary["trainable"] == "all"


def load_references_small() -> list[Image.Image]:
    return [decode_image(p.read_bytes(), max_side=128) for p in sorted(REFERENCES.glob("*.jpg"))[:3]]


def test_pretrained_weights_through_the_weights_api(tmp_path, monkeypatch) -> None:
    import torchvision
    from torchvision.models._api import WeightsEnum

    torch.manual_seed(99)
    imagenet = torchvision.models.resnet18(weights=None).state_dict()
    calls = []

    def fake_get_state_dict(self, *args, **kwargs):
        calls.append(str(self))
        return imagenet

    monkeypatch.setattr(WeightsEnum, "get_state_dict", fake_get_state_dict)
    m = SiameseResNet18(pretrained=True)
    assert calls == ["ResNet18_Weights.IMAGENET1K_V1"]
    assert m.backbone_weights == "torchvision ResNet18_Weights.IMAGENET1K_V1"
    assert m._hub_mixin_config == {"embedding_dim": 128, "trainable": "layer4", "pretrained": True}
    assert torch.equal(m.base_model.conv1.weight, imagenet["conv1.weight"])
    assert torch.equal(m.base_model.layer3[1].bn2.running_var, imagenet["layer3.1.bn2.running_var"])
    assert m.base_model.fc.weight.shape == (128, 512)  # the head is new

    m.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["pretrained"] is True
    card = (tmp_path / "m" / "README.md").read_text()
    assert "started from ImageNet weights (torchvision ResNet18_Weights.IMAGENET1K_V1)" in card
    # loading never fetches the ImageNet weights again: the saved weights replace them anyway
    for loaded in (load_model(str(tmp_path / "m")), SiameseResNet18.from_pretrained(str(tmp_path / "m"))):
        assert (
            loaded.backbone_weights == "torchvision ResNet18_Weights.IMAGENET1K_V1"
            or loaded._hub_mixin_config["pretrained"]
        )
        assert model_fingerprint(loaded) == model_fingerprint(m)
    assert calls == ["ResNet18_Weights.IMAGENET1K_V1"]
    # fine-tuning a pretrained backbone freezes all but layer4 + head by default
    t = train_triplets(load_references_small(), epochs=1, steps_per_epoch=1, batch_size=4, pretrained=True,
                       progress=False)
    assert t.training_summary["pretrained"] is True and t.training_summary["trainable"] == "layer4"
    assert torch.equal(t.base_model.conv1.weight, imagenet["conv1.weight"])  # frozen


def test_model_card_names_training_data_and_metrics(tmp_path, model) -> None:
    m = SiameseResNet18()
    m.load_state_dict(model.state_dict())
    m.training_summary = {
        "source": "heidelberg/references", "identities": 40, "images": 40, "mining": "batch_hard",
        "epochs": 10, "steps_per_epoch": 5, "batch_size": 16, "margin": 0.8, "lr": 0.001, "trainable": "all",
        "seed": 0, "device": "cpu", "final_loss": 0.4321, "seconds": 240.0,
    }
    m.metrics = {"data": "40 re-photographs of the Heidelberg references", "queries": 40, "top1": 0.75,
                 "top5": 0.9, "mAP": 0.8123}
    m.save_pretrained(tmp_path / "m")
    card = (tmp_path / "m" / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: papyrus-widgets" in card
    assert "pipeline_tag: image-feature-extraction" in card
    for text in ("40 images of 40 papyri from `heidelberg/references`", "| negatives | batch_hard |",
                 "10 x 5 steps, batch 16", "0.4321", "| training time | 240 s |",
                 "Queries: 40 re-photographs of the Heidelberg references", "| top1 | 0.750 |", "| mAP | 0.812 |",
                 "| queries | 40 |"):
        assert text in card, text
    # model_card_kwargs override what the model carries
    m.save_pretrained(tmp_path / "n", model_card_kwargs={"metrics": {"top1": 0.5}})
    other = (tmp_path / "n" / "README.md").read_text()
    assert "| top1 | 0.500 |" in other and "0.750" not in other
    # a model without records says so
    plain = SiameseResNet18()
    plain.save_pretrained(tmp_path / "p")
    text = (tmp_path / "p" / "README.md").read_text()
    assert "Not recorded" in text and "No metrics recorded yet" in text


# --------------------------------------------------------------------------------------------- push_to_hub


class _HubStandIn:
    """A real HTTP server speaking the Hub's upload protocol (create repo, validate YAML, preupload,
    the LFS batch API + PUT, and the NDJSON commit), keeping what it receives in memory."""

    TOKEN = "hf_standin_token"

    def __init__(self) -> None:
        import hashlib
        import http.server
        import threading

        self.repos: set[str] = set()
        self.lfs: dict[str, bytes] = {}
        self.commits: list[dict] = []
        self.requests: list[str] = []
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, status: int, payload) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorised(self) -> bool:
                if self.headers.get("Authorization") != f"Bearer {stand_in.TOKEN}":
                    self._send(401, {"error": "Invalid credentials in Authorization header"})
                    return False
                return True

            def do_PUT(self):
                stand_in.requests.append(f"PUT {self.path}")
                data = self._body()
                oid = self.path.rsplit("/", 1)[-1]
                if hashlib.sha256(data).hexdigest() != oid:
                    return self._send(400, {"error": "sha256 mismatch"})
                stand_in.lfs[oid] = data
                self._send(200, {})

            def do_POST(self):
                path = self.path.split("?", 1)[0]
                stand_in.requests.append(f"POST {path}")
                body = self._body()
                if not self._authorised():
                    return None
                base = f"http://127.0.0.1:{self.server.server_address[1]}"
                if path == "/api/repos/create":
                    req = json.loads(body)
                    repo = f"{req['organization']}/{req['name']}"
                    stand_in.repos.add(repo)
                    return self._send(200, {"url": f"{base}/{repo}"})
                if path == "/api/validate-yaml":
                    return self._send(200, {"errors": [], "warnings": []})
                if "/preupload/" in path:
                    files = json.loads(body)["files"]
                    return self._send(200, {"files": [
                        {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(".safetensors") else "regular",
                         "shouldIgnore": False} for f in files]})
                if path.endswith(".git/info/lfs/objects/batch"):
                    objects = json.loads(body)["objects"]
                    return self._send(200, {"transfer": "basic", "objects": [
                        {"oid": o["oid"], "size": o["size"],
                         "actions": {"upload": {"href": f"{base}/lfs-upload/{o['oid']}"}}} for o in objects]})
                if "/commit/" in path:
                    repo, revision = path[len("/api/models/"):].split("/commit/")
                    if repo not in stand_in.repos:
                        return self._send(404, {"error": "Repository not found"})
                    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                    files = {}
                    for line in lines[1:]:
                        v = line["value"]
                        if line["key"] == "file":
                            files[v["path"]] = base64.b64decode(v["content"])
                        elif line["key"] == "lfsFile":
                            files[v["path"]] = stand_in.lfs[v["oid"]]
                    oid = hashlib.sha1(body).hexdigest()
                    stand_in.commits.append({"repo": repo, "revision": revision, "header": lines[0]["value"],
                                             "files": files, "oid": oid})
                    return self._send(200, {"commitUrl": f"{base}/{repo}/commit/{oid}", "commitOid": oid,
                                            "pullRequestUrl": None, "success": True})
                return self._send(404, {"error": f"no route {path}"})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(monkeypatch):
    from huggingface_hub import constants

    server = _HubStandIn()
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the LFS protocol (Xet's CAS is not stood in)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    yield server
    server.close()


def test_push_to_hub_uploads_weights_config_and_card(tmp_path, hub, model) -> None:
    m = SiameseResNet18()
    m.load_state_dict(model.state_dict())
    m.training_summary = {"identities": 40, "images": 40, "epochs": 3, "steps_per_epoch": 5, "batch_size": 16}
    m.metrics = {"queries": 40, "top1": 0.6, "mAP": 0.7}
    url = m.push_to_hub("curator/papyrus-test", token=_HubStandIn.TOKEN, commit_message="first model")
    assert "curator/papyrus-test" in hub.repos
    assert len(hub.commits) == 1
    commit = hub.commits[0]
    assert commit["repo"] == "curator/papyrus-test" and commit["revision"] == "main"
    assert commit["header"]["summary"] == "first model"
    assert commit["oid"] in str(url)
    assert set(commit["files"]) == {"config.json", "model.safetensors", "README.md"}
    # the weights went through the LFS batch API and load back to the same model
    assert any(r.endswith(".git/info/lfs/objects/batch") for r in hub.requests)
    assert any(r.startswith("PUT /lfs-upload/") for r in hub.requests)
    pushed = tmp_path / "pushed"
    pushed.mkdir()
    for name, data in commit["files"].items():
        (pushed / name).write_bytes(data)
    assert model_fingerprint(load_model(str(pushed))) == model_fingerprint(m)
    assert json.loads(commit["files"]["config.json"]) == {
        "embedding_dim": 128,
        "trainable": "layer4",
        "pretrained": False,
    }
    card = commit["files"]["README.md"].decode()
    assert "library_name: papyrus-widgets" in card and "40 images of 40 papyri" in card and "| top1 | 0.600 |" in card

    # without the right token the stand-in refuses, as the Hub does
    from huggingface_hub.errors import HfHubHTTPError

    with pytest.raises(HfHubHTTPError):
        m.push_to_hub("curator/papyrus-test", token="hf_wrong")
    assert len(hub.commits) == 1


def test_papyrus_train_command(tmp_path) -> None:
    import subprocess
    import sys

    refs = tmp_path / "refs"
    _link(refs, ["19314_p_g_25_a.jpg", "19331_p_g_107.jpg", "21105_p_g_654.jpg", "21114_p_g_24.jpg"])
    out = tmp_path / "model"
    proc = subprocess.run(
        [sys.executable, "-m", "papyrus_widgets.cli", "train", str(refs), "--out", str(out), "--epochs", "2",
         "--steps", "3", "--batch-size", "4", "--limit", "3", "--cache-views", "2", "--mining", "semi_hard",
         "--checkpoint-dir", str(tmp_path / "ckpt"), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"model written to {out}" in proc.stdout
    card = (out / "README.md").read_text()
    assert "3 images of 3 papyri" in card and "| negatives | semi_hard |" in card and "2 x 3 steps, batch 4" in card
    assert "a pool of 2 per papyrus" in card
    assert json.loads((out / "config.json").read_text())["trainable"] == "head"
    assert load_checkpoint(tmp_path / "ckpt" / "checkpoint.pt")["epoch"] == 2
    load_model(str(out))


def test_recipe_options_defaults_and_overrides() -> None:
    from papyrus_widgets.config import CPU_RECIPE, DEFAULT_EPOCHS
    from papyrus_widgets.training import recipe_options

    assert recipe_options() == dict(CPU_RECIPE)
    assert recipe_options(epochs=3, batch_size=8) == {**CPU_RECIPE, "epochs": 3, "batch_size": 8}
    # another freeze policy, or no cached features: full forward passes with train_triplets' defaults
    assert recipe_options(trainable="all") == {
        "trainable": "all", "cache_views": 0, "epochs": DEFAULT_EPOCHS, "batch_size": 16
    }  # fmt: skip
    assert recipe_options(cache_views=0)["trainable"] == "head" and "steps_per_epoch" not in recipe_options(
        cache_views=0
    )


@pytest.mark.slow
def test_papyrus_train_defaults_beat_the_untrained_model(tmp_path) -> None:
    """``papyrus train DIR --out M`` with no other flags (training.CPU_RECIPE) improves retrieval
    over the network it starts from (same seed) on generated re-photographs of the references."""
    import subprocess
    import sys

    from papyrus_widgets.evaluation import MemoryIndex, evaluate, make_queries

    refs = tmp_path / "refs"
    _link(refs, sorted(p.name for p in REFERENCES.glob("*.jpg"))[:12])
    out = tmp_path / "model"
    proc = subprocess.run(
        [sys.executable, "-m", "papyrus_widgets.cli", "train", str(refs), "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["trainable"] == "head"
    card = (out / "README.md").read_text()
    assert "a pool of 16 per papyrus" in card and "40 x 50 steps, batch 16" in card, card

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # what train_triplets(seed=0) starts from: the same random network
        untrained = SiameseResNet18().eval()
    trained = load_model(str(out))
    queries = make_queries(refs, n_per_ref=2, seed=5)
    before = evaluate(MemoryIndex.from_folder(untrained, refs), queries, k=5)
    after = evaluate(MemoryIndex.from_folder(trained, refs), queries, k=5)
    print(f"top-1 {before.top1:.3f} -> {after.top1:.3f}, mAP {before.mean_average_precision:.3f} -> "
          f"{after.mean_average_precision:.3f} on {len(queries)} queries")  # fmt: skip
    assert after.top1 > before.top1
