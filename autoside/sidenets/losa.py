"""LoSA: Low-rank Side Adaptation (Mercea, Gritsenko, Schmid and Arnab, "Time-, Memory- and Parameter-Efficient Visual
Adaptation", CVPR 2024).

The paper's code was not released; this module implements the formulation the paper gives and turns each detail the
paper leaves open into a config choice (the defaults are marked *):

* The family freezes the ViT it is given (one that a ``full`` trial unfroze in the same process must not train here);
  the frozen ViT runs under ``no_grad`` and hands over its block outputs ``b_1..b_L`` through timm's
  ``forward_intermediates`` (all tokens, CLS included; no final norm). Nothing the side network does sends a gradient
  into the backbone, so its features can be cached and its activations are never kept.
* A parallel network keeps a state ``h`` (``h_0 = 0``) and refines it at each adapted layer ``i``:

  - ``update="refine"`` *: ``h_i = h_{i-1} + g_i(b_i + h_{i-1})`` (the paper's iterative refinement: each step sees
    the backbone's feature as corrected so far);
  - ``update="independent"``: ``h_i = h_{i-1} + g_i(b_i)`` (every ``g_i`` sees only the frozen feature).

  Layers that are not adapted carry ``h`` over unchanged. Adapted layers: ``first_layer, first_layer + layer_stride,
  ...`` (* every layer).
* ``g_i`` is a low-rank mixer (:class:`~autoside.layers.LowRankMixer`): ``mixer_depth`` (* 1) blocks of pre-norm
  residual low-rank MLPs over channels (``d -> r_c -> d``) and over tokens (``N -> r_t -> N``), in the order
  ``mixer_order`` (* token first, as in MLP-Mixer) with ``mixer_components`` (* both; or channel / token only). The
  paper does not say how the mixers are initialised; their output projections start at zero here, so the side network
  starts as the identity on the backbone's features (``h = 0``), like LoRA's ``B = 0``.
* The prediction comes from the refined last feature ``b_L + h_L``: pooling (``pool``: * the CLS token, or the mean of
  the patch tokens), a LayerNorm initialised from the backbone's final norm (a trainable copy, so no gradient passes
  through a backbone module), dropout and a Linear head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from autoside.backbones import Backbone, BackboneSpec
from autoside.layers import LowRankMixer
from autoside.sidenets import register_family, register_sidenet
from autoside.sidenets.base import SideConfig, SideNet, require


@dataclass(frozen=True)
class LoSAConfig(SideConfig):
    """Low-rank side adaptation of a frozen ViT.

    Attributes:
        channel_rank: ``r_c`` of the channel-mixing MLPs.
        token_rank: ``r_t`` of the token-mixing MLPs.
        mixer_depth: mixer blocks per adapted layer.
        mixer_order: which mixing comes first in each mixer block (with one kind of mixing: unused, kept at its
            default).
        mixer_components: channel and token mixing, or only one of them (the other's rank is then unused and kept
            at its default).
        first_layer: first adapted layer (0-indexed).
        layer_stride: adapt every ``layer_stride``-th layer from ``first_layer`` on.
        update: how ``h`` is refined (see the module docstring).
        pool: ``cls`` token or ``mean`` of the patch tokens of ``b_L + h_L``.
        act: activation inside the low-rank MLPs.
        dropout: dropout before the classifier.
    """

    family = "losa"
    channel_rank: int = 32
    token_rank: int = 16
    mixer_depth: int = 1
    mixer_order: Literal["token_first", "channel_first"] = "token_first"
    mixer_components: Literal["both", "channel", "token"] = "both"
    first_layer: int = 0
    layer_stride: int = 1
    update: Literal["refine", "independent"] = "refine"
    pool: Literal["cls", "mean"] = "cls"
    act: Literal["gelu", "relu", "silu"] = "gelu"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        require(self.channel_rank >= 1, "channel_rank", f"must be at least 1, got {self.channel_rank}")
        require(self.token_rank >= 1, "token_rank", f"must be at least 1, got {self.token_rank}")
        require(self.mixer_depth >= 1, "mixer_depth", f"must be at least 1, got {self.mixer_depth}")
        require(self.first_layer >= 0, "first_layer", f"must be a layer index >= 0, got {self.first_layer}")
        require(self.layer_stride >= 1, "layer_stride", f"must be at least 1, got {self.layer_stride}")
        require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        if self.mixer_components != "both":  # one kind of mixing: no order, and the other kind's rank is unused
            unused = "token_rank" if self.mixer_components == "channel" else "channel_rank"
            self._unused(mixer_order=None, **{unused: None})

    def check_backbone(self, spec: BackboneSpec) -> None:
        require(
            spec.layout == "vit",
            "family",
            f"{self.family!r} needs a ViT backbone (layout 'vit'); {spec.name!r} has layout {spec.layout!r}",
        )
        require(
            spec.grid_size is not None,
            "family",
            f"{self.family!r} mixes a fixed number of tokens, but {spec.name!r} has no fixed patch grid",
        )
        width, tokens = spec.widths[0], self.num_tokens(spec)
        if self.mixer_components != "token":
            require(
                self.channel_rank <= width,
                "channel_rank",
                f"must be in 1..{width} (the width of {spec.name!r}), got {self.channel_rank}",
            )
        if self.mixer_components != "channel":
            require(
                self.token_rank <= tokens,
                "token_rank",
                f"must be in 1..{tokens} (the number of tokens of {spec.name!r}), got {self.token_rank}",
            )
        require(
            self.first_layer < spec.num_taps,
            "first_layer",
            f"must be in 0..{spec.num_taps - 1} (the backbone has {spec.num_taps} blocks), got {self.first_layer}",
        )
        require(
            self.pool == "mean" or spec.num_prefix_tokens > 0,
            "pool",
            f"{spec.name!r} has no CLS token (allowed: 'mean'), got {self.pool!r}",
        )

    @staticmethod
    def num_tokens(spec: BackboneSpec) -> int:
        return spec.num_prefix_tokens + spec.grid_size[0] * spec.grid_size[1]

    def adapted_layers(self, depth: int) -> tuple[int, ...]:
        return tuple(range(self.first_layer, depth, self.layer_stride))


@register_family
class LoSA(SideNet):
    """A parallel low-rank mixer network that refines the frozen ViT's block outputs; nothing is written back."""

    config_class = LoSAConfig

    def __init__(self, config: LoSAConfig, backbone: Backbone, num_classes: int) -> None:
        super().__init__(config, backbone, num_classes)
        backbone.freeze()
        spec = backbone.spec
        depth, width = spec.num_taps, spec.widths[0]
        self.adapted = config.adapted_layers(depth)
        self.mixers = nn.ModuleDict({str(i): self.make_mixer(config, spec) for i in self.adapted})
        self.norm = nn.LayerNorm(width, eps=_final_norm_eps(backbone.model))
        _init_from_backbone_norm(self.norm, backbone.model)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(spec.num_features, num_classes)

    @staticmethod
    def make_mixer(config: LoSAConfig, spec: BackboneSpec) -> nn.Module:
        """``g_i``: maps the ``(B, N, d)`` tokens of one layer to their update."""
        return LowRankMixer(
            spec.widths[0],
            config.num_tokens(spec),
            channel_rank=config.channel_rank,
            token_rank=config.token_rank,
            depth=config.mixer_depth,
            order=config.mixer_order,
            components=config.mixer_components,
            act_layer=config.act,
        )

    def feature_taps(self) -> tuple[str, ...]:
        """Frozen block outputs ``b_i`` (all tokens) of the adapted layers and of the last one."""
        return tuple(f"tokens:{i}" for i in sorted({*self.adapted, self.backbone.spec.num_taps - 1}))

    def frozen_state_read(self) -> tuple[str, ...]:
        """The final norm the side norm starts from (nothing else of the backbone)."""
        model = self.backbone.model
        name = next(n for n, m in model.named_modules() if m is _final_norm(model))
        return (*super().frozen_state_read(), f"{name}.")

    def side(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        h = None
        for i in self.adapted:
            b = feats[f"tokens:{i}"]
            z = b if h is None or self.config.update == "independent" else b + h
            update = self.mixers[str(i)](z)
            h = update if h is None else h + update
        tokens = feats[f"tokens:{self.backbone.spec.num_taps - 1}"] + h
        prefix = self.backbone.spec.num_prefix_tokens
        # Pool, then normalise: the same as the backbone's norm-then-CLS for CLS pooling, and the fc_norm order of
        # timm's average-pooled ViTs (and of DTL's head) for the mean; the norm then never sees the full token map.
        pooled = tokens[:, 0] if self.config.pool == "cls" else tokens[:, prefix:].mean(dim=1)
        return self.head(self.drop(self.norm(pooled)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.side(self.backbone.taps(x, self.feature_taps()))


def _final_norm(model: nn.Module) -> nn.Module:
    return model.fc_norm if isinstance(getattr(model, "norm", nn.Identity()), nn.Identity) else model.norm


def _final_norm_eps(model: nn.Module) -> float:
    return float(getattr(_final_norm(model), "eps", 1e-6))


@torch.no_grad()
def _init_from_backbone_norm(norm: nn.LayerNorm, model: nn.Module) -> None:
    source = _final_norm(model)
    if isinstance(source, nn.LayerNorm) and source.normalized_shape == norm.normalized_shape:
        norm.load_state_dict(source.state_dict())


@register_sidenet("losa")
def losa_vit_b16() -> dict[str, object]:
    """ViT-B/16 (width 768, 197 tokens): r_c = 32, r_t = 16, one mixer on every block, CLS pooling."""
    return {"channel_rank": 32, "token_rank": 16, "mixer_depth": 1, "update": "refine", "pool": "cls"}


@register_sidenet("losa")
def losa_vit12_fmnist() -> dict[str, object]:
    """The shipped 12-block ViT (width 96, 17 tokens): r_c = 16, r_t = 8, one mixer on every block."""
    return {"channel_rank": 16, "token_rank": 8, "mixer_depth": 1, "update": "refine", "pool": "cls"}
