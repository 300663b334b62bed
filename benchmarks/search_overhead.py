"""Overhead of autoside's search machinery per trial: the same trial run directly vs through ``autoside.search``.

Direct: ``build_model`` + ``train_model`` in this process, ``--trials`` times. Search: a space with one fixed
configuration (so every trial is that same trial), ``--trials`` trials one at a time on a fresh local Ray cluster,
with everything on: memory prediction under a budget, MLflow parent and nested runs, per-epoch logging, export of
the side network, result files, the Optuna study, the Pareto set and plot at the end.

Reported: the direct trial time; the *steady-state* overhead per trial (interval between consecutive trial
completions minus the direct trial time: scheduling, prediction, MLflow, export); the *one-time* cost (Ray start,
pre-flight, first worker process) and the overhead per trial amortised over the whole search. The acceptance bar is
steady-state overhead <= 10 % of a 30-second trial.

    python benchmarks/search_overhead.py --epochs 6 --trials 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

RECIPE = {
    "name": "overhead",
    "dataset": {"name": "animal_mnist", "train_size": 800, "val_size": 200, "test_size": 500},
    "backbone": {"name": "tf_efficientnet_lite0", "weights": "pretrained"},
    "image_size": 64,
    "epochs": 6,
    "batch_size": 64,
    "lr": 0.003,
    "warmup_epochs": 0,
    "device": "cpu",
    "threads": 1,
}
SPACE = {"name": "fixed", "families": {"linear": {"dropout": 0.1}}}


def direct(recipe: dict, trials: int) -> list[float]:
    import torch

    from autoside.data import load_task
    from autoside.recipe import recipe_from_dict
    from autoside.train import build_model, train_model
    from autoside.tune.space import space_from_dict

    torch.set_num_threads(1)
    r = recipe_from_dict(recipe)
    task = load_task(r.dataset)
    config = space_from_dict(SPACE).config_from_params({"family": "linear"})
    times = []
    for _ in range(trials):
        tic = time.perf_counter()
        model = build_model(r, task.num_classes, config)
        train_model(model, task, r, device=torch.device("cpu"))
        times.append(time.perf_counter() - tic)
    return times


def through_search(recipe: dict, trials: int, root: Path) -> dict:
    import autoside

    tic = time.perf_counter()
    result = autoside.search(
        SPACE,
        recipe,
        num_samples=trials,
        max_concurrent=1,
        memory_budget="2GiB",
        root=str(root),
        name="overhead",
        progress=False,
    )
    total = time.perf_counter() - tic
    finished = sorted(r.raw["finished_at"] for r in result.trials)
    return {
        "total_s": total,
        "finished_at": finished,
        "statuses": [r.status for r in result.trials],
        "prediction_s": [r.raw.get("memory_prediction", {}).get("seconds") for r in result.trials],
        "trial_wall_s": [r.raw.get("wall_time_s") for r in result.trials],
        "start": time.time() - total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    recipe = {**RECIPE, "epochs": args.epochs}
    d = direct(recipe, args.trials)
    with tempfile.TemporaryDirectory() as tmp:
        s = through_search(recipe, args.trials, Path(tmp))
    t_direct = statistics.median(d)
    intervals = [b - a for a, b in zip(s["finished_at"], s["finished_at"][1:])]
    steady = statistics.median(intervals) - t_direct if intervals else float("nan")
    first = s["finished_at"][0] - s["start"]
    amortised = (s["total_s"] - args.trials * t_direct) / args.trials
    numbers = {
        "trials": args.trials,
        "direct_trial_s": t_direct,
        "direct_all_s": d,
        "search_total_s": s["total_s"],
        "steady_overhead_per_trial_s": steady,
        "steady_overhead_pct_of_30s": 100 * steady / 30,
        "steady_overhead_pct_of_this_trial": 100 * steady / t_direct,
        "first_trial_done_after_s": first,
        "one_time_s": first - t_direct - max(steady, 0),
        "amortised_overhead_per_trial_s": amortised,
        "prediction_s": s["prediction_s"],
        "statuses": s["statuses"],
    }
    print(json.dumps(numbers, indent=2))
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")
    ok = steady <= 3.0
    print(
        f"steady-state overhead {steady:.2f} s per trial = {numbers['steady_overhead_pct_of_30s']:.1f} % of a "
        f"30-second trial ({'OK' if ok else 'OVER'} the 10 % bar); one-time {numbers['one_time_s']:.1f} s; "
        f"amortised over {args.trials} trials {amortised:.2f} s per trial"
    )


if __name__ == "__main__":
    main()
