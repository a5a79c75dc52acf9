"""Training: software "re-photographs" of scans and a triplet-loss loop with negative mining.

Data: a folder of references (:func:`load_references`: each papyrus its own identity) or labelled
folders (:func:`load_labelled_folders`: one subfolder of photographs per papyrus). A batch holds
P identities x 2 views, each view a :func:`recapture` of one of its images (perspective, rotation,
crop, lighting, glare, moiré, occlusion, blur, JPEG), so the model learns to match a phone photo
of a screen or book page to the clean scan. Negatives are mined batch-hard, semi-hard or at random
(:func:`triplet_loss`). Checkpoints hold state dicts and plain data only and load with
``weights_only=True``; a resumed run ends exactly where an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from .config import CPU_RECIPE, DEFAULT_EPOCHS
from .errors import ModelError
from .imaging import _perspective_coefficients, image_files, model_input, to_rgb
from .model import SiameseResNet18, apply_freeze_policy

RECAPTURE_MAX_SIDE = 512
""":func:`recapture` first downscales its input to at most this long side (speed)."""
TRAIN_MAX_SIDE = 384
""":func:`train_triplets` downscales each training image once to at most this long side."""

LAYOUT_PARTS = ("anchor", "anchors", "train")
"""Subfolders of the original papyrusNet layout, merged by papyrus name by :func:`load_labelled_folders`."""
MINING = ("batch_hard", "semi_hard", "random")
CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "papyrus-widgets-training-1"

def recipe_options(
    *,
    trainable: str | None = None,
    cache_views: int | None = None,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Options for :func:`train_triplets`: :data:`CPU_RECIPE`, with each given value instead.

    A policy other than ``head`` (or ``cache_views=0``) trains through full forward passes, so
    the recipe's caching and its 40 x 50 steps do not apply: epochs and steps then default to
    those of :func:`train_triplets` (:data:`DEFAULT_EPOCHS`, one pass over the papyri).
    """
    policy = trainable or CPU_RECIPE["trainable"]
    if cache_views is None:
        cache_views = CPU_RECIPE["cache_views"] if policy == "head" else 0
    options: dict[str, Any] = {"trainable": policy, "cache_views": cache_views}
    cached = bool(cache_views)
    options["epochs"] = epochs or (CPU_RECIPE["epochs"] if cached else DEFAULT_EPOCHS)
    steps = steps_per_epoch if steps_per_epoch is not None else (CPU_RECIPE["steps_per_epoch"] if cached else None)
    if steps is not None:
        options["steps_per_epoch"] = steps
    options["batch_size"] = batch_size or CPU_RECIPE["batch_size"]
    return options


# --------------------------------------------------------------------------------------------- augmentation


