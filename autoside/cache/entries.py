"""Stored features of one (backbone, dataset): which entries a trial reads, and the backbone pass that fills them.

Keys name the backbone by its weights' identity (:mod:`autoside.cache.backbone`) when one is known and no record
contradicts it, else by the hash of its tensors. :func:`ensure_features` reads every entry a set of taps needs and
computes the missing ones in one backbone pass per split under the store's lock; a backbone without weights (a
cached trial's) can only read, and says so with :class:`BackboneNeeded`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from autoside.backbones import Backbone
from autoside.cache.store import CACHE_VERSION, CacheUnavailable, FeatureStore
from autoside.data import Preprocess, Task
from autoside.export.format import backbone_state_sha256
from autoside.layers import SideDropPath
from autoside.recipe import Recipe

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
    backbone_loaded: bool = True  # False: the trial read the few frozen tensors it uses from the weights record
    setup_seconds: float = 0.0  # building the model and finding (or building) its features

    def metrics(self) -> dict[str, float]:
        return {
            "feature_cache_hits": self.hits,
            "feature_cache_built": self.built,
            "feature_cache_build_seconds": self.build_seconds,
            "feature_cache_bytes": self.bytes,
            "backbone_loaded": float(self.backbone_loaded),
            "trial_setup_seconds": self.setup_seconds,
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


class BackboneNeeded(Exception):  # noqa: N818 - a signal, not an error a user sees
    """Features a backbone without weights cannot compute are missing (removed since they were checked)."""


def _weights_key(backbone: Backbone, store: FeatureStore) -> tuple[str, bool]:
    """What names the backbone's weights in the keys, and whether this (loaded) backbone should leave a weights
    record. A loaded backbone is hashed; its identity is used only when no record says other weights carry it."""
    from autoside.cache.backbone import read_record

    identity = backbone.weights_id
    if not backbone.weights_loaded:
        if identity is None or backbone.state_sha256 is None:
            raise BackboneNeeded("a backbone without weights and without a weights record")
        return identity, False
    actual = backbone_state_sha256(backbone)
    backbone.state_sha256 = actual
    if identity is None:
        return f"state:{actual}", False
    record = read_record(store, backbone.spec, identity)
    if record is not None and record.state_sha256 != actual:
        log.warning("backbone %s: not the weights recorded as %s; keyed by their hash", backbone.spec.name, identity)
        return f"state:{actual}", False
    return identity, record is None


def _base_key(backbone: Backbone, task: Task, recipe: Recipe, amp: bool, weights: str) -> dict[str, Any]:
    spec = backbone.spec
    return {
        "version": CACHE_VERSION,
        "torch": torch.__version__,
        "backbone": {
            "name": spec.name,
            "timm_model": spec.timm_model,
            "timm_kwargs": spec.timm_kwargs,
            "image_size": spec.image_size,
            "weights": weights,
        },
        "data": {**recipe.dataset.__dict__, "task": task.name, "decode_size": recipe.image_size},
        "preprocess": {k: spec.data_config.get(k) for k in ("input_size", "mean", "std", "interpolation")},
        "autocast_bf16": amp,
        "dtype": recipe.cache_dtype,
    }


def feature_keys(
    backbone: Backbone, task: Task, recipe: Recipe, taps: tuple[str, ...], *, amp: bool, weights: str
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{split: {tap: key}}`` for ``taps`` and what the same backbone pass stores with them
    (:meth:`~autoside.backbones.Backbone.tap_names`): a build stores them all, so later designs that read other
    blocks never run the backbone again."""
    base = _base_key(backbone, task, recipe, amp, weights)
    keys = {}
    for split_name in SPLITS:
        split = getattr(task, split_name)
        labels_digest = hashlib.sha256(split.labels.numpy().tobytes()).hexdigest()[:16]
        keys[split_name] = {
            tap: {**base, "split": split_name, "n": len(split), "labels": labels_digest, "tap": tap}
            for tap in backbone.tap_names(taps)
        }
    return keys


