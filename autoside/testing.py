"""Reusable contract checks for side networks, run over the registry on tiny random backbones.

Every registered family and preset must pass them (``tests/test_sidenets.py``); a new family gets them for free. They
follow timm's ``tests/test_models.py`` and PEFT's ``tests/testing_common.py``: shapes, finite outputs, a training step
after which no frozen backbone parameter has a gradient and every side parameter has one, a frozen backbone that stays
in eval mode with unchanged BatchNorm statistics, a config that round-trips through plain dicts, and an exported state
that leaves the frozen backbone out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoside.backbones import Backbone, _spec_for, offline_weights
from autoside.data import Split, Task
from autoside.sidenets import SideNet, config_from_dict

# Tiny timm models with the block structure of the real ones (12 ViT blocks, Swin-B's 2-2-18-2 stages), so that the
# presets' block indices are valid on them; each builds and runs a batch of 2 in milliseconds.
TINY_BACKBONES: dict[str, tuple[str, dict[str, Any], int]] = {
    "vit": (
        "vit_tiny_patch16_224",
        {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 12, "num_heads": 2},
        32,
    ),
    "swin": (
        "swin_tiny_patch4_window7_224",
        {"img_size": 32, "embed_dim": 8, "depths": (2, 2, 18, 2), "num_heads": (1, 1, 2, 2), "window_size": 2},
        32,
    ),
    "cnn": ("resnet18", {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64]}, 32),
}


def timm_backbone(
    timm_model: str, timm_kwargs: dict[str, Any], image_size: int, *, name: str | None = None
) -> Backbone:
    """A frozen :class:`Backbone` around a randomly initialised timm model built with custom kwargs."""
    import timm

    model = timm.create_model(timm_model, pretrained=False, num_classes=0, **timm_kwargs)
    data_config = {"input_size": [3, image_size, image_size], "mean": [0.5] * 3, "std": [0.5] * 3}
    spec = _spec_for(
        model,
        name=name or f"tiny_{timm_model}",
        timm_model=timm_model,
        timm_kwargs=timm_kwargs,
        weights="random",
        sha=None,
        image_size=image_size,
        data_config=data_config,
    )
    return Backbone(model, spec)


def tiny_backbone(layout: str) -> Backbone:
    """A tiny random backbone of layout ``vit``, ``swin`` or ``cnn``."""
    timm_model, kwargs, size = TINY_BACKBONES[layout]
    return timm_backbone(timm_model, kwargs, size, name=f"tiny_{layout}")


def small_vit_backbone() -> Backbone:
    """The project's own small ViT (``vit12_fmnist``: 12 blocks, width 96, 28 px, 7 px patches), random weights."""
    from autoside.backbones import create_backbone
    from autoside.pretrain import BACKBONES

    if "vit12_fmnist" in offline_weights():
        return create_backbone("vit12_fmnist", weights="random")
    arch = BACKBONES["vit12_fmnist"]
    return timm_backbone(arch["timm_model"], arch["timm_kwargs"], arch["timm_kwargs"]["img_size"], name="vit12_fmnist")


