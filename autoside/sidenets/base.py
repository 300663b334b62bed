"""What every side network is: a config dataclass and an ``nn.Module`` around a (usually frozen) backbone."""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from autoside.backbones import Backbone, BackboneSpec
from autoside.config import from_dict, to_dict
from autoside.errors import ConfigError

CONFIG_VERSION = 1


@dataclass(frozen=True)
class SideConfig:
    """Base of every family's config; ``family`` is the discriminator saved with it."""

    family: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "version": CONFIG_VERSION, **to_dict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, field: str = "sidenet") -> SideConfig:
        data = {k: v for k, v in data.items() if k not in ("family", "version")}
        return from_dict(cls, data, field=field)

    def replace(self, **changes: Any) -> SideConfig:
        return dataclasses.replace(self, **changes)

    def unresolved(self) -> SideConfig:
        """The config without what the family resolved when it was built (CST's pruned widths): what a search
        space's parameters replay to."""
        return self

    def check_backbone(self, spec: BackboneSpec) -> None:
        """Reject configs that cannot work on this backbone (rank > width, block index out of range, ...)."""

    def check_clips(self, frames: int) -> None:
        """Reject a video config that reads more frames of a clip than the data's clips hold (``dataset.frames``),
        so a search refuses it before it starts rather than failing the trials that draw it."""
        wanted = getattr(self, "frames", None)
        require(
            wanted is None or wanted <= frames,
            "frames",
            f"{wanted} is more than the {frames} frames of each clip (dataset.frames)",
        )

    def _unused(self, **values: Any) -> None:
        """Put knobs that do not shape this configuration (a conv kernel with no conv) at a fixed value (default:
        the field's default), so two settings that build and train the same network are one config: to the search's
        de-duplication, its Pareto set and an export. Called from ``__post_init__``."""
        for name, value in values.items():
            object.__setattr__(self, name, self.__dataclass_fields__[name].default if value is None else value)
        object.__setattr__(self, "_unused_knobs", self.unused_knobs() | frozenset(values))

    def _unused_elements(self, name: str, count: int, value: Any) -> None:
        """The first ``count`` elements of the list knob ``name`` shape nothing: fixed at ``value`` (the others do)."""
        object.__setattr__(self, name, (value,) * count + tuple(getattr(self, name))[count:])
        object.__setattr__(self, "_unused_knobs", self.unused_knobs() | {f"{name}/{i}" for i in range(count)})

    def unused_knobs(self) -> frozenset[str]:
        """The knobs :meth:`_unused` fixed (``name``, or ``name/i`` for an element of a list knob): what a summary of
        this configuration leaves out, since they shape nothing (not fields: equality, hashing and ``to_dict`` do
        not see them)."""
        return self.__dict__.get("_unused_knobs", frozenset())


