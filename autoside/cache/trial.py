"""A cached trial's side network, built on its backbone's architecture without loading the backbone's weights.

Used by :func:`autoside.train.prepare_trial` before it falls back to loading the backbone: the side network is first
built on the meta device (no memory, no initialisation) to learn which features and which frozen tensors it reads;
when the features and the backbone's weights record are all stored (:mod:`autoside.cache.backbone`), it is built for
real with only those tensors read from the record.
"""

from __future__ import annotations

import logging

import torch

from autoside.cache.backbone import fill_from_record, read_record, spec_backbone
from autoside.cache.entries import all_stored
from autoside.cache.features import DETECTOR_READS_IMAGES, bypass_reason
from autoside.cache.store import FeatureStore
from autoside.data import Task
from autoside.errors import AutosideError
from autoside.objective import is_detection
from autoside.recipe import Recipe
from autoside.sidenets import SideConfig, SideNet, create_sidenet, get_family

log = logging.getLogger("autoside.cache")


def side_net_on_record(
    recipe: Recipe, task: Task, config: SideConfig, *, device: torch.device
) -> tuple[SideNet | None, str]:
    """The side network of ``config`` on the recipe's backbone architecture, with only the frozen tensors it reads,
    when every feature it reads and the backbone's weights record are stored; else ``(None, why not)``."""
    if not recipe.feature_cache:
        return None, "the feature cache is off"
    if is_detection(recipe.dataset.name):
        return None, DETECTOR_READS_IMAGES
    if get_family(config.family).feature_taps is SideNet.feature_taps:
        return None, f"{config.family!r} reads no stored features"
    backbone = spec_backbone(recipe)
    if backbone.weights_id is None:
        return None, f"the weights of {backbone.spec.name!r} ({backbone.spec.weights}) have no identity known unread"
    record = read_record(FeatureStore(recipe.cache_dir), backbone.spec, backbone.weights_id)
    if record is None:
        return None, "no weights record stored yet"
    backbone.state_sha256 = record.state_sha256
    try:
        with torch.device("meta"):
            probe = create_sidenet(config, backbone, task.num_classes)
    except AutosideError:
        raise
    except Exception as exc:  # noqa: BLE001 - a family that cannot be built without weights loads them instead
        return None, f"{config.family!r} cannot be built on the meta device ({type(exc).__name__})"
    reason = bypass_reason(probe, recipe)
    if reason is not None:
        return None, reason
    if not all_stored(backbone, task, recipe, probe.feature_taps() or (), device=device):
        return None, "its features are not all stored yet"
    read_bytes = fill_from_record(backbone, record, probe.frozen_state_read())
    torch.manual_seed(recipe.seed)  # as build_model seeds the side network
    net = create_sidenet(config, backbone, task.num_classes)
    if any(t.is_meta for m in net.side_modules().values() for t in (*m.parameters(), *m.buffers())):
        return None, f"{config.family!r} runs backbone tensors that frozen_state_read does not name"
    log.info("%s built without loading its backbone (%d bytes of frozen tensors read)", config.family, read_bytes)
    return net, ""
