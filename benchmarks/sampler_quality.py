"""Sampler quality on a fixed cheap space: hypervolume after N trials, TPE / NSGA-II / GP vs random search.

The space is discrete (every knob a categorical), so it can be evaluated exhaustively once: each configuration is
trained for real (tiny random-weight ViT, ``digits`` at 32 px, 2 epochs, CPU) and its accuracy and measured peak
memory stored in a table (cached in ``--table``). Each sampler then runs ``--trials`` trials against the table
through autoside's own :class:`~autoside.tune.sampler.AutosideOptunaSearch` (the same suggest / constraint / tell code
as a real search, without Ray), for ``--seeds`` seeds; the hypervolume is autoside's normalised one (accuracy from
0, memory divided by the budget), so 1.0 would be 100 % accuracy at zero memory. The table's own front gives the
best hypervolume any search could reach.

    python benchmarks/sampler_quality.py --trials 15 --seeds 10
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

SPACE = {
    "name": "cheap",
    "families": {
        "linear": {"dropout": {"type": "categorical", "choices": [0.0, 0.3]}},
        "full": {},
        "losa": {
            "channel_rank": {"type": "categorical", "choices": [4, 16, 64]},
            "token_rank": {"type": "categorical", "choices": [2, 4]},
            "layer_stride": {"type": "categorical", "choices": [1, 3]},
        },
        "dtl": {
            "rank": {"type": "categorical", "choices": [1, 4, 16]},
            "merge_from": {"type": "categorical", "choices": [1, 6, 12]},
            "kernel_size": {"type": "categorical", "choices": [0, 3]},
        },
    },
}
RECIPE = {
    "name": "cheap",
    "dataset": {"name": "digits", "train_size": 512, "val_size": 256, "test_size": 64},
    "backbone": {"name": "vit_tiny_patch16_224", "weights": "random"},
    "image_size": 32,
    "epochs": 2,
    "batch_size": 32,
    "lr": 0.003,
    "warmup_epochs": 0,
    "device": "cpu",
    "threads": 1,
}


def grid() -> list[dict]:
    out = []
    for family, knobs in SPACE["families"].items():
        names = list(knobs)
        for values in itertools.product(*[knobs[n]["choices"] for n in names]):
            out.append({"family": family, **{f"{family}/{n}": v for n, v in zip(names, values)}})
    return out


def key(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def build_table(path: Path) -> dict[str, dict]:
    import torch

    from autoside.data import load_task
    from autoside.recipe import recipe_from_dict
    from autoside.train import build_model, train_model
    from autoside.tune.space import space_from_dict

    table = json.loads(path.read_text()) if path.is_file() else {}
    torch.set_num_threads(1)
    recipe = recipe_from_dict(RECIPE)
    task = load_task(recipe.dataset)
    space = space_from_dict(SPACE)
    for params in grid():
        if key(params) in table:
            continue
        tic = time.perf_counter()
        model = build_model(recipe, task.num_classes, space.config_from_params(params))
        r = train_model(model, task, recipe, device=torch.device("cpu"))
        table[key(params)] = {
            "val_accuracy": r.val_accuracy,
            "peak_memory_bytes": r.peak_memory_bytes,
            "seconds": time.perf_counter() - tic,
        }
        path.write_text(json.dumps(table, indent=1))
    return table


@dataclass
class Rec:
    trial_id: str
    status: str
    metrics: dict


def run_sampler(name: str, seed: int, trials: int, table: dict, budget: int) -> float:
    import optuna

    from autoside.tune.pareto import search_hypervolume
    from autoside.tune.sampler import AutosideOptunaSearch, make_sampler
    from autoside.tune.space import space_from_dict

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    searcher = AutosideOptunaSearch(
        space_from_dict(SPACE),
        objectives=("accuracy", "memory"),
        sampler=make_sampler(name, seed=seed, num_samples=trials),
        storage=optuna.storages.InMemoryStorage(),
        study_name="b",
        budget_bytes=budget,
    )
    records = []
    for i in range(trials):
        config = searcher.suggest(str(i))
        m = table[key(config["params"])]
        status = "ok" if m["peak_memory_bytes"] <= budget else "infeasible"
        result = {
            "autoside_status": status,
            "val_accuracy": m["val_accuracy"] if status == "ok" else 0.0,
            "peak_memory_bytes": m["peak_memory_bytes"],
        }
        searcher.on_trial_complete(str(i), result)
        records.append(Rec(f"{i:04d}", status, result))
    return search_hypervolume(records, budget_bytes=budget)


def main() -> None:
    import warnings

    from autoside.tune.pareto import search_hypervolume

    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--samplers", default="random,tpe,nsga2,gp")
    parser.add_argument("--table", type=Path, default=Path("benchmarks/results/sampler_table.json"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.table.parent.mkdir(parents=True, exist_ok=True)
    table = build_table(args.table)
    mems = sorted(v["peak_memory_bytes"] for v in table.values())
    budget = mems[int(0.75 * len(mems))]  # a quarter of the space does not fit
    best = search_hypervolume(
        [Rec(k, "ok" if v["peak_memory_bytes"] <= budget else "infeasible", v) for k, v in table.items()],
        budget_bytes=budget,
    )
    out = {
        "configs": len(table),
        "budget_bytes": budget,
        "trials": args.trials,
        "seeds": args.seeds,
        "best_possible_hv": best,
        "samplers": {},
    }
    for name in args.samplers.split(","):
        hvs = [run_sampler(name, seed, args.trials, table, budget) for seed in range(args.seeds)]
        out["samplers"][name] = {
            "mean": statistics.mean(hvs),
            "stdev": statistics.stdev(hvs) if len(hvs) > 1 else 0,
            "all": hvs,
        }
        print(
            f"{name:7s} hypervolume after {args.trials} trials: {statistics.mean(hvs):.4f} +- "
            f"{statistics.stdev(hvs) if len(hvs) > 1 else 0:.4f} (best possible {best:.4f})",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
