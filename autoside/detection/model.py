"""A detector around a side network: torchvision's Faster R-CNN (Ren et al. 2015) with a feature pyramid (Lin et al.
2017) over the side network's stage features.

The side network supplies one feature map per stage (:meth:`~autoside.sidenets.base.SideNet.stage_features`): for CST
the frozen stages' outputs calibrated by its side network (with ``writes_back`` off they reach only the pyramid, so no
gradient crosses a frozen stage), for ``linear`` the frozen backbone's own maps (the no-side baseline: only the pyramid
and the heads train), for ``full`` the maps of a backbone that trains too. The pyramid reads the deepest map of each
stride from ``min_stride`` on, adds a max-pooled level, and feeds torchvision's RPN and RoI heads; the classifier of
the side network is dropped (the detector's heads replace it).

Inputs are what the classification families read: images already through the backbone's :class:`Preprocess`. So
torchvision's own transform is made a no-op on them (unit mean and std, its resize pinned to the image size).
Labels are ``0..K-1`` outside (the data contract) and shifted by one inside, where torchvision keeps 0 for background.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import torch
from torch import nn

from autoside.backbones import Backbone
from autoside.detection.config import DetectorConfig
from autoside.errors import ConfigError
from autoside.sidenets import SideConfig, SideNet


class _PyramidFeatures(nn.Module):
    """torchvision's backbone interface (images -> named pyramid levels, ``out_channels``) over a side network that
    the :class:`Detector` owns (referenced, not registered, so its weights appear once in the state dict)."""

    def __init__(self, sidenet: SideNet, levels: tuple[int, ...], widths: list[int], channels: int) -> None:
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

        super().__init__()
        object.__setattr__(self, "sidenet", sidenet)
        self.levels = levels
        self.fpn = FeaturePyramidNetwork(widths, channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        stages = self.sidenet.stage_features(x)
        return self.fpn(OrderedDict((str(k), stages[i]) for k, i in enumerate(self.levels)))


def pyramid_levels(shapes: list[tuple[int, int, int]], image_size: int, min_stride: int) -> tuple[int, ...]:
    """Indices of the stage maps the pyramid reads: the deepest map of each stride, from ``min_stride`` on."""
    deepest: dict[int, int] = {}
    for i, (_, h, _) in enumerate(shapes):
        deepest[h] = i
    return tuple(i for h, i in sorted(deepest.items(), reverse=True) if image_size / h >= min_stride)


class Detector(nn.Module):
    """Faster R-CNN + FPN over a side network's stage features (see the module docstring).

    ``forward(x, targets)`` in training mode returns torchvision's loss dict; in eval mode, per image, a dict of
    ``boxes`` (xyxy pixels), ``scores`` and ``labels`` (``0..K-1``).
    """

    task = "detection"
    modality = "image"
    cacheable = False

    def __init__(self, sidenet: SideNet, num_classes: int, config: DetectorConfig | None = None) -> None:
        from torchvision.models.detection import FasterRCNN
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
        from torchvision.ops import MultiScaleRoIAlign

        super().__init__()
        config = config or DetectorConfig()
        check_detectable(sidenet)
        if hasattr(sidenet, "head"):
            del sidenet.head  # the detector's heads replace the classifier
        self.sidenet = sidenet
        self.detector_config = config
        self.num_classes = num_classes
        spec = sidenet.backbone.spec
        size = spec.image_size
        shapes = self._stage_shapes(size)
        levels = pyramid_levels(shapes, size, config.min_stride)
        if not levels:
            raise ConfigError(
                f"detector.min_stride: {spec.name!r} at {size} px has no stage map of stride >= {config.min_stride}"
            )
        features = _PyramidFeatures(sidenet, levels, [shapes[i][0] for i in levels], config.fpn_channels)
        n = len(levels) + 1  # the max-pooled extra level
        anchors = AnchorGenerator(tuple((config.anchor_size * 2**k,) for k in range(n)), ((0.5, 1.0, 2.0),) * n)
        names = [str(k) for k in range(len(levels))]
        self.rcnn = FasterRCNN(
            features,
            num_classes=None,
            min_size=size,
            max_size=size,
            image_mean=[0.0] * 3,
            image_std=[1.0] * 3,
            rpn_anchor_generator=anchors,
            box_roi_pool=MultiScaleRoIAlign(featmap_names=names, output_size=7, sampling_ratio=2),
            box_head=TwoMLPHead(config.fpn_channels * 49, config.representation_size),
            box_predictor=FastRCNNPredictor(config.representation_size, num_classes + 1),
            rpn_pre_nms_top_n_train=2 * config.proposals,
            rpn_pre_nms_top_n_test=2 * config.proposals,
            rpn_post_nms_top_n_train=config.proposals,
            rpn_post_nms_top_n_test=config.proposals,
            box_batch_size_per_image=config.roi_batch,
            box_score_thresh=config.score_threshold,
            box_detections_per_img=config.detections_per_image,
        )

    @torch.no_grad()
    def _stage_shapes(self, size: int) -> list[tuple[int, int, int]]:
        was = self.sidenet.training
        self.sidenet.eval()
        noise = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        shapes = [tuple(f.shape[1:]) for f in self.sidenet.stage_features(noise)]
        self.sidenet.train(was)
        return shapes

    @property
    def config(self) -> SideConfig:
        return self.sidenet.config

    @property
    def backbone(self) -> Backbone:
        return self.sidenet.backbone

    @property
    def writes_back(self) -> bool:
        return self.sidenet.writes_back

    @property
    def supports_grad_checkpointing(self) -> bool:
        return self.sidenet.supports_grad_checkpointing

    @property
    def grad_checkpointing(self) -> bool:
        return self.sidenet.grad_checkpointing

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """The side network's own (the detection heads keep their activations)."""
        self.sidenet.set_grad_checkpointing(enable)

    @property
    def levels(self) -> tuple[int, ...]:
        return self.rcnn.backbone.levels

    def forward(self, x: torch.Tensor, targets: list[dict[str, torch.Tensor]] | None = None) -> Any:
        inside = None
        if targets is not None:
            inside = [{"boxes": t["boxes"].float(), "labels": t["labels"] + 1} for t in targets]
        out = self.rcnn(list(x), inside)
        if self.training:
            return out
        return [{"boxes": d["boxes"], "scores": d["scores"], "labels": d["labels"] - 1} for d in out]

    def begin_epoch(self, epoch: int) -> None:
        self.sidenet.begin_epoch(epoch)

    def training_phase(self) -> Hashable:
        return self.sidenet.training_phase()

    def training_loss(self, task_loss: torch.Tensor) -> torch.Tensor:
        return self.sidenet.training_loss(task_loss)

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: decay on matrices only; the side network's at ``side_lr_scale`` times the recipe's lr."""
        side = {id(p) for p in self.sidenet.parameters()}
        groups = []
        for in_side, scale in ((True, self.detector_config.side_lr_scale), (False, 1.0)):
            params = [p for p in self.parameters() if p.requires_grad and (id(p) in side) == in_side]
            for matrices in (True, False):
                chosen = [p for p in params if (p.ndim >= 2) == matrices]
                if chosen:
                    decay = weight_decay if matrices else 0.0
                    groups.append({"params": chosen, "weight_decay": decay, "lr_scale": scale})
        return groups

    def side_state_dict(self) -> dict[str, torch.Tensor]:
        """The side network's exported weights, then the pyramid's and the heads' (never the frozen backbone's)."""
        state = {f"sidenet.{k}": v for k, v in self.sidenet.side_state_dict().items()}
        state.update({k: v for k, v in self.state_dict().items() if not k.startswith("sidenet.")})
        return state

    def num_trainable(self, *, include_head: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def check_detectable(sidenet: SideNet) -> None:
    """A detector needs stage maps of a staged CNN, and no classifier-based loss (CST's logit distillation)."""
    spec = sidenet.backbone.spec
    family = sidenet.config.family
    if spec.layout != "cnn":
        raise ConfigError(f"backbone.name: detection needs a staged CNN backbone; {spec.name!r} is a {spec.layout}")
    if not sidenet.has_stage_features():
        raise ConfigError(
            f"sidenet.family: {family!r} gives no stage feature maps for a detector (use cst, linear or full)"
        )
    if getattr(sidenet.config, "lambda_kd", 0.0) > 0:
        raise ConfigError("sidenet.lambda_kd: logit distillation needs a classifier; a detector has none (use 0)")
