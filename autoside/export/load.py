"""Reading an export back: checks, the loaded model (:class:`ExportedSideNet`) and raw images in, labels out.

:func:`autoside.load` is :func:`load`. Every check fails with one clear error: a
missing or newer-format ``side_config.json``, a weights file whose sha256 differs from the recorded one (truncated or
edited), tensors that do not match the side network, a backbone of another architecture or with other weights.
Config keys this version does not know are dropped with a warning, like PEFT does.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoside.backbones import Backbone, BackboneSpec, sha256_file, state_mismatch
from autoside.errors import ConfigError, DataError, WeightsError
from autoside.export.format import CONFIG_NAME, WEIGHTS_NAME, ExportError, backbone_state_sha256, read_side_config
from autoside.sidenets import SideConfig, SideNet

# Spec fields that must agree between the exported backbone and the one a side network is loaded onto.
_ARCH_FIELDS = (
    "timm_model",
    "timm_kwargs",
    "layout",
    "num_taps",
    "widths",
    "reductions",
    "num_features",
    "num_prefix_tokens",
    "grid_size",
    "image_size",
)


def _known_fields(cls: type, data: dict[str, Any], what: str, keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """Drop keys that ``cls`` does not know (written by a newer autoside), with a warning, like PEFT."""
    known = {f.name for f in dataclasses.fields(cls) if f.init} | set(keep)
    unknown = sorted(set(data) - known)
    if unknown:
        warnings.warn(
            f"{what}: ignoring unknown keys {', '.join(unknown)} (written by a newer autoside?)",
            UserWarning,
            stacklevel=3,
        )
    return {k: v for k, v in data.items() if k in known}


def config_from_info(info: dict[str, Any]) -> SideConfig:
    from autoside.sidenets import get_family

    config = dict(info["config"])
    family = config.get("family", info["family"])
    if family != info["family"]:
        raise ConfigError(f"{CONFIG_NAME}: config.family {family!r} differs from family {info['family']!r}")
    cls = get_family(family).config_class
    return cls.from_dict(_known_fields(cls, config, "side_config.json config", keep=("family", "version")))


def spec_from_info(info: dict[str, Any]) -> BackboneSpec:
    from autoside.config import from_dict

    data = _known_fields(BackboneSpec, dict(info["backbone"]), "side_config.json backbone")
    return from_dict(BackboneSpec, data, field="backbone")


def _check_architecture(actual: BackboneSpec, saved: BackboneSpec) -> None:
    from autoside.config import to_dict

    for name in _ARCH_FIELDS:
        a, s = getattr(actual, name), getattr(saved, name)
        if to_dict(a) != to_dict(s):  # compared as JSON data: tuples saved as lists are the same
            raise ConfigError(
                f"backbone.{name}: the given backbone has {a!r}, the export was trained on {s!r} "
                f"({saved.name}); build it with autoside.create_backbone({saved.name!r}, image_size={saved.image_size})"
            )


def _rebuild_backbone(spec: BackboneSpec, *, weights_in_file: bool, checkpoint: str | Path | None) -> Backbone:
    from autoside.backbones import create_backbone

    if weights_in_file:
        # Every backbone tensor is overwritten by the export's weights: timm's initialisation is enough.
        return create_backbone(spec.name, weights="random", image_size=spec.image_size)
    if checkpoint is not None:
        return create_backbone(spec.name, checkpoint=checkpoint, image_size=spec.image_size)
    if spec.weights == "random":
        raise WeightsError(
            f"backbone {spec.name!r} was trained with random weights, which an export does not store: pass the same "
            f"backbone with autoside.load(path, backbone=...) (checked against the recorded hash)"
        )
    if spec.weights.startswith("checkpoint:"):
        raise WeightsError(
            f"backbone {spec.name!r} was loaded from the checkpoint file {spec.weights.split(':', 1)[1]!r} "
            f"(sha256 {str(spec.sha256)[:12]}...): pass it with autoside.load(path, checkpoint=FILE) "
            f"(or --checkpoint FILE)"
        )
    return create_backbone(spec.name, weights="pretrained", image_size=spec.image_size)


def read_weights(folder: str | Path, info: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of ``side_model.safetensors``, after checking the file against its recorded sha256."""
    from safetensors.torch import load_file

    file = Path(folder) / WEIGHTS_NAME
    if not file.is_file():
        raise ExportError(f"{Path(folder)}: {WEIGHTS_NAME} is missing")
    expected = (info or {}).get("weights_sha256")
    if expected and sha256_file(file) != expected:
        raise WeightsError(
            f"{file}: sha256 differs from the one recorded in {CONFIG_NAME}; the file is truncated, edited or from "
            f"another export: export the side network again"
        )
    try:
        return load_file(str(file))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several error types for a damaged file
        raise WeightsError(f"{file}: not a readable safetensors file ({str(exc).splitlines()[0][:200]})") from None