def random_batch(
    backbone: Backbone, batch_size: int = 2, num_classes: int = 3, *, frames: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random input and labels: images ``(B, 3, H, W)``, or clips ``(B, frames, 3, H, W)`` when ``frames`` is set."""
    size = backbone.spec.image_size
    gen = torch.Generator().manual_seed(0)
    shape = (batch_size, 3, size, size) if frames is None else (batch_size, frames, 3, size, size)
    return torch.randn(*shape, generator=gen), torch.randint(0, num_classes, (batch_size,), generator=gen)


def random_task(size: int, n: int = 12, num_classes: int = 3) -> Task:
    """A task of ``n`` random uint8 images (train: all of them; val: the first half; test: the second half)."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
    labels = torch.arange(n) % num_classes
    half = n // 2
    return Task(
        "random",
        tuple(str(c) for c in range(num_classes)),
        Split(images, labels),
        Split(images[:half], labels[:half]),
        Split(images[half:], labels[half:]),
    )


def tiny_coco_annotations() -> dict[str, Any]:
    """COCO annotations of three images: a 40x20 landscape with two boxes (annotations 11 and 12), a 20x40 portrait
    with one (13), and a 10x10 image whose only annotation is a crowd (14), so it is a negative. Category ids 7 (dog)
    and 3 (cat) are sparse and listed out of order."""
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 40, "height": 20},
            {"id": 2, "file_name": "b.png", "width": 20, "height": 40},
            {"id": 3, "file_name": "c.png", "width": 10, "height": 10},
        ],
        "annotations": [
            {"id": 11, "image_id": 1, "category_id": 7, "bbox": [4, 2, 10, 6], "iscrowd": 0},
            {"id": 12, "image_id": 1, "category_id": 3, "bbox": [20, 10, 19.5, 10.4]},  # within the tolerance
            {"id": 13, "image_id": 2, "category_id": 3, "bbox": [0, 20, 20, 20]},
            {"id": 14, "image_id": 3, "category_id": 7, "bbox": [0, 0, 10, 10], "iscrowd": 1},
        ],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
    }


def write_tiny_coco(root: Path, annotations: dict[str, Any] | None = None, *, where: str = "instances.json") -> Path:
    """A COCO folder (``root/images/`` + ``root/<where>``) for :func:`tiny_coco_annotations`: blue images, with
    annotation 11's box painted red in ``a.png``. Returns the annotation file."""
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    for name, size in {"a.png": (40, 20), "b.png": (20, 40), "c.png": (10, 10)}.items():
        img = Image.new("RGB", size, (0, 0, 255))
        if name == "a.png":
            img.paste((255, 0, 0), (4, 2, 14, 8))
        img.save(root / "images" / name)
    path = root / where
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(tiny_coco_annotations() if annotations is None else annotations))
    return path


def tiny_search_recipe(*, train: int = 192, val: int = 64, test: int = 64, **overrides: Any) -> dict[str, Any]:
    """A recipe whose trials train in seconds on a CPU (digits on a random-weight ViT-Tiny at 32 px, one epoch): the
    search tests' trial. ``overrides`` replace top-level keys."""
    return {
        "name": "tinyvit",
        "dataset": {"name": "digits", "train_size": train, "val_size": val, "test_size": test},
        "backbone": {"name": "vit_tiny_patch16_224", "weights": "random"},
        "image_size": 32,
        "epochs": 1,
        "batch_size": 32,
        "lr": 0.003,
        "warmup_epochs": 0,
        "device": "cpu",
        "threads": 1,
        **overrides,
    }


def tiny_detection_recipe(**overrides: Any) -> dict[str, Any]:
    """A detection recipe whose trials train in seconds on a CPU (pasted_objects at 64 px, the shipped ResNet, CST
    with 3/4 of its channels pruned, a small Faster R-CNN keeping every detection): the detection tests' trial."""
    return {
        "name": "pasted_tiny",
        "dataset": {"name": "pasted_objects", "train_size": 16, "val_size": 8, "test_size": 8},
        "backbone": {"name": "resnet4s_fmnist"},
        "sidenet": {"name": "cst_det_resnet4s_fmnist", "options": {"prune_ratio": 0.75}},
        "detector": {"fpn_channels": 16, "roi_batch": 16, "proposals": 50, "score_threshold": 0.0},
        "image_size": 64,
        "epochs": 2,
        "batch_size": 8,
        "eval_batch_size": 8,
        "lr": 0.001,
        "warmup_epochs": 0,
        "memory_budget": "1GiB",
        "device": "cpu",
        "threads": 1,
        **overrides,
    }


def _bn_state(backbone: Backbone) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in backbone.state_dict().items() if "running_" in k or "num_batches" in k}


