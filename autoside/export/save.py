"""Export a trained side network like a PEFT adapter, and load it back onto a freshly built backbone.

An export is a folder:

* ``side_config.json``: the family and its full config, the backbone spec (timm name and kwargs, weights source and
  sha256, taps, data config), the metrics of the trial (with the device its peak memory was measured on), versions;
* ``side_model.safetensors``: the side network's weights only (the whole model for ``full``), never pickle;
* ``README.md``: a short model card.

The backbone's weights are not saved (except for ``full``, where they are what trained). :func:`load` rebuilds the
backbone from the spec and refuses it unless the hash of its frozen tensors equals the one recorded at export, so
side weights never end up on a backbone they were not trained with. Backbones with random weights (``weights:
random``) cannot be rebuilt from a name: :func:`load` asks for ``backbone=`` (checked against the hash) instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from autoside.backbones import sha256_file
from autoside.export.format import (
    CARD_NAME,
    CONFIG_NAME,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    ExportError,
    backbone_state_sha256,
)
from autoside.sidenets import SideNet


def versions() -> dict[str, str]:
    import safetensors
    import timm

    from autoside import __version__

    return {
        "autoside": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "safetensors": safetensors.__version__,
        "python": platform.python_version(),
    }


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()  # numpy scalars
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _json_safe(dataclasses.asdict(value))
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def side_info(model: SideNet, *, metrics: dict | None = None, extra: dict | None = None) -> dict[str, Any]:
    """What ``side_config.json`` holds (without the weights file's hash, added once it is written)."""
    from autoside import __version__
    from autoside.config import to_dict

    extra = dict(extra or {})
    classes = extra.pop("classes", None)
    if classes is not None and len(classes) != model.num_classes:
        raise ExportError(f"extra.classes: {len(classes)} names for a model with {model.num_classes} classes")
    metrics = dict(metrics or {})
    metrics.setdefault("trainable_params", model.num_trainable())
    frozen = model.backbone.frozen
    return _json_safe(
        {
            "autoside_version": __version__,
            "format_version": FORMAT_VERSION,
            "task": getattr(model, "task", "classification"),
            "family": model.config.family,
            "config": model.config.to_dict(),
            **({"detector": model.detector_config.to_dict()} if hasattr(model, "detector_config") else {}),
            "backbone": to_dict(model.backbone.spec),
            # None when the backbone trained with the side network (``full``): its weights are in the weights file.
            "backbone_state_sha256": backbone_state_sha256(model.backbone) if frozen else None,
            "backbone_in_weights": not frozen,
            "num_classes": model.num_classes,
            "classes": list(classes) if classes is not None else None,
            "metrics": metrics,
            "versions": versions(),
            "extra": extra,
        }
    )


def save_pretrained(
    model: SideNet,
    out_dir: str | Path,
    *,
    metrics: dict | None = None,
    extra: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as an export folder (see the module docstring) and return its path.

    The files are written into a temporary sibling folder that is renamed into place, so a reader never sees half an
    export. An existing ``out_dir`` is refused unless ``overwrite``.

    Args:
        model: a side network (trained or not).
        out_dir: the folder to create.
        metrics: what the trial measured (``TrialResult.to_dict()``: accuracy, peak memory and its device, ...).
        extra: anything else worth keeping (search name, trial id, params); ``classes`` (label names) is lifted to
            the top level and used by ``predict``.
        overwrite: replace an existing ``out_dir``.
    """
    from safetensors.torch import save

    out = Path(out_dir)
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise ExportError(
                f"{out}: already exists; choose another folder or overwrite it (--force / overwrite=True)"
            )
        _check_replaceable(out)
    info = side_info(model, metrics=metrics, extra=extra)
    # Cloned so tied tensors do not share storage (safetensors refuses shared tensors), on CPU, in training dtype.
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.side_state_dict().items()}
    meta = {
        "format": "pt",
        "family": info["family"],
        "autoside_version": info["autoside_version"],
        "backbone_sha256": str(info["backbone"].get("sha256") or ""),
        "backbone_state_sha256": str(info["backbone_state_sha256"] or ""),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        # Bytes written by Python (not safetensors' own file writer, which creates 0600 files): the user's umask
        # applies, so a shared export is readable by the team like every other file.
        (tmp / WEIGHTS_NAME).write_bytes(save(state, metadata=meta))
        info["weights_sha256"] = sha256_file(tmp / WEIGHTS_NAME)
        (tmp / CONFIG_NAME).write_text(json.dumps(info, indent=2) + "\n")
        (tmp / CARD_NAME).write_text(model_card(info))
        _move_into_place(tmp, out, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_replaceable(out: Path) -> None:
    """Overwriting replaces a previous export (or an empty folder), never a folder of other files or a file."""
    if out.is_symlink() or not out.is_dir():
        raise ExportError(f"{out}: is not a folder; --force replaces only a previous export")
    if any(out.iterdir()) and not (out / CONFIG_NAME).is_file():
        raise ExportError(
            f"{out}: holds files but no {CONFIG_NAME}, so it is not an export; not replaced (--force "
            "replaces only a previous export)"
        )


def _move_into_place(tmp: Path, out: Path, *, overwrite: bool) -> None:
    old = None
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise ExportError(f"{out}: appeared while exporting; not replaced")
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError as exc:
        if old is not None:
            os.rename(old, out)
        raise ExportError(f"{out}: cannot move the export into place ({exc.strerror})") from None
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


def model_card(info: dict[str, Any]) -> str:
    """The README of an export: what it is, what it scored, what it cost to train and where, how to load it."""
    from autoside.units import format_bytes

    spec, metrics, extra = info["backbone"], info.get("metrics") or {}, info.get("extra") or {}
    detection = info.get("task") == "detection"
    title = f"{info['family']} {'detector (Faster R-CNN + FPN)' if detection else 'side network'} on {spec['name']}"
    if extra.get("search") or extra.get("trial_id"):
        title += f" ({' / '.join(str(extra[k]) for k in ('search', 'trial_id') if extra.get(k))})"
    rows = [
        ("family", info["family"]),
        (
            "backbone",
            f"`{spec['timm_model']}` at {spec['image_size']} px, weights {spec['weights']}"
            + (f" (sha256 `{spec['sha256'][:16]}...`)" if spec.get("sha256") else ""),
        ),
        (
            "classes",
            f"{info['num_classes']}"
            + (
                f": {', '.join(info['classes'][:10])}" + (", ..." if len(info["classes"]) > 10 else "")
                if info.get("classes")
                else ""
            ),
        ),
    ]
    labels = (
        (("test_accuracy", "test mAP@[.5:.95]"), ("test_map_50", "test mAP@0.5"), ("val_accuracy", "validation mAP"))
        if detection
        else (("test_accuracy", "test accuracy"), ("val_accuracy", "validation accuracy"))
    )
    for key, label in labels:
        if isinstance(metrics.get(key), (int, float)):
            rows.append((label, f"{metrics[key]:.4f}"))
    if isinstance(metrics.get("peak_memory_bytes"), (int, float)):
        where = ", ".join(str(metrics[k]) for k in ("memory_source", "device") if metrics.get(k))
        batch = f", batch size {metrics['batch_size']}" if metrics.get("batch_size") else ""
        rows.append(
            (
                "peak training memory",
                f"{format_bytes(metrics['peak_memory_bytes'])} "
                f"({metrics['peak_memory_bytes']:,} bytes; {where}{batch})",
            )
        )
    if metrics.get("trainable_params") is not None:
        rows.append(("trainable parameters", f"{int(metrics['trainable_params']):,}"))
    if isinstance(metrics.get("train_images_per_s"), (int, float)):
        rows.append(("training throughput", f"{metrics['train_images_per_s']:.1f} images/s"))
    rows.append(("versions", ", ".join(f"{k} {v}" for k, v in info["versions"].items())))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    args, note = "", ""
    if spec["weights"] == "random" and not info.get("backbone_in_weights"):
        args = ", backbone=backbone"
        note = (
            f'backbone = autoside.create_backbone({spec["name"]!r}, weights="random", '
            f"image_size={spec['image_size']})  # must be the same random weights (the hash is checked)\n"
        )
    elif str(spec["weights"]).startswith("checkpoint:") and not info.get("backbone_in_weights"):
        args = f", checkpoint={spec['weights'].split(':', 1)[1]!r}"
    contents = f"`{WEIGHTS_NAME}`" + (
        " (for `full` these include the backbone)" if info.get("backbone_in_weights") else ""
    )
    usage = (
        "detections = model.detect(images)  # uint8 images (N, C, H, W) -> per image: boxes (xyxy px), scores, labels"
        if detection
        else "probs = model.predict(images)  # uint8 images (N, C, H, W) -> class probabilities\n"
        "logits = model(model.preprocess(images))"
    )
    return f"""# {title}

A side network trained by autoside beside a frozen timm backbone. This folder holds the side network's weights
({contents}) and its config (`{CONFIG_NAME}`). The backbone is rebuilt from its spec when loading, and checked
against the hash of the weights the side network was trained with.

| | |
| --- | --- |
{table}

Peak training memory was measured during training on the device named above; it depends on the batch size.

## Load and predict

```python
import autoside

{note}model = autoside.load("path/to/this/folder"{args})  # eval mode: frozen backbone + side network
{usage}
```

From a shell: `autoside predict path/to/this/folder image.png ...`
"""