def load_state_strict(model: SideNet, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Load exported side weights: exactly the keys and shapes of ``model.side_state_dict()``, nothing else."""
    target = model.side_state_dict()
    problems = state_mismatch(state, target)
    if problems:
        raise WeightsError(
            f"{source}: weights do not match the {model.config.family} side network: {'; '.join(problems)}"
        )
    result = model.load_state_dict(state, strict=False)
    left = [k for k in result.missing_keys if k in target]
    if left or result.unexpected_keys:
        raise WeightsError(f"{source}: tensors not loaded: {(left or result.unexpected_keys)[:3]}")


def _safetensors_metadata(file: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception:  # noqa: BLE001 - an unreadable file is reported by read_weights
        return {}


def fetch_run_artifacts(uri: str, tracking_uri: str | None, into: Path) -> Path:
    """Download ``runs:/<run id>/<path>`` from the MLflow store at ``tracking_uri`` into ``into``; its local folder."""
    from autoside.tune.journal import mlflow_client, retry

    run_id, _, artifact = uri.removeprefix("runs:/").partition("/")
    if not run_id or not artifact:
        raise ConfigError(f"{uri}: expected runs:/<run id>/<artifact path>, e.g. runs:/0a1b.../side_network")
    client = mlflow_client(tracking_uri)
    return Path(retry(lambda: client.download_artifacts(run_id, artifact.rstrip("/"), str(into))))


def load(
    path: str | Path,
    *,
    backbone: Backbone | None = None,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    tracking_uri: str | None = None,
) -> ExportedSideNet:
    """An exported side network on its frozen backbone, in eval mode, ready to predict.

    Args:
        path: the export folder, or ``runs:/<run id>/side_network``: a search trial's weights in MLflow (fetched
            from ``tracking_uri``, default MLflow's own: ``$MLFLOW_TRACKING_URI``).
        backbone: the backbone to put it on (needed when it was trained on a random-weight backbone); otherwise the
            backbone is rebuilt from the saved spec. Either way its frozen weights must hash to the recorded value.
        checkpoint: the backbone checkpoint file, when the backbone was loaded from one.
        device: where to put the model (``"auto"``: CUDA when available).
        tracking_uri: the MLflow store a ``runs:/`` path is read from.

    Returns:
        An :class:`~autoside.export.load.ExportedSideNet`: ``model(x)`` gives logits for preprocessed input (like the
        trained model), ``model.preprocess`` turns uint8 images into that input, ``model.predict(images)`` does both
        and returns probabilities, ``model.classes`` names the labels.
    """
    if str(path).startswith("runs:/"):
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:
            folder = fetch_run_artifacts(str(path), tracking_uri, Path(scratch))
            return load(folder, backbone=backbone, checkpoint=checkpoint, device=device)
    from autoside.data import Preprocess
    from autoside.sidenets import create_sidenet
    from autoside.train import resolve_device

    target = resolve_device(str(device))  # before any work: a wrong device is the first thing to hear about
    folder = Path(path)
    info = read_side_config(folder)
    config = config_from_info(info)
    spec = spec_from_info(info)
    state = read_weights(folder, info)
    meta_family = _safetensors_metadata(folder / WEIGHTS_NAME).get("family")
    if meta_family and meta_family != info["family"]:
        raise WeightsError(
            f"{folder / WEIGHTS_NAME}: holds a {meta_family!r} side network, {CONFIG_NAME} says "
            f"{info['family']!r}: the files come from different exports"
        )
    weights_in_file = bool(info.get("backbone_in_weights"))
    if backbone is None:
        backbone = _rebuild_backbone(spec, weights_in_file=weights_in_file, checkpoint=checkpoint)
    _check_architecture(backbone.spec, spec)
    # Building the side network draws random initial weights; the caller's random stream is left untouched.
    detection = info.get("task", "classification") == "detection"
    with torch.random.fork_rng(devices=[]):
        model = create_sidenet(config, backbone, int(info["num_classes"]))
        if detection:
            model = _detector(model, info)
    expected = info.get("backbone_state_sha256")
    if expected and not weights_in_file:
        actual = backbone_state_sha256(model.backbone)
        if actual != expected:
            raise WeightsError(
                f"backbone {spec.name!r}: its weights hash to {actual[:12]}..., but the side network was trained on "
                f"weights hashing to {expected[:12]}... ({spec.weights}); load it onto the backbone it was trained with"
            )
    load_state_strict(model, state, source=str(folder / WEIGHTS_NAME))
    preprocess = Preprocess.from_data_config(spec.data_config)
    classes = tuple(info.get("classes") or (str(i) for i in range(int(info["num_classes"]))))
    exported = (ExportedDetector if detection else ExportedSideNet)(model, preprocess, classes, info)
    return exported.to(target).eval()


def _detector(sidenet: SideNet, info: dict[str, Any]) -> nn.Module:
    """The detector recorded in ``side_config.json`` around ``sidenet``."""
    from autoside.config import from_dict
    from autoside.detection.config import DetectorConfig
    from autoside.detection.model import Detector

    if not isinstance(info.get("detector"), dict):
        raise ExportError(f"{CONFIG_NAME}: task is 'detection' but the 'detector' settings are missing")
    config = from_dict(DetectorConfig, _known_fields(DetectorConfig, info["detector"], "side_config.json detector"))
    return Detector(sidenet, int(info["num_classes"]), config)


class ExportedSideNet(nn.Module):
    """A loaded export: the side network on its frozen backbone, the transform it expects and its label names."""

    def __init__(self, sidenet: SideNet, preprocess: nn.Module, classes: tuple[str, ...], info: dict[str, Any]):
        super().__init__()
        self.sidenet = sidenet
        self.preprocess = preprocess
        self.classes = classes
        self.info = info

    @property
    def config(self) -> SideConfig:
        return self.sidenet.config

    @property
    def backbone(self) -> Backbone:
        return self.sidenet.backbone

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.info.get("metrics") or {})

    @property
    def clip_sampling(self) -> Any:
        """How ``predict`` cuts video files into clips: the training recipe's ``dataset`` clip options when the export
        recorded them, else the side network's frames (default 8) as TSN segments at the backbone's input size."""
        from autoside.data.video import ClipSampling

        dataset = ((self.info.get("extra") or {}).get("recipe") or {}).get("dataset") or {}
        frames = dataset.get("frames") or getattr(self.config, "frames", None) or 8
        size = dataset.get("frame_size") or self.backbone.spec.image_size
        return ClipSampling(frames=int(frames), frame_stride=dataset.get("frame_stride"), frame_size=int(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch that has already been through :attr:`preprocess` (as during training)."""
        return self.sidenet(x)

    @torch.no_grad()
    def predict(self, images: Any) -> torch.Tensor:
        """Class probabilities ``(N, num_classes)`` for a batch of raw images (see :func:`as_batch`)."""
        device = next(self.parameters()).device
        logits = self.sidenet(self.preprocess(as_batch(images).to(device)))
        return logits.float().softmax(-1).cpu()

    def topk(self, images: Any, k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``k`` most likely labels and their probabilities, per image."""
        probs = self.predict(images)
        values, indices = probs.topk(min(k, probs.shape[-1]), dim=-1)
        return [[(self.classes[i], v) for v, i in zip(vs, ix)] for vs, ix in zip(values.tolist(), indices.tolist())]


def as_batch(images: Any) -> torch.Tensor:
    """A uint8 ``(N, C, H, W)`` batch from a tensor or array of images (clips ``(N, T, C, H, W)``: frame by frame).

    Accepted: ``(N, C, H, W)`` or ``(N, H, W, C)`` with C of 1 or 3, ``(N, H, W)`` gray; uint8 (0-255) or floats in
    [0, 1]; or a sequence of such single images ``(C, H, W)`` / ``(H, W, C)`` / ``(H, W)`` of any sizes (each resized
    to the size of the first).
    """
    if isinstance(images, (list, tuple)):
        singles = [as_batch(_single(i)) for i in images]
        if not singles:
            raise DataError("predict: no images given")
        size = singles[0].shape[-2:]
        singles = [_resize(s, size) for s in singles]
        return (
            torch.cat([s.expand(-1, 3, -1, -1) if s.shape[1] == 1 else s for s in singles])
            if any(s.shape[1] == 3 for s in singles)
            else torch.cat(singles)
        )
    x = torch.as_tensor(images)
    if x.ndim == 5:  # clips (N, T, C, H, W)
        return torch.stack([as_batch(clip) for clip in x]) if len(x) else x.to(torch.uint8)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise DataError(
            f"predict: expected a batch of images (N, C, H, W), (N, H, W, C) or (N, H, W), got shape {tuple(x.shape)}"
        )
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] not in (1, 3):
        raise DataError(f"predict: images must have 1 or 3 channels, got shape {tuple(x.shape)}")
    if x.is_floating_point():
        x = (x.clamp(0, 1) * 255).round()
    return x.to(torch.uint8).contiguous()


def _single(image: Any) -> torch.Tensor:
    x = torch.as_tensor(image)
    if x.ndim == 2:
        return x[None, None]
    if x.ndim == 3 and x.shape[0] not in (1, 3) and x.shape[-1] in (1, 3, 4):
        x = x[..., :3].permute(2, 0, 1)
    return x[None]


def _resize(batch: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(batch.shape[-2:]) == tuple(size):
        return batch
    out = torch.nn.functional.interpolate(batch.float(), size=tuple(size), mode="bilinear", antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8)


def read_images(paths: Sequence[str | Path], image_size: int | None) -> torch.Tensor:
    """Image files as one uint8 RGB batch at ``image_size`` (resized with antialiasing, like training data; ``None``:
    one file at its own size)."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import pil_to_tensor

    batch = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            raise DataError(f"{path}: is a folder; give image files")
        if not path.is_file():
            raise DataError(f"{path}: image file not found")
        try:
            with Image.open(path) as img:
                batch.append(pil_to_tensor(img.convert("RGB")))
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{path}: not a readable image ({exc})") from None
    if image_size is None:
        return torch.stack(batch)
    return images_at(batch, image_size)


def images_at(images: Sequence[Any], image_size: int) -> torch.Tensor:
    """Single decoded images (any sizes, see :func:`as_batch`) as one uint8 batch at ``image_size``, each resized
    with antialiasing: how files are read wherever they come from (paths, or encoded bytes given to a pyfunc)."""
    return torch.cat([_resize(as_batch(_single(i)), (image_size, image_size)) for i in images])


class ExportedDetector(ExportedSideNet):
    """A loaded detector export: ``model(x)`` gives per-image detections for preprocessed input, :meth:`detect`
    takes raw images."""

    @torch.no_grad()
    def detect(self, images: Any, *, min_score: float = 0.0) -> list[dict[str, torch.Tensor]]:
        """Per image: ``boxes`` (xyxy pixels of the backbone-size input), ``scores`` and ``labels`` (indices into
        :attr:`classes`), highest score first, those under ``min_score`` dropped."""
        device = next(self.parameters()).device
        detections = self.sidenet(self.preprocess(as_batch(images).to(device)))
        out = []
        for d in detections:
            keep = d["scores"] >= min_score
            out.append({k: v[keep].cpu() for k, v in d.items()})
        return out

    def detect_images(self, images: Sequence[Any], *, min_score: float = 0.0) -> list[dict[str, torch.Tensor]]:
        """:meth:`detect` on single images of any sizes (each resized to the detector's input as files are read, see
        :func:`images_at`), with the boxes in each image's own pixels."""
        size = self.backbone.spec.image_size
        found = self.detect(images_at(images, size), min_score=min_score)
        for image, detections in zip(images, found, strict=True):
            h, w = as_batch(_single(image)).shape[-2:]
            detections["boxes"] = detections["boxes"] * detections["boxes"].new_tensor([w / size, h / size] * 2)
        return found

    def predict(self, images: Any) -> list[dict[str, torch.Tensor]]:  # type: ignore[override]
        return self.detect(images)

    def topk(self, images: Any, k: int = 5) -> list[list[tuple[str, float]]]:
        raise ConfigError("predict: a detector gives boxes, not top-k labels; use detect()")
