"""Side4Video: a spatial-temporal side network beside a frozen image ViT (Yao, Wu, Li, Zhang, Xie, Gao and Wang,
"Side4Video: Spatial-Temporal Side Network for Memory-Efficient Image-to-Video Transfer Learning", arXiv 2311.15769).

Built the way the authors' public code builds it (the defaults reproduce it; the other values are search knobs):

* The frozen ViT sees the clip frame by frame (``B*T`` images) under ``no_grad``; nothing flows back into it, so its
  activations are never kept (the paper's memory argument).
* Side stem from the pixels: ``Conv3d(3 -> s, kernel (3, p, p), stride (1, p, p))`` + BatchNorm3d, one token per patch
  and frame.
* For every selected backbone layer ``i``: ``z = Linear_i(LayerNorm_i(b_i))`` (width -> ``s``); the side state becomes
  ``0.5 * h + 0.5 * z_patches``, then one side block runs with ``z_cls`` as an extra key/value.
* Side block, residual around each part:

  1. temporal module over BatchNorm3d'd tokens (:mod:`autoside.layers.temporal`; * a pointwise / depthwise 3x1x1 /
     pointwise bottleneck);
  2. spatial multi-head attention (``s / 64`` heads) per frame: queries are the patch tokens, keys and values are the
     patch tokens plus the backbone's CLS token shifted in time (half of its channels from frame ``t+1``, half from
     ``t-1``, zeros at the clip's ends; ``cls_shift=False`` keeps each frame's own CLS); a learned spatial position
     embedding, one for all blocks, is added to the patch tokens and everything is LayerNorm'd first;
  3. an MLP (ratio 4, GELU) over BatchNorm3d'd tokens.
* Head: BatchNorm3d -> mean over ``T*H*W`` -> Linear.
* With gradient checkpointing (a recipe's ``grad_checkpointing: true``; the authors' ``use_ckpt``) each block's
  temporal module, attention and MLP keep only their normalised input and run again in backward; autoside also
  recomputes each layer's LayerNorm + projection from the frozen layer output the step holds anyway.

Clips are ``(B, T, C, H, W)``; a still image ``(B, C, H, W)`` is a one-frame clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from autoside.backbones import Backbone, BackboneSpec
from autoside.layers import TemporalKnobs, recompute, select_frames, shift_frames
from autoside.sidenets import register_family, register_sidenet
from autoside.sidenets.base import SideConfig, SideNet, require


@dataclass(frozen=True)
class Side4VideoConfig(SideConfig, TemporalKnobs):
    """Side4Video beside a frozen ViT with a CLS token (temporal-module knobs: :class:`~autoside.layers.TemporalKnobs`).

    Attributes:
        side_width: ``s``, the width of the side network.
        layer_set: which backbone layers feed a side block: ``all``, ``every_other`` (1, 3, 5, ...: the last layer is
            always read) or ``top_half``.
        cls_shift: shift the backbone's CLS token in time before it joins the spatial attention.
        head_dim: channels per attention head (heads = ``s / head_dim``).
        mlp_ratio: hidden width of the side MLP as a multiple of ``s``.
        dropout: dropout before the classifier.
        frames: frames read from each clip, evenly spaced (``None``: all of them); a search knob, since memory and
            compute grow with it while the clips on disk stay the same.
    """

    family = "side4video"
    side_width: int = 320
    layer_set: Literal["all", "every_other", "top_half"] = "all"
    cls_shift: bool = True
    head_dim: int = 64
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    frames: int | None = None

    def __post_init__(self) -> None:
        require(self.frames is None or self.frames >= 1, "frames", f"must be at least 1 or null, got {self.frames}")
        require(self.side_width >= 1, "side_width", f"must be at least 1, got {self.side_width}")
        require(self.head_dim >= 1, "head_dim", f"must be at least 1, got {self.head_dim}")
        require(
            self.side_width % self.num_heads == 0,
            "side_width",
            f"must be a multiple of its {self.num_heads} heads (side_width / head_dim), got {self.side_width}",
        )
        self.check_temporal()
        require(self.mlp_ratio > 0, "mlp_ratio", f"must be positive, got {self.mlp_ratio}")
        require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")

    @property
    def num_heads(self) -> int:
        return max(1, self.side_width // self.head_dim)

    def check_backbone(self, spec: BackboneSpec) -> None:
        require(
            spec.layout == "vit" and spec.grid_size is not None and spec.num_prefix_tokens >= 1,
            "family",
            f"'side4video' needs a ViT with a CLS token and a fixed patch grid; {spec.name!r} has layout "
            f"{spec.layout!r} and {spec.num_prefix_tokens} prefix tokens",
        )

    def layers(self, depth: int) -> tuple[int, ...]:
        if self.layer_set == "every_other":
            return tuple(range(1 - depth % 2, depth, 2)) if depth > 1 else (0,)
        if self.layer_set == "top_half":
            return tuple(range(depth // 2, depth))
        return tuple(range(depth))


def to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, T, N, C)`` tokens -> ``(B, C, T, H, W)`` map (what Conv3d and BatchNorm3d read)."""
    b, t, _, c = tokens.shape
    return tokens.permute(0, 3, 1, 2).reshape(b, c, t, *grid)


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, T, H, W)`` map -> ``(B, T, N, C)`` tokens."""
    return x.flatten(3).permute(0, 2, 3, 1)


class Side4VideoBlock(nn.Module):
    """Temporal module, CLS-keyed spatial attention and MLP over the side tokens of one layer."""

    def __init__(self, dim: int, config: Side4VideoConfig, depth: int) -> None:
        super().__init__()
        heads = config.num_heads
        self.temporal = config.build_temporal(dim, heads)
        self.temporal_norm = nn.BatchNorm3d(dim) if self.temporal is not None else None
        self.cls_shift = config.cls_shift
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp_norm = nn.BatchNorm3d(dim)
        hidden = max(1, round(dim * config.mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        # The authors' initialisation: CLIP-style normals, output projections scaled down by the depth.
        proj_std = dim**-0.5 * (2 * depth) ** -0.5
        nn.init.normal_(self.attn.in_proj_weight, std=dim**-0.5)
        nn.init.normal_(self.attn.out_proj.weight, std=proj_std)
        nn.init.normal_(self.mlp[0].weight, std=(2 * dim) ** -0.5)
        nn.init.normal_(self.mlp[2].weight, std=proj_std)

    def _attend(self, kv: torch.Tensor) -> torch.Tensor:
        return self.attn(kv[:, 1:], kv, kv, need_weights=False)[0]

    def forward(
        self, x: torch.Tensor, cls: torch.Tensor, pos: torch.Tensor, grid: tuple[int, int], checkpointing: bool = False
    ) -> torch.Tensor:
        """``x``: side tokens ``(B, T, N, s)``; ``cls``: projected backbone CLS ``(B, T, s)``; ``pos``: ``(N, s)``.
        With ``checkpointing`` the temporal module, the attention and the MLP each keep only their (normalised) input
        and run again in backward, as the authors' ``use_ckpt`` does; the norms stay outside (running statistics)."""
        b, t, n, c = x.shape
        if self.temporal is not None:
            normed = self.temporal_norm(to_map(x, grid))
            x = x + to_tokens(recompute(self.temporal, normed, enabled=checkpointing))
        if self.cls_shift:
            cls = shift_frames(cls.transpose(1, 2), c // 2).transpose(1, 2)
        kv = self.attn_norm(torch.cat([cls[:, :, None], x + pos], dim=2)).flatten(0, 1)
        x = x + recompute(self._attend, kv, enabled=checkpointing).view(b, t, n, c)
        return x + recompute(self.mlp, to_tokens(self.mlp_norm(to_map(x, grid))), enabled=checkpointing)


@register_family
class Side4Video(SideNet):
    """A spatial-temporal side network fed by the frozen ViT's per-frame layer outputs; nothing is written back."""

    config_class = Side4VideoConfig
    modality = "video"
    supports_grad_checkpointing = True

    def __init__(self, config: Side4VideoConfig, backbone: Backbone, num_classes: int) -> None:
        super().__init__(config, backbone, num_classes)
        spec = backbone.spec
        s, width, patch = config.side_width, spec.widths[0], spec.reductions[0]
        self.grid = tuple(spec.grid_size)
        self.taps = config.layers(spec.num_taps)
        self.stem = nn.Conv3d(3, s, (3, patch, patch), stride=(1, patch, patch), padding=(1, 0, 0))
        self.stem_norm = nn.BatchNorm3d(s)
        self.norms = nn.ModuleDict({str(i): nn.LayerNorm(width) for i in self.taps})
        self.projs = nn.ModuleDict({str(i): nn.Linear(width, s) for i in self.taps})
        for proj in self.projs.values():
            nn.init.normal_(proj.weight, std=(2 * s) ** -0.5)
        self.blocks = nn.ModuleDict({str(i): Side4VideoBlock(s, config, len(self.taps)) for i in self.taps})
        self.pos_embed = nn.Parameter(torch.randn(self.grid[0] * self.grid[1], s) * 0.01)
        self.head_norm = nn.BatchNorm3d(s)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(s, num_classes)

    def features(self, frames: torch.Tensor) -> dict[int, torch.Tensor]:
        """Frozen layer outputs of every frame ``(B*T, 1 + N, width)`` (CLS first), without autograd."""
        with torch.no_grad():
            taps = self.backbone.intermediates(frames, indices=list(self.taps), return_prefix_tokens=True)
        return {i: torch.cat([prefix[:, :1], patches], dim=1) for i, (patches, prefix) in zip(self.taps, taps)}

    def _project(self, feature: torch.Tensor, tap: str) -> torch.Tensor:
        return self.projs[tap](self.norms[tap](feature))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clip = select_frames(x if x.ndim == 5 else x[:, None], self.config.frames)
        b, t = clip.shape[:2]
        feats = self.features(clip.flatten(0, 1))
        side = to_tokens(self.stem_norm(self.stem(clip.transpose(1, 2))))
        for i in self.taps:
            # Checkpointing recomputes the projection too: its input, the frozen layer output, is held anyway.
            z = recompute(self._project, feats[i], str(i), enabled=self.grad_checkpointing).unflatten(0, (b, t))
            side = 0.5 * side + 0.5 * z[:, :, 1:]
            side = self.blocks[str(i)](side, z[:, :, 0], self.pos_embed, self.grid, self.grad_checkpointing)
        pooled = self.head_norm(to_map(side, self.grid)).flatten(2).mean(-1)
        return self.head(self.drop(pooled))


@register_sidenet("side4video")
def side4video_vit_b16() -> dict[str, object]:
    """CLIP ViT-B/16 as in the paper: s = 320, every layer, temporal conv 3x1x1, CLS shift."""
    return {"side_width": 320, "layer_set": "all", "temporal": "conv", "temporal_kernel": 3, "cls_shift": True}


@register_sidenet("side4video")
def side4video_vit_l14() -> dict[str, object]:
    """CLIP ViT-L/14 as in the paper: s = 512, every layer."""
    return {"side_width": 512, "layer_set": "all", "temporal": "conv", "temporal_kernel": 3, "cls_shift": True}


@register_sidenet("side4video")
def side4video_vit12_fmnist() -> dict[str, object]:
    """The shipped 12-block ViT (width 96, 4x4 patches): s = 64 (one head), every layer."""
    return {"side_width": 64, "layer_set": "all", "temporal": "conv", "temporal_kernel": 3, "cls_shift": True}
