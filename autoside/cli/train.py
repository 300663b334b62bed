"""``autoside train``: one trial of a recipe, with its accuracy and measured memory."""

from __future__ import annotations

import argparse
import json
import sys

from autoside.cli.cache import add_cache_args, cache_overrides
from autoside.cli.registry import command


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="trial recipe YAML (see trials/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, e.g. --set epochs=3 --set sidenet.name=full",
    )
    p.add_argument("--sidenet", help="side network family or preset (shorthand for --set sidenet.name=...)")
    p.add_argument(
        "--skip-bad-videos",
        action="store_true",
        help="skip (and count) unreadable or too-short videos instead of stopping",
    )
    p.add_argument(
        "--grad-checkpointing",
        action="store_true",
        help="recompute the side network's activations in backward: less memory, same result (grad_checkpointing=true)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_cache_args(p)


@command("train", "train one side network on a recipe and print accuracy and measured memory")(_train_args)
def _train(args: argparse.Namespace) -> int:
    from autoside.recipe import load_recipe
    from autoside.train import run_trial

    overrides = [*args.overrides, *([f"sidenet.name={args.sidenet}"] if args.sidenet else []), *cache_overrides(args)]
    overrides += ["dataset.skip_bad_videos=true"] if args.skip_bad_videos else []
    overrides += ["grad_checkpointing=true"] if args.grad_checkpointing else []
    recipe = load_recipe(args.recipe, overrides)
    result, _ = run_trial(recipe, progress=not args.no_progress and sys.stderr.isatty(), load_backbone=False)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _print_result(recipe, result)
    return 0


def _print_result(recipe, result) -> None:  # noqa: ANN001
    from rich.console import Console
    from rich.table import Table

    from autoside.units import format_bytes

    table = Table(title=f"{recipe.name}: {result.family} on {recipe.backbone.name}", show_header=False)
    if result.task == "detection":
        scores = [
            ("val mAP@[.5:.95]", f"{result.val_accuracy:.4f}"),
            ("val mAP@0.5", f"{result.val_map_50:.4f}"),
            ("test mAP@[.5:.95]", f"{result.test_accuracy:.4f}"),
            ("test mAP@0.5", f"{result.test_map_50:.4f}"),
        ]
    else:
        scores = [("val accuracy", f"{result.val_accuracy:.4f}"), ("test accuracy", f"{result.test_accuracy:.4f}")]
    rows = [
        *scores,
        ("peak training memory", f"{format_bytes(result.peak_memory_bytes)} ({result.memory_source})"),
        ("saved activations", format_bytes(result.saved_activation_bytes)),
        ("trainable parameters", f"{result.trainable_params:,}"),
        ("throughput", f"{result.train_images_per_s:.1f} images/s"),
        ("wall time", f"{result.wall_time_s:.1f} s"),
        ("feature cache", f"{result.feature_cache.get('status')} {result.feature_cache.get('reason', '')}".strip()),
        ("grad checkpointing", _checkpointing(recipe, result)),
        ("device", result.device),
        ("torch", result.torch_version),
    ]
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)


def _checkpointing(recipe, result) -> str:  # noqa: ANN001
    if result.grad_checkpointing:
        return "on"
    return f"off ({result.family} has no blocks to recompute)" if recipe.grad_checkpointing else "off"
