"""What the feature cache saves, measured as a user meets it: whole searches with and without it, on one machine.

Sections, in this order (each is printed and written to ``--json`` as soon as it is measured, so a run cut short
keeps what finished; the machine's load average is recorded before and after each, since a shared machine's wall
times move with it):

1. ``losa_cached``: a ``--trials``-trial LoSA search (``autoside.search``: real Ray, Optuna, MLflow, ``--concurrent``
   trials at a time, one thread each) on ``--backbone`` (random weights) at ``--image-size`` px, Animal-MNIST
   ``--train`` images, ``--epochs`` epochs, into a fresh cache folder: a Ray task stores the features first, trials
   only read them and do not load the backbone. Also: the cache's build time and disk size per 1000 images.
2. ``epoch``: per-epoch training time of one cached LoSA trial (as a search trains it: stored fp16 features, sampled
   memory tracking) vs the *ideal*, the same side network on the same features already in RAM as float32 tensors
   with no memory tracking (the side network's work alone).
3. ``meter``: what measuring memory costs per family (linear, LoSA, DTL at their defaults): the CPU time of training
   with the sampled tracker vs with no tracker, ``--meter-repeats`` interleaved repeats, median; each trial as a
   search runs it (on stored features where the family reads them) on the demo recipe (``trials/demo.yaml``,
   2 epochs).
4. ``losa_uncached``: the same search with ``--no-cache`` (every trial runs the backbone).
5. ``demo_cached`` / ``demo_uncached``: the same for ``search_spaces/demo.yaml`` (linear, LoSA, DTL), with the
   random sampler by default (``--demo-sampler``) so that both searches train the same configurations.

All searches share one local Ray cluster started first (its start is in no figure) and the same sampler seed.

    nohup python -u benchmarks/cache_speedup.py --json benchmarks/results/cache_speedup_224.json > log 2>&1 &
    python benchmarks/cache_speedup.py --quick   # about a minute: a tiny ViT at 64 px, to check the script
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

LOSA_SPACE = {
    "name": "losa",
    "families": {
        "losa": {
            "channel_rank": {"type": "int", "low": 4, "high": 32, "log": True},
            "token_rank": {"type": "int", "low": 2, "high": 8, "log": True},
            "mixer_depth": {"type": "int", "low": 1, "high": 2},
            "layer_stride": {"type": "int", "low": 1, "high": 3},
            "pool": {"type": "categorical", "choices": ["cls", "mean"]},
        }
    },
}


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def bench_recipe(args: argparse.Namespace) -> dict:
    return {
        "name": "cache_speedup",
        "dataset": {"name": "animal_mnist", "train_size": args.train, "val_size": args.eval, "test_size": args.eval},
        "backbone": {"name": args.backbone, "weights": "random"},
        "image_size": args.image_size,
        "epochs": args.epochs,
        "batch_size": 32,
        "eval_batch_size": 50,
        "lr": 0.001,
        "warmup_epochs": 0.5,
        "device": "cpu",
        "threads": 1,
    }


def run_search(  # noqa: PLR0913
    space,  # noqa: ANN001
    recipe: dict,
    args: argparse.Namespace,
    *,
    cached: bool,
    cache_dir: str,
    name: str,
    sampler: str = "tpe",
) -> dict:
    """One search; its wall time and, per trial, the family, wall time and what the cache did."""
    import autoside

    tic = time.perf_counter()
    result = autoside.search(
        space,
        recipe,
        num_samples=args.trials,
        max_concurrent=args.concurrent,
        seed=0,
        sampler=sampler,
        root=str(Path(cache_dir).parent / "runs"),
        name=name,
        cache_dir=cache_dir,
        no_cache=not cached,
    )
    wall = time.perf_counter() - tic
    meta = json.loads((result.dir / "search.json").read_text())
    trials = [
        {
            "family": r.config.get("family"),
            "status": r.status,
            "wall_s": round(r.raw.get("wall_time_s", 0.0), 2),
            "val_accuracy": r.accuracy,
            "cache": (r.raw.get("feature_cache") or {}).get("status"),
            "backbone_loaded": (r.raw.get("feature_cache") or {}).get("backbone_loaded"),
            "setup_s": round((r.raw.get("feature_cache") or {}).get("setup_seconds", 0.0), 2),
        }
        for r in result.trials
    ]
    out = {"wall_s": round(wall, 1), "trials": trials, "warm": meta.get("feature_cache_warm", [])}
    loaded = sum(bool(t["backbone_loaded"]) for t in trials)
    print(
        f"{name}: {len(trials)} trials in {wall:.1f} s; families {sorted({t['family'] for t in trials})}; "
        f"backbone loaded in {loaded}; warm-up {out['warm']}",
        flush=True,
    )
    return out


def cache_size(cache_dir: str, images: int, warm: list[dict]) -> dict:
    from autoside.cache import FeatureStore

    rows = [r for r in FeatureStore(cache_dir).entries() if not r["key"].get("record")]
    record = sum(r["bytes"] for r in FeatureStore(cache_dir).entries() if r["key"].get("record"))
    taps = len({r["key"]["tap"] for r in rows})
    size = sum(r["bytes"] for r in rows)
    seconds = sum(w["seconds"] for w in warm)
    return {
        "taps": taps,
        "images": images,
        "build_s_per_1000_images": round(seconds / images * 1000, 1),
        "mib_per_1000_images": round(size / images * 1000 / 2**20, 1),
        "mib_per_1000_images_per_tap": round(size / images * 1000 / 2**20 / max(1, taps), 2),
        "weights_record_mib": round(record / 2**20, 1),
    }


def epoch_times(recipe, cache_dir: str, rounds: int) -> dict:  # noqa: ANN001
    """Per-epoch training time of a cached LoSA trial as a search trains it, untracked, and the ideal (medians of
    ``rounds`` interleaved rounds, after one untimed trial that stores the features if they are not yet)."""
    import torch

    from autoside.cache.entries import FeatureSplit
    from autoside.data import Task, load_task
    from autoside.memory.meter import MemoryMeter
    from autoside.train import prepare_trial, train_model

    recipe = replace(recipe, cache_dir=cache_dir, sidenet=replace(recipe.sidenet, name="losa"))
    task = load_task(recipe.dataset, image_size=recipe.image_size)
    cpu = torch.device("cpu")

    def in_ram(split: FeatureSplit) -> FeatureSplit:
        return FeatureSplit({k: torch.as_tensor(v).float() for k, v in split.feats.items()}, split.labels)

    def epoch(mode: str) -> float:
        prepared = prepare_trial(recipe, task, device=cpu)
        inputs = prepared.task
        if mode == "ideal":
            inputs = Task(task.name, task.classes, in_ram(inputs.train), in_ram(inputs.val), in_ram(inputs.test))
        meter = MemoryMeter(cpu, tracking="sampled" if mode == "as_trained" else "off")
        result = train_model(prepared.model, inputs, recipe, device=cpu, preprocess=prepared.preprocess, meter=meter)
        out["backbone_loaded"] = prepared.cache.backbone_loaded
        return len(task.train) / result.train_images_per_s

    out: dict = {}
    epoch("untracked")
    times: dict[str, list[float]] = {"as_trained": [], "untracked": [], "ideal": []}
    for _ in range(rounds):
        for mode, values in times.items():
            values.append(epoch(mode))
    out.update({f"{mode}_s": round(statistics.median(values), 3) for mode, values in times.items()})
    out["ratio"] = round(out["as_trained_s"] / out["ideal_s"], 3)
    out["ratio_untracked"] = round(out["untracked_s"] / out["ideal_s"], 3)
    print(f"epoch: {out}", flush=True)
    return out


def meter_overhead(recipe, cache_dir: str, repeats: int) -> list[dict]:  # noqa: ANN001
    """What the sampled tracker adds to a trial, per family, each as a search runs it (``cached``: on stored features
    where the family reads them) and with the backbone run in the trial (``uncached``): medians of interleaved
    repeats of the whole trial's CPU time (model set-up, training, validation and test; one thread, so robust to other
    load), and of the training loop's alone. One untimed trial first stores the features."""
    import torch

    from autoside.data import load_task
    from autoside.memory.meter import MemoryMeter
    from autoside.sidenets import resolve
    from autoside.train import prepare_trial, train_model

    task = load_task(recipe.dataset, image_size=recipe.image_size)
    cpu = torch.device("cpu")
    rows = []
    for cached in (True, False):
        trial_recipe = replace(recipe, cache_dir=cache_dir, memory_budget=None, feature_cache=cached)
        for family in ("linear", "losa", "dtl"):

            def trial(mode: str, trial_recipe=trial_recipe, family=family) -> tuple[float, float, str]:  # noqa: ANN001
                whole = time.process_time()
                prepared = prepare_trial(trial_recipe, task, resolve(family), device=cpu)
                meter = MemoryMeter(cpu, tracking=mode)
                loop = time.process_time()
                model, inputs, preprocess = prepared.model, prepared.task, prepared.preprocess
                train_model(model, inputs, trial_recipe, device=cpu, preprocess=preprocess, meter=meter)
                end = time.process_time()
                return end - whole, end - loop, prepared.cache.status

            trial("off")
            times: dict[str, list[tuple[float, float]]] = {"off": [], "sampled": []}
            for _ in range(repeats):
                for mode, values in times.items():  # interleaved: drift in the machine's load hits both alike
                    *cpu_s, status = trial(mode)
                    values.append(tuple(cpu_s))
            med = {m: [statistics.median(v[i] for v in vals) for i in (0, 1)] for m, vals in times.items()}
            row = {
                "family": family,
                "cache": status,
                "trial_cpu_s_off": round(med["off"][0], 3),
                "trial_cpu_s_sampled": round(med["sampled"][0], 3),
                "overhead_of_trial": round(med["sampled"][0] / med["off"][0] - 1, 4),
                "train_cpu_s_off": round(med["off"][1], 3),
                "train_cpu_s_sampled": round(med["sampled"][1], 3),
                "overhead_of_training": round(med["sampled"][1] / med["off"][1] - 1, 4),
            }
            rows.append(row)
            print(f"meter: {row}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit_small_patch16_224")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--eval", type=int, default=50, help="validation and test images each")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--meter-repeats", type=int, default=3)
    parser.add_argument(
        "--demo-sampler",
        default="random",
        help="the demo-space searches' sampler; random draws the same configurations with and without the cache, "
        "where TPE's proposals follow results that fp16 features shift",
    )
    parser.add_argument("--demo-recipe", default="trials/demo.yaml", help="the recipe of the meter section")
    parser.add_argument("--skip", action="append", default=[], help="leave out a section (losa, demo, meter, epoch)")
    parser.add_argument("--quick", action="store_true", help="a tiny ViT at 64 px, 48 images, 3 trials, 1 epoch")
    parser.add_argument("--json", default=None, help="write the figures here (after every section)")
    parser.add_argument("--cache-dir", default=None, help="the cache folders' parent (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.quick:
        args.backbone, args.image_size, args.train, args.eval = "vit_tiny_patch16_224", 64, 48, 16
        args.epochs, args.trials, args.meter_repeats = 1, 3, 1

    import torch

    from autoside.recipe import load_recipe, recipe_from_dict
    from autoside.tune.driver import connect_ray
    from autoside.tune.workdir import runtime_env

    torch.set_num_threads(1)
    out: dict = {"args": vars(args), "torch": torch.__version__, "cpus": os.cpu_count(), "load": {"start": load()}}

    def save(section: str, value: object) -> None:
        out[section] = value
        out["load"][section] = load()
        if args.json:
            tmp = Path(f"{args.json}.tmp")
            tmp.write_text(json.dumps(out, indent=2) + "\n")
            tmp.replace(args.json)

    recipe = bench_recipe(args)
    images = args.train + 2 * args.eval
    owns_ray = connect_ray(None, runtime_env(None)) if {"losa", "demo"} - set(args.skip) else False
    try:
        with tempfile.TemporaryDirectory(prefix="autoside-cache-bench-", dir=args.cache_dir) as tmp:
            if "losa" not in args.skip:
                cached = run_search(LOSA_SPACE, recipe, args, cached=True, cache_dir=f"{tmp}/losa", name="losa_cached")
                save("losa_cached", {**cached, "build": cache_size(f"{tmp}/losa", images, cached["warm"])})
            if "epoch" not in args.skip:
                save("epoch", epoch_times(recipe_from_dict(recipe), f"{tmp}/losa", args.meter_repeats))
            if "meter" not in args.skip:
                meter_recipe = replace(load_recipe(args.demo_recipe), epochs=2, threads=1)
                if args.quick:
                    meter_recipe = replace(recipe_from_dict(recipe), epochs=2)
                save("meter", meter_overhead(meter_recipe, f"{tmp}/meter", args.meter_repeats))
            if "losa" not in args.skip:
                plain = run_search(LOSA_SPACE, recipe, args, cached=False, cache_dir=f"{tmp}/none", name="losa_plain")
                save("losa_uncached", {**plain, "speedup": round(plain["wall_s"] / out["losa_cached"]["wall_s"], 2)})
                print(f"LoSA search speed-up: x{out['losa_uncached']['speedup']}", flush=True)
            if "demo" not in args.skip:
                demo, same = "search_spaces/demo.yaml", {"sampler": args.demo_sampler, "args": args}
                cached = run_search(demo, recipe, cached=True, cache_dir=f"{tmp}/demo", name="demo_cached", **same)
                save("demo_cached", cached)
                plain = run_search(demo, recipe, cached=False, cache_dir=f"{tmp}/none", name="demo_plain", **same)
                save("demo_uncached", {**plain, "speedup": round(plain["wall_s"] / cached["wall_s"], 2)})
                print(f"demo-space search speed-up: x{out['demo_uncached']['speedup']}", flush=True)
    finally:
        if owns_ray:
            import ray

            ray.shutdown()
    return out


if __name__ == "__main__":
    main()
