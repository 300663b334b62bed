"""What one search trial does on its Ray worker.

1. Rebuild the side config by replaying the sampled parameters through the space (one path from parameters to
   architecture), and the recipe with the search's memory budget.
2. Build the side network (on stored features, and without loading the backbone, where the cache allows it);
   predict the peak training memory with dry steps (:mod:`autoside.memory.predict`). Over the budget: refused in
   seconds, recorded as ``infeasible`` with the predicted memory.
3. Train capped at ``min(budget, share)`` (the share: the memory of the GPU fraction it was packed into; CPU: the
   live-tensor tracker stops the trial at the cap; CUDA: a per-process allocator cap). Over the budget: infeasible;
   out of its share under the budget: requeued once with a larger share (:mod:`autoside.tune.resources`).
   Per-epoch metrics go to Tune (for ASHA) and to the trial's nested MLflow run.
4. Export the side network to a folder of the worker's own and log it as the MLflow artifact ``side_network``,
   close the MLflow run with its status, and send the trial's record (what the driver writes to ``result.json``) to
   the driver with the final result to Tune (under ``autoside_record``). Nothing is written to the driver's search
   folder from here: the nodes need not share a disk.

MLflow writes go through a :class:`~autoside.tune.journal.Journal`: while the tracking server is down they wait,
and those still unsent when the trial ends travel in the record (weights inlined) for the driver to send.
A trial that the scheduler stops after some epoch never reaches step 4: the driver records it (as ``pruned``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

FINAL_KEY = "autoside_status"
RECORD_KEY = "autoside_record"  # the final result's copy of the trial's record (a JSON string)
PENDING_KEY = "mlflow_pending"  # MLflow ops not sent yet (a record's field; a JSON string in an epoch result)


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a search shares (sent once to the workers with ``tune.with_parameters``)."""

    name: str
    space: dict[str, Any]
    recipe: dict[str, Any]
    budget_bytes: int | None
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    threads: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trial_id_of(number: int) -> str:
    return f"{number:04d}"


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def result_record(
    *,
    number: int,
    params: dict[str, Any],
    config: dict[str, Any],
    status: str,
    metrics: dict[str, Any],
    mlflow_run_id: str | None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "trial_id": trial_id_of(number),
        "number": number,
        "status": status,
        "params": params,
        "config": config,
        "metrics": metrics,
        "mlflow_run_id": mlflow_run_id,
        **extra,
    }


@lru_cache(maxsize=4)
def _task(dataset_json: str, image_size: int | None):  # noqa: ANN202 - cached per worker: every trial reads it
    from autoside.config import from_dict
    from autoside.data import DatasetConfig, load_task

    return load_task(from_dict(DatasetConfig, json.loads(dataset_json)), image_size=image_size)


def final_report(status: str, metrics: dict[str, Any], budget_bytes: int | None, **extra: Any) -> dict[str, Any]:
    """The last result a trial sends to Tune; ``autoside_status`` marks it as final (not an epoch report)."""
    memory = int(metrics.get("peak_memory_bytes", 0))
    return {
        FINAL_KEY: status,
        "val_accuracy": float(metrics.get("val_accuracy", 0.0)),
        "peak_memory_bytes": memory,
        "trainable_params": int(metrics.get("trainable_params", 0)),
        "memory_constraint": float(memory - budget_bytes) if budget_bytes is not None else 0.0,
        **extra,
    }


def run_search_trial(config: dict[str, Any], context: dict[str, Any]) -> None:
    """Ray Tune function trainable (see the module docstring)."""
    from ray import tune

    ctx = TrialContext(**context)
    number, params = int(config["trial_number"]), dict(config["params"])
    record = execute_trial(
        ctx,
        number,
        params,
        report=lambda metrics: tune.report(metrics),
        share_bytes=config.get("share_bytes"),
        attempt=int(config.get("attempt", 1)),
    )
    tune.report(
        final_report(
            record["status"],
            record["metrics"],
            ctx.budget_bytes,
            trial_number=number,
            mlflow_run_key=record.get("mlflow_run_key"),
            **{RECORD_KEY: json.dumps(record, default=str)},
        )
    )


