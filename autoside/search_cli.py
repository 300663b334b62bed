"""``autoside search`` and ``autoside pareto``: thin layers over :func:`autoside.search.search` and
:func:`autoside.search.open_search`."""

from __future__ import annotations

import argparse
import json

from autoside.cli import command
from autoside.results import DEFAULT_ROOT


def _search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("space", nargs="?", help="search space YAML (see search_spaces/)")
    p.add_argument("recipe", nargs="?", help="trial recipe YAML (see trials/)")
    p.add_argument("--num-samples", type=int, help="trials to run in total (default 8)")
    p.add_argument("--max-concurrent", type=int, help="trials running at the same time (default 2)")
    p.add_argument("--memory-budget", help="hard peak training memory budget per trial, e.g. 4GiB "
                   "(default: the recipe's memory_budget)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs each trial asks Ray for (default 1)")
    p.add_argument("--gpus-per-trial", help="'auto' (the fraction the predicted memory needs) or a number")
    p.add_argument("--sampler", choices=["tpe", "nsga2", "gp", "random"], help="Optuna sampler (default tpe)")
    p.add_argument("--scheduler", choices=["none", "asha"], help="early stopping (default none)")
    p.add_argument("--objectives", help="accuracy,memory (default) or accuracy,memory,params")
    p.add_argument("--address", help="Ray cluster: 'auto' for a running one (default: a local one on 127.0.0.1)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///<root>/mlflow.db)")
    p.add_argument("--name", help="name of the search (default: <space>-<recipe>-<time>)")
    p.add_argument("--root", help=f"folder of the searches (default ./{DEFAULT_ROOT})")
    p.add_argument("--resume", metavar="NAME", help="continue the search NAME whose driver was stopped or killed")
    p.add_argument("--seed", type=int, help="sampler seed (default 0)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no live progress")


@command("search", "search side networks under a memory budget (Ray Tune + Optuna, tracked in MLflow)")(_search_args)
def _search(args: argparse.Namespace) -> int:
    from autoside.errors import ConfigError
    from autoside.search import result_json, search

    if args.resume and (args.space or args.recipe):
        raise ConfigError("--resume NAME continues a search with its own space and recipe; give no SPACE/RECIPE")
    if not args.resume and not (args.space and args.recipe):
        raise ConfigError("give a SPACE and a RECIPE, e.g. autoside search search_spaces/demo.yaml trials/demo.yaml "
                          "(or --resume NAME)")
    keys = ("num_samples", "max_concurrent", "memory_budget", "cpus_per_trial", "gpus_per_trial", "sampler",
            "scheduler", "address", "tracking_uri", "name", "root", "resume", "seed")
    options = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    if args.objectives:
        options["objectives"] = tuple(o.strip() for o in args.objectives.split(",") if o.strip())
    options["progress"] = not (args.quiet or args.json)
    result = search(args.space, args.recipe, **options)
    if args.json:
        print(json.dumps(result_json(result), indent=2))
    else:
        print_summary(result)
    return 0


def print_summary(result) -> None:  # noqa: ANN001 - SearchResult
    from rich.console import Console
    from rich.table import Table

    from autoside.tracking import ui_command
    from autoside.units import format_bytes

    console = Console()
    counts = result.counts()
    knee = result.knee()
    table = Table(title=f"Pareto set of {result.name} (budget {format_bytes(result.budget_bytes)})")
    for col in ("trial", "family", "params", "val acc", "test acc", "peak memory", "trainable", ""):
        table.add_column(col)
    for r in result.pareto:
        params = ", ".join(f"{k.split('/', 1)[-1]}={_short(v)}" for k, v in r.params.items() if k != "family")
        table.add_row(r.trial_id, str(r.config.get("family")), params or "-", f"{r.accuracy:.4f}",
                      f"{r.metrics.get('test_accuracy', float('nan')):.4f}", format_bytes(r.memory),
                      f"{r.metrics.get('trainable_params', 0):,}", "knee" if r is knee else "")
    console.print(table)
    console.print(f"{len(result.trials)} trials: {counts['ok']} ok, {counts['infeasible']} infeasible, "
                  f"{counts['pruned']} pruned, {counts['failed']} failed; hypervolume {result.hypervolume:.4f}")
    console.print(f"search folder: {result.dir}")
    console.print(f"MLflow:        {ui_command(result.tracking_uri)}   (experiment {result.name!r})", soft_wrap=True)
    console.print(f"Optuna:        optuna-dashboard {result.optuna_storage}", soft_wrap=True)


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _pareto_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the search's name")
    p.add_argument("--root", default=None, help=f"folder of the searches (default ./{DEFAULT_ROOT})")
    p.add_argument("--budget", help="also print the best trial that fits this memory budget, e.g. 2GiB")
    p.add_argument("--plot", help="write the accuracy/memory plot to this PNG")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


@command("pareto", "show the accuracy/memory Pareto set of a search")(_pareto_args)
def _pareto(args: argparse.Namespace) -> int:
    from autoside.pareto import plot
    from autoside.search import open_search, result_json
    from autoside.units import format_bytes

    result = open_search(args.name, root=args.root)
    best = result.best(args.budget) if args.budget else None
    if args.plot:
        plot(result.trials, result.pareto, args.plot, budget_bytes=result.budget_bytes, title=result.name)
    if args.json:
        data = result_json(result)
        if best is not None:
            data["best"] = {"trial_id": best.trial_id, "val_accuracy": best.accuracy, "peak_memory_bytes": best.memory}
        print(json.dumps(data, indent=2))
        return 0
    print_summary(result)
    if best is not None:
        print(f"best within {args.budget}: trial {best.trial_id} ({best.config.get('family')}), val acc "
              f"{best.accuracy:.4f}, {format_bytes(best.memory)}")
    return 0
