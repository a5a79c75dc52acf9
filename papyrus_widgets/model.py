"""The embedding model: a Siamese ResNet18 mapping a papyrus image to a unit 128-d vector.

One class, :class:`SiameseResNet18`, whose state dict matches the published papyrusNet
checkpoint (``resnet18_checkpoint_RUN10.pth``, keys ``base_model.*``), and one loader,
:func:`load_model`, that accepts a Hub repo id, a Hub-format directory, a directory holding a
``.pth`` checkpoint, or a checkpoint file. Every failure becomes a one-line :class:`ModelError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from huggingface_hub import ModelCard, ModelCardData, PyTorchModelHubMixin

from .errors import ModelError

FREEZE_POLICIES = ("layer4", "all", "head")
"""``layer4``: only ``base_model.layer4`` and ``fc`` train (as in papyrusNet); ``all``: everything;
``head``: only the final ``fc`` layer."""

CHECKPOINT_SUFFIXES = (".pth", ".pt")
HUB_WEIGHTS = "model.safetensors"
HUB_CONFIG = "config.json"
PREFERRED_CHECKPOINT = "resnet18_checkpoint_RUN10.pth"
"""File name of the published papyrusNet checkpoint; preferred when a folder holds several."""

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WHAT_TO_DO = "set PAPYRUS_MODEL to a local model directory or checkpoint file, or run `papyrus train`"


class SiameseResNet18(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="papyrus-widgets",
    tags=["papyrus", "image-retrieval", "image-feature-extraction", "siamese", "resnet18", "triplet-loss"],
    pipeline_tag="image-feature-extraction",
):
    """torchvision ResNet18 with its classifier replaced by a ``embedding_dim`` linear layer;
    outputs are L2-normalised. Input: (N, 3, 224, 224) ImageNet-normalised (see
    :func:`papyrus_widgets.imaging.model_input`).

    ``save_pretrained(dir)`` writes ``config.json`` + ``model.safetensors`` + a model card
    (README.md, see :meth:`generate_model_card`); ``push_to_hub(repo_id)`` publishes them (both
    from :class:`huggingface_hub.PyTorchModelHubMixin`).

    ``trainable``: the freeze policy (:data:`FREEZE_POLICIES`; default ``layer4``, for fine-tuning);
    ``pretrained``: start the backbone from torchvision's ImageNet weights when they can be had
    (see :func:`_resnet18`); ``config.json`` records whether it did.
    """

    trainable: str
    base_model: Any

    def __init__(self, embedding_dim: int = 128, trainable: str = "layer4", pretrained: bool = False) -> None:
        super().__init__()
        if not isinstance(embedding_dim, int) or embedding_dim < 1:
            raise ModelError(f"embedding_dim must be a positive whole number, got {embedding_dim!r}.")
        self.embedding_dim = embedding_dim
        self.base_model, self.backbone_weights = _resnet18(bool(pretrained))
        self.base_model.fc = nn.Linear(512, embedding_dim)
        config = getattr(self, "_hub_mixin_config", None)
        if isinstance(config, dict):  # what the backbone really started from, not what was asked
            config["pretrained"] = self.backbone_weights is not None
        self.training_summary: dict[str, Any] | None = None
        self.metrics: dict[str, Any] | None = None
        apply_freeze_policy(self, trainable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.base_model(x), dim=1)

    @classmethod
    def _from_pretrained(cls, **kwargs: Any) -> "SiameseResNet18":  # type: ignore[override]
        # ``from_pretrained`` loads saved weights over the backbone: never fetch ImageNet weights first
        pretrained = bool(kwargs.pop("pretrained", False))
        model = super()._from_pretrained(pretrained=False, **kwargs)
        if isinstance(getattr(model, "_hub_mixin_config", None), dict):
            model._hub_mixin_config["pretrained"] = pretrained
        return model

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The README.md ``save_pretrained`` / ``push_to_hub`` write: what the model is, the data it
        was trained on (``training_summary``, set by :func:`papyrus_widgets.training.train_triplets`)
        and its retrieval metrics (``metrics``, e.g. from :func:`papyrus_widgets.evaluation.evaluate`).
        ``model_card_kwargs={"training": {...}, "metrics": {...}}`` override both."""
        training = kwargs.get("training", self.training_summary)
        metrics = kwargs.get("metrics", self.metrics)
        return model_card(self, training=training, metrics=metrics)


