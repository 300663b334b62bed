"""Sampler quality on the demo space: hypervolume after 24 trials, the default sampler vs TPE and random search.

The space is the README's demo space (``search_spaces/demo.yaml``: a linear probe, LoSA and DTL/DTL+, 2824
configurations) on the demo recipe (``trials/demo.yaml``: the shipped ``vit12_fmnist`` on Animal-MNIST, 800 train
images, 8 epochs, batch 32 at 28 px, the 24 MiB budget; ``--set`` overrides it as ``autoside search --set``) with a
validation split of ``--val-size`` images, 2000 by default instead of the recipe's 200: at 200 the binomial noise of
an accuracy (about 0.03) exceeds the differences among the good configurations, so the best a sampler can do is
collect lucky draws and every sampler's figure is mostly that noise (``--val-size 200`` measures it as the demo runs).

Each configuration a sampler proposes is trained for real, once, as a search trial trains it (on the stored backbone
features, through the feature cache), and kept in a table (``--table``; a configuration proposed by two samplers or
seeds is looked up the second time): its memory is predicted from dry steps and it is refused when over the budget,
else trained under the budget (stopped at it: infeasible). Each
sampler runs ``--trials`` trials through autoside's own :class:`~autoside.tune.sampler.AutosideOptunaSearch` (the same
suggest / de-duplication / constraint / tell code as a real search, without Ray), for ``--seeds`` seeds; the
hypervolume is autoside's normalised one (accuracy from 0, memory divided by the budget).

    python benchmarks/sampler_quality.py --trials 24 --seeds 5 --samplers auto,tpe,random

The figures: each sampler's mean and standard deviation over the seeds, its lead over random in random's standard
deviations and in standard errors of the difference of the means, and the hypervolume of the best front of every
configuration in the table (what no sampler can exceed on the configurations measured).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Table:
    """Measured (accuracy, peak memory) per configuration, trained on first use and kept in a JSON file."""

    def __init__(self, path: Path, overrides: list[str]) -> None:
        from autoside.recipe import load_recipe
        from autoside.tune.space import load_space

        self.path = path
        self.rows = json.loads(path.read_text()) if path.is_file() else {}
        self.space = load_space(ROOT / "search_spaces" / "demo.yaml")
        self.recipe = load_recipe(ROOT / "trials" / "demo.yaml", overrides)
        self.task = None
        self.trained = 0

    def __call__(self, params: dict) -> dict:
        from autoside.tune.dedup import config_key

        config = self.space.config_from_params(params)
        key = config_key(config.to_dict())
        if key not in self.rows:
            self.rows[key] = self._measure(config)
            self.trained += 1
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.rows, indent=1))
            tmp.replace(self.path)
        return self.rows[key]

    def best_hypervolume(self) -> float:
        from autoside.tune.pareto import search_hypervolume

        return search_hypervolume(
            [record(str(i), row) for i, row in enumerate(self.rows.values())], budget_bytes=self.recipe.budget_bytes
        )

    def _measure(self, config) -> dict:  # noqa: ANN001
        """As a search trial measures it (:func:`autoside.tune.trial.execute_trial`): on stored features where the
        family reads them, refused when its predicted peak is over the budget, else trained and stopped at it."""
        import torch

        from autoside.data import load_task
        from autoside.memory.meter import MemoryBudgetExceeded
        from autoside.memory.predict import predict_peak_memory
        from autoside.train import prepare_trial, train_model

        torch.set_num_threads(1)
        tic = time.perf_counter()
        cpu = torch.device("cpu")
        self.task = self.task or load_task(self.recipe.dataset, image_size=self.recipe.image_size)
        budget = self.recipe.budget_bytes
        prepared = prepare_trial(self.recipe, self.task, config, device=cpu)
        model, inputs, preprocess = prepared.model, prepared.task, prepared.preprocess
        predicted = predict_peak_memory(model, inputs, self.recipe, device=cpu, preprocess=preprocess).predicted_bytes
        row = {"status": "infeasible", "peak_memory_bytes": predicted, "memory_source": "predicted"}
        if predicted <= budget:
            try:
                r = train_model(model, inputs, self.recipe, device=cpu, preprocess=preprocess)
                row = {"status": "ok", "val_accuracy": r.val_accuracy, "peak_memory_bytes": r.peak_memory_bytes}
            except MemoryBudgetExceeded as exc:
                row = {"status": "infeasible", "peak_memory_bytes": exc.used_bytes, "memory_source": "stopped"}
        return {**row, "seconds": time.perf_counter() - tic}


@dataclass
class Rec:
    trial_id: str
    status: str
    metrics: dict


def record(trial_id: str, row: dict) -> Rec:
    """A table row as the trial result a search's searcher is told (an infeasible trial has no accuracy)."""
    result = {"autoside_status": row["status"], "peak_memory_bytes": row["peak_memory_bytes"]}
    if row["status"] == "ok":
        result["val_accuracy"] = row["val_accuracy"]
    return Rec(trial_id, row["status"], result)


