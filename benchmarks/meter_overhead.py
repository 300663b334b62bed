"""What measuring memory costs: one trial trained untracked, tracked on every operator, and with sampled tracking.

For each family (defaults of ``linear``, ``losa``, ``dtl``) the same model, data and seed are trained ``--repeats``
times per mode on the recipe (default ``trials/demo.yaml`` with ``--epochs 2``); the figure is the median wall time
of ``train_model`` (training + per-epoch validation + test), and the median CPU time of this process over the same
call (with one thread, the work itself: robust to other load on a shared machine, where wall times are not).
Modes: ``off`` (no tracker: the baseline), ``all`` (the tracker sees every operator of every step: autoside before
sampling), ``sampled`` (the default on CPU: warm-up, new shapes and one step per epoch). The peaks of ``all`` and
``sampled`` are printed side by side; they must be equal.

    python benchmarks/meter_overhead.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="trials/demo.yaml")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--family", action="append", default=None)
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()

    import torch

    from autoside.data import load_task
    from autoside.memory.meter import MemoryMeter
    from autoside.recipe import load_recipe
    from autoside.sidenets import resolve
    from autoside.train import build_model, train_model

    recipe = replace(load_recipe(args.recipe), epochs=args.epochs, memory_budget=None)
    torch.set_num_threads(recipe.threads or 1)
    task = load_task(recipe.dataset, image_size=recipe.image_size)
    device = torch.device("cpu")
    rows = []
    print(
        f"{'family':8} {'off s':>7} {'all s':>7} {'sampled s':>9} {'all x':>6} {'sampled x':>9} {'cpu: all x':>10} "
        f"{'sampled x':>9}  peak all = sampled"
    )
    for family in args.family or ["linear", "losa", "dtl"]:
        times: dict[str, list[float]] = {"off": [], "all": [], "sampled": []}
        cpu: dict[str, list[float]] = {mode: [] for mode in times}
        peaks: dict[str, int] = {}
        for _ in range(args.repeats):
            for mode in times:  # interleaved, so drift in machine load hits every mode alike
                model = build_model(recipe, task.num_classes, resolve(family))
                meter = MemoryMeter(device, tracking=mode)
                tic = time.process_time()
                result = train_model(model, task, recipe, device=device, meter=meter)
                cpu[mode].append(time.process_time() - tic)
                times[mode].append(result.wall_time_s)
                peaks[mode] = meter.report().peak_memory_bytes
        med = {mode: statistics.median(values) for mode, values in times.items()}
        cpu_med = {mode: statistics.median(values) for mode, values in cpu.items()}
        row = {
            "family": family,
            **{f"{mode}_s": round(value, 3) for mode, value in med.items()},
            "all_x": round(med["all"] / med["off"], 3),
            "sampled_x": round(med["sampled"] / med["off"], 3),
            **{f"{mode}_cpu_s": round(value, 3) for mode, value in cpu_med.items()},
            "all_cpu_x": round(cpu_med["all"] / cpu_med["off"], 3),
            "sampled_cpu_x": round(cpu_med["sampled"] / cpu_med["off"], 3),
            "peak_all": peaks["all"],
            "peak_sampled": peaks["sampled"],
        }
        rows.append(row)
        print(
            f"{family:8} {med['off']:7.2f} {med['all']:7.2f} {med['sampled']:9.2f} {row['all_x']:6.3f} "
            f"{row['sampled_x']:9.3f} {row['all_cpu_x']:10.3f} {row['sampled_cpu_x']:9.3f}  "
            f"{peaks['all']} {'=' if peaks['all'] == peaks['sampled'] else '!='} {peaks['sampled']}"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {"recipe": args.recipe, "epochs": args.epochs, "repeats": args.repeats, "rows": rows}, fh, indent=2
            )


if __name__ == "__main__":
    main()