def _resnet18(pretrained: bool) -> tuple[nn.Module, str | None]:
    """torchvision's resnet18; with ``pretrained`` its ImageNet weights through the weights API
    (``ResNet18_Weights.DEFAULT``, cached under ``TORCH_HOME``). When they cannot be had (offline,
    no cache) a :class:`UserWarning` says so and the backbone starts from random weights."""
    if pretrained:
        weights = torchvision.models.ResNet18_Weights.DEFAULT
        try:
            return torchvision.models.resnet18(weights=weights), f"torchvision {weights}"
        except Exception as exc:  # noqa: BLE001 - no network, no cache, a broken download
            warnings.warn(
                f"could not get the pretrained ResNet18 weights ({weights}: {type(exc).__name__}: "
                f"{_one_line(exc)}); the backbone starts from random weights (training from scratch). "
                "Put the weights file in $TORCH_HOME/hub/checkpoints to use them offline.",
                UserWarning,
                stacklevel=3,
            )
    return torchvision.models.resnet18(weights=None), None


def apply_freeze_policy(model: SiameseResNet18, trainable: str) -> SiameseResNet18:
    """Set ``requires_grad`` by policy (see :data:`FREEZE_POLICIES`) and record it in the config."""
    if trainable not in FREEZE_POLICIES:
        raise ModelError(f"unknown freeze policy {trainable!r}: use one of {', '.join(FREEZE_POLICIES)}.")
    base = model.base_model
    for name, param in base.named_parameters():
        if trainable == "all":
            param.requires_grad_(True)
        elif trainable == "head":
            param.requires_grad_(name.startswith("fc."))
        else:  # layer4
            param.requires_grad_(name.startswith(("fc.", "layer4.")))
    model.trainable = trainable
    config = getattr(model, "_hub_mixin_config", None)
    if isinstance(config, dict):
        config["trainable"] = trainable
    return model


# --------------------------------------------------------------------------------------------- model card

IMAGENET_WEIGHTS = "torchvision ResNet18_Weights.IMAGENET1K_V1"


def model_card(
    model: SiameseResNet18,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> ModelCard:
    """A Hub model card for ``model``: metadata header, architecture, backbone, the training data
    and settings (``training``) and the retrieval metrics (``metrics``), each as a table."""
    data = ModelCardData(
        library_name="papyrus-widgets",
        pipeline_tag="image-feature-extraction",
        tags=sorted({"papyrus", "image-retrieval", "image-feature-extraction", "siamese", "resnet18", "triplet-loss"}),
    )
    backbone = (
        f"started from ImageNet weights ({model.backbone_weights})"
        if getattr(model, "backbone_weights", None)
        else "**trained from scratch, no pretrained backbone** (random initialisation)"
    )
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        "# papyrus-widgets embedding model (SiameseResNet18)",
        "",
        f"torchvision ResNet18 → {model.embedding_dim}-d L2-normalised embedding (224 px input, the whole "
        "papyrus resized to a square), trained with triplet loss so that photographs of the same papyrus "
        "lie close together. Backbone: " + backbone + f". Freeze policy: `{getattr(model, 'trainable', '?')}`.",
        "",
    ]
    if training:
        t = dict(training)
        rows = [
            ("data", f"{t.get('images', '?')} images of {t.get('identities', t.get('images', '?'))} papyri"
             + (f" from `{t['source']}`" if t.get("source") else "")),
            ("positives", t.get("positives", "software re-photographs of each image (`training.recapture`)")),
            ("negatives", t.get("mining", "batch_hard")),
            (
                "epochs",
                f"{t.get('epochs', '?')} x {t.get('steps_per_epoch', '?')} steps, batch {t.get('batch_size', '?')}",
            ),
            ("margin / lr", f"{t.get('margin', '?')} / {t.get('lr', '?')}"),
            ("trainable", t.get("trainable", getattr(model, "trainable", "?"))),
            ("seed", t.get("seed", "?")),
            ("device", t.get("device", "cpu")),
        ]
        if isinstance(t.get("final_loss"), (int, float)):
            rows.append(("final loss", f"{t['final_loss']:.4f} (mean of the last epoch)"))
        if isinstance(t.get("seconds"), (int, float)):
            rows.append(("training time", f"{t['seconds']:.0f} s"))
        lines += ["## Training data and settings", "", "| | |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in rows]
        lines.append("")
    else:
        lines += ["## Training data and settings", "", "Not recorded (an untrained or imported model).", ""]
    if metrics:
        m = dict(metrics)
        lines += ["## Evaluation", ""]
        if m.get("data"):
            lines += [f"Queries: {m['data']}", ""]
        lines += ["| metric | value |", "|---|---|"]
        for key, value in m.items():
            if key == "data":
                continue
            shown = f"{value:.3f}" if isinstance(value, float) else str(value)
            lines.append(f"| {key} | {shown} |")
        lines.append("")
    else:
        lines += ["## Evaluation", "", "No metrics recorded yet (`papyrus evaluate` measures them).", ""]
    lines += [
        "## Use",
        "",
        "```python",
        "from papyrus_widgets.model import load_model",
        'model = load_model("<this repo id or directory>")  # revision="<commit>" pins a version',
        "```",
        "",
    ]
    return ModelCard("\n".join(lines))


# --------------------------------------------------------------------------------------------- loading


def load_model(source: str, revision: str | None = None, device: str = "cpu") -> SiameseResNet18:
    """Load a :class:`SiameseResNet18` in eval mode from ``source``:

    - a local directory in Hub format (``config.json`` + ``model.safetensors``);
    - a local directory holding a papyrusNet ``.pth``/``.pt`` checkpoint;
    - a local ``.pth``/``.pt`` (or ``.safetensors``) file;
    - a Hugging Face Hub repo id ``owner/name`` (``revision``: branch, tag or commit), fetched
      with :func:`huggingface_hub.snapshot_download`, so ``HF_HOME``/``HF_HUB_CACHE`` and
      ``HF_HUB_OFFLINE=1`` are honoured and a cached model loads without network.

    Raises :class:`ModelError` (one line naming ``source`` and what to do) on any failure.
    """
    source = str(source).strip()
    if not source:
        raise ModelError(f"no model given: {_WHAT_TO_DO}.")
    path = Path(source).expanduser()
    try:
        if path.is_dir():
            model = _load_dir(path, source)
        elif path.is_file():
            model = _load_file(path, source)
        elif _REPO_ID.match(source):
            model = _load_dir(_download(source, revision), source)
        else:
            raise ModelError(
                f"model {source!r} is neither an existing file or directory nor a Hub repo id: {_WHAT_TO_DO}."
            )
        model = model.to(device)
    except ModelError:
        raise
    except Exception as exc:  # anything unforeseen still reads as one line
        raise ModelError(f"could not load model {source!r} ({_one_line(exc)}): {_WHAT_TO_DO}.") from None
    model.eval()
    return model


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    at = f"@{revision}" if revision else ""
    offline = _hf_offline()
    kwargs: dict[str, Any] = {"revision": revision, "cache_dir": _hf_cache_dir(), "local_files_only": offline}
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=[HUB_CONFIG, HUB_WEIGHTS], **kwargs))
        if not (folder / HUB_WEIGHTS).is_file():
            folder = Path(snapshot_download(repo_id, allow_patterns=["*.pth", "*.pt"], **kwargs))
    except Exception as exc:
        hint = (
            "HF_HUB_OFFLINE is set and the model is not in the local Hugging Face cache: "
            "unset HF_HUB_OFFLINE once to download it, or "
            if offline
            else "check the repo id and revision and your network (or HF_TOKEN for a private repo), or "
        )
        raise ModelError(
            f"could not get model {repo_id}{at} from the Hugging Face Hub ({type(exc).__name__}: "
            f"{_one_line(exc)}): {hint}{_WHAT_TO_DO}."
        ) from None
    return folder


