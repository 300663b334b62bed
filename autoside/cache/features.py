"""Train a cacheable side network on stored backbone features instead of images.

:func:`use_cache` decides (and says why not, when not): the cache applies where it is exact, i.e. a family that
writes nothing back (``SideNet.cacheable``) and a recipe without random augmentation (augmented inputs differ every
epoch). It then makes sure every (split, tap) the family reads is stored, computing the missing ones in one backbone
pass per split under the store's lock, and returns what :func:`autoside.train.train_model` trains instead:

* :class:`SideOnly`, the side network without its backbone: its parameters are the side's alone, so the backbone is
  neither moved to the device nor counted in the measured training memory (it takes no part in training);
* a :class:`~autoside.data.Task` whose splits yield feature dicts (:class:`FeatureSplit`);
* :class:`FeatureInputs`, the preprocessing of those dicts (to the device, in float32).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from autoside.cache.store import CACHE_VERSION, CacheUnavailable, FeatureStore
from autoside.data import Preprocess, Task
from autoside.recipe import Recipe
from autoside.sidenets import SideNet
from autoside.units import parse_bytes

log = logging.getLogger("autoside.cache")
SPLITS = ("train", "val", "test")


@dataclass
class CacheInfo:
    """What the cache did for one trial (logged to its MLflow run)."""

    status: str  # "hit" (every entry was stored), "built" (some were computed now), "bypassed"
    reason: str = ""
    hits: int = 0
    built: int = 0
    build_seconds: float = 0.0
    bytes: int = 0
    dtype: str = ""
    entries: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        return {
            "feature_cache_hits": self.hits,
            "feature_cache_built": self.built,
            "feature_cache_build_seconds": self.build_seconds,
            "feature_cache_bytes": self.bytes,
        }


@dataclass(frozen=True)
class FeatureSplit:
    """Stored features of one split: tensors in RAM when they fit (like small image sets), else memory-mapped
    arrays read batch by batch; batches come out in the order asked for."""

    feats: dict[str, torch.Tensor | np.ndarray]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, order: torch.Tensor | None = None):  # noqa: ANN201 - like Split.batches
        order = torch.arange(len(self)) if order is None else order
        for idx in order.split(batch_size):
            yield {name: _rows(a, idx) for name, a in self.feats.items()}, self.labels[idx]


def _rows(array: torch.Tensor | np.ndarray, idx: torch.Tensor) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array[idx]
    return torch.from_numpy(np.ascontiguousarray(array[idx.numpy()]))


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

    def training_loss(self, task_loss: torch.Tensor) -> torch.Tensor:
        return self.net.training_loss(task_loss)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net.side(feats)


def weights_digest(module: nn.Module) -> str:
    """sha256 of every tensor of a module's state (names, shapes, dtypes, bytes): the backbone's identity."""
    digest = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _base_key(net: SideNet, task: Task, recipe: Recipe, amp: bool) -> dict[str, Any]:
    spec = net.backbone.spec
    return {
        "version": CACHE_VERSION,
        "torch": torch.__version__,
        "backbone": {
            "name": spec.name,
            "timm_model": spec.timm_model,
            "timm_kwargs": spec.timm_kwargs,
            "image_size": spec.image_size,
            "weights": weights_digest(net.backbone),
        },
        "data": {**recipe.dataset.__dict__, "task": task.name, "decode_size": recipe.image_size},
        "preprocess": {k: spec.data_config.get(k) for k in ("input_size", "mean", "std", "interpolation")},
        "autocast_bf16": amp,
        "dtype": recipe.cache_dtype,
    }


def bypass_reason(net: SideNet, recipe: Recipe) -> str | None:
    """Why a trial of ``net`` under ``recipe`` cannot train on stored features (None: it will)."""
    if not recipe.feature_cache:
        return "turned off (--no-cache / feature_cache: false)"
    if getattr(net, "task", "classification") == "detection":
        return "a detector trains on images (its feature pyramid reads every stage map at full resolution)"
    if not net.cacheable:
        return (
            f"{net.config.family!r} with this configuration reads no features of the image alone (it writes back into "
            "the backbone from the start, trains it, or makes its frozen blocks random, e.g. with stochastic depth)"
        )
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

    def bypass(reason: str) -> tuple[nn.Module, Task, None, CacheInfo]:
        log.info("feature cache bypassed for %s: %s", net.config.family, reason)
        return net, task, None, CacheInfo("bypassed", reason)

    reason = bypass_reason(net, recipe)
    if reason is not None:
        return bypass(reason)
    amp = recipe.amp and device.type == "cuda"
    store = FeatureStore(recipe.cache_dir)
    taps = net.feature_taps() or ()
    base = _base_key(net, task, recipe, amp)
    info = CacheInfo("hit", dtype=recipe.cache_dtype)
    splits = {}
    try:
        for split_name in SPLITS:
            split = getattr(task, split_name)
            labels_digest = hashlib.sha256(split.labels.numpy().tobytes()).hexdigest()[:16]
            # Keys of every tap of the kinds this family reads: a build stores them all in its one backbone pass, so
            # later designs that read other blocks never run the backbone again.
            keys = {
                tap: {**base, "split": split_name, "n": len(split), "labels": labels_digest, "tap": tap}
                for tap in net.backbone.tap_names(taps)
            }
            feats = {tap: store.read(keys[tap]) for tap in taps}
            missing = [tap for tap, array in feats.items() if array is None]
            if missing:
                with store.locked():  # another process may have built them while we waited
                    feats.update({tap: store.read(keys[tap]) for tap in missing})
                    missing = [tap for tap in missing if feats[tap] is None]
                    if missing:
                        tic = time.perf_counter()
                        todo = {t: key for t, key in keys.items() if t in missing or store.read(key) is None}
                        stored = _build(net, split, todo, store, recipe, device, amp)
                        feats.update({tap: stored[tap] for tap in missing})
                        info.build_seconds += time.perf_counter() - tic
                        info.built += len(todo)
            info.hits += len(taps) - len(missing)
            info.bytes += sum(a.nbytes for a in feats.values())
            splits[split_name] = FeatureSplit(feats, split.labels)
        limit = parse_bytes(recipe.dataset.max_in_memory, field="dataset.max_in_memory")
        if limit is None or info.bytes <= limit:  # the fast path: read the files once, index tensors in RAM
            for name, split in splits.items():
                splits[name] = FeatureSplit(
                    {k: torch.from_numpy(np.array(a)) for k, a in split.feats.items()}, split.labels
                )
    except CacheUnavailable as exc:
        return bypass(str(exc))
    info.status = "built" if info.built else "hit"
    info.entries = list(taps)
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


@torch.no_grad()
def _build(
    net: SideNet,
    split: Any,
    keys: dict[str, dict[str, Any]],
    store: FeatureStore,
    recipe: Recipe,
    device: torch.device,
    amp: bool,
) -> dict[str, np.ndarray]:
    """One backbone pass over ``split`` (in stored order), each batch's taps written straight into the entries."""
    backbone = net.backbone
    preprocess = Preprocess.from_data_config(backbone.spec.data_config).to(device)
    home = next(backbone.parameters()).device
    backbone.to(device)
    taps, pending, row = tuple(keys), {}, 0
    try:
        for images, _ in split.batches(recipe.eval_batch_size):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = backbone.taps(preprocess(images), taps)
            for tap in taps:
                if tap not in pending:
                    shape = (len(split), *out[tap].shape[1:])
                    pending[tap] = store.begin(keys[tap], shape, recipe.cache_dtype)
                pending[tap].array[row : row + len(images)] = out[tap].float().cpu().numpy()
            row += len(images)
        return {tap: entry.commit() for tap, entry in pending.items()}
    finally:
        backbone.to(home)
        for entry in pending.values():
            if entry.array is not None:
                entry.abort()
