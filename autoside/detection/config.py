"""The detector a detection recipe builds around its side network (``detector:`` in a trial recipe)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autoside.errors import ConfigError


@dataclass(frozen=True)
class DetectorConfig:
    """Faster R-CNN with a feature pyramid over the side network's stage features (torchvision's implementation).

    Attributes:
        fpn_channels: width of every pyramid level (and of the RPN and RoI heads' input).
        min_stride: the shallowest stage map the pyramid reads, by its stride (4: ResNet's first stage; the stride-2
            stem maps cost most and see least).
        anchor_size: anchor side in pixels on the finest level, doubled on each coarser one (aspect ratios 0.5, 1, 2);
            pick it near the smallest objects of the dataset.
        representation_size: width of the two-layer box head on 7 x 7 RoI-aligned features.
        proposals: region proposals kept per image after non-maximum suppression (twice as many before it);
            torchvision's COCO defaults (2000/1000) are sized for 800 px images with dozens of objects.
        roi_batch: proposals sampled per image to train the box head (a quarter positive at most).
        side_lr_scale: the side network's learning rate (calibration gates included) as a multiple of the recipe's
            ``lr``; the pyramid and the heads train at ``lr``. The gates start almost closed and the copied convs
            near the frozen ones, so at 1x they move little in a short schedule: on pasted_objects, 5x let CST beat
            the no-side detector where 1x did not (``benchmarks/README.md``).
        score_threshold: detections below this score are dropped at evaluation and prediction.
        detections_per_image: at most this many boxes per image after non-maximum suppression.
    """

    fpn_channels: int = 64
    min_stride: int = 4
    anchor_size: int = 16
    representation_size: int = 256
    proposals: int = 200
    roi_batch: int = 64
    side_lr_scale: float = 1.0
    score_threshold: float = 0.05
    detections_per_image: int = 100

    def __post_init__(self) -> None:
        for name in (
            "fpn_channels",
            "min_stride",
            "anchor_size",
            "representation_size",
            "proposals",
            "roi_batch",
            "detections_per_image",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"detector.{name}: must be at least 1, got {getattr(self, name)}")
        if self.side_lr_scale <= 0:
            raise ConfigError(f"detector.side_lr_scale: must be positive, got {self.side_lr_scale}")
        if not 0.0 <= self.score_threshold < 1.0:
            raise ConfigError(f"detector.score_threshold: must be in [0, 1), got {self.score_threshold}")

    def to_dict(self) -> dict[str, Any]:
        from autoside.config import to_dict

        return to_dict(self)
