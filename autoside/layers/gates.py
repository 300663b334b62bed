"""Gates on a side network's contribution.

:func:`swish` is DTL's gate ``x * sigmoid(beta * x)`` (Fu et al., AAAI 2024): with a large ``beta`` (100 in the
paper's code) it is close to a ReLU that lets small negative side states leak a little, so the side state can switch
itself off channel by channel before it is written back into the backbone.
"""

from __future__ import annotations

import torch
from torch import nn


def swish(x: torch.Tensor, beta: float) -> torch.Tensor:
    """``x * sigmoid(beta * x)``."""
    return x * torch.sigmoid(beta * x)


class Swish(nn.Module):
    """Swish with a fixed (not learned) ``beta``."""

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = float(beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swish(x, self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"
