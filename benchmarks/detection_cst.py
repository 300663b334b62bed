"""One detection trial of a recipe (default: ``trials/pasted_objects_resnet.yaml``) with a chosen side network, and
how much its calibration moved the feature-pyramid inputs.

Trains with :func:`autoside.train.run_trial` (the path ``autoside train`` takes), then on the validation images
compares the stage maps the detector's pyramid reads with the frozen backbone's own maps of the same stages: the
relative change ``||calibrated - frozen|| / ||frozen||`` per stage (0 for the no-side baseline ``linear``). Prints
and optionally writes one JSON record: val/test mAP@[.5:.95] and mAP@0.5, peak memory, time, per-epoch history.

    python benchmarks/detection_cst.py --sidenet linear --out /tmp/det_linear.json
    python benchmarks/detection_cst.py --sidenet cst_det_resnet4s_fmnist --set epochs=30 --out /tmp/det_cst.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


@torch.no_grad()
def calibration_change(model: torch.nn.Module, images: torch.Tensor, preprocess: torch.nn.Module) -> list[float]:
    """Relative change of each pyramid input against the frozen backbone's map of the same stride."""
    model.eval()
    x = preprocess(images)
    read = model.sidenet.stage_features(x)
    frozen = {f.shape[-1]: f for f in model.backbone.intermediates(x)}
    return [
        float((read[i] - frozen[read[i].shape[-1]]).norm() / frozen[read[i].shape[-1]].norm()) for i in model.levels
    ]


def main(argv: list[str] | None = None) -> None:
    from autoside.data import Preprocess, load_task
    from autoside.recipe import load_recipe
    from autoside.train import run_trial

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="trials/pasted_objects_resnet.yaml")
    parser.add_argument("--sidenet", default=None, help="side network (default: the recipe's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", help="write the record as JSON here")
    args = parser.parse_args(argv)
    overrides = [*args.overrides, *([f"sidenet.name={args.sidenet}"] if args.sidenet else [])]
    recipe = load_recipe(args.recipe, overrides)
    task = load_task(recipe.dataset, image_size=recipe.image_size)
    result, model = run_trial(recipe, task=task, report=lambda epoch, metrics: print(epoch, metrics, flush=True))
    preprocess = Preprocess.from_data_config(model.backbone.spec.data_config)
    change = calibration_change(model.cpu(), task.val.images[:50], preprocess)
    record = {
        "recipe": recipe.to_dict(),
        "sidenet": recipe.sidenet.name,
        "pyramid_input_change": change,
        **{k: v for k, v in result.to_dict().items() if k != "feature_cache"},
    }
    text = json.dumps(record, indent=2, default=str)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(
        f"{recipe.sidenet.name}: val mAP {result.val_accuracy:.4f} (@0.5 {result.val_map_50:.4f}), "
        f"test mAP {result.test_accuracy:.4f} (@0.5 {result.test_map_50:.4f}), peak {result.peak_memory_bytes:,} B, "
        f"{result.trainable_params:,} trainable, {result.wall_time_s:.0f} s, pyramid input change "
        + ", ".join(f"{c:.3f}" for c in change)
    )


if __name__ == "__main__":
    main()