def check_forward(model: SideNet, x: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits of the right shape, all finite."""
    logits = model(x)
    assert logits.shape == (x.shape[0], num_classes), f"logits shape {tuple(logits.shape)}"
    assert torch.isfinite(logits).all(), "non-finite logits"
    return logits


def check_training_step(model: SideNet, x: torch.Tensor, y: torch.Tensor) -> None:
    """One step in train mode: frozen means frozen, and every side parameter learns."""
    model.train()
    frozen = model.backbone.frozen
    bn_before = _bn_state(model.backbone)
    logits = check_forward(model, x, model.num_classes)
    loss = nn.functional.cross_entropy(logits, y)
    loss.backward()
    assert torch.isfinite(loss), "non-finite loss"
    if frozen:
        assert not model.backbone.model.training, "a frozen backbone must stay in eval mode"
        with_grad = [n for n, p in model.backbone.named_parameters() if p.grad is not None or p.requires_grad]
        assert not with_grad, f"frozen backbone parameters got gradients: {with_grad[:3]}"
        for key, value in _bn_state(model.backbone).items():
            assert torch.equal(value, bn_before[key]), f"BatchNorm statistic {key} moved"
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"side parameters without a gradient: {missing[:3]}"
    assert model.side_parameters(), "no trainable parameters"


def check_config_roundtrip(model: SideNet) -> None:
    """``to_dict`` -> JSON -> ``config_from_dict`` gives back an equal config."""
    data = json.loads(json.dumps(model.config.to_dict()))
    assert data["family"] == model.config.family
    assert config_from_dict(data) == model.config


def check_side_state_dict(model: SideNet) -> None:
    """A frozen family exports its side weights only, and all of them."""
    state = model.side_state_dict()
    if model.backbone.frozen:
        assert not any(k.startswith("backbone.") for k in state), "side_state_dict includes the frozen backbone"
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable <= set(state), (
            f"trainable weights missing from side_state_dict: {sorted(trainable - set(state))[:3]}"
        )
    else:
        assert any(k.startswith("backbone.") for k in state), "a trained backbone must be exported"


def backbone_blocks(backbone: Backbone) -> list[nn.Module]:
    """The transformer blocks of a ViT or Swin backbone, in forward order."""
    model = backbone.model
    if backbone.spec.layout == "vit":
        return list(model.blocks)
    if backbone.spec.layout == "swin":
        return [block for stage in model.layers for block in stage.blocks]
    raise ValueError(f"{backbone.spec.name}: no transformer blocks (layout {backbone.spec.layout!r})")


def blocks_recording_graph(
    model: SideNet, x: torch.Tensor, blocks: Iterable[nn.Module] | None = None, *args: Any
) -> list[bool]:
    """For each backbone block, whether its output was recorded by autograd (has a ``grad_fn``) in one forward
    ``model(x, *args)`` (a detector's targets, say)."""
    blocks = list(blocks if blocks is not None else backbone_blocks(model.backbone))
    recorded: dict[int, bool] = {}
    hooks = [
        b.register_forward_hook(lambda _m, _i, out, k=k: recorded.__setitem__(k, out.grad_fn is not None))
        for k, b in enumerate(blocks)
    ]
    try:
        model.train()
        model(x, *args)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(recorded) == len(blocks), "some blocks did not run"
    return [recorded[k] for k in range(len(blocks))]


def run_contract(model: SideNet) -> None:
    """All checks on one side network built beside a tiny backbone."""
    torch.manual_seed(0)
    frames = (getattr(model.config, "frames", None) or 3) if model.modality == "video" else None
    x, y = random_batch(model.backbone, num_classes=model.num_classes, frames=frames)
    check_training_step(model, x, y)
    model.eval()
    with torch.no_grad():
        check_forward(model, x, model.num_classes)
    check_config_roundtrip(model)
    check_side_state_dict(model)
