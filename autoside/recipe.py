"""Trial recipes: the dataset, backbone, schedule and memory budget a trial (or a whole search) runs with.

A recipe is a YAML file in ``trials/``; every key is validated up front so a bad file fails before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from autoside.config import from_dict, load_yaml, set_dotted, to_dict
from autoside.data import DatasetConfig
from autoside.detection.config import DetectorConfig
from autoside.errors import ConfigError
from autoside.memory.meter import TRACKING_MODES
from autoside.units import parse_bytes


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "tf_efficientnet_lite0"
    weights: Literal["pretrained", "random"] = "pretrained"
    checkpoint: str | None = None
    download: bool = False


@dataclass(frozen=True)
class SideNetChoice:
    """The side network ``autoside train`` builds: a family or preset name plus config overrides."""

    name: str = "linear"
    options: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Recipe:
    name: str = "recipe"
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    sidenet: SideNetChoice = field(default_factory=SideNetChoice)
    detector: DetectorConfig = field(default_factory=DetectorConfig)  # read only for a detection dataset
    image_size: int | None = None
    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.0
    seed: int = 0
    memory_budget: str | int | None = None
    device: str = "auto"
    amp: bool = True
    grad_checkpointing: bool = False
    threads: int | None = None
    memory_tracking: str = "auto"
    augment: bool = False
    feature_cache: bool = True
    cache_dir: str | None = None
    cache_dtype: Literal["float16", "float32"] = "float16"

    def __post_init__(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size}
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key}: must be at least 1, got {value}")
        if self.lr <= 0:
            raise ConfigError(f"lr: must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay: must be >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ConfigError(f"warmup_epochs: must be between 0 and epochs ({self.epochs}), got {self.warmup_epochs}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if self.image_size is not None and self.image_size < 8:
            raise ConfigError(f"image_size: must be at least 8 pixels, got {self.image_size}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"device: {self.device!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N'")
        parse_bytes(self.memory_budget)
        if self.memory_tracking not in TRACKING_MODES:
            raise ConfigError(f"memory_tracking: {self.memory_tracking!r} is not one of {', '.join(TRACKING_MODES)}")

    @property
    def budget_bytes(self) -> int | None:
        return parse_bytes(self.memory_budget)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def recipe_from_dict(data: dict[str, Any], *, source: str = "recipe") -> Recipe:
    try:
        return from_dict(Recipe, data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a recipe YAML and apply ``key=value`` overrides (``--set``) before validating."""
    data = load_yaml(path, what="trial recipe")
    data.setdefault("name", Path(path).stem)
    for assignment in overrides:
        set_dotted(data, assignment)
    try:
        return recipe_from_dict(data, source=str(path))
    except ConfigError as exc:
        # A mistake in an override is the command line's, not the file's: name the --set it came from.
        message, prefix = str(exc), f"{path}: "
        rest = message[len(prefix) :] if message.startswith(prefix) else ""
        for key in (a.split("=", 1)[0].strip() for a in overrides):
            if rest.startswith(f"{key}:"):
                raise ConfigError(f"--set {key}:{rest[len(key) + 1 :]}") from None
        raise