def execute_trial(
    ctx: TrialContext,
    number: int,
    params: dict[str, Any],
    *,
    report=None,  # noqa: ANN001
    share_bytes: int | None = None,
    attempt: int = 1,
) -> dict[str, Any]:
    """Steps 1-4 of the module docstring; returns the trial's record (the driver writes it to ``result.json``).

    ``share_bytes`` is the memory of the GPU fraction the trial was packed into: it trains capped at
    ``min(budget, share)``, and running out of its share under the budget returns status ``requeue`` (first
    attempt only; nothing is recorded, the driver runs it again with a larger share).
    """
    from autoside.tune import tracking
    from autoside.tune.journal import Journal, pack_artifacts

    started = time.time()
    journal = Journal(ctx.tracking_uri, ctx.experiment_id)
    with tempfile.TemporaryDirectory(prefix=f"autoside-trial-{trial_id_of(number)}-") as scratch:
        run = tracking.TrialRun.start(
            journal,
            ctx.parent_run_id,
            number=number,
            trial_id=trial_id_of(number),
            search=ctx.name,
            params=params,
            config=_side_config(ctx, params).to_dict(),
        )
        record = _train_and_record(ctx, number, params, run, Path(scratch), report, share_bytes, attempt)
        record["wall_time_s"] = time.time() - started
        journal.flush()
        if journal.pending:  # the tracking server is down: the driver sends them (weights inlined) when it is back
            record[PENDING_KEY] = pack_artifacts(journal.pending)
    record["mlflow_run_id"] = run.run_id
    return record


def _side_config(ctx: TrialContext, params: dict[str, Any]):  # noqa: ANN202 - SideConfig
    from autoside.tune.space import space_from_dict

    return space_from_dict(ctx.space).config_from_params(params)


