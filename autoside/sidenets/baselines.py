"""Baselines every family is compared with: a linear probe and full fine-tuning.

``full`` is the reference of every memory ratio in autoside (``benchmarks/memory_vs_full.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from autoside.backbones import Backbone
from autoside.errors import ConfigError
from autoside.sidenets import register_family
from autoside.sidenets.base import SideConfig, SideNet, require


@dataclass(frozen=True)
class LinearConfig(SideConfig):
    family = "linear"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class FullConfig(SideConfig):
    family = "full"


@register_family
class LinearProbe(SideNet):
    """A trainable linear classifier on the frozen backbone's pooled features; the backbone runs without autograd."""

    config_class = LinearConfig

    def __init__(self, config: LinearConfig, backbone: Backbone, num_classes: int) -> None:
        super().__init__(config, backbone, num_classes)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(backbone.spec.num_features, num_classes)

    def feature_taps(self) -> tuple[str, ...]:
        return ("pooled",)

    def side(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.drop(feats["pooled"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.side(self.backbone.taps(x, self.feature_taps()))

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The frozen backbone's own stage maps, without autograd: a dense head on them is the no-side baseline."""
        with torch.no_grad():
            return list(self.backbone.intermediates(x))


@register_family
class FullFineTune(SideNet):
    """Every backbone weight trains: the memory reference for side tuning."""

    config_class = FullConfig
    writes_back = True
    supports_grad_checkpointing = True

    def __init__(self, config: FullConfig, backbone: Backbone, num_classes: int) -> None:
        super().__init__(config, backbone, num_classes)
        backbone.unfreeze()
        self.head = nn.Linear(backbone.spec.num_features, num_classes)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's own checkpointing of the backbone's blocks (the fair reference for a checkpointed side network)."""
        name = self.backbone.spec.name
        if enable and not hasattr(self.backbone.model, "set_grad_checkpointing"):
            raise ConfigError(f"grad_checkpointing: backbone {name!r} offers no checkpointing")
        if enable and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.backbone.model.modules()):
            raise ConfigError(
                f"grad_checkpointing: backbone {name!r} has BatchNorm layers inside its blocks; recomputing a block "
                "would update their running statistics twice per step"
            )
        super().set_grad_checkpointing(enable)
        if hasattr(self.backbone.model, "set_grad_checkpointing"):
            self.backbone.model.set_grad_checkpointing(enable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.backbone.intermediates(x))
