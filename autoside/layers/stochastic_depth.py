"""Stochastic depth on the residual branches of *frozen* transformer blocks.

DTL's official recipes train with drop-path 0.1 on the frozen ViT/Swin blocks. autoside keeps a frozen backbone in
eval mode (BatchNorm statistics and dropout must not move), so the usual ``DropPath`` would never fire there.
:class:`SideDropPath` is a parameter-free stand-in whose on/off switch (``active``) belongs to the side network that
installed it, not to ``Module.train``: the backbone's state dict and its other modules are untouched.
"""

from __future__ import annotations

import torch
from torch import nn


class SideDropPath(nn.Module):
    """Drop a residual branch per sample with probability ``rate`` while ``active`` (scaled by ``1 / (1 - rate)``)."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = float(rate)
        self.active = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


def set_side_drop_path(block: nn.Module, rate: float) -> list[SideDropPath]:
    """Replace a timm block's ``drop_path1``/``drop_path2`` (ViT, Swin) with :class:`SideDropPath` modules.

    Raises:
        ValueError: the block has no such branches (not a timm ViT or Swin block).
    """
    names = [n for n in ("drop_path1", "drop_path2") if hasattr(block, n)]
    if not names:
        raise ValueError(f"{type(block).__name__} has no drop_path1/drop_path2 branches")
    installed = []
    for name in names:
        module = SideDropPath(rate)
        setattr(block, name, module)
        installed.append(module)
    return installed