# huggingface_hub reads its environment once, at import; these read it at call time so that
# HF_HUB_CACHE / HF_HOME / HF_HUB_OFFLINE set later in a notebook still take effect.


def _hf_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if env is not None and env.strip() != "":
        return env.strip().lower() in {"1", "true", "yes", "on"}
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _hf_cache_dir() -> str | None:
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return os.path.expandvars(os.path.expanduser(os.environ[name]))
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expandvars(os.path.expanduser(os.environ["HF_HOME"])), "hub")
    return None  # the library's default


def _load_dir(folder: Path, source: str) -> SiameseResNet18:
    if (folder / HUB_WEIGHTS).is_file():
        return _load_file(folder / HUB_WEIGHTS, source)
    checkpoints = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES)
    if not checkpoints:
        raise ModelError(
            f"model directory {source!r} holds neither {HUB_WEIGHTS} nor a .pth/.pt checkpoint: {_WHAT_TO_DO}."
        )
    if len(checkpoints) > 1:
        preferred = [p for p in checkpoints if p.name == PREFERRED_CHECKPOINT]
        if not preferred:
            names = ", ".join(p.name for p in checkpoints)
            raise ModelError(
                f"model directory {source!r} holds several checkpoints ({names}): "
                "set PAPYRUS_MODEL to the one file you want."
            )
        checkpoints = preferred
    return _load_file(checkpoints[0], source)


