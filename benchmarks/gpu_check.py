"""The prepared GPU check: every CUDA figure autoside claims, measured in one run, written to one report.

Four steps, each a measurement (random ViT-B/16 weights, no downloads):

1. ``memory_vs_full.py --device cuda --amp``: allocator-peak ratio of every family against full fine-tuning
   (ViT-B/16, 224 px, batch 32, bf16 autocast).
2. Prediction error per family on the device: the dry-step prediction against the measured training peak.
3. A 12-trial search with ``--gpus-per-trial auto``: concurrency reached (trials running at the same time),
   out-of-memory count and requeues.
4. Training throughput of one side network with and without the live-tensor tracker.

``--dry-run`` runs every step on the CPU at tiny sizes (a tiny ViT, 64 px, a 2-trial search; a minute or two), so
the script stays correct between the rare runs on a GPU (``tests/benchmarks/test_gpu_check.py``).

    benchmarks/gpu_check.sh              # on a GPU machine: writes benchmarks/results/gpu-<date>.md
    benchmarks/gpu_check.sh --dry-run --out /tmp/check
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


@dataclass(frozen=True)
class Sizes:
    backbone: str
    image_size: int
    batch_size: int
    device: str
    train_size: int
    trials: int
    concurrent: int
    budget: str
    steps: int
    cnn_backbone: str  # for families that need a staged CNN (CST)


GPU = Sizes("vit_base_patch16_224", 224, 32, "cuda", 256, 12, 8, "6GiB", 10, "resnet50")
DRY = Sizes("vit_tiny_patch16_224", 64, 4, "cpu", 8, 2, 2, "256MiB", 2, "resnet18")


def recipe_dict(s: Sizes, **overrides: Any) -> dict[str, Any]:
    return {
        "name": "gpu-check",
        "dataset": {"name": "digits", "train_size": s.train_size, "val_size": 32, "test_size": 32},
        "backbone": {"name": s.backbone, "weights": "random"},
        "image_size": s.image_size,
        "epochs": 1,
        "batch_size": s.batch_size,
        "eval_batch_size": 64,
        "warmup_epochs": 0,
        "device": s.device,
        "amp": True,
        **overrides,
    }


def step_memory(s: Sizes, work: Path) -> str:
    import memory_vs_full

    out = work / "families.md"
    argv = ["--backbone", s.backbone, "--image-size", str(s.image_size), "--batch-size", str(s.batch_size)]
    only = ["--only", "linear"] if s.device == "cpu" else []  # the dry run: one row beside full is enough
    memory_vs_full.main([*argv, *only, "--device", s.device, "--amp", "--steps", "2", "--markdown", str(out)])
    return out.read_text()


def step_prediction(s: Sizes) -> str:
    from autoside.data import load_task
    from autoside.errors import ConfigError
    from autoside.memory.predict import predict_peak_memory
    from autoside.recipe import recipe_from_dict
    from autoside.sidenets import list_families, resolve
    from autoside.train import build_model, train_model
    from autoside.units import format_bytes

    vit = recipe_from_dict(recipe_dict(s))
    cnn = recipe_from_dict(recipe_dict(s, backbone={"name": s.cnn_backbone, "weights": "random"}))
    task = load_task(vit.dataset)
    device = torch.device(s.device)
    lines = ["| family | backbone | predicted | measured | error | prediction s |", "|---|---|---|---|---|---|"]
    for family in list_families():
        try:
            recipe = vit
            model = build_model(recipe, task.num_classes, resolve(family))
        except ConfigError:  # a family for staged CNNs
            recipe = cnn
            model = build_model(recipe, task.num_classes, resolve(family))
        predicted = predict_peak_memory(model, task, recipe, device=device)
        measured = train_model(model, task, recipe, device=device).peak_memory_bytes
        error = predicted.predicted_bytes / measured - 1
        lines.append(
            f"| {family} | {recipe.backbone.name} | {format_bytes(predicted.predicted_bytes)} "
            f"| {format_bytes(measured)} | {error:+.1%} | {predicted.seconds:.1f} |"
        )
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return "\n".join(lines) + "\n"


def concurrency(records: list[Any]) -> int:
    """Most trials running at the same time, from each trial's finish time and wall time."""
    events = []
    for r in records:
        end, wall = r.raw.get("finished_at"), r.raw.get("wall_time_s")
        if end is not None and wall is not None:
            events += [(end - wall, 1), (end, -1)]
    running = best = 0
    for _, change in sorted(events, key=lambda e: (e[0], e[1])):
        running += change
        best = max(best, running)
    return best


