"""The detector around a side network: losses and detections, what trains (never the backbone), the gradient path
with CST's calibration kept off the frozen stages, the pyramid's levels, and refused combinations."""

from __future__ import annotations

import pytest
import torch

from autoside.detection.config import DetectorConfig
from autoside.detection.model import Detector, pyramid_levels
from autoside.errors import ConfigError
from autoside.layers.staged import staged_cnn
from autoside.sidenets import create_sidenet
from autoside.testing import blocks_recording_graph, timm_backbone, tiny_backbone

SIZE = 64


def _backbone():
    torch.manual_seed(0)
    return timm_backbone("resnet18", {"layers": [1, 1, 1, 1], "channels": [8, 16, 24, 32]}, SIZE, name="tiny_resnet")


def _batch(n: int = 2) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, SIZE, SIZE, generator=g)
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 28.0], [34.0, 30.0, 60.0, 62.0]]), "labels": torch.tensor([0, 2])}
        for _ in range(n)
    ]
    return x, targets


def _detector(family: str = "cst", **options) -> Detector:
    torch.manual_seed(0)
    return Detector(create_sidenet(family, _backbone(), 3, **options), 3, DetectorConfig(fpn_channels=16))


@pytest.mark.parametrize(
    ("family", "options"),
    [("cst", {"writes_back": False}), ("cst", {"writes_back": True, "first_stage": 2}), ("linear", {})],
)
def test_losses_backward_and_frozen_backbone(family: str, options: dict) -> None:
    model = _detector(family, **options)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model.train()
    x, targets = _batch()
    losses = model(x, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.backbone.parameters()), "a backbone parameter got a gradient"
    assert all(not p.requires_grad for p in model.backbone.parameters())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "rpn" in n)
    side = [n for n in trainable if n.startswith("sidenet.")]
    assert bool(side) == (family == "cst")  # linear: only the pyramid and the heads train (no side network)
    assert not any(n.startswith("sidenet.backbone.") for n in model.side_state_dict())
    assert not model.backbone.model.training  # BatchNorm statistics of the frozen backbone do not move
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_writes_back_off_keeps_frozen_stages_off_the_gradient_path() -> None:
    def recorded(model) -> list[bool]:  # noqa: ANN001 - a Detector
        x, targets = _batch()
        return blocks_recording_graph(model, x, staged_cnn(model.backbone.model)[1], targets)

    assert recorded(_detector("cst", writes_back=False)) == [False, False, False, False]
    # Written back from stage 1: the stages after the first calibrated one are on the gradient path.
    assert recorded(_detector("cst", writes_back=True, first_stage=1)) == [False, False, True, True]


def test_detections_in_eval_mode_use_the_dataset_labels() -> None:
    model = _detector("cst", writes_back=False).eval()
    model.rcnn.roi_heads.score_thresh = 0.0
    with torch.no_grad():
        out = model(_batch(3)[0])
    assert len(out) == 3
    for d in out:
        assert d["boxes"].shape[1] == 4 and len(d["boxes"]) == len(d["scores"]) == len(d["labels"])
        assert ((d["labels"] >= 0) & (d["labels"] < 3)).all()
        assert (d["boxes"] >= 0).all() and (d["boxes"] <= SIZE).all()


def test_pyramid_reads_the_deepest_map_of_each_stride() -> None:
    shapes = [(16, 32, 32), (24, 16, 16), (24, 16, 16), (40, 8, 8), (80, 4, 4), (112, 4, 4)]
    assert pyramid_levels(shapes, 128, 4) == (0, 2, 3, 5)
    assert pyramid_levels(shapes, 128, 16) == (3, 5)
    assert pyramid_levels([(64, 64, 64), *shapes], 128, 4) == (1, 3, 4, 6)  # the stride-2 stem map is skipped
    assert _detector("linear").levels == (1, 2, 3, 4)  # linear reads the stem too; CST starts at stage 1
    assert _detector("cst").levels == (0, 1, 2, 3)


def test_refused_combinations() -> None:
    with pytest.raises(ConfigError, match=r"^backbone\.name: detection needs a staged CNN backbone"):
        Detector(create_sidenet("linear", tiny_backbone("vit"), 3), 3)
    with pytest.raises(ConfigError, match=r"^sidenet\.lambda_kd: logit distillation needs a classifier"):
        Detector(create_sidenet("cst", _backbone(), 3, lambda_kd=1.0), 3)
    with pytest.raises(ConfigError, match=r"^detector\.min_stride: .* no stage map of stride >= 64"):
        Detector(create_sidenet("cst", _backbone(), 3), 3, DetectorConfig(min_stride=64))
    with pytest.raises(ConfigError, match=r"^detector\.fpn_channels: must be at least 1"):
        DetectorConfig(fpn_channels=0)
    with pytest.raises(ConfigError, match=r"^detector\.score_threshold: must be in \[0, 1\)"):
        DetectorConfig(score_threshold=1.5)
    with pytest.raises(ConfigError, match=r"^detector\.side_lr_scale: must be positive"):
        DetectorConfig(side_lr_scale=0)


def test_family_without_stage_maps_is_refused() -> None:
    from autoside.sidenets.base import SideNet

    class NoMaps(SideNet):
        pass

    net = create_sidenet("linear", _backbone(), 3)
    net.__class__ = NoMaps
    with pytest.raises(ConfigError, match=r"^sidenet\.family: 'linear' gives no stage feature maps"):
        Detector(net, 3)


def test_side_network_trains_at_its_own_learning_rate_scale() -> None:
    torch.manual_seed(0)
    model = Detector(create_sidenet("cst", _backbone(), 3), 3, DetectorConfig(fpn_channels=16, side_lr_scale=0.1))
    groups = model.param_groups(0.05)
    side = {id(p) for p in model.sidenet.parameters()}
    for group in groups:
        in_side = {id(p) in side for p in group["params"]}
        assert len(in_side) == 1
        assert group["lr_scale"] == (0.1 if in_side.pop() else 1.0)
        assert group["weight_decay"] == (0.05 if all(p.ndim >= 2 for p in group["params"]) else 0.0)
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)
