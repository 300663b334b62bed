"""Object-detection data: images with boxes, cut into seeded train/val/test splits like the classification tasks.

A box is ``(x0, y0, x1, y1)`` in pixels of the stored image (``xyxy``, the format torchvision's detectors and
torchmetrics read); a label is a class index ``0..K-1`` into :attr:`DetectionTask.classes` (detectors that reserve
0 for the background shift it themselves). Every image of a dataset is stored at one size, so a split's images are
one uint8 tensor ``(N, C, H, W)``, as for classification, and its boxes one list of ``(n_i, 4)`` tensors.

Crowd regions (COCO's ``iscrowd``: one box around a group of objects) are kept apart from the targets: a detector
never trains on them, and :meth:`DetectionSplit.eval_targets` hands them to the mAP with an ``iscrowd`` flag so that
detections landing on them are ignored rather than counted as false positives, as COCO's evaluation does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

Target = dict[str, torch.Tensor]  # {"boxes": float32 (n, 4) xyxy pixels, "labels": int64 (n,)}


@dataclass(frozen=True)
class DetectionSplit:
    """Images, their boxes and labels, and an id per image (the annotation file's, for error messages)."""

    images: torch.Tensor  # uint8 (N, C, H, W)
    boxes: tuple[torch.Tensor, ...]  # float32 (n_i, 4) each, xyxy pixels
    labels: tuple[torch.Tensor, ...]  # int64 (n_i,) each, 0..K-1
    image_ids: tuple[str, ...]
    crowd_boxes: tuple[torch.Tensor, ...] = ()  # float32 (m_i, 4) each, or () when no image has crowd regions
    crowd_labels: tuple[torch.Tensor, ...] = ()  # int64 (m_i,) each

    def __len__(self) -> int:
        return len(self.images)

    def targets(self, index: torch.Tensor) -> list[Target]:
        return [{"boxes": self.boxes[i], "labels": self.labels[i]} for i in index.tolist()]

    def eval_targets(self, index: torch.Tensor) -> list[Target]:
        """Targets for :func:`autoside.detection.metrics.box_map`: the boxes, then the crowd regions, with
        ``iscrowd`` 0/1 telling them apart."""
        targets = self.targets(index)
        for target, i in zip(targets, index.tolist(), strict=True):
            flags = torch.zeros(len(target["labels"]), dtype=torch.int64)
            if self.crowd_boxes:
                crowd = self.crowd_boxes[i]
                flags = torch.cat([flags, torch.ones(len(crowd), dtype=torch.int64)])
                target["boxes"] = torch.cat([target["boxes"], crowd])
                target["labels"] = torch.cat([target["labels"], self.crowd_labels[i]])
            target["iscrowd"] = flags
        return targets

    def batches(
        self, batch_size: int, order: torch.Tensor | None = None
    ) -> Iterator[tuple[torch.Tensor, list[Target]]]:
        """``(images, targets)`` batches in ``order`` (default: as stored); the last one may be smaller."""
        order = torch.arange(len(self)) if order is None else order
        for idx in order.split(batch_size):
            yield self.images[idx], self.targets(idx)

    def subset(self, index: torch.Tensor) -> DetectionSplit:
        ids = index.tolist()
        return DetectionSplit(
            self.images[index],
            tuple(self.boxes[i] for i in ids),
            tuple(self.labels[i] for i in ids),
            tuple(self.image_ids[i] for i in ids),
            tuple(self.crowd_boxes[i] for i in ids) if self.crowd_boxes else (),
            tuple(self.crowd_labels[i] for i in ids) if self.crowd_boxes else (),
        )


@dataclass(frozen=True)
class DetectionTask:
    """A detection dataset cut into train/val/test; the trial's score is box mAP instead of top-1."""

    name: str
    classes: tuple[str, ...]
    train: DetectionSplit
    val: DetectionSplit
    test: DetectionSplit
    kind = "detection"
    modality = "image"

    @property
    def num_classes(self) -> int:
        return len(self.classes)