def run_sampler(name: str, seed: int, trials: int, table: Table) -> float:
    import optuna

    from autoside.tune.pareto import search_hypervolume
    from autoside.tune.sampler import AutosideOptunaSearch, make_sampler

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    budget = table.recipe.budget_bytes
    searcher = AutosideOptunaSearch(
        table.space,
        objectives=("accuracy", "memory"),
        sampler=make_sampler(name, seed=seed, num_samples=trials, space=table.space),
        storage=optuna.storages.InMemoryStorage(),
        study_name="b",
        budget_bytes=budget,
    )
    records = []
    for i in range(trials):
        config = searcher.suggest(str(i))
        rec = record(f"{i:04d}", table(config["params"]))
        searcher.on_trial_complete(str(i), rec.metrics)
        records.append(rec)
    return search_hypervolume(records, budget_bytes=budget)


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--samplers", default="auto,tpe,random")
    parser.add_argument("--val-size", type=int, default=2000, help="validation images (the demo recipe has 200)")
    parser.add_argument("--table", type=Path, help="default: results/sampler_table_demo_val<VAL_SIZE>.json")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--set", action="append", default=[], help="a recipe override, as `autoside search --set`")
    args = parser.parse_args()
    overrides = [f"dataset.val_size={args.val_size}", *args.set]  # a --set of the same key wins
    args.table = args.table or ROOT / f"benchmarks/results/sampler_table_demo_val{args.val_size}.json"
    args.table.parent.mkdir(parents=True, exist_ok=True)
    table = Table(args.table, overrides)
    out = {"space": "demo", "recipe_overrides": overrides, "budget_bytes": table.recipe.budget_bytes, "samplers": {}}
    out.update(trials=args.trials, seeds=args.seeds)
    names = args.samplers.split(",")
    hvs: dict[str, list[float]] = {name: [] for name in names}
    for seed in range(args.seeds):  # seeds outermost: a run cut short still compares the samplers on equal terms
        for name in names:
            hvs[name].append(run_sampler(name, seed, args.trials, table))
            print(f"{name} seed {seed}: hypervolume {hvs[name][-1]:.4f} ({table.trained} trained so far)", flush=True)
    for name in names:
        mean = statistics.mean(hvs[name])
        stdev = statistics.stdev(hvs[name]) if len(hvs[name]) > 1 else float("nan")  # one seed: no deviation
        out["samplers"][name] = {"mean": mean, "stdev": stdev, "all": hvs[name]}
        print(f"{name:7s} hypervolume after {args.trials} trials: {mean:.4f} +- {stdev:.4f} over {args.seeds} seeds")
    rnd = out["samplers"].get("random")
    for name, row in out["samplers"].items():
        if rnd is not None and name != "random" and args.seeds > 1:
            lead = row["mean"] - rnd["mean"]
            row["lead_in_random_stdevs"] = lead / rnd["stdev"]
            row["lead_in_standard_errors"] = lead / ((row["stdev"] ** 2 + rnd["stdev"] ** 2) / args.seeds) ** 0.5
            print(
                f"{name} - random = {lead:.4f}: {row['lead_in_random_stdevs']:.2f} standard deviations of random, "
                f"{row['lead_in_standard_errors']:.2f} standard errors of the difference"
            )
    out["best_front_of_table"] = table.best_hypervolume()
    out["configurations_in_table"] = len(table.rows)
    print(f"best front of all {len(table.rows)} configurations in the table: {out['best_front_of_table']:.4f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