def step_search(s: Sizes, work: Path) -> str:
    from autoside.tune.api import search

    space = {
        "name": "gpu-check",
        "families": {
            "linear": {"dropout": {"type": "float", "low": 0.0, "high": 0.3, "step": 0.1}},
            "losa": {"channel_rank": {"type": "int", "low": 4, "high": 32, "log": True}},
            "dtl": {"rank": {"type": "int", "low": 1, "high": 8, "log": True}},
            "full": {},
        },
    }
    tic = time.perf_counter()
    result = search(
        space,
        recipe_dict(s, device="auto", threads=1),
        num_samples=s.trials,
        max_concurrent=s.concurrent,
        gpus_per_trial="auto",
        memory_budget=s.budget,
        sampler="random",
        root=str(work / "runs"),
        progress=False,
    )
    seconds = time.perf_counter() - tic
    records = result.trials
    counts = result.counts()
    ooms = sum(r.metrics.get("memory_source") in ("cuda_out_of_memory", "stopped_at_budget") for r in records)
    requeued = sum(int(r.raw.get("attempt", 1)) > 1 for r in records)
    lines = [
        f"- trials: {len(records)} ({', '.join(f'{k} {v}' for k, v in counts.items() if v)}), {seconds:.0f} s",
        f"- concurrency reached: {concurrency(records)} trials at once (at most {s.concurrent} allowed; the target on "
        "one GPU is at least 4)",
        f"- out of memory while training: {ooms}; requeued after a share overrun: {requeued}",
        "",
        "| trial | family | status | GPU share | predicted | measured | error |",
        "|---|---|---|---|---|---|---|",
    ]
    from autoside.units import format_bytes

    for r in records:
        m = r.metrics
        predicted = m.get("predicted_peak_bytes")
        error = m.get("prediction_error")
        share = r.raw.get("share_bytes")
        lines.append(
            f"| {r.trial_id} | {r.config.get('family')} | {r.status} "
            f"| {format_bytes(share) if share else '-'}, attempt {r.raw.get('attempt', 1)} "
            f"| {format_bytes(predicted) if predicted else '-'} | {format_bytes(r.memory) if r.memory else '-'} "
            f"| {f'{error:+.1%}' if error is not None else '-'} |"
        )
    return "\n".join(lines) + "\n"


def step_throughput(s: Sizes) -> str:
    from autoside.data import Preprocess
    from autoside.memory.meter import MemoryMeter
    from autoside.recipe import recipe_from_dict
    from autoside.train import build_model, training_step

    recipe = recipe_from_dict(recipe_dict(s))
    device = torch.device(s.device)
    lines = ["| family | images/s, no tracker | images/s, tracker | tracker cost |", "|---|---|---|---|"]
    for family in ("losa", "dtl"):
        from autoside.sidenets import resolve

        model = build_model(recipe, 10, resolve(family)).to(device).train()
        preprocess = Preprocess.from_data_config(model.backbone.spec.data_config).to(device)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        x = preprocess(torch.randint(0, 255, (s.batch_size, 1, 8, 8), dtype=torch.uint8, device=device))
        y = torch.randint(0, 10, (s.batch_size,), device=device)
        rates = []
        for tracked in (False, True):
            meter = MemoryMeter(device) if tracked else None
            if meter is not None:
                meter.__enter__()
            try:
                training_step(model, x, y, optimizer, amp=device.type == "cuda", label_smoothing=0.0)  # warm-up
                _sync(device)
                tic = time.perf_counter()
                for _ in range(s.steps):
                    training_step(model, x, y, optimizer, amp=device.type == "cuda", label_smoothing=0.0)
                _sync(device)
                rates.append(s.steps * s.batch_size / (time.perf_counter() - tic))
            finally:
                if meter is not None:
                    meter.__exit__(None, None, None)
        lines.append(f"| {family} | {rates[0]:.1f} | {rates[1]:.1f} | {rates[0] / rates[1] - 1:+.0%} |")
        del model, optimizer
    return "\n".join(lines) + "\n"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU at tiny sizes (seconds)")
    parser.add_argument(
        "--out", default=str(HERE / "results"), help="folder of the report (default benchmarks/results)"
    )
    args = parser.parse_args(argv)
    s = DRY if args.dry_run else GPU
    if s.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; run it on a GPU machine, or pass --dry-run")
    torch.set_num_threads(1 if args.dry_run else torch.get_num_threads())
    from autoside.memory.meter import _cpu_name

    device = torch.cuda.get_device_name(0) if s.device == "cuda" else _cpu_name()
    date = time.strftime("%Y-%m-%d", time.gmtime())
    sections = [f"# GPU check {date}{' (dry run, CPU, tiny sizes)' if args.dry_run else ''}", ""]
    command = " ".join(["benchmarks/gpu_check.sh", *(argv if argv is not None else sys.argv[1:])])
    sections.append(f"Device: {device}; torch {torch.__version__}; command: `{command}`")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        steps = [
            ("1. Training memory vs full fine-tuning (memory_vs_full.py)", lambda: step_memory(s, work)),
            ("2. Memory prediction error per family", lambda: step_prediction(s)),
            (f"3. A {s.trials}-trial search, --gpus-per-trial auto, budget {s.budget}", lambda: step_search(s, work)),
            ("4. Training throughput with and without the tracker", lambda: step_throughput(s)),
        ]
        for title, run in steps:
            tic = time.perf_counter()
            print(f"gpu_check: {title} ...", flush=True)
            body = run()
            sections += ["", f"## {title}", "", body.rstrip(), "", f"({time.perf_counter() - tic:.0f} s)"]
    out = Path(args.out) / f"gpu-{date}{'-dry-run' if args.dry_run else ''}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_file = out.with_name(f".{out.name}.tmp")
    tmp_file.write_text("\n".join(sections) + "\n")
    tmp_file.replace(out)
    print(f"gpu_check: wrote {out}")
    return out


if __name__ == "__main__":
    main()
