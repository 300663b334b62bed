"""Is transfer real? A linear probe on each offline-pretrained backbone vs the same probe on a random copy.

Usage: python benchmarks/linear_probe_transfer.py [--recipe trials/animal_mnist_effnet.yaml] [--backbone NAME ...]

Each backbone is probed twice with the same recipe, seed and split (Animal-MNIST, 800 train + 200 val by default):
once with its pretrained weights, once with timm's random initialisation. Prints the table that
benchmarks/README.md quotes.
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from autoside.backbones import offline_weights
from autoside.data import load_task
from autoside.recipe import load_recipe
from autoside.train import run_trial


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="trials/animal_mnist_effnet.yaml")
    parser.add_argument("--backbone", action="append", help="offline backbone name(s); default: all of them")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    names = args.backbone or sorted(offline_weights())
    table = Table(title="Linear probe: pretrained vs random weights")
    for col in ("backbone", "image size", "pretrained test acc", "random test acc", "gain (points)", "seconds"):
        table.add_column(col)
    for name in names:
        source = offline_weights()[name]
        size = source.data_config.get("input_size", [3, None, None])[-1]
        overrides = [f"backbone.name={name}", *([f"image_size={size}"] if size else []), *args.overrides]
        accs, tic = {}, time.perf_counter()
        for weights in ("pretrained", "random"):
            recipe = load_recipe(args.recipe, [*overrides, f"backbone.weights={weights}", "sidenet.name=linear"])
            result, _ = run_trial(recipe, task=load_task(recipe.dataset))
            accs[weights] = result.test_accuracy
        table.add_row(
            name,
            str(recipe.image_size or "default"),
            f"{accs['pretrained']:.4f}",
            f"{accs['random']:.4f}",
            f"{100 * (accs['pretrained'] - accs['random']):+.1f}",
            f"{time.perf_counter() - tic:.0f}",
        )
    Console(width=140).print(table)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
