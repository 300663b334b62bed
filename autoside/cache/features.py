"""Train a cacheable side network on stored backbone features instead of images.

:func:`use_cache` decides (and says why not, when not): the cache applies where it is exact, i.e. a family that
writes nothing back (``SideNet.cacheable``) and a recipe without random augmentation (augmented inputs differ every
epoch). It then makes sure every (split, tap) the family reads is stored, computing the missing ones in one backbone
pass per split under the store's lock (:mod:`autoside.cache.entries`), and returns what
:func:`autoside.train.train_model` trains instead:

* :class:`SideOnly`, the side network without its backbone: its parameters are the side's alone, so the backbone is
  neither moved to the device nor counted in the measured training memory (it takes no part in training);
* a :class:`~autoside.data.Task` whose splits yield feature dicts (:class:`FeatureSplit`);
* :class:`FeatureInputs`, the preprocessing of those dicts (to the device, in float32).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import Any

import numpy as np
import torch
from torch import nn

from autoside.cache.entries import CacheInfo, FeatureSplit, ensure_features
from autoside.cache.store import CacheUnavailable
from autoside.data import Preprocess, Task
from autoside.recipe import Recipe
from autoside.sidenets import SideNet
from autoside.units import parse_bytes

log = logging.getLogger("autoside.cache")


class FeatureInputs(nn.Module):
    """The 'preprocessing' of stored features: to the training device, in float32."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device

    def forward(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, torch.float32) for k, v in feats.items()}


class SideOnly(nn.Module):
    """A side network without its backbone: ``forward(features) = net.side(features)``. The modules are the net's
    own (training them trains ``net``, which is what gets exported)."""

    def __init__(self, net: SideNet) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(net.side_modules())
        self.own = nn.ParameterDict(dict(net.named_parameters(recurse=False)))
        object.__setattr__(self, "net", net)  # not a submodule: its backbone is not trained, moved or measured

    @property
    def config(self):  # noqa: ANN201
        return self.net.config

    @property
    def backbone(self):  # noqa: ANN201
        return self.net.backbone

    @property
    def modality(self) -> str:
        return self.net.modality

    def num_trainable(self, **kwargs: Any) -> int:
        return self.net.num_trainable(**kwargs)

    def train(self, mode: bool = True) -> SideOnly:
        self.training = mode
        self.net.train(mode)  # the net's own rules: a frozen backbone's blocks stay in eval mode
        return self

    def begin_epoch(self, epoch: int) -> None:
        self.net.begin_epoch(epoch)

    def training_phase(self) -> Hashable:
        return self.net.training_phase()

    def training_loss(self, task_loss: torch.Tensor) -> torch.Tensor:
        return self.net.training_loss(task_loss)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net.side(feats)


DETECTOR_READS_IMAGES = "a detector trains on images (its feature pyramid reads every stage map at full resolution)"


def bypass_reason(net: SideNet, recipe: Recipe) -> str | None:
    """Why a trial of ``net`` under ``recipe`` cannot train on stored features (None: it will)."""
    if not recipe.feature_cache:
        return "turned off (--no-cache / feature_cache: false)"
    if getattr(net, "task", "classification") == "detection":
        return DETECTOR_READS_IMAGES
    reason = net.uncacheable_reason()
    if reason is not None:
        return reason
    if recipe.augment:
        return "random training augmentation: inputs differ every epoch"
    return None


@torch.no_grad()
def probe_features(net: SideNet, task: Task, recipe: Recipe, *, examples: int = 8) -> tuple[SideOnly, Task, nn.Module]:
    """What :func:`use_cache` would train on, for the first ``examples`` training examples, computed now and stored
    nowhere: a memory prediction on it sees a cached trial's tensors (in the cache's dtype) without building the
    cache (the GPU packer predicts on the driver before any trial runs). Only for nets :func:`bypass_reason` passes."""
    split = task.train
    index = torch.arange(min(examples, len(split)))
    images, labels = next(iter(split.batches(len(index), index)))
    preprocess = Preprocess.from_data_config(net.backbone.spec.data_config)
    feats = net.backbone.taps(preprocess(images), net.feature_taps() or ())
    dtype = getattr(torch, recipe.cache_dtype)
    probe = FeatureSplit({k: v.to(dtype) for k, v in feats.items()}, labels)
    return SideOnly(net), Task(task.name, task.classes, probe, probe, probe), FeatureInputs(torch.device("cpu"))


def use_cache(
    net: SideNet, task: Task, recipe: Recipe, *, device: torch.device
) -> tuple[nn.Module, Task, nn.Module | None, CacheInfo]:
    """``(model, task, preprocess, info)`` to train; without the cache the first three are ``net, task, None``."""

    def bypass(reason: str, level: int = logging.INFO) -> tuple[nn.Module, Task, None, CacheInfo]:
        log.log(level, "feature cache bypassed for %s: %s", net.config.family, reason)
        return net, task, None, CacheInfo("bypassed", reason)

    reason = bypass_reason(net, recipe)
    if reason is not None:
        return bypass(reason)
    try:
        splits, info = ensure_features(net.backbone, task, recipe, net.feature_taps() or (), device=device)
    except CacheUnavailable as exc:  # the user asked for a cache: say why this trial computes its features
        return bypass(f"{exc}; this trial computes its features itself", logging.WARNING)
    limit = parse_bytes(recipe.dataset.max_in_memory, field="dataset.max_in_memory")
    if limit is None or info.bytes <= limit:  # the fast path: read the files once, index tensors in RAM
        for name, split in splits.items():
            in_ram = {k: torch.from_numpy(np.array(a)) for k, a in split.feats.items()}
            splits[name] = FeatureSplit(in_ram, split.labels)
    log.info(
        "feature cache %s for %s: %d stored, %d built in %.1f s",
        info.status,
        net.config.family,
        info.hits,
        info.built,
        info.build_seconds,
    )
    features = Task(task.name, task.classes, splits["train"], splits["val"], splits["test"])
    return SideOnly(net), features, FeatureInputs(device), info