def require(condition: bool, field: str, message: str) -> None:
    """Raise a ConfigError naming ``sidenet.<field>`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"sidenet.{field}: {message}")


class SideNet(nn.Module):
    """A side network and the backbone it sits beside; ``forward`` maps images to logits.

    Subclasses set ``writes_back`` when they change the backbone's forward pass (DTL, CST): those need gradients
    through later frozen blocks. ``modality`` says what ``forward`` reads: ``image`` batches ``(B, C, H, W)`` or
    ``video`` clips ``(B, T, C, H, W)``. A family whose frozen computation (all of it when it writes nothing back;
    DTL's blocks before its merge block) depends on the image alone declares it by splitting its forward into
    ``side(backbone.taps(x, feature_taps()))``: the features it reads, by name, and the rest, which runs on
    :meth:`side_modules` only. Such a family is :attr:`cacheable`: a search computes those features once
    (:mod:`autoside.cache`).
    """

    config_class: ClassVar[type[SideConfig]] = SideConfig
    writes_back: ClassVar[bool] = False
    modality: ClassVar[str] = "image"
    supports_grad_checkpointing: ClassVar[bool] = False

    def feature_taps(self) -> tuple[str, ...] | None:
        """The frozen features :meth:`side` reads (names of :meth:`Backbone.taps`); ``None``: not split."""
        return None

    def side(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits from the frozen features named by :meth:`feature_taps` (the only trainable computation)."""
        raise NotImplementedError(f"{type(self).__name__} does not split its forward into features and side")

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's output feature map, shallow to deep (calibrated where the family calibrates), for a dense
        head such as detection's feature pyramid. Families that have no stage maps (ViT side networks) leave it."""
        raise NotImplementedError(f"{type(self).__name__} has no stage feature maps")

    @classmethod
    def has_stage_features(cls) -> bool:
        return cls.stage_features is not SideNet.stage_features

    def side_modules(self) -> dict[str, nn.Module]:
        """The modules :meth:`side` runs: every child but the backbone (plus the frozen blocks it still needs)."""
        return {name: module for name, module in self.named_children() if name != "backbone"}

    def frozen_state_read(self) -> tuple[str, ...]:
        """Prefixes of the backbone's state (keys of ``backbone.model``) this side network reads besides stored
        features: a cached trial reads only these (:mod:`autoside.cache.backbone`). By default the backbone modules
        that :meth:`side` runs; a family that copies backbone tensors when it is built adds those."""
        names = {id(m): name for name, m in self.backbone.model.named_modules() if name}
        found: list[str] = []

        def walk(module: nn.Module) -> None:
            if id(module) in names:
                found.append(f"{names[id(module)]}.")
            else:
                for child in module.children():
                    walk(child)

        for module in self.side_modules().values():
            walk(module)
        return tuple(dict.fromkeys(found))

    def uncacheable_reason(self) -> str | None:
        """Why this side network cannot train on stored features (``None``: it can)."""
        family = self.config.family
        if not self.backbone.frozen:
            return f"{family!r} trains its backbone"
        if self.feature_taps() is None:
            return (
                f"{family!r} reads no features of the image alone (it writes back into the backbone from its first "
                "block, or runs it on clips)"
            )
        return None

    @property
    def cacheable(self) -> bool:
        return self.uncacheable_reason() is None

    def __init__(self, config: SideConfig, backbone: Backbone, num_classes: int) -> None:
        super().__init__()
        config.check_backbone(backbone.spec)
        self.config = config
        self.backbone = backbone
        self.num_classes = num_classes
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the blocks' activations in backward instead of keeping them (timm's switch of the same name):
        the same values and gradients for less training memory and more compute. Families that declare
        :attr:`supports_grad_checkpointing` read :attr:`grad_checkpointing` in their forward; a recipe's
        ``grad_checkpointing`` turns it on for every family of a search that offers it."""
        if enable and not self.supports_grad_checkpointing:
            raise ConfigError(f"grad_checkpointing: {self.config.family!r} has no blocks to recompute")
        self.grad_checkpointing = enable

    def side_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def side_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights to export: everything but the frozen backbone (all of it when the backbone trains)."""
        state = self.state_dict()
        if self.backbone.frozen:
            state = {k: v for k, v in state.items() if not k.startswith("backbone.")}
        return state

    def begin_epoch(self, epoch: int) -> None:
        """Called by the trainer before each epoch (0-indexed), for families whose loss follows a schedule."""

    def training_phase(self) -> Hashable:
        """What this epoch's training step does, for a family whose step changes with the epoch (``begin_epoch``);
        the memory meter measures the first steps of every phase it has not seen (one phase by default)."""
        return None

    def training_loss(self, task_loss: torch.Tensor) -> torch.Tensor:
        """The loss to minimise after a training forward; families add their own terms (CST: distillation)."""
        return task_loss

    def num_trainable(self, *, include_head: bool = True) -> int:
        head = {id(p) for p in self.head.parameters()} if hasattr(self, "head") and not include_head else set()
        return sum(p.numel() for p in self.side_parameters() if id(p) not in head)
