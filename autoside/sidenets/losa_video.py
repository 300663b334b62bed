"""LoSA for video: the image family (:mod:`autoside.sidenets.losa`, Mercea et al., CVPR 2024) on clips, with the
token mixing factorised into space and time as the paper's video variant does.

The frozen ViT sees every frame as an image (``B*T`` images, under ``no_grad``). At each adapted layer the mixer
``g_i`` sees the tokens of all frames of a clip and returns their update:

* ``token_mixing="factorised"`` *: the image LoSA mixer per frame (channel mixing and spatial token mixing over the
  ``N`` tokens of a frame), then a temporal low-rank token mixer over the ``T`` frames of each token position
  (``T -> temporal_rank -> T``, pre-norm, starting at zero like every LoSA output projection);
* ``token_mixing="joint"``: one mixer whose token MLP mixes all ``T*N`` tokens of the clip at once.

An optional temporal module from :mod:`autoside.layers.temporal` (the same searchable dimension as Side4Video's,
``none`` by default here) adds its update over the patch tokens. The clip length ``frames`` is fixed by the config
(the token MLPs have ``T`` inputs); longer clips are read at ``frames`` evenly spaced frames, a still image as a static
clip. The prediction averages the per-frame logits (TSN's consensus).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from autoside.backbones import BackboneSpec
from autoside.layers import LowRankMixer, TemporalKnobs, TokenMixer, select_frames
from autoside.sidenets import register_family, register_sidenet
from autoside.sidenets.base import require
from autoside.sidenets.losa import LoSA, LoSAConfig


@dataclass(frozen=True)
class LoSAVideoConfig(LoSAConfig, TemporalKnobs):
    """LoSA on clips (the image knobs, the temporal-module knobs, and these).

    Attributes:
        frames: ``T``, the frames of a clip the side network reads.
        token_mixing: ``factorised`` (spatial per frame, then temporal) or ``joint`` (all ``T*N`` tokens at once).
        temporal_rank: rank of the temporal token mixer (``factorised``; with ``joint`` it is unused and kept at
            its default).
    """

    family = "losa_video"
    temporal: Literal["none", "conv", "attn", "shift"] = "none"
    frames: int = 8
    token_mixing: Literal["factorised", "joint"] = "factorised"
    temporal_rank: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_temporal()
        require(self.frames >= 1, "frames", f"must be at least 1, got {self.frames}")
        require(
            1 <= self.temporal_rank <= self.frames,
            "temporal_rank",
            f"must be in 1..{self.frames} (frames), got {self.temporal_rank}",
        )
        if self.token_mixing == "joint":  # no temporal token mixer: its rank shapes nothing
            self._unused(temporal_rank=min(type(self).temporal_rank, self.frames))


class VideoMixer(nn.Module):
    """``g_i`` on the ``(B*T, N, d)`` tokens of whole clips (``T`` fixed): see the module docstring."""

    def __init__(self, config: LoSAVideoConfig, spec: BackboneSpec) -> None:
        super().__init__()
        width, tokens, self.frames = spec.widths[0], config.num_tokens(spec), config.frames
        self.joint = config.token_mixing == "joint"
        self.prefix, self.grid = spec.num_prefix_tokens, tuple(spec.grid_size)
        self.mixer = LowRankMixer(
            width,
            tokens * (self.frames if self.joint else 1),
            channel_rank=config.channel_rank,
            token_rank=config.token_rank,
            depth=config.mixer_depth,
            order=config.mixer_order,
            components=config.mixer_components,
            act_layer=config.act,
        )
        self.time_mixer = None if self.joint else TokenMixer(width, self.frames, config.temporal_rank, config.act)
        self.temporal = config.build_temporal(width)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        bt, n, d = z.shape
        t = self.frames
        b = bt // t
        if self.joint:
            update = self.mixer(z.reshape(b, t * n, d)).reshape(bt, n, d)
        else:
            update = self.mixer(z)
            by_position = (z + update).view(b, t, n, d).transpose(1, 2).reshape(b * n, t, d)
            update = update + self.time_mixer(by_position).view(b, n, t, d).transpose(1, 2).reshape(bt, n, d)
        if self.temporal is not None:
            patches = (z + update)[:, self.prefix :].reshape(b, t, *self.grid, d).permute(0, 4, 1, 2, 3)
            extra = self.temporal(patches).permute(0, 2, 3, 4, 1).reshape(bt, n - self.prefix, d)
            update = update + torch.cat([torch.zeros_like(update[:, : self.prefix]), extra], dim=1)
        return update


@register_family
class LoSAVideo(LoSA):
    """LoSA's parallel low-rank refinement over the frames of a clip; nothing is written back."""

    config_class = LoSAVideoConfig
    modality = "video"

    @staticmethod
    def make_mixer(config: LoSAVideoConfig, spec: BackboneSpec) -> nn.Module:
        return VideoMixer(config, spec)

    def feature_taps(self) -> None:
        """Not split for the feature cache: it reads every frame of a clip, the cache one image per example."""
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clip = select_frames(x if x.ndim == 5 else x[:, None], self.config.frames)
        b, t = clip.shape[:2]
        feats = self.backbone.taps(clip.flatten(0, 1), LoSA.feature_taps(self))
        return self.side(feats).unflatten(0, (b, t)).mean(dim=1)


@register_sidenet("losa_video")
def losa_video_vit12_fmnist() -> dict[str, object]:
    """The shipped 12-block ViT on 8-frame clips: r_c = 16, r_t = 8, temporal rank 4, factorised mixing."""
    return {"channel_rank": 16, "token_rank": 8, "frames": 8, "token_mixing": "factorised", "temporal_rank": 4}
