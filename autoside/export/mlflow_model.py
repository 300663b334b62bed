"""An exported side network as an MLflow pyfunc model, registered in a model registry.

The model is logged "from code" (a three-line script that builds :class:`SideNetworkPyfunc`), so, like the export
itself, nothing is pickled. Its artifacts are the export folder and, when the backbone cannot be rebuilt from a name
on another machine (random weights, a local checkpoint, a Hugging Face cache download), the backbone's weights as a
safetensors checkpoint; ``load_context`` calls :func:`autoside.load`, which checks them against the recorded hash.

``predict`` takes a batch of images: a numpy array or tensor (``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)``,
uint8 or floats in [0, 1]; clips ``(N, T, C, H, W)`` for a video side network), or a DataFrame whose first column
holds one image per row (nested lists, encoded PNG/JPEG bytes, base64 strings of those, or file paths; for a video
side network one clip per row: a video file or frame folder, cut as ``autoside predict`` cuts it, or nested lists).
It returns a DataFrame with the top label, its probability, its index and every class probability; for a detector,
one row per image with its ``boxes`` (xyxy, in that image's own pixels), ``scores``, ``labels`` and
``class_indices``, best score first, as ``autoside predict`` prints them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
import numpy as np

from autoside.backbones import Backbone
from autoside.errors import AutosideError, DataError

if TYPE_CHECKING:
    from autoside.data.video import ClipSampling

_CODE = """import mlflow
from autoside.export.mlflow_model import SideNetworkPyfunc

mlflow.models.set_model(SideNetworkPyfunc())
"""


class SideNetworkPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the export with :func:`autoside.load` and classifies batches of images."""

    # Inputs are too varied (arrays, frames of encoded images or paths) for a type hint; without this mlflow warns
    # about the missing hint on every import.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:  # noqa: ANN001 - mlflow's PythonModelContext
        import autoside

        self.model = autoside.load(
            context.artifacts["side_network"], checkpoint=context.artifacts.get("backbone_checkpoint")
        )

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 - mlflow's pyfunc protocol
        import pandas as pd

        from autoside.export.load import as_batch, images_at

        if self.model.info.get("task") == "detection":
            images = images_from_input(model_input)
            found = self.model.detect_images(images if isinstance(images, list) else list(as_batch(images)))
            classes = self.model.classes
            return pd.DataFrame(
                {
                    "boxes": [d["boxes"].tolist() for d in found],
                    "scores": [d["scores"].tolist() for d in found],
                    "labels": [[classes[i] for i in d["labels"].tolist()] for d in found],
                    "class_indices": [d["labels"].tolist() for d in found],
                }
            )

        video = self.model.sidenet.modality == "video"
        images = images_from_input(model_input, clips=self.model.clip_sampling if video else None)
        if isinstance(images, list):  # decoded files: resized as `autoside predict` reads them
            images = images_at(images, self.model.backbone.spec.image_size)
        probs = self.model.predict(images)
        top = probs.argmax(-1)
        classes = self.model.classes
        return pd.DataFrame(
            {
                "label": [classes[i] for i in top.tolist()],
                "probability": probs.max(-1).values.tolist(),
                "class_index": top.tolist(),
                "probabilities": probs.tolist(),
            }
        )


def images_from_input(model_input: Any, *, clips: ClipSampling | None = None) -> Any:
    """A batch of images (array or list of single images) from a pyfunc input (see the module docstring); with
    ``clips``, a batch of clips cut from video paths that way."""
    import pandas as pd

    if isinstance(model_input, dict) and len(model_input) == 1:
        model_input = next(iter(model_input.values()))
    if isinstance(model_input, pd.Series):
        model_input = model_input.to_frame()
    if not isinstance(model_input, pd.DataFrame):
        return model_input
    if model_input.shape[1] == 0 or len(model_input) == 0:
        raise DataError("predict: the input DataFrame is empty; give one image per row in its first column")
    column = model_input["image"] if "image" in model_input.columns else model_input.iloc[:, 0]
    if clips is not None:
        return np.stack([_clip(value, clips) for value in column.tolist()])
    return [_decode(value) for value in column.tolist()]


def _clip(value: Any, sampling: ClipSampling) -> np.ndarray:
    from autoside.data.video import read_clips

    if isinstance(value, str):
        return read_clips([value], sampling)[0].numpy()
    if isinstance(value, (list, tuple, np.ndarray)):
        return np.asarray(value)
    raise DataError(
        f"predict: cannot read a clip from a {type(value).__name__}; give one clip per row (a video file, a frame "
        "folder or nested lists (T, C, H, W)) in the DataFrame's first column, or an array of clips"
    )


