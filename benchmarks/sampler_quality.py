"""Sampler quality on the demo space: hypervolume after 24 trials, the default sampler (TPE) vs random search.

The space is the README's demo space (``search_spaces/demo.yaml``: a linear probe, LoSA and DTL/DTL+, 2824
configurations) on the demo recipe (``trials/demo.yaml``: the shipped ``vit12_fmnist`` on Animal-MNIST, batch 32 at
28 px, the 24 MiB budget) made cheap: fewer images and one epoch (``--set``-style overrides in ``CHEAP``). Batch,
image size and model are the demo's, so the measured memories and the budget wall are the demo's too.

Each configuration a sampler proposes is trained for real, once, and cached in a table (``--table``; a configuration
proposed by two samplers or seeds is looked up the second time): its memory is predicted from dry steps and it is
refused when over the budget, else trained under the budget (stopped at it: infeasible), as in a search. Each
sampler runs ``--trials`` trials through autoside's own :class:`~autoside.tune.sampler.AutosideOptunaSearch` (the same
suggest / de-duplication / constraint / tell code as a real search, without Ray), for ``--seeds`` seeds; the
hypervolume is autoside's normalised one (accuracy from 0, memory divided by the budget).

    python benchmarks/sampler_quality.py --trials 24 --seeds 5 --samplers tpe,random
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHEAP = ["dataset.train_size=160", "dataset.val_size=96", "dataset.test_size=32", "epochs=1", "warmup_epochs=0"]


class Table:
    """Measured (accuracy, peak memory) per configuration, trained on first use and kept in a JSON file."""

    def __init__(self, path: Path) -> None:
        from autoside.recipe import load_recipe
        from autoside.tune.space import load_space

        self.path = path
        self.rows = json.loads(path.read_text()) if path.is_file() else {}
        self.space = load_space(ROOT / "search_spaces" / "demo.yaml")
        self.recipe = load_recipe(ROOT / "trials" / "demo.yaml", CHEAP)
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

    def _measure(self, config) -> dict:  # noqa: ANN001
        import torch

        from autoside.data import load_task
        from autoside.memory.meter import MemoryBudgetExceeded
        from autoside.memory.predict import predict_peak_memory
        from autoside.train import build_model, train_model

        torch.set_num_threads(1)
        tic = time.perf_counter()
        self.task = self.task or load_task(self.recipe.dataset)
        budget = self.recipe.budget_bytes
        model = build_model(self.recipe, self.task.num_classes, config)
        predicted = predict_peak_memory(model, self.task, self.recipe).predicted_bytes
        row = {"status": "infeasible", "peak_memory_bytes": predicted, "memory_source": "predicted"}
        if predicted <= budget:
            try:
                r = train_model(model, self.task, self.recipe, device=torch.device("cpu"))
                row = {"status": "ok", "val_accuracy": r.val_accuracy, "peak_memory_bytes": r.peak_memory_bytes}
            except MemoryBudgetExceeded as exc:
                row = {"status": "infeasible", "peak_memory_bytes": exc.used_bytes, "memory_source": "stopped"}
        return {**row, "seconds": time.perf_counter() - tic}


@dataclass
class Rec:
    trial_id: str
    status: str
    metrics: dict


def run_sampler(name: str, seed: int, trials: int, table: Table) -> float:
    import optuna

    from autoside.tune.pareto import search_hypervolume
    from autoside.tune.sampler import AutosideOptunaSearch, make_sampler

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    budget = table.recipe.budget_bytes
    searcher = AutosideOptunaSearch(
        table.space,
        objectives=("accuracy", "memory"),
        sampler=make_sampler(name, seed=seed, num_samples=trials),
        storage=optuna.storages.InMemoryStorage(),
        study_name="b",
        budget_bytes=budget,
    )
    records = []
    for i in range(trials):
        config = searcher.suggest(str(i))
        row = table(config["params"])
        result = {"autoside_status": row["status"], "peak_memory_bytes": row["peak_memory_bytes"]}
        if row["status"] == "ok":
            result["val_accuracy"] = row["val_accuracy"]
        searcher.on_trial_complete(str(i), result)
        records.append(Rec(f"{i:04d}", row["status"], result))
    return search_hypervolume(records, budget_bytes=budget)


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--samplers", default="tpe,random")
    parser.add_argument("--table", type=Path, default=ROOT / "benchmarks/results/sampler_table_demo.json")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.table.parent.mkdir(parents=True, exist_ok=True)
    table = Table(args.table)
    out = {"space": "demo", "cheap_recipe": CHEAP, "budget_bytes": table.recipe.budget_bytes, "samplers": {}}
    out.update(trials=args.trials, seeds=args.seeds)
    names = args.samplers.split(",")
    hvs: dict[str, list[float]] = {name: [] for name in names}
    for seed in range(args.seeds):  # seeds outermost: a run cut short still compares the samplers on equal terms
        for name in names:
            hvs[name].append(run_sampler(name, seed, args.trials, table))
            print(f"{name} seed {seed}: hypervolume {hvs[name][-1]:.4f} ({table.trained} trained so far)", flush=True)
    for name in names:
        mean, stdev = statistics.mean(hvs[name]), statistics.stdev(hvs[name])
        out["samplers"][name] = {"mean": mean, "stdev": stdev, "all": hvs[name]}
        print(f"{name:7s} hypervolume after {args.trials} trials: {mean:.4f} +- {stdev:.4f} over {args.seeds} seeds")
    if "tpe" in out["samplers"] and "random" in out["samplers"]:
        tpe, rnd = out["samplers"]["tpe"], out["samplers"]["random"]
        out["tpe_minus_random_in_random_stdevs"] = (tpe["mean"] - rnd["mean"]) / (rnd["stdev"] or float("nan"))
        print(f"TPE - random = {out['tpe_minus_random_in_random_stdevs']:.2f} standard deviations of random")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
