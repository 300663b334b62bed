"""``autoside search`` and ``autoside pareto``: thin layers over :func:`autoside.tune.api.search` and
:func:`autoside.tune.results.open_search`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from autoside.cli.cache import add_cache_args
from autoside.cli.registry import command
from autoside.tune.results import DEFAULT_ROOT


def _search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("space", nargs="?", help="search space YAML (see search_spaces/)")
    p.add_argument("recipe", nargs="?", help="trial recipe YAML (see trials/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key for this search, e.g. --set epochs=3 (as in autoside train)",
    )
    p.add_argument("--num-samples", type=int, help="trials to run in total (default 8)")
    p.add_argument("--max-concurrent", type=int, help="trials running at the same time (default 2)")
    p.add_argument(
        "--memory-budget",
        help="hard peak training memory budget per trial, e.g. 4GiB (default: the recipe's memory_budget)",
    )
    p.add_argument("--cpus-per-trial", type=float, help="CPUs each trial asks Ray for (default 1)")
    p.add_argument("--gpus-per-trial", help="'auto' (the fraction the predicted memory needs) or a number")
    p.add_argument(
        "--gpus-per-node",
        type=float,
        help="GPUs per GPU worker, for clusters whose GPU workers are not up yet (default: the autoscaler's node "
        "types, else the nodes alive now)",
    )
    p.add_argument("--gpu-memory", help="memory of one GPU, e.g. 80GiB (default: asked from a GPU worker)")
    p.add_argument(
        "--cluster-config", help="autoscaler config to read node types from (default ~/ray_bootstrap_config.yaml)"
    )
    p.add_argument(
        "--sampler",
        choices=["auto", "family-gp", "tpe", "nsga2", "gp", "random"],
        help="Optuna sampler (default auto: family-gp, a GP per family and a bandit over families, for up to 200 "
        "trials; tpe above)",
    )
    p.add_argument(
        "--scheduler",
        choices=["none", "asha", "moasha"],
        help="early stopping: moasha (by Pareto rank over accuracy and memory), asha (by accuracy alone) or none "
        "(default none)",
    )
    p.add_argument("--objectives", help="accuracy,memory (default) or accuracy,memory,params")
    p.add_argument("--address", help="Ray cluster: 'auto' for a running one (default: a local one on 127.0.0.1)")
    p.add_argument(
        "--working-dir",
        help="folder shipped to every trial as its working directory, so a recipe's relative paths (image folders, "
        "checkpoints) mean the same on every node (default: the current folder with --address; 'none': ship nothing)",
    )
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default sqlite:///<root>/mlflow.db); on a multi-node cluster an mlflow server "
        "(http://HOST:5000) or a file store on a folder every node mounts",
    )
    p.add_argument("--name", help="name of the search (default: <space>-<recipe>-<time>)")
    p.add_argument("--root", help=f"folder of the searches (default ./{DEFAULT_ROOT})")
    p.add_argument("--resume", metavar="NAME", help="continue the search NAME whose driver was stopped or killed")
    p.add_argument("--seed", type=int, help="sampler seed (default 0)")
    p.add_argument("--skip-bad-videos", action="store_true", help="skip (and count) bad videos of a video dataset")
    p.add_argument(
        "--grad-checkpointing",
        action="store_true",
        help="every trial whose family offers it recomputes activations in backward (grad_checkpointing=true)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no live progress")
    add_cache_args(p)


@command("search", "search side networks under a memory budget (Ray Tune + Optuna, tracked in MLflow)")(_search_args)
def _search(args: argparse.Namespace) -> int:
    from autoside.errors import ConfigError
    from autoside.recipe import load_recipe
    from autoside.tune.api import result_json, search

    if args.resume and (args.space or args.recipe):
        raise ConfigError("--resume NAME continues a search with its own space and recipe; give no SPACE/RECIPE")
    if not args.resume and not (args.space and args.recipe):
        raise ConfigError(
            "give a SPACE and a RECIPE, e.g. autoside search search_spaces/demo.yaml trials/demo.yaml "
            "(or --resume NAME)"
        )
    if args.resume and args.overrides:
        raise ConfigError("--set changes the recipe of a new search; a resumed search keeps its own recipe")
    keys = (
        "num_samples",
        "max_concurrent",
        "memory_budget",
        "cpus_per_trial",
        "gpus_per_trial",
        "gpus_per_node",
        "gpu_memory",
        "cluster_config",
        "sampler",
        "scheduler",
        "address",
        "tracking_uri",
        "name",
        "root",
        "resume",
        "seed",
        "cache_dir",
        "working_dir",
    )
    options = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    if args.objectives:
        options["objectives"] = tuple(o.strip() for o in args.objectives.split(",") if o.strip())
    options["progress"] = not (args.quiet or args.json)
    if args.no_cache:
        options["no_cache"] = True
    overrides = [*args.overrides, *(["dataset.skip_bad_videos=true"] if args.skip_bad_videos else [])]
    overrides += ["grad_checkpointing=true"] if args.grad_checkpointing else []
    recipe = load_recipe(args.recipe, overrides) if args.recipe else None
    result = search(args.space, recipe, **options)
    if args.json:
        print(json.dumps(result_json(result), indent=2))
    else:
        print_summary(result)
    return 0


def _choices(params: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    from autoside.errors import ConfigError
    from autoside.sidenets import config_from_dict
    from autoside.tune.space import shaping_choices

    try:
        unused = config_from_dict(config).unused_knobs()
    except (ConfigError, KeyError, TypeError):  # a record written before its family changed: show what was sampled
        unused = frozenset()
    return shaping_choices(params, unused)


def front_rows(front, knee) -> list[dict]:  # noqa: ANN001 - TrialRecords
    """One row per front member: the figures a user compares, the family and its key choices."""
    return [
        {
            "trial_id": r.trial_id,
            "family": r.config.get("family"),
            "choices": _choices(r.params, r.config),
            "val_accuracy": r.accuracy,
            "test_accuracy": r.metrics.get("test_accuracy"),
            "peak_memory_bytes": r.memory,
            "trainable_params": r.metrics.get("trainable_params"),
            "images_per_s": r.metrics.get("train_images_per_s"),
            "knee": r is knee,
        }
        for r in front
    ]


def print_summary(result, front=None, knee=None, budget_bytes=None) -> None:  # noqa: ANN001 - SearchResult
    from rich.console import Console
    from rich.table import Table

    from autoside.tune.tracking import ui_command
    from autoside.units import format_bytes

    # Piped output (CI logs, files) gets a wide table instead of rich's 80-column default.
    console = Console(width=None if sys.stdout.isatty() else 160)
    counts = result.counts()
    if front is None:
        front, knee = result.pareto, result.knee()
    budget_bytes = result.budget_bytes if budget_bytes is None else budget_bytes
    table = Table(title=f"Pareto set of {result.name} (budget {format_bytes(budget_bytes)})")
    for col in ("trial", "family", "choices", "val acc", "test acc", "peak memory", "trainable", "images/s", ""):
        table.add_column(col)
    for row in front_rows(front, knee):
        choices = ", ".join(f"{k}={_short(v)}" for k, v in row["choices"].items())
        table.add_row(
            row["trial_id"],
            str(row["family"]),
            choices or "-",
            f"{row['val_accuracy']:.4f}",
            f"{row['test_accuracy'] or float('nan'):.4f}",
            format_bytes(row["peak_memory_bytes"]),
            f"{row['trainable_params'] or 0:,}",
            f"{row['images_per_s'] or 0:.0f}",
            "knee" if row["knee"] else "",
        )
    console.print(table)
    console.print(
        f"{len(result.trials)} trials: {counts['ok']} ok, {counts['infeasible']} infeasible, "
        f"{counts['pruned']} pruned, {counts['failed']} failed; hypervolume {result.hypervolume:.4f}"
    )
    console.print(f"search folder: {result.dir}")
    console.print(f"MLflow:        {ui_command(result.tracking_uri)}   (experiment {result.name!r})", soft_wrap=True)
    console.print(f"Optuna:        optuna-dashboard {result.optuna_storage}", soft_wrap=True)


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _pareto_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the search's name")
    p.add_argument("--root", default=None, help=f"folder of the searches (default ./{DEFAULT_ROOT})")
    p.add_argument("--budget", help="leave out trials over this memory budget (e.g. 2GiB) and name the best that fits")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format")
    p.add_argument("--json", action="store_true", help="same as --format json")
    p.add_argument("--plot", help="write the accuracy/memory plot to this PNG")


@command("pareto", "show the accuracy/memory Pareto set of a search, its knee and the best trial under a budget")(
    _pareto_args
)
def _pareto(args: argparse.Namespace) -> int:
    import csv

    from autoside.tune.api import open_search, result_json
    from autoside.tune.pareto import knee_point, pareto_front, plot
    from autoside.units import format_bytes, parse_bytes

    result = open_search(args.name, root=args.root)
    budget = parse_bytes(args.budget, field="--budget")
    limit = min(b for b in (budget, result.budget_bytes) if b is not None) if budget or result.budget_bytes else None
    front = pareto_front(result.trials, result.objectives, limit)
    knee = knee_point(front, result.objectives)
    best = result.best(budget) if budget is not None else None
    if args.plot:
        plot(result.trials, front, args.plot, budget_bytes=limit, title=result.name)
    fmt = "json" if args.json else args.format
    rows = front_rows(front, knee)
    if fmt == "json":
        data = {**result_json(result), "budget_bytes": limit, "pareto": rows}
        if best is not None:
            data["best"] = {"trial_id": best.trial_id, "val_accuracy": best.accuracy, "peak_memory_bytes": best.memory}
        print(json.dumps(data, indent=2))
    elif fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["trial_id"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "choices": json.dumps(row["choices"], sort_keys=True)})
    else:
        print_summary(result, front, knee, limit)
        if best is not None:
            print(
                f"best within {args.budget}: trial {best.trial_id} ({best.config.get('family')}), val acc "
                f"{best.accuracy:.4f}, {format_bytes(best.memory)}"
            )
    return 0
