"""The ``autoside`` command: a thin layer over the Python API.

Errors meant for the user (:class:`~autoside.errors.AutosideError`) print one line and exit non-zero (2 for usage
and config errors, like argparse); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from autoside.errors import AutosideError

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str):
    """Register ``fn(args) -> exit code`` as a subcommand; ``configure`` adds its arguments."""

    def wrap(configure: Callable[[argparse.ArgumentParser], None]):
        def register(run: Callable[[argparse.Namespace], int]):
            COMMANDS[name] = (help, configure, run)
            return run

        return register

    return wrap


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
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@command("train", "train one side network on a recipe and print accuracy and measured memory")(_train_args)
def _train(args: argparse.Namespace) -> int:
    from autoside.recipe import load_recipe
    from autoside.train import run_trial

    overrides = [*args.overrides, *([f"sidenet.name={args.sidenet}"] if args.sidenet else [])]
    recipe = load_recipe(args.recipe, overrides)
    result, _ = run_trial(recipe, progress=not args.no_progress and sys.stderr.isatty())
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
    rows = [
        ("val accuracy", f"{result.val_accuracy:.4f}"),
        ("test accuracy", f"{result.test_accuracy:.4f}"),
        ("peak training memory", f"{format_bytes(result.peak_memory_bytes)} ({result.memory_source})"),
        ("saved activations", format_bytes(result.saved_activation_bytes)),
        ("trainable parameters", f"{result.trainable_params:,}"),
        ("throughput", f"{result.train_images_per_s:.1f} images/s"),
        ("wall time", f"{result.wall_time_s:.1f} s"),
        ("device", result.device),
        ("torch", result.torch_version),
    ]
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)


def _no_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")


@command("datasets", "list datasets that work offline")(_no_args)
def _datasets(args: argparse.Namespace) -> int:
    from autoside.data import list_datasets

    rows = {name: info.description for name, info in list_datasets().items()}
    print(json.dumps(rows, indent=2) if args.json else "\n".join(f"{k:14s} {v}" for k, v in rows.items()))
    return 0


@command("backbones", "list backbones whose pretrained weights load offline")(_no_args)
def _backbones(args: argparse.Namespace) -> int:
    from autoside.backbones import offline_weights

    rows = {name: s.description for name, s in offline_weights().items()}
    print(json.dumps(rows, indent=2) if args.json else "\n".join(f"{k:24s} {v}" for k, v in rows.items()))
    if not args.json:
        print("any other timm model name works with weights: random, backbone.checkpoint=PATH or a cached download")
    return 0


@command("sidenets", "list registered side-network families and presets")(_no_args)
def _sidenets(args: argparse.Namespace) -> int:
    from autoside.sidenets import list_families, list_sidenets

    families, presets = list_families(), [n for n in list_sidenets() if n not in list_families()]
    if args.json:
        print(json.dumps({"families": families, "presets": presets}, indent=2))
    else:
        print("families: " + ", ".join(families))
        print("presets:  " + ", ".join(presets))
    return 0


def _pretrain_args(p: argparse.ArgumentParser) -> None:
    from autoside.pretrain import add_arguments

    add_arguments(p)


@command("pretrain", "pretrain a shipped backbone (vit12_fmnist, resnet4s_fmnist) on Fashion-MNIST from scratch")(
    _pretrain_args
)
def _pretrain(args: argparse.Namespace) -> int:
    from autoside.pretrain import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoside", description="Search side networks for frozen vision backbones.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, configure, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        configure(p)
        p.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _load_commands()
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except AutosideError as exc:
        print(f"autoside: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("autoside: interrupted", file=sys.stderr)
        return 130


def _load_commands() -> None:
    """Commands defined in other modules register themselves on import."""
    for module in ("autoside.search_cli", "autoside.export_cli"):
        try:
            __import__(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


if __name__ == "__main__":
    # Under ``python -m autoside.cli`` this file is ``__main__``; commands register on ``autoside.cli``.
    from autoside.cli import main as _main

    sys.exit(_main())
