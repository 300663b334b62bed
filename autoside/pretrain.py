"""Reproducible from-scratch pretraining of the small backbones that autoside ships.

The shipped checkpoints (``autoside/weights/<name>.safetensors`` plus a JSON sidecar) come from this module, so that
anyone can retrain them on CPU and check the recorded Fashion-MNIST test accuracy::

    autoside pretrain vit --out autoside/weights
    autoside pretrain resnet --out autoside/weights

Everything runs on in-memory uint8 tensors (no DataLoader workers) with seeded generators, so a rerun on the same
machine and thread count repeats the same computation.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from autoside.data.fashion_mnist import load_fashion_mnist

MEAN = (0.2860, 0.2860, 0.2860)  # Fashion-MNIST training-set pixel mean, repeated to 3 channels
STD = (0.3530, 0.3530, 0.3530)

# Shared training recipe: light augmentation (random crop from zero padding, horizontal flip), AdamW with a
# one-epoch warmup then cosine decay, label smoothing. Each backbone overrides only the learning rate.
_RECIPE = {
    "epochs": 15,
    "batch_size": 128,
    "weight_decay": 0.05,
    "warmup_epochs": 1,
    "label_smoothing": 0.1,
    "crop_padding": 2,
    "hflip": True,
}
# Each backbone: timm constructor, classifier module name and the default training recipe.
BACKBONES: dict[str, dict[str, Any]] = {
    "vit12_fmnist": {
        "timm_model": "vit_tiny_patch16_224",
        "timm_kwargs": {"img_size": 28, "patch_size": 7, "embed_dim": 96, "depth": 12, "num_heads": 3},
        "classifier": "head",
        "recipe": {**_RECIPE, "lr": 1e-3},
    },
    "resnet4s_fmnist": {
        "timm_model": "resnet18",
        "timm_kwargs": {"layers": [2, 2, 2, 2], "channels": [24, 48, 96, 192]},
        "classifier": "fc",
        "recipe": {**_RECIPE, "lr": 2e-3},
    },
}
ALIASES = {"vit": "vit12_fmnist", "resnet": "resnet4s_fmnist"}


def create_backbone(name: str, num_classes: int = 10) -> torch.nn.Module:
    """Build the (randomly initialised) timm model for a backbone name or alias."""
    import timm

    spec = BACKBONES[ALIASES.get(name, name)]
    return timm.create_model(spec["timm_model"], pretrained=False, num_classes=num_classes, **spec["timm_kwargs"])


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 28, 28) -> normalised float (B, 3, 28, 28), the input convention of every autoside backbone."""
    x = images.float().div_(255.0).unsqueeze(1).expand(-1, 3, -1, -1)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(images: torch.Tensor, padding: int, hflip: bool, gen: torch.Generator) -> torch.Tensor:
    """Batched random crop (zero padding, i.e. background) and horizontal flip on uint8 images."""
    n, h, w = images.shape
    if padding > 0:
        padded = F.pad(images, (padding, padding, padding, padding))
        oy = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
        ox = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
        rows = (oy[:, None] + torch.arange(h))[:, :, None]
        cols = (ox[:, None] + torch.arange(w))[:, None, :]
        images = padded[torch.arange(n)[:, None, None], rows, cols]
    if hflip:
        flip = torch.rand(n, generator=gen) < 0.5
        images = torch.where(flip[:, None, None], images.flip(-1), images)
    return images


