"""Does the temporal module matter? Side4Video on the built-in arrow-of-time task with and without one.

Usage: python benchmarks/video_temporal.py [--recipe trials/arrow_of_time_vit.yaml] [--temporal conv none ...]
                                           [--set KEY=VALUE ...]

Every row trains the same side network (the recipe's ``sidenet``) on the same split with the same seed; only
``temporal`` (and, with ``--no-cls-shift``, the CLS shift) differs. Chance is 1 / number of classes. The best
validation accuracy over the epochs shows whether a row ever read something that holds on held-out time ranges
(the built-in tasks' validation windows come from blocks of their own), not only at the last epoch. Prints the
table that benchmarks/README.md quotes.
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from autoside.data import load_task
from autoside.recipe import load_recipe
from autoside.sidenets import resolve
from autoside.train import run_trial
from autoside.units import format_bytes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="trials/arrow_of_time_vit.yaml")
    parser.add_argument("--temporal", nargs="+", default=["conv", "none"], help="temporal modules to compare")
    parser.add_argument("--no-cls-shift", action="store_true", help="also turn the CLS shift off in every row")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    recipe = load_recipe(args.recipe, args.overrides)
    task = load_task(recipe.dataset)
    table = Table(title=f"{recipe.name}: {recipe.sidenet.name} on {recipe.backbone.name}, {task.name}")
    columns = ("temporal", "cls shift", "val acc", "best val (epoch)", "test acc", "trainable (no head)", "peak memory")
    for col in (*columns, "seconds"):
        table.add_column(col)
    for temporal in args.temporal:
        options = {**recipe.sidenet.options, "temporal": temporal}
        if args.no_cls_shift:
            options["cls_shift"] = False
        config = resolve(recipe.sidenet.name, **options)
        tic = time.perf_counter()
        result, model = run_trial(recipe, config, task=task)
        best = max(result.history, key=lambda h: h["val_accuracy"])
        table.add_row(
            temporal,
            str(getattr(config, "cls_shift", "-")),
            f"{result.val_accuracy:.3f}",
            f"{best['val_accuracy']:.3f} ({best['epoch']})",
            f"{result.test_accuracy:.3f}",
            f"{model.num_trainable(include_head=False):,}",
            format_bytes(result.peak_memory_bytes),
            f"{time.perf_counter() - tic:.0f}",
        )
        Console().print(f"{temporal}: test {result.test_accuracy:.3f}", highlight=False)
    Console(width=160).print(table)
    print(
        f"{len(task.train)} train / {len(task.val)} val / {len(task.test)} test clips of {task.train.images.shape[1]}"
    )


if __name__ == "__main__":
    main()
