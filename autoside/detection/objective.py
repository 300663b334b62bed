"""The detection objective (:mod:`autoside.objective`): a Faster R-CNN around the side network, torchvision's summed
RPN and box losses, and COCO box mAP (:func:`autoside.detection.metrics.box_map`) as the score."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from autoside.detection.config import DetectorConfig
from autoside.detection.metrics import box_map
from autoside.sidenets import SideNet


class Detection:
    kind = "detection"
    metric = "map"

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config

    def build(self, sidenet: SideNet, num_classes: int) -> nn.Module:
        from autoside.detection.model import Detector

        return Detector(sidenet, num_classes, self.config)

    def targets_to(self, targets: list[dict[str, torch.Tensor]], device: torch.device) -> list[dict[str, torch.Tensor]]:
        return [{k: v.to(device) for k, v in t.items()} for t in targets]

    def loss(self, model: nn.Module, x: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        losses = model(x, targets)
        return sum(v.float() for v in losses.values())

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, split: Any, preprocess: nn.Module, *, batch_size: int, device: torch.device, amp: bool
    ) -> dict[str, float]:
        """mAP@[.5:.95] as ``accuracy`` (and ``map``), mAP@0.5 as ``map_50``; crowd regions as COCO treats them."""
        was_training = model.training
        model.eval()
        predictions = []
        for images, _ in split.batches(batch_size):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                predictions += model(preprocess(images))
        model.train(was_training)
        scores = box_map(predictions, split.eval_targets(torch.arange(len(split))))
        return {"accuracy": scores["map"], **scores}
