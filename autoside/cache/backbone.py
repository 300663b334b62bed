"""The backbone of a cached trial: its architecture and the few frozen tensors its side network uses, not its weights.

A trial that trains on stored features needs of its backbone the spec (widths, depth, token layout), which the
architecture built on the meta device gives without memory or initialisation, and, for some families, a few frozen
tensors (:meth:`~autoside.sidenets.SideNet.frozen_state_read`: LoSA initialises its norm from the backbone's final
norm; DTL runs blocks ``M..L``). The first trial on a node that loads the backbone stores a *weights record* beside the
features: every frozen tensor in one safetensors file, with their hash (what an export records and checks on load).
A later trial reads from it only the tensors it uses, so it neither initialises nor loads the backbone: its wall time
and its memory are the side network's.

Records and features are keyed by the weights' identity, known without reading them (:func:`weights_identity`): the
sha256 of the file they come from, or, for random weights, the seed they were drawn with (timm's initialisation after
``torch.manual_seed`` is deterministic for one torch and timm version, both in the key). A backbone built by hand
carries no identity: its features are keyed by the hash of its tensors and it leaves no record.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autoside.backbones import Backbone, BackboneSpec, create_backbone, sha256_file
from autoside.cache.store import CACHE_VERSION, FeatureStore
from autoside.config import to_dict

log = logging.getLogger("autoside.cache")
RECORD_SUFFIX = ".safetensors"


def weights_identity(spec: BackboneSpec, *, seed: int | None) -> str | None:
    """A name for the backbone's weights that needs none of them read (``None``: none is known)."""
    if spec.sha256:
        return f"{spec.weights.split(':', 1)[0]}:sha256={spec.sha256}"
    if spec.weights == "random":
        return f"random:seed={seed}" if seed is not None else None
    if spec.weights.startswith("timm:"):
        digest = _hub_file_sha256(spec.timm_model)
        return f"timm:sha256={digest}" if digest else None
    return None


@functools.lru_cache(maxsize=8)
def _hub_file_sha256(timm_model: str) -> str | None:
    """sha256 of the pretrained file timm reads from the local Hugging Face cache, if it is there."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_model)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    for filename in ("model.safetensors", "pytorch_model.bin") if repo else ():
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return sha256_file(Path(found))
    return None


def record_key(spec: BackboneSpec, identity: str) -> dict[str, Any]:
    import timm

    return {
        "version": CACHE_VERSION,
        "record": "backbone weights",
        "torch": torch.__version__,
        "timm": timm.__version__,
        "backbone": {
            "name": spec.name,
            "timm_model": spec.timm_model,
            "timm_kwargs": spec.timm_kwargs,
            "image_size": spec.image_size,
            "weights": identity,
        },
    }


@dataclass(frozen=True)
class WeightsRecord:
    path: Path
    state_sha256: str


def read_record(store: FeatureStore, spec: BackboneSpec, identity: str) -> WeightsRecord | None:
    found = store.read_file(record_key(spec, identity), RECORD_SUFFIX)
    return WeightsRecord(found[0], str(found[1]["state_sha256"])) if found else None


def write_record(store: FeatureStore, backbone: Backbone, identity: str, state_sha256: str) -> None:
    """Store the frozen tensors of a loaded backbone (call under the store's lock)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous().clone() for k, v in backbone.model.state_dict().items()}
    store.write_file(
        record_key(backbone.spec, identity),
        RECORD_SUFFIX,
        lambda path: save_file(state, str(path)),
        {"state_sha256": state_sha256, "spec": to_dict(backbone.spec), "tensors": len(state)},
    )


def spec_backbone(recipe: Any) -> Backbone:
    """The recipe's backbone as architecture and spec only (meta device), with its weights' identity."""
    backbone = create_backbone(
        recipe.backbone.name,
        weights=recipe.backbone.weights,
        checkpoint=recipe.backbone.checkpoint,
        image_size=recipe.image_size,
        meta=True,
    )
    backbone.weights_id = weights_identity(backbone.spec, seed=recipe.seed)
    return backbone


def fill_from_record(backbone: Backbone, record: WeightsRecord, prefixes: tuple[str, ...]) -> int:
    """Read the tensors under ``prefixes`` (keys of ``backbone.model``) from the record into the meta backbone;
    returns how many bytes were read."""
    from safetensors import safe_open

    with safe_open(str(record.path), framework="pt") as fh:
        state = {k: fh.get_tensor(k) for k in fh.keys() if prefixes and k.startswith(prefixes)}  # noqa: SIM118
    backbone.model.load_state_dict(state, strict=False, assign=True)
    backbone.freeze()
    backbone.state_sha256 = record.state_sha256
    return sum(t.numel() * t.element_size() for t in state.values())
