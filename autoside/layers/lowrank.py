"""Low-rank linear maps shared by the side-network families.

* :class:`LowRankLinear` is the bias-free rank-``r`` map ``x -> B(Ax)`` of LoRA and of DTL's compact side network
  (Hu et al., 2022; Fu et al., AAAI 2024): ``A`` (r x d_in) starts kaiming-uniform, ``B`` (d_out x r) starts at zero,
  so the map is exactly zero at initialisation and the frozen model is unchanged until training moves ``B``.
* :class:`LowRankMLP` is the bottleneck MLP ``d_in -> r -> d_out`` with an activation in between, the building block
  of LoSA's low-rank mixers (Mercea et al., CVPR 2024). Its output layer starts at zero for the same reason.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from autoside.layers.create_act import get_act_layer


class LowRankLinear(nn.Module):
    """``y = x A^T B^T`` without bias: rank-``rank`` map from ``in_features`` to ``out_features`` channels."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be at least 1, got {rank}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.empty(out_features, rank))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        nn.init.zeros_(self.B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.A.t()) @ self.B.t()

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.rank} -> {self.out_features}"


class LowRankMLP(nn.Module):
    """``d_in -> rank -> d_out`` MLP over the last dimension; the output projection starts at zero."""

    def __init__(
        self,
        in_features: int,
        rank: int,
        out_features: int | None = None,
        *,
        act_layer: str | type[nn.Module] = "gelu",
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be at least 1, got {rank}")
        self.down = nn.Linear(in_features, rank)
        self.act = get_act_layer(act_layer)()
        self.up = nn.Linear(rank, out_features or in_features)
        if zero_init:
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))