def _decode(value: Any) -> Any:
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, (list, tuple, np.ndarray)):
        return np.asarray(value)
    if isinstance(value, str):
        path = Path(value)
        if len(value) < 4096 and path.suffix and path.is_file():
            value = path.read_bytes()
        else:
            try:
                value = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise DataError(f"predict: {value[:40]!r} is neither an image file nor base64 image bytes") from None
    if isinstance(value, (bytes, bytearray)):
        try:
            with Image.open(io.BytesIO(value)) as img:
                return np.array(img.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"predict: not a readable image ({exc})") from None
    raise DataError(
        f"predict: cannot read an image from a {type(value).__name__}; give one image per row (nested list, encoded "
        f"image bytes, base64 string or file path) in the DataFrame's first column, or an array of images"
    )


def default_artifact_location(tracking_uri: str) -> str | None:
    """Artifacts beside a SQLite store (``<dir>/mlartifacts``, as a search stores them); None for other stores."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    return None


def register(
    export_dir: str | Path,
    name: str,
    *,
    tracking_uri: str,
    experiment: str = "autoside-exports",
    backbone_checkpoint: str | Path | None = None,
    backbone: Backbone | None = None,
    tags: dict[str, str] | None = None,
) -> Any:
    """Log ``export_dir`` as a pyfunc model in ``experiment`` and register it as ``name``; returns the model version.

    Args:
        export_dir: a folder written by :func:`autoside.export.save.save_pretrained`.
        name: the registered model name (``models:/<name>/<version>``).
        tracking_uri: the MLflow tracking (and registry) URI.
        experiment: the experiment that holds the logging run (created beside a SQLite store if missing).
        backbone_checkpoint: the backbone weights, when the backbone cannot be rebuilt from its name alone.
        backbone: or the backbone itself, whose weights are then saved as that checkpoint.
        tags: tags for the logging run.
    """
    import mlflow
    import torch

    from autoside import __version__
    from autoside.export.format import read_side_config

    info = read_side_config(export_dir)
    weights = str(info["backbone"].get("weights", ""))
    needs_weights = not info.get("backbone_in_weights") and not weights.startswith("pretrained:")
    if needs_weights and backbone_checkpoint is None and backbone is None:
        raise AutosideError(
            f"register: the backbone of {export_dir} ({weights}) cannot be rebuilt on another machine from its name; "
            f"pass its weights (backbone_checkpoint=FILE or backbone=...)"
        )
    client = mlflow.MlflowClient(tracking_uri, registry_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = (
        found.experiment_id
        if found
        else client.create_experiment(experiment, artifact_location=default_artifact_location(tracking_uri))
    )
    artifacts = {"side_network": str(Path(export_dir).resolve())}
    import timm

    requirements = [
        f"torch=={torch.__version__.split('+')[0]}",
        f"timm=={timm.__version__}",
        "safetensors",
        "pillow",
        "pandas",
        f"autoside=={__version__}",
    ]
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with _mlflow_uris(tracking_uri):
        with tempfile.TemporaryDirectory() as tmp:
            code = Path(tmp) / "autoside_pyfunc.py"
            code.write_text(_CODE)
            if needs_weights and backbone_checkpoint is None:
                from safetensors.torch import save_file

                backbone_checkpoint = Path(tmp) / "backbone.safetensors"
                state = {k: v.detach().cpu().contiguous().clone() for k, v in backbone.model.state_dict().items()}
                save_file(state, str(backbone_checkpoint))
            if needs_weights:
                artifacts["backbone_checkpoint"] = str(Path(backbone_checkpoint).resolve())
            with mlflow.start_run(experiment_id=experiment_id, run_name=f"register-{name}", tags=tags or {}):
                mlflow.log_dict(info, "side_config.json")
                logged = mlflow.pyfunc.log_model(
                    name="side_network_model",
                    python_model=str(code),
                    artifacts=artifacts,
                    pip_requirements=requirements,
                    registered_model_name=name,
                )
    return client.get_model_version(name, logged.registered_model_version)


@contextlib.contextmanager
def _mlflow_uris(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking and registry URIs at ``uri`` (``log_model`` only uses those), then put
    back exactly what was there, including "not set" (so MLflow's defaults and environment variables apply again)."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved = getattr(tracking_utils, "_tracking_uri", None), getattr(registry_utils, "_registry_uri", None)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved
