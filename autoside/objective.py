"""What a trial optimises, by task type: how the model is built around a side network, the loss of a batch, and
how a split is scored. :func:`objective_for` picks one from the recipe's dataset, so :mod:`autoside.train`, the
memory predictor and a search's trials run one code path for classification and detection.

The score a search maximises is ``accuracy`` in both: top-1 for classification, COCO mAP@[.5:.95] for detection
(which also reports mAP@0.5 as ``map_50``).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from autoside.sidenets import SideNet


class Objective(Protocol):
    kind: str  # "classification" or "detection"
    metric: str  # what "accuracy" holds: "top1" or "map"

    def build(self, sidenet: SideNet, num_classes: int) -> nn.Module:
        """The trained model around ``sidenet`` (itself for classification)."""

    def targets_to(self, targets: Any, device: torch.device) -> Any:
        """A batch's targets on the training device."""

    def loss(self, model: nn.Module, x: torch.Tensor, targets: Any) -> torch.Tensor:
        """The task loss of a preprocessed batch (before the family's own terms, ``model.training_loss``)."""

    def evaluate(
        self, model: nn.Module, split: Any, preprocess: nn.Module, *, batch_size: int, device: torch.device, amp: bool
    ) -> dict[str, float]:
        """Scores of ``split`` with the model in eval mode: ``accuracy`` and any others."""


class Classification:
    """Cross-entropy (with label smoothing) and top-1 accuracy."""

    kind = "classification"
    metric = "top1"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def build(self, sidenet: SideNet, num_classes: int) -> nn.Module:
        return sidenet

    def targets_to(self, targets: torch.Tensor, device: torch.device) -> torch.Tensor:
        return targets.to(device)

    def loss(self, model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x).float(), targets, label_smoothing=self.label_smoothing)

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, split: Any, preprocess: nn.Module, *, batch_size: int, device: torch.device, amp: bool
    ) -> dict[str, float]:
        was_training = model.training
        model.eval()
        correct = 0
        for images, labels in split.batches(batch_size):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(preprocess(images))
            correct += (logits.argmax(-1).cpu() == labels).sum().item()
        model.train(was_training)
        return {"accuracy": correct / max(1, len(split))}


def is_detection(dataset_name: str) -> bool:
    """Whether a dataset (by recipe name) holds boxes rather than labels."""
    from autoside.data import list_datasets

    info = list_datasets().get(dataset_name.split("/", 1)[0])
    return bool(info and info.detection)


def objective_for(recipe: Any) -> Objective:
    """The objective of a recipe's dataset: detection for box datasets (with the recipe's ``detector``)."""
    if is_detection(recipe.dataset.name):
        from autoside.detection.objective import Detection

        return Detection(recipe.detector)
    return Classification(recipe.label_smoothing)