def all_stored(backbone: Backbone, task: Task, recipe: Recipe, taps: tuple[str, ...], *, device: torch.device) -> bool:
    """Whether every (split, tap) a trial reading ``taps`` needs is stored whole (checksums checked)."""
    store = FeatureStore(recipe.cache_dir)
    try:
        weights, _ = _weights_key(backbone, store)
    except BackboneNeeded:
        return False
    amp = recipe.amp and device.type == "cuda"
    keys = feature_keys(backbone, task, recipe, taps, amp=amp, weights=weights)
    return all(store.read(keys[s][tap]) is not None for s in SPLITS for tap in taps)


def ensure_features(
    backbone: Backbone, task: Task, recipe: Recipe, taps: tuple[str, ...], *, device: torch.device
) -> tuple[dict[str, FeatureSplit], CacheInfo]:
    """Every split's stored features under ``taps`` (memory-mapped), computing the missing ones in one backbone pass
    per split under the store's lock; a loaded backbone with a known identity also leaves its weights record.
    Raises :class:`BackboneNeeded` when something is missing and ``backbone`` has no weights to compute it."""
    from autoside.cache.backbone import read_record, write_record

    amp = recipe.amp and device.type == "cuda"
    store = FeatureStore(recipe.cache_dir)
    weights, needs_record = _weights_key(backbone, store)
    keys = feature_keys(backbone, task, recipe, taps, amp=amp, weights=weights)
    info = CacheInfo("hit", dtype=recipe.cache_dtype, entries=list(taps))
    splits = {}
    for split_name in SPLITS:
        split, split_keys = getattr(task, split_name), keys[split_name]
        feats = {tap: store.read(split_keys[tap]) for tap in taps}
        missing = [tap for tap, array in feats.items() if array is None]
        if missing and not backbone.weights_loaded:
            raise BackboneNeeded(f"{len(missing)} feature entries of split {split_name!r} are missing")
        if missing:
            with store.locked():  # another process may have built them while we waited
                feats.update({tap: store.read(split_keys[tap]) for tap in missing})
                missing = [tap for tap in missing if feats[tap] is None]
                if missing:
                    tic = time.perf_counter()
                    todo = {t: key for t, key in split_keys.items() if t in missing or store.read(key) is None}
                    stored = _build(backbone, split, todo, store, recipe, device, amp)
                    feats.update({tap: stored[tap] for tap in missing})
                    info.build_seconds += time.perf_counter() - tic
                    info.built += len(todo)
        info.hits += len(taps) - len(missing)
        info.bytes += sum(a.nbytes for a in feats.values())
        splits[split_name] = FeatureSplit(feats, split.labels)
    if needs_record:
        try:
            with store.locked():
                if read_record(store, backbone.spec, weights) is None:
                    write_record(store, backbone, weights, backbone.state_sha256)
        except CacheUnavailable as exc:  # the features are whole; later trials will load the backbone
            log.warning("backbone weights record not stored: %s", exc)
    info.status = "built" if info.built else "hit"
    return splits, info


@torch.no_grad()
def _build(
    backbone: Backbone,
    split: Any,
    keys: dict[str, dict[str, Any]],
    store: FeatureStore,
    recipe: Recipe,
    device: torch.device,
    amp: bool,
) -> dict[str, np.ndarray]:
    """One backbone pass over ``split`` (in stored order), each batch's taps written straight into the entries."""
    preprocess = Preprocess.from_data_config(backbone.spec.data_config).to(device)
    home = next(backbone.parameters()).device
    backbone.to(device)
    taps, pending, row = tuple(keys), {}, 0
    # Stochastic depth a side network installed in these blocks must not reach what every trial will read.
    drops = [m for m in backbone.modules() if isinstance(m, SideDropPath) and m.active]
    for module in drops:
        module.active = False
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
        for module in drops:
            module.active = True
        backbone.to(home)
        for entry in pending.values():
            if entry.array is not None:
                entry.abort()
