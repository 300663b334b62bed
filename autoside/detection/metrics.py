"""Box mAP, computed by torchmetrics with the pycocotools backend so figures match the COCO evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import torch

Prediction = dict[str, torch.Tensor]  # {"boxes": (n, 4) xyxy, "scores": (n,), "labels": (n,)}
_TARGET_KEYS = ("boxes", "labels", "iscrowd")


def box_map(predictions: Sequence[Prediction], targets: Sequence[dict[str, torch.Tensor]]) -> dict[str, float]:
    """COCO mAP@[.5:.95] (``map``) and mAP@0.5 (``map_50``) of per-image predictions against per-image targets.

    A target may flag boxes with ``iscrowd`` (see :meth:`autoside.data.detection.DetectionSplit.eval_targets`):
    detections on those regions are ignored and missing them costs nothing, as in COCO's evaluation.
    Images without any ground-truth box still count (their detections are false positives); a dataset with no box
    at all scores 0.0 rather than COCO's -1.
    """
    from torchmetrics.detection import MeanAveragePrecision

    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} images")
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
    metric.update(
        [
            {k: p[k].detach().float().cpu() if k != "labels" else p[k].cpu() for k in ("boxes", "scores", "labels")}
            for p in predictions
        ],
        [{k: t[k].float().cpu() if k == "boxes" else t[k].cpu() for k in _TARGET_KEYS if k in t} for t in targets],
    )
    result = metric.compute()
    return {key: max(0.0, float(result[key])) for key in ("map", "map_50")}
