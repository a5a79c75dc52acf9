"""Training: software "re-photographs" of scans and a triplet-loss loop with batch-hard mining.

Each reference image is its own identity. A batch holds P identities x 2 views, each view a
:func:`recapture` of the scan (perspective, rotation, crop, lighting, glare, blur, JPEG), so the
model learns to match a phone photo of a screen or book page to the clean scan.
"""

from __future__ import annotations

import io
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter

from .errors import ModelError
from .imaging import MODEL_INPUT_SIZE, _perspective_coefficients, model_input, to_rgb
from .model import SiameseResNet18, apply_freeze_policy

RECAPTURE_MAX_SIDE = 512
""":func:`recapture` first downscales its input to at most this long side (speed)."""
TRAIN_MAX_SIDE = 384
""":func:`train_triplets` downscales each training image once to at most this long side."""

DEFAULT_EPOCHS = 15
"""Default epochs of :func:`train_triplets`: 44 images x 15 epochs = 90 steps of 16 views, about
2 minutes on 2 idle CPU cores (about 8.5 s per epoch; measured on the development machine)."""


# --------------------------------------------------------------------------------------------- augmentation


def recapture(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """A software re-photograph of the scan ``img``: perspective warp, small rotation, crop
    jitter, brightness/contrast/colour cast, a glare spot, blur and JPEG re-encoding, on a random
    background colour. All randomness comes from ``rng`` (same rng state → same image);
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


# --------------------------------------------------------------------------------------------- training


def batch_hard_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over anchors of ``relu(d(a, hardest positive) - d(a, hardest negative) + margin)``."""
    dist = torch.cdist(embeddings, embeddings, p=2)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive = same & ~eye
    hardest_pos = torch.where(positive, dist, torch.zeros_like(dist)).amax(dim=1)
    hardest_neg = torch.where(same, torch.full_like(dist, float("inf")), dist).amin(dim=1)
    valid = positive.any(dim=1) & (~same).any(dim=1)
    losses = torch.relu(hardest_pos - hardest_neg + margin)[valid]
    return losses.mean() if len(losses) else embeddings.sum() * 0.0


def train_triplets(
    images: Sequence[Image.Image],
    *,
    out_dir: str | Path | None = None,
    epochs: int = DEFAULT_EPOCHS,
    steps_per_epoch: int | None = None,
    batch_size: int = 16,
    margin: float = 0.8,
    lr: float = 1e-3,
    trainable: str = "all",
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    model: SiameseResNet18 | None = None,
) -> SiameseResNet18:
    """Train (or fine-tune ``model``) with triplet loss on recaptured views of ``images``.

    Each image is its own identity; a batch is ``batch_size // 2`` identities x 2
    :func:`recapture` views; loss is batch-hard triplet loss with ``margin``; Adam with ``lr``.
    ``steps_per_epoch`` defaults to one pass over the identities. Seeds are fixed by ``seed``
    (the global torch RNG is restored afterwards). With ``out_dir`` the model is saved with
    ``save_pretrained`` plus a model card. Returns the model in eval mode.
    """
    if len(images) < 2:
        raise ModelError(f"training needs at least 2 images (each is its own identity), got {len(images)}.")
    if epochs < 1 or batch_size < 4:
        raise ModelError("training needs epochs >= 1 and batch_size >= 4 (2 identities x 2 views).")
    rng = np.random.default_rng(seed)
    small = []
    for img in images:
        im = to_rgb(img)
        if max(im.size) > TRAIN_MAX_SIDE:
            im = im.copy()
            im.thumbnail((TRAIN_MAX_SIDE, TRAIN_MAX_SIDE), Image.Resampling.LANCZOS)
        small.append(im)
    n = len(small)
    per_batch = max(2, min(n, batch_size // 2))
    steps = steps_per_epoch if steps_per_epoch is not None else math.ceil(n / per_batch)
    if steps < 1:
        raise ModelError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}.")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if model is None:
            model = SiameseResNet18(trainable=trainable)
        else:
            apply_freeze_policy(model, trainable)
        model = model.to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        optimiser = torch.optim.Adam(params, lr=lr)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=epochs * steps, desc="training", unit="step")
        order = np.array([], dtype=np.int64)
        losses: list[float] = []
        epoch_loss = float("nan")
        started = time.perf_counter()
        model.train()
        try:
            for epoch in range(epochs):
                epoch_losses: list[float] = []
                for _ in range(steps):
                    if len(order) < per_batch:  # walk through shuffled identities, then reshuffle
                        order = np.concatenate([order, rng.permutation(n)])
                    ids, order = order[:per_batch], order[per_batch:]
                    arrays = [model_input(recapture(small[i], rng)) for i in ids for _ in range(2)]
                    x = torch.from_numpy(np.stack(arrays)).to(device)
                    labels = torch.arange(len(ids), device=device).repeat_interleave(2)
                    loss = batch_hard_triplet_loss(model(x), labels, margin)
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                    value = float(loss.detach())
                    epoch_losses.append(value)
                    losses.append(value)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(epoch=epoch + 1, loss=f"{value:.3f}")
                epoch_loss = float(np.mean(epoch_losses))
        finally:
            if bar is not None:
                bar.close()
    model.eval()
    seconds = time.perf_counter() - started
    model.training_summary = {
        "images": n,
        "epochs": epochs,
        "steps_per_epoch": steps,
        "batch_size": per_batch * 2,
        "margin": margin,
        "lr": lr,
        "trainable": trainable,
        "seed": seed,
        "final_loss": epoch_loss,
        "seconds": seconds,
        "losses": losses,
    }
    if out_dir is not None:
        out = Path(out_dir)
        model.save_pretrained(out)
        (out / "README.md").write_text(_model_card(model.training_summary), encoding="utf-8")
    return model


def _model_card(summary: dict) -> str:
    return f"""---
library_name: papyrus-widgets
pipeline_tag: image-feature-extraction
tags:
- papyrus
- image-retrieval
- siamese
- resnet18
- triplet-loss
---

# papyrus-widgets embedding model (SiameseResNet18)

ResNet18 → {MODEL_INPUT_SIZE}px input → 128-d L2-normalised embedding, trained with batch-hard triplet loss
on software re-photographs (`papyrus_widgets.training.recapture`) of each reference scan.

**Trained from scratch, no pretrained backbone.**

| | |
|---|---|
| data | {summary['images']} images (each its own identity) |
| epochs | {summary['epochs']} x {summary['steps_per_epoch']} steps, batch {summary['batch_size']} |
| margin / lr | {summary['margin']} / {summary['lr']} |
| trainable | {summary['trainable']} |
| seed | {summary['seed']} |
| final loss | {summary['final_loss']:.4f} (mean of the last epoch) |
| training time | {summary['seconds']:.0f} s |

Load with `papyrus_widgets.model.load_model("<this directory or repo id>")`.
"""
