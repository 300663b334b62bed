"""Staged CNNs: a timm ResNet or EfficientNet seen as stem, stages and tail, so a side network can copy, run and
calibrate its stages one at a time (``forward_features`` is exactly stem, stages, tail in order)."""

from __future__ import annotations

import torch
from torch import nn

Staged = tuple[list[nn.Module], list[nn.Sequential], list[nn.Module]]


def staged_cnn(model: nn.Module) -> Staged | None:
    """(stem, stages, tail) of a timm ResNet or EfficientNet; ``None`` for any other model."""
    if all(hasattr(model, a) for a in ("conv1", "bn1", "act1", "maxpool", "layer1")):
        stages = [getattr(model, f"layer{i}") for i in range(1, 5) if hasattr(model, f"layer{i}")]
        return [model.conv1, model.bn1, model.act1, model.maxpool], stages, []
    if all(hasattr(model, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
        return [model.conv_stem, model.bn1], list(model.blocks), [model.conv_head, model.bn2]
    return None


def run_modules(modules: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """``x`` through ``modules`` in order."""
    for module in modules:
        x = module(x)
    return x


def reinitialise(module: nn.Module) -> None:
    """Fresh weights for a copied stage (a side network trained from scratch): He-normal convs, unit BatchNorm."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()
