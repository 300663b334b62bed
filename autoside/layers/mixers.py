"""Low-rank mixers: MLP-Mixer blocks whose MLPs are low-rank bottlenecks (LoSA, Mercea et al., CVPR 2024).

A *channel mixer* applies ``d -> r_c -> d`` to every token; a *token mixer* applies ``N -> r_t -> N`` to every channel
(mixing information across tokens). Each is pre-norm (LayerNorm over channels) with a residual connection. A
:class:`LowRankMixer` stacks ``depth`` mixer blocks, each made of the chosen components in the chosen order, and returns
only the *residual update* ``mixer(x) - x`` (accumulated directly, not by subtraction): side networks add it to a
state they own. Every output projection starts at zero, so the update is zero at initialisation.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from autoside.layers.lowrank import LowRankMLP

MixerOrder = Literal["token_first", "channel_first"]
MixerComponents = Literal["both", "channel", "token"]


class ChannelMixer(nn.Module):
    """``LN -> d -> r_c -> d`` over channels (the update only; the caller adds the residual)."""

    def __init__(self, dim: int, rank: int, act_layer: str = "gelu") -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = LowRankMLP(dim, rank, act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(x))


class TokenMixer(nn.Module):
    """``LN -> N -> r_t -> N`` over tokens, for a fixed number of tokens ``num_tokens`` (the update only)."""

    def __init__(self, dim: int, num_tokens: int, rank: int, act_layer: str = "gelu") -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = LowRankMLP(num_tokens, rank, act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(x).transpose(1, 2)).transpose(1, 2)


class LowRankMixer(nn.Module):
    """``depth`` low-rank mixer blocks on ``(B, N, d)`` tokens; ``forward`` returns the summed residual updates."""

    def __init__(
        self,
        dim: int,
        num_tokens: int,
        *,
        channel_rank: int,
        token_rank: int,
        depth: int = 1,
        order: MixerOrder = "token_first",
        components: MixerComponents = "both",
        act_layer: str = "gelu",
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        kinds = {"both": ("token", "channel"), "token": ("token",), "channel": ("channel",)}[components]
        if order == "channel_first":
            kinds = kinds[::-1]
        layers: list[nn.Module] = []
        for _ in range(depth):
            for kind in kinds:
                layers.append(
                    TokenMixer(dim, num_tokens, token_rank, act_layer)
                    if kind == "token"
                    else ChannelMixer(dim, channel_rank, act_layer)
                )
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.layers[0](x)
        for layer in self.layers[1:]:
            update = update + layer(x + update)
        return update
