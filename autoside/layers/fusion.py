"""Depthwise spatial fusion of token features on their patch grid (DTL+, Fu et al., AAAI 2024).

A single ``k x k`` depthwise convolution without bias and with "same" padding mixes each channel of a side state over
neighbouring patches. ``k`` may be even (DTL's official ViT scripts use 4 on some tasks): PyTorch then pads
``(k - 1) // 2`` before and ``k // 2`` after the grid on each axis. Prefix tokens (CLS, registers) have no grid position
and bypass it unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DepthwiseFusion(nn.Module):
    """Depthwise ``kernel_size`` conv over the patch grid of token features.

    Accepts ``(B, prefix + H*W, C)`` token sequences (``grid_size`` and ``num_prefix_tokens`` given) or ``(B, H, W, C)``
    channels-last maps.
    """

    def __init__(
        self, channels: int, kernel_size: int, *, grid_size: tuple[int, int] | None = None, num_prefix_tokens: int = 0
    ) -> None:
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be at least 1, got {kernel_size}")
        self.grid_size = tuple(grid_size) if grid_size else None
        self.num_prefix_tokens = num_prefix_tokens
        # An even kernel's uneven padding is done here: PyTorch's padding="same" would pad a copy anyway, and warn.
        even = kernel_size % 2 == 0
        self.pad = ((kernel_size - 1) // 2, kernel_size // 2) * 2 if even else None
        self.conv = nn.Conv2d(
            channels, channels, kernel_size, padding=0 if even else "same", groups=channels, bias=False
        )

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pad) if self.pad else x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            return self._conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        if self.grid_size is None:
            raise ValueError("token input needs the grid_size of the patch grid")
        b, _, c = x.shape
        h, w = self.grid_size
        prefix, patches = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        patches = self._conv(patches.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
        return torch.cat([prefix, patches], dim=1) if self.num_prefix_tokens else patches
