import pytest
import torch

from autoside.detection.metrics import box_map

TRUTH = [{"boxes": torch.tensor([[10.0, 10, 50, 50], [60, 60, 100, 100]]), "labels": torch.tensor([0, 1])}]


def _predict(boxes: list[list[float]]) -> list[dict[str, torch.Tensor]]:
    return [{"boxes": torch.tensor(boxes), "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 1])}]


def test_perfect_boxes_score_one() -> None:
    assert box_map(_predict([[10, 10, 50, 50], [60, 60, 100, 100]]), TRUTH) == {"map": 1.0, "map_50": 1.0}


def test_one_shifted_box_scores_what_the_iou_thresholds_give() -> None:
    # The second box moves 5 px right: IoU = (35 * 40) / (2 * 1600 - 1400) = 0.778, a match at the six COCO
    # thresholds 0.50..0.75 of ten, so class 1 has AP 0.6 and class 0 AP 1.0: mAP = 0.8, mAP@0.5 = 1.0.
    result = box_map(_predict([[10, 10, 50, 50], [65, 60, 105, 100]]), TRUTH)
    assert result["map"] == pytest.approx(0.8, abs=1e-6)
    assert result["map_50"] == pytest.approx(1.0)


def test_wrong_label_scores_zero_for_that_class() -> None:
    preds = _predict([[10, 10, 50, 50], [60, 60, 100, 100]])
    preds[0]["labels"] = torch.tensor([0, 0])
    assert box_map(preds, TRUTH)["map"] == pytest.approx(0.5)


def test_lengths_must_agree() -> None:
    with pytest.raises(ValueError, match="1 images"):
        box_map([], TRUTH)


def test_detections_on_a_crowd_region_are_ignored() -> None:
    # A confident detection of class 0 lands where no object is: a false positive ranked above the true one, so
    # class 0's precision at full recall is 1/2 (AP 0.5 at every threshold, mAP (0.5 + 1) / 2 = 0.75). Flagged as a
    # crowd region there, COCO ignores it and every class scores 1.0.
    preds = [
        {
            "boxes": torch.tensor([[10.0, 10, 50, 50], [60, 60, 100, 100], [120, 10, 150, 40]]),
            "scores": torch.tensor([0.5, 0.8, 0.9]),
            "labels": torch.tensor([0, 1, 0]),
        }
    ]
    assert box_map(preds, TRUTH)["map"] == pytest.approx(0.75, abs=1e-3)
    crowd = [
        {
            "boxes": torch.cat([TRUTH[0]["boxes"], torch.tensor([[110.0, 0, 160, 50]])]),
            "labels": torch.tensor([0, 1, 0]),
            "iscrowd": torch.tensor([0, 0, 1]),
        }
    ]
    assert box_map(preds, crowd) == {"map": 1.0, "map_50": 1.0}
