"""A search of many tiny trials across local Ray nodes: does every result arrive, and what does the driver cost?

Starts, on 127.0.0.1, a Ray head and ``--workers`` worker nodes as separate processes (each with a working directory
of its own, ``--cpus`` CPUs each) and a real ``mlflow server``, then runs ``autoside search`` as a separate process
with ``--trials`` trials of a linear probe on digits (seconds each, continuous dropout, so no configuration repeats),
``--max-concurrent`` at a time. Records return to the driver through Ray's result stream; weights go to the server.

Reported: trials completed (``ok`` records) and lost (asked for but without a record), MLflow runs per trial (each
must be there once), the driver's peak resident memory (``VmHWM`` of its process, read while it runs), the search's
wall time, the mean trial time (inside the trial, from each record) and the *per-trial overhead*: the worker slot time
not spent inside trials, ``(wall x slots - sum of trial times) / trials`` (scheduling, Ray's result stream, the
driver's bookkeeping, MLflow writes, the Optuna study), over the whole search and in the steady state (between the
10th and the 90th percentile of finish times, so without the start-up: connecting, the pre-flight, first workers).

    python benchmarks/search_load.py --trials 200 [--no-cache] [--train-images 1024]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from autoside.testing import tiny_search_recipe
from autoside.tune.loopback import LoopbackCluster, MlflowServer

SPACE = {"name": "load", "families": {"linear": {"dropout": {"type": "float", "low": 0.0, "high": 0.5}}}}


def peak_rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=1, help="CPUs per worker node")
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--train-images", type=int, default=64, help="training images per trial (trial length)")
    parser.add_argument(
        "--no-cache", action="store_true", help="trials run the backbone themselves (seconds each, not ~0.5 s)"
    )
    parser.add_argument("--out", default="benchmarks/results/search_load.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="autoside-load-") as tmp:
        tmp = Path(tmp)
        (tmp / "space.yaml").write_text(yaml.safe_dump(SPACE))
        (tmp / "recipe.yaml").write_text(yaml.safe_dump(tiny_search_recipe(train=args.train_images, val=32, test=32)))
        server = MlflowServer(tmp / "mlflow")
        server.start()
        try:
            with LoopbackCluster(tmp / "cluster") as cluster:
                cluster.start_head()
                for i in range(args.workers):
                    cluster.add_worker(f"w{i + 1}", num_cpus=args.cpus)
                figures = run_search(args, tmp, cluster, server.uri)
        finally:
            server.stop()
    print(json.dumps(figures, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")


def run_search(args: argparse.Namespace, tmp: Path, cluster: LoopbackCluster, tracking_uri: str) -> dict:
    from mlflow.tracking import MlflowClient

    driver_dir = tmp / "driver"
    driver_dir.mkdir()
    cmd = [sys.executable, "-m", "autoside.cli", "search", str(tmp / "space.yaml"), str(tmp / "recipe.yaml")]
    cmd += ["--num-samples", str(args.trials), "--max-concurrent", str(args.max_concurrent), "--name", "load"]
    cmd += ["--address", cluster.address, "--tracking-uri", tracking_uri, "--root", str(driver_dir), "--quiet"]
    cmd += ["--no-cache"] if args.no_cache else []
    started, t0 = time.monotonic(), time.time()
    with open(tmp / "driver.log", "wb") as log:
        driver = subprocess.Popen(cmd, cwd=driver_dir, env=cluster.env(), stdout=log, stderr=log)
    peak = 0
    while driver.poll() is None:
        peak = max(peak, peak_rss_kib(driver.pid) or 0)
        time.sleep(0.5)
    wall = time.monotonic() - started
    if driver.returncode != 0:
        raise SystemExit(f"search failed ({driver.returncode}):\n{(tmp / 'driver.log').read_text()[-3000:]}")
    records = [json.loads(p.read_text()) for p in (driver_dir / "load" / "trials").glob("*/result.json")]
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("load")
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    numbers = [int(r.data.tags["autoside.trial_number"]) for r in runs if "mlflow.parentRunId" in r.data.tags]
    trial_s = [float(r["wall_time_s"]) for r in records if "wall_time_s" in r]
    nodes = {r.get("node_id") for r in records}
    slots = args.max_concurrent
    finished = sorted(float(r["finished_at"]) for r in records if "finished_at" in r)
    lo, hi = int(0.1 * len(finished)), max(int(0.9 * len(finished)) - 1, 0)
    steady = None
    if hi > lo:
        interval = (finished[hi] - finished[lo]) / (hi - lo)  # one trial finishes every `interval` seconds
        steady = round(interval * slots - statistics.mean(trial_s), 2)
    first_start = min((float(r["finished_at"]) - float(r["wall_time_s"]) for r in records), default=t0)
    return {
        "trials_asked": args.trials,
        "completed_ok": sum(r["status"] == "ok" for r in records),
        "records": len(records),
        "lost": args.trials - len(records),
        "statuses": {s: sum(r["status"] == s for r in records) for s in sorted({r["status"] for r in records})},
        "mlflow_trial_runs": len(numbers),
        "mlflow_runs_per_trial_max": max((numbers.count(n) for n in set(numbers)), default=0),
        "unsent_mlflow_writes": sum(len(r.get("mlflow_pending", [])) for r in records),
        "worker_nodes_used": len(nodes),
        "driver_peak_rss_mib": round(peak / 1024, 1),
        "wall_s": round(wall, 1),
        "mean_trial_s": round(statistics.mean(trial_s), 2) if trial_s else None,
        "per_trial_overhead_s": round((wall * slots - sum(trial_s)) / max(1, len(records)), 2),
        "steady_per_trial_overhead_s": steady,
        "startup_s": round(first_start - t0, 1),
        "trials_per_minute": round(len(records) / wall * 60, 1),
        "workers": args.workers,
        "max_concurrent": slots,
        "feature_cache": not args.no_cache,
        "train_images": args.train_images,
    }


if __name__ == "__main__":
    main()