@torch.inference_mode()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy on uint8 images."""
    model.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        correct += (model(to_input(images[i : i + batch_size])).argmax(1) == labels[i : i + batch_size]).sum().item()
    return correct / len(images)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms, position embeddings and class token (standard ViT/ResNet practice)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name in {"pos_embed", "cls_token"} else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _machine() -> str:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.platform()} / {cpu} / {torch.get_num_threads()} threads"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _train(
    model: torch.nn.Module, recipe: dict[str, Any], data: tuple[torch.Tensor, ...], log_name: str | None
) -> list[dict[str, float]]:
    """AdamW + per-step linear warmup / cosine decay, label smoothing, test accuracy after every epoch."""
    x_train, y_train, x_test, y_test = data
    gen = torch.Generator().manual_seed(recipe["seed"])  # drives shuffling and augmentation
    opt = torch.optim.AdamW(_param_groups(model, recipe["weight_decay"]), lr=recipe["lr"])
    steps_per_epoch = math.ceil(len(x_train) / recipe["batch_size"])
    total, warmup = recipe["epochs"] * steps_per_epoch, recipe["warmup_epochs"] * steps_per_epoch

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    for epoch in range(recipe["epochs"]):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        loss_sum = 0.0
        for i in range(0, len(perm), recipe["batch_size"]):
            idx = perm[i : i + recipe["batch_size"]]
            x = to_input(augment(x_train[idx], recipe["crop_padding"], recipe["hflip"], gen))
            loss = F.cross_entropy(model(x), y_train[idx], label_smoothing=recipe["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
        acc = evaluate(model, x_test, y_test)
        elapsed = time.perf_counter() - start
        row = {"epoch": epoch + 1, "train_loss": round(loss_sum / len(perm), 5), "test_accuracy": acc}
        history.append({**row, "seconds": round(elapsed, 1)})
        if log_name:
            print(
                f"[{log_name}] epoch {epoch + 1}/{recipe['epochs']} loss {loss_sum / len(perm):.4f} "
                f"test acc {acc:.4f} ({elapsed:.0f}s)",
                flush=True,
            )
    return history


def pretrain(
    arch: str,
    out_dir: Path,
    *,
    seed: int = 0,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    train_subset: int | None = None,
    test_subset: int | None = None,
    data_root: str | None = None,
    log: bool = True,
) -> dict[str, Any]:
    """Train backbone ``arch`` from scratch on Fashion-MNIST and write ``<name>.safetensors`` + ``<name>.json``.

    ``train_subset``/``test_subset`` take the first N images (for smoke tests). Returns the sidecar dict.
    """
    import timm
    from safetensors.torch import save

    name = ALIASES.get(arch, arch)
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {arch!r}; choose from {sorted(BACKBONES) + sorted(ALIASES)}")
    spec = BACKBONES[name]
    overrides = {"epochs": epochs, "batch_size": batch_size, "lr": lr}
    recipe = {**spec["recipe"], **{k: v for k, v in overrides.items() if v is not None}}
    recipe.update(
        seed=seed,
        optimizer="AdamW(betas=(0.9, 0.999))",
        schedule="linear warmup then cosine to 0, per step",
        train_subset=train_subset,
        test_subset=test_subset,
        threads=torch.get_num_threads(),
    )

    x_train, y_train = (torch.from_numpy(a[:train_subset]) for a in load_fashion_mnist("train", data_root))
    x_test, y_test = (torch.from_numpy(a[:test_subset]) for a in load_fashion_mnist("test", data_root))
    torch.manual_seed(seed)
    model = create_backbone(name)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    try:
        history = _train(model, recipe, (x_train, y_train, x_test, y_test), name if log else None)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    train_seconds = time.perf_counter() - start

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    blob = save(state, metadata={"format": "pt"})  # one key: safetensors writes multi-key metadata in random order
    weights_path = out_dir / f"{name}.safetensors"
    _atomic_write(weights_path, blob)
    sidecar = {
        "name": name,
        "timm_model": spec["timm_model"],
        "timm_kwargs": spec["timm_kwargs"],
        "file": weights_path.name,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "num_classes_pretrained": 10,
        "classifier": spec["classifier"],
        "data_config": {
            "input_size": [3, 28, 28],
            "mean": list(MEAN),
            "std": list(STD),
            "interpolation": "bilinear",
            "crop_pct": 1.0,
        },
        "license": "Apache-2.0 (weights trained by autoside on Fashion-MNIST, MIT-licensed data)",
        "pretrain": {"dataset": "fashion_mnist", **recipe, "history": history},
        "fashion_mnist_test_accuracy": history[-1]["test_accuracy"],
        "train_seconds": round(train_seconds, 1),
        "machine": _machine(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
    }
    _atomic_write(out_dir / f"{name}.json", (json.dumps(sidecar, indent=2) + "\n").encode())
    return sidecar