def _load_file(file: Path, source: str) -> SiameseResNet18:
    config: dict[str, Any] = {}
    if file.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(file), device="cpu")
        except Exception as exc:
            raise ModelError(
                f"model {source!r}: {file.name} is not a readable safetensors file ({_one_line(exc)}): "
                f"download it again or {_WHAT_TO_DO}."
            ) from None
        config_path = file.with_name(HUB_CONFIG)
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ModelError(f"model {source!r}: {HUB_CONFIG} is not valid JSON ({_one_line(exc)}).") from None
            if not isinstance(config, dict):
                raise ModelError(f"model {source!r}: {HUB_CONFIG} must hold a JSON object.")
    elif file.suffix.lower() in CHECKPOINT_SUFFIXES:
        try:
            loaded = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelError(
                f"model {source!r}: {file.name} is not a plain PyTorch weights file and was refused "
                f"({type(exc).__name__}: {_one_line(exc)}): re-save it with "
                "torch.save({'model_state_dict': model.state_dict()}, path) or "
                f"{_WHAT_TO_DO}."
            ) from None
        state = _extract_state_dict(loaded, source)
    else:
        raise ModelError(
            f"model {source!r}: {file.name} is not a model file (.pth, .pt, .safetensors or a model directory): "
            f"{_WHAT_TO_DO}."
        )
    return _build(state, config, source)


def _extract_state_dict(loaded: Any, source: str) -> dict[str, torch.Tensor]:
    if isinstance(loaded, Mapping):
        for key in ("model_state_dict", "state_dict"):
            inner = loaded.get(key)
            if isinstance(inner, Mapping):
                loaded = inner
                break
    if not isinstance(loaded, Mapping) or not loaded:
        raise ModelError(
            f"model {source!r}: the checkpoint holds no state dict (expected 'model_state_dict', "
            f"'state_dict' or a plain state dict): {_WHAT_TO_DO}."
        )
    return dict(loaded)


def _normalise_keys(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Keys as in :class:`SiameseResNet18`: strip ``module.`` and add ``base_model.`` if missing."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        k = str(key)
        while k.startswith("module."):
            k = k[len("module.") :]
        if not k.startswith("base_model."):
            k = "base_model." + k
        out[k] = value
    return out


def _build(state: Mapping[str, Any], config: Mapping[str, Any], source: str) -> SiameseResNet18:
    state = _normalise_keys(state)
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(
            f"model {source!r}: checkpoint entries are not tensors ({', '.join(bad[:3])}): {_WHAT_TO_DO}."
        )
    fc = state.get("base_model.fc.weight")
    if fc is None or fc.ndim != 2 or fc.shape[1] != 512:
        raise ModelError(
            f"model {source!r} is not a papyrusNet / SiameseResNet18 model (no 512-input fc layer): {_WHAT_TO_DO}."
        )
    embedding_dim = int(fc.shape[0])
    trainable = config.get("trainable", "layer4")
    if trainable not in FREEZE_POLICIES:
        trainable = "layer4"
    if "embedding_dim" in config and int(config["embedding_dim"]) != embedding_dim:
        raise ModelError(
            f"model {source!r}: config.json says embedding_dim={config['embedding_dim']} but the weights "
            f"give {embedding_dim}: fix config.json or save the model again."
        )
    model = SiameseResNet18(embedding_dim=embedding_dim, trainable=trainable)
    if config.get("pretrained"):  # the saved weights came from an ImageNet start: keep saying so
        model.backbone_weights = IMAGENET_WEIGHTS
        model._hub_mixin_config["pretrained"] = True  # type: ignore[index]  # a dict: the mixin's own config
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"{len(result.missing_keys)} missing, e.g. {result.missing_keys[0]}")
        if result.unexpected_keys:
            parts.append(f"{len(result.unexpected_keys)} unexpected, e.g. {result.unexpected_keys[0]}")
        raise ModelError(
            f"model {source!r} does not match SiameseResNet18 ({'; '.join(parts)}): {_WHAT_TO_DO}."
        )
    return model


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("…" if len(text) > 300 else "") if text else type(exc).__name__


# --------------------------------------------------------------------------------------------- use


def embed_arrays(model: nn.Module, arrays: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """(N, 3, 224, 224) float32 model inputs → (N, D) float32 L2-normalised embeddings.

    Runs in eval mode under :func:`torch.inference_mode` on the model's device; the model's
    training flag is restored afterwards.
    """
    arrays = np.asarray(arrays, dtype=np.float32)
    if arrays.ndim != 4 or arrays.shape[1] != 3:
        raise ValueError(f"expected arrays of shape (N, 3, H, W), got {arrays.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    try:
        param = next(model.parameters())
        device = param.device
    except StopIteration:  # pragma: no cover - a model without parameters
        device = torch.device("cpu")
    dim = getattr(model, "embedding_dim", None)
    if len(arrays) == 0:
        return np.zeros((0, int(dim or 0)), dtype=np.float32)
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(arrays), batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(arrays[start : start + batch_size])).to(device)
                emb = F.normalize(model(batch).float(), dim=1)
                out.append(emb.cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out, axis=0).astype(np.float32, copy=False)


def model_fingerprint(model: nn.Module) -> str:
    """A short (16 hex digits) sha256 of the model's state dict: names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(t.dtype).encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]