def _train_and_record(  # noqa: C901, PLR0913, PLR0915
    ctx: TrialContext,
    number: int,
    params: dict[str, Any],
    run: Any,
    scratch: Path,
    report: Any,
    share_bytes: int | None,
    attempt: int,
) -> dict[str, Any]:
    import torch

    from autoside.memory.meter import MemoryBudgetExceeded
    from autoside.memory.predict import predict_peak_memory
    from autoside.recipe import recipe_from_dict
    from autoside.train import prepare_trial, resolve_device, train_model
    from autoside.tune.resources import cuda_oom_bytes, overrun_status, per_trial_cap

    torch.set_num_threads(max(1, ctx.threads))
    trial_id = trial_id_of(number)
    side_config = _side_config(ctx, params)
    recipe = replace(recipe_from_dict(ctx.recipe), memory_budget=ctx.budget_bytes)
    cap = per_trial_cap(ctx.budget_bytes, share_bytes)
    config_dict = side_config.to_dict()
    status, metrics, extra, export_dir = "ok", {}, {}, None
    model = None
    try:
        task = _task(json.dumps(recipe.dataset.__dict__, sort_keys=True, default=str), recipe.image_size)
        device = resolve_device(recipe.device)
        prepared = prepare_trial(recipe, task, side_config, device=device)
        model, trained, inputs, preprocess, cache = (
            prepared.net,
            prepared.model,
            prepared.task,
            prepared.preprocess,
            prepared.cache,
        )
        metrics["trainable_params"] = model.num_trainable()
        extra["feature_cache"] = asdict(cache)
        extra["grad_checkpointing"] = model.grad_checkpointing
        run.log(
            cache.metrics(),
            tags={
                "feature_cache": f"{cache.status} {cache.reason}".strip()[:5000],
                "backbone_loaded": "yes" if cache.backbone_loaded else "no",
                "grad_checkpointing": "yes" if model.grad_checkpointing else "no",
            },
        )
        if ctx.budget_bytes is not None:
            prediction = predict_peak_memory(trained, inputs, recipe, device=device, preprocess=preprocess)
            extra["memory_prediction"] = prediction.to_dict()
            metrics["predicted_peak_bytes"] = prediction.predicted_bytes
            run.log({"predicted_peak_bytes": prediction.predicted_bytes, "prediction_seconds": prediction.seconds})
            if prediction.predicted_bytes > ctx.budget_bytes:
                raise MemoryBudgetExceeded(prediction.predicted_bytes, ctx.budget_bytes, where="predicted training")

        def on_epoch(epoch: int, epoch_metrics: dict[str, float]) -> None:
            run.log_epoch(epoch, epoch_metrics)
            if report is not None and epoch < recipe.epochs:  # the last epoch arrives with the final result
                unsent = {PENDING_KEY: json.dumps(run.journal.pending)} if run.journal.pending else {}
                report({**epoch_metrics, "trial_number": number, "mlflow_run_key": run.key, **unsent})

        result = train_model(
            trained, inputs, replace(recipe, memory_budget=cap), device=device, report=on_epoch, preprocess=preprocess
        )
        metrics = {**metrics, **replace(result, feature_cache=asdict(cache)).to_dict()}
        if "predicted_peak_bytes" in metrics:
            metrics["prediction_error"] = metrics["predicted_peak_bytes"] / max(1, result.peak_memory_bytes) - 1
        from autoside.export.save import save_pretrained

        export_dir = save_pretrained(
            model,
            scratch / "side_network",
            metrics={k: v for k, v in metrics.items() if k != "history"},
            extra={
                "search": ctx.name,
                "trial_id": trial_id,
                "params": params,
                "classes": list(task.classes) if hasattr(task, "classes") else None,
            },
            overwrite=True,
        )
    except MemoryBudgetExceeded as exc:
        status = overrun_status(exc.used_bytes, ctx.budget_bytes, attempt=attempt)
        # No accuracy: the trial never finished training. Its memory at the stop (or the prediction that refused
        # it) is the figure that matters, logged to its MLflow run like a finished trial's peak.
        metrics.update(
            {
                "peak_memory_bytes": exc.used_bytes,
                "memory_source": "predicted" if "predicted" in str(exc) else "stopped_at_budget",
            }
        )
        extra["reason"] = str(exc)
    except torch.OutOfMemoryError as exc:
        used = cuda_oom_bytes(str(exc), int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else 0)
        status = overrun_status(used, ctx.budget_bytes, attempt=attempt)
        metrics.update({"peak_memory_bytes": used, "memory_source": "cuda_out_of_memory"})
        extra["reason"] = f"CUDA out of memory under a cap of {cap} bytes: {str(exc).splitlines()[0][:200]}"
    except Exception as exc:  # noqa: BLE001 - any other error fails this trial only; the search goes on
        status = "failed"
        extra["reason"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
        (scratch / "error").mkdir()
        (scratch / "error" / "error.txt").write_text(traceback.format_exc())
        run.log_artifacts(scratch / "error")
    extra["node_id"] = _ray_node_id()
    if status == "requeue":  # nothing recorded: the same trial number runs again with a larger share
        run.journal.submit({"op": "delete_run", "run": run.key})
        return {"status": status, "metrics": metrics, "mlflow_run_key": run.key, "share_bytes": share_bytes, **extra}
    extra.update(attempt=attempt, share_bytes=share_bytes, restarts=run.journal.deleted)
    tags = {"reason": extra["reason"][:5000]} if "reason" in extra else {}
    if "memory_source" in metrics:
        tags["memory_source"] = metrics["memory_source"]
    run.finish(status, {k: v for k, v in metrics.items() if k != "history"}, tags=tags, artifacts_dir=export_dir)
    return result_record(
        number=number,
        params=params,
        config=config_dict,
        status=status,
        metrics=metrics,
        mlflow_run_id=None,
        mlflow_run_key=run.key,
        finished_at=time.time(),
        **extra,
    )


def _ray_node_id() -> str | None:
    """The Ray node this trial ran on (None outside Ray), so a cluster search shows where each trial went."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
