"""Low-rank mixers: MLP-Mixer blocks whose MLPs are low-rank bottlenecks (LoSA, Mercea et al., CVPR 2024).

A *channel mixer* applies ``d -> r_c -> d`` to every token; a *token mixer* applies ``N -> r_t -> N`` to every channel
(mixing information across tokens). Each is pre-norm (LayerNorm over channels) with a residual connection. A
:class:`LowRankMixer` stacks ``depth`` mixer blocks, each made of the chosen components in the chosen order, and returns
only the *residual update* ``mixer(x) - x`` (accumulated directly, not by subtraction): side networks add it to a
state they own. Every output projection starts at zero, so the update is zero at initialisation. By default each branch
recomputes its LayerNorm in backward instead of keeping the normalised tokens (same result, about half the memory).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from autoside.layers.lowrank import LowRankMLP
from autoside.layers.recompute import recompute

MixerOrder = Literal["token_first", "channel_first"]
MixerComponents = Literal["both", "channel", "token"]


class _MixerBranch(nn.Module):
    """Pre-norm low-rank MLP branch; with ``recompute`` the LayerNorm output is recomputed in backward.

    ``over_tokens`` mixes along the token axis (the MLP sees ``(B, d, N)``), else along channels. The normalised
    ``(B, N, d)`` tensor would otherwise be kept for the down-projection's weight gradient: recomputing it (a LayerNorm
    and a thin matmul) keeps only the branch input and the rank-sized hidden state, which halves LoSA's activation
    memory without changing the result.
    """

    def __init__(self, dim: int, features: int, rank: int, act_layer: str, recompute: bool, over_tokens: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = LowRankMLP(features, rank, act_layer=act_layer)
        self.recompute = recompute
        self.over_tokens = over_tokens

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return self.mlp.down(x.transpose(1, 2) if self.over_tokens else x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = recompute(self._down, x, enabled=self.recompute)
        out = self.mlp.up(self.mlp.act(hidden))
        return out.transpose(1, 2) if self.over_tokens else out


class ChannelMixer(_MixerBranch):
    """``LN -> d -> r_c -> d`` over channels (the update only; the caller adds the residual)."""

    def __init__(self, dim: int, rank: int, act_layer: str = "gelu", recompute: bool = True) -> None:
        super().__init__(dim, dim, rank, act_layer, recompute, over_tokens=False)


class TokenMixer(_MixerBranch):
    """``LN -> N -> r_t -> N`` over tokens, for a fixed number of tokens ``num_tokens`` (the update only)."""

    def __init__(self, dim: int, num_tokens: int, rank: int, act_layer: str = "gelu", recompute: bool = True) -> None:
        super().__init__(dim, num_tokens, rank, act_layer, recompute, over_tokens=True)


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
        recompute: bool = True,
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
                    TokenMixer(dim, num_tokens, token_rank, act_layer, recompute)
                    if kind == "token"
                    else ChannelMixer(dim, channel_rank, act_layer, recompute)
                )
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.layers[0](x)
        for layer in self.layers[1:]:
            update = update + layer(x + update)
        return update