def recapture(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """A software re-photograph of the scan ``img``: perspective warp, small rotation, crop
    jitter, brightness/contrast/colour cast, a glare spot, moiré, partial occlusion, blur and JPEG
    re-encoding, on a random background colour. All randomness comes from ``rng`` (same rng state → same image);
    ``strength`` (0 … 1+) scales every distortion. Output long side is at most 512 px.
    """
    s = max(0.0, float(strength))
    img = to_rgb(img)
    if max(img.size) > RECAPTURE_MAX_SIDE:
        img = img.copy()
        img.thumbnail((RECAPTURE_MAX_SIDE, RECAPTURE_MAX_SIDE), Image.Resampling.BILINEAR)
    w, h = img.size

    # Crop jitter: keep 80-100 % of each side (shifted at random).
    keep_w = 1.0 - rng.uniform(0.0, 0.2 * s)
    keep_h = 1.0 - rng.uniform(0.0, 0.2 * s)
    cw, ch = max(8, int(round(w * min(1.0, keep_w)))), max(8, int(round(h * min(1.0, keep_h))))
    x0 = int(rng.integers(0, w - cw + 1)) if cw < w else 0
    y0 = int(rng.integers(0, h - ch + 1)) if ch < h else 0
    src = np.array([[x0, y0], [x0 + cw, y0], [x0 + cw, y0 + ch], [x0, y0 + ch]], dtype=np.float64)

    # Where those four corners land in the photo: a margin of background, a small rotation and
    # independent corner shifts (perspective of a camera held at an angle).
    if rng.random() < 0.7:
        margin = rng.uniform(0.0, 0.15 * s)
        background = tuple(int(c) for c in rng.integers(0, 256, size=3))
    else:
        margin = 0.0
        background = tuple(int(c) for c in rng.integers(0, 40, size=3))  # dark screen border
    out_w = max(8, int(round(cw * (1 + 2 * margin))))
    out_h = max(8, int(round(ch * (1 + 2 * margin))))
    angle = math.radians(rng.uniform(-7.0, 7.0) * s)
    cx, cy = out_w / 2, out_h / 2
    base = np.array([[-cw / 2, -ch / 2], [cw / 2, -ch / 2], [cw / 2, ch / 2], [-cw / 2, ch / 2]])
    jitter = rng.uniform(-0.1 * s, 0.1 * s, size=(4, 2)) * np.array([cw, ch])
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    dst = (base + jitter) @ rot.T + np.array([cx, cy])
    try:
        coeffs = _perspective_coefficients(dst, src)
        photo = img.transform(
            (out_w, out_h), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR, fillcolor=background
        )
    except Exception:  # a degenerate draw (extreme strength): keep the plain crop
        photo = img.crop((x0, y0, x0 + cw, y0 + ch))
    if max(photo.size) > RECAPTURE_MAX_SIDE:  # the margin of background made it bigger
        photo.thumbnail((RECAPTURE_MAX_SIDE, RECAPTURE_MAX_SIDE), Image.Resampling.BILINEAR)
    out_w, out_h = photo.size

    # Lighting: brightness, contrast, colour cast, glare.
    arr = np.asarray(photo, dtype=np.float32) / 255.0
    brightness = 1.0 + rng.uniform(-0.3, 0.3) * s
    contrast = 1.0 + rng.uniform(-0.3, 0.3) * s
    cast = 1.0 + rng.uniform(-0.1, 0.1, size=3) * s
    mean = arr.mean()
    arr = ((arr - mean) * contrast + mean) * brightness * cast.astype(np.float32)
    if rng.random() < 0.6 * min(1.0, s):
        gy, gx = np.mgrid[0:out_h, 0:out_w].astype(np.float32)
        px, py = rng.uniform(0, out_w), rng.uniform(0, out_h)
        radius = rng.uniform(0.1, 0.4) * max(out_w, out_h)
        amp = rng.uniform(0.3, 0.9) * min(1.0, s)
        glare = amp * np.exp(-((gx - px) ** 2 + (gy - py) ** 2) / (2 * radius**2))
        arr = arr + (1.0 - arr) * glare[..., None]
    # Moiré: the beat of a screen's pixel grid against the camera's sensor, faint coloured bands.
    if rng.random() < 0.3 * min(1.0, s):
        gy, gx = np.mgrid[0:out_h, 0:out_w].astype(np.float32)
        theta = rng.uniform(0.0, math.pi)
        period = rng.uniform(3.0, 9.0)
        phase = (gx * math.cos(theta) + gy * math.sin(theta)) * (2 * math.pi / period)
        amp = rng.uniform(0.03, 0.08) * min(1.0, s)
        shift = np.array([0.0, 2 * math.pi / 3, 4 * math.pi / 3], dtype=np.float32)
        arr = arr + amp * np.sin(phase[..., None] + shift)
    # Partial occlusion: a thumb, a ruler or a sticky note over part of the papyrus.
    if rng.random() < 0.25 * min(1.0, s):
        ow = int(out_w * rng.uniform(0.1, 0.3))
        oh = int(out_h * rng.uniform(0.1, 0.3))
        ox = int(rng.integers(0, max(1, out_w - ow)))
        oy = int(rng.integers(0, max(1, out_h - oh)))
        arr[oy : oy + oh, ox : ox + ow] = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
    photo = Image.fromarray((np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), "RGB")

    # Optics and compression.
    blur = rng.uniform(0.0, 1.5 * s)
    if blur > 0.2:
        photo = photo.filter(ImageFilter.GaussianBlur(radius=blur))
    quality = int(round(rng.uniform(max(10.0, 90.0 - 60.0 * s), 92.0)))
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out.convert("RGB")


# --------------------------------------------------------------------------------------------- data

Identities = Mapping[str, Sequence[Image.Image]]
"""Training data: papyrus label → its images (one or more photographs/scans)."""


def _shrink(img: Image.Image, max_side: int = TRAIN_MAX_SIDE) -> Image.Image:
    im = to_rgb(img)
    if max(im.size) > max_side:
        im = im.copy()
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return im


def _read(path: Path, max_side: int) -> Image.Image:
    from .imaging import decode_image

    return decode_image(path.read_bytes(), max_side=max_side, name=path.name)


def load_references(
    folder: str | os.PathLike, *, max_side: int = TRAIN_MAX_SIDE, limit: int | None = None
) -> dict[str, list[Image.Image]]:
    """A folder of reference scans → identities. Each scan is its own papyrus, except that files
    naming the same inventory (``<HGV id>_<inventory>.jpg``, see the data README: one papyrus can
    carry two HGV ids) or holding the same bytes are one identity — two identical images must never
    be pushed apart as negatives. ``limit``: keep the first ``limit`` identities (sorted by name)."""
    from .metadata import parse_reference_filename

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ModelError(f"no such folder of references: {root}")
    groups: dict[str, list[Path]] = {}
    seen: set[str] = set()
    for path in image_files(root):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in seen:
            continue  # the same bytes again (e.g. 21090.xml_p_g_159.jpg / 21090_p_g_159.jpg)
        seen.add(digest)
        _, inventory = parse_reference_filename(path.name)
        groups.setdefault(inventory or path.stem, []).append(path)
    if not groups:
        raise ModelError(f"no images (JPEG, PNG, TIFF, WebP) in {root}")
    labels = sorted(groups)[: limit or None]
    return {label: [_read(p, max_side) for p in groups[label]] for label in labels}


def load_labelled_folders(
    root: str | os.PathLike, *, max_side: int = TRAIN_MAX_SIDE, limit: int | None = None
) -> dict[str, list[Image.Image]]:
    """Labelled folders → identities: one subfolder per papyrus holding several real photographs
    of it (``root/<papyrus>/*.jpg``). The original papyrusNet layout, ``root/anchor/<papyrus>/``
    (reference scans) beside ``root/train/<papyrus>/`` (photographs), is merged by papyrus name."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise ModelError(f"no such folder of labelled photographs: {base}")
    parts = [base / name for name in LAYOUT_PARTS if (base / name).is_dir()]
    groups: dict[str, list[Path]] = {}
    for part in parts or [base]:
        for sub in sorted(p for p in part.iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = image_files(sub)
            if files:
                groups.setdefault(sub.name, []).extend(files)
    if len(groups) < 2:
        raise ModelError(
            f"{base} does not hold labelled folders (one subfolder of photographs per papyrus, at least two "
            "papyri): for a flat folder of scans use load_references."
        )
    labels = sorted(groups)[: limit or None]
    return {label: [_read(p, max_side) for p in groups[label]] for label in labels}


def load_training_data(
    path: str | os.PathLike, *, max_side: int = TRAIN_MAX_SIDE, limit: int | None = None
) -> dict[str, list[Image.Image]]:
    """Labelled folders when ``path`` has subfolders of images, else a flat folder of references."""
    root = Path(path).expanduser()
    if root.is_dir() and any(p.is_dir() and image_files(p) for p in root.iterdir()):
        return load_labelled_folders(root, max_side=max_side, limit=limit)
    return load_references(root, max_side=max_side, limit=limit)


# --------------------------------------------------------------------------------------------- losses


def batch_hard_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over anchors of ``relu(d(a, hardest positive) - d(a, hardest negative) + margin)``."""
    return triplet_loss(embeddings, labels, margin, mining="batch_hard")


def triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float,
    mining: str = "batch_hard",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Triplet loss over a batch, every sample an anchor, mean of ``relu(d(a,p) - d(a,n) + margin)``.

    ``mining`` picks the positive and the negative of each anchor (see :data:`MINING`):
    ``batch_hard`` the farthest positive and the closest negative; ``semi_hard`` the farthest
    positive and the closest negative farther than it (else the closest); ``random`` a random
    positive and a random negative (drawn with ``generator``), as the original papyrusNet did.
    """
    if mining not in MINING:
        raise ModelError(f"unknown negative mining {mining!r}: use one of {', '.join(MINING)}.")
    dist = torch.cdist(embeddings, embeddings, p=2)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive = same & ~eye
    negative = ~same
    valid = positive.any(dim=1) & negative.any(dim=1)
    inf = torch.full_like(dist, float("inf"))
    if mining == "random":
        noise = torch.rand(dist.shape, generator=generator, device="cpu").to(dist.device)
        pos_idx = torch.where(positive, noise, -inf).argmax(dim=1)
        neg_idx = torch.where(negative, noise, -inf).argmax(dim=1)
        d_pos = dist.gather(1, pos_idx[:, None])[:, 0]
        d_neg = dist.gather(1, neg_idx[:, None])[:, 0]
    else:
        d_pos = torch.where(positive, dist, torch.zeros_like(dist)).amax(dim=1)
        d_neg = torch.where(negative, dist, inf).amin(dim=1)
        if mining == "semi_hard":
            beyond = negative & (dist > d_pos[:, None].detach())
            d_semi = torch.where(beyond, dist, inf).amin(dim=1)
            d_neg = torch.where(beyond.any(dim=1), d_semi, d_neg)
    losses = torch.relu(d_pos - d_neg + margin)[valid]
    return losses.mean() if len(losses) else embeddings.sum() * 0.0


# --------------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write a training checkpoint (tensors, numbers, strings, lists and dicts only) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(dict(state), tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``: plain data only, no code runs while loading."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"cannot resume from {path} ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}): "
            "delete it to start training afresh."
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path} is not a papyrus-widgets training checkpoint: delete it to start afresh.")
    return state


# --------------------------------------------------------------------------------------------- training


def train_triplets(
    images: Sequence[Image.Image] | Identities,
    *,
    out_dir: str | Path | None = None,
    epochs: int = DEFAULT_EPOCHS,
    steps_per_epoch: int | None = None,
    batch_size: int = 16,
    margin: float = 0.8,
    lr: float = 1e-3,
    trainable: str | None = None,
    pretrained: bool = False,
    mining: str = "batch_hard",
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    model: SiameseResNet18 | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    callback: Callable[[dict[str, Any]], None] | None = None,
    source: str | None = None,
    max_seconds: float | None = None,
    cache_views: int = 0,
) -> SiameseResNet18:
    """Train (or fine-tune ``model``) with triplet loss on re-photographed views of each papyrus.

    ``images``: a list of scans (each its own identity) or a mapping label → images
    (:func:`load_references`, :func:`load_labelled_folders`). A batch is ``batch_size // 2``
    identities x 2 views; a view is a :func:`recapture` of one of the identity's images (two
    different images when it has several). ``mining``: ``batch_hard`` (default), ``semi_hard`` or
    ``random`` negatives (see :func:`triplet_loss`). Adam with ``lr``.

    ``trainable``: freeze policy; default ``head`` with ``cache_views``, else ``layer4`` when
    fine-tuning (``model`` given, or an ImageNet backbone loaded with ``pretrained``) and ``all``
    when training from scratch.
    ``checkpoint_dir``: after every ``checkpoint_every`` epochs the model, the optimiser, the RNG
    states and the losses go to ``checkpoint_dir/checkpoint.pt``; with ``resume`` a run continues
    from there and ends exactly where an uninterrupted run would. ``callback(info)`` is called
    after each epoch (``info``: epoch, epochs, loss, losses, epoch_losses) — e.g. :class:`LiveLossPlot`.
    ``cache_views`` (with ``trainable="head"``): make that many re-photographs of each papyrus
    once, run them through the frozen trunk once, and train the head on those cached features —
    each step then costs a millisecond instead of a forward and backward pass, so thousands of
    steps fit in a minute on a CPU (the views are a fixed pool instead of new ones every step).

    Frozen layers keep their batch-norm statistics (eval mode) while the rest trains.
    ``max_seconds``: stop after the step that crosses this much training time (the summary's
    ``epochs``/``steps`` then say how far it got; a time-bounded run is not reproducible step for
    step on a busy machine). Seeds are fixed by ``seed`` (the global torch RNG is restored
    afterwards). With ``out_dir`` the model is saved with ``save_pretrained`` and its model card.
    Returns the model in eval mode with ``training_summary`` set.
    """
    identities = _as_identities(images)
    labels_sorted = list(identities)
    n = len(labels_sorted)
    if n < 2:
        raise ModelError(f"training needs at least 2 papyri (identities), got {n}.")
    if epochs < 1 or batch_size < 4:
        raise ModelError("training needs epochs >= 1 and batch_size >= 4 (2 identities x 2 views).")
    if mining not in MINING:
        raise ModelError(f"unknown negative mining {mining!r}: use one of {', '.join(MINING)}.")
    small = [[_shrink(img) for img in identities[label]] for label in labels_sorted]
    n_images = sum(len(v) for v in small)
    per_batch = max(2, min(n, batch_size // 2))
    steps = steps_per_epoch if steps_per_epoch is not None else math.ceil(n / per_batch)
    if steps < 1:
        raise ModelError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}.")
    if cache_views < 0 or cache_views == 1:
        raise ModelError(f"cache_views must be 0 (off) or at least 2 views per papyrus, got {cache_views}.")
    run = {"identities": n, "images": n_images, "batch": per_batch * 2, "steps": steps, "seed": seed, "mining": mining}
    if cache_views:
        run["cache_views"] = cache_views
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None

    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fine_tuning = model is not None
        if model is None:
            model = SiameseResNet18(pretrained=pretrained)
            fine_tuning = model.backbone_weights is not None
        policy = trainable or ("head" if cache_views else "layer4" if fine_tuning else "all")
        if cache_views and policy != "head":
            raise ModelError(
                f"cache_views trains the head on cached trunk features: it needs trainable='head', not {policy!r}."
            )
        apply_freeze_policy(model, policy)
        model = model.to(device)
        pool: torch.Tensor | None = None
        if cache_views:  # its own random stream: the same pool whether a run starts or resumes
            pool = _cached_views(model, small, cache_views, np.random.default_rng([seed, 1]), device, progress)
        params = [p for p in model.parameters() if p.requires_grad]
        optimiser = torch.optim.Adam(params, lr=lr)
        generator = torch.Generator().manual_seed(seed)
        order = np.array([], dtype=np.int64)
        losses: list[float] = []
        epoch_means: list[float] = []
        start_epoch = 0
        seconds_before = 0.0
        if resume and ckpt_path is not None and ckpt_path.is_file():
            state = load_checkpoint(ckpt_path)
            if state.get("run") != run:
                raise ModelError(
                    f"the checkpoint {ckpt_path} is from a different run ({state.get('run')} vs {run}): "
                    "use the same data and settings, or another checkpoint_dir."
                )
            model.load_state_dict(state["model"])
            optimiser.load_state_dict(state["optimizer"])
            rng.bit_generator.state = state["numpy_rng"]
            generator.set_state(state["torch_generator"])
            torch.set_rng_state(state["torch_rng"])
            order = np.asarray(state["order"], dtype=np.int64)
            losses = [float(x) for x in state["losses"]]
            epoch_means = [float(x) for x in state["epoch_losses"]]
            start_epoch = int(state["epoch"])
            seconds_before = float(state.get("seconds", 0.0))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=epochs * steps, initial=min(start_epoch, epochs) * steps, desc="training", unit="step")
        started = time.perf_counter()
        stopped = False
        _train_mode(model)
        try:
            for epoch in range(start_epoch, epochs):
                if stopped:
                    break
                epoch_losses: list[float] = []
                for _ in range(steps):
                    if max_seconds is not None and time.perf_counter() - started >= max_seconds:
                        stopped = True
                        break
                    if len(order) < per_batch:  # walk through shuffled identities, then reshuffle
                        order = np.concatenate([order, rng.permutation(n)])
                    ids, order = order[:per_batch], order[per_batch:]
                    labels = torch.arange(len(ids), device=device).repeat_interleave(2)
                    if pool is not None:
                        picks = [
                            int(i) * cache_views + int(v)
                            for i in ids
                            for v in rng.choice(cache_views, 2, replace=False)
                        ]
                        embeddings = F.normalize(model.base_model.fc(pool[picks]), dim=1)
                    else:
                        arrays = [model_input(recapture(view, rng)) for i in ids for view in _two_views(small[i], rng)]
                        embeddings = model(torch.from_numpy(np.stack(arrays)).to(device))
                    loss = triplet_loss(embeddings, labels, margin, mining=mining, generator=generator)
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                    value = float(loss.detach())
                    epoch_losses.append(value)
                    losses.append(value)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(epoch=epoch + 1, loss=f"{value:.3f}")
                if not epoch_losses:
                    break
                epoch_means.append(float(np.mean(epoch_losses)))
                done = epoch + 1
                if ckpt_path is not None and (done % max(1, checkpoint_every) == 0 or done == epochs):
                    save_checkpoint(
                        ckpt_path,
                        {
                            "format": CHECKPOINT_FORMAT,
                            "run": run,
                            "epoch": done,
                            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                            "optimizer": _to_cpu(optimiser.state_dict()),
                            "numpy_rng": rng.bit_generator.state,
                            "torch_generator": generator.get_state(),
                            "torch_rng": torch.get_rng_state(),
                            "order": [int(i) for i in order],
                            "losses": losses,
                            "epoch_losses": epoch_means,
                            "seconds": seconds_before + time.perf_counter() - started,
                        },
                    )
                if callback is not None:
                    callback(
                        {"epoch": done, "epochs": epochs, "loss": epoch_means[-1], "losses": list(losses),
                         "epoch_losses": list(epoch_means)}
                    )  # fmt: skip
        finally:
            if bar is not None:
                bar.close()
    model.eval()
    model.training_summary = {
        "source": source,
        "identities": n,
        "images": n_images,
        "positives": "software re-photographs (training.recapture)"
        + (" of several photographs per papyrus" if n_images > n else " of each image")
        + (
            f", a pool of {cache_views} per papyrus through the frozen trunk once (cached features)"
            if cache_views
            else ""
        ),
        "mining": mining,
        "epochs": epochs,
        "steps_per_epoch": steps,
        "batch_size": per_batch * 2,
        "margin": margin,
        "lr": lr,
        "trainable": policy,
        "pretrained": model.backbone_weights is not None,
        "seed": seed,
        "device": str(device),
        "final_loss": epoch_means[-1] if epoch_means else float("nan"),
        "seconds": seconds_before + time.perf_counter() - started,
        "resumed_from_epoch": start_epoch if start_epoch else None,
        "steps_done": len(losses),
        "cache_views": cache_views or None,
        "stopped_at_time_limit": stopped,
        "losses": losses,
        "epoch_losses": epoch_means,
    }
    if out_dir is not None:
        save_model(model, out_dir)
    return model


def save_model(model: SiameseResNet18, out_dir: str | Path) -> Path:
    """``save_pretrained`` into ``out_dir`` with a fresh model card (an older README.md written by
    papyrus-widgets is replaced; one written by a person is kept)."""
    out = Path(out_dir)
    card = out / "README.md"
    if card.is_file() and "library_name: papyrus-widgets" in card.read_text(encoding="utf-8", errors="replace"):
        card.unlink()
    model.save_pretrained(out)
    return out


def _as_identities(images: Sequence[Image.Image] | Identities) -> dict[str, list[Image.Image]]:
    if isinstance(images, Mapping):
        out = {str(k): list(v) for k, v in images.items() if len(v)}
    else:
        out = {f"{i:05d}": [img] for i, img in enumerate(images)}
    return out


def _train_mode(model: SiameseResNet18) -> None:
    """Train mode, except batch norms without trainable parameters: frozen layers keep their statistics."""
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            if not any(p.requires_grad for p in module.parameters()):
                module.eval()


def trunk_features(model: SiameseResNet18, x: torch.Tensor) -> torch.Tensor:
    """The 512-d pooled ResNet features before the head (``fc``)."""
    b = model.base_model
    x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
    x = b.layer4(b.layer3(b.layer2(b.layer1(x))))
    return torch.flatten(b.avgpool(x), 1)


def _cached_views(
    model: SiameseResNet18,
    small: Sequence[Sequence[Image.Image]],
    views: int,
    rng: np.random.Generator,
    device: str,
    progress: bool,
    batch_size: int = 16,
) -> torch.Tensor:
    """(identities x views, 512) trunk features of ``views`` re-photographs per identity (its images in turn)."""
    was_training = model.training
    model.eval()
    todo = [imgs[v % len(imgs)] for imgs in small for v in range(views)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="caching views", unit="view")
    out: list[torch.Tensor] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                x = torch.from_numpy(np.stack([model_input(recapture(img, rng)) for img in chunk])).to(device)
                out.append(trunk_features(model, x).float())
                if bar is not None:
                    bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    return torch.cat(out).clone()  # a normal tensor (not an inference tensor) for autograd


def _two_views(imgs: Sequence[Image.Image], rng: np.random.Generator) -> list[Image.Image]:
    if len(imgs) == 1:
        return [imgs[0], imgs[0]]
    a, b = rng.choice(len(imgs), size=2, replace=False)
    return [imgs[int(a)], imgs[int(b)]]


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class LiveLossPlot:
    """A ``callback`` for :func:`train_triplets` that redraws a loss plot in a notebook after each
    epoch (one display, updated in place) and keeps the last figure as ``figure``."""

    def __init__(self, title: str = "triplet loss") -> None:
        self.title = title
        self.figure: Any = None
        self._handle: Any = None

    def __call__(self, info: Mapping[str, Any]) -> None:
        import matplotlib.pyplot as plt

        losses = info["losses"]
        epochs = info["epoch_losses"]
        steps_per_epoch = max(1, len(losses) // max(1, len(epochs)))
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot(np.arange(1, len(losses) + 1), losses, lw=0.8, alpha=0.5, label="step")
        ax.plot(np.arange(1, len(epochs) + 1) * steps_per_epoch, epochs, "o-", label="epoch mean")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(f"{self.title} — epoch {info['epoch']}/{info['epochs']}: {info['loss']:.3f}")
        ax.legend(loc="upper right")
        fig.tight_layout()
        plt.close(fig)  # shown through the display below only, not again at the cell's end
        self.figure = fig
        try:
            from IPython.display import display

            if self._handle is None:
                self._handle = display(fig, display_id=True)
            else:
                self._handle.update(fig)
        except ImportError:  # pragma: no cover - outside IPython
            pass
